"""Plain descriptions of a trial's work and result, free of Keras so any process can unpickle them, and the seed a
trial's configuration starts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autotl.cache.entries import digest

# A kept trial's validation probabilities, saved next to its checkpoint by the runner; read by the report and
# by ensemble selection (`autotl.search.ensemble`).
VAL_PROBS_NAME = "val_probs.npy"
# The two phases of a trial (`autotl.search.runner`), as the store records each epoch's.
HEAD, FINETUNE = "head", "finetune"


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
    precision: str = "float32"  # a Keras dtype policy: float32 | mixed_float16 | mixed_bfloat16
    cache: bool = True  # train on cached activations of the frozen part (autotl.cache.source)
    cache_dir: str | None = None  # None: $AUTOTL_CACHE_DIR or ~/.cache/autotl
    cache_storage: str = "auto"  # float activations kept as float32, float16, or auto (float16 beyond the budget)
    cache_memory_mb: int = 4096  # a trial's cached activations up to this size are loaded, larger read from disk
    cache_max_gb: float | None = None  # the cache's bound: older entries are removed beyond it (None: no bound)
    inference_batch_size: int = 128  # batch of the one pass that fills the cache
    tensorboard_dir: str | None = None  # the search's TensorBoard folder (DIR/NAME, autotl.insight.board); None: no logs
    deadline: float | None = None  # time.time() by which training stops (--time-limit, autotl.search.budget)
    kept_checkpoints: int = 1  # the best trials whose checkpoints are kept: 1, or the ensemble's pool (--ensemble-size)
    checkpoint_soup: bool = False  # a fine-tune keeps its best epochs' weights and averages them greedily


@dataclass
class Objective:
    name: str
    direction: str  # "max" | "min"

    def better(self, value: float, reference: float | None, loss: float | None = None,
               reference_loss: float | None = None) -> bool:
        """Whether `value` beats `reference`; on a tie, whether its validation `loss` is the lower (where given)."""
        if reference is None:
            return True
        if value == reference and loss is not None and reference_loss is not None:
            return loss < reference_loss
        return value > reference if self.direction == "max" else value < reference


@dataclass
class TrialOutcome:
    value: float
    phase: str
    epoch: int
    metrics: dict[str, float]
    data_path: dict[str, Any] | None = None  # cache hit / computed / bypassed (autotl.cache.source)


class TrialFailed(Exception):
    """The trial ran but produced no usable result (NaN losses, a dead worker process, ...)."""


def trial_seed(search_seed: int, values: dict[str, Any]) -> int:
    """The seed of a trial's initialisation and shuffles: the search's seed and the trial's configuration
    (its hyperparameter values, less KerasTuner's ``tuner/`` bookkeeping), not its number.

    So a configuration starts from the same weights and batches whichever trial runs it: a re-run of an
    interrupted trial, the same portfolio entry in a search that runs another trial before it, a
    Hyperband rung. An ablation that adds or removes trials then changes only those trials (common random
    numbers), where a seed of the trial's number re-drew every later one.
    """
    configuration = {name: value for name, value in values.items() if not name.startswith("tuner/")}
    return int(digest([search_seed, configuration])[:8], 16) % 2**31
