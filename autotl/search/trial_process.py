"""Trial processes: trials run in a child process that is replaced every so often.

(The CLI's ``--trials-per-worker`` and ``--worker-memory-growth`` options, and the
messages, call it the trial worker; in the code, "worker" is a distributed search's
``autotl worker`` only.)

Why a process: it confines a crash that takes the interpreter down (a segfault,
the kernel's OOM killer) to the trial that caused it, and it gives back, when it
exits, memory a trial leaves behind. autotl releases the leaks it knows of on
Keras' TensorFlow backend (TensorFlow's gradient registry keeping every traced
train step alive, Keras nodes on the reused backbone; see
``trial.traced_gradients_released`` and ``hypermodel.ReusableBackbone``), and a
30-trial search now stays flat in one process (``results/trial_memory*.md``);
the worker is the safety net for what a third-party backbone or a future
version leaks. It is replaced after a number of trials, or sooner once its
memory has grown by a set amount since its first trial, so one worker usually
serves a whole search and its start-up (importing TensorFlow, loading the
backbone) is paid once.

The worker opens the store itself and writes its epochs and checkpoints there;
it sends progress events and the trial's outcome back through a pipe. The
training data travel once per worker, as ``.npy`` files it memory-maps.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import numpy as np

from autotl.errors import typed_first_line
from autotl.workarounds import exit_at_once
from autotl.search.records import Objective, TrainingPlan, TrialData, TrialFailed, TrialOutcome

_SPLITS = ("x_train", "y_train", "x_val", "y_val")


@dataclass
class TrialProcessSpec:
    """What a fresh process needs to run trials of a search (all picklable)."""

    store_url: str
    search_id: int
    backbone: str
    weights: str
    plugin_files: list[str]
    preprocessor_options: dict[str, Any]
    num_classes: int
    space: dict[str, Any]
    plan: TrainingPlan
    objective: Objective
    workdir: str
    data_dir: str


def save_trial_data(data: TrialData, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for split in _SPLITS:
        value = getattr(data, split)
        if isinstance(value, dict):
            for key, array in value.items():
                np.save(directory / f"{split}.{key}.npy", np.asarray(array))
        else:
            np.save(directory / f"{split}.npy", np.asarray(value))


def load_trial_data(directory: Path) -> TrialData:
    def load(split: str):
        single = directory / f"{split}.npy"
        if single.exists():
            return np.load(single, mmap_mode="r")
        return {path.name.split(".")[1]: np.load(path, mmap_mode="r")
                for path in sorted(directory.glob(f"{split}.*.npy"))}

    return TrialData(*(load(split) for split in _SPLITS))


class TrialProcess:
    """The search process's handle on its trial process; starts and recycles it.

    The worker is a fresh interpreter (``python -m autotl.search.trial_process FD``) talking over a
    private socket pair: never a fork of a process that holds TensorFlow, and, unlike
    multiprocessing's spawn, it does not re-import the caller's ``__main__`` (a script
    without a main guard, ``python -`` or a notebook all work).
    """

    def __init__(self, spec: TrialProcessSpec | None, trials_per_worker: int, max_growth_mb: float | None = None):
        self.spec = spec
        self.trials_per_worker = max(1, trials_per_worker)
        self.max_growth_mb = max_growth_mb
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._spec_sent = False
        self._trials_done = 0
        self._baseline_mb: float | None = None

    def launch(self) -> None:
        """Start the process now; it imports Keras while the caller prepares the search (`configure`)."""
        if self._process is None:
            self._spawn()

    def configure(self, spec: TrialProcessSpec) -> None:
        self.spec = spec
        if self._process is not None:
            self._send_spec()

    def run(self, trial_id: int, trial_number: int, values: dict[str, Any], on_epoch: Callable) -> TrialOutcome:
        if self._process is not None and self._due_for_replacement():
            self.close()
        if self._process is None:
            self._start()
        self._trials_done += 1
        try:
            outcome = self._await_outcome(trial_id, trial_number, values, on_epoch)
        except BaseException:  # Ctrl-C or a bug here: the trial in flight is abandoned with its worker
            if self._process is not None:
                self._reap()
            raise
        finally:
            if self._trials_done == 1 and self._process is not None:
                self._baseline_mb = resident_mb(self._process.pid)  # set up, first trial's model built
        return outcome

    def _due_for_replacement(self) -> bool:
        """After `trials_per_worker` trials, or once its memory grew by `max_growth_mb` since the first."""
        if self._trials_done >= self.trials_per_worker:
            return True
        if self.max_growth_mb is None or self._baseline_mb is None:
            return False
        now = resident_mb(self._process.pid)
        return now is not None and now - self._baseline_mb > self.max_growth_mb

    def _await_outcome(self, trial_id: int, trial_number: int, values: dict[str, Any],
                       on_epoch: Callable) -> TrialOutcome:
        self._talk(self._connection.send, ("trial", trial_id, trial_number, values))
        while True:
            kind, payload = self._talk(self._connection.recv)
            if kind == "epoch":
                on_epoch(*payload)
            elif kind == "done":
                return TrialOutcome(**payload)
            elif kind == "failed":
                raise TrialFailed(payload)

    def _talk(self, operation: Callable, *args: Any) -> Any:
        """Send to or receive from the worker; a broken connection means the worker died."""
        try:
            return operation(*args)
        except (EOFError, ConnectionError, OSError):
            code = self._reap()
            raise TrialFailed(f"the trial worker process died (exit code {code})") from None

    def close(self) -> None:
        if self._process is None:
            return
        if not self._spec_sent:  # launched, never configured: nothing to finish
            self._reap()
            return
        try:
            self._connection.send(("stop",))
            self._process.wait(timeout=30)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self._reap()

    def _start(self) -> None:
        self._spawn()
        self._send_spec()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        with ours, theirs:
            self._process = subprocess.Popen([sys.executable, "-m", "autotl.search.trial_process", str(theirs.fileno()),
                                              str(os.getpid())],
                                             pass_fds=[theirs.fileno()], env=env)
            self._connection = Connection(ours.detach())
        self._trials_done = 0
        self._baseline_mb = None
        self._spec_sent = False

    def _send_spec(self) -> None:
        if self._spec_sent:
            return
        self._spec_sent = True
        try:
            self._connection.send(self.spec)
        except OSError:
            pass  # it died at once: the first trial's recv reports it

    def _reap(self) -> int | None:
        process, self._process = self._process, None
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._connection.close()
        return process.returncode


def resident_mb(pid: int | str = "self") -> float | None:
    """Resident memory of process `pid` in MB (Linux /proc; None elsewhere or once it exited)."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def die_with_parent(parent_pid: int | str | None) -> None:
    """Have the kernel kill this process when the process that started it dies (Linux).

    A search killed with SIGKILL cannot stop its children; without this a trial worker
    would train on for nothing, and a distributed worker would wait an hour for its chief.
    (The kernel sends the signal when the *thread* that started this process ends; autotl
    starts its workers from the thread that runs the search, which outlives them.)
    """
    if not parent_pid or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent_pid):  # it died before the request took effect
        os._exit(1)


