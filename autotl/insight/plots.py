"""The report's plots, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Progress over trials and time, each hyperparameter against the metric, the best
trial's learning curves by phase, and its confusion matrix: each a PNG in the
report's `PLOTS_DIR`, described by a `Plot` (file, title, caption).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from autotl.store import COMPLETED, EpochMetric, Search, Trial

PLOTS_DIR = "plots"
# Learning-curve panels: one row per metric, the training curve and its validation twin.
CURVES = (("loss", "val_loss"), ("accuracy", "val_accuracy"))
PHASES = ("head", "finetune")
# Above this many classes the confusion matrix shows colours without the counts in each cell.
ANNOTATED_CLASSES = 25
DPI = 100


@dataclass
class Plot:
    file: str  # relative to the report folder
    title: str
    caption: str = ""


@dataclass
class _Curve:
    phase: str
    epochs: list[int]
    values: list[float | None]


def _figure(width: float, height: float):
    """A figure on matplotlib's Agg canvas, without pyplot (no display, nothing global)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, plots_dir: Path, name: str) -> str:
    save_figure(figure, plots_dir / name)
    return f"{PLOTS_DIR}/{name}"


def _completed(trials: Iterable[Trial]) -> list[Trial]:
    return [t for t in trials if t.status == COMPLETED and t.value is not None]


def _best_so_far(values: list[float], direction: str) -> list[float]:
    pick = max if direction == "max" else min
    running, out = None, []
    for value in values:
        running = value if running is None else pick(running, value)
        out.append(running)
    return out


def progress_plot(search: Search, trials: list[Trial], best: Trial, plots_dir: Path) -> Plot:
    """Best value so far, by trial number and by wall time, each completed trial's own value as a point."""
    completed = _completed(trials)
    others = [t for t in trials if t not in completed]
    start = _search_start(search, trials)
    figure = _figure(11, 3.8)
    by_number, by_time = figure.subplots(1, 2, sharey=True)
    for axes, x_of, xlabel in (
        (by_number, lambda t: t.number, "trial"),
        (by_time, lambda t: _minutes(t.finished_at, start), "minutes since the search started (trial finished)"),
    ):
        ordered = sorted(completed, key=lambda t: (x_of(t), t.number))
        xs = [x_of(t) for t in ordered]
        values = [t.value for t in ordered]
        axes.step(xs, _best_so_far(values, search.direction), where="post", color="tab:blue", lw=2,
                  label="best so far")
        axes.scatter(xs, values, color="tab:gray", s=28, zorder=3, label="trial")
        axes.scatter([x_of(best)], [best.value], marker="*", s=220, color="tab:red", zorder=4,
                     label=f"best: trial {best.number}")
        unfinished = [t for t in others if axes is by_number or t.finished_at is not None]
        if unfinished:  # failed, interrupted or running trials: a mark along the bottom edge
            axes.scatter([x_of(t) for t in unfinished], [0.02] * len(unfinished),
                         transform=axes.get_xaxis_transform(), marker="x", color="tab:orange", s=40, zorder=3,
                         label="not completed")
        axes.set_xlabel(xlabel)
        axes.grid(alpha=0.3)
    by_number.set_ylabel(search.objective)
    if len(trials) <= 30:
        by_number.set_xticks([t.number for t in trials])
    by_number.legend(loc="best", fontsize=8)
    figure.suptitle(f"{search.objective} ({'higher' if search.direction == 'max' else 'lower'} is better)")
    file = _save(figure, plots_dir, "progress.png")
    failed = len(others)
    caption = (f"{len(completed)} completed trial(s)" + (f", {failed} not completed (x: failed, interrupted or running)" if failed else "")
               + "; the line is the best value so far.")
    return Plot(file, "Best validation metric over trials and over time", caption)


def hyperparameter_names(trials: list[Trial], best: Trial) -> list[str]:
    """The hyperparameters of the trials, the best trial's first (KerasTuner's own ``tuner/`` ones left out)."""
    names = [n for n in best.hyperparameters]
    for trial in trials:
        names.extend(n for n in trial.hyperparameters if n not in names)
    return [n for n in names if not n.startswith("tuner/")]


