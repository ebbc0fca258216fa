"""KerasTuner's distributed mode, driven by autotl: one chief oracle, many tuner workers.

KerasTuner's protocol is used as it is: the chief serves the oracle over gRPC
(`OracleServicer`), and each worker is a tuner whose oracle is an `OracleClient`,
chosen by the environment variables `KERASTUNER_TUNER_ID`, `KERASTUNER_ORACLE_IP`
and `KERASTUNER_ORACLE_PORT`. What autotl adds is the chief's loop: KerasTuner's
own `start_server` polls every 20 seconds and never notices a worker that died,
so `run_chief` here polls `OracleServer` and also watches its local worker
processes (`autotl.search.fleet`) and the store.

Every worker writes its trials to the store itself, so all trials land in one
store whichever machine ran them.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent import futures
from typing import TYPE_CHECKING

from autotl.errors import AutotlError, UsageError
from autotl.workarounds import chief_may_exit, serve_oracle

if TYPE_CHECKING:
    from autotl.insight.progress import Reporter
    from autotl.store import Search, Store

TUNER_ID, ORACLE_IP, ORACLE_PORT = "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"
CONNECT_TIMEOUT_S = 10.0  # how long `autotl worker` waits for the chief to accept a connection


def parse_address(address: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port), with a one-line error for anything else."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not (0 if allow_port_zero else 1) <= int(port) <= 65535:
        raise UsageError(f"not a HOST:PORT address: {address!r} (e.g. 127.0.0.1:8000)")
    return host.strip("[]"), int(port)


def check_reachable(host: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in one line unless a chief listens at host:port: KerasTuner's client would wait for it forever."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        why = exc.strerror or (f"no answer in {timeout_s:.0f} s" if isinstance(exc, TimeoutError) else str(exc))
        raise AutotlError(f"cannot reach the chief at {host}:{port} ({why}): start it with "
                          "`autotl search --workers N`, or check --chief") from None


def worker_environment(tuner_id: str, host: str, port: int) -> dict[str, str]:
    """The variables that make a KerasTuner tuner a worker of the chief at host:port."""
    return {TUNER_ID: tuner_id, ORACLE_IP: host, ORACLE_PORT: str(port)}


def default_tuner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class OracleServer:
    """The chief: serves `oracle` to the workers until the search is over."""

    def __init__(self, oracle, address: str = "127.0.0.1:0"):
        self.oracle = oracle
        self.host, self.port = parse_address(address, allow_port_zero=True)
        self._server = None
        self._servicer = None

    def start(self) -> str:
        """Start serving; returns the HOST:PORT workers connect to (a free port when asked for port 0)."""
        import grpc

        # One thread: the oracle's methods are synchronised anyway, and its state must not interleave.
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        self._servicer = serve_oracle(self.oracle, self._server)
        requested = f"{self.host}:{self.port}"
        try:
            self.port = self._server.add_insecure_port(requested)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise UsageError(f"cannot listen on {requested} (address in use or not this machine's)")
        self._server.start()
        return f"{self.host}:{self.port}"

    def all_trials_handed_out_and_ended(self) -> bool:
        """KerasTuner's own end condition: the oracle said stop, and no tuner is still at work."""
        return chief_may_exit(self._servicer, self.oracle)

    def ongoing_tuner_ids(self) -> set[str]:
        return set(self.oracle.ongoing_trials)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=2).wait()
            self._server = None


def run_chief(oracle, store: Store, row: Search, reporter: Reporter, *, address: str, workers: int,
              max_failures: int) -> None:
    """The chief: serve the oracle at `address`, start `workers` local workers, wait for the search to end."""
    # Imported here: `autotl.config` imports this module for `parse_address`, and `autotl --help` stays fast.
    from autotl.search.fleet import spawn_workers, stop_workers
    from autotl.search.tuner import TooManyFailures, too_many_failures_message
    from autotl.store import FAILED

    server = OracleServer(oracle, address)
    address = server.start()
    reporter.message(f"chief oracle listening on {address}; more workers can join with: "
                     f"autotl worker {row.name} --chief {address} --store {store.display_url}")
    processes = spawn_workers(workers, row.name, store.url, address)
    try:
        while not server.all_trials_handed_out_and_ended():
            failed = store.count_trials(row.id, FAILED)
            if failed >= max_failures:
                raise TooManyFailures(too_many_failures_message(failed, max_failures))
            if all(p.poll() is not None for p in processes.values()) and server.ongoing_tuner_ids() <= set(processes):
                codes = ", ".join(f"{name} exited {p.returncode}" for name, p in processes.items())
                raise AutotlError(f"the workers stopped before the search finished ({codes}); "
                                  f"see their messages above, then `autotl resume {row.name}`")
            time.sleep(0.5)
    finally:
        stop_workers(processes)
        server.stop()
