"""The store's schema history: one small function per step, oldest first.

A store's version is how many of these steps it has been through, kept as the
`schema_version` row of `autotl_meta`. A new store is created from the models at
the latest version and stamped so (its steps are never run); a store stamped
with an older version is brought up to date by running the steps it has not had,
each in its own transaction. A step only adds what its version added: rows are
never rewritten. To change the schema, change the models and append a step that
makes the same change to an existing store (in the spirit of simonw/llm's
migrations.py).
"""

from __future__ import annotations

from typing import Callable

import sqlalchemy as sa

from autotl.store.models import Meta

Step = Callable[[sa.Connection], None]
MIGRATIONS: list[Step] = []


def migration(step: Step) -> Step:
    """Append `step` to the history (the order of definition is the order of the versions)."""
    MIGRATIONS.append(step)
    return step


@migration
def m001_initial(connection: sa.Connection) -> None:
    """Version 1: searches, trials, epoch_metrics, artifacts and the autotl_meta stamp.

    Nothing to run: every store has been stamped from its creation, so none is
    older than this, and a new store is created from the models at the latest version.
    """


@migration
def m002_trials_data_path(connection: sa.Connection) -> None:
    """Version 2: trials.data_path (JSON), how the data reached the model (cache hit, ...); old trials keep NULL."""
    connection.execute(sa.text("ALTER TABLE trials ADD COLUMN data_path JSON"))


@migration
def m003_evaluations(connection: sa.Connection) -> None:
    """Version 3: the evaluations table (`autotl evaluate` of an export, linked to its search). Opening a store
    creates the tables it lacks before it upgrades (`Store._create_or_upgrade`), so the table may be there."""
    from autotl.store.models import Evaluation

    Evaluation.__table__.create(connection, checkfirst=True)


SCHEMA_VERSION = len(MIGRATIONS)


def upgrade(engine: sa.Engine, version: int) -> None:
    """Run the steps after `version`, oldest first, one transaction each."""
    for target in range(version + 1, SCHEMA_VERSION + 1):
        migrate_to(engine, target)


def migrate_to(engine: sa.Engine, target: int) -> None:
    """One upgrade step, skipped if another process opening the store made it meanwhile.

    The stamp's row is locked first (FOR UPDATE; SQLite's write lock is already
    held), so concurrent openers apply each step once, one after the other.
    """
    with engine.begin() as connection:
        stamp = sa.select(Meta.value).where(Meta.key == "schema_version").with_for_update()
        if int(connection.scalar(stamp)) >= target:
            return
        MIGRATIONS[target - 1](connection)
        connection.execute(sa.update(Meta).where(Meta.key == "schema_version").values(value=str(target)))
