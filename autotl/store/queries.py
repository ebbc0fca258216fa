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
from typing import Any, Collection, Iterable, NamedTuple, Sequence

import numpy as np

import sqlalchemy as sa

from autotl.errors import UsageError
from autotl.search.records import FINETUNE
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


# How a search picks its trial among the completed ones (`SearchConfig.selection`).
BEST = "best"  # the best objective value; ties as `rank_key`
ONE_SE = "one-se"  # the fewest fine-tuned blocks within one standard error of the best accuracy
SELECTIONS = (BEST, ONE_SE)


def chosen_first(trials: list[Trial], search: Search) -> list[Trial]:
    """The completed `trials`, the one the search chooses first, then the others best first (`rank_key`).

    With ``selection: one-se`` the chosen trial is the one that fine-tuned the fewest backbone blocks
    among those whose validation accuracy is within one standard error of the best (Breiman's
    one-standard-error rule, as CART and glmnet's ``lambda.1se`` use it), ties by `rank_key`. On a
    validation split of 30 examples one standard error is about 8 points: a gap that size is noise,
    and the simpler model, which had less room to fit it, is the safer choice. On 1,000 examples it
    is about 1 point, and the rule rarely moves the choice.
    """
    ranked = sorted(trials, key=lambda trial: trial_rank(trial, search.direction))
    window = one_se_window(ranked, search)
    if len(window) < 2:
        return ranked
    chosen = min(window, key=lambda trial: (depth_of(trial), ranked.index(trial)))
    return [chosen] + [trial for trial in ranked if trial is not chosen]


def one_se_window(ranked: list[Trial], search: Search) -> list[Trial]:
    """The trials of `ranked` (best first) within one standard error of the best's accuracy, the best
    included; none unless the search selects by the one-standard-error rule."""
    examples = one_se_examples(search)
    if not examples or not ranked or ranked[0].value is None:
        return []
    floor = one_se_floor(float(ranked[0].value), examples)
    return [trial for trial in ranked if trial.value is not None and trial.value >= floor]


def selection_line(trials: list[Trial], search: Search) -> str | None:
    """Why the one-standard-error rule chose another trial than the best one, in one line; None when it did not."""
    completed = [trial for trial in trials if trial.status == COMPLETED and trial.value is not None]
    ranked = sorted(completed, key=lambda trial: trial_rank(trial, search.direction))
    order = chosen_first(completed, search)
    if not order or order[0] is ranked[0]:
        return None
    chosen, best = order[0], ranked[0]
    margin = standard_error(float(best.value), int(search.config["val_examples"]))
    return (f"one-se: trial {chosen.number} ({search.objective} {chosen.value:.4f}, {depth_of(chosen)} block(s) "
            f"fine-tuned) is within one standard error ({margin:.4f}) of trial {best.number}'s {best.value:.4f} "
            f"({depth_of(best)} block(s)): the search chose the simpler model")


def may_be_chosen(search: Search, value: float | None, best_value: float | None) -> bool:
    """Whether a trial reaching `value`, with the search's best at `best_value` (None: no trial yet), is within
    one standard error of the best when the search selects by that rule: a trial that must keep its checkpoint."""
    examples = one_se_examples(search)
    if not examples or value is None:
        return False
    return value >= one_se_floor(max(value, best_value if best_value is not None else value), examples)


def one_se_examples(search: Search) -> int:
    """The validation examples the one-standard-error rule weighs a search's accuracies on; 0 when the search
    does not select by that rule (or does not know its validation size)."""
    if search.config.get("selection", BEST) != ONE_SE:
        return 0
    return max(int(search.config.get("val_examples") or 0), 0)


def one_se_floor(best_accuracy: float, examples: int) -> float:
    """The lowest accuracy within one binomial standard error of `best_accuracy` on `examples` examples.
    A tiny margin keeps values stored as float32 (0.7142857 of 20/28) from falling out by rounding."""
    accuracy = min(max(best_accuracy, 0.0), 1.0)
    return accuracy - standard_error(accuracy, examples) - 1e-6


def standard_error(accuracy: float, examples: int) -> float:
    """The binomial standard error of an accuracy measured on `examples` examples."""
    accuracy = min(max(accuracy, 0.0), 1.0)
    return math.sqrt(accuracy * (1.0 - accuracy) / examples)


def no_better_than_a_guess(accuracy: float, labels: Sequence[int], class_names: Sequence[str]) -> str | None:
    """A warning when a validation `accuracy` is within one standard error of always predicting the most
    frequent class of the validation `labels`: the validation split cannot tell the model from that guess."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    examples = int(counts.sum())
    if examples == 0:
        return None
    majority = float(counts.max()) / examples
    margin = standard_error(majority, examples)
    if accuracy > majority + margin:
        return None
    return (f"warning: the best validation accuracy, {accuracy:.4f}, is within one standard error ({margin:.4f}) of "
            f"always answering {class_names[int(counts.argmax())]!r} ({majority:.4f} of the {examples} validation "
            "examples): the validation split cannot tell the model from that guess; more labelled examples, or a "
            "larger validation split, would")


def depth_of(trial: Trial) -> int:
    """How many backbone blocks the trial's model fine-tuned: 0 for a head on cached activations, and for a
    trial whose best epoch came before its fine-tuning phase changed any block."""
    if trial.best_phase != FINETUNE:
        return 0
    return int((trial.metrics or {}).get(DEPTH_METRIC) or 0)


def sort_trials(trials: list[Trial], sort_by: str, direction: str) -> list[Trial]:
    """By number; by objective value, best first by `direction` (ties as `rank_key`); or by duration, longest first."""
    if sort_by == "value":
        return sorted(trials, key=lambda t: trial_rank(t, direction))
    if sort_by == "duration":  # longest first; trials still running (no duration) last
        return sorted(trials, key=lambda t: (t.duration_s is None, -(t.duration_s or 0.0), t.number))
    return sorted(trials, key=lambda t: t.number)
