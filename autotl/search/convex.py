"""The convex head (``--convex-head``): logistic regression on the frozen backbone's pooled features.

A head trained with Adam for a few epochs on a small split lands wherever its best epoch
happened to be; a multinomial logistic regression on the same pooled features has one
optimum for each strength of its L2 penalty, so the only choice left is that strength, made
on validation accuracy as every other choice of the search (issue 27: "convex heads on the
cache"). It costs seconds on cached activations, so the search runs it as its first trial
(`autotl.search.session`); it is the model ``inputs -> backbone -> pooling -> Dense(softmax)``
with the regression's weights in the Dense layer, so the store, the ensemble, the refit and
every export treat it as any trial.

The fit (`fit`) standardises the features, minimises the mean cross-entropy plus
``l2 / 2 * ||W||^2`` by Nesterov's accelerated gradient with the step of the loss's
curvature bound (Böhning: the softmax loss's Hessian is at most half of ``X'X / n``),
starting each penalty from the optimum of the stronger one, and folds the standardisation
back into the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from autotl.search.ensemble import score
from autotl.search.portfolio import DEPTH_FRACTION, fitted, portfolio_for
from autotl.search.records import Objective

# The L2 penalties tried, strongest first (each fit starts from the one before). On standardised
# features 10 keeps a head near the class priors, 1e-4 lets it fit the training split almost freely.
PENALTIES = (10.0, 1.0, 0.1, 0.01, 1e-3, 1e-4)
ACCURACY, LOSS = Objective("val_accuracy", "max"), Objective("val_loss", "min")
STEPS = 300  # accelerated gradient steps per penalty
PENALTY_KEY = "convex_l2"  # in a convex head trial's metrics: the penalty chosen
TUNER_TRIAL_ID = "convex-head"  # its row's tuner trial id (KerasTuner never hands it out)


@dataclass(frozen=True)
class LinearModel:
    weights: np.ndarray  # features x classes, on the unstandardised features
    bias: np.ndarray  # classes

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return softmax(features @ self.weights + self.bias)


@dataclass(frozen=True)
class Choice:
    penalty: float
    model: LinearModel
    val_accuracy: float
    val_loss: float
    val_probabilities: np.ndarray
    tried: dict[float, tuple[float, float]]  # penalty -> (validation accuracy, validation loss)


def model_values(space: Mapping[str, Mapping[str, Any]], modality: str) -> dict[str, Any]:
    """The convex head's model, as hyperparameter values: the pooling of the portfolio's head on frozen
    features, then the classes' Dense layer alone (no hidden layer, no dropout), on the frozen backbone."""
    probe = next(entry for entry in portfolio_for(modality) if entry.get(DEPTH_FRACTION) == 0.0)
    pooling = {"pooling": fitted(space, probe)["pooling"]} if "pooling" in space else {}
    return {**pooling, "unfreeze_depth": 0, "head_layers": 0, "dropout": 0.0}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def fit_path(features: np.ndarray, labels: np.ndarray, classes: int,
             penalties: tuple[float, ...] = PENALTIES, steps: int = STEPS) -> dict[float, LinearModel]:
    """The regression's optimum (approximately: `steps` accelerated steps) for each penalty, strongest first."""
    x = np.asarray(features, dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-8] = 1.0  # a constant feature carries nothing; keep it at zero
    x = (x - mean) / scale
    x = np.hstack([x, np.ones((len(x), 1))])  # the bias as a last, unpenalised, feature
    targets = np.eye(classes)[labels]
    curvature = 0.5 * np.linalg.norm(x, ord=2) ** 2 / len(x)
    weights = np.zeros((x.shape[1], classes))
    models = {}
    for penalty in sorted(penalties, reverse=True):
        weights = _minimise(x, targets, penalty, weights, 1.0 / (curvature + penalty), steps)
        folded = weights[:-1] / scale[:, None]
        models[penalty] = LinearModel(folded.astype(np.float32),
                                      (weights[-1] - mean @ folded).astype(np.float32))
    return models


def _minimise(x: np.ndarray, targets: np.ndarray, penalty: float, start: np.ndarray, step: float,
              steps: int) -> np.ndarray:
    """Nesterov's accelerated gradient on the mean cross-entropy plus ``penalty / 2 * ||W[:-1]||^2``."""
    mask = np.ones((x.shape[1], 1))
    mask[-1] = 0.0  # the bias row is not penalised
    weights, previous = start.copy(), start.copy()
    for k in range(1, steps + 1):
        look = weights + (k - 1) / (k + 2) * (weights - previous)
        gradient = x.T @ (softmax(x @ look) - targets) / len(x) + penalty * mask * look
        previous, weights = weights, look - step * gradient
    return weights


def choose(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
           val_labels: np.ndarray, classes: int) -> Choice:
    """The penalty whose regression, fitted on the training split, has the best validation accuracy;
    ties go to the lower validation loss, then to the stronger penalty."""
    models = fit_path(train_features, train_labels, classes)
    scored = {}
    for penalty, model in models.items():
        probabilities = model.probabilities(np.asarray(val_features, dtype=np.float32))
        scored[penalty] = (score(ACCURACY, probabilities, val_labels), score(LOSS, probabilities, val_labels),
                           probabilities)
    best = max(scored, key=lambda p: (scored[p][0], -scored[p][1], p))
    val_accuracy, val_loss, probabilities = scored[best]
    return Choice(best, models[best], val_accuracy, val_loss, probabilities,
                  {p: (a, loss) for p, (a, loss, _) in scored.items()})
