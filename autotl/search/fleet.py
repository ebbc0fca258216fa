"""Launching and closing the processes a search's trials run in.

`trial_process`: the one trial process of a search or of an `autotl worker`
(`autotl.search.trial_process`), launched early so that its imports overlap the data
loading, and closed on the way out. `spawn_workers` and `stop_workers`: the local
`autotl worker` processes a chief starts with `--workers N`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

from autotl.search.trial_process import TrialProcess


@contextmanager
def trial_process(trials_per_worker: int, memory_growth_mb: int) -> Iterator[TrialProcess | None]:
    """A trial process, launched now and closed on leaving; None when `trials_per_worker` is 0
    (the trials run in this process)."""
    if trials_per_worker <= 0:
        yield None
        return
    process = TrialProcess(None, trials_per_worker, memory_growth_mb)
    process.launch()
    try:
        yield process
    finally:
        process.close()


def spawn_workers(count: int, search_name: str, store_url: str, chief: str) -> dict[str, subprocess.Popen]:
    """`count` local `autotl worker` processes of the chief at `chief`, by tuner id (worker0, worker1, ...)."""
    return {f"worker{i}": _spawn_worker(search_name, store_url, chief, f"worker{i}") for i in range(count)}


def stop_workers(processes: dict[str, subprocess.Popen]) -> None:
    """Terminate the workers still running and wait for all of them."""
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    for process in processes.values():
        process.wait()


def _spawn_worker(search_name: str, store_url: str, chief: str, tuner_id: str) -> subprocess.Popen:
    """`autotl worker` in a child process; the store URL travels in the environment, not in `ps`."""
    env = {**os.environ, "AUTOTL_STORE": store_url, "AUTOTL_PARENT_PID": str(os.getpid())}
    return subprocess.Popen([sys.executable, "-m", "autotl", "worker", search_name, "--chief", chief,
                             "--tuner-id", tuner_id], env=env)
