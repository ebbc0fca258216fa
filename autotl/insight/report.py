"""An HTML report of a search: what it tried, how it went, and how good the winner is.

``autotl report SEARCH --out DIR`` writes::

    DIR/index.html        the page: summary, plots, table of trials (CSS inline, no script)
    DIR/plots/*.png       the plots, referenced relatively from the page

so the folder opens offline, anywhere it is copied. Everything comes from the store
(searches, trials, epoch_metrics, artifacts) except the confusion matrix, which
pairs the best trial's saved validation probabilities (`VAL_PROBS_NAME`, next to its
checkpoint) with the validation labels, re-created from the search's own configuration
(`autotl.config.load_split`). When those data or probabilities are gone, the page says so.
Plots are drawn with matplotlib's Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from autotl import __version__
from autotl.errors import AutotlError, first_line
from autotl.store import COMPLETED, EpochMetric, Search, Store, Trial

INDEX = "index.html"
PLOTS_DIR = "plots"
# Learning-curve panels: one row per metric, the training curve and its validation twin.
CURVES = (("loss", "val_loss"), ("accuracy", "val_accuracy"))
PHASES = ("head", "finetune")
# Above this many classes the confusion matrix shows colours without the counts in each cell.
ANNOTATED_CLASSES = 25
DPI = 100
# The best trial's validation probabilities, next to its checkpoint: `autotl.search.runner.VAL_PROBS_NAME`, repeated
# here so that a report never imports Keras (tests/test_report.py checks the two agree).
VAL_PROBS_NAME = "val_probs.npy"


@dataclass
class Plot:
    file: str  # relative to the report folder
    title: str
    caption: str = ""


@dataclass
class ReportResult:
    directory: Path
    index: Path
    plots: list[Plot]
    notes: list[str] = field(default_factory=list)  # what the page had to leave out, and why


@dataclass
class _Curve:
    phase: str
    epochs: list[int]
    values: list[float | None]


def write_report(store: Store, search_ref: str | int, out_dir: str | Path) -> ReportResult:
    """Write the report of `search_ref` (a name or id) into `out_dir`; returns what was written."""
    search = store.get_search(search_ref)
    trials = store.list_trials(search.id)
    best = store.best_trial(search)
    if best is None:
        counts = _status_counts(trials)
        raise AutotlError(f"search {search.name!r} has no completed trial to report "
                          f"({counts or 'no trials'}; see `autotl trials {search.name}`)")
    out = _prepare_out_dir(Path(out_dir).expanduser())
    plots_dir = out / PLOTS_DIR
    notes: dict[str, str] = {}  # section -> why it has no plot
    plots: dict[str, list[Plot]] = {"progress": [], "hyperparameters": [], "curves": [], "confusion": []}
    try:
        plots["progress"].append(_progress_plot(search, trials, best, plots_dir))
        plots["hyperparameters"] = _hyperparameter_plots(search, trials, best, plots_dir)
        curves = _curves(store.epoch_metrics(best.id))
        if curves:
            plots["curves"].append(_learning_curves_plot(search, best, curves, plots_dir))
        else:
            notes["curves"] = f"learning curves left out: trial {best.number} logged no epoch metrics"
        matrix, why_not = _confusion(store, search, best)
        if matrix is not None:
            plots["confusion"].append(_confusion_plot(search, best, matrix, plots_dir))
        else:
            notes["confusion"] = f"confusion matrix left out: {why_not}"
        page = _page(store, search, trials, best, plots, notes)
        (out / INDEX).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise AutotlError(f"cannot write the report to {out}: {exc.strerror or first_line(exc)}") from None
    return ReportResult(out, out / INDEX, [p for group in plots.values() for p in group], list(notes.values()))


# --- the output folder -------------------------------------------------------------


def _prepare_out_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise AutotlError(f"cannot write the report to {out}: it is a file, not a folder")
    try:
        (out / PLOTS_DIR).mkdir(parents=True, exist_ok=True)
        probe = out / PLOTS_DIR / ".autotl-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AutotlError(f"cannot write the report to {out}: {exc.strerror or first_line(exc)}") from None
    return out


# --- plots -----------------------------------------------------------------------------


def _figure(width: float, height: float):
    """A figure on matplotlib's Agg canvas, without pyplot (no display, nothing global)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, plots_dir: Path, name: str) -> str:
    figure.savefig(plots_dir / name, format="png", dpi=DPI)
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


def _progress_plot(search: Search, trials: list[Trial], best: Trial, plots_dir: Path) -> Plot:
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


