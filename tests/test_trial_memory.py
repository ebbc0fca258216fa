"""What one trial leaves behind in its process: nothing that grows with the number of trials."""

from __future__ import annotations

import gc
import weakref

import keras
import keras_tuner as kt
import numpy as np
import pytest

from autotl import graph as graph_module
from autotl import space as space_module
from autotl.hypermodel import ReusableBackbone, TransferHyperModel
from autotl.registry import load_registry
from autotl.trial import traced_gradients_released

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


def test_the_reused_backbone_forgets_the_models_of_past_trials():
    backbone = load_registry([str(TINY_PLUGIN)]).get("tiny_cnn")
    preprocessor = backbone.preprocessor("none", {"image_size": (16, 16)})
    space = space_module.build_space(backbone.modality, backbone.search_space(), None)
    hypermodel = TransferHyperModel(backbone, "none", preprocessor, 3, space)
    reusable = ReusableBackbone(hypermodel, seed=0)

    def trial() -> weakref.ref:
        hp = kt.HyperParameters()
        hypermodel.declare(hp)
        hp.values.update(pooling="avg", head_layers=1, head_units=8)
        model = hypermodel.build(hp, reusable.fresh())
        graph_module.flatten(model)  # calls every backbone layer again, as the cached path does
        return weakref.ref(model.get_layer("head_dense_0"))

    first_head = trial()
    feature_model = reusable.fresh()
    counts = [(len(layer._inbound_nodes), len(layer._outbound_nodes))
              for layer in feature_model._flatten_layers(include_self=True, recursive=True)]
    for _ in range(2):
        trial()
        reusable.fresh()
    gc.collect()
    assert first_head() is None  # nothing of the first trial's model is left
    assert counts == [(len(layer._inbound_nodes), len(layer._outbound_nodes))
                      for layer in feature_model._flatten_layers(include_self=True, recursive=True)]
