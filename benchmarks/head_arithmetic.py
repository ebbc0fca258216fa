"""The arithmetic of a search's head phases alone: what no trainer on cached activations can go below.

A depth-0 trial trains a head on the backbone's cached (and pooled) output. Its
wall time is Keras' fixed costs (building the model, tracing, the per-epoch data
pipeline, callbacks, checkpoints) plus the head's own arithmetic. This times the
arithmetic only: for each trial of a finished search, the trial's own head phase
(its model built as the trial built it, `autotl.search.hypermodel` then `autotl.cache.source`,
on the same cached activations), trained for as many epochs as the trial ran,
at its batch size, with one validation pass an epoch, each epoch a single
compiled TensorFlow function: no per-step Python, no data pipeline, no
callbacks, the trace not counted.

The floor of `search_speed.py` plus this sum is a lower bound for a depth-0
search on this machine (before loading data, starting a process or building a
model). Used by `search_speed.py` for its depth-0 run; TensorFlow backend only.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from autotl.cache.entries import ActivationCache
from autotl.cache.source import ActivationSource
from autotl.search.hypermodel import ReusableBackbone, TransferHyperModel
from autotl.search.records import TrialData
from autotl.store import Store


def runs_here() -> bool:
    """Whether Keras runs on TensorFlow, whose compiled functions this times."""
    import keras

    return keras.backend.backend() == "tensorflow"


def head_phase_seconds(store: Store, search_name: str, backbone, preprocessor, data: TrialData,
                       cache_dir: str) -> list[dict[str, Any]]:
    """Per completed trial of `search_name`: its number, head epochs run and the seconds of their arithmetic."""
    import keras

    if not runs_here():
        raise RuntimeError("head_arithmetic times compiled TensorFlow functions: run it on the TensorFlow backend")
    search = store.get_search(search_name)
    config = search.config
    hypermodel = TransferHyperModel(backbone, search.weights, preprocessor, len(search.labels), config["space"])
    reusable = ReusableBackbone(hypermodel, config["seed"])
    source = ActivationSource(ActivationCache(cache_dir), backbone, preprocessor.config(), [0])
    rows = []
    for trial in store.list_trials(search.id):
        if trial.status != "completed":
            continue
        epochs = len({m.epoch for m in store.epoch_metrics(trial.id) if m.phase == "head"})
        hp = hypermodel.hyperparameters(trial.hyperparameters)
        keras.utils.clear_session()
        feed = source.feed(hypermodel.build(hp, reusable.fresh()), data, trial.hyperparameters)
        if feed.status != "hit":
            raise RuntimeError(f"trial {trial.number}: its activations are not in {cache_dir}")
        phase = feed.phase(0)
        seconds = _time_epochs(phase.model, phase.x_train, data.y_train, phase.x_val, data.y_val,
                               hp.get("head_lr"), config["batch_size"], epochs)
        rows.append({"number": trial.number, "head_epochs": epochs, "seconds": round(seconds, 3)})
    return rows


def _time_epochs(model, x_train, y_train, x_val, y_val, learning_rate: float, batch_size: int, epochs: int) -> float:
    import keras
    import tensorflow as tf

    if len(model.inputs) != 1:
        raise RuntimeError(f"a head with {len(model.inputs)} inputs: only single-input heads are timed")
    x_train, x_val = (tf.constant(np.asarray(x[0] if isinstance(x, (list, tuple)) else x)) for x in (x_train, x_val))
    y_train, y_val = tf.constant(y_train), tf.constant(y_val)
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(model.trainable_variables)
    loss = keras.losses.SparseCategoricalCrossentropy()
    count, val_count = int(x_train.shape[0]), int(x_val.shape[0])

    @tf.function
    def epoch(order):
        for start in tf.range(0, count, batch_size):
            rows = order[start:start + batch_size]
            with tf.GradientTape() as tape:
                value = loss(tf.gather(y_train, rows), model(tf.gather(x_train, rows), training=True))
            optimizer.apply(tape.gradient(value, model.trainable_variables), model.trainable_variables)
        correct = 0.0
        for start in tf.range(0, val_count, batch_size):
            predicted = tf.argmax(model(x_val[start:start + batch_size], training=False), axis=-1)
            correct += tf.reduce_sum(tf.cast(predicted == tf.cast(y_val[start:start + batch_size], tf.int64),
                                             tf.float32))
        return correct

    rng = np.random.default_rng(0)
    epoch(tf.constant(rng.permutation(count))).numpy()  # the trace, not counted
    started = time.perf_counter()
    for _ in range(epochs):
        epoch(tf.constant(rng.permutation(count))).numpy()
    return time.perf_counter() - started
