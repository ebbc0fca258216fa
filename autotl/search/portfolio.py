"""Strong first trials: a short portfolio of configurations every search tries before exploring.

A random or Bayesian search draws its first trials blindly, and under a time limit it may
run only two or three: most of its budget then goes to configurations (a frozen backbone, a
tiny fine-tuning rate) that a practitioner would not try first. AutoGluon and Auto-sklearn
start from a portfolio of configurations that did well across datasets instead; autotl does
the same. Each modality has its portfolio (`PORTFOLIOS`); the oracle hands its entries out as
the search's first trials (`PortfolioOracle`), then draws as it always did.

An entry names only the hyperparameters it cares about, and its unfreeze depth as a fraction
of the deepest depth the space allows (``depth_fraction``), so one portfolio fits every
backbone. `first_trials` fits each entry to the search's space: a value the space does not
hold becomes its nearest allowed value, a hyperparameter the entry does not name takes its
default, and entries that end up equal are tried once. A space file that fixes a value
therefore also fixes it in the portfolio.

How the entries were chosen, and how to choose them again: ``benchmarks/portfolio.py``.
"""

from __future__ import annotations

from typing import Any, Mapping

from autotl.backbones.protocol import IMAGE
from autotl.search.space import depth_choices

DEPTH_FRACTION = "depth_fraction"

PORTFOLIOS: dict[str, list[dict[str, Any]]] = {
    # Chosen on the tuning suite's validation accuracy by benchmarks/portfolio.py (results/portfolio.md):
    # the greedy selection over 6 candidates on digits-fewshot, lfw-faces and mnist-digits.
    "image": [
        # The whole backbone at 3e-4: the best candidate on every suite dataset (0.92, 1.0, 0.9867).
        {DEPTH_FRACTION: 1.0, "finetune_lr": 3e-4, "pooling": "avg", "head_layers": 0, "dropout": 0.2,
         "head_lr": 1e-3},
        # Then, with nothing left to cover, the fastest: the linear probe on cached activations (seconds),
        # and a quarter of the backbone at 1e-3.
        {DEPTH_FRACTION: 0.0, "pooling": "avg", "head_layers": 1, "head_units": 256, "dropout": 0.3,
         "head_lr": 1e-3},
        {DEPTH_FRACTION: 0.25, "finetune_lr": 1e-3, "pooling": "avg", "head_layers": 0, "dropout": 0.2,
         "head_lr": 1e-3},
    ],
    "text": [
        # Chosen the same way over 7 candidates on wordnet-nouns, convention-speeches and fortunes-topics.
        # The whole encoder at 2e-4: the best candidate on every suite dataset (0.7806, 0.7143, 0.8918).
        {DEPTH_FRACTION: 1.0, "finetune_lr": 2e-4, "pooling": "mean", "head_layers": 0, "dropout": 0.1,
         "head_lr": 1e-3},
        # Then the fastest: the probe on cached activations, and half the encoder at 1e-4.
        {DEPTH_FRACTION: 0.0, "pooling": "mean", "head_layers": 1, "head_units": 256, "dropout": 0.2,
         "head_lr": 1e-3},
        {DEPTH_FRACTION: 0.5, "finetune_lr": 1e-4, "pooling": "mean", "head_layers": 0, "dropout": 0.1,
         "head_lr": 1e-3},
    ],
}


def portfolio_for(modality: str) -> list[dict[str, Any]]:
    return [dict(entry) for entry in PORTFOLIOS[IMAGE if modality == IMAGE else "text"]]


def heads_first(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries that fine-tune no block (heads on cached activations: seconds), then the others in their
    order (fine-tunes: minutes)."""
    return sorted(entries, key=lambda entry: entry.get(DEPTH_FRACTION, 0.0) > 0)


def first_trials(space: Mapping[str, Mapping[str, Any]], entries: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each entry fitted to `space` (values of every hyperparameter, in the space's order), without repeats."""
    trials: list[dict[str, Any]] = []
    for entry in entries:
        values = fitted(space, entry)
        if values not in trials:
            trials.append(values)
    return trials


def fitted(space: Mapping[str, Mapping[str, Any]], entry: Mapping[str, Any]) -> dict[str, Any]:
    values = {}
    for name, spec in space.items():
        if name == "unfreeze_depth" and DEPTH_FRACTION in entry:
            choices = depth_choices(space)
            wanted = entry[DEPTH_FRACTION] * max(choices)
            values[name] = min(choices, key=lambda depth: (abs(depth - wanted), depth))
        elif name in entry:
            values[name] = nearest(spec, entry[name])
        else:
            values[name] = default(spec)
    return values


def default(spec: Mapping[str, Any]) -> Any:
    """The value KerasTuner defaults to: a choice's first, a range's lower end."""
    if "values" in spec:
        return spec["values"][0]
    return int(spec["min"]) if spec.get("type") == "int" else float(spec["min"])


def nearest(spec: Mapping[str, Any], value: Any) -> Any:
    """`value` when the spec holds it, else the nearest value it holds: a choice's closest number, or the
    value clipped into the range (and snapped to its step)."""
    if "values" in spec:
        choices = list(spec["values"])
        if value in choices:
            return value
        numeric = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and numeric:
            return min(numeric, key=lambda c: abs(c - value))
        return choices[0]
    low, high = float(spec["min"]), float(spec["max"])
    clipped = min(max(float(value), low), high)
    step = spec.get("step")
    if step:
        clipped = low + round((clipped - low) / float(step)) * float(step)
        clipped = min(max(clipped, low), high)
    if spec.get("type") == "int":
        return int(round(clipped))
    return float(clipped)


class PortfolioOracle:
    """Mixed into a KerasTuner oracle (random or Bayesian): its first trials are `portfolio`'s
    entries (values fitted by `first_trials`), then it draws as it would have.

    The trial's index is the number of trials the oracle has handed out, its state on resume
    included, so a resumed search does not start its portfolio again.
    """

    portfolio: list[dict[str, Any]] = []

    def populate_space(self, trial_id):
        index = len(self.trials)
        while index < len(self.portfolio):
            values = self.portfolio[index]
            index += 1
            if not self._duplicate(values) and values not in self._passed_over():
                return {"status": "RUNNING", "values": dict(values)}
        return super().populate_space(trial_id)

    def pass_over(self, values: Mapping[str, Any]) -> None:
        """Skip this entry from now on (it would not fit the time left: `autotl.search.budget`)."""
        self._passed_over().append(dict(values))

    def _passed_over(self) -> list[dict[str, Any]]:
        return self.__dict__.setdefault("_passed_over_entries", [])
