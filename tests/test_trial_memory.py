"""What one trial leaves behind in its process: nothing that grows with the number of trials."""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import pytest

from autotl.cache import cut as graph_module
from autotl.search import space as space_module
from autotl.search.hypermodel import ReusableBackbone, TransferHyperModel
from autotl.search.records import Objective, TrainingPlan
from autotl.backbones.registry import load_registry
from autotl.store import Store
from autotl.search.runner import TrialRunner
from autotl.workarounds import traced_gradients_released

from conftest import TINY_PLUGIN


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's gradient registry")
def test_a_fit_leaves_no_custom_gradient_registered():
    """TensorFlow registers a custom gradient per traced train step for good (and with it the
    traced graphs); a trial unregisters those it added."""
    from tensorflow.python.framework import ops as tf_ops

    registry = tf_ops._gradient_registry._registry
    before = set(registry)
    with traced_gradients_released():
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        model.fit(np.zeros((8, 4), "float32"), np.zeros(8, "int32"), epochs=1, batch_size=4, verbose=0)
    assert set(registry) == before


def tiny_hypermodel() -> TransferHyperModel:
    backbone = load_registry([str(TINY_PLUGIN)]).get("tiny_cnn")
    preprocessor = backbone.preprocessor("none", {"image_size": (16, 16)})
    space = space_module.build_space(backbone.modality, backbone.search_space("none"), None)
    return TransferHyperModel(backbone, "none", preprocessor, 3, space)


def build_trial_model(hypermodel: TransferHyperModel, reusable: ReusableBackbone) -> weakref.ref:
    """What a trial does to the reused backbone; a weak reference to the trial's head layer."""
    hp = hypermodel.hyperparameters(dict(pooling="avg", head_layers=1, head_units=8))
    model = hypermodel.build(hp, reusable.fresh())
    graph_module.flatten(model)  # calls every backbone layer again, as the cached path does
    return weakref.ref(model.get_layer("head_dense_0"))


def test_the_reused_backbone_forgets_the_models_of_past_trials():
    hypermodel = tiny_hypermodel()
    reusable = ReusableBackbone(hypermodel, seed=0)
    first_head = build_trial_model(hypermodel, reusable)
    feature_model = reusable.fresh()
    counts = [(len(layer._inbound_nodes), len(layer._outbound_nodes))
              for layer in feature_model._flatten_layers(include_self=True, recursive=True)]
    for _ in range(2):
        build_trial_model(hypermodel, reusable)
        reusable.fresh()
    gc.collect()
    assert first_head() is None  # nothing of the first trial's model is left
    assert counts == [(len(layer._inbound_nodes), len(layer._outbound_nodes))
                      for layer in feature_model._flatten_layers(include_self=True, recursive=True)]


def tiny_runner(tmp_path) -> TrialRunner:
    return TrialRunner(tiny_hypermodel(), TrainingPlan(cache_dir=str(tmp_path / "cache")), Objective("val_accuracy", "max"),
                       Store(tmp_path / "autotl.db"), 0, tmp_path)


def test_between_trials_what_survives_is_frozen_and_past_trials_models_are_still_collected(tmp_path):
    """Collections skip what lived through a trial's start (gc.freeze), but not the models of past
    trials: those are dropped from the reused backbone before the collection that precedes the freeze."""
    assert gc.get_freeze_count() == 0
    runner = tiny_runner(tmp_path)
    try:
        heads = []
        for _ in range(3):
            heads.append(build_trial_model(runner.hypermodel, runner.backbone))
            runner.release_past_trials()
            assert gc.get_freeze_count() > 0
            assert [head() for head in heads] == [None] * len(heads)
    finally:
        runner.close()
    assert gc.get_freeze_count() == 0  # all given back to the collector


def test_a_process_that_froze_objects_itself_is_left_as_it_was(tmp_path):
    runner = tiny_runner(tmp_path)
    gc.freeze()
    frozen = gc.get_freeze_count()
    try:
        runner.release_past_trials()
        assert gc.get_freeze_count() <= frozen  # nothing added (frozen objects may have been freed since)
        runner.close()
        assert 0 < gc.get_freeze_count() <= frozen  # and nothing thawed
    finally:
        gc.unfreeze()
