"""Smaller, faster exports (`autotl export --quantize float16|int8`): what quantization does to each format, and
what it costs on the search's own validation split.

The `.keras` model and the SavedModel stay float32: they are the reference. How the TFLite and ONNX models
are quantized is `autotl.export.tf_formats` (`configure_tflite`, `quantize_onnx`, `QUANTIZED_FORMATS`): the
TFLite model with post-training quantization, float16 weights or int8 weights with activations quantized at
run time; the ONNX model with onnxruntime's dynamic int8 quantization of its weights.

After writing, `assess` measures each written format: the file size, the median latency of one example on
the CPU over `LATENCY_RUNS` runs, and the validation accuracy against the float32 reference's. An int8 model
that loses more than `--max-accuracy-drop` is refused (`check_drop`): nothing is written, and the message
gives the figures and the option that overrides it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autotl.errors import AutotlError
from autotl.export.tf_formats import QUANTIZED_FORMATS

QUANTIZATIONS = ("float16", "int8")
LATENCY_RUNS = 100
DEFAULT_MAX_ACCURACY_DROP = 0.01  # an int8 model may lose at most 1 point of validation accuracy by default
REFERENCE_FORMATS = ("keras", "savedmodel")  # float32 formats: what the quantized ones are compared with
UNWRITTEN_REFERENCE = "keras (measured, not written)"


def assess(out: Path, files: dict[str, Path], examples: Sequence[Any], labels: np.ndarray, registry,
           mode: str) -> dict:
    """Each written format's (`files`: format -> its file or folder in `out`) size, single-example latency and
    validation accuracy, whether `mode` quantized it, and its accuracy change from the float32 reference: the
    ``.keras`` model or the SavedModel when written, else the ``.keras`` model that the exporter saved in `out`
    for this measurement alone (``--format tflite --quantize int8`` still shows and guards the change)."""
    from autotl.runtime.loaded import LoadedModel

    def accuracy(model: LoadedModel) -> float:
        return round(float(np.mean(model.predict_proba(list(examples)).argmax(axis=1) == labels)), 6)

    figures = {}
    for fmt, path in files.items():
        model = LoadedModel(out, fmt, registry)
        figures[fmt] = {"quantized": fmt in QUANTIZED_FORMATS[mode], "size_bytes": _size(path),
                        "latency_ms": _latency_ms(model, examples[0]), "val_accuracy": accuracy(model)}
    written = next((fmt for fmt in REFERENCE_FORMATS if fmt in figures), None)
    if written is not None:
        name, reference_accuracy = written, figures[written]["val_accuracy"]
    else:
        name, reference_accuracy = UNWRITTEN_REFERENCE, accuracy(LoadedModel(out, "keras", registry))
    for figure in figures.values():
        figure["accuracy_change"] = round(figure["val_accuracy"] - reference_accuracy, 6)
    return {"reference": name, "reference_val_accuracy": reference_accuracy, "validation_examples": len(labels),
            "formats": figures}


def check_drop(mode: str | None, assessed: dict, max_drop: float) -> None:
    """Refuse an int8 export whose quantized formats lose more than `max_drop` of validation accuracy."""
    if mode != "int8":
        return
    for fmt in QUANTIZED_FORMATS[mode]:
        change = assessed["formats"].get(fmt, {}).get("accuracy_change")
        if change is not None and -change > max_drop:
            raise AutotlError(f"the int8 {fmt} model loses {-change:.4f} of validation accuracy "
                              f"({assessed['formats'][fmt]['val_accuracy']:.4f} against "
                              f"{assessed['reference_val_accuracy']:.4f}), more than "
                              f"--max-accuracy-drop {max_drop:g}: try --quantize float16, or allow it with a "
                              f"higher --max-accuracy-drop")


def describe(assessed: dict) -> list[str]:
    """One line per format: its size, latency and validation accuracy (and change), for `autotl export`; and
    the reference's accuracy when it is not one of the written formats."""
    lines = []
    if assessed["reference"] == UNWRITTEN_REFERENCE:
        lines.append(f"  reference, the float32 .keras model (not written): validation accuracy "
                     f"{assessed['reference_val_accuracy']:.4f}")
    for fmt, figure in assessed["formats"].items():
        change = figure.get("accuracy_change")
        versus = "" if change is None or fmt == assessed["reference"] else f" ({change:+.4f})"
        kind = "quantized" if figure["quantized"] else "float32"
        lines.append(f"  {fmt} ({kind}): {figure['size_bytes'] / 2**20:.2f} MB, {figure['latency_ms']:.2f} ms per "
                     f"example, validation accuracy {figure['val_accuracy']:.4f}{versus}")
    return lines


def _latency_ms(model, example: Any) -> float:
    """The median time of one example through `model` (`LoadedModel`), read once, over `LATENCY_RUNS` runs."""
    prepared = [model.prepare(example)]
    model.probabilities(prepared)  # warm-up
    times = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        model.probabilities(prepared)
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 3)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size