def _hyperparameter_names(trials: list[Trial], best: Trial) -> list[str]:
    names = [n for n in best.hyperparameters]
    for trial in trials:
        names.extend(n for n in trial.hyperparameters if n not in names)
    return [n for n in names if not n.startswith("tuner/")]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hyperparameter_plots(search: Search, trials: list[Trial], best: Trial, plots_dir: Path) -> list[Plot]:
    """One small plot per hyperparameter: each completed trial's value against it, the best starred."""
    completed = _completed(trials)
    space = (search.config or {}).get("space") or {}
    jitter = np.random.default_rng(0)
    plots = []
    for name in _hyperparameter_names(trials, best):
        spec = space.get(name) or {}
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
                axes.set_xticks(choices, [_format_value(c) for c in choices])
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
        plots.append(Plot(file, name, f"best: {_format_value(best.hyperparameters.get(name))}"))
    return plots


def _log_axis(axes) -> None:
    """A log x axis with a few readable ticks (1, 2, 5 per decade), none crowding the others."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axes.set_xscale("log")
    axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0e}".replace("e-0", "e-")))
    axes.xaxis.set_minor_formatter(NullFormatter())


def _curves(metrics: list[EpochMetric]) -> dict[str, dict[str, _Curve]]:
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


def _learning_curves_plot(search: Search, best: Trial, curves: dict[str, dict[str, _Curve]],
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
               f"({search.objective} {_format_value(best.value)}); its weights are the ones kept.")
    return Plot(file, f"Learning curves of the best trial ({best.number})", caption)


def _confusion(store: Store, search: Search, best: Trial) -> tuple[np.ndarray | None, str]:
    """The best trial's confusion matrix on the validation split, or None and why not."""
    checkpoints = store.artifacts(search.id, kind="checkpoint", trial_id=best.id)
    if not checkpoints:
        return None, f"trial {best.number} has no checkpoint in the store"
    probs_path = Path(checkpoints[-1].path).parent / VAL_PROBS_NAME
    if not probs_path.is_file():
        return None, f"the validation probabilities of trial {best.number} are gone ({probs_path} is missing)"
    try:
        probs = np.load(probs_path)
    except (OSError, ValueError) as exc:
        return None, f"cannot read {probs_path}: {first_line(exc)}"
    labels, why_not = _validation_labels(search)
    if labels is None:
        return None, why_not
    if probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] != len(search.labels):
        return None, (f"{probs_path} holds {probs.shape} probabilities for {len(labels)} validation examples and "
                      f"{len(search.labels)} classes")
    classes = len(search.labels)
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, probs.argmax(axis=1)), 1)
    return matrix, ""


def _validation_labels(search: Search) -> tuple[np.ndarray | None, str]:
    """The labels of the search's validation split, re-created from its configuration and data."""
    from autotl.config import config_from_record, load_split, split_fingerprint

    try:
        config = config_from_record(search)
    except (TypeError, ValueError) as exc:
        return None, f"the search's configuration cannot be read back: {first_line(exc)}"
    missing = [p for p in (config.data, config.val_data) if p and not Path(p).exists()]
    if missing:
        return None, f"the search's data are gone ({missing[0]} does not exist)"
    image_size = ((search.config or {}).get("preprocessing") or {}).get("image_size")
    sizes = _Sizes(tuple(int(s) for s in image_size) if image_size else None)
    try:
        train, val = load_split(config, search.modality, sizes)
    except (AutotlError, OSError) as exc:
        return None, f"the search's data at {config.data} cannot be read: {first_line(exc)}"
    if split_fingerprint(train, val) != search.dataset_fingerprint:
        return None, f"the data at {config.data} changed since the search (their fingerprint differs)"
    return val.labels, ""


@dataclass
class _Sizes:
    """What `load_split` asks of a preprocessor: the image size (no backbone needed)."""

    image_size: tuple[int, int] | None


def _confusion_plot(search: Search, best: Trial, matrix: np.ndarray, plots_dir: Path) -> Plot:
    labels = [str(label) for label in search.labels]
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
    axes.set_title(f"trial {best.number} on the validation split: {np.trace(matrix)}/{total} right "
                   f"({accuracy:.1%})", fontsize=10)
    file = _save(figure, plots_dir, "confusion_matrix.png")
    caption = (f"{int(np.trace(matrix))} of {total} validation examples right ({accuracy:.1%}). "
               "Rows: true class; columns: predicted (the argmax of the probabilities the search saved for the "
               "best trial's best epoch, which the export reproduces). Colour: share of the row.")
    return Plot(file, "Confusion matrix of the best model (validation split)", caption)