def _fixed(spec: dict) -> bool:
    return len(spec.get("values", [None, None])) == 1 or ("min" in spec and spec["min"] == spec.get("max"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def hyperparameter_plots(search: Search, trials: list[Trial], best: Trial, plots_dir: Path) -> list[Plot]:
    """One small plot per hyperparameter: each completed trial's value against it, the best starred."""
    completed = _completed(trials)
    space = (search.config or {}).get("space") or {}
    jitter = np.random.default_rng(0)
    plots = []
    for name in hyperparameter_names(trials, best):
        spec = space.get(name) or {}
        if _fixed(spec):  # one value in every trial: nothing to compare
            continue
        points = [(t.hyperparameters[name], t.value, t is best or t.id == best.id)
                  for t in completed if name in t.hyperparameters]
        if not points:
            continue
        figure = _figure(3.6, 2.9)
        axes = figure.subplots()
        numeric = all(_is_number(x) for x, _, _ in points)
        if numeric:
            xs = np.array([float(x) for x, _, _ in points])
            log = spec.get("sampling") == "log" or (name.endswith("_lr") and bool(np.all(xs > 0)))
            discrete = "values" in spec or spec.get("type") == "int" or all(float(x).is_integer() for x in xs)
            choices = sorted({float(v) for v in spec.get("values", []) if _is_number(v)} | set(xs.tolist()))
            if discrete and not log and len(choices) > 1:  # spread points that share a value
                step = min(np.diff(choices))
                xs = xs + jitter.uniform(-0.08, 0.08, len(xs)) * step
            if log:
                _log_axis(axes)
            elif discrete:
                from matplotlib.ticker import MaxNLocator

                axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            if "values" in spec and len(choices) <= 8:
                axes.set_xticks(choices, [format_value(c) for c in choices])
        else:
            categories = [str(v) for v in spec.get("values", [])]
            categories += sorted({str(x) for x, _, _ in points} - set(categories))
            xs = np.array([categories.index(str(x)) for x, _, _ in points], dtype=float)
            xs = xs + jitter.uniform(-0.12, 0.12, len(xs))
            axes.set_xticks(range(len(categories)), categories)
            axes.set_xlim(-0.6, len(categories) - 0.4)
            log = False
        values = np.array([v for _, v, _ in points])
        is_best = np.array([b for _, _, b in points])
        axes.scatter(xs[~is_best], values[~is_best], color="tab:blue", alpha=0.75, s=30)
        axes.scatter(xs[is_best], values[is_best], color="tab:red", marker="*", s=200, zorder=3, label="best")
        axes.set_title(name + (" (log)" if log else ""), fontsize=10)
        axes.set_ylabel(search.objective, fontsize=8)
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        file = _save(figure, plots_dir, f"hp_{_safe_name(name)}.png")
        plots.append(Plot(file, name, f"best: {format_value(best.hyperparameters.get(name))}"))
    return plots


def _log_axis(axes) -> None:
    """A log x axis with a few readable ticks (1, 2, 5 per decade), none crowding the others."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0e}".replace("e-0", "e-")))
    axes.xaxis.set_minor_formatter(NullFormatter())


def epoch_curves(metrics: list[EpochMetric]) -> dict[str, dict[str, _Curve]]:
    """metric name -> phase -> the values by epoch."""
    table: dict[str, dict[str, dict[int, float | None]]] = {}
    for row in metrics:
        table.setdefault(row.name, {}).setdefault(row.phase, {})[row.epoch] = row.value
    return {name: {phase: _Curve(phase, sorted(by_epoch), [by_epoch[e] for e in sorted(by_epoch)])
                   for phase, by_epoch in phases.items()}
            for name, phases in table.items()}


def _ordered_phases(curves: dict[str, dict[str, _Curve]]) -> list[str]:
    present = {phase for phases in curves.values() for phase in phases}
    return [p for p in PHASES if p in present] + sorted(present - set(PHASES))


def learning_curves_plot(search: Search, best: Trial, curves: dict[str, dict[str, _Curve]],
                          plots_dir: Path) -> Plot:
    """Rows: loss and accuracy (training and validation); columns: the phases of the best trial."""
    phases = _ordered_phases(curves)
    rows = [pair for pair in CURVES if any(name in curves for name in pair)]
    figure = _figure(4.2 * len(phases) + 1, 2.8 * len(rows))
    grid = np.atleast_2d(figure.subplots(len(rows), len(phases), sharey="row", squeeze=False))
    for r, pair in enumerate(rows):
        for c, phase in enumerate(phases):
            axes = grid[r][c]
            for name, style in zip(pair, ("--", "-")):
                curve = curves.get(name, {}).get(phase)
                if curve is None:
                    continue
                values = [np.nan if v is None else v for v in curve.values]
                axes.plot(curve.epochs, values, style, marker="o", ms=3, label=name)
            if phase == best.best_phase and search.objective in pair:
                curve = curves.get(search.objective, {}).get(phase)
                if curve is not None and best.best_epoch in curve.epochs:
                    value = curve.values[curve.epochs.index(best.best_epoch)]
                    axes.scatter([best.best_epoch], [value], marker="*", s=200, color="tab:red", zorder=4,
                                 label=f"best epoch ({best.best_epoch})")
            if r == 0:
                axes.set_title(f"phase: {phase}", fontsize=10)
            if r == len(rows) - 1:
                axes.set_xlabel("epoch")
            if c == 0:
                axes.set_ylabel(pair[0])
            axes.grid(alpha=0.3)
            axes.legend(fontsize=7)
            epochs = sorted({e for name in pair for e in getattr(curves.get(name, {}).get(phase), "epochs", [])})
            if 0 < len(epochs) <= 20:
                axes.set_xticks(epochs)
    figure.suptitle(f"trial {best.number}: learning curves by phase")
    file = _save(figure, plots_dir, "learning_curves.png")
    caption = (f"Best epoch: {best.best_phase} epoch {best.best_epoch} "
               f"({search.objective} {format_value(best.value)}); its weights are the ones kept.")
    return Plot(file, f"Learning curves of the best trial ({best.number})", caption)


def confusion_plot(search: Search, model: str, matrix: np.ndarray, plots_dir: Path) -> Plot:
    """The confusion matrix of `model` (``trial 3``, or the ensemble's name) on the validation split."""
    figure = confusion_figure([str(label) for label in search.labels], matrix, f"{model} on the validation split")
    file = _save(figure, plots_dir, "confusion_matrix.png")
    total = int(matrix.sum())
    accuracy = np.trace(matrix) / total if total else float("nan")
    saved = ("its members' best epochs, averaged with the ensemble's weights" if model.startswith("the ensemble")
             else "the best trial's best epoch")
    caption = (f"{model}: {int(np.trace(matrix))} of {total} validation examples right ({accuracy:.1%}). "
               f"Rows: true class; columns: predicted (the argmax of the probabilities the search saved for {saved}, "
               "which the export reproduces). Colour: share of the row.")
    return Plot(file, "Confusion matrix of the best model (validation split)", caption)


def confusion_figure(labels: list[str], matrix: np.ndarray, title: str):
    """A confusion matrix as shares of each true class, with the counts in the cells of up to 25 classes, titled
    ``TITLE: R/N right (A%)``."""
    classes = len(labels)
    side = min(max(4.5, 0.45 * classes + 2.5), 24)
    figure = _figure(side + 1, side)
    axes = figure.subplots()
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    axes.set_xticks(range(classes), labels, rotation=90 if max(map(len, labels)) > 3 else 0, fontsize=8)
    axes.set_yticks(range(classes), labels, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if classes <= ANNOTATED_CLASSES:
        for i in range(classes):
            for j in range(classes):
                if matrix[i, j]:
                    axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                              color="white" if share[i, j] > 0.5 else "black")
    total = int(matrix.sum())
    accuracy = np.trace(matrix) / total if total else float("nan")
    axes.set_title(f"{title}: {np.trace(matrix)}/{total} right ({accuracy:.1%})", fontsize=10)
    return figure


def save_figure(figure, path: Path) -> Path:
    """Write `figure` as a PNG at `path`."""
    figure.savefig(path, format="png", dpi=DPI)
    return path


def format_value(value: Any) -> str:
    """A value as the report prints it: floats to four significant places, None as nothing."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _search_start(search: Search, trials: list[Trial]) -> dt.datetime:
    starts = [t.started_at for t in trials if t.started_at is not None]
    return min([search.created_at, *starts]) if search.created_at else min(starts)


def _minutes(moment: dt.datetime | None, start: dt.datetime) -> float:
    return float("nan") if moment is None else (moment - start).total_seconds() / 60


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
