"""Many processes writing one store at once, on a SQLite file and on a real PostgreSQL server.

Each writer is a separate Python process (as trial workers on one machine, or on many
machines sharing a server, are), released at the same moment so their transactions
overlap: writing trials, creating a new store, upgrading an old one. Also: how
trial-number races are retried, SQLite's up-front write lock, and the whole store
API on PostgreSQL (an old-schema store upgraded in place included).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import sqlalchemy as sa

from autotl.store import store as store_module
from autotl.errors import AutotlError
from autotl.store import COMPLETED, FAILED, SCHEMA_VERSION, Store

from test_store import add_trial, search_fields

PROCESSES = 4
TRIALS_PER_PROCESS = 200
EPOCHS = {("head", 1): {"loss": 1.0, "val_accuracy": 0.5}, ("finetune", 1): {"loss": 0.5, "val_accuracy": 0.75}}
METRICS_PER_TRIAL = sum(len(metrics) for metrics in EPOCHS.values())

# One writer: imports, says "ready", waits for "go", then opens the store, writes its trials
# and prints what happened as JSON. Errors in writing are counted, not raised, so all are seen.
WRITER = r"""
import json, sys, time
from autotl.store import COMPLETED, Store

url, search_id, worker, trials, create_search = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
epochs = json.loads(sys.argv[6])
errors, attempts, calls = [], 0, []
print("ready", flush=True)
sys.stdin.readline()
started = time.perf_counter()
store = Store(url)  # all writers open the store at once too
add_next = store._add_next_trial
def counting(*args):
    global attempts
    attempts += 1
    calls[-1] += 1
    return add_next(*args)
store._add_next_trial = counting
if create_search:
    search_id = store.create_search(name=f"search-{worker}", backbone="tiny_cnn", weights="none", modality="image",
        dataset_path="/d", dataset_fingerprint="f" * 64, labels=["0", "1"], config={}, objective="val_accuracy",
        direction="max", workdir="/w").id
for i in range(trials):
    try:
        calls.append(0)
        trial = store.start_trial(search_id, f"{worker}-{i}", {"worker": worker, "i": i})
        for phase, epoch, metrics in epochs:
            store.log_epoch(trial.id, phase, epoch, metrics)
        store.finish_trial(trial.id, COMPLETED, value=i / trials, metrics={"worker": worker})
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
store.close()
print(json.dumps({"errors": errors, "seconds": time.perf_counter() - started, "search_id": search_id,
                  "number_retries": attempts - trials, "most_attempts": max(calls, default=0)}), flush=True)
