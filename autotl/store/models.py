"""The store's tables as SQLAlchemy ORM models, and the statuses a search or trial goes through.

One row per search; one per trial, written when the trial starts and updated when
it ends (so a crash keeps everything written before it); one per (trial, phase,
epoch, metric name) like optuna's intermediate values; one per artifact (the best
checkpoint, each export); one per evaluation of an export on labelled data (`autotl evaluate`); and
`autotl_meta`, whose `schema_version` row says which step of `autotl.store.migrations` the tables are at.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RUNNING, COMPLETED, FAILED, INTERRUPTED = "running", "completed", "failed", "interrupted"


def utc_now() -> dt.datetime:
    """The time now in UTC, without tzinfo: how the DateTime columns hold it on every database."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict: sa.JSON, list: sa.JSON}


class Meta(Base):
    __tablename__ = "autotl_meta"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(256))


class Search(Base):
    __tablename__ = "searches"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    backbone: Mapped[str] = mapped_column(sa.String(100))
    weights: Mapped[str] = mapped_column(sa.Text)
    modality: Mapped[str] = mapped_column(sa.String(16))
    dataset_path: Mapped[str] = mapped_column(sa.Text)
    dataset_fingerprint: Mapped[str] = mapped_column(sa.String(64))
    labels: Mapped[list] = mapped_column()
    config: Mapped[dict] = mapped_column()
    objective: Mapped[str] = mapped_column(sa.String(100))
    direction: Mapped[str] = mapped_column(sa.String(3))
    status: Mapped[str] = mapped_column(sa.String(16), default=RUNNING)
    error: Mapped[str | None] = mapped_column(sa.Text)
    workdir: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column()
    trials: Mapped[list["Trial"]] = relationship(back_populates="search", order_by="Trial.number")


class Trial(Base):
    __tablename__ = "trials"
    __table_args__ = (sa.UniqueConstraint("search_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    search_id: Mapped[int] = mapped_column(sa.ForeignKey("searches.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column()
    tuner_trial_id: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16), default=RUNNING)
    hyperparameters: Mapped[dict] = mapped_column()
    value: Mapped[float | None] = mapped_column()
    best_phase: Mapped[str | None] = mapped_column(sa.String(16))
    best_epoch: Mapped[int | None] = mapped_column()
    metrics: Mapped[dict | None] = mapped_column()
    data_path: Mapped[dict | None] = mapped_column()  # how the data reached the model (cache hit, ...)
    error: Mapped[str | None] = mapped_column(sa.Text)
    started_at: Mapped[dt.datetime] = mapped_column(default=utc_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column()
    duration_s: Mapped[float | None] = mapped_column()
    search: Mapped[Search] = relationship(back_populates="trials")

    def hyperparameters_line(self, number: Callable[[float], str] = "{:.3g}".format) -> str:
        """The tuned hyperparameters as ``name=value, ...``, floats written by `number`,
        without KerasTuner's bookkeeping entries (``tuner/epochs`` and the like)."""
        return ", ".join(f"{name}={number(value) if isinstance(value, float) else value}"
                         for name, value in self.hyperparameters.items() if not name.startswith("tuner/"))


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (sa.UniqueConstraint("trial_id", "phase", "epoch", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(sa.ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    phase: Mapped[str] = mapped_column(sa.String(16))
    epoch: Mapped[int] = mapped_column()
    name: Mapped[str] = mapped_column(sa.String(100))
    value: Mapped[float | None] = mapped_column()
    logged_at: Mapped[dt.datetime] = mapped_column(default=utc_now)


class Artifact(Base):
    __tablename__ = "artifacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    search_id: Mapped[int] = mapped_column(sa.ForeignKey("searches.id", ondelete="CASCADE"), index=True)
    trial_id: Mapped[int | None] = mapped_column(sa.ForeignKey("trials.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(sa.String(32))  # "checkpoint" | "export"
    format: Mapped[str] = mapped_column(sa.String(32))
    path: Mapped[str] = mapped_column(sa.Text)
    sha256: Mapped[str | None] = mapped_column(sa.String(64))
    size_bytes: Mapped[int | None] = mapped_column(sa.BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)


class Evaluation(Base):
    """One `autotl evaluate` of an export of the search on labelled data it names (`autotl.runtime.evaluation`)."""

    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(primary_key=True)
    search_id: Mapped[int] = mapped_column(sa.ForeignKey("searches.id", ondelete="CASCADE"), index=True)
    trial_number: Mapped[int | None] = mapped_column()  # the exported trial (None: an ensemble)
    exported: Mapped[str] = mapped_column(sa.Text)  # what the export holds: "trial 3", "the ensemble of ..."
    export_sha256: Mapped[str | None] = mapped_column(sa.String(64))  # of the evaluated format's file or folder
    model_dir: Mapped[str] = mapped_column(sa.Text)
    model_format: Mapped[str] = mapped_column(sa.String(32))
    data: Mapped[str] = mapped_column(sa.Text)
    examples: Mapped[int] = mapped_column()
    skipped: Mapped[int] = mapped_column()
    accuracy: Mapped[float] = mapped_column()
    metrics: Mapped[dict] = mapped_column()  # every figure of the evaluation, per class and the confusion matrix
    created_at: Mapped[dt.datetime] = mapped_column(default=utc_now)


def as_dict(row: Any) -> dict[str, Any]:
    """A row's columns as a JSON-friendly dict (datetimes as ISO strings)."""
    out = {}
    for column in row.__table__.columns:
        value = getattr(row, column.key)
        out[column.key] = value.isoformat() if isinstance(value, dt.datetime) else value
    return out
