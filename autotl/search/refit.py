"""Refit: the chosen configuration trained again on every labelled example (``--refit``).

A search holds back its validation examples to choose between trials. Once the best trial is
chosen they have done that job, and a model trained on training and validation examples
together has seen more data (AutoGluon's ``refit_full``, scikit-learn's ``refit=True``). The
refit trains the best trial's hyperparameters from its own initialisation for the epochs its
best epoch took in each phase: the head phase up to the best head epoch, then, when the best
epoch was a fine-tuning one, as many fine-tuning epochs. Nothing is left to validate it on,
so the search's validation figures stay those of the trial (the store and `autotl best` keep
both apart), and exports use the refit model (`autotl export --no-refit`: the validated one).

With a time limit the search keeps room for the refit: a trial starts only when the median
trial and the refit still fit (`reserve_seconds`), and the refit runs only when it fits in the
time left, else the search says so and its best trial stays the model to export.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from autotl.search import convex
from autotl.search.budget import Deadline, format_duration
from autotl.search.records import FINETUNE, HEAD, Objective, TrialData
from autotl.store import Search, Store, Trial
from autotl.store.queries import TIE_BREAK_METRIC

REFIT_KIND = "refit"  # the artifact kind of a refit model
RESULT_KEY = "refit_result"  # in the search's stored config: what the refit did


@dataclass(frozen=True)
class RefitPlan:
    trial: Trial
    head_epochs: int
    finetune_epochs: int


def plan_for(store: Store, best: Trial, objective: Objective) -> RefitPlan:
    """The epochs of each phase the refit trains: those that led to the best trial's best epoch."""
    if best.best_phase != FINETUNE:
        return RefitPlan(best, int(best.best_epoch), 0)
    head: dict[int, dict[str, float]] = {}
    for metric in store.epoch_metrics(best.id):
        if metric.phase == HEAD:
            head.setdefault(metric.epoch, {})[metric.name] = metric.value
    best_head = None
    for epoch, logs in head.items():  # fine-tuning started from the best head epoch, chosen as the runner chose it
        value = logs.get(objective.name)
        if value is None:
            continue
        if best_head is None or objective.better(value, best_head[1][objective.name], logs.get(TIE_BREAK_METRIC),
                                                 best_head[1].get(TIE_BREAK_METRIC)):
            best_head = (epoch, logs)
    return RefitPlan(best, best_head[0] if best_head else 1, int(best.best_epoch))


def estimate_seconds(trial: Trial, train_examples: int, val_examples: int) -> float:
    """The refit's time, from its trial's: as many examples more as the validation split holds.
    An over-estimate (the trial also validated, and ran its patience past the best epoch)."""
    return float(trial.duration_s or 0.0) * (train_examples + val_examples) / max(train_examples, 1)


def reserve_seconds(store: Store, search: Search) -> float:
    """Time a time-limited search keeps for the refit of its best trial so far."""
    best = store.best_trial(store.get_search(search.id))
    if best is None:
        return 0.0
    return estimate_seconds(best, int(search.config["train_examples"]), int(search.config["val_examples"]))


def refit_model(store: Store, search: Search, best: Trial | None = None) -> Path | None:
    """The refit model of the search's best trial, when the search made one and it is on disk."""
    best = best or store.best_trial(search)
    if best is None:
        return None
    artifacts = store.artifacts(search.id, kind=REFIT_KIND, trial_id=best.id)
    path = Path(artifacts[-1].path) if artifacts else None
    return path if path is not None and path.is_file() else None


def joined(first: Any, second: Any) -> Any:
    """Model inputs of two splits as one: arrays, or dicts of arrays, stacked along the examples."""
    if isinstance(first, Mapping):
        return {name: np.concatenate([first[name], second[name]]) for name in first}
    return np.concatenate([first, second])


def refit_best(store: Store, search: Search, runner, data: TrialData, objective: Objective, workdir: Path,
               deadline: Deadline | None, say) -> Path | None:
    """Refit the search's best trial with `runner` (a `TrialRunner`) on `data`'s two splits; returns the
    model's path, or None when it was already refit or there is no time for it (`say` tells why)."""
    best = store.best_trial(search)
    if best is None or refit_model(store, search, best) is not None:
        return None
    train_examples, val_examples = len(data.y_train), len(data.y_val)
    estimate = estimate_seconds(best, train_examples, val_examples)
    if deadline is not None and deadline.left() < estimate:
        say(f"no refit: it would take about {format_duration(estimate)} and "
            f"{format_duration(max(0.0, deadline.left()))} are left; trial {best.number} is the model to export")
        return None
    plan = plan_for(store, best, objective)
    everything = TrialData(joined(data.x_train, data.x_val), np.concatenate([data.y_train, data.y_val]),
                           data.x_val, data.y_val)
    _forget_earlier_refits(store, search)
    started = time.perf_counter()
    out_dir = Path(workdir) / f"refit_trial_{best.number:03d}"
    if best.tuner_trial_id == convex.TUNER_TRIAL_ID:  # a regression: fitted again at the penalty it chose
        path = runner.refit_convex(best.hyperparameters, float(best.metrics[convex.PENALTY_KEY]), everything,
                                   out_dir)
    else:
        path = runner.refit(best.hyperparameters, best.number, everything, plan.head_epochs, plan.finetune_epochs,
                            out_dir)
    seconds = time.perf_counter() - started
    store.add_artifact(search_id=search.id, trial_id=best.id, kind=REFIT_KIND, format="keras",
                       path=str(path.resolve()), sha256=None, size_bytes=path.stat().st_size)
    result = {"trial": best.number, "examples": train_examples + val_examples, "head_epochs": plan.head_epochs,
              "finetune_epochs": plan.finetune_epochs, "seconds": round(seconds, 1),
              "convex": best.tuner_trial_id == convex.TUNER_TRIAL_ID}
    store.update_search_config(search.id, {RESULT_KEY: result})
    say(f"refit: trial {best.number}'s configuration trained again on all {train_examples + val_examples} labelled "
        f"examples ({describe_epochs(result)}) in {format_duration(seconds)}; exports use it")
    return path


def describe_epochs(result: Mapping[str, Any]) -> str:
    """A stored refit's epochs: ``6 head + 10 fine-tuning epochs`` or ``2 head epochs``; a convex head's
    regression has none."""
    if result.get("convex"):
        return "its regression, at the penalty it chose"
    finetune = f" + {result['finetune_epochs']} fine-tuning" if result["finetune_epochs"] else ""
    return f"{result['head_epochs']} head{finetune} epochs"


def _forget_earlier_refits(store: Store, search: Search) -> None:
    """A search extended past its refit has a new best trial (or lost the refit's file): the old refit
    goes, files and rows."""
    earlier = store.artifacts(search.id, kind=REFIT_KIND)
    for artifact in earlier:
        shutil.rmtree(Path(artifact.path).parent, ignore_errors=True)
    store.delete_artifacts([artifact.id for artifact in earlier])