# --- the page ------------------------------------------------------------------------------


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.muted { color: #666; font-size: 0.9em; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 0.25em 1.2em; }
dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; font-family: ui-monospace, monospace; }
figure { margin: 0.5em 0 1.2em; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 0.5em; } .grid figure { margin: 0; width: 370px; }
.note { background: #fff6e0; border-left: 4px solid #e0a800; padding: 0.5em 0.8em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.text { text-align: left; white-space: normal; }
tr.best { background: #fde8e8; font-weight: 600; } tr.failed, tr.interrupted { color: #999; }
"""


def _page(store: Store, search: Search, trials: list[Trial], best: Trial, plots: dict[str, list[Plot]],
          notes: dict[str, str]) -> str:
    e = html.escape
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>autotl report: {e(search.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Search {e(search.name)}</h1>",
        f'<p class="muted">autotl {e(__version__)} report, generated {generated}</p>',
        "<h2>Summary</h2>",
        _summary(store, search, trials, best),
    ]
    parts.append("<h2>Progress</h2>")
    parts.extend(_figure_html(p) for p in plots["progress"])
    if plots["hyperparameters"]:
        parts.append("<h2>Hyperparameters against the metric</h2>")
        parts.append('<p class="muted">Each completed trial is a point; the red star is the best trial. '
                     "Points that share a discrete value are spread sideways a little.</p>")
        parts.append('<div class="grid">' + "".join(_figure_html(p) for p in plots["hyperparameters"]) + "</div>")
    for section, title in (("curves", "Learning curves"), ("confusion", "Confusion matrix")):
        parts.append(f"<h2>{title}</h2>")
        parts.extend(_figure_html(p) for p in plots[section])
        if section in notes:
            parts.append(f'<p class="note">{e(notes[section])}</p>')
    parts.append("<h2>Trials</h2>")
    parts.append('<div class="scroll">' + _trials_table(search, trials, best) + "</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _figure_html(plot: Plot) -> str:
    e = html.escape
    caption = f"<figcaption><b>{e(plot.title)}</b>" + (f" {e(plot.caption)}" if plot.caption else "") + "</figcaption>"
    return f'<figure><img src="{e(plot.file, quote=True)}" alt="{e(plot.title, quote=True)}">{caption}</figure>'


def _summary(store: Store, search: Search, trials: list[Trial], best: Trial) -> str:
    config = search.config or {}
    data = config.get("data") or search.dataset_path
    if config.get("val_data"):
        data = f"{data} (validation: {config['val_data']})"
    else:
        data = f"{data} (validation split {config.get('val_split', '?')}, seed {config.get('seed', '?')})"
    examples = (f"{config['train_examples']} train / {config['val_examples']} validation"
                if "train_examples" in config else "")
    if config.get("skipped_count"):
        examples += f", {config['skipped_count']} skipped"
    rows = [
        ("backbone", f"{search.backbone} ({search.modality})"),
        ("weights", search.weights),
        ("data", data),
        ("examples", examples),
        ("classes", f"{len(search.labels)}: " + ", ".join(map(str, search.labels))),
        ("objective", f"{search.objective} ({'max' if search.direction == 'max' else 'min'})"),
        ("tuner", f"{config.get('tuner', '?')}, {config.get('max_trials', '?')} trials at most, "
                  f"epochs {config.get('epochs', '?')} + fine-tuning {config.get('finetune_epochs') or config.get('epochs', '?')}"),
        ("trials", _status_counts(trials)),
        ("best trial", f"{best.number}: {search.objective} {_format_value(best.value)} at {best.best_phase} epoch "
                       f"{best.best_epoch}"),
        ("best hyperparameters", _format_hp(best.hyperparameters)),
        ("status", search.status + (f" ({search.error})" if search.error else "")),
        ("started / finished", f"{_format_time(search.created_at)} / {_format_time(search.finished_at)}"),
        ("store", store.display_url),
        ("work folder", search.workdir),
    ]
    e = html.escape
    return '<dl class="summary">' + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in rows) + "</dl>"


def _trials_table(search: Search, trials: list[Trial], best: Trial) -> str:
    e = html.escape
    names = _hyperparameter_names(trials, best)
    header = ["trial", "status", search.objective, "best epoch", "duration (s)", "data", *names, "error"]
    lines = ["<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for trial in trials:
        css = "best" if trial.id == best.id else trial.status
        cells = [
            str(trial.number), trial.status, _format_value(trial.value),
            f"{trial.best_phase}:{trial.best_epoch}" if trial.best_phase else "",
            "" if trial.duration_s is None else f"{trial.duration_s:.1f}",
            (trial.data_path or {}).get("status", ""),
            *[_format_value(trial.hyperparameters.get(n)) for n in names],
        ]
        row = "".join(f"<td>{e(c)}</td>" for c in cells)
        row += f'<td class="text">{e(first_line(Exception(trial.error), "") if trial.error else "")}</td>'
        lines.append(f'<tr class="{e(css)}">{row}</tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


# --- formatting --------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _format_hp(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_format_value(v)}" for k, v in values.items() if not k.startswith("tuner/"))


def _format_time(value: dt.datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _status_counts(trials: list[Trial]) -> str:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def _search_start(search: Search, trials: list[Trial]) -> dt.datetime:
    starts = [t.started_at for t in trials if t.started_at is not None]
    return min([search.created_at, *starts]) if search.created_at else min(starts)


def _minutes(moment: dt.datetime | None, start: dt.datetime) -> float:
    return float("nan") if moment is None else (moment - start).total_seconds() / 60


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
