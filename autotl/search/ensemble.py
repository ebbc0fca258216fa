"""Ensembles of trials (``--ensemble-size N``): greedy ensemble selection with replacement.

A search trains many models and keeps one. Averaging the class probabilities of a few of
them is often better than the best alone, because their errors differ (a fine-tuned
backbone and a linear probe, say). Caruana et al. (2004), "Ensemble selection from
libraries of models", choose the members greedily on validation predictions: start from
the best model, and at each step add the model (again, if it is already in: with
replacement, which sets the weights) whose addition makes the average best; the ensemble
is the best of those steps. AutoGluon and Auto-sklearn ensemble the same way.

With ``--ensemble-size N`` the search keeps the checkpoints and validation probabilities
of its N best trials (`TrainingPlan.kept_checkpoints`), and once it ends chooses from
them in N steps (`choose`). The ensemble is used only when its validation figure beats
the best trial's, both computed from the saved probabilities; either way the search's
config holds what was chosen (`RESULT_KEY`), `autotl best` and the report show it, and
exports build it as one model (`autotl.export.ensemble_model`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from autotl.search.records import VAL_PROBS_NAME, Objective
from autotl.store import COMPLETED, Search, Store

RESULT_KEY = "ensemble_result"  # in the search's stored config: the ensemble chosen, and whether it is used
_EPSILON = 1e-7  # probabilities are clipped to [eps, 1] before the log of the log loss


@dataclass(frozen=True)
class Member:
    trial: int  # the trial's number in its search
    weight: float  # its share of the averaged probabilities (the times chosen / the steps)


@dataclass(frozen=True)
class Choice:
    members: list[Member]
    value: float  # the ensemble's objective on the validation split, from the saved probabilities
    best_trial: int
    best_trial_value: float  # the best trial's, computed the same way
    used: bool  # beats the best trial: exports build the ensemble

    def record(self) -> dict:
        return {**asdict(self), "members": [asdict(m) for m in self.members]}


def score(objective: Objective, probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The objective of predicted `probabilities` (examples x classes) against integer `labels`:
    accuracy for ``val_accuracy``, the mean log loss for ``val_loss`` (without the label smoothing
    trials train with, so every candidate is measured alike)."""
    if objective.name == "val_loss":
        picked = probabilities[np.arange(len(labels)), labels]
        return float(-np.mean(np.log(np.clip(picked, _EPSILON, 1.0))))
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def select(candidates: Mapping[int, np.ndarray], labels: np.ndarray, steps: int,
           objective: Objective) -> tuple[dict[int, int], float]:
    """Greedy selection with replacement among `candidates` (trial number -> validation
    probabilities) for up to `steps` steps, starting from the best candidate. Returns how many
    times each member was chosen in the best step, and that step's score. Ties go to the
    candidate with the lower log loss, then to the earlier trial, so accuracy's many ties still
    move towards better-calibrated averages."""
    loss = Objective("val_loss", "min")
    ranked = sorted(candidates, key=lambda n: (-_signed(objective, score(objective, candidates[n], labels)), n))
    counts = {ranked[0]: 1}
    total = np.array(candidates[ranked[0]], dtype=np.float64)
    best_counts, best_score = dict(counts), score(objective, total, labels)
    for step in range(2, steps + 1):
        def key(number: int):
            mean = (total + candidates[number]) / step
            return (-_signed(objective, score(objective, mean, labels)), score(loss, mean, labels), number)

        chosen = min(ranked, key=key)
        total = total + candidates[chosen]
        counts[chosen] = counts.get(chosen, 0) + 1
        value = score(objective, total / step, labels)
        if objective.better(value, best_score):
            best_counts, best_score = dict(counts), value
    return best_counts, best_score


def _signed(objective: Objective, value: float) -> float:
    """`value` made larger-is-better."""
    return value if objective.direction == "max" else -value


def candidates_of(store: Store, search: Search) -> dict[int, np.ndarray]:
    """Trial number -> validation probabilities, for the completed trials whose checkpoint and
    probabilities are on disk (the search's pool)."""
    found: dict[int, np.ndarray] = {}
    completed = {trial.id: trial for trial in store.list_trials(search.id) if trial.status == COMPLETED}
    for artifact in store.artifacts(search.id, kind="checkpoint"):
        trial = completed.get(artifact.trial_id)
        probabilities = Path(artifact.path).parent / VAL_PROBS_NAME
        if trial is not None and Path(artifact.path).is_file() and probabilities.is_file():
            found[trial.number] = np.load(probabilities)
    return found


def choose(store: Store, search: Search, labels: np.ndarray, size: int, say: Callable[[str], None]) -> Choice | None:
    """Choose the ensemble of the search's pool in `size` steps, record it in the search's config
    and say what it is; None when fewer than two trials are kept."""
    objective = Objective(search.objective, search.direction)
    candidates = candidates_of(store, search)
    if len(candidates) < 2 or size < 2:
        return None
    counts, value = select(candidates, labels, size, objective)
    best = store.best_trial(search)
    best_value = score(objective, candidates[best.number], labels) if best.number in candidates else value
    steps = sum(counts.values())
    members = [Member(number, round(count / steps, 6)) for number, count in sorted(counts.items())]
    choice = Choice(members, value, best.number, best_value, used=len(members) > 1 and objective.better(value, best_value))
    store.update_search_config(search.id, {RESULT_KEY: choice.record()})
    say(describe(choice, objective.name))
    return choice


def describe(choice: Choice, objective_name: str) -> str:
    members = " + ".join(f"{m.weight:.2f} x trial {m.trial}" for m in choice.members)
    if choice.used:
        return (f"ensemble: {members}: {objective_name} {choice.value:.4f} on validation, against "
                f"{choice.best_trial_value:.4f} for trial {choice.best_trial} alone; exports use it")
    if len(choice.members) == 1:
        return (f"no ensemble: no average of the kept trials beats trial {choice.best_trial}'s {objective_name} "
                f"{choice.best_trial_value:.4f} on validation; exports use the trial")
    return (f"no ensemble: the best average of the kept trials ({members}) reaches {objective_name} "
            f"{choice.value:.4f} on validation, no better than trial {choice.best_trial}'s {choice.best_trial_value:.4f}")


def describe_record(record: Mapping, objective_name: str) -> str:
    """`describe` of a choice as the store holds it (`Choice.record`)."""
    return describe(Choice(**{**record, "members": [Member(**m) for m in record["members"]]}), objective_name)


def used_ensemble(search: Search) -> dict | None:
    """The search's stored ensemble when exports should build it."""
    result = search.config.get(RESULT_KEY)
    return result if result and result.get("used") else None


def used_probabilities(store: Store, search: Search) -> tuple[np.ndarray | None, str]:
    """The validation probabilities of the ensemble the search's exports use (its members' saved
    probabilities, weighted as chosen), or None and why not."""
    used = used_ensemble(search)
    candidates = candidates_of(store, search)
    missing = [m["trial"] for m in used["members"] if m["trial"] not in candidates]
    if missing:
        return None, (f"the validation probabilities of the ensemble's trial(s) {', '.join(map(str, missing))} "
                      "are gone")
    return sum(m["weight"] * candidates[m["trial"]] for m in used["members"]), ""


def name_of(record: Mapping) -> str:
    """``the ensemble 0.67 x trial 1 + 0.33 x trial 3``, of a stored choice."""
    return "the ensemble " + " + ".join(f"{m['weight']:.2f} x trial {m['trial']}" for m in record["members"])
