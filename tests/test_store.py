"""Tests of autotl.store.store on real SQLite files (and real bad URLs)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from autotl.errors import AutotlError
from autotl.store import COMPLETED, FAILED, INTERRUPTED, RUNNING, SCHEMA_VERSION, Store
from autotl.store.queries import may_be_chosen, no_better_than_a_guess, selection_line

from conftest import run_cli

# The README quick start's store (search 'mnist', 5 trials of efficientnet_lite0), as the
# version before autotl.store was split into models, migrations and queries wrote it.
PREVIOUS_VERSION_STORE = Path(__file__).parent / "data" / "store_schema2.db"


def search_fields(name: str = "s1", direction: str = "max", **extra) -> dict:
    fields = dict(
        name=name, backbone="tiny_cnn", weights="none", modality="image", dataset_path="/data/digits",
        dataset_fingerprint="f" * 64, labels=["0", "1"], config={"max_trials": 3, "space": {"dropout": {"values": [0.1]}}},
        objective="val_accuracy" if direction == "max" else "val_loss", direction=direction, workdir="/tmp/runs",
    )
    fields.update(extra)
    return fields


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(db):
    opened = Store(f"sqlite:///{db}")
    yield opened
    opened.close()


def raw(db: Path, sql: str, *params) -> list[tuple]:
    """Read with a plain sqlite3 connection, independent of SQLAlchemy."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def add_trial(store: Store, search_id: int, status: str | None, value: float | None, tid: str = "t") -> int:
    """Start a trial and, unless `status` is None, finish it with `status` and `value`."""
    trial = store.start_trial(search_id, tid, {"head_lr": 0.001})
    if status is not None:
        store.finish_trial(trial.id, status, value=value)
    return trial.id


def assert_one_line(message: str) -> None:
    assert message.strip(), "empty error message"
    assert "\n" not in message and "\r" not in message, repr(message)


# --------------------------------------------------------------------------- file, WAL, schema


