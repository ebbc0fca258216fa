"""Every `keras.applications` image model as a backbone: ``--backbone keras:NAME``.

``keras:ConvNeXtTiny``, ``keras:EfficientNetV2B0``, ``keras:MobileNetV3Small``,
``keras:DenseNet121``, ``keras:ResNet50V2``, ``keras:Xception``... (``autotl plugins``
lists them all). Each family of networks gets:

* its own input normalisation, inside the model (the ``preprocess_input`` of its
  `keras.applications` module: Caffe-style BGR minus the ImageNet mean, torch-style
  mean/std, or [-1, 1]; EfficientNet, EfficientNetV2, ConvNeXt and MobileNetV3
  normalise inside the network already);
* its blocks, from the names Keras gives its layers: a family's pattern names the
  block a layer belongs to (``conv4_block6`` in a ResNet, ``block6a`` in an
  EfficientNet). Layers whose names it does not match (Keras' auto-named
  activations, adds and paddings) belong to the block being built when they come,
  in the model's topological order, and layers before the first block form the stem.

Weights: ``imagenet`` (Keras downloads and caches them on first use; needs the
internet), a local weights file of the no-top network (one Keras downloaded, or
one saved with ``model.save_weights``), or ``none`` for random initialisation.

Inception, InceptionResNet and NASNet name most of their layers automatically
(``conv2d_57``), so no name tells their blocks apart: they are not offered.
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import keras

from autotl.backbones import Backbone, BackboneFamily
from autotl.errors import AutotlError, first_line
from autotl.backbones.layers import PixelNormalization

# What each `keras.applications` module's `preprocess_input` does to pixels in [0, 255].
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # BGR, ImageNet mean removed, no scaling
TORCH_MEAN = (123.675, 116.28, 103.53)  # RGB, ImageNet mean and std, in pixel units
TORCH_STD = (58.395, 57.12, 57.375)


def _caffe():
    return PixelNormalization(mean=CAFFE_BGR_MEAN, reverse_channels=True, name="caffe_bgr")


def _torch():
    return PixelNormalization(mean=TORCH_MEAN, std=TORCH_STD, name="imagenet_mean_std")


def _minus_one_to_one():
    return PixelNormalization(mean=(127.5,) * 3, std=(127.5,) * 3, name="minus_one_to_one")


@dataclass(frozen=True)
class Family:
    """Networks that share a naming scheme and a normalisation."""

    name: str
    members: str  # regex over `keras.applications` function names
    block: str  # regex over layer names; group 1 names the block a layer starts or belongs to
    normalization: object  # a factory of the normalisation layer, or None: the network normalises itself
    min_size: int = 32

    def block_of(self, layer_name: str) -> str | None:
        match = re.search(self.block, layer_name)
        return match.group(1) if match else None


FAMILIES = (
    Family("ResNet", r"^ResNet\d+$", r"^(conv\d_block\d+)_", _caffe),
    Family("ResNetV2", r"^ResNet\d+V2$", r"^(conv\d_block\d+)_", _minus_one_to_one),
    Family("DenseNet", r"^DenseNet\d+$", r"^(conv\d_block\d+|pool[2-9])_", _torch),
    Family("MobileNet", r"^MobileNet$", r"^conv_(?:dw|pw|pad)_(\d+)(?:_|$)", _minus_one_to_one),
    Family("MobileNetV2", r"^MobileNetV2$", r"^(expanded_conv|block_\d+|Conv_1)(?:_|$)", _minus_one_to_one),
    Family("MobileNetV3", r"^MobileNetV3(Small|Large)$", r"^(expanded_conv(?:_\d+)?|conv_1)(?:_|$)", None),
    Family("EfficientNet", r"^EfficientNetB\d$", r"^(block\d+[a-z]|top)_", None),
    Family("EfficientNetV2", r"^EfficientNetV2\w+$", r"^(block\d+[a-z]|top)_", None),
    Family("ConvNeXt", r"^ConvNeXt\w+$", r"_(stage_\d+_block_\d+|downsampling_block_\d+)(?:_|$)", None),
    Family("Xception", r"^Xception$", r"^(block\d+)_", _minus_one_to_one, min_size=71),
    Family("VGG", r"^VGG\d+$", r"^(block\d+)_", _caffe),
)


def family_of(network: str) -> Family | None:
    return next((f for f in FAMILIES if re.match(f.members, network)), None)


def available_networks() -> list[str]:
    """The `keras.applications` image models of the installed Keras that a family covers."""
    names = [name for name in dir(keras.applications) if name[:1].isupper()]
    return sorted(name for name in names if family_of(name) is not None)


class KerasApplication(Backbone):
    """One `keras.applications` network, without its classification top."""

    modality = "image"
    default_weights = "imagenet"
    default_image_size = (224, 224)

    def __init__(self, network: str, name: str | None = None, description: str | None = None):
        self.network = network
        self.family = family_of(network)
        if self.family is None:
            raise AutotlError(f"keras:{network}: its layers are named automatically, so autotl cannot tell its blocks "
                              "apart; write a plugin with its blocks (README: Writing a backbone plugin)")
        self.name = name or f"keras:{network}"
        self.description = description or (f"{network} (keras.applications, {self.family.name} family): "
                                           "weights imagenet | local file | none")

    def build(self, weights, preprocessor):
        height, width = preprocessor.image_size
        if min(height, width) < self.family.min_size:
            size = self.family.min_size
            raise AutotlError(f"{self.name} needs images of at least {size}x{size} pixels, got {height}x{width}")
        inputs = keras.Input((height, width, 3), name="image")
        normalized = self.family.normalization()(inputs) if self.family.normalization else inputs
        source = _weights_argument(self.name, weights)
        try:
            # Keras prints "Downloading data from ..." on stdout, which is for results (--json): to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                return getattr(keras.applications, self.network)(include_top=False, weights=source,
                                                                  input_tensor=normalized)
        except Exception as exc:  # noqa: BLE001 - a download or file error, reported in one line
            hint = "; without internet use --weights none or a local file" if source == "imagenet" else ""
            raise AutotlError(f"{self.name}: cannot load weights {weights!r}: {first_line(exc)}{hint}") from None

    def blocks(self, model):
        """The stem (the network's layers before its first named block), then each block in order."""
        blocks: dict[str, list] = {"": []}
        current = ""
        for layer in model.layers:
            if isinstance(layer, (keras.layers.InputLayer, PixelNormalization)):
                continue
            current = self.family.block_of(layer.name) or current
            blocks.setdefault(current, []).append(layer)
        stem = blocks.pop("")
        return [stem, *blocks.values()] if stem else list(blocks.values())


class KerasApplications(BackboneFamily):
    """The family plugin: ``keras:NAME`` for every network of `available_networks`."""

    prefix = "keras"
    description = "keras.applications image models: weights imagenet | local file | none"

    def variants(self) -> list[str]:
        return available_networks()

    def backbone(self, variant: str) -> Backbone:
        networks = {name.lower(): name for name in dir(keras.applications) if name[:1].isupper()}
        network = networks.get(variant.lower())
        if network is None:
            listed = ", ".join(available_networks())
            raise AutotlError(f"unknown keras.applications backbone {variant!r} (available: {listed})")
        return KerasApplication(network)


def _weights_argument(backbone: str, weights: str):
    if weights in (None, "", "none"):
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise AutotlError(f"{backbone}: weights must be imagenet, none or a weights file; {weights!r} is none of these")
    return str(path)
