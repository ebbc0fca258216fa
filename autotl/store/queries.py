"""What the listings show: which trials, in what order, and each search's totals.

`autotl trials` filters a search's trials by status and by hyperparameter
(``--where NAME=VALUE``) and sorts them; these are pure functions over its `Trial`
rows, done in Python rather than SQL because hyperparameters are JSON and a value
matches as the listing prints it or as a number, which SQLite and PostgreSQL would
not agree on (a search has a few hundred trials at most). `autotl searches` gets
each search's trial count and best value from `search_summary_query`, one grouped query.
"""

from __future__ import annotations

import math
from typing import Any, Collection, Iterable, NamedTuple

import sqlalchemy as sa

from autotl.errors import UsageError
from autotl.store.models import COMPLETED, Search, Trial


class SearchSummary(NamedTuple):
    search: Search
    trials: int  # of every status
    best_value: float | None  # the best completed trial's objective value, as `Store.best_trial` picks it


def search_summary_query() -> sa.Select:
    """Every search, by id, with its number of trials and its highest and lowest completed value.

    The best value is the highest or the lowest by the search's direction; NULL
    values (NaN is stored as NULL) are skipped by MAX and MIN, as by `best_trial`.
    """
    completed_value = sa.case((Trial.status == COMPLETED, Trial.value))
    per_search = (sa.select(Trial.search_id, sa.func.count(Trial.id).label("trials"),
                            sa.func.max(completed_value).label("highest"),
                            sa.func.min(completed_value).label("lowest"))
                  .group_by(Trial.search_id).subquery())
    return (sa.select(Search, per_search.c.trials, per_search.c.highest, per_search.c.lowest)
            .outerjoin(per_search, per_search.c.search_id == Search.id)
            .order_by(Search.id))


def summarize(search: Search, trials: int | None, highest: float | None, lowest: float | None) -> SearchSummary:
    """One row of `search_summary_query` (a search without trials has none to count)."""
    return SearchSummary(search, trials or 0, highest if search.direction == "max" else lowest)


def parse_where(conditions: Iterable[str]) -> dict[str, str]:
    """``NAME=VALUE`` conditions as {NAME: VALUE}, spaces around each stripped."""
    wanted: dict[str, str] = {}
    for condition in conditions:
        name, sep, value = condition.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--where takes NAME=VALUE (e.g. unfreeze_depth=2), not {condition!r}")
        wanted[name.strip()] = value.strip()
    return wanted


def hp_matches(value: Any, wanted: str) -> bool:
    """A hyperparameter's value is `wanted` as the listing prints it, or as a number (0.3 is 0.30000000000000004)."""
    if isinstance(value, bool):
        return wanted.lower() in (("true", "1", "yes") if value else ("false", "0", "no"))
    if isinstance(value, (int, float)):
        try:
            number = float(wanted)
        except ValueError:
            return False
        return math.isclose(value, number, rel_tol=1e-9, abs_tol=1e-12) or \
            (isinstance(value, float) and f"{value:.3g}" == wanted)
    return str(value) == wanted


def check_where_names(trials: list[Trial], where: dict[str, str], search_name: str) -> None:
    """Refuse a condition on a hyperparameter none of the search's trials has: a typo would list nothing."""
    known = {name for trial in trials for name in trial.hyperparameters}
    unknown = [name for name in where if trials and name not in known]
    if unknown:
        raise UsageError(f"--where: search {search_name!r} has no hyperparameter {unknown[0]!r} "
                         f"(it has {', '.join(sorted(known))})")


def filter_trials(trials: list[Trial], statuses: Collection[str] = (), where: dict[str, str] | None = None) -> list[Trial]:
    """The trials with one of `statuses` (any, when empty) whose hyperparameters meet every condition."""
    where = where or {}
    return [t for t in trials if (not statuses or t.status in statuses)
            and all(name in t.hyperparameters and hp_matches(t.hyperparameters[name], value)
                    for name, value in where.items())]


# Small validation sets tie: with 30 examples, every trial may reach accuracy 1.0. On equal objective values
# the lower validation loss wins (the more confident model on the same examples), then the trial that
# fine-tuned fewer blocks (the cheaper, less-fitted model), then the earlier one.
TIE_BREAK_METRIC = "val_loss"
DEPTH_METRIC = "unfreeze_depth_applied"


def rank_key(value: float | None, metrics: dict[str, Any] | None, number: int, direction: str) -> tuple:
    """The sort key of a result, best first: no value last, then the objective, the loss, the depth, the number."""
    metrics = metrics or {}
    loss = metrics.get(TIE_BREAK_METRIC)
    loss = loss if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf
    sign = -1 if direction == "max" else 1
    missing = value is None or not math.isfinite(value)  # PostgreSQL keeps a NaN that SQLite stores as NULL
    return (missing, 0.0 if missing else sign * value, loss, metrics.get(DEPTH_METRIC) or 0, number)


def trial_rank(trial: Trial, direction: str) -> tuple:
    return rank_key(trial.value, trial.metrics, trial.number, direction)


def sort_trials(trials: list[Trial], sort_by: str, direction: str) -> list[Trial]:
    """By number; by objective value, best first by `direction` (ties as `rank_key`); or by duration, longest first."""
    if sort_by == "value":
        return sorted(trials, key=lambda t: trial_rank(t, direction))
    if sort_by == "duration":  # longest first; trials still running (no duration) last
        return sorted(trials, key=lambda t: (t.duration_s is None, -(t.duration_s or 0.0), t.number))
    return sorted(trials, key=lambda t: t.number)
