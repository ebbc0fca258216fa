"""The KerasTuner HyperModel: a pretrained backbone plus a tunable head.

The model is ``inputs -> [augmentation] -> backbone -> pooling -> [Dense, Dropout]*n
-> Dense(softmax)``. The backbone's BatchNormalization layers are always frozen
(a frozen BatchNormalization runs in inference mode in Keras 3), so they keep
their ImageNet statistics even while the top blocks are fine-tuned, the recipe
of Keras' transfer-learning guide. The backbone is called with
``training=False``, but Keras 3 passes `fit`'s training flag through to a
nested model's layers regardless, so dropout inside a backbone is active while
it trains end to end; on the cached path (`autotl.cache.source`) the frozen part is
computed once, in inference mode.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import keras
import keras_tuner as kt
import numpy as np

from autotl.search import space as space_module
from autotl.backbones.protocol import Backbone, Preprocessor
from autotl.errors import AutotlError
from autotl.workarounds import drop_nodes_since, node_counts, self_and_sublayers
from autotl.backbones.layers import FirstTokenPooling, MaskedMeanPooling

BACKBONE_LAYER = "backbone"


class TransferHyperModel(kt.HyperModel):
    def __init__(self, backbone: Backbone, weights: str, preprocessor: Preprocessor, num_classes: int,
                 space: Mapping[str, Mapping[str, Any]]):
        super().__init__(name=model_name(backbone.name))
        self.backbone = backbone
        self.weights = weights
        self.preprocessor = preprocessor
        self.num_classes = num_classes
        self.space = space

    def declare(self, hp: kt.HyperParameters) -> None:
        space_module.declare(self.space, hp)

    def hyperparameters(self, values: Mapping[str, Any]) -> kt.HyperParameters:
        """This search space's hyperparameters, set to `values` (a trial's, as the oracle chose them)."""
        hp = kt.HyperParameters()
        self.declare(hp)
        hp.values.update(values)
        return hp

    def build(self, hp: kt.HyperParameters, feature_model: keras.Model | None = None) -> keras.Model:
        """Build the untrained-head model for `hp` around `feature_model` (default: a new
        backbone); the backbone is left frozen."""
        self.declare(hp)
        feature_model = feature_model or self.build_backbone()
        inputs = fresh_inputs(feature_model)
        augment = "augment" in hp.values and hp.get("augment")
        features = feature_model(augmentation(inputs) if augment else inputs, training=False)
        x = pool(features, hp.get("pooling"), inputs)
        for index in range(hp.get("head_layers")):
            x = keras.layers.Dense(hp.get("head_units"), activation="relu", name=f"head_dense_{index}")(x)
            x = keras.layers.Dropout(hp.get("dropout"), name=f"head_dropout_{index}")(x)
        if hp.get("head_layers") == 0:
            x = keras.layers.Dropout(hp.get("dropout"), name="head_dropout")(x)
        outputs = keras.layers.Dense(self.num_classes, activation="softmax", dtype="float32", name="classes")(x)
        model = keras.Model(inputs, outputs, name=model_name(self.backbone.name))
        set_unfreeze_depth(feature_model, self.backbone.blocks(feature_model), 0)
        return model

    def build_backbone(self) -> keras.Model:
        feature_model = self.backbone.build(self.weights, self.preprocessor)
        feature_model.name = BACKBONE_LAYER
        return feature_model


class ReusableBackbone:
    """One backbone per process, reset to its pretrained weights for each trial.

    Loading pretrained weights takes seconds (converting a checkpoint, building
    a keras-hub model), while a trial on cached activations takes about as
    long; resetting the values of the variables takes milliseconds. The build
    is seeded, so randomly initialised weights (``none``) are the same in every
    process of a search, as the activation cache requires.

    Each trial calls the backbone's layers on new symbolic inputs (its model, and
    the flattened copy `autotl.cache.cut` cuts), and Keras keeps a node for every
    call on the layer called and on the layers feeding it: through the nodes of
    past trials the backbone would keep their head layers and weights alive. They
    are dropped before the next trial builds its model.
    """

    def __init__(self, hypermodel: TransferHyperModel, seed: int):
        self.hypermodel = hypermodel
        self.seed = seed
        self._model: keras.Model | None = None
        self._pretrained: list | None = None
        self._changed = False
        self._node_counts: list[tuple] = []

    def fresh(self) -> keras.Model:
        if self._model is None:
            keras.utils.set_random_seed(self.seed)
            self._model = self.hypermodel.build_backbone()
            self._pretrained = [np.array(w) for w in self._model.get_weights()]
            self._node_counts = node_counts(self._model)
        else:
            self.forget_past_trials()
            if self._changed:
                self._model.set_weights(self._pretrained)
        self._changed = False
        return self._model

    def forget_past_trials(self) -> None:
        """Drop the nodes past trials' models added to the backbone's layers (and with them those models)."""
        drop_nodes_since(self._node_counts)

    def mark_changed(self) -> None:
        """The current trial is about to train (some of) the backbone: reset it before the next one."""
        self._changed = True


def model_name(backbone_name: str) -> str:
    """The trial model's name: Keras refuses a ``/`` in it, and TensorFlow a ``:`` in the name
    scope it becomes, both of which a family's backbone names hold (``keras:ConvNeXtTiny``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"autotl_{backbone_name}")


