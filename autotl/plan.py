"""Plain descriptions of a trial's work and result, free of Keras so any process can unpickle them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class TrialData:
    """Model-ready inputs (what the preprocessor returned) and integer labels."""

    x_train: Any
    y_train: np.ndarray
    x_val: Any
    y_val: np.ndarray


@dataclass
class TrainingPlan:
    epochs: int = 10
    finetune_epochs: int = 10
    batch_size: int = 32
    patience: int = 3
    seed: int = 0


@dataclass
class Objective:
    name: str
    direction: str  # "max" | "min"

    def better(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        return value > reference if self.direction == "max" else value < reference


@dataclass
class TrialOutcome:
    value: float
    phase: str
    epoch: int
    metrics: dict[str, float]


class TrialFailed(Exception):
    """The trial ran but produced no usable result (NaN losses, a dead worker process, ...)."""
