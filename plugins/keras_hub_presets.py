"""keras-hub backbones as ``--backbone kerashub:PRESET_OR_FOLDER``.

The variant after ``kerashub:`` is anything keras-hub's ``from_preset`` reads:

* a keras-hub preset name (``bert_tiny_en_uncased``, ``efficientnet_b0_ra_imagenet``;
  ``autotl plugins`` lists those of the supported classes);
* an ``hf://`` or ``kaggle://`` handle (these download, so they need the internet);
* a local folder: a keras-hub preset (``save_to_preset``), a Hugging Face BERT
  checkpoint, or a timm EfficientNet checkpoint (``config.json`` + ``model.safetensors``).

What it is decides which plugin machinery runs, read from its ``config.json``
before anything is built (keras-hub ``registered_name``, Hugging Face
``model_type``, timm ``architecture``; for a preset name, which keras-hub class
lists it): BERT-family text encoders reuse the ``bert`` plugin (its tokenizer,
its cut at ``sequence_output``, its transformer-layer blocks), EfficientNet image
backbones reuse the ``efficientnet_lite0`` plugin (its normalisation from the
preset, its stem / MBConv / head blocks from layer names). Other architectures
have no block layout autotl knows, so they are refused in one line.

Weights: the preset itself by default; ``--weights`` may name another source of
the same kind. ``none`` (random initialisation of the preset's architecture) is
offered for EfficientNet only: the ``bert`` plugin resolves ``none`` to its own
default architecture (MiniLM), so random BERT weights of *another* shape would
mean copying its build code.

Naming: the backbone is ``kerashub:VARIANT``, a local folder written as an
absolute path, so that trial workers, exports and ``autotl predict`` find it
again from any working directory. keras-hub is imported only when a variant is
resolved, so that discovering the plugin (``autotl plugins``, every command)
stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from autotl.backbones import IMAGE, TEXT, Backbone, BackboneFamily
from autotl.backbones.weights import looks_like_path
from autotl.errors import AutotlError, first_line
from autotl_plugins.bert import Bert
from autotl_plugins.efficientnet_lite0 import EfficientNetLite0, feature_model, load_preset

PREFIX = "kerashub"
# keras-hub backbone class -> modality: the classes whose blocks autotl knows.
SUPPORTED_CLASSES = {"BertBackbone": TEXT, "EfficientNetBackbone": IMAGE}
HF_MODEL_TYPES = {"bert": TEXT}
TIMM_ARCHITECTURES = {"efficientnet": IMAGE}  # prefixes, as keras-hub's timm loader matches them
SUPPORTED = ("BERT text encoders (keras-hub BertBackbone, Hugging Face model_type bert) and EfficientNet image "
             "backbones (keras-hub EfficientNetBackbone, timm efficientnet*)")


class KerasHubBert(Bert):
    """A BERT-family encoder from a keras-hub preset or folder: the ``bert`` plugin with it as default weights."""

    def __init__(self, name: str, preset: str):
        super().__init__()
        self.name = name
        self.default_weights = preset
        self.description = f"BERT text encoder from keras-hub preset {preset}"

    def preprocessor(self, weights, options):
        return super().preprocessor(self._weights(weights), options)

    def build(self, weights, preprocessor):
        return super().build(self._weights(weights), preprocessor)

    def search_space(self, weights):
        return super().search_space(self._weights(weights))

    def describe_weights(self, weights):
        return super().describe_weights(self._weights(weights))

    def _weights(self, weights: str | None) -> str:
        source = str(weights or "").strip()
        if source.lower() in ("", "default"):
            return self.default_weights
        if source.lower() == "none":
            raise AutotlError(f"{self.name}: --weights none is not offered for BERT presets (the bert plugin's random "
                              "initialisation is MiniLM's architecture); leave --weights out to use the preset's")
        return source


class KerasHubEfficientNet(EfficientNetLite0):
    """An EfficientNet from a keras-hub preset or folder: the ``efficientnet_lite0`` plugin's loading,
    normalisation and blocks, with the preset as default weights (``none``: its architecture, random)."""

    def __init__(self, name: str, preset: str, image_size: tuple[int, int] = (224, 224)):
        self.name = name
        self.default_weights = preset
        self.default_image_size = image_size
        self.description = f"EfficientNet image backbone from keras-hub preset {preset}"

    def build(self, weights, preprocessor):
        source = str(weights or "").strip() or self.default_weights
        random = source.lower() == "none"
        source = self.default_weights if random else _local_or_handle(source)
        height, width = preprocessor.image_size
        try:
            backbone, mean, std = load_preset(source, (height, width, 3), load_weights=not random)
        except Exception as error:  # keras-hub raises many kinds; the user needs one line
            raise AutotlError(f"{self.name}: cannot load weights {weights!r} with keras-hub: "
                              f"{_reason(error)}") from None
        return feature_model(backbone, mean, std, name="kerashub_efficientnet")


class KerasHubPresets(BackboneFamily):
    """The family plugin: ``kerashub:PRESET``, ``kerashub:hf://...`` or ``kerashub:FOLDER``."""

    prefix = PREFIX
    description = ("keras-hub BERT text encoders and EfficientNet image backbones: a preset name, an hf:// or "
                   "kaggle:// handle, or a local keras-hub / Hugging Face / timm folder")

    def variants(self) -> list[str]:
        import keras_hub

        return [name for cls in SUPPORTED_CLASSES for name in sorted(getattr(keras_hub.models, cls).presets)]

    def backbone(self, variant: str) -> Backbone:
        variant = variant.strip()
        if not variant:
            raise AutotlError(f"{PREFIX}: give a keras-hub preset, an hf:// or kaggle:// handle or a folder "
                              f"after the colon, e.g. {PREFIX}:bert_tiny_en_uncased")
        path = Path(variant).expanduser()
        if "://" in variant:
            preset, config, where = variant, _remote_config(variant), variant
        elif path.exists() or looks_like_path(variant):
            preset = _folder(variant)
            config, where = _read_config(Path(preset)), preset
        else:
            return _make(_preset_modality(variant), variant, {})
        return _make(_modality_of(config, where), preset, config)