def trial_process_main(spec: TrialProcessSpec, connection) -> None:
    """Entry point of the worker process: set up once, then run trials until told to stop."""
    # Ctrl-C reaches the whole process group; the search process decides what it means
    # (it stops this worker), so a half-handled KeyboardInterrupt here cannot stall the exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        runner, data = _set_up(spec)
        while True:
            message = connection.recv()
            if message[0] == "stop":
                runner.close()
                exit_at_once(0)
            _, trial_id, trial_number, values = message
            try:
                outcome = runner.run(trial_id, trial_number, values, data,
                                     on_epoch=lambda *event: connection.send(("epoch", event)))
            except TrialFailed as exc:  # already says what went wrong
                connection.send(("failed", str(exc)))
            except Exception as exc:  # noqa: BLE001 - any failure of one trial is that trial's result
                connection.send(("failed", _describe(exc)))
            else:
                connection.send(("done", asdict(outcome)))
    except Exception as exc:  # noqa: BLE001 - setup failed: fail the pending trial with the reason
        try:
            connection.recv()
            connection.send(("failed", f"trial worker could not start: {_describe(exc)}"))
        except (EOFError, OSError):
            pass


def _set_up(spec: TrialProcessSpec):
    from autotl.quiet import import_keras_quietly

    import_keras_quietly()
    from autotl.search.hypermodel import TransferHyperModel
    from autotl.backbones.registry import load_registry
    from autotl.store import Store
    from autotl.search.runner import TrialRunner

    backbone = load_registry(spec.plugin_files).get(spec.backbone)
    preprocessor = backbone.preprocessor(spec.weights, spec.preprocessor_options)
    hypermodel = TransferHyperModel(backbone, spec.weights, preprocessor, spec.num_classes, spec.space)
    runner = TrialRunner(hypermodel, spec.plan, spec.objective, Store(spec.store_url), spec.search_id,
                         Path(spec.workdir))
    return runner, load_trial_data(Path(spec.data_dir))


def _describe(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    at = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{typed_first_line(exc)}{at}"


def remove_trial_data(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":  # python -m autotl.search.trial_process FD PARENT_PID, started by TrialProcess
    from autotl.quiet import import_keras_quietly

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # see trial_process_main
    die_with_parent(sys.argv[2] if len(sys.argv) > 2 else None)

    import_keras_quietly()  # seconds of imports, while the search process is still reading the data
    _connection = Connection(int(sys.argv[1]))
    try:
        _spec = _connection.recv()
    except (EOFError, OSError):  # the search ended before it needed this worker
        sys.exit(0)
    trial_process_main(_spec, _connection)
