"""What each hyperparameter can take, and the check of a space's spec against it.

A space file is checked here, before any search row exists: a value outside its
hyperparameter's domain would otherwise fail inside a trial (``head_units: 0``), be
silently clipped (``dropout: 1.5``) or reach KerasTuner as a range it cannot sample
(``step: 0``). The backbone's block count, the upper bound of ``unfreeze_depth``, is
known only once the backbone is built (`autotl.search.space.check_depth_within`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from autotl.backbones.protocol import IMAGE
from autotl.errors import UsageError

INT, FLOAT, CHOICE = "int", "float", "choice"
SAMPLINGS = ("linear", "log", "reverse_log")


@dataclass(frozen=True)
class Domain:
    """The values one hyperparameter can take: whole numbers or numbers between bounds, or choices."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is outside (a learning rate > 0)
    high_open: bool = False  # high itself is outside (a dropout rate < 1)
    choices: tuple = ()

    def describe(self) -> str:
        if self.kind == CHOICE:
            if all(isinstance(c, bool) for c in self.choices):
                return "true or false"
            return "one of " + ", ".join(map(str, self.choices))
        what = "a whole number" if self.kind == INT else "a number"
        low = f"{self.low:g}"
        if self.high is None:
            return f"{what} {'>' if self.low_open else '>='} {low}"
        return f"{what} in {'(' if self.low_open else '['}{low}, {self.high:g}{')' if self.high_open else ']'}"

    def value(self, name: str, raw: Any, what: str) -> Any:
        """`raw` as this domain's type (a number YAML left as text, like ``1e-3``, read as one), or a UsageError."""
        value = self._typed(raw)
        if value is None or not self._holds(value):
            raise UsageError(f"hyperparameter {name!r}: {what} {raw!r} is not {self.describe()}")
        return value

    def _typed(self, raw: Any) -> Any:
        if self.kind == CHOICE:
            return raw if any(type(raw) is type(c) and raw == c for c in self.choices) else None
        if isinstance(raw, bool):
            return None
        if self.kind == INT:
            return raw if isinstance(raw, int) else None
        if isinstance(raw, str):  # PyYAML reads 1e-3 (no dot) as text
            try:
                return float(raw)
            except ValueError:
                return None
        return float(raw) if isinstance(raw, (int, float)) else None

    def _holds(self, value: Any) -> bool:
        if self.kind == CHOICE:
            return True
        if not math.isfinite(value):
            return False
        above_low = value > self.low if self.low_open else value >= self.low
        below_high = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above_low and below_high


LEARNING_RATE = Domain(FLOAT, low=0, low_open=True)
DOMAINS: dict[str, Domain] = {
    "head_layers": Domain(INT, low=0),
    "head_units": Domain(INT, low=1),
    "dropout": Domain(FLOAT, low=0, high=1, high_open=True),
    "unfreeze_depth": Domain(INT, low=0),  # and at most the backbone's block count
    "head_lr": LEARNING_RATE,
    "finetune_lr": LEARNING_RATE,
    "augment": Domain(CHOICE, choices=(False, True)),
    # How each phase trains (autotl.search.recipe)
    "optimizer": Domain(CHOICE, choices=("adamw", "adam")),
    "weight_decay": Domain(FLOAT, low=0),
    "lr_schedule": Domain(CHOICE, choices=("cosine", "constant")),
    "warmup": Domain(FLOAT, low=0, high=1, high_open=True),  # a fraction of the phase's steps
    "label_smoothing": Domain(FLOAT, low=0, high=1, high_open=True),
    "lr_decay": Domain(FLOAT, low=0, high=1, low_open=True),  # 1: every trainable block at the same rate
}
POOLINGS = {IMAGE: ("avg", "flatten"), "text": ("mean", "cls")}


def domains_for(modality: str) -> dict[str, Domain]:
    return {**DOMAINS, "pooling": Domain(CHOICE, choices=POOLINGS[IMAGE if modality == IMAGE else "text"])}


def checked(name: str, spec: Mapping[str, Any], domain: Domain) -> dict[str, Any]:
    """`spec` with every value in `domain`; a choice's values in one type (KerasTuner refuses 0 and 0.5 together)."""
    if "values" in spec:
        if not spec["values"]:
            raise UsageError(f"hyperparameter {name!r}: `values` is empty")
        return {"values": [domain.value(name, v, "value") for v in spec["values"]]}
    if "min" not in spec or "max" not in spec:
        raise UsageError(f"hyperparameter {name!r}: give `values`, or `min` and `max`")
    low, high = domain.value(name, spec["min"], "min"), domain.value(name, spec["max"], "max")
    if low > high:
        raise UsageError(f"hyperparameter {name!r}: min {spec['min']} is above max {spec['max']}")
    sampling = spec.get("sampling", "linear")
    if sampling not in SAMPLINGS:
        raise UsageError(f"hyperparameter {name!r}: sampling {sampling!r} is not one of {', '.join(SAMPLINGS)}")
    if sampling != "linear" and low <= 0:
        raise UsageError(f"hyperparameter {name!r}: {sampling} sampling needs min > 0, not {spec['min']}")
    if "step" in spec:
        _check_step(name, spec["step"], domain, sampling)
    return dict(spec)


def _check_step(name: str, step: Any, domain: Domain, sampling: str) -> None:
    """A linear step adds (> 0, whole for whole numbers); a log step multiplies (> 1), as KerasTuner takes them."""
    if sampling == "linear":
        step_domain = Domain(INT, low=1) if domain.kind == INT else Domain(FLOAT, low=0, low_open=True)
        step_domain.value(name, step, "step")
        return
    try:
        Domain(domain.kind, low=1, low_open=True).value(name, step, "step")
    except UsageError as exc:
        raise UsageError(f"{exc} (with {sampling} sampling a step multiplies)") from None
