"""Checkpoint soups within a trial: the weights of a fine-tune's best epochs, averaged greedily.

A fine-tune's best epoch is one point of a noisy path; the average of the weights of its best
few epochs often generalises better, at no extra training (Wortsman et al., 2022, "Model soups";
AutoGluon-MM's ``top_k_average_method: greedy_soup`` with its top 3). Greedy, as they do: start
from the best epoch, add the next best only when the average does not lower the validation
objective, so the soup is never worse on validation than the epoch the trial would have kept.

`TopEpochs` keeps the weights of the `size` best epochs of the fine-tuning phase (ranked as the
trial ranks epochs: the objective, then the lower validation loss); `greedy_soup` mixes them.
The cost is `size` copies of the fine-tuned weights in memory and `size - 1` validation passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from autotl.search.records import Objective
from autotl.store.queries import TIE_BREAK_METRIC

SOUP_SIZE = 3  # AutoGluon-MM's top_k
SOUP_METRIC = "soup_epochs"  # in a trial's metrics: how many epochs its soup mixed (1: the best epoch alone)


@dataclass
class Ingredient:
    epoch: int
    logs: dict[str, float]
    values: list[np.ndarray]


class TopEpochs(keras.callbacks.Callback):
    """Keeps the weights of `variables` at the `size` best epochs of one phase, best first."""

    def __init__(self, objective: Objective, variables: list, size: int = SOUP_SIZE):
        super().__init__()
        self.objective, self.variables, self.size = objective, variables, size
        self.best: list[Ingredient] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        value = logs.get(self.objective.name)
        if value is None or not math.isfinite(value):
            return
        position = next((i for i, kept in enumerate(self.best) if self._beats(logs, kept.logs)), len(self.best))
        if position < self.size:
            values = [keras.ops.convert_to_numpy(v) for v in self.variables]
            self.best.insert(position, Ingredient(epoch + 1, logs, values))
            del self.best[self.size:]

    def _beats(self, logs: dict[str, float], other: dict[str, float]) -> bool:
        name = self.objective.name
        return self.objective.better(logs[name], other[name], logs.get(TIE_BREAK_METRIC), other.get(TIE_BREAK_METRIC))


def greedy_soup(ingredients: list[Ingredient], variables: list, validate: Callable[[], dict[str, float]],
                objective: Objective) -> tuple[list[int], dict[str, float]]:
    """Mix `ingredients` (best first) into `variables`; returns the epochs in the soup and its validation logs.

    The first ingredient is the trial's best epoch and its logs are the figure to keep: another joins
    only when the soup with it scores at least as well on `validate()` (the objective not lower; on a tie,
    the loss not higher). `variables` end holding the soup."""
    soup, logs = [ingredients[0]], ingredients[0].logs
    for candidate in ingredients[1:]:
        _assign_mean(variables, soup + [candidate])
        tried = validate()
        if not _worse(tried, logs, objective):
            soup, logs = soup + [candidate], tried
    _assign_mean(variables, soup)
    return [ingredient.epoch for ingredient in soup], logs


def _worse(tried: dict[str, float], kept: dict[str, float], objective: Objective) -> bool:
    name = objective.name
    return objective.better(kept[name], tried[name], kept.get(TIE_BREAK_METRIC), tried.get(TIE_BREAK_METRIC))


def _assign_mean(variables: list, ingredients: list[Ingredient]) -> None:
    """Each float variable takes the ingredients' mean; any other (a random generator's state) the first's."""
    for index, variable in enumerate(variables):
        first = ingredients[0].values[index]
        if not np.issubdtype(first.dtype, np.floating):
            variable.assign(first)
            continue
        mean = np.mean([ingredient.values[index].astype(np.float64) for ingredient in ingredients], axis=0)
        variable.assign(mean.astype(first.dtype))
