"""An export folder's layout and its manifest (``autotl.json``).

The layout: which file or folder holds each format. The manifest: the backbone,
labels in order, preprocessing, what each format takes and returns, the trial's
hyperparameters and metrics, the store and search it came from, every file with
its checksum, and the versions of the packages that wrote it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from autotl.export.tf_formats import (IMAGES_INPUT, MODEL_SIGNATURE, ONNX_FILE, OUTPUT, PIXELS_INPUT, PIXELS_SIGNATURE,
                                      PREPROCESSOR_DIR, RAW_SIGNATURE, SAVED_MODEL_DIR, TEXTS_INPUT, TFLITE_FILE,
                                      takes_pixels)
if TYPE_CHECKING:  # the CLI imports the format lists from here: no SQLAlchemy at startup
    from autotl.store import Search, Store, Trial

MANIFEST = "autotl.json"
MANIFEST_VERSION = 2  # 2: `inputs` per format; SavedModel, ONNX and TFLite take raw inputs
KERAS_FILE = "model.keras"
FORMATS = ("keras", "savedmodel", "onnx", "tflite")
DEFAULT_FORMATS = ("keras", "savedmodel")
FORMAT_PATHS = {"keras": KERAS_FILE, "savedmodel": SAVED_MODEL_DIR, "onnx": ONNX_FILE, "tflite": TFLITE_FILE}
_VERSIONED_PACKAGES = ("autotl", "keras", "keras-tuner", "keras-hub", "tensorflow", "numpy", "sqlalchemy",
                       "pillow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")


def build_manifest(store: Store, search: Search, best: Trial, preprocessing: dict[str, Any],
                   inputs: dict[str, Any], files: dict[str, str], refit: dict[str, Any] | None = None,
                   ensemble: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of an export of `best`: `inputs` from `describe_inputs`, `files` from `file_checksums`;
    `refit`: what the refit exported instead of the trial's own model did (`autotl.search.refit`), else None;
    `ensemble`: the ensemble exported instead, with its members and weights (`autotl.search.ensemble`), else None."""
    return {
        "autotl_manifest_version": MANIFEST_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "backbone": search.backbone,
        "modality": search.modality,
        "weights": search.weights,
        "labels": list(search.labels),
        "preprocessing": preprocessing,
        "hyperparameters": best.hyperparameters,
        "objective": {"name": search.objective, "direction": search.direction, "value": best.value},
        "metrics": best.metrics,
        "best_epoch": {"phase": best.best_phase, "epoch": best.best_epoch},
        "refit": refit,
        "ensemble": ensemble,
        "search": {"name": search.name, "id": search.id, "trial": best.number, "store": store.display_url,
                   "dataset": search.dataset_path, "dataset_fingerprint": search.dataset_fingerprint},
        "inputs": inputs,
        "files": files,
        "versions": _versions(),
    }


def graph_tokenizer(preprocessor) -> bool:
    """Whether the SavedModel tokenizes texts itself (the preprocessor has TensorFlow graph code)."""
    return preprocessor.config().get("type") != "image" and preprocessor.graph_function() is not None


def describe_inputs(model, formats: Sequence[str], preprocessing: dict[str, Any], num_labels: int,
                    raw_text: bool) -> dict[str, Any]:
    """What each exported format takes and returns (the manifest's ``inputs``)."""
    model_inputs, model_takes = _model_io(model, preprocessing)
    probabilities = {OUTPUT: {**_spec((None, num_labels), "float32"),
                              "meaning": "class probabilities, in the order of `labels`"}}
    pixels = takes_pixels(preprocessing)
    if pixels:
        height, width = preprocessing["image_size"]
        portable_inputs = {PIXELS_INPUT: _spec((None, None, None, 3), "uint8")}
        portable_takes = (f"uint8 RGB pixels (N, H, W, 3) of any H and W, one size per call; resized to "
                          f"{height}x{width} inside, exactly as Pillow's BILINEAR resize, and normalised inside")
    else:
        portable_inputs, portable_takes = model_inputs, model_takes
    description: dict[str, Any] = {}
    if "keras" in formats:
        description["keras"] = {"path": KERAS_FILE, "inputs": model_inputs, "takes": model_takes,
                                "outputs": probabilities, "load": "keras.saving.load_model('model.keras')"}
    if "savedmodel" in formats:
        signatures = {MODEL_SIGNATURE: {"inputs": model_inputs, "takes": model_takes,
                                        "outputs": {"output_0": probabilities[OUTPUT]}}}
        signatures.update(_raw_signatures(signatures[MODEL_SIGNATURE], portable_inputs, portable_takes,
                                          probabilities, pixels, raw_text))
        description["savedmodel"] = {"path": f"{SAVED_MODEL_DIR}/", "signatures": signatures,
                                     "load": "tf.saved_model.load('saved_model').signatures['serving_default']"}
    if "onnx" in formats:
        description["onnx"] = {"path": ONNX_FILE, "inputs": portable_inputs, "takes": portable_takes,
                               "outputs": probabilities, "load": "onnxruntime.InferenceSession('model.onnx')"}
    if "tflite" in formats:
        description["tflite"] = {"path": TFLITE_FILE, "signature": RAW_SIGNATURE, "inputs": portable_inputs,
                                 "takes": portable_takes, "outputs": probabilities,
                                 "load": "ai_edge_litert.interpreter.Interpreter(model_path='model.tflite')"
                                         ".get_signature_runner()"}
    return description


