"""ResNet50 from `keras.applications`, without its classification top.

Weights: ``imagenet`` (Keras downloads and caches them on first use), a local
weights file for the no-top network (e.g. Keras'
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``, or one saved with
``model.save_weights``), or ``none`` for random initialisation.

Blocks from the bottom: the stem (conv1 + pool1), then the 16 residual blocks
``conv2_block1`` ... ``conv5_block3``; unfreeze depth k fine-tunes the last k
residual blocks (``conv5_block3`` first).
"""

from __future__ import annotations

import re
from pathlib import Path

import keras

from autotl.backbone import Backbone
from autotl.errors import AutotlError, first_line
from autotl.layers import PixelNormalization

# keras.applications' ResNet50 takes Caffe-style input: BGR, ImageNet mean removed, no scaling.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_BLOCK = re.compile(r"^(conv\d_block\d+)_")


class ResNet50(Backbone):
    name = "resnet50"
    modality = "image"
    description = "ResNet50 (keras.applications): weights imagenet | local file | none"
    default_weights = "imagenet"
    default_image_size = (224, 224)

    def build(self, weights, preprocessor):
        height, width = preprocessor.image_size
        if min(height, width) < 32:
            raise AutotlError(f"resnet50 needs images of at least 32x32 pixels, got {height}x{width}")
        inputs = keras.Input((height, width, 3), name="image")
        normalized = PixelNormalization(mean=CAFFE_BGR_MEAN, reverse_channels=True, name="caffe_bgr")(inputs)
        source = _weights_argument(weights)
        try:
            return keras.applications.ResNet50(include_top=False, weights=source, input_tensor=normalized)
        except Exception as exc:  # noqa: BLE001 - a download or file error, reported in one line
            raise AutotlError(f"resnet50: cannot load weights {weights!r}: {first_line(exc)}") from None

    def blocks(self, model):
        stem, residual = [], {}
        for layer in model.layers:
            match = _BLOCK.match(layer.name)
            if match:
                residual.setdefault(match.group(1), []).append(layer)
            elif layer.name.startswith(("conv1_", "pool1_")):
                stem.append(layer)
        return [stem, *residual.values()]

    def search_space(self):
        return {"unfreeze_depth": {"min": 0, "max": 3}}


def _weights_argument(weights: str):
    if weights in (None, "", "none"):
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise AutotlError(f"resnet50: weights must be imagenet, none or a weights file; {weights!r} is none of these")
    return str(path)
