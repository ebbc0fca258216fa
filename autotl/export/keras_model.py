"""The exported `.keras` file: the best checkpoint, loadable by plain Keras.

A trial model holds autotl's own layers (`autotl.backbones.layers`: pixel normalisation inside image
backbones, masked-mean and first-token pooling in text heads). A `.keras` file names its
layer classes, so loading the checkpoint needs autotl installed. The export rewrites each
of those layers as the Keras operations its ``call`` runs (``keras.ops`` on symbolic
tensors become operation nodes of the functional graph, which Keras serialises and loads
itself, in safe mode): the exported file then loads with ``keras.saving.load_model`` alone
(plus keras-hub where the backbone is a keras-hub model, which Keras imports by itself).
Every other layer, and so every weight, is the checkpoint's own object; the computation is
the same operations in the same order.
"""

from __future__ import annotations

import inspect

import keras
from keras import tree

from autotl.backbones import layers as autotl_layers
from autotl.workarounds import is_functional, self_and_sublayers

AUTOTL_LAYERS = (autotl_layers.PixelNormalization, autotl_layers.MaskedMeanPooling, autotl_layers.FirstTokenPooling)


def plain_keras_model(model):
    """`model` with autotl's layers replaced by Keras operations (nested functional models too)."""
    if not is_functional(model) or not _holds_autotl_layers(model):
        return model
    return _rebuild(model)


def _rebuild(model):
    fresh = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in model.inputs]
    rebuilt: dict[int, object] = {}

    def operation_fn(operation):
        if isinstance(operation, AUTOTL_LAYERS):
            return _as_operations(operation)
        if is_functional(operation) and _holds_autotl_layers(operation):
            if id(operation) not in rebuilt:  # a nested model called twice stays one model
                rebuilt[id(operation)] = _rebuild(operation)
            return rebuilt[id(operation)]
        return operation

    outputs = model._run_through_graph(fresh, operation_fn=operation_fn)
    return keras.Model(tree.pack_sequence_as(model._inputs_struct, fresh), outputs, name=model.name)


def _as_operations(layer):
    accepted = set(inspect.signature(layer.call).parameters)

    def call(*args, **kwargs):
        return layer.call(*args, **{name: value for name, value in kwargs.items() if name in accepted})

    return call


def _holds_autotl_layers(model) -> bool:
    return any(isinstance(layer, AUTOTL_LAYERS) for layer in self_and_sublayers(model)[1:])

