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


HALF_DTYPES = ("float16", "bfloat16")


def float32_model(model):
    """`model` computing in float32: the model of a mixed-precision search (``--precision
    mixed_float16`` or ``mixed_bfloat16``) rebuilt with every layer's dtype policy float32 and
    the checkpoint's weights copied (a mixed policy keeps them in float32 already, so nothing is lost).

    Every format is exported from it. A checkpoint keeps each layer's mixed policy, and the
    converters do not take it: TFLite's MLIR converter fails on the half-precision casts, and
    tf2onnx writes a graph onnxruntime refuses (a float16 ``Sub`` against a bfloat16 one); half
    precision is for training speed, and an export predicts what the float32 model does.
    """
    if not any(_is_mixed(layer.dtype_policy.name) for layer in self_and_sublayers(model)):
        return model
    rebuilt = model.__class__.from_config(_float32_config(model.get_config()))
    rebuilt.set_weights([w.astype("float32") if _is_half(w.dtype.name) else w for w in model.get_weights()])
    return rebuilt


def _float32_config(value):
    """A model config with every mixed dtype policy, and every half-precision tensor dtype, float32."""
    if isinstance(value, list):
        return [_float32_config(item) for item in value]
    if not isinstance(value, dict):
        return value
    if str(value.get("class_name", "")).endswith("DTypePolicy") and _is_mixed(value.get("config", {}).get("name")):
        return {**value, "config": {**value["config"], "name": "float32"}}
    return {key: "float32" if key == "dtype" and (_is_half(item) or _is_mixed(item)) else _float32_config(item)
            for key, item in value.items()}


def _is_mixed(policy) -> bool:
    return isinstance(policy, str) and policy.startswith("mixed_")


def _is_half(dtype) -> bool:
    return isinstance(dtype, str) and dtype in HALF_DTYPES


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

