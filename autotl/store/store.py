"""The SQL store: the `Store` facade over every search, trial, epoch metric and artifact.

The tables are in `autotl.store.models`, their history in `autotl.store.migrations`.
Any SQLAlchemy URL works; a SQLite file is the default and is opened in WAL mode
with a busy timeout so readers and a writer coexist, and every transaction on it
takes the write lock up front (``BEGIN IMMEDIATE``) so concurrent writers wait their
turn instead of failing with "database is locked". On a server, the few writes that
can collide (numbering a trial, creating a new store) are retried.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable, Collection, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from autotl.errors import AutotlError, first_line
from autotl.store.migrations import SCHEMA_VERSION, upgrade
from autotl.store.models import (COMPLETED, INTERRUPTED, RUNNING, Artifact, Base, EpochMetric, Evaluation, Meta,
                                 Search, Trial, utc_now)
from autotl.store.queries import (SearchSummary, check_where_names, chosen_first, filter_trials, one_se_window,
                                  search_summary_query, sort_trials, summarize, trial_rank)

DEFAULT_STORE = "sqlite:///autotl.db"
SQLITE_BUSY_TIMEOUT_S = 60
# start_trial numbers trials max+1; writers that race for a number retry this many times.
TRIAL_NUMBER_ATTEMPTS = 20
# Processes that create the same new store at once on a server: the losers retry this many times.
CREATE_ATTEMPTS = 5

_T = TypeVar("_T")


def normalize_url(url_or_path: str | Path) -> str:
    """Accept a SQLAlchemy URL or a plain file path (taken as a SQLite file).

    A SQLite file is made absolute, so the URL still names the same file from
    another folder (a trial worker, a manifest read elsewhere).
    """
    url_or_path = str(url_or_path)
    if "://" not in url_or_path:
        return f"sqlite:///{Path(url_or_path).expanduser().resolve()}"
    try:
        url = sa.make_url(url_or_path)
    except ArgumentError:
        return url_or_path  # reported by the engine, in one line
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:" \
            and not url.database.startswith("file:"):
        return url.set(database=str(Path(url.database).expanduser().resolve())).render_as_string(hide_password=False)
    return url_or_path


def _configure_sqlite(dbapi_connection, _record) -> None:
    """Per new SQLite connection: WAL, foreign keys, and no transactions opened by the driver.

    pysqlite would open a deferred transaction itself at the first write. A transaction
    that has read must then upgrade its lock, and when another writer holds it SQLite
    answers "database is locked" at once, without waiting on the busy timeout. With
    the driver's handling off (SQLAlchemy's documented pysqlite recipe),
    `_begin_immediate` opens every transaction instead. The PRAGMAs run here in
    autocommit, outside any transaction, as switching to WAL requires.
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_immediate(connection: sa.Connection) -> None:
    """Begin each SQLite transaction holding the write lock, waiting up to the busy timeout for it.

    This store's transactions, reads included, so queue one at a time (they are short);
    other readers of the file (the sqlite3 shell, a notebook) are never blocked (WAL).
    """
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """The trial store. Open with any SQLAlchemy URL or a SQLite file path."""

    def __init__(self, url: str | Path = DEFAULT_STORE, *, create: bool = True):
        self.url = normalize_url(url)
        self.engine = self._open_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            if create:
                _retry(self._create_or_upgrade, when=_lost_creation_race, attempts=CREATE_ATTEMPTS)
            else:
                with self.engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise AutotlError(f"cannot open store {self.display_url}: {_first_line(exc)}") from None

    @property
    def display_url(self) -> str:
        """The URL with any password hidden."""
        try:
            return sa.make_url(self.url).render_as_string(hide_password=True)
        except ArgumentError:
            return self.url

    @staticmethod
    def _open_engine(url: str) -> sa.Engine:
        try:
            parsed = sa.make_url(url)
        except ArgumentError:
            raise AutotlError(f"not a valid store URL: {url!r} (expected e.g. sqlite:///autotl.db)") from None
        shown = parsed.render_as_string(hide_password=True)  # never echo a password
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                folder = Path(database).expanduser().resolve().parent
                if not folder.is_dir():
                    raise AutotlError(f"cannot open store {shown}: folder {folder} does not exist")
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        try:
            engine = sa.create_engine(parsed, **kwargs)
        except (NoSuchModuleError, ArgumentError, ImportError) as exc:
            raise AutotlError(f"cannot open store {shown}: {_first_line(exc)}") from None
        if parsed.get_backend_name() == "sqlite":
            event.listen(engine, "connect", _configure_sqlite)
            event.listen(engine, "begin", _begin_immediate)
        return engine

    def _create_or_upgrade(self) -> None:
        """Create the missing tables, then stamp or upgrade the schema version.

        On PostgreSQL, processes creating the same new store at once may collide on a
        table or on the stamp (`_lost_creation_race`); the store retries, and then
        finds them made. On SQLite `BEGIN IMMEDIATE` serialises them.
        """
        Base.metadata.create_all(self.engine)
        self._stamp_schema_version()

    def _stamp_schema_version(self) -> None:
        """Stamp a new store, or upgrade an older one in place (one transaction per step)."""
        with self.session() as session:
            stamp = session.get(Meta, "schema_version")
            if stamp is None:
                session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            version = int(stamp.value)
        if version > SCHEMA_VERSION:
            raise AutotlError(f"store {self.display_url} has schema version {version}, newer than this autotl "
                              f"understands ({SCHEMA_VERSION}): upgrade autotl")
        upgrade(self.engine, version)

    @property
    def schema_version(self) -> int:
        with self.session() as session:
            return int(session.get(Meta, "schema_version").value)

    def session(self) -> "_Transaction":
        return _Transaction(self._sessions)

    # --- searches -------------------------------------------------------------------

    def create_search(self, **fields: Any) -> Search:
        with self.session() as session:
            if session.scalar(sa.select(Search.id).where(Search.name == fields["name"])) is not None:
                raise AutotlError(f"a search named {fields['name']!r} already exists in {self.display_url}; choose another --name")
            search = Search(**fields)
            session.add(search)
            session.flush()
            return search

    def get_search(self, ref: str | int) -> Search:
        """A search by name, or by id when `ref` is a number that names none."""
        with self.session() as session:
            search = session.scalar(sa.select(Search).where(Search.name == str(ref)))
            if search is None and str(ref).isdigit():
                search = session.get(Search, int(ref))
            if search is None:
                raise AutotlError(f"no search {ref!r} in {self.display_url} (see `autotl searches`)")
            return search

    def list_searches(self) -> list[Search]:
        with self.session() as session:
            return list(session.scalars(sa.select(Search).order_by(Search.id)))

    def search_summaries(self) -> list[SearchSummary]:
        """Every search with its number of trials and best value (as `best_trial` picks it), in one query."""
        with self.session() as session:
            return [summarize(*row) for row in session.execute(search_summary_query())]

    def delete_search(self, search_id: int) -> None:
        """The search and everything recorded of it: the database removes its trials, their epochs and its
        artifacts with it (their foreign keys cascade)."""
        with self.session() as session:
            session.execute(sa.delete(Search).where(Search.id == search_id))

    def finish_search(self, search_id: int, status: str, error: str | None = None) -> None:
        with self.session() as session:
            search = session.get(Search, search_id)
            search.status, search.error, search.finished_at = status, error, utc_now()

    def reopen_search(self, search_id: int, config_changes: dict[str, Any] | None = None) -> Search:
        """Mark a search running again, to resume it, or to extend it with `config_changes`
        (a higher ``max_trials`` or ``time_limit``)."""
        with self.session() as session:
            search = session.get(Search, search_id)
            search.status, search.error, search.finished_at = RUNNING, None, None
            if config_changes:
                search.config = {**search.config, **config_changes}  # a new dict: JSON changes are not tracked
            return search

    def update_search_config(self, search_id: int, changes: dict[str, Any]) -> Search:
        with self.session() as session:
            search = session.get(Search, search_id)
            search.config = {**search.config, **changes}
            return search

    # --- trials ---------------------------------------------------------------------

    def start_trial(self, search_id: int, tuner_trial_id: str, hyperparameters: dict) -> Trial:
        """Add a running trial numbered one past the search's last.

        On a server database two workers can read the same last number; the one that
        commits second breaks UniqueConstraint(search_id, number), and tries again in a
        new transaction with a new number. (SQLite never races: `BEGIN IMMEDIATE`.)
        """
        return _retry(lambda: self._add_next_trial(search_id, tuner_trial_id, hyperparameters),
                      when=_is_unique_violation, attempts=TRIAL_NUMBER_ATTEMPTS)

    def _add_next_trial(self, search_id: int, tuner_trial_id: str, hyperparameters: dict) -> Trial:
        with self.session() as session:
            number = self._next_trial_number(session, search_id)
            trial = Trial(search_id=search_id, number=number, tuner_trial_id=tuner_trial_id,
                          hyperparameters=hyperparameters, status=RUNNING)
            session.add(trial)
            session.flush()
            return trial

    @staticmethod
    def _next_trial_number(session: Session, search_id: int) -> int:
        return 1 + (session.scalar(sa.select(sa.func.max(Trial.number)).where(Trial.search_id == search_id)) or 0)

    def interrupt_running_trials(self, search_id: int, reason: str) -> int:
        """Mark the search's trials still `running` as interrupted; returns how many."""
        with self.session() as session:
            running = list(session.scalars(
                sa.select(Trial).where(Trial.search_id == search_id, Trial.status == RUNNING)))
            for trial in running:
                trial.status, trial.error, trial.finished_at = INTERRUPTED, reason, utc_now()
                trial.duration_s = (trial.finished_at - trial.started_at).total_seconds()
            return len(running)

    def log_epoch(self, trial_id: int, phase: str, epoch: int, metrics: dict[str, float]) -> None:
        with self.session() as session:
            session.add_all(
                EpochMetric(trial_id=trial_id, phase=phase, epoch=epoch, name=name, value=_finite_or_none(value))
                for name, value in metrics.items()
            )

    def finish_trial(self, trial_id: int, status: str, *, value: float | None = None, best_phase: str | None = None,
                     best_epoch: int | None = None, metrics: dict | None = None, data_path: dict | None = None,
                     error: str | None = None) -> Trial:
        with self.session() as session:
            trial = session.get(Trial, trial_id)
            trial.status, trial.error, trial.data_path = status, error, data_path
            trial.value, trial.best_phase, trial.best_epoch = _finite_or_none(value), best_phase, best_epoch
            trial.metrics = metrics
            trial.finished_at = utc_now()
            trial.duration_s = (trial.finished_at - trial.started_at).total_seconds()
            return trial

    def list_trials(self, search_id: int) -> list[Trial]:
        with self.session() as session:
            return list(session.scalars(sa.select(Trial).where(Trial.search_id == search_id).order_by(Trial.number)))

    def select_trials(self, search: Search, *, statuses: Collection[str] = (), where: dict[str, str] | None = None,
                      sort: str = "number", limit: int | None = None) -> list[Trial]:
        """The trials of `search` with one of `statuses` (any, when empty) whose hyperparameters meet `where`.

        Sorted by `sort` ("number"; "value", best first; "duration", longest first) and cut
        to `limit`. A `where` name that none of the search's trials has is a UsageError.
        """
        listed = self.list_trials(search.id)
        where = where or {}
        check_where_names(listed, where, search.name)
        return sort_trials(filter_trials(listed, statuses, where), sort, search.direction)[:limit]

    def best_trial(self, search: Search) -> Trial | None:
        """The completed trial the search chooses: the best objective value (ties: `queries.rank_key`), or by the
        search's selection rule (`queries.chosen_first`)."""
        best = self.best_trials(search, 1)
        return best[0] if best else None

    def best_trials(self, search: Search, count: int) -> list[Trial]:
        """The `count` completed trials the search would choose first (`queries.chosen_first`), in that order.

        Sorted in Python: the tie-break reads the metrics' JSON, and a search has a few hundred trials at most."""
        return chosen_first(self._completed_with_value(search), search)[:count]

    def kept_trials(self, search: Search, count: int) -> list[Trial]:
        """The trials whose checkpoints a search keeps: its `count` first choices, and with the one-standard-error
        rule every trial within one standard error of the best, any of which a later trial may make the choice."""
        completed = self._completed_with_value(search)
        ranked = sorted(completed, key=lambda trial: trial_rank(trial, search.direction))
        kept = chosen_first(completed, search)[:count]
        return kept + [trial for trial in one_se_window(ranked, search) if trial not in kept]

    def _completed_with_value(self, search: Search) -> list[Trial]:
        with self.session() as session:
            return list(session.scalars(sa.select(Trial).where(
                Trial.search_id == search.id, Trial.status == COMPLETED, Trial.value.is_not(None))))

    def completed_trial(self, search_id: int, tuner_trial_id: str) -> Trial | None:
        """The completed row of KerasTuner's trial `tuner_trial_id`, if the store holds one."""
        with self.session() as session:
            return session.scalar(sa.select(Trial).where(
                Trial.search_id == search_id, Trial.tuner_trial_id == tuner_trial_id, Trial.status == COMPLETED))

    def completed_trial_costs(self, search_id: int) -> list[tuple[int, float]]:
        """Each completed trial of the search: its unfreeze depth (0: a head alone) and how long it took, in
        seconds."""
        with self.session() as session:
            rows = session.execute(sa.select(Trial.hyperparameters, Trial.duration_s).where(
                Trial.search_id == search_id, Trial.status == COMPLETED, Trial.duration_s.is_not(None)))
            return [(int((values or {}).get("unfreeze_depth", 0)), float(seconds)) for values, seconds in rows]

    def count_trials(self, search_id: int, status: str) -> int:
        with self.session() as session:
            return session.scalar(sa.select(sa.func.count(Trial.id)).where(
                Trial.search_id == search_id, Trial.status == status))

    def epochs_by_trial(self, trial_ids: Collection[int]) -> dict[int, list[EpochMetric]]:
        """The epoch metrics of each of `trial_ids` (one query), in the order they were logged."""
        found: dict[int, list[EpochMetric]] = {trial_id: [] for trial_id in trial_ids}
        with self.session() as session:
            for metric in session.scalars(sa.select(EpochMetric).where(EpochMetric.trial_id.in_(list(found)))
                                          .order_by(EpochMetric.id)):
                found[metric.trial_id].append(metric)
        return found

    def epoch_metrics(self, trial_id: int) -> list[EpochMetric]:
        with self.session() as session:
            return list(session.scalars(
                sa.select(EpochMetric).where(EpochMetric.trial_id == trial_id)
                .order_by(EpochMetric.id)))

    # --- evaluations ----------------------------------------------------------------

    def add_evaluation(self, **fields: Any) -> Evaluation:
        with self.session() as session:
            evaluation = Evaluation(**fields)
            session.add(evaluation)
            session.flush()
            return evaluation

    def evaluations(self, search_id: int) -> list[Evaluation]:
        """The search's evaluations, oldest first."""
        with self.session() as session:
            return list(session.scalars(sa.select(Evaluation).where(Evaluation.search_id == search_id)
                                        .order_by(Evaluation.id)))

    # --- artifacts ------------------------------------------------------------------

    def add_artifact(self, **fields: Any) -> Artifact:
        with self.session() as session:
            artifact = Artifact(**fields)
            session.add(artifact)
            session.flush()
            return artifact

    def artifacts(self, search_id: int, kind: str | None = None, trial_id: int | None = None) -> list[Artifact]:
        query = sa.select(Artifact).where(Artifact.search_id == search_id)
        if kind is not None:
            query = query.where(Artifact.kind == kind)
        if trial_id is not None:
            query = query.where(Artifact.trial_id == trial_id)
        with self.session() as session:
            return list(session.scalars(query.order_by(Artifact.id)))

    def stale_checkpoints(self, search_id: int, keep: int = 1) -> list[Artifact]:
        """Checkpoints of finished trials other than the `keep` best: no longer needed."""
        kept = [trial.id for trial in self.kept_trials(self.get_search(search_id), keep)]
        with self.session() as session:
            query = (sa.select(Artifact).join(Trial, Artifact.trial_id == Trial.id)
                     .where(Artifact.search_id == search_id, Artifact.kind == "checkpoint", Trial.status != RUNNING))
            if kept:
                query = query.where(Artifact.trial_id.not_in(kept))
            return list(session.scalars(query))

    def delete_artifacts(self, artifact_ids: list[int]) -> None:
        if artifact_ids:
            with self.session() as session:
                session.execute(sa.delete(Artifact).where(Artifact.id.in_(artifact_ids)))

    def close(self) -> None:
        self.engine.dispose()


