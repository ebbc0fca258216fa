"""Scoring an exported model on labelled data (`autotl evaluate`): the data in the formats a search
reads (an image folder of class folders, a CSV or JSONL of texts and labels), the metrics a user
compares models by, computed here from the model's probabilities.

Metrics follow scikit-learn's definitions (the tests check them against it): precision, recall and
F1 per class, their macro average over the classes in the data or the predictions, balanced accuracy
(the mean recall over the classes in the data), the log-loss of the probabilities, and the expected
calibration error over 15 equal-width bins of the top probability (Guo et al., 2017).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotl.errors import AutotlError

CALIBRATION_BINS = 15
_EPSILON = 1e-15  # probabilities are clipped to [eps, 1] before the log of the log-loss


@dataclass
class Evaluation:
    model_dir: str
    model_format: str
    data: str
    examples: int
    skipped: int
    labels: list[str]  # the model's classes, the confusion matrix's order
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    log_loss: float
    expected_calibration_error: float
    per_class: dict[str, dict[str, float]]  # class -> precision, recall, f1, support (classes in data or predictions)
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted, in `labels` order
    scored: "Scored | None" = field(default=None, repr=False, compare=False)  # each example's, for `write_outputs`

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "scored"}


@dataclass
class Scored:
    """Each example's source, true class index and the model's probabilities, in the data's order."""

    sources: list[str]
    truth: np.ndarray
    probabilities: np.ndarray


def evaluate(model, model_dir: str, model_format: str, data: str, *, text_col: str = "text",
             label_col: str = "label", strict: bool = False) -> Evaluation:
    """Score `model` (an `autotl.runtime.loaded.LoadedModel`) on the labelled examples of `data`."""
    dataset = load_labelled(model, data, text_col=text_col, label_col=label_col, strict=strict)
    truth = true_indices(dataset.class_names, model.labels, data)[dataset.labels]
    probabilities = model.predict_proba(list(dataset.examples))
    return Evaluation(model_dir=str(model_dir), model_format=model_format, data=str(data),
                      examples=len(truth), skipped=len(dataset.skipped), labels=list(model.labels),
                      **metrics(truth, probabilities, list(model.labels)),
                      scored=Scored(list(dataset.sources), truth, probabilities))


PREDICTIONS_FILE, CONFUSION_FILE = "predictions.csv", "confusion_matrix.png"


def write_outputs(result: Evaluation, out: Path) -> list[Path]:
    """`evaluate --out`: each example's prediction (``predictions.csv``: source, true and predicted class, whether
    right, the probability of each) and the confusion matrix as a picture (``confusion_matrix.png``)."""
    from autotl.insight.plots import confusion_figure, save_figure

    out.mkdir(parents=True, exist_ok=True)
    scored, labels = result.scored, result.labels
    predicted = scored.probabilities.argmax(axis=1)
    with open(out / PREDICTIONS_FILE, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "true", "predicted", "correct", "p_true", "p_predicted"])
        for source, truth, guess, row in zip(scored.sources, scored.truth, predicted, scored.probabilities):
            writer.writerow([source, labels[truth], labels[guess], int(truth == guess), f"{row[truth]:.6f}",
                             f"{row[guess]:.6f}"])
    figure = confusion_figure(labels, np.asarray(result.confusion_matrix), f"{Path(result.data).name}")
    return [out / PREDICTIONS_FILE, save_figure(figure, out / CONFUSION_FILE)]


def load_labelled(model, data: str, *, text_col: str, label_col: str, strict: bool):
    """`data` as the model takes it: images at the export's size (as `autotl predict` reads them), or texts."""
    from autotl.data import load_dataset

    modality = model.manifest["modality"]
    if modality == "image":
        if not Path(data).is_dir():
            raise AutotlError(f"the model in {model.directory} takes images: give a folder of class folders, "
                              f"not {data}")
        size = tuple(model.manifest["preprocessing"]["image_size"])
        return load_dataset(data, modality, image_size=size, strict=strict)
    return load_dataset(data, modality, text_col=text_col, label_col=label_col, strict=strict)