def _model_io(model, preprocessing: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """What the `.keras` model (and the SavedModel's ``serve``) takes: input specs, and in words."""
    structure = model.input
    if isinstance(structure, dict):
        model_inputs = {name: _spec(t.shape, str(t.dtype)) for name, t in structure.items()}
    else:
        model_inputs = {structure.name: _spec(structure.shape, str(structure.dtype))}
    if preprocessing.get("type") == "image":
        height, width = preprocessing["image_size"]
        model_takes = (f"float32 RGB pixels in [0, 255], already resized to {height}x{width} "
                       "with Pillow's BILINEAR resize, as autotl reads images; normalisation is inside the model")
    else:
        model_takes = (f"the {preprocessing.get('tokenizer', 'plugin')} tokenizer's outputs for texts padded or "
                       f"truncated to {preprocessing.get('sequence_length')} tokens (`preprocessing`; its "
                       f"assets are in {PREPROCESSOR_DIR}/)")
    return model_inputs, model_takes


def _raw_signatures(model_signature: dict[str, Any], portable_inputs: dict[str, Any], portable_takes: str,
                    probabilities: dict[str, Any], pixels: bool, raw_text: bool) -> dict[str, Any]:
    """The SavedModel's signatures besides ``serve``: raw inputs, and pixels for images."""
    if pixels:
        return {
            RAW_SIGNATURE: {
                "inputs": {IMAGES_INPUT: _spec((None,), "string")},
                "takes": "encoded image files (PNG, JPEG, GIF: first frame, BMP), one string each, any size: "
                         "decoded, transparency composited onto white, resized and normalised inside (no EXIF "
                         "rotation)",
                "outputs": probabilities},
            PIXELS_SIGNATURE: {"inputs": portable_inputs, "takes": portable_takes, "outputs": probabilities},
        }
    if raw_text:
        return {RAW_SIGNATURE: {
            "inputs": {TEXTS_INPUT: _spec((None,), "string")},
            "takes": "UTF-8 strings, tokenized inside (tensorflow-text ops: `import tensorflow_text` before "
                     "loading)",
            "outputs": probabilities}}
    return {RAW_SIGNATURE: {**model_signature, "same_as": MODEL_SIGNATURE}}


def _spec(shape, dtype: str) -> dict[str, Any]:
    return {"shape": [None if d is None else int(d) for d in shape], "dtype": dtype}


def file_checksums(root: Path) -> dict[str, str]:
    """The SHA-256 of every file under `root`, by its relative POSIX path, in sorted order."""
    from autotl.backbones.weights import file_sha256  # not at import: the CLI reads the format lists from here

    return {p.relative_to(root).as_posix(): file_sha256(p) for p in _all_files(root)}


def tree_checksum(name: str, checksums: dict[str, str]) -> str:
    """A file's checksum, or a folder's: over its files' relative paths and checksums, in order."""
    if name in checksums:
        return checksums[name]
    digest = hashlib.sha256()
    for relative, checksum in sorted(checksums.items()):
        if relative.startswith(f"{name}/"):
            digest.update(relative[len(name) + 1:].encode())
            digest.update(checksum.encode())
    return digest.hexdigest()


def tree_size(path: Path) -> int:
    """A file's size in bytes, or the total of a folder's files."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in _all_files(path))


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in _VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    import keras

    versions["keras_backend"] = keras.backend.backend()
    return versions
