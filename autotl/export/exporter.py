"""Exporting the best model of a search.

An export folder holds, for the formats asked for::

    model.keras          the best trial's model at its best epoch (or its refit on all the
                         labelled examples, when the search made one), loadable by plain Keras
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
`autotl.export.tf_formats`), so they run where autotl is not installed. The manifest is
`autotl.export.manifest`; loading an export to predict is `autotl.runtime.loaded`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from autotl.errors import AutotlError, UsageError
from autotl.backbones.registry import Registry
from autotl.store import Store
from autotl.store.queries import depth_of
from autotl.export.manifest import (DEFAULT_FORMATS, FORMAT_PATHS, FORMATS, KERAS_FILE, MANIFEST, build_manifest,
                                    describe_inputs, file_checksums, graph_tokenizer, tree_checksum, tree_size)
from autotl.export.quantization import DEFAULT_MAX_ACCURACY_DROP
from autotl.export.tf_formats import PREPROCESSOR_DIR, FormatFailed, export_formats
from autotl.search.ensemble import used_ensemble
from autotl.search.refit import RESULT_KEY, refit_model

# What each format needs at export time (module -> pip package), checked before any work.
_EXPORT_NEEDS = {"onnx": {"tf2onnx": "tf2onnx", "onnx": "onnx"}}


@dataclass
class Export:
    directory: Path
    manifest: dict[str, Any]


def export(store: Store, search_ref: str, out_dir: str | Path, formats: Sequence[str] = DEFAULT_FORMATS,
           registry: Registry | None = None, plugin_files: Sequence[str] | None = None, refit: bool = True,
           ensemble: bool = True, quantize: str | None = None,
           max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP) -> Export:
    """Write the best model of `search_ref` to `out_dir` in each of `formats`: the search's ensemble when it
    chose one (`autotl.search.ensemble`) and `ensemble`; else the best trial's refit on all labelled examples
    when the search made one (`autotl.search.refit`) and `refit`; else the best trial's own model.

    `quantize` (``float16``, ``int8``) quantizes the TFLite and ONNX models and measures every format on the
    validation split (`autotl.export.quantization`); an int8 model losing more than `max_accuracy_drop` of
    validation accuracy is refused, and nothing is written."""
    out = Path(out_dir).expanduser()
    search, best, checkpoint = check_exportable(store, search_ref, formats, out)
    import keras

    from autotl.backbones.registry import load_registry
    from autotl.export.keras_model import float32_model

    chosen = used_ensemble(search) if ensemble else None
    refit_path = refit_model(store, search, best) if refit and chosen is None else None
    checkpoint = refit_path or checkpoint
    plugin_files = list(plugin_files or search.config.get("plugin_files", []))
    registry = registry or load_registry(plugin_files)
    backbone = registry.get(search.backbone)

    val = _validation_split(search, backbone) if quantize is not None else None
    with tempfile.TemporaryDirectory() as scratch:
        if chosen is not None:
            model = _ensemble(store, search, chosen, backbone)
            checkpoint = Path(scratch) / "ensemble.keras"  # what a TensorFlow child process loads on other backends
            model.save(checkpoint)
        else:
            model = float32_model(keras.saving.load_model(checkpoint, compile=False))  # a mixed-precision search's too
        _replace_out_dir(out)
        preprocessor = backbone.preprocessor(search.weights, _preprocessor_options(search.config["preprocessing"]))
        (out / PREPROCESSOR_DIR).mkdir()
        preprocessor.save(out / PREPROCESSOR_DIR)
        preprocessing = preprocessor.config()
        _write_models(model, checkpoint, out, formats, preprocessing, preprocessor, search.backbone, plugin_files,
                      quantize)

    checksums = file_checksums(out)
    inputs = describe_inputs(model, formats, preprocessing, len(search.labels), raw_text=graph_tokenizer(preprocessor))
    manifest = build_manifest(store, search, best, preprocessing, inputs, checksums,
                              refit=search.config.get(RESULT_KEY) if refit_path else None, ensemble=chosen)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if quantize is not None:
        manifest["quantization"] = _measured(out, formats, val, registry, quantize, max_accuracy_drop, model)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    for fmt, name in FORMAT_PATHS.items():
        path = out / name
        if path.exists():
            store.add_artifact(search_id=search.id, trial_id=best.id, kind="export", format=fmt,
                               path=str(path.resolve()), sha256=tree_checksum(name, checksums),
                               size_bytes=tree_size(path))
    return Export(out, manifest)


def _validation_split(search, backbone):
    """The search's validation data, as it read them: the yardstick of a quantized export."""
    from autotl.config import config_from_record, load_split

    preprocessor = backbone.preprocessor(search.weights, _preprocessor_options(search.config["preprocessing"]))
    try:
        return load_split(config_from_record(search), search.modality, preprocessor)[1]
    except AutotlError as exc:
        raise AutotlError(f"--quantize measures the export on the search's validation data, which cannot be read: "
                          f"{exc}") from None