def test_sqlite_file_is_created_in_wal_mode_with_schema_version(store, db):
    assert db.is_file()
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]
    assert raw(db, "SELECT value FROM autotl_meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    tables = {row[0] for row in raw(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"searches", "trials", "epoch_metrics", "artifacts", "autotl_meta"} <= tables


def test_reopening_keeps_one_schema_version_row(store, db):
    Store(f"sqlite:///{db}").close()
    Store(str(db)).close()
    assert raw(db, "SELECT key, value FROM autotl_meta") == [("schema_version", str(SCHEMA_VERSION))]


def test_plain_path_is_taken_as_a_sqlite_file(tmp_path):
    path = tmp_path / "plain.db"
    opened = Store(str(path))
    try:
        assert opened.url == f"sqlite:///{path}"
        search = opened.create_search(**search_fields("plain"))
    finally:
        opened.close()
    assert path.is_file()
    assert raw(path, "SELECT id, name FROM searches") == [(search.id, "plain")]


# --------------------------------------------------------------------------- searches


def test_create_and_get_search_by_name_and_id(store):
    first = store.create_search(**search_fields("alpha"))
    second = store.create_search(**search_fields("beta", direction="min"))
    assert first.id != second.id
    assert store.get_search("alpha").id == first.id
    assert store.get_search("beta").id == second.id
    assert store.get_search(second.id).name == "beta"
    assert store.get_search(str(first.id)).name == "alpha"
    got = store.get_search("beta")
    assert (got.direction, got.objective, got.labels, got.status) == ("min", "val_loss", ["0", "1"], RUNNING)
    assert got.config == search_fields()["config"]  # JSON round trip
    assert [s.name for s in store.list_searches()] == ["alpha", "beta"]


def test_a_name_that_is_a_number_wins_over_an_id(store):
    first = store.create_search(**search_fields("alpha"))
    numbered = store.create_search(**search_fields(str(first.id)))  # a search named "1"
    assert numbered.id != first.id
    assert store.get_search(str(first.id)).id == numbered.id


@pytest.mark.parametrize("ref", ["nope", "999", 999])
def test_unknown_search_is_a_one_line_error(store, ref):
    store.create_search(**search_fields("alpha"))
    with pytest.raises(AutotlError) as excinfo:
        store.get_search(ref)
    assert_one_line(str(excinfo.value))
    assert repr(str(ref)) in str(excinfo.value) or repr(ref) in str(excinfo.value)


def test_duplicate_search_name_is_refused_and_keeps_the_first(store, db):
    first = store.create_search(**search_fields("dup", backbone="resnet50"))
    with pytest.raises(AutotlError) as excinfo:
        store.create_search(**search_fields("dup", backbone="bert"))
    assert_one_line(str(excinfo.value))
    assert "dup" in str(excinfo.value)
    assert raw(db, "SELECT id, name, backbone FROM searches") == [(first.id, "dup", "resnet50")]


def test_finish_search_records_status_and_error(store, db):
    search = store.create_search(**search_fields())
    store.finish_search(search.id, FAILED, "boom")
    assert raw(db, "SELECT status, error, finished_at IS NOT NULL FROM searches") == [("failed", "boom", 1)]


# --------------------------------------------------------------------------- trials


def test_trials_are_numbered_per_search(store):
    a = store.create_search(**search_fields("a"))
    b = store.create_search(**search_fields("b"))
    numbers_a = [store.start_trial(a.id, f"t{i}", {}).number for i in range(3)]
    numbers_b = [store.start_trial(b.id, "t0", {}).number]
    assert numbers_a == [1, 2, 3]
    assert numbers_b == [1]
    assert [t.number for t in store.list_trials(a.id)] == [1, 2, 3]


def test_a_started_trial_is_committed_at_once(store, db):
    search = store.create_search(**search_fields())
    trial = store.start_trial(search.id, "tuner-7", {"head_units": 128, "head_lr": 0.001})
    # Another process (here: another Store and a raw sqlite3 connection) sees it already.
    assert raw(db, "SELECT id, number, tuner_trial_id, status, value FROM trials") == [
        (trial.id, 1, "tuner-7", "running", None)]
    other = Store(f"sqlite:///{db}")
    try:
        [seen] = other.list_trials(search.id)
    finally:
        other.close()
    assert (seen.status, seen.hyperparameters) == (RUNNING, {"head_units": 128, "head_lr": 0.001})


def test_finish_trial_stores_result(store, db):
    search = store.create_search(**search_fields())
    trial = store.start_trial(search.id, "t", {})
    store.finish_trial(trial.id, COMPLETED, value=0.75, best_phase="finetune", best_epoch=3,
                       metrics={"val_loss": 0.5})
    [row] = raw(db, "SELECT status, value, best_phase, best_epoch, duration_s >= 0, finished_at IS NOT NULL "
                    "FROM trials")
    assert row == ("completed", 0.75, "finetune", 3, 1, 1)
    assert store.list_trials(search.id)[0].metrics == {"val_loss": 0.5}


def test_epoch_metrics_are_stored_long_format(store, db):
    search = store.create_search(**search_fields())
    trial = store.start_trial(search.id, "t", {})
    store.log_epoch(trial.id, "head", 1, {"loss": 2.0, "val_accuracy": 0.25})
    store.log_epoch(trial.id, "head", 2, {"loss": 1.5, "val_accuracy": float("nan")})
    store.log_epoch(trial.id, "finetune", 1, {"loss": 1.0})
    rows = raw(db, "SELECT trial_id, phase, epoch, name, value FROM epoch_metrics ORDER BY id")
    assert rows == [
        (trial.id, "head", 1, "loss", 2.0),
        (trial.id, "head", 1, "val_accuracy", 0.25),
        (trial.id, "head", 2, "loss", 1.5),
        (trial.id, "head", 2, "val_accuracy", None),  # NaN is stored as NULL
        (trial.id, "finetune", 1, "loss", 1.0),
    ]
    got = [(m.phase, m.epoch, m.name, m.value) for m in store.epoch_metrics(trial.id)]
    assert got == [row[1:] for row in rows]


def test_logging_the_same_epoch_metric_twice_is_an_autotl_error(store, db):
    search = store.create_search(**search_fields())
    trial = store.start_trial(search.id, "t", {})
    store.log_epoch(trial.id, "head", 1, {"loss": 2.0})
    with pytest.raises(AutotlError) as excinfo:  # not a raw SQLAlchemy IntegrityError
        store.log_epoch(trial.id, "head", 1, {"loss": 3.0})
    assert_one_line(str(excinfo.value))
    assert raw(db, "SELECT value FROM epoch_metrics") == [(2.0,)]
    store.log_epoch(trial.id, "head", 2, {"loss": 1.0})  # the store still works afterwards
    assert len(store.epoch_metrics(trial.id)) == 2


# --------------------------------------------------------------------------- best trial


def test_best_trial_max_ignores_unfinished_and_failed_and_prefers_earliest_tie(store):
    search = store.create_search(**search_fields(direction="max"))
    add_trial(store, search.id, COMPLETED, 0.5)                  # 1
    add_trial(store, search.id, FAILED, 0.99)                    # 2: failed, higher value
    tie_first = add_trial(store, search.id, COMPLETED, 0.8)      # 3
    add_trial(store, search.id, INTERRUPTED, 0.95)               # 4: interrupted
    add_trial(store, search.id, COMPLETED, 0.8)                  # 5: tie, later
    add_trial(store, search.id, COMPLETED, None)                 # 6: no value
    running = add_trial(store, search.id, None, None)            # 7: still running...
    store.finish_trial(running, RUNNING, value=0.999)            # ...even with a value
    best = store.best_trial(store.get_search(search.id))
    assert (best.id, best.number, best.value) == (tie_first, 3, 0.8)


def test_best_trial_min_direction_and_nan(store):
    search = store.create_search(**search_fields(direction="min"))
    add_trial(store, search.id, COMPLETED, 0.4)                  # 1
    tie_first = add_trial(store, search.id, COMPLETED, 0.2)      # 2
    add_trial(store, search.id, FAILED, 0.1)                     # 3: failed, lower value
    add_trial(store, search.id, COMPLETED, float("nan"))         # 4: NaN is no value (NULL sorts first in SQLite)
    add_trial(store, search.id, COMPLETED, 0.2)                  # 5: tie, later
    add_trial(store, search.id, RUNNING, 0.05)                   # 6: running
    best = store.best_trial(store.get_search(search.id))
    assert (best.id, best.number, best.value) == (tie_first, 2, 0.2)


def finished(store: Store, search_id: int, value: float, **metrics) -> int:
    trial = store.start_trial(search_id, "t", {"head_lr": 0.001})
    store.finish_trial(trial.id, COMPLETED, value=value, metrics=metrics)
    return trial.id


@pytest.mark.parametrize("direction", ["max", "min"])
def test_on_a_tie_the_lower_validation_loss_then_the_shallower_fine_tune_wins(store, direction):
    """Small validation sets tie (every trial at accuracy 1.0): the earliest trial is no reason to win."""
    search = store.create_search(**search_fields(direction=direction))
    worse = 0.5 if direction == "max" else 1.5
    finished(store, search.id, 1.0, val_loss=0.30, unfreeze_depth_applied=18)  # 1
    finished(store, search.id, worse, val_loss=0.01, unfreeze_depth_applied=0)  # 2: lowest loss, worse value
    lower_loss = finished(store, search.id, 1.0, val_loss=0.10, unfreeze_depth_applied=9)  # 3
    shallower = finished(store, search.id, 1.0, val_loss=0.10, unfreeze_depth_applied=4)  # 4: same loss, fewer blocks
    finished(store, search.id, 1.0)  # 5: no loss recorded: after those with one
    row = store.get_search(search.id)
    assert [t.id for t in store.best_trials(row, 2)] == [shallower, lower_loss]
    assert store.best_trial(row).id == shallower
    listed = store.select_trials(row, sort="value")
    assert [t.number for t in listed] == [4, 3, 1, 5, 2]  # `autotl trials --sort value` agrees


def fine_tuned(store: Store, search_id: int, value: float, depth: int, val_loss: float = 0.5) -> int:
    """A completed trial whose best epoch fine-tuned `depth` blocks (0: the head phase's)."""
    trial = store.start_trial(search_id, "t", {"head_lr": 0.001})
    store.finish_trial(trial.id, COMPLETED, value=value, best_phase="finetune" if depth else "head", best_epoch=1,
                       metrics={"val_loss": val_loss, "unfreeze_depth_applied": depth})
    return trial.id


def one_se_search(store: Store, val_examples: int, selection: str = "one-se"):
    return store.create_search(**search_fields(config={"selection": selection, "val_examples": val_examples}))


def test_one_se_chooses_the_fewest_fine_tuned_blocks_within_one_standard_error(store):
    """On 28 validation examples one standard error of 0.7143 is 0.0854: 0.6429 is within it, 0.6071 is not."""
    search = one_se_search(store, val_examples=28)
    full = fine_tuned(store, search.id, 20 / 28, depth=12, val_loss=0.40)   # 1: the best figure
    probe = fine_tuned(store, search.id, 18 / 28, depth=0)                  # 2: within one SE, no block
    half = fine_tuned(store, search.id, 19 / 28, depth=6)                   # 3
    fine_tuned(store, search.id, 17 / 28, depth=0)                          # 4: out of the window
    row = store.get_search(search.id)
    assert store.best_trial(row).id == probe
    assert [t.id for t in store.best_trials(row, 3)] == [probe, full, half]  # then the others, best first
    assert [t.number for t in store.kept_trials(row, 1)] == [2, 1, 3]  # the window's checkpoints stay
    line = selection_line(store.list_trials(search.id), row)
    assert line.startswith("one-se: trial 2 (val_accuracy 0.6429, 0 block(s) fine-tuned) is within one standard "
                           "error (0.0854) of trial 1's 0.7143 (12 block(s))"), line


def test_one_se_changes_nothing_when_the_gap_is_larger_than_the_noise(store):
    """On 1,000 examples one standard error of 0.85 is 0.0113: a probe 3 points behind stays behind."""
    search = one_se_search(store, val_examples=1000)
    full = fine_tuned(store, search.id, 0.85, depth=12)
    fine_tuned(store, search.id, 0.82, depth=0)
    row = store.get_search(search.id)
    assert store.best_trial(row).id == full
    assert [t.number for t in store.kept_trials(row, 1)] == [1]
    assert selection_line(store.list_trials(search.id), row) is None


def test_on_ties_at_accuracy_one_one_se_takes_the_simplest_model_whatever_its_loss(store):
    """Every trial at 1.0 (a standard error of 0): the loss tie-break of `best` would keep the confident fine-tune."""
    for selection, expected in (("best", 1), ("one-se", 2)):
        search = store.create_search(**search_fields(f"ties-{selection}",
                                                     config={"selection": selection, "val_examples": 30}))
        fine_tuned(store, search.id, 1.0, depth=18, val_loss=0.01)
        fine_tuned(store, search.id, 1.0, depth=0, val_loss=0.20)
        fine_tuned(store, search.id, 1.0, depth=4, val_loss=0.05)
        assert store.best_trial(store.get_search(search.id)).number == expected, selection


def test_a_fine_tune_whose_best_epoch_was_the_heads_counts_as_no_block(store):
    search = one_se_search(store, val_examples=28)
    fine_tuned(store, search.id, 20 / 28, depth=6)
    trial = store.start_trial(search.id, "t", {"head_lr": 0.001})
    store.finish_trial(trial.id, COMPLETED, value=19 / 28, best_phase="head", best_epoch=3,
                       metrics={"unfreeze_depth_applied": 12})
    assert store.best_trial(store.get_search(search.id)).id == trial.id


@pytest.mark.parametrize("value, chosen", [(0.70, True), (0.60, False), (0.95, True)])
def test_a_trial_within_the_window_of_the_best_so_far_may_be_chosen(store, value, chosen):
    """The runner keeps such a trial's checkpoint even when its figure ranks below the kept ones."""
    search = one_se_search(store, val_examples=28)
    assert may_be_chosen(search, value, best_value=0.75) is chosen
    assert not may_be_chosen(store.create_search(**search_fields("best")), 0.75, best_value=0.75)


def test_a_validation_accuracy_within_noise_of_the_majority_guess_is_a_warning():
    """convention-speeches: 20 of 28 validation texts right, where always answering 'democrat' gets 18."""
    labels = [0] * 18 + [1] * 10
    warning = no_better_than_a_guess(20 / 28, labels, ["democrat", "republican"])
    assert warning == ("warning: the best validation accuracy, 0.7143, is within one standard error (0.0906) of "
                       "always answering 'democrat' (0.6429 of the 28 validation examples): the validation split "
                       "cannot tell the model from that guess; more labelled examples, or a larger validation split, "
                       "would")
    assert no_better_than_a_guess(24 / 28, labels, ["democrat", "republican"]) is None
    assert no_better_than_a_guess(0.80, [0, 1] * 500, ["fresh", "rotten"]) is None


def test_best_trial_is_none_without_a_completed_trial(store):
    search = store.create_search(**search_fields())
    add_trial(store, search.id, FAILED, 0.9)
    add_trial(store, search.id, None, None)
    assert store.best_trial(search) is None


def test_best_trial_stays_within_its_search(store):
    a = store.create_search(**search_fields("a"))
    b = store.create_search(**search_fields("b"))
    add_trial(store, a.id, COMPLETED, 0.3)
    add_trial(store, b.id, COMPLETED, 0.9)
    assert store.best_trial(a).value == 0.3


# --------------------------------------------------------------------------- artifacts


def test_artifacts_filter_by_kind_and_trial(store):
    search = store.create_search(**search_fields("a"))
    other = store.create_search(**search_fields("b"))
    t1 = store.start_trial(search.id, "t1", {}).id
    t2 = store.start_trial(search.id, "t2", {}).id
    ids = {
        "ck1": store.add_artifact(search_id=search.id, trial_id=t1, kind="checkpoint", format="keras", path="c1").id,
        "ck2": store.add_artifact(search_id=search.id, trial_id=t2, kind="checkpoint", format="keras", path="c2").id,
        "ex1": store.add_artifact(search_id=search.id, trial_id=t1, kind="export", format="savedmodel", path="e1",
                                  sha256="a" * 64, size_bytes=123).id,
    }
    store.add_artifact(search_id=other.id, trial_id=None, kind="checkpoint", format="keras", path="other")

    def paths(**kw):
        return [a.path for a in store.artifacts(search.id, **kw)]

    assert paths() == ["c1", "c2", "e1"]
    assert paths(kind="checkpoint") == ["c1", "c2"]
    assert paths(kind="export") == ["e1"]
    assert paths(trial_id=t1) == ["c1", "e1"]
    assert paths(kind="checkpoint", trial_id=t2) == ["c2"]
    assert paths(kind="export", trial_id=t2) == []
    [export] = store.artifacts(search.id, kind="export")
    assert (export.id, export.sha256, export.size_bytes) == (ids["ex1"], "a" * 64, 123)


# --------------------------------------------------------------------------- bad URLs


@pytest.mark.parametrize("url, fragment", [
    ("nosuchdriver://x", "nosuchdriver"),
    ("not a url at all://", "not a url at all"),
    ("sqlite:////nonexistent/dir/x.db", "/nonexistent/dir"),
    ("postgresql://u:secret@127.0.0.1:1/db", "127.0.0.1"),
])
def test_bad_store_url_is_a_one_line_error(url, fragment):
    with pytest.raises(AutotlError) as excinfo:
        Store(url)
    message = str(excinfo.value)
    assert_one_line(message)
    assert fragment in message
    assert "secret" not in message  # the password is never shown



# --------------------------------------------------------------------------- upgrades


def downgrade_to_version_1(db: Path) -> None:
    """Make `db` exactly what schema version 1 wrote: trials without `data_path`, no evaluations."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("ALTER TABLE trials DROP COLUMN data_path")
        conn.execute("DROP TABLE evaluations")
        conn.execute("UPDATE autotl_meta SET value = '1' WHERE key = 'schema_version'")
        conn.commit()
    finally:
        conn.close()


def test_a_version_1_store_is_upgraded_in_place_without_losing_rows(db):
    old = Store(f"sqlite:///{db}")
    search = old.create_search(**search_fields())
    done = add_trial(old, search.id, COMPLETED, 0.75, tid="a")
    running = add_trial(old, search.id, None, None, tid="b")
    old.log_epoch(done, "head", 1, {"val_accuracy": 0.75})
    old.close()
    downgrade_to_version_1(db)
    assert "data_path" not in [row[1] for row in raw(db, "PRAGMA table_info(trials)")]

    upgraded = Store(f"sqlite:///{db}")
    assert upgraded.schema_version == SCHEMA_VERSION == 3
    assert "data_path" in [row[1] for row in raw(db, "PRAGMA table_info(trials)")]
    assert upgraded.evaluations(search.id) == []
    trials = upgraded.list_trials(search.id)
    assert [(t.id, t.status, t.value, t.data_path) for t in trials] == [
        (done, COMPLETED, 0.75, None), (running, RUNNING, None, None)]
    assert [(m.name, m.value) for m in upgraded.epoch_metrics(done)] == [("val_accuracy", 0.75)]
    upgraded.finish_trial(running, COMPLETED, value=0.5, data_path={"status": "hit"})
    assert upgraded.list_trials(search.id)[1].data_path == {"status": "hit"}
    upgraded.close()
    assert Store(f"sqlite:///{db}").schema_version == SCHEMA_VERSION  # a second open changes nothing


def test_a_store_from_a_newer_autotl_is_refused_in_one_line(db):
    Store(f"sqlite:///{db}").close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE autotl_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(AutotlError) as error:
        Store(f"sqlite:///{db}")
    assert_one_line(str(error.value))
    assert "schema version 99" in str(error.value) and "upgrade autotl" in str(error.value)
    assert raw(db, "SELECT value FROM autotl_meta WHERE key = 'schema_version'") == [("99",)]


def json_or_none(text: str | None):
    return None if text is None else json.loads(text)


def test_a_store_written_by_the_previous_version_opens_upgraded_and_reads_back_as_written(tmp_path):
    """Its rows are read with sqlite3 first, then through the store and the real CLI.

    It is at schema version 2; once a step is added to autotl.store.migrations, this is
    the store that step must upgrade in place.
    """
    db = shutil.copy(PREVIOUS_VERSION_STORE, tmp_path / "autotl.db")
    [(written_version,)] = raw(db, "SELECT value FROM autotl_meta WHERE key = 'schema_version'")
    [search_row] = raw(db, "SELECT id, name, backbone, objective, direction, status, labels, config, created_at "
                           "FROM searches")
    trial_rows = raw(db, "SELECT id, number, status, value, hyperparameters, best_phase, best_epoch, metrics, "
                         "data_path, duration_s FROM trials ORDER BY number")
    epoch_rows = raw(db, "SELECT trial_id, phase, epoch, name, value FROM epoch_metrics")
    artifact_rows = raw(db, "SELECT trial_id, kind, format, path, sha256, size_bytes FROM artifacts ORDER BY id")
    assert written_version == "2"
    assert len(trial_rows) == 5 and {row[2] for row in trial_rows} == {COMPLETED} and epoch_rows and artifact_rows

    store = Store(f"sqlite:///{db}")
    assert store.schema_version == SCHEMA_VERSION
    assert raw(db, "SELECT key, value FROM autotl_meta") == [("schema_version", str(SCHEMA_VERSION))]
    search = store.get_search("mnist")
    assert (search.id, search.name, search.backbone, search.objective, search.direction, search.status,
            search.labels, search.config, search.created_at) == (
        *search_row[:6], json.loads(search_row[6]), json.loads(search_row[7]), dt.datetime.fromisoformat(search_row[8]))
    trials = store.list_trials(search.id)
    assert [(t.id, t.number, t.status, t.value, t.hyperparameters, t.best_phase, t.best_epoch, t.metrics, t.data_path,
             t.duration_s) for t in trials] == [
        (*row[:4], json.loads(row[4]), row[5], row[6], json_or_none(row[7]), json_or_none(row[8]), row[9])
        for row in trial_rows]
    read_back = {(m.trial_id, m.phase, m.epoch, m.name): m.value for t in trials for m in store.epoch_metrics(t.id)}
    assert read_back == {row[:4]: row[4] for row in epoch_rows} and len(read_back) == len(epoch_rows)
    assert [(a.trial_id, a.kind, a.format, a.path, a.sha256, a.size_bytes)
            for a in store.artifacts(search.id)] == artifact_rows
    evaluation = store.add_evaluation(search_id=search.id, trial_number=5, exported="trial 5", export_sha256=None,
                                      model_dir="/m", model_format="keras", data="/t", examples=10, skipped=0,
                                      accuracy=0.9, metrics={"accuracy": 0.9})  # the table step 3 added
    assert [e.id for e in store.evaluations(search.id)] == [evaluation.id]
    store.close()

    url = f"sqlite:///{db}"
    listing = run_cli("trials", "mnist", "--store", url, check=True).stdout.splitlines()
    assert listing[0].split()[:3] == ["trial", "status", "val_accuracy"]
    assert [line.split()[:3] for line in listing[1:]] == [[str(row[1]), row[2], f"{row[3]:.4f}"] for row in trial_rows]
    assert listing[5].split()[:3] == ["5", COMPLETED, "0.9350"]
    best = json.loads(run_cli("best", "mnist", "--json", "--store", url, check=True).stdout)
    assert (best["search"], best["number"], best["objective"]) == ("mnist", 5, "val_accuracy")
    assert round(best["value"], 4) == 0.935
