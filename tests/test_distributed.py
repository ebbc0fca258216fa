"""KerasTuner's distributed mode through autotl: a chief oracle over gRPC on loopback, worker
processes it starts, a worker that joins by hand, and every trial in one store (SQLite and a
real PostgreSQL server)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time

import pytest

from autotl.search.space import default_space
from autotl.store import COMPLETED, RUNNING, Store

from conftest import TINY_PLUGIN, autotl_command

pytestmark = pytest.mark.slow  # minutes of real searches: the whole suite only (README: Tests)

MAX_TRIALS = 4


def search_args(data, root, store_url, name: str, *extra) -> list[str]:
    return [str(a) for a in ("search", data, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16",
                             "--max-trials", MAX_TRIALS, "--epochs", "3", "--finetune-epochs", "2", "--name", name,
                             "--store", store_url, "--workdir", root / "runs", *extra)]


def run(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([*autotl_command(), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def trials_run_by(stderr: str) -> dict[str, int]:
    """How many trials each worker started, from its prefixed progress lines."""
    counts: dict[str, int] = {}
    for worker in re.findall(r"^\[([\w.-]+)\] trial \d+/\d+: ", stderr, flags=re.MULTILINE):
        counts[worker] = counts.get(worker, 0) + 1
    return counts


def assert_all_trials_in_one_store(store_url: str, name: str) -> None:
    store = Store(store_url)
    search = store.get_search(name)
    trials = store.list_trials(search.id)
    assert search.status == COMPLETED
    completed = [t for t in trials if t.status == COMPLETED]
    assert len(completed) == MAX_TRIALS
    assert len({t.tuner_trial_id for t in completed}) == MAX_TRIALS
    assert not any(t.status == RUNNING for t in trials)
    assert all(store.epoch_metrics(t.id) for t in completed), "each worker logged its epochs to the store"
    best = store.best_trial(search)
    assert [a.trial_id for a in store.artifacts(search.id, kind="checkpoint")] == [best.id]


def test_two_local_workers_on_sqlite(tmp_path, mnist_dir):
    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    result = run(search_args(mnist_dir, tmp_path, store_url, "two-workers", "--workers", "2"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "chief oracle listening on 127.0.0.1:" in result.stderr
    assert set(trials_run_by(result.stderr)) == {"worker0", "worker1"}, result.stderr
    assert f"search 'two-workers': {MAX_TRIALS}/{MAX_TRIALS} trials completed" in result.stdout
    # A worker's epoch lines count its trials against the search's maximum, as the chief's would.
    maxima = re.findall(r"^\[worker\d\]\s+trial \d+/(\d+) +(?:head|finetune) ", result.stderr, flags=re.MULTILINE)
    assert maxima and set(maxima) == {str(MAX_TRIALS)}, result.stderr
    # A worker lists a trial's hyperparameters in the space's order, as a single process does (issue 17, 7),
    # on its progress lines and in the store.
    declared = list(default_space("image"))
    listed = re.findall(r"^\[worker\d\] trial \d+/\d+: (.*)$", result.stderr, flags=re.MULTILINE)
    assert len(listed) == MAX_TRIALS and all(names_of(line) == declared for line in listed), listed
    store = Store(store_url)
    stored = [list(t.hyperparameters) for t in store.list_trials(store.get_search("two-workers").id)]
    assert all(names[:len(declared)] == declared for names in stored), stored
    assert_all_trials_in_one_store(store_url, "two-workers")


def names_of(line: str) -> list[str]:
    """The hyperparameter names of a progress line's ``name=value, ...``."""
    return [pair.split("=", 1)[0] for pair in line.split(", ")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_worker_joins_from_outside_on_postgresql(tmp_path, mnist_dir, fresh_postgres_url):
    """One worker started by the chief, one joining with `autotl worker` as from another machine."""
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    chief = subprocess.Popen(
        [*autotl_command(), *search_args(mnist_dir, tmp_path, fresh_postgres_url, "joined", "--workers", "1",
                                         "--oracle-address", address)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = Store(fresh_postgres_url)
    deadline = time.monotonic() + 120
    while not store.list_searches():  # the search row exists once the chief has checked its input
        assert chief.poll() is None and time.monotonic() < deadline, chief.communicate()[1]
        time.sleep(0.5)
    joined = run(["worker", "joined", "--chief", address, "--store", fresh_postgres_url, "--tuner-id", "outside"],
                 tmp_path)
    stdout, stderr = chief.communicate(timeout=600)
    assert chief.returncode == 0, stderr
    assert joined.returncode == 0, joined.stderr
    assert "Traceback" not in stderr + joined.stderr
    ran_outside = trials_run_by(joined.stderr).get("outside", 0)
    assert ran_outside >= 1, joined.stderr
    assert re.search(rf"worker outside: {ran_outside} trial\(s\) completed", joined.stdout)
    assert trials_run_by(stderr).get("worker0", 0) + ran_outside == MAX_TRIALS
    assert_all_trials_in_one_store(fresh_postgres_url, "joined")


def test_joining_a_finished_or_unknown_search_or_a_dead_chief_is_one_line(tmp_path, mnist_dir):
    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    args = search_args(mnist_dir, tmp_path, store_url, "small")
    args[args.index("--max-trials") + 1] = "1"
    assert run(args, tmp_path).returncode == 0
    finished = run(["worker", "small", "--chief", "127.0.0.1:9", "--store", store_url], tmp_path)
    assert finished.returncode == 1
    assert finished.stderr.strip() == "Error: search 'small' has already finished; there is nothing to join"
    unknown = run(["worker", "nope", "--chief", "127.0.0.1:9", "--store", store_url], tmp_path)
    assert unknown.returncode == 1 and "no search 'nope'" in unknown.stderr
    bad_address = run(["worker", "small", "--chief", "localhost", "--store", store_url], tmp_path)
    assert bad_address.returncode == 2 and "HOST:PORT" in bad_address.stderr
    # An unfinished search, but no chief where --chief points: one line within seconds, not a silent wait.
    store = Store(store_url)
    store.reopen_search(store.get_search("small").id)
    started = time.monotonic()
    no_chief = run(["worker", "small", "--chief", f"127.0.0.1:{free_port()}", "--store", store_url], tmp_path)
    assert time.monotonic() - started < 10  # issue 17: the worker checks the chief before Keras' imports
    assert no_chief.returncode == 1 and "cannot reach the chief at 127.0.0.1:" in no_chief.stderr
    bogus_host = run(["worker", "small", "--chief", "999.1.1.1:80", "--store", store_url], tmp_path)
    assert bogus_host.returncode == 1 and "cannot reach the chief at 999.1.1.1:80" in bogus_host.stderr
    for result in (finished, unknown, bad_address, no_chief, bogus_host):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_distributed_search_whose_workers_all_die_ends_in_one_line_and_resumes(tmp_path, mnist_dir):
    """The chief notices dead workers (KerasTuner's own server would wait for ever) and can be resumed."""
    crashing = tmp_path / "crash_once.py"
    crashing.write_text(CRASH_ONCE_PLUGIN.format(marker=str(tmp_path / "crashed")))
    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    args = ["search", str(mnist_dir), "--backbone", "crash_once", "--plugin", str(crashing), "--image-size", "16",
            "--max-trials", "2", "--epochs", "2", "--name", "dies", "--store", store_url,
            "--workdir", str(tmp_path / "runs"), "--workers", "1", "--trials-per-worker", "0"]
    first = run(args, tmp_path)
    assert first.returncode == 1, first.stderr
    assert "Traceback" not in first.stderr
    assert first.stderr.strip().splitlines()[-1].startswith(
        "Error: the workers stopped before the search finished (worker0 exited -9)")
    store = Store(store_url)
    search = store.get_search("dies")
    assert search.status == "failed"
    assert [t.status for t in store.list_trials(search.id)] == ["interrupted"]
    resumed = run(["resume", "dies", "--store", store_url], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    statuses = [t.status for t in store.list_trials(search.id)]
    assert statuses.count(COMPLETED) == 2 and statuses.count("interrupted") == 1


# A backbone whose first trial kills its own process (as the kernel's OOM killer would), once.
CRASH_ONCE_PLUGIN = '''
import importlib.util, os, signal
from pathlib import Path

spec = importlib.util.spec_from_file_location("tiny_cnn_base", {tiny!r})
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)
MARKER = Path({{marker!r}})


class CrashOnce(base.TinyCNN):
    name = "crash_once"

    def build(self, weights, preprocessor):
        model = super().build(weights, preprocessor)
        if os.environ.get("KERASTUNER_TUNER_ID", "").startswith("worker") and not MARKER.exists():
            MARKER.write_text("crashed")  # a worker's first trial: die in the middle of it
            os.kill(os.getpid(), signal.SIGKILL)
        return model
'''.format(tiny=str(TINY_PLUGIN))


def test_a_time_limit_ends_a_distributed_search_and_its_workers(tmp_path, mnist_dir):
    """The chief's oracle stops handing out trials at the deadline, the worker's running trial stops
    there too (it reads the deadline from the store), and the chief, then the search, end."""
    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    args = [str(a) for a in ("search", mnist_dir, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size",
                             "16", "--epochs", "5000", "--patience", "5000", "--time-limit", "25s", "--name", "timed",
                             "--store", store_url, "--workdir", tmp_path / "runs", "--workers", "1",
                             "--trials-per-worker", "0")]
    started = time.monotonic()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([*autotl_command(), *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                            timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "--time-limit 25s reached" in result.stderr
    assert elapsed < 25 + 20, f"{elapsed:.0f}s"  # the worker's start and the processes' exits on top
    store = Store(store_url)
    search = store.get_search("timed")
    trials = store.list_trials(search.id)
    assert search.status == COMPLETED and trials and all(t.status == COMPLETED for t in trials)
    # 5,000 head epochs take minutes even on the tiny backbone: the deadline stopped the trials.
    assert all(len(store.epoch_metrics(t.id)) < 5000 for t in trials)
