"""The tuner: KerasTuner's search loop with autotl's two-phase trial and the SQL store.

KerasTuner splits the work three ways: the *HyperModel* builds a model from
hyperparameters (`autotl.hypermodel`), the *Oracle* proposes hyperparameters
(random, Bayesian or Hyperband, unchanged here), and the *Tuner* runs a trial.
`TransferTuner` is that last part. Each trial:

1. trains the head on the frozen backbone with the head learning rate;
2. if ``unfreeze_depth`` k > 0, restores the best head, makes the top k blocks
   trainable, recompiles with the (lower) fine-tuning rate and trains again;

both phases monitored on the validation split with early stopping. The weights of
the best epoch over both phases are restored at the end; that model is what the
trial reports, checkpoints (when it is the best so far) and what gets exported.
Every trial and epoch is written to the store as it happens.
"""

from __future__ import annotations

import gc
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import keras_tuner as kt
import numpy as np

from . import store as store_module
from .hypermodel import BACKBONE_LAYER, TransferHyperModel, set_unfreeze_depth
from .progress import Reporter
from .store import Store

HEAD, FINETUNE = "head", "finetune"
CHECKPOINT_NAME = "model.keras"
VAL_PROBS_NAME = "val_probs.npy"


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
class TrialOutcome:
    value: float
    phase: str
    epoch: int
    metrics: dict[str, float]


def make_oracle(kind: str, objective: kt.Objective, max_trials: int, max_epochs: int, seed: int) -> kt.Oracle:
    if kind == "random":
        return kt.oracles.RandomSearchOracle(objective=objective, max_trials=max_trials, seed=seed)
    if kind == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(objective=objective, max_trials=max_trials, seed=seed)
    if kind == "hyperband":
        oracle = kt.oracles.HyperbandOracle(objective=objective, max_epochs=max(2, max_epochs), factor=3, seed=seed)
        oracle.max_trials = max_trials  # Hyperband sizes its brackets by epochs; cap the trial count as asked
        return oracle
    raise ValueError(f"unknown tuner {kind!r}")