def augmentation(images):
    """Random flips, shifts and zooms, active in training only (the exported model ignores them)."""
    x = keras.layers.RandomFlip("horizontal", name="augment_flip")(images)
    x = keras.layers.RandomTranslation(0.1, 0.1, name="augment_shift")(x)
    return keras.layers.RandomZoom(0.1, name="augment_zoom")(x)


def pool(features, pooling: str, inputs):
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="pool_avg")(features)
    if pooling == "flatten":
        return keras.layers.Flatten(name="pool_flatten")(features)
    if pooling == "mean":
        return MaskedMeanPooling(name="pool_mean")(features, inputs["padding_mask"])
    if pooling == "cls":
        return FirstTokenPooling(name="pool_cls")(features)
    raise ValueError(f"unknown pooling {pooling!r}")


def fresh_inputs(feature_model: keras.Model):
    """New Input tensors shaped like the feature model's: a dict of them for a dict input, else one.

    A model's `input` is a tensor, a dict, or a list: `keras.applications` models built
    with ``input_tensor=`` (ResNet50, MobileNetV2, DenseNet...) expose a one-element list.
    The preprocessor yields one array or a dict of them, so a list must hold exactly one.
    """
    structure = feature_model.input
    if isinstance(structure, dict):
        return {name: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=name) for name, t in structure.items()}
    flat = keras.tree.flatten(structure)
    if len(flat) != 1:
        raise AutotlError(f"the backbone's model takes {len(flat)} inputs as a list; autotl feeds one tensor "
                          "(images) or a dict of named inputs (text)")
    return keras.Input(shape=flat[0].shape[1:], dtype=flat[0].dtype, name="image")


def set_unfreeze_depth(feature_model: keras.Model, blocks: list[list], depth: int) -> int:
    """Make the layers of the top `depth` blocks trainable and freeze everything else.

    BatchNormalization layers stay frozen wherever they are. Returns the depth
    applied (capped at the number of blocks).
    """
    depth = max(0, min(int(depth), len(blocks)))
    if depth == 0:
        feature_model.trainable = False
        return 0
    # Keras skips `trainable = True` on a layer already flagged True, leaving sub-layers an
    # earlier call froze; going through False resets every sub-layer first.
    feature_model.trainable = False
    feature_model.trainable = True
    top = {id(layer) for top_layer in top_block_layers(blocks, depth) for layer in self_and_sublayers(top_layer)}
    for layer in self_and_sublayers(feature_model)[1:]:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif id(layer) not in top and not _contains_any(layer, top):
            layer.trainable = False
    return depth


def top_block_layers(blocks: list[list], depth: int) -> list:
    """The layers of the top `depth` blocks (all of them when `depth` exceeds the block count): what
    "unfreeze depth k" makes trainable, and where the cache and an ensemble cut the model."""
    depth = max(0, min(int(depth), len(blocks)))
    return [layer for block in blocks[len(blocks) - depth:] for layer in block]


def trainable_blocks(blocks: list[list], depth: int) -> list[list]:
    """The trainable variables of each of the top `depth` blocks, top block first: where layer-wise
    learning-rate decay (`autotl.search.recipe`) applies its factors."""
    depth = max(0, min(int(depth), len(blocks)))
    return [[variable for layer in block for variable in layer.trainable_weights]
            for block in reversed(blocks[len(blocks) - depth:])]


def _contains_any(layer, ids: set[int]) -> bool:
    return any(id(sub) in ids for sub in self_and_sublayers(layer)[1:])