def _make(modality: str, preset: str, config: dict) -> Backbone:
    name = f"{PREFIX}:{preset}"
    if modality == TEXT:
        return KerasHubBert(name, preset)
    return KerasHubEfficientNet(name, preset, _image_size(config))


# --------------------------------------------------------------------------- what a variant is


def _folder(variant: str) -> str:
    """A local preset folder as an absolute path (the name trial workers and exports look up again)."""
    path = Path(os.path.abspath(Path(variant).expanduser()))
    if not path.exists():
        raise AutotlError(f"{PREFIX}: no such folder: {variant}")
    if not path.is_dir():
        raise AutotlError(f"{PREFIX}: {variant} is a file; give a folder (a keras-hub preset, a Hugging Face "
                          "or timm checkpoint)")
    if any(c.isspace() for c in str(path)):
        raise AutotlError(f"{PREFIX}: a backbone name cannot hold spaces and {path} does; move or link the folder")
    return str(path)


def _read_config(folder: Path) -> dict:
    file = folder / "config.json"
    if not file.is_file():
        raise AutotlError(f"{PREFIX}: {folder} has no config.json (not a keras-hub preset, Hugging Face or timm folder)")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AutotlError(f"{PREFIX}: cannot read {file}: {first_line(error)}") from None
    if not isinstance(config, dict):
        raise AutotlError(f"{PREFIX}: {file} is not a JSON object")
    return config


def _remote_config(handle: str) -> dict:
    """The ``config.json`` of an hf:// or kaggle:// handle, downloaded (and cached) by keras-hub."""
    # keras-hub has no public reader of one preset file: from_preset reads this one the same way.
    from keras_hub.src.utils.preset_utils import load_json

    try:
        config = load_json(handle)
    except Exception as error:  # network, authentication, a missing file: all one line
        raise AutotlError(f"{PREFIX}: cannot read the config.json of {handle}: {_reason(error)}") from None
    if not isinstance(config, dict):
        raise AutotlError(f"{PREFIX}: the config.json of {handle} is not a JSON object")
    return config