class _Transaction:
    """``with store.session() as s:`` commits on success and rolls back on error."""

    def __init__(self, factory: sessionmaker):
        self._session: Session = factory()

    def __enter__(self) -> Session:
        return self._session

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                try:
                    self._session.commit()
                except SQLAlchemyError as commit_exc:  # e.g. a constraint only checked at commit
                    self._session.rollback()
                    raise AutotlError(f"store error: {_first_line(commit_exc)}") from commit_exc
            else:
                self._session.rollback()
        finally:
            self._session.close()
        if exc_type is not None and issubclass(exc_type, SQLAlchemyError):
            raise AutotlError(f"store error: {_first_line(exc)}") from exc


def _retry(work: Callable[[], _T], *, when: Callable[[BaseException], bool], attempts: int,
           first_delay_s: float = 0.005, max_delay_s: float = 0.2) -> _T:
    """Run `work` (whole transactions) again while it fails with a SQLAlchemy error `when` accepts.

    `_Transaction` turns that error into an AutotlError raised from it, so `when` is
    asked about the cause. Waits grow exponentially, with jitter so the writers that
    collided do not collide again; the last failure is raised as is.
    """
    for attempt in range(1, attempts):
        try:
            return work()
        except (AutotlError, SQLAlchemyError) as error:
            cause = error if isinstance(error, SQLAlchemyError) else error.__cause__
            if not isinstance(cause, SQLAlchemyError) or not when(cause):
                raise
        time.sleep(min(max_delay_s, first_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5))
    return work()


def _is_unique_violation(exc: BaseException) -> bool:
    """A duplicate key (not, e.g., a missing foreign key): PostgreSQL's code 23505, or the message."""
    if not isinstance(exc, IntegrityError):
        return False
    orig = getattr(exc, "orig", None)
    if getattr(orig, "pgcode", None) is not None:
        return orig.pgcode == "23505"
    message = str(orig or exc).lower()
    return "unique" in message or "duplicate" in message


def _lost_creation_race(exc: BaseException) -> bool:
    """Another process created the same table, type or stamp first.

    create_all looks for each table before creating it, and on PostgreSQL another
    transaction's uncommitted table is not seen: the loser then fails on a duplicate
    key in pg_type (23505), or with duplicate_table / duplicate_object (42P07, 42710).
    """
    if _is_unique_violation(exc):
        return True
    orig = getattr(exc, "orig", None)
    return getattr(orig, "pgcode", None) in {"42P07", "42710"} or "already exists" in str(orig or exc).lower()


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _first_line(exc: BaseException) -> str:
    """SQLAlchemy wraps the driver's error, whose own message is the informative one."""
    return first_line(getattr(exc, "orig", None) or exc)
