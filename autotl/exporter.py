"""Exporting the best model of a search, and loading an export to predict.

An export folder holds::

    model.keras          the best trial's checkpoint, byte for byte (its best epoch)
    saved_model/         TensorFlow SavedModel with a ``serve`` endpoint
    preprocessor/        assets the preprocessor needs (a vocabulary, ...)
    autotl.json          the manifest: backbone, weights, labels in order,
                         preprocessing, hyperparameters, metrics, store and
                         search, files with checksums, package versions
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

from .errors import AutotlError, UsageError
from .registry import Registry
from .store import Store
from .tf_export import export_saved_model

MANIFEST = "autotl.json"
MANIFEST_VERSION = 1
KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
PREPROCESSOR_DIR = "preprocessor"
FORMATS = ("keras", "savedmodel")
_VERSIONED_PACKAGES = ("autotl", "keras", "keras-tuner", "keras-hub", "tensorflow", "numpy", "sqlalchemy")


@dataclass
class Export:
    directory: Path
    manifest: dict[str, Any]


def export(store: Store, search_ref: str, out_dir: str | Path, formats: Sequence[str] = FORMATS,
           registry: Registry | None = None, plugin_files: Sequence[str] | None = None) -> Export:
    """Write the best trial's model of `search_ref` to `out_dir` in each of `formats`."""
    import keras

    from .registry import load_registry

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"unknown export format {unknown or formats} (use {', '.join(FORMATS)})")
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
    if "keras" in formats:
        shutil.copyfile(checkpoint, out / KERAS_FILE)
    if "savedmodel" in formats:
        export_saved_model(model, checkpoint, out / SAVED_MODEL_DIR, plugin_files)
    preprocessor = backbone.preprocessor(search.weights, _preprocessor_options(search.config["preprocessing"]))
    (out / PREPROCESSOR_DIR).mkdir()
    preprocessor.save(out / PREPROCESSOR_DIR)

    checksums = {p.relative_to(out).as_posix(): _checksum(p) for p in _all_files(out)}
    manifest = {
        "autotl_manifest_version": MANIFEST_VERSION,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "backbone": search.backbone,
        "modality": search.modality,
        "weights": search.weights,
        "labels": list(search.labels),
        "preprocessing": preprocessor.config(),
        "hyperparameters": best.hyperparameters,
        "objective": {"name": search.objective, "direction": search.direction, "value": best.value},
        "metrics": best.metrics,
        "best_epoch": {"phase": best.best_phase, "epoch": best.best_epoch},
        "search": {"name": search.name, "id": search.id, "trial": best.number, "store": store.display_url,
                   "dataset": search.dataset_path, "dataset_fingerprint": search.dataset_fingerprint},
        "inputs": _input_description(model),
        "files": checksums,
        "versions": _versions(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for name, fmt in ((KERAS_FILE, "keras"), (SAVED_MODEL_DIR, "savedmodel")):
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
        from .registry import load_registry

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
        if model_format == "keras":
            import keras

            path = self.directory / KERAS_FILE
            if not path.is_file():
                raise AutotlError(f"{self.directory} holds no {KERAS_FILE}; export with --format keras")
            model = keras.saving.load_model(path, compile=False)
            return lambda x: np.asarray(model.predict_on_batch(x))
        if model_format == "savedmodel":
            import tensorflow as tf

            path = self.directory / SAVED_MODEL_DIR
            if not path.is_dir():
                raise AutotlError(f"{self.directory} holds no {SAVED_MODEL_DIR}/; export with --format savedmodel")
            self._saved_model = tf.saved_model.load(str(path))  # keep it alive: its variables die with it
            return lambda x: np.asarray(self._saved_model.serve(x))
        raise UsageError(f"unknown model format {model_format!r} (use {', '.join(FORMATS)})")

    def predict(self, inputs: Sequence[Any], batch_size: int = 32) -> list[Prediction]:
        probabilities = self.predict_proba(inputs, batch_size)
        sources = [str(x) if isinstance(x, (str, Path)) else f"input {i}" for i, x in enumerate(inputs)]
        return [
            Prediction(source, self.labels[int(np.argmax(row))],
                       {label: float(p) for label, p in zip(self.labels, row)})
            for source, row in zip(sources, probabilities)
        ]

    def predict_proba(self, inputs: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        from . import data as data_module

        if not len(inputs):
            raise UsageError("nothing to predict: give at least one input")
        if self.manifest["modality"] == "image":
            size = tuple(self.manifest["preprocessing"]["image_size"])
            examples = [data_module.read_image(x, size) for x in inputs]
        else:
            examples = [str(x) for x in inputs]
        outputs = []
        for start in range(0, len(examples), batch_size):
            batch = self.preprocessor(examples[start:start + batch_size])
            outputs.append(self._forward(_as_tensors(batch)))
        return np.concatenate(outputs)


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


def _input_description(model) -> Any:
    structure = model.input
    if isinstance(structure, dict):
        return {name: {"shape": list(t.shape), "dtype": str(t.dtype)} for name, t in structure.items()}
    return {"shape": list(structure.shape), "dtype": str(structure.dtype)}


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