def _measured(out: Path, formats: Sequence[str], val, registry, quantize: str, max_drop: float,
              model) -> dict[str, Any]:
    """Each format's size, latency and validation accuracy; an int8 export that loses too much is removed.
    Without a float32 format among `formats`, `model` is saved beside them for the measurement alone."""
    import numpy as np

    from autotl.export.quantization import REFERENCE_FORMATS, assess, check_drop

    files = {fmt: out / FORMAT_PATHS[fmt] for fmt in FORMATS if fmt in formats}
    reference = None if any(fmt in files for fmt in REFERENCE_FORMATS) else out / FORMAT_PATHS["keras"]
    try:
        if reference is not None:
            model.save(reference)
        assessed = assess(out, files, list(val.examples), np.asarray(val.labels), registry, quantize)
        check_drop(quantize, assessed, max_drop)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if reference is not None and reference.exists():
            reference.unlink()
    return {"mode": quantize, "max_accuracy_drop": max_drop, **assessed}


def _ensemble(store: Store, search, chosen: dict[str, Any], backbone):
    """The stored ensemble's members loaded from their checkpoints, as one model (`autotl.export.ensemble_model`)."""
    import keras

    from autotl.export.ensemble_model import ensemble_model
    from autotl.export.keras_model import float32_model

    trials = {trial.number: trial for trial in store.list_trials(search.id)}
    members, weights, depths = [], [], []
    for member in chosen["members"]:
        trial = trials[member["trial"]]
        checkpoints = store.artifacts(search.id, kind="checkpoint", trial_id=trial.id)
        if not checkpoints or not Path(checkpoints[-1].path).is_file():
            raise AutotlError(f"the checkpoint of trial {trial.number}, a member of the ensemble of {search.name!r}, "
                              "is missing; export the best trial alone with --no-ensemble")
        members.append(float32_model(keras.saving.load_model(checkpoints[-1].path, compile=False)))
        weights.append(float(member["weight"]))
        depths.append(depth_of(trial))
    return ensemble_model(members, weights, depths, backbone)


def check_exportable(store: Store, search_ref: str, formats: Sequence[str], out: Path):
    """The search, its best trial and that trial's checkpoint, once the formats, the search and the output
    folder are known to be fine: the refusals that need no Keras, before its seconds-long import."""
    _check_formats(formats)
    search = store.get_search(search_ref)
    best, checkpoint = _best_checkpoint(store, search)
    _check_out_dir(out)
    return search, best, checkpoint


def _check_formats(formats: Sequence[str]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"unknown export format {unknown or formats} (use {', '.join(FORMATS)})")
    for fmt in formats:
        missing = [package for module, package in _EXPORT_NEEDS.get(fmt, {}).items() if not _installed(module)]
        if missing:
            raise AutotlError(f"the {fmt} export needs {' and '.join(missing)}: pip install {' '.join(missing)} "
                              "(or pip install 'autotl[export]')")


def _best_checkpoint(store: Store, search):
    """The search's best trial and its checkpoint file."""
    best = store.best_trial(search)
    if best is None:
        raise AutotlError(f"search {search.name!r} has no completed trial to export "
                          f"({_trial_summary(store, search)}; see `autotl trials {search.name}`)")
    checkpoints = store.artifacts(search.id, kind="checkpoint", trial_id=best.id)
    checkpoint = Path(checkpoints[-1].path) if checkpoints else None
    if checkpoint is None or not checkpoint.is_file():
        raise AutotlError(f"the checkpoint of trial {best.number} of {search.name!r} is missing "
                          f"({checkpoint or 'never written'}); was the work folder moved?")
    return best, checkpoint


def _write_models(model, checkpoint: Path, out: Path, formats: Sequence[str], preprocessing: dict[str, Any],
                  preprocessor, backbone_name: str, plugin_files: list[str], quantize: str | None = None) -> None:
    """Write the model in each of `formats`; on any failure remove `out`, so no half export is left behind
    (a manifest that lists formats the folder lacks, or a folder without one that blocks the next export),
    and say so: the message names the format that failed, and the export of the others is one command."""
    from autotl.export.keras_model import plain_keras_model
    from autotl.insight.bar import ProgressLine

    try:
        if "keras" in formats:
            with ProgressLine("exporting keras"):
                plain_keras_model(model).save(out / KERAS_FILE)
        export_formats(checkpoint, out, formats, preprocessing, preprocessor, backbone_name, plugin_files,
                       model=model, quantize=quantize)
    except AutotlError as exc:
        shutil.rmtree(out, ignore_errors=True)
        others = [f for f in formats if f != getattr(exc, "format", None)]
        instead = f"; the others export without it: {' '.join(f'--format {f}' for f in others)}" \
            if isinstance(exc, FormatFailed) and others else ""
        raise AutotlError(f"{exc}; nothing was written to {out}{instead}") from exc
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


def _trial_summary(store: Store, search) -> str:
    """How the search's trials ended, e.g. "its trials: 2 failed, 1 running"."""
    statuses: dict[str, int] = {}
    for trial in store.list_trials(search.id):
        statuses[trial.status] = statuses.get(trial.status, 0) + 1
    if not statuses:
        return "it has no trials"
    return "its trials: " + ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))


def _check_out_dir(out: Path) -> None:
    """Refuse an `out` that is a file, or a folder with files that are not an earlier autotl export."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {out} is a file; choose another --out")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UsageError(f"output folder {out} is not empty and holds no autotl export; choose another --out")
    blocking = next((parent for parent in out.parents if parent.is_file()), None)
    if blocking is not None:
        raise UsageError(f"cannot create output folder {out}: {blocking} is a file; choose another --out")


def _replace_out_dir(out: Path) -> None:
    """Make `out` an empty folder: new, empty, or an earlier autotl export (removed); nothing else is replaced."""
    _check_out_dir(out)
    if out.exists() and any(out.iterdir()):
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


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