def _modality_of(config: dict, where: str) -> str:
    """Text or image from what keras-hub reads to pick its loader; one-line errors for anything else."""
    if "registered_name" in config or "class_name" in config:  # a keras-hub preset
        cls = str(config.get("registered_name") or config.get("class_name")).split(">")[-1]
        return _supported(SUPPORTED_CLASSES.get(cls), f"a keras-hub {cls}", where)
    if "model_type" in config:  # a Hugging Face checkpoint
        model_type = str(config["model_type"])
        return _supported(HF_MODEL_TYPES.get(model_type), f"a Hugging Face {model_type!r} model", where)
    if "architecture" in config:  # a timm checkpoint
        architecture = str(config["architecture"])
        modality = next((m for p, m in TIMM_ARCHITECTURES.items() if architecture.startswith(p)), None)
        return _supported(modality, f"a timm {architecture!r} model", where)
    raise AutotlError(f"{PREFIX}: the config.json of {where} names no keras-hub class, Hugging Face model_type or "
                      "timm architecture")


def _preset_modality(name: str) -> str:
    """The modality of a keras-hub preset name, from the class that lists it (no download)."""
    import keras_hub

    for cls, modality in SUPPORTED_CLASSES.items():
        if name in getattr(keras_hub.models, cls).presets:
            return modality
    # A class lists its subclasses' presets too: the owner is the most derived class listing it.
    owners = [cls for cls in _backbone_classes() if name in cls.presets]
    if not owners:
        raise AutotlError(f"{PREFIX}: {name!r} is no keras-hub preset, handle or existing folder (`autotl plugins` "
                          "lists the presets)")
    owner = max(owners, key=lambda cls: len(cls.__mro__)).__name__
    return _supported(None, f"a keras-hub {owner} preset", name)


def _backbone_classes() -> list[type]:
    import keras_hub

    classes = (getattr(keras_hub.models, attr) for attr in dir(keras_hub.models))
    return [c for c in classes if isinstance(c, type) and issubclass(c, keras_hub.models.Backbone)
            and c is not keras_hub.models.Backbone]


def _supported(modality: str | None, what: str, where: str) -> str:
    if modality is None:
        raise AutotlError(f"{PREFIX}:{where} is {what}, which autotl cannot cut into blocks; supported: {SUPPORTED}")
    return modality


def _image_size(config: dict) -> tuple[int, int]:
    """A timm checkpoint's own input size (``pretrained_cfg.input_size``, channels first), else 224x224."""
    pretrained = config.get("pretrained_cfg")
    size = pretrained.get("input_size") if isinstance(pretrained, dict) else None
    if isinstance(size, list) and len(size) == 3 and all(isinstance(s, int) and s > 0 for s in size):
        return (size[1], size[2])
    return (224, 224)


# --------------------------------------------------------------------------- helpers


def _local_or_handle(source: str) -> str:
    """A weights source for keras-hub: an existing folder as an absolute path, anything else as given."""
    path = Path(source).expanduser()
    if path.exists():
        return os.path.abspath(path)
    if looks_like_path(source) and "://" not in source:
        raise AutotlError(f"{PREFIX}: no such weights folder: {source}")
    return source


_NETWORK_ERRORS = ("ConnectionError", "ConnectError", "NameResolutionError", "gaierror", "Timeout",
                   "LocalEntryNotFoundError")


def _reason(error: BaseException) -> str:
    """One line for a keras-hub error; a failed download says so (hub libraries wrap it in other errors)."""
    cause, seen = error, 0
    while cause is not None and seen < 10:
        if any(kind in type(cause).__name__ for kind in _NETWORK_ERRORS):
            return "download failed (no network?); give a local folder instead"
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__