"""


def run_writers(url: str, search_id: int, trials: int, processes: int = PROCESSES,
                create_search: bool = False) -> list[dict]:
    """Start `processes` writers, release them together once all are ready, and collect their reports."""
    epochs = json.dumps([[phase, epoch, metrics] for (phase, epoch), metrics in EPOCHS.items()])
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(search_id), f"w{k}", str(trials),
                                 "1" if create_search else "0", epochs],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for k in range(processes)]
    try:
        for writer in writers:
            line = writer.stdout.readline()
            assert line.strip() == "ready", f"writer did not start: {line!r} {writer.stderr.read()}"
        for writer in writers:
            writer.stdin.write("go\n")
            writer.stdin.flush()
        reports = []
        for writer in writers:
            out, err = writer.communicate(timeout=300)
            assert writer.returncode == 0, f"writer failed ({writer.returncode}):\n{err}"
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()


def check_all_written(store: Store, search_id: int, expected: int) -> list:
    trials = store.list_trials(search_id)
    assert len(trials) == expected
    assert sorted(t.number for t in trials) == list(range(1, expected + 1))
    assert all(t.status == COMPLETED and t.value is not None and t.duration_s >= 0 for t in trials)
    assert len({t.tuner_trial_id for t in trials}) == expected
    with store.engine.connect() as connection:
        per_trial = dict(connection.execute(
            sa.select(store_module.EpochMetric.trial_id, sa.func.count())
            .join(store_module.Trial, store_module.Trial.id == store_module.EpochMetric.trial_id)
            .where(store_module.Trial.search_id == search_id)
            .group_by(store_module.EpochMetric.trial_id)).all())
    assert per_trial == {t.id: METRICS_PER_TRIAL for t in trials}
    return trials


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return request.getfixturevalue("fresh_postgres_url")


def test_concurrent_writers_lose_nothing_and_number_trials_uniquely(store_url):
    parent = Store(store_url)
    search = parent.create_search(**search_fields("shared"))
    started = time.perf_counter()
    reports = run_writers(store_url, search.id, TRIALS_PER_PROCESS)
    elapsed = time.perf_counter() - started
    assert [r["errors"] for r in reports] == [[]] * PROCESSES
    trials = check_all_written(parent, search.id, PROCESSES * TRIALS_PER_PROCESS)
    for k in range(PROCESSES):  # each writer's own trials are numbered in the order it wrote them
        own = [t.number for t in sorted(trials, key=lambda t: t.id) if t.hyperparameters["worker"] == f"w{k}"]
        assert own == sorted(own) and len(own) == TRIALS_PER_PROCESS
    retries = sum(r["number_retries"] for r in reports)
    most = max(r["most_attempts"] for r in reports)
    if store_url.startswith("sqlite"):
        assert retries == 0  # BEGIN IMMEDIATE: SQLite writers never race for a number
    writer_seconds = ", ".join(f"{r['seconds']:.1f}" for r in reports)
    print(f"\n{store_url.split(':')[0]}: {PROCESSES}x{TRIALS_PER_PROCESS} trials in {elapsed:.1f} s "
          f"(writers {writer_seconds} s), trial-number retries {retries} (at most {most} attempts for one trial)")
    parent.close()


def test_concurrent_first_opens_of_a_new_store(store_url):
    """Writers that all create the same new store at once (tables, schema stamp, SQLite's WAL switch)."""
    reports = run_writers(store_url, 0, trials=25, create_search=True)
    assert [r["errors"] for r in reports] == [[]] * PROCESSES
    store = Store(store_url)
    assert store.schema_version == SCHEMA_VERSION
    for report in reports:
        check_all_written(store, report["search_id"], 25)
    store.close()


def downgrade_to_version_1(store: Store) -> None:
    """Make the store exactly what schema version 1 wrote: trials without `data_path`."""
    with store.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE trials DROP COLUMN data_path"))
        connection.execute(sa.text("UPDATE autotl_meta SET value = '1' WHERE key = 'schema_version'"))


def test_concurrent_opens_upgrade_an_old_store_once(store_url):
    """Writers that all open a version-1 store at once: one applies each step, the others find it done."""
    old = Store(store_url)
    search = old.create_search(**search_fields())
    done = add_trial(old, search.id, COMPLETED, 0.75, tid="old")
    for (phase, epoch), metrics in EPOCHS.items():
        old.log_epoch(done, phase, epoch, metrics)
    downgrade_to_version_1(old)
    old.close()
    reports = run_writers(store_url, search.id, trials=10)
    assert [r["errors"] for r in reports] == [[]] * PROCESSES
    store = Store(store_url)
    assert store.schema_version == SCHEMA_VERSION
    trials = check_all_written(store, search.id, 1 + PROCESSES * 10)
    assert (trials[0].id, trials[0].tuner_trial_id, trials[0].data_path) == (done, "old", None)
    assert "data_path" in [column["name"] for column in sa.inspect(store.engine).get_columns("trials")]
    store.close()


# --------------------------------------------------------------------------- trial numbers


def test_a_lost_race_for_a_trial_number_is_retried_with_the_next(tmp_path, monkeypatch):
    """As a PostgreSQL writer that read the same last number as another: it tries again with a new one."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    search = store.create_search(**search_fields())
    store.start_trial(search.id, "first", {})
    stale = iter([1, 1])  # the first two attempts read a number already taken
    real_next = Store._next_trial_number
    monkeypatch.setattr(Store, "_next_trial_number",
                        staticmethod(lambda session, search_id: next(stale, None) or real_next(session, search_id)))
    sleeps = []
    monkeypatch.setattr(store_module.time, "sleep", sleeps.append)
    trial = store.start_trial(search.id, "second", {})
    assert trial.number == 2 and len(sleeps) == 2
    assert [(t.number, t.tuner_trial_id) for t in store.list_trials(search.id)] == [(1, "first"), (2, "second")]
    store.close()


def test_trial_number_retries_are_bounded_and_end_in_a_one_line_error(tmp_path, monkeypatch):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    search = store.create_search(**search_fields())
    store.start_trial(search.id, "first", {})
    monkeypatch.setattr(Store, "_next_trial_number", staticmethod(lambda session, search_id: 1))
    sleeps = []
    monkeypatch.setattr(store_module.time, "sleep", sleeps.append)
    with pytest.raises(AutotlError) as error:
        store.start_trial(search.id, "never", {})
    assert "\n" not in str(error.value) and "UNIQUE" in str(error.value)
    assert len(sleeps) == store_module.TRIAL_NUMBER_ATTEMPTS - 1
    assert max(sleeps) <= 0.3  # bounded backoff: under 4 s of waiting in all
    monkeypatch.undo()
    assert [t.number for t in store.list_trials(search.id)] == [1]
    assert store.start_trial(search.id, "later", {}).number == 2
    store.close()


def test_a_missing_search_is_not_retried(tmp_path, monkeypatch):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    sleeps = []
    monkeypatch.setattr(store_module.time, "sleep", sleeps.append)
    with pytest.raises(AutotlError, match="FOREIGN KEY"):
        store.start_trial(12345, "orphan", {})
    assert sleeps == []
    store.close()


# --------------------------------------------------------------------------- SQLite transactions


def test_sqlite_transactions_take_the_write_lock_at_begin(tmp_path):
    """A read-then-write transaction waits for another writer instead of failing at the lock upgrade."""
    db = tmp_path / "s.db"
    store = Store(f"sqlite:///{db}")
    search = store.create_search(**search_fields())
    statements = []
    sa.event.listen(store.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: statements.append(statement))
    store.list_trials(search.id)
    assert statements[0] == "BEGIN IMMEDIATE"
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock for 0.5 s
    release = threading.Timer(0.5, blocker.execute, ["COMMIT"])
    release.start()
    started = time.perf_counter()
    trial = store.start_trial(search.id, "waited", {})  # reads max(number), then inserts
    assert time.perf_counter() - started >= 0.4
    assert trial.number == 1
    release.join()
    blocker.close()
    store.close()


def test_sqlite_read_only_calls_and_wal_mode_still_work(tmp_path):
    db = tmp_path / "s.db"
    store = Store(str(db))
    search = store.create_search(**search_fields())
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert Store(str(db), create=False).get_search("s1").id == search.id
    assert store.list_searches()[0].name == "s1"
    assert store.best_trial(search) is None and store.artifacts(search.id) == []
    store.close()


# --------------------------------------------------------------------------- PostgreSQL


def test_the_store_works_end_to_end_on_postgresql(fresh_postgres_url):
    store = Store(fresh_postgres_url)
    assert store.schema_version == SCHEMA_VERSION
    search = store.create_search(**search_fields("pg", direction="min"))
    with pytest.raises(AutotlError, match="already exists"):
        store.create_search(**search_fields("pg"))
    first = add_trial(store, search.id, COMPLETED, 0.4, tid="a")
    best = add_trial(store, search.id, COMPLETED, 0.2, tid="b")
    add_trial(store, search.id, FAILED, 0.1, tid="c")
    add_trial(store, search.id, COMPLETED, float("nan"), tid="d")
    running = add_trial(store, search.id, None, None, tid="e")
    store.log_epoch(first, "head", 1, {"loss": 2.0, "val_loss": float("inf")})
    with pytest.raises(AutotlError) as duplicate:
        store.log_epoch(first, "head", 1, {"loss": 3.0})
    assert "\n" not in str(duplicate.value)
    store.add_artifact(search_id=search.id, trial_id=best, kind="checkpoint", format="keras", path="ck")
    store.add_artifact(search_id=search.id, trial_id=best, kind="export", format="savedmodel", path="ex",
                       sha256="a" * 64, size_bytes=2 ** 40)
    store.finish_trial(running, COMPLETED, value=0.3, data_path={"status": "hit"}, metrics={"val_loss": 0.3})
    store.finish_search(search.id, COMPLETED)
    store.close()

    reopened = Store(fresh_postgres_url)  # an existing PostgreSQL store keeps its rows
    got = reopened.get_search("pg")
    assert (got.id, got.status, got.labels, got.config) == (search.id, COMPLETED, ["0", "1"], search_fields()["config"])
    assert reopened.get_search(search.id).name == "pg"
    assert [t.number for t in reopened.list_trials(search.id)] == [1, 2, 3, 4, 5]
    assert reopened.best_trial(got).id == best  # NaN stored as NULL never wins
    assert [(m.name, m.value) for m in reopened.epoch_metrics(first)] == [("loss", 2.0), ("val_loss", None)]
    last = reopened.list_trials(search.id)[-1]
    assert (last.value, last.data_path, last.metrics) == (0.3, {"status": "hit"}, {"val_loss": 0.3})
    assert [a.path for a in reopened.artifacts(search.id)] == ["ck", "ex"]
    assert reopened.artifacts(search.id, kind="export")[0].size_bytes == 2 ** 40
    assert [s.name for s in reopened.list_searches()] == ["pg"]
    assert reopened.start_trial(search.id, "f", {}).number == 6
    with reopened.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT key, value FROM autotl_meta")).all() == [
            ("schema_version", str(SCHEMA_VERSION))]
    reopened.close()


def test_a_version_1_postgresql_store_is_upgraded_in_place(fresh_postgres_url):
    old = Store(fresh_postgres_url)
    search = old.create_search(**search_fields())
    done = add_trial(old, search.id, COMPLETED, 0.75, tid="a")
    old.log_epoch(done, "head", 1, {"val_accuracy": 0.75})
    downgrade_to_version_1(old)
    old.close()

    upgraded = Store(fresh_postgres_url)
    assert upgraded.schema_version == SCHEMA_VERSION == 3
    columns = [column["name"] for column in sa.inspect(upgraded.engine).get_columns("trials")]
    assert "data_path" in columns
    [trial] = upgraded.list_trials(search.id)
    assert (trial.id, trial.status, trial.value, trial.data_path) == (done, COMPLETED, 0.75, None)
    assert [(m.name, m.value) for m in upgraded.epoch_metrics(done)] == [("val_accuracy", 0.75)]
    second = upgraded.start_trial(search.id, "b", {})
    upgraded.finish_trial(second.id, COMPLETED, value=0.5, data_path={"status": "computed"})
    assert upgraded.list_trials(search.id)[1].data_path == {"status": "computed"}
    upgraded.close()
    assert Store(fresh_postgres_url).schema_version == SCHEMA_VERSION


def test_a_postgresql_store_from_a_newer_autotl_is_refused(fresh_postgres_url):
    Store(fresh_postgres_url).close()
    engine = sa.create_engine(fresh_postgres_url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE autotl_meta SET value = '99' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(AutotlError, match="schema version 99"):
        Store(fresh_postgres_url)
