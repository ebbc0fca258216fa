"""Searches that are killed, resumed, stopped by failing trials: real CLI processes, a real SQLite
store, real (tiny) training. Nothing written before a kill is lost, nothing is counted twice."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from autotl.store import COMPLETED, FAILED, INTERRUPTED, RUNNING, Store

from conftest import TINY_PLUGIN, autotl_command, run_cli

MAX_TRIALS = 8


def search_args(data: Path, root: Path, name: str, *extra) -> list:
    return ["search", data, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16",
            "--max-trials", str(MAX_TRIALS), "--epochs", "3", "--finetune-epochs", "2", "--name", name,
            "--store", root / "autotl.db", "--workdir", root / "runs", *extra]


def start(args: list, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([*autotl_command(), *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def completed_rows(store: Store, name: str) -> dict[int, tuple]:
    search = store.get_search(name)
    return {t.id: (t.tuner_trial_id, t.value, json.dumps(t.hyperparameters, sort_keys=True))
            for t in store.list_trials(search.id) if t.status == COMPLETED}


def orphan_trial_workers(parent_pid: int) -> list[int]:
    """Trial worker processes (`python -m autotl.search.trial_process FD PARENT_PID`) of a given search process."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"autotl.search.trial_process" in argv and str(parent_pid).encode() in argv:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_search_killed_three_times_at_random_moments_resumes_to_exactly_max_trials(tmp_path, mnist_dir):
    store = Store(tmp_path / "autotl.db")
    rng = random.Random(20261127)
    kept: dict[int, tuple] = {}
    process = start(search_args(mnist_dir, tmp_path, "killed"), tmp_path)
    for kill in range(3):
        time.sleep(rng.uniform(6, 14))  # from start-up (imports, data, cache pass) to mid-epoch
        assert process.poll() is None, f"the search finished before kill {kill + 1}: make it longer"
        if kill == 0:  # a second process cannot take up a search that is still running
            clash = run_cli("resume", "killed", "--store", tmp_path / "autotl.db", cwd=tmp_path)
            assert clash.returncode == 1 and "is running in another process" in clash.stderr
        process.send_signal(signal.SIGKILL)
        process.communicate()
        assert process.returncode == -signal.SIGKILL
        time.sleep(0.5)
        assert orphan_trial_workers(process.pid) == [], "the trial worker died with its search"
        before = completed_rows(store, "killed")
        assert before.items() >= kept.items(), "a kill lost a completed trial"
        kept = before
        process = start(["resume", "killed", "--store", tmp_path / "autotl.db"], tmp_path)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "resuming search 'killed'" in stderr
    # Counted against the maximum: a re-run says so, and no trial is "7/5".
    assert f"search 'killed': {MAX_TRIALS}/{MAX_TRIALS} trials completed (resumed" in stdout, stdout
    assert all(int(n) <= int(m) for n, m in re.findall(r"trial (\d+)/(\d+)", stderr)), stderr

    search = store.get_search("killed")
    trials = store.list_trials(search.id)
    completed = [t for t in trials if t.status == COMPLETED]
    assert search.status == COMPLETED
    assert len(completed) == MAX_TRIALS
    assert len({t.tuner_trial_id for t in completed}) == MAX_TRIALS, "a trial was counted twice"
    assert completed_rows(store, "killed").items() >= kept.items()
    assert {t.status for t in trials} <= {COMPLETED, INTERRUPTED}, "no row is left running or half written"
    # Every interrupted trial ran again with the same hyperparameters.
    again = {t.tuner_trial_id: t.hyperparameters for t in completed}
    for trial in (t for t in trials if t.status == INTERRUPTED):
        assert again[trial.tuner_trial_id] == trial.hyperparameters
    # The best trial kept its checkpoint through the kills, and exports.
    exported = run_cli("export", "killed", "--out", tmp_path / "exported", "--store", tmp_path / "autotl.db",
                       cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "exported" / "autotl.json").exists()
    checkpoints = store.artifacts(search.id, kind="checkpoint")
    assert [a.trial_id for a in checkpoints] == [store.best_trial(search).id]