def true_indices(data_classes: list[str], model_labels: list[str], data: str) -> np.ndarray:
    """The model's index of each class of the data; a class the model does not know is an error."""
    unknown = [name for name in data_classes if name not in model_labels]
    if unknown:
        raise AutotlError(f"{data} has classes the model does not know: {', '.join(map(repr, unknown[:5]))} "
                          f"(the model's: {', '.join(map(repr, model_labels[:10]))})")
    return np.array([model_labels.index(name) for name in data_classes], dtype=np.int64)


def metrics(truth: np.ndarray, probabilities: np.ndarray, labels: list[str]) -> dict[str, Any]:
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(truth, predicted, len(labels))
    seen = sorted(set(truth.tolist()) | set(predicted.tolist()))  # scikit-learn's labels for macro averages
    per_class = {labels[c]: _class_scores(matrix, c) for c in seen}
    in_data = sorted(set(truth.tolist()))
    picked = probabilities[np.arange(len(truth)), truth]
    return {
        "accuracy": float(np.mean(predicted == truth)),
        "balanced_accuracy": float(np.mean([per_class[labels[c]]["recall"] for c in in_data])),
        "macro_f1": float(np.mean([scores["f1"] for scores in per_class.values()])),
        "log_loss": float(-np.mean(np.log(np.clip(picked, _EPSILON, 1.0)))),
        "expected_calibration_error": calibration_error(probabilities, truth),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Counts of (true class, predicted class), rows true."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    return matrix


def _class_scores(matrix: np.ndarray, c: int) -> dict[str, float]:
    """Precision, recall and F1 of class `c` (0 where undefined, as scikit-learn's zero_division), its support."""
    right, predicted, actual = matrix[c, c], matrix[:, c].sum(), matrix[c, :].sum()
    precision = right / predicted if predicted else 0.0
    recall = right / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(actual)}


def calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """The expected calibration error: over equal-width bins of the top probability, the gap between its mean
    and the accuracy of the bin's examples, weighted by the share of examples in the bin."""
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(right[inside].mean() - confidence[inside].mean())
    return float(error)


def recording_store(manifest: dict[str, Any], given: str | None) -> str | None:
    """The store an evaluation goes to: `given`, else the search's own (the manifest names it) when it is a
    SQLite file still there; None when there is none to write to."""
    if given:
        return given
    url = str((manifest.get("search") or {}).get("store") or "")
    if url.startswith("sqlite:///") and Path(url[len("sqlite:///"):]).is_file():
        return url
    return None


def record(store, manifest: dict[str, Any], result: Evaluation) -> tuple[Any | None, str]:
    """Add `result` to `store` as an evaluation of the manifest's search, or say why not: the store must hold
    that search, with the data the export was trained on (a search of the same name elsewhere is another)."""
    from autotl.export.manifest import FORMAT_PATHS, tree_checksum
    from autotl.insight.summary import exported_what

    origin = manifest.get("search") or {}
    try:
        search = store.get_search(str(origin.get("name")))
    except AutotlError:
        search = None
    if search is None or search.dataset_fingerprint != origin.get("dataset_fingerprint"):
        return None, f"{store.display_url} holds no search {origin.get('name')!r} trained on this export's data"
    files = manifest.get("files") or {}
    figures = {key: value for key, value in result.as_dict().items()
               if key not in ("model_dir", "model_format", "data", "examples", "skipped")}
    row = store.add_evaluation(
        search_id=search.id, trial_number=None if manifest.get("ensemble") else origin.get("trial"),
        exported=exported_what(manifest), export_sha256=tree_checksum(FORMAT_PATHS[result.model_format], files)
        if files else None, model_dir=str(Path(result.model_dir).resolve()), model_format=result.model_format,
        data=str(Path(result.data).resolve()), examples=result.examples, skipped=result.skipped,
        accuracy=result.accuracy, metrics={**figures, "validation_accuracy": validation_accuracy(manifest)})
    return row, ""


def validation_accuracy(manifest: dict[str, Any]) -> float | None:
    """The validation accuracy the search measured for what the export holds (the ensemble's, when it is one;
    a refit's is its trial's), or None when the search's objective was not accuracy."""
    objective = manifest.get("objective") or {}
    if objective.get("name") != "val_accuracy":
        return None
    ensemble = manifest.get("ensemble")
    value = ensemble.get("value") if ensemble else objective.get("value")
    return float(value) if value is not None else None