class TransferTuner(kt.Tuner):
    def __init__(self, oracle: kt.Oracle, hypermodel: TransferHyperModel, *, store: Store, search_id: int,
                 plan: TrainingPlan, reporter: Reporter, workdir: Path, max_trials: int, **kwargs):
        super().__init__(oracle, hypermodel, directory=str(workdir), project_name="keras_tuner", **kwargs)
        self.store = store
        self.search_id = search_id
        self.plan = plan
        self.reporter = reporter
        self.workdir = Path(workdir)
        self.max_trials = max_trials
        self._rows: dict[str, store_module.Trial] = {}
        self._outcomes: dict[str, TrialOutcome] = {}

    # -- KerasTuner hooks --------------------------------------------------------------

    def _populate_initial_space(self) -> None:
        # KerasTuner builds the model here to discover conditional hyperparameters;
        # autotl's space has none, so declaring it is enough (and skips a backbone load).
        hp = self.oracle.get_space()
        self.hypermodel.declare(hp)
        self.oracle.update_space(hp)

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_begin(trial)
        row = self.store.start_trial(self.search_id, trial.trial_id, dict(trial.hyperparameters.values))
        self._rows[trial.trial_id] = row
        self.reporter.trial_started(row.number, self.max_trials, dict(trial.hyperparameters.values))

    def run_trial(self, trial: kt.engine.trial.Trial, data: TrialData, **_kwargs) -> dict[str, float]:
        row = self._rows[trial.trial_id]
        _release_memory()
        keras.utils.set_random_seed(self.plan.seed * 1000 + row.number)
        hp = trial.hyperparameters
        model = self.hypermodel.build(hp)
        tracker = BestEpoch(self.oracle.objective)
        epochs, finetune_epochs = self._epoch_budget(hp)

        self._fit(model, data, hp.get("head_lr"), epochs, HEAD, row, tracker)
        depth = 0
        if hp.get("unfreeze_depth") > 0 and finetune_epochs > 0:
            tracker.restore(model)  # fine-tune from the best head, not the last one
            feature_model = model.get_layer(BACKBONE_LAYER)
            depth = set_unfreeze_depth(feature_model, self.hypermodel.backbone.blocks(feature_model),
                                       hp.get("unfreeze_depth"))
            self._fit(model, data, hp.get("finetune_lr"), finetune_epochs, FINETUNE, row, tracker)
        tracker.restore(model)
        if tracker.best is None:
            raise kt.errors.FailedTrialError("no finite value of the objective was reached")
        outcome = TrialOutcome(tracker.best_value, tracker.best[0], tracker.best[1],
                               {**tracker.best_logs, "unfreeze_depth_applied": depth})
        self._outcomes[trial.trial_id] = outcome
        self._checkpoint_if_best(model, data, row, outcome)
        return {self.oracle.objective.name: outcome.value}

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        row = self._rows.pop(trial.trial_id)
        outcome = self._outcomes.pop(trial.trial_id, None)
        if trial.status == kt.engine.trial.TrialStatus.COMPLETED and outcome is not None:
            finished = self.store.finish_trial(row.id, store_module.COMPLETED, value=outcome.value,
                                               best_phase=outcome.phase, best_epoch=outcome.epoch,
                                               metrics=outcome.metrics)
        else:
            finished = self.store.finish_trial(row.id, store_module.FAILED, error=_last_line(trial.message))
        self.reporter.trial_ended(finished)
        super().on_trial_end(trial)

    def save_model(self, trial_id, model, step=0):  # checkpoints are written by _checkpoint_if_best
        pass

    def load_model(self, trial):
        row = next((t for t in self.store.list_trials(self.search_id) if t.tuner_trial_id == trial.trial_id), None)
        artifacts = self.store.artifacts(self.search_id, kind="checkpoint", trial_id=row.id) if row else []
        if not artifacts:
            raise ValueError(f"trial {trial.trial_id} has no checkpoint (only the best trial keeps one)")
        return keras.saving.load_model(artifacts[-1].path, compile=False)

    # -- the two phases ----------------------------------------------------------------

    def _epoch_budget(self, hp: kt.HyperParameters) -> tuple[int, int]:
        if "tuner/epochs" in hp.values:  # Hyperband decides the budget of each bracket
            budget = int(hp.values["tuner/epochs"])
            return budget, budget
        return self.plan.epochs, self.plan.finetune_epochs

    def _fit(self, model: keras.Model, data: TrialData, learning_rate: float, epochs: int, phase: str,
             row: store_module.Trial, tracker: "BestEpoch") -> None:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        objective = self.oracle.objective
        callbacks = [
            keras.callbacks.TerminateOnNaN(),
            keras.callbacks.EarlyStopping(monitor=objective.name, mode=objective.direction,
                                          patience=self.plan.patience),
            tracker.callback(phase),
            _EpochLogger(self.store, row, phase, epochs, self.reporter),
        ]
        model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), epochs=epochs,
                  batch_size=self.plan.batch_size, shuffle=True, callbacks=callbacks, verbose=0)

    def _checkpoint_if_best(self, model: keras.Model, data: TrialData, row: store_module.Trial,
                            outcome: TrialOutcome) -> None:
        """Keep the model of the best trial so far (only that one: backbones are large)."""
        search = self.store.get_search(self.search_id)
        best = self.store.best_trial(search)
        if best is not None and not _better(outcome.value, best.value, search.direction):
            return
        trial_dir = self.workdir / f"trial_{row.number:03d}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        path = trial_dir / CHECKPOINT_NAME
        # An uncompiled twin sharing the layers: the checkpoint is for inference and export,
        # and an optimizer state saved with it would not match on reload.
        keras.Model(model.input, model.output, name=model.name).save(path)
        np.save(trial_dir / VAL_PROBS_NAME, model.predict(data.x_val, batch_size=self.plan.batch_size, verbose=0))
        for old in self.store.artifacts(self.search_id, kind="checkpoint"):
            if old.trial_id != row.id:
                shutil.rmtree(Path(old.path).parent, ignore_errors=True)
        self.store.add_artifact(search_id=self.search_id, trial_id=row.id, kind="checkpoint", format="keras",
                                path=str(path.resolve()), sha256=None, size_bytes=path.stat().st_size)


class BestEpoch:
    """Tracks the best epoch of the objective across both phases and keeps its weights."""

    def __init__(self, objective: kt.Objective):
        self.objective = objective
        self.best: tuple[str, int] | None = None
        self.best_value: float | None = None
        self.best_logs: dict[str, float] = {}
        self._weights: list | None = None

    def callback(self, phase: str) -> keras.callbacks.Callback:
        tracker = self

        class _Track(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                value = (logs or {}).get(tracker.objective.name)
                if value is None or not math.isfinite(value):
                    return
                if tracker.best_value is None or _better(value, tracker.best_value, tracker.objective.direction):
                    tracker.best, tracker.best_value = (phase, epoch + 1), float(value)
                    tracker.best_logs = {k: float(v) for k, v in logs.items()}
                    tracker._weights = [np.array(w) for w in self.model.get_weights()]

        return _Track()

    def restore(self, model: keras.Model) -> None:
        if self._weights is not None:
            model.set_weights(self._weights)


class _EpochLogger(keras.callbacks.Callback):
    def __init__(self, store: Store, row: store_module.Trial, phase: str, epochs: int, reporter: Reporter):
        super().__init__()
        self.store, self.row, self.phase, self.epochs, self.reporter = store, row, phase, epochs, reporter
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics["seconds"] = time.perf_counter() - self._started
        self.store.log_epoch(self.row.id, self.phase, epoch + 1, metrics)
        self.reporter.epoch_ended(self.row.number, self.phase, epoch + 1, self.epochs, metrics)


def _better(value: float, reference: float | None, direction: str) -> bool:
    if reference is None:
        return True
    return value > reference if direction == "max" else value < reference


def _release_memory() -> None:
    """Drop the previous trial's graph and weights so memory stays flat over a search."""
    keras.utils.clear_session(free_memory=True)
    gc.collect()


def _last_line(message: str | None) -> str:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "trial failed"
