"""`--time-limit`: the search stops handing out trials, and stops a running one, at its deadline."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3

import pytest

from autotl.errors import UsageError
from autotl.search.budget import Deadline, describe_budget, format_duration, parse_duration, room_for_a_finetune, room_for_a_trial
from conftest import autotl_command, run_cli

# A trial step plus the validation pass that follows the step that passes the deadline: far
# below a second for the tiny backbone; the bound leaves room for a loaded CI machine.
OVERRUN_S = 4.0


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400),
                                           ("1h30m", 5400), (" 2m 5s ", 125), ("1d", 86400)])
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "m", "5m10", "0", "-3s", "0s", "inf"])
def test_unreadable_or_empty_durations_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_durations_print_in_their_largest_units():
    assert [format_duration(s) for s in (0, 45.4, 425, 7380)] == ["0s", "45s", "7m 05s", "2h 03m"]


def test_a_budget_reads_as_trials_or_time_whichever_ends_the_search_first():
    assert describe_budget(5, None) == "5 trials"
    assert describe_budget(None, 600) == "10m 00s"
    assert describe_budget(8, 90) == "8 trials or 1m 30s"


def test_a_trial_starts_only_when_the_median_trial_fits_in_the_time_left():
    deadline = Deadline.after(100)
    assert room_for_a_trial(deadline, [])  # the first trial always starts
    assert room_for_a_trial(deadline, [10, 90, 20])  # median 20
    assert not room_for_a_trial(deadline, [150, 90, 120])  # median 120
    assert room_for_a_trial(Deadline.after(-5), [])  # even late: a search needs one completed trial


def test_a_fine_tune_starts_only_when_the_time_left_covers_its_blocks_forward_over_the_training_data():
    # a 20 s cache pass, half the blocks unfrozen, 80 % of the examples for training: at least 8 s
    assert room_for_a_finetune(Deadline.after(9), 20.0, 0.5, 0.8)
    assert not room_for_a_finetune(Deadline.after(7), 20.0, 0.5, 0.8)
    assert room_for_a_finetune(Deadline.after(1), None, 1.0, 0.8)  # activations read from the cache: no bound
    assert not room_for_a_finetune(Deadline.after(-1), None, 1.0, 0.8)  # but never past the deadline
    assert room_for_a_finetune(None, 20.0, 1.0, 0.8)  # no time limit


def _rows(db, sql):
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def _seconds_after(start: str, end: str) -> float:
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def test_a_time_limit_stops_a_long_trial_at_its_deadline_and_the_search_exports(tmp_path, mnist_dir, tiny_plugin):
    """Trials of 5,000 epochs (no early stop) never finish in 8 s: the first is stopped at the deadline
    with its best epoch, no other starts, and the search ends completed and exportable."""
    db = tmp_path / "store.db"
    result = run_cli("search", mnist_dir, "-b", "tiny_cnn", "--plugin", tiny_plugin, "--store", db,
                     "--name", "timed", "--workdir", tmp_path / "runs", "--time-limit", "8s",
                     "--epochs", "5000", "--patience", "5000", "--trials-per-worker", "0")
    assert result.returncode == 0, result.stderr
    assert "--time-limit 8s reached: 1 trial completed" in result.stderr
    assert "search 'timed': 1 trial completed" in result.stdout
    (created,) = _rows(db, "select created_at from searches")[0]
    trials = _rows(db, "select status, finished_at, best_epoch from trials")
    assert [t[0] for t in trials] == ["completed"]
    assert _seconds_after(created, trials[0][1]) <= 8 + OVERRUN_S
    epochs = _rows(db, "select count(*) from epoch_metrics")[0][0]
    assert 1 <= epochs < 5000
    assert _rows(db, "select status from searches") == [("completed",)]
    exported = run_cli("export", "timed", "--store", db, "--out", tmp_path / "out", "--format", "keras")
    assert exported.returncode == 0, exported.stderr
    assert json.loads((tmp_path / "out" / "autotl.json").read_text())["search"]["trial"] == 1


def test_a_time_limited_search_exits_as_soon_as_it_has_said_that_the_limit_ended_it(tmp_path, mnist_dir, tiny_plugin):
    """The limit covers the whole command. The search and its trial worker each waited for TensorFlow's teardown
    at exit: 4.1-4.4 s from the stop line to the prompt (a 25 s limit took 29.3 s); now about 0.2 s."""
    import os
    import subprocess
    import time

    command = [*autotl_command(), "search", str(mnist_dir), "-b", "tiny_cnn", "--plugin", str(tiny_plugin),
               "--store", str(tmp_path / "store.db"), "--name", "quick", "--workdir", str(tmp_path / "runs"),
               "--time-limit", "15s", "--epochs", "5000", "--patience", "5000"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    said_at = None
    for line in process.stderr:
        if "--time-limit 15s reached" in line:
            said_at = time.monotonic()
    assert process.wait() == 0 and said_at is not None
    assert time.monotonic() - said_at < 1.0


@pytest.mark.slow
def test_without_max_trials_a_time_limit_runs_trials_until_the_next_would_not_fit(tmp_path, mnist_dir, tiny_plugin):
    """The limit counts from the CLI's start, so imports (seconds on a loaded machine) come off it: the
    test reads the time left from the search's own last line rather than from the store's timestamps."""
    db = tmp_path / "store.db"
    result = run_cli("search", mnist_dir, "-b", "tiny_cnn", "--plugin", tiny_plugin, "--store", db,
                     "--name", "many", "--workdir", tmp_path / "runs", "--time-limit", "30s", "--epochs", "2",
                     "--finetune-epochs", "1", "--trials-per-worker", "0")
    assert result.returncode == 0, result.stderr
    trials = _rows(db, "select started_at, finished_at from trials where status = 'completed'")
    stopped = re.search(rf"--time-limit 30s reached: {len(trials)} trials? completed, "
                        r"and another would not have finished in the (\d+)s left", result.stderr)
    assert stopped, result.stderr  # the time ended the search: with --time-limit there is no cap on trials
    (created,) = _rows(db, "select created_at from searches")[0]
    last_end = max(finished for _, finished in trials)
    assert _seconds_after(created, last_end) <= 30 + OVERRUN_S
    longest = max(_seconds_after(started, finished) for started, finished in trials)
    assert int(stopped[1]) < longest + 1  # under the median trial's time was left (printed in whole seconds)
    assert "left)" in result.stderr  # each trial's line shows the time left
    assert _rows(db, "select status from searches") == [("completed",)]


def _stored(**config):
    from types import SimpleNamespace

    return SimpleNamespace(config=config)


def test_more_trials_or_more_time_extends_a_finished_search_and_the_same_budget_does_not():
    from autotl.config import SearchConfig, extends

    def given(**options):
        config = SearchConfig(data="d", backbone="b", **options)
        config.validate()
        return config

    assert extends(_stored(max_trials=5, time_limit=None), given(max_trials=7), 5)
    assert not extends(_stored(max_trials=5, time_limit=None), given(max_trials=5), 5)
    assert extends(_stored(max_trials=5, time_limit=None), given(time_limit=600), 5)  # no cap now: more trials
    assert extends(_stored(max_trials=None, time_limit=300), given(time_limit=600), 3)
    assert not extends(_stored(max_trials=None, time_limit=600), given(time_limit=600), 3)
    assert not extends(_stored(max_trials=None, time_limit=600), given(time_limit=300), 3)
    # A search bounded by its time limit alone, given a cap: more than its completed trials extends it.
    assert extends(_stored(max_trials=None, time_limit=5), given(max_trials=6, time_limit=5), 5)
    assert not extends(_stored(max_trials=None, time_limit=5), given(max_trials=5, time_limit=5), 5)


def test_a_phase_through_backbone_blocks_takes_one_batch_per_call_so_a_time_limit_can_stop_it_mid_epoch():
    """The README's quick start with --time-limit 45s ended after 87 s: its whole-backbone fine-tune ran an epoch
    (25 batches) in one call into the compiled step, 33 s that no callback could interrupt."""
    import keras

    from autotl.search.runner import steps_per_execution

    assert steps_per_execution(True) == 1
    assert steps_per_execution(False) == (1 if keras.backend.backend() == "torch" else 32)


def test_the_deadline_stops_a_phase_when_the_next_step_as_long_would_end_past_it():
    import time
    from types import SimpleNamespace

    from autotl.search.budget import Deadline
    from autotl.search.runner import StopAtDeadline

    stop = StopAtDeadline(Deadline.after(0.5))
    stop.set_model(SimpleNamespace(stop_training=False))
    stop.on_epoch_begin(0)
    for _ in range(2):
        stop.on_train_batch_begin(0)
        time.sleep(0.2)
        stop.on_train_batch_end(0)
        if stop.model.stop_training:
            break
    assert stop.model.stop_training and not stop.deadline.passed()  # stopped before the deadline, not after
