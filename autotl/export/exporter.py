"""Exporting the best model of a search, and loading an export to predict.

An export folder holds, for the formats asked for::

    model.keras          the best trial's model at its best epoch, loadable by plain Keras
                         (`autotl.export.keras_model`); takes what the search fed it
    saved_model/         TensorFlow SavedModel: ``serving_default`` takes image files or
                         strings, ``pixels`` uint8 images of any size, ``serve`` what
                         model.keras takes
    model.onnx           ONNX: uint8 images of any size (or the tokenizer's outputs)
    model.tflite         TFLite / LiteRT: the same inputs as ONNX
    preprocessor/        assets the preprocessor needs (a vocabulary, ...)
    autotl.json          the manifest: backbone, weights, labels in order,
                         preprocessing, what each format takes and returns,
                         hyperparameters, metrics, store and search, files with
                         checksums, package versions

The SavedModel, ONNX and TFLite files resize and normalise images themselves (see
`autotl.export.tf_formats`), so they run where autotl is not installed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autotl.errors import AutotlError, UsageError
from autotl.backbones.registry import Registry
from autotl.store.store import Store
from autotl.export.tf_formats import (IMAGES_INPUT, MODEL_SIGNATURE, ONNX_FILE, OUTPUT, PIXELS_INPUT, PIXELS_SIGNATURE,
                        PREPROCESSOR_DIR, RAW_SIGNATURE, SAVED_MODEL_DIR, TEXTS_INPUT, TFLITE_FILE, export_formats,
                        takes_pixels)

MANIFEST = "autotl.json"
MANIFEST_VERSION = 2  # 2: `inputs` per format; SavedModel, ONNX and TFLite take raw inputs
KERAS_FILE = "model.keras"
FORMATS = ("keras", "savedmodel", "onnx", "tflite")
DEFAULT_FORMATS = ("keras", "savedmodel")
FORMAT_PATHS = {"keras": KERAS_FILE, "savedmodel": SAVED_MODEL_DIR, "onnx": ONNX_FILE, "tflite": TFLITE_FILE}
# What each format needs at export time (module -> pip package), checked before any work.
_EXPORT_NEEDS = {"onnx": {"tf2onnx": "tf2onnx", "onnx": "onnx"}}
_VERSIONED_PACKAGES = ("autotl", "keras", "keras-tuner", "keras-hub", "tensorflow", "numpy", "sqlalchemy",
                       "pillow", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")


@dataclass
class Export:
    directory: Path
    manifest: dict[str, Any]


def export(store: Store, search_ref: str, out_dir: str | Path, formats: Sequence[str] = DEFAULT_FORMATS,
           registry: Registry | None = None, plugin_files: Sequence[str] | None = None) -> Export:
    """Write the best trial's model of `search_ref` to `out_dir` in each of `formats`."""
    import keras

    from autotl.export.keras_model import plain_keras_model
    from autotl.backbones.registry import load_registry

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"unknown export format {unknown or formats} (use {', '.join(FORMATS)})")
    _check_export_needs(formats)
    search = store.get_search(search_ref)
    best = store.best_trial(search)
    if best is None:
        raise AutotlError(f"search {search.name!r} has no completed trial to export "
                          f"({_trial_summary(store, search)}; see `autotl trials {search.name}`)")
    checkpoints = store.artifacts(search.id, kind="checkpoint", trial_id=best.id)
    checkpoint = Path(checkpoints[-1].path) if checkpoints else None
    if checkpoint is None or not checkpoint.is_file():
        raise AutotlError(f"the checkpoint of trial {best.number} of {search.name!r} is missing "
                          f"({checkpoint or 'never written'}); was the work folder moved?")
    plugin_files = list(plugin_files or search.config.get("plugin_files", []))
    registry = registry or load_registry(plugin_files)
    backbone = registry.get(search.backbone)

    out = Path(out_dir).expanduser()
    _prepare_out_dir(out)
    model = keras.saving.load_model(checkpoint, compile=False)
    preprocessor = backbone.preprocessor(search.weights, _preprocessor_options(search.config["preprocessing"]))
    (out / PREPROCESSOR_DIR).mkdir()
    preprocessor.save(out / PREPROCESSOR_DIR)
    preprocessing = preprocessor.config()
    try:
        if "keras" in formats:
            plain_keras_model(model).save(out / KERAS_FILE)
        export_formats(checkpoint, out, formats, preprocessing, preprocessor, search.backbone, plugin_files,
                       model=model)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half export left behind (it would block the next one)
        raise

    checksums = {p.relative_to(out).as_posix(): _checksum(p) for p in _all_files(out)}
    manifest = {
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
        "search": {"name": search.name, "id": search.id, "trial": best.number, "store": store.display_url,
                   "dataset": search.dataset_path, "dataset_fingerprint": search.dataset_fingerprint},
        "inputs": _input_description(model, formats, preprocessing, len(search.labels),
                                     raw_text=_graph_tokenizer(preprocessor)),
        "files": checksums,
        "versions": _versions(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for fmt, name in FORMAT_PATHS.items():
        path = out / name
        if path.exists():
            store.add_artifact(search_id=search.id, trial_id=best.id, kind="export", format=fmt,
                               path=str(path.resolve()), sha256=_tree_checksum(name, checksums),
                               size_bytes=_size(path))
    return Export(out, manifest)


@dataclass
class Prediction:
    source: str
    label: str
    probabilities: dict[str, float]


def predict(model_dir: str | Path, inputs: Sequence[Any], model_format: str = "keras",
            registry: Registry | None = None, batch_size: int = 32) -> list[Prediction]:
    """Predict `inputs` (image paths or arrays; strings for text) with an exported model."""
    loaded = LoadedModel(model_dir, model_format, registry)
    return loaded.predict(inputs, batch_size=batch_size)


class LoadedModel:
    """An exported model with its preprocessor, ready to predict raw inputs."""

    def __init__(self, model_dir: str | Path, model_format: str = "keras", registry: Registry | None = None):
        from autotl.backbones.registry import load_registry

        self.directory = Path(model_dir).expanduser()
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise AutotlError(f"{self.directory} is not an autotl export (no {MANIFEST})")
        self.manifest = json.loads(manifest_path.read_text())
        self.labels = self.manifest["labels"]
        registry = registry or load_registry()
        self.backbone = registry.get(self.manifest["backbone"])
        self.preprocessor = self.backbone.load_preprocessor(self.directory / PREPROCESSOR_DIR,
                                                            self.manifest["preprocessing"])
        self.format = model_format
        self._forward = self._load_forward(model_format)

    def _load_forward(self, model_format: str):
        """A function from a batch to probabilities; sets `_takes`: "model" (what model.keras takes),
        "pixels" (uint8 images of any size, resized inside) or "texts" (strings, tokenized inside)."""
        self._takes = "model"
        if model_format not in FORMATS:
            raise UsageError(f"unknown model format {model_format!r} (use {', '.join(FORMATS)})")
        path = self.directory / FORMAT_PATHS[model_format]
        if not path.exists():
            raise AutotlError(f"{self.directory} holds no {FORMAT_PATHS[model_format]}"
                              f"{'/' if model_format == 'savedmodel' else ''}; export with --format {model_format}")
        image = self.manifest["modality"] == "image"
        if model_format == "keras":
            import keras

            try:
                model = keras.saving.load_model(path, compile=False, safe_mode=True)  # no code from the file
            except ValueError as exc:
                if "safe_mode" in str(exc):
                    raise AutotlError(f"refusing to load {self.directory}: its model holds Python code (e.g. a "
                                      "Lambda layer), which Keras safe mode does not run") from None
                raise
            return lambda x: np.asarray(model.predict_on_batch(x))
        if model_format == "savedmodel":
            return self._load_saved_model(path, image)
        if model_format == "onnx":
            return self._load_onnx(path, image)
        return self._load_tflite(path, image)

    def _load_saved_model(self, path: Path, image: bool):
        import tensorflow as tf

        try:
            import tensorflow_text  # noqa: F401 - registers the tokenizer ops a text SavedModel may hold
        except ImportError:
            pass
        self._saved_model = tf.saved_model.load(str(path))  # keep it alive: its variables die with it
        signatures = self._saved_model.signatures
        if image and PIXELS_SIGNATURE in signatures:
            self._takes = "pixels"
            function = signatures[PIXELS_SIGNATURE]
            return lambda x: function(**{PIXELS_INPUT: tf.constant(x, tf.uint8)})[OUTPUT].numpy()
        raw = signatures.get(RAW_SIGNATURE)
        if not image and raw is not None and TEXTS_INPUT in raw.structured_input_signature[1]:
            self._takes = "texts"
            return lambda x: raw(**{TEXTS_INPUT: tf.constant(x, tf.string)})[OUTPUT].numpy()
        return lambda x: np.asarray(getattr(self._saved_model, MODEL_SIGNATURE)(x))  # a version-1 export: `serve` only

    def _load_onnx(self, path: Path, image: bool):
        try:
            import onnxruntime
        except ImportError:
            raise AutotlError("running the ONNX model needs onnxruntime: pip install onnxruntime") from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs = {i.name: _ONNX_TYPES.get(i.type, "float32") for i in session.get_inputs()}
        if image and list(inputs) == [PIXELS_INPUT]:
            self._takes = "pixels"
        return lambda x: session.run([OUTPUT], _feed(x, inputs))[0]

    def _load_tflite(self, path: Path, image: bool):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # TensorFlow's own copy of the interpreter
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
        interpreter = Interpreter(model_path=str(path))
        runner = interpreter.get_signature_runner(RAW_SIGNATURE)
        details = runner.get_input_details()
        inputs = {name: np.dtype(d["dtype"]).name for name, d in details.items()}
        if image and list(inputs) == [PIXELS_INPUT]:
            self._takes = "pixels"
        self._interpreter = interpreter
        return lambda x: runner(**_feed(x, inputs))[OUTPUT]

    def predict(self, inputs: Sequence[Any], batch_size: int = 32) -> list[Prediction]:
        probabilities = self.predict_proba(inputs, batch_size)
        sources = [str(x) if isinstance(x, (str, Path)) else f"input {i}" for i, x in enumerate(inputs)]
        return [
            Prediction(source, self.labels[int(np.argmax(row))],
                       {label: float(p) for label, p in zip(self.labels, row)})
            for source, row in zip(sources, probabilities)
        ]

    def predict_proba(self, inputs: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        from autotl import data as data_module

        if not len(inputs):
            raise UsageError("nothing to predict: give at least one input")
        if self.manifest["modality"] == "image":
            if self._takes == "pixels":  # decoded at their own size: the model resizes them
                return self._by_size([data_module.decode_image(x) for x in inputs], batch_size)
            size = tuple(self.manifest["preprocessing"]["image_size"])
            examples = [data_module.read_image(x, size) for x in inputs]
        else:
            examples = [str(x) for x in inputs]
        outputs = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            if self._takes == "texts":
                outputs.append(self._forward(np.array(chunk, dtype=object)))
            else:
                outputs.append(self._forward(_as_tensors(self.preprocessor(chunk))))
        return np.concatenate(outputs)

    def _by_size(self, images: list[np.ndarray], batch_size: int) -> np.ndarray:
        """Run images of one size together (a batch is one array), in their order."""
        out = np.zeros((len(images), len(self.labels)), dtype=np.float32)
        groups: dict[tuple, list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape, []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                out[chunk] = self._forward(np.stack([images[i] for i in chunk]))
        return out


_ONNX_TYPES = {"tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64",
               "tensor(float)": "float32", "tensor(string)": "object"}


def _feed(batch, inputs: dict[str, str]) -> dict[str, np.ndarray]:
    """A batch (an array, or a dict of arrays by input name) as the named, typed inputs of a runtime."""
    if isinstance(batch, dict):
        return {name: np.asarray(batch[name], dtype=dtype) for name, dtype in inputs.items()}
    (name, dtype), = inputs.items()
    return {name: np.asarray(batch, dtype=dtype)}


def _as_tensors(batch):
    if isinstance(batch, dict):
        return {k: np.asarray(v) for k, v in batch.items()}
    return np.asarray(batch, dtype="float32")


def _trial_summary(store: Store, search) -> str:
    """How the search's trials ended, e.g. "its trials: 2 failed, 1 running"."""
    statuses: dict[str, int] = {}
    for trial in store.list_trials(search.id):
        statuses[trial.status] = statuses.get(trial.status, 0) + 1
    if not statuses:
        return "it has no trials"
    return "its trials: " + ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))


def _prepare_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise AutotlError(f"output folder {out} is a file; choose another --out")
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise AutotlError(f"output folder {out} is not empty and holds no autotl export; choose another --out")
        shutil.rmtree(out)  # replacing an earlier autotl export of the same folder
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocking = next((parent for parent in out.parents if parent.is_file()), None)
        why = f"{blocking} is a file" if blocking is not None else exc.strerror
        raise AutotlError(f"cannot create output folder {out}: {why}; choose another --out") from None


def _preprocessor_options(config: dict[str, Any]) -> dict[str, Any]:
    options = {}
    if "image_size" in config:
        options["image_size"] = tuple(config["image_size"])
    if "sequence_length" in config:
        options["sequence_length"] = config["sequence_length"]
    return options


def _check_export_needs(formats: Sequence[str]) -> None:
    for fmt in formats:
        missing = [package for module, package in _EXPORT_NEEDS.get(fmt, {}).items() if not _installed(module)]
        if missing:
            raise AutotlError(f"the {fmt} export needs {' and '.join(missing)}: pip install {' '.join(missing)} "
                              "(or pip install 'autotl[export]')")


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _graph_tokenizer(preprocessor) -> bool:
    """Whether the SavedModel tokenizes texts itself (the preprocessor has TensorFlow graph code)."""
    return preprocessor.config().get("type") != "image" and preprocessor.graph_function() is not None


def _spec(shape, dtype: str) -> dict[str, Any]:
    return {"shape": [None if d is None else int(d) for d in shape], "dtype": dtype}


def _input_description(model, formats: Sequence[str], preprocessing: dict[str, Any], num_labels: int,
                       raw_text: bool) -> dict[str, Any]:
    """What each exported format takes and returns (the manifest's ``inputs``)."""
    structure = model.input
    if isinstance(structure, dict):
        model_inputs = {name: _spec(t.shape, str(t.dtype)) for name, t in structure.items()}
    else:
        model_inputs = {structure.name: _spec(structure.shape, str(structure.dtype))}
    probabilities = {OUTPUT: {**_spec((None, num_labels), "float32"),
                              "meaning": "class probabilities, in the order of `labels`"}}
    if preprocessing.get("type") == "image":
        height, width = preprocessing["image_size"]
        model_takes = (f"float32 RGB pixels in [0, 255], already resized to {height}x{width} "
                       "with Pillow's BILINEAR resize, as autotl reads images; normalisation is inside the model")
    else:
        model_takes = (f"the {preprocessing.get('tokenizer', 'plugin')} tokenizer's outputs for texts padded or "
                       f"truncated to {preprocessing.get('sequence_length')} tokens (`preprocessing`; its "
                       f"assets are in {PREPROCESSOR_DIR}/)")
    pixels = takes_pixels(preprocessing)
    if pixels:
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
        if pixels:
            signatures[RAW_SIGNATURE] = {
                "inputs": {IMAGES_INPUT: _spec((None,), "string")},
                "takes": "encoded image files (PNG, JPEG, GIF: first frame, BMP), one string each, any size: "
                         "decoded, transparency composited onto white, resized and normalised inside (no EXIF "
                         "rotation)",
                "outputs": probabilities}
            signatures[PIXELS_SIGNATURE] = {"inputs": portable_inputs, "takes": portable_takes,
                                            "outputs": probabilities}
        elif raw_text:
            signatures[RAW_SIGNATURE] = {
                "inputs": {TEXTS_INPUT: _spec((None,), "string")},
                "takes": "UTF-8 strings, tokenized inside (tensorflow-text ops: `import tensorflow_text` before "
                         "loading)",
                "outputs": probabilities}
        else:
            signatures[RAW_SIGNATURE] = {**signatures[MODEL_SIGNATURE], "same_as": MODEL_SIGNATURE}
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


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_checksum(name: str, checksums: dict[str, str]) -> str:
    """A file's checksum, or a folder's: over its files' relative paths and checksums, in order."""
    if name in checksums:
        return checksums[name]
    digest = hashlib.sha256()
    for relative, checksum in sorted(checksums.items()):
        if relative.startswith(f"{name}/"):
            digest.update(relative[len(name) + 1:].encode())
            digest.update(checksum.encode())
    return digest.hexdigest()


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in _all_files(path))


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
