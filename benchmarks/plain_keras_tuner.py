"""Plain KerasTuner over the end-to-end model: the baseline of benchmarks/search_speed.py.

Written the way KerasTuner's guide and the popular "freeze the base, add a head,
fine-tune the top layers" recipe write it: a `keras_tuner.HyperModel` whose `build`
loads the pretrained base, freezes it, calls it with ``training=False``, adds the
head and compiles with Adam(head_lr); whose `fit` trains the head on raw inputs
(EarlyStopping on val_accuracy), then, for an unfreeze depth k > 0, makes the top
k blocks trainable (BatchNormalization layers stay frozen), recompiles with
Adam(finetune_lr) and fine-tunes. The base runs on every batch of every epoch of
every trial; nothing is cached.

It shares with autotl only what must be identical for a fair comparison: the
plugin's pretrained feature model and preprocessor, its block list (what
"unfreeze depth k" means), the search-space declaration (`autotl.search.space.declare`)
and the masked-mean / first-token pooling layers. It uses none of autotl's
engine (trial, hypermodel, tuner, worker, cache). `ReplayOracle` proposes
exactly the hyperparameter values autotl tried, so trials compare one by one.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import keras
import keras_tuner as kt
import numpy as np

from autotl.search import space as space_module
from autotl.backbones.layers import FirstTokenPooling, MaskedMeanPooling
from autotl.search.records import trial_seed

OBJECTIVE = kt.Objective("val_accuracy", direction="max")


class ReplayOracle(kt.Oracle):
    """Proposes the given hyperparameter values in order, then stops.

    `replay` holds ``(label, values)`` pairs; `label` (autotl's trial number)
    is remembered per KerasTuner trial id in `labels`.
    """

    def __init__(self, replay: Sequence[tuple[int, Mapping[str, Any]]], **kwargs):
        super().__init__(objective=OBJECTIVE, max_trials=len(replay), **kwargs)
        self.replay = list(replay)
        self.labels: dict[str, int] = {}

    def populate_space(self, trial_id: str) -> dict:
        if len(self.labels) >= len(self.replay):
            return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}
        label, values = self.replay[len(self.labels)]
        self.labels[trial_id] = label
        declared = {hp.name for hp in self.hyperparameters.space}
        return {"status": kt.engine.trial.TrialStatus.RUNNING,
                "values": {name: value for name, value in values.items() if name in declared}}


class PlainTransferHyperModel(kt.HyperModel):
    """Frozen pretrained base + tunable head; `fit` trains the head, then fine-tunes the top blocks."""

    def __init__(self, backbone, weights: str, preprocessor, num_classes: int, space: Mapping[str, Any],
                 epochs: int, finetune_epochs: int, patience: int):
        super().__init__(name=f"plain_{backbone.name}")
        self.backbone = backbone
        self.weights = weights
        self.preprocessor = preprocessor
        self.num_classes = num_classes
        self.space = space
        self.epochs = epochs
        self.finetune_epochs = finetune_epochs
        self.patience = patience

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        space_module.declare(self.space, hp)
        base = self.backbone.build(self.weights, self.preprocessor)
        base.trainable = False
        inputs = fresh_inputs(base)
        x = pool(base(inputs, training=False), hp.get("pooling"), inputs)
        for _ in range(hp.get("head_layers")):
            x = keras.layers.Dense(hp.get("head_units"), activation="relu")(x)
            x = keras.layers.Dropout(hp.get("dropout"))(x)
        if hp.get("head_layers") == 0:
            x = keras.layers.Dropout(hp.get("dropout"))(x)
        outputs = keras.layers.Dense(self.num_classes, activation="softmax")(x)
        model = keras.Model(inputs, outputs)
        compile_model(model, hp.get("head_lr"))
        return model

    def fit(self, hp, model, x, y, validation_data=None, callbacks=None, **fit_kwargs) -> float:
        """Both phases; returns the best val_accuracy over all epochs (KerasTuner's objective value)."""
        callbacks = list(callbacks or [])
        best = self._fit_phase(model, x, y, validation_data, self.epochs, callbacks, fit_kwargs)
        depth = hp.get("unfreeze_depth")
        if depth > 0 and self.finetune_epochs > 0:
            base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
            unfreeze_top_blocks(base, self.backbone.blocks(base), depth)
            compile_model(model, hp.get("finetune_lr"))
            best = max(best, self._fit_phase(model, x, y, validation_data, self.finetune_epochs, callbacks,
                                             fit_kwargs))
        return best

    def _fit_phase(self, model, x, y, validation_data, epochs, callbacks, fit_kwargs) -> float:
        stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=self.patience,
                                             restore_best_weights=True)
        history = model.fit(x, y, validation_data=validation_data, epochs=epochs, callbacks=[*callbacks, stop],
                            **fit_kwargs)
        return float(np.nanmax(history.history["val_accuracy"]))


class TimedTuner(kt.Tuner):
    """A plain `keras_tuner.Tuner` that times each trial and seeds it like autotl (from the search's seed and the
    trial's configuration, `autotl.search.records.trial_seed`)."""

    def __init__(self, oracle: ReplayOracle, hypermodel, seed: int, **kwargs):
        super().__init__(oracle, hypermodel, **kwargs)
        self.seed = seed
        self.seconds: dict[str, float] = {}
        self._started = 0.0

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        keras.utils.set_random_seed(trial_seed(self.seed, trial.hyperparameters.values))
        self._started = time.perf_counter()

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.seconds[trial.trial_id] = time.perf_counter() - self._started


@dataclass
class PlainTrial:
    number: int  # autotl's trial number whose values were replayed
    hyperparameters: dict
    status: str
    val_accuracy: float | None
    seconds: float


def run_search(hypermodel: PlainTransferHyperModel, replay: Sequence[tuple[int, Mapping[str, Any]]], train, val,
               batch_size: int, seed: int, directory: Path) -> tuple[TimedTuner, list[PlainTrial]]:
    """Run the replayed trials; `train` and `val` are ``(inputs, labels)`` of raw model inputs."""
    tuner = TimedTuner(ReplayOracle(replay), hypermodel, seed, directory=str(directory), project_name="plain",
                       overwrite=True)
    tuner.search(train[0], train[1], validation_data=val, batch_size=batch_size, shuffle=True, verbose=0)
    trials = [PlainTrial(tuner.oracle.labels[trial_id], dict(trial.hyperparameters.values), trial.status,
                         None if trial.score is None else float(trial.score), tuner.seconds[trial_id])
              for trial_id, trial in tuner.oracle.trials.items()]
    return tuner, trials


def test_accuracy(tuner: TimedTuner, x_test, y_test, batch_size: int) -> float:
    """Accuracy of the best trial's model (KerasTuner's checkpoint of its best epoch) on the test split."""
    with warnings.catch_warnings():  # its optimizer state (of the fine-tuning phase) is not needed to predict
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model = tuner.get_best_models(1)[0]
    predicted = np.argmax(model.predict(x_test, batch_size=batch_size, verbose=0), axis=-1)
    return float(np.mean(predicted == np.asarray(y_test)))


def compile_model(model: keras.Model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def fresh_inputs(base: keras.Model):
    """Input tensors shaped like the base's (one tensor, or BERT's dict of them)."""
    if isinstance(base.input, dict):
        return {name: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=name) for name, t in base.input.items()}
    return keras.Input(shape=base.input.shape[1:], dtype=base.input.dtype)


def pool(features, pooling: str, inputs):
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D()(features)
    if pooling == "flatten":
        return keras.layers.Flatten()(features)
    if pooling == "mean":
        return MaskedMeanPooling()(features, inputs["padding_mask"])
    if pooling == "cls":
        return FirstTokenPooling()(features)
    raise ValueError(f"unknown pooling {pooling!r}")


def unfreeze_top_blocks(base: keras.Model, blocks: list[list], depth: int) -> None:
    """The recipe's second step: the base trainable again, then every layer outside the top
    `depth` blocks frozen, and every BatchNormalization layer frozen (Keras 3 then runs it in
    inference mode). Flags are set on leaf layers, so nested models keep their own flag on."""
    base.trainable = True
    top = {id(sub) for block in blocks[-depth:] for layer in block for sub in layer._flatten_layers()}
    for layer in base._flatten_layers(include_self=False):
        if not list(layer._flatten_layers(include_self=False, recursive=False)):
            layer.trainable = id(layer) in top and not isinstance(layer, keras.layers.BatchNormalization)