@pytest.mark.slow
def test_a_finished_search_says_so_and_exits_0_and_a_changed_one_is_refused(tmp_path, mnist_dir):
    args = search_args(mnist_dir, tmp_path, "done")
    args[args.index("--max-trials") + 1] = "2"
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    store = Store(tmp_path / "autotl.db")
    rows_before = completed_rows(store, "done")

    again = run_cli("resume", "done", "--store", tmp_path / "autotl.db", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "search 'done' had already finished; nothing to run" in again.stdout
    rerun = run_cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0 and "already finished" in rerun.stdout

    changed = run_cli(*args, "--seed", "7", cwd=tmp_path)
    assert changed.returncode == 2
    assert changed.stderr.strip() == ("Error: a search named 'done' already exists with a different seed; choose "
                                      "another --name, or continue it as it was with `autotl resume done`")
    assert completed_rows(store, "done") == rows_before

    # A higher --max-trials extends the finished search (issue 17, 9); a lower one is a different search.
    args[args.index("--max-trials") + 1] = "3"
    extended = run_cli(*args, cwd=tmp_path)
    assert extended.returncode == 0, extended.stderr
    assert "extending search 'done' from 2 trials to 3 trials: 2 trials completed" in extended.stderr
    assert "search 'done': 3/3 trials completed (extended)" in extended.stdout
    after = completed_rows(store, "done")
    assert len(after) == 3 and after.items() >= rows_before.items(), "the first two trials are kept as they were"
    assert store.get_search("done").config["max_trials"] == 3
    again = run_cli("resume", "done", "--store", tmp_path / "autotl.db", cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stdout
    # `resume` extends it with no other option given (issue 29, 2), and "best so far" counts every trial (29, 1).
    more = run_cli("resume", "done", "--max-trials", "4", "--store", tmp_path / "autotl.db", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "search 'done': 4/4 trials completed (extended)" in more.stdout
    values = [value for _, value, _ in completed_rows(store, "done").values()]
    (ended,) = [line for line in more.stderr.splitlines() if line.startswith("trial 4 completed")]
    assert ended.endswith(f"best so far {max(values):.4g}"), (ended, values)
    timed = run_cli("resume", "done", "--time-limit", "5s", "--store", tmp_path / "autotl.db", cwd=tmp_path)
    assert timed.returncode == 0, timed.stderr
    assert "trials completed (extended)" in timed.stdout  # how many more fit in 5 s depends on the machine
    assert "extending search 'done' from 4 trials to 5s" in timed.stderr
    assert store.get_search("done").config["time_limit"] == 5
    assert store.get_search("done").config["max_trials"] is None  # a time limit alone lifts the cap
    args[args.index("--max-trials") + 1] = "1"
    fewer = run_cli(*args, cwd=tmp_path)
    assert fewer.returncode == 2 and "different max_trials" in fewer.stderr
    # A search stored before autotl's space gained `lr_decay` (here: the stored space without it) continues,
    # since today's space fixes it at 1.0, the value such searches trained with; another value is another space.
    stored = store.get_search("done")
    old_space = {key: spec for key, spec in stored.config["space"].items() if key != "lr_decay"}
    store.update_search_config(stored.id, {"space": old_space})
    # A cap given to a search bounded by its time limit alone extends it past the trials it completed.
    one_more = len(completed_rows(store, "done")) + 1
    older = run_cli("resume", "done", "--max-trials", one_more, "--store", tmp_path / "autotl.db", cwd=tmp_path)
    assert older.returncode == 0 and "(extended)" in older.stdout, older.stderr  # within the stored 5 s, or not
    from autotl.config import same_field

    assert same_field("space", old_space, {**old_space, "lr_decay": {"values": [1.0]}})
    assert not same_field("space", old_space, {**old_space, "lr_decay": {"values": [0.9]}})
    assert not same_field("space", old_space, {**old_space, "lr_decay": {"values": [1.0]}, "dropout": {"values": [0.5]}})


@pytest.mark.slow
def test_a_trial_the_store_holds_as_completed_is_not_run_again(tmp_path, mnist_dir):
    """The kill that falls after the store recorded a trial and before KerasTuner did."""
    args = search_args(mnist_dir, tmp_path, "dedup")
    args[args.index("--max-trials") + 1] = "2"
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    store = Store(tmp_path / "autotl.db")
    search = store.get_search("dedup")
    first = completed_rows(store, "dedup")
    # Put KerasTuner's state back to "trial 1 still running", and the search back to unfinished.
    oracle_file = tmp_path / "runs" / "dedup" / "keras_tuner" / "oracle.json"
    state = json.loads(oracle_file.read_text())
    last = state["end_order"].pop()
    state["ongoing_trials"] = {"tuner0": last}
    oracle_file.write_text(json.dumps(state))
    store.finish_search(search.id, INTERRUPTED, "killed")

    resumed = run_cli("resume", "dedup", "--store", tmp_path / "autotl.db", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert completed_rows(store, "dedup") == first
    assert len(store.list_trials(search.id)) == 2
    assert store.get_search("dedup").status == COMPLETED


NAN_SPACE = ("head_lr: {values: [1.0e+12]}\nhead_layers: {values: [2]}\npooling: {values: [avg]}\n"
             "dropout: {values: [0.0]}\nunfreeze_depth: {values: [0]}\n")


@pytest.mark.slow
def test_nan_losses_fail_a_trial_at_once_and_max_failures_stops_the_search_cleanly(tmp_path, mnist_dir):
    (tmp_path / "nan.yaml").write_text(NAN_SPACE)
    result = run_cli(*search_args(mnist_dir, tmp_path, "diverges", "--space", tmp_path / "nan.yaml",
                                  "--max-failures", "2"), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: search 'diverges' stopped: 2 trials failed (--max-failures 2); see `autotl trials` for their errors")
    store = Store(tmp_path / "autotl.db")
    search = store.get_search("diverges")
    trials = store.list_trials(search.id)
    assert search.status == FAILED and "2 trials failed" in search.error
    assert [t.status for t in trials] == [FAILED, FAILED], "the search stopped at the second failure"
    for trial in trials:
        assert trial.error == "the loss became nan in epoch 1 of the head phase"
        assert store.epoch_metrics(trial.id) == [], "the trial ended within its first epoch"
    assert not any(t.status == RUNNING for t in trials)


def test_resume_of_an_unknown_search_is_one_line(tmp_path):
    result = run_cli("resume", "nope", "--store", tmp_path / "autotl.db", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("Error: no search 'nope' in sqlite:///")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("option, value, fragment", [("--max-failures", "0", "--max-failures"),
                                                     ("--workers", "-1", "--workers"),
                                                     ("--oracle-address", "nowhere", "HOST:PORT")])
def test_bad_reliability_options_are_usage_errors(tmp_path, mnist_dir, option, value, fragment):
    result = run_cli(*search_args(mnist_dir, tmp_path, "bad", "--workers", "1", option, value), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "autotl.db").exists() or Store(tmp_path / "autotl.db").list_searches() == []


def test_progress_lines_count_a_rerun_against_the_maximum():
    import io

    from autotl.insight.progress import ConsoleReporter

    stream = io.StringIO()
    reporter = ConsoleReporter("val_accuracy", stream=stream)
    reporter.trial_started(3, 5, {"head_units": 64})
    reporter.epoch_ended(3, "head", 1, 2, {"val_accuracy": 0.5, "seconds": 1.0})
    reporter.trial_started(7, 5, {"head_units": 32}, completed=4, rerun_of=3)
    reporter.epoch_ended(7, "head", 1, 2, {"val_accuracy": 0.75, "seconds": 1.0})
    lines = stream.getvalue().splitlines()
    assert lines[0] == "trial 3/5: head_units=64"
    assert lines[1].startswith("  trial 3/5 head     epoch 1/2")
    assert lines[2] == "trial 7 (re-run of trial 3; 4/5 completed): head_units=32"
    assert lines[3].startswith("  trial 7 head     epoch 1/2")


def test_best_so_far_starts_from_the_trials_completed_before():
    """The figures of issue 29: a resumed search printed `best so far 0.5333` beside an earlier 0.6833."""
    import io
    from types import SimpleNamespace

    from autotl.insight.progress import ConsoleReporter

    stream = io.StringIO()
    reporter = ConsoleReporter("val_accuracy", stream=stream)
    reporter.search_started("s", "sqlite:///x.db", 5, best=0.6833)
    reporter.trial_ended(SimpleNamespace(number=4, status="completed", value=0.5333, best_phase="head", best_epoch=2))
    assert stream.getvalue().splitlines()[-1].endswith("best so far 0.6833")


def test_a_time_limited_search_says_the_limit_given_and_the_time_left():
    """Issue 29, 6: `--time-limit 40s` printed `for 30s`, the time left after start-up, as if it were the limit."""
    import io

    from autotl.insight.progress import ConsoleReporter
    from autotl.search.budget import Deadline

    stream = io.StringIO()
    ConsoleReporter("val_accuracy", stream=stream).search_started("s", "sqlite:///x.db", None, Deadline.after(30),
                                                                 time_limit=40)
    assert stream.getvalue().startswith("search 's': for --time-limit 40s, 3")  # 30s or 29s left
    assert stream.getvalue().split(", logging")[0].endswith("s left")
