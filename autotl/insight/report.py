"""An HTML report of a search: what it tried, how it went, and how good the winner is.

``autotl report SEARCH --out DIR`` writes::

    DIR/index.html        the page: summary, plots, table of trials (CSS inline, no script)
    DIR/plots/*.png       the plots, referenced relatively from the page

so the folder opens offline, anywhere it is copied. Everything comes from the store
(searches, trials, epoch_metrics, artifacts) except the confusion matrix, which
pairs the best trial's saved validation probabilities (`VAL_PROBS_NAME`, next to its
checkpoint) with the validation labels, re-created from the search's own configuration
(`autotl.config.load_split`). When those data or probabilities are gone, the page says so.
The plots are `autotl.insight.plots`; this module gathers what they show and writes the page.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autotl import __version__
from autotl.errors import AutotlError, first_line
from autotl.search.budget import describe_budget
from autotl.insight.plots import (PLOTS_DIR, Plot, confusion_plot, epoch_curves, format_value, hyperparameter_names,
                                  hyperparameter_plots, learning_curves_plot, progress_plot)
from autotl.search.records import VAL_PROBS_NAME
from autotl.store import Search, Store, Trial

INDEX = "index.html"


@dataclass
class ReportResult:
    directory: Path
    index: Path
    plots: list[Plot]
    notes: list[str] = field(default_factory=list)  # what the page had to leave out, and why


def write_report(store: Store, search_ref: str | int, out_dir: str | Path) -> ReportResult:
    """Write the report of `search_ref` (a name or id) into `out_dir`; returns what was written."""
    search = store.get_search(search_ref)
    trials = store.list_trials(search.id)
    best = store.best_trial(search)
    if best is None:
        counts = _status_counts(trials)
        raise AutotlError(f"search {search.name!r} has no completed trial to report "
                          f"({counts or 'no trials'}; see `autotl trials {search.name}`)")
    out = _writable_out_dir(Path(out_dir).expanduser())
    plots_dir = out / PLOTS_DIR
    notes: dict[str, str] = {}  # section -> why it has no plot
    plots: dict[str, list[Plot]] = {"progress": [], "hyperparameters": [], "curves": [], "confusion": []}
    try:
        plots["progress"].append(progress_plot(search, trials, best, plots_dir))
        plots["hyperparameters"] = hyperparameter_plots(search, trials, best, plots_dir)
        curves = epoch_curves(store.epoch_metrics(best.id))
        if curves:
            plots["curves"].append(learning_curves_plot(search, best, curves, plots_dir))
        else:
            notes["curves"] = f"learning curves left out: trial {best.number} logged no epoch metrics"
        matrix, why_not, model = _confusion(store, search, best)
        if matrix is not None:
            plots["confusion"].append(confusion_plot(search, model, matrix, plots_dir))
        else:
            notes["confusion"] = f"confusion matrix left out: {why_not}"
        page = _page(store, search, trials, best, plots, notes)
        (out / INDEX).write_text(page, encoding="utf-8")
    except OSError as exc:
        raise AutotlError(f"cannot write the report to {out}: {exc.strerror or first_line(exc)}") from None
    return ReportResult(out, out / INDEX, [p for group in plots.values() for p in group], list(notes.values()))


# --- the output folder -------------------------------------------------------------


def _writable_out_dir(out: Path) -> Path:
    """`out` with its plots folder, made if need be and checked writable; what it already holds is kept."""
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


def _confusion(store: Store, search: Search, best: Trial) -> tuple[np.ndarray | None, str, str]:
    """The confusion matrix on the validation split of the model the export uses (the ensemble, when the
    search chose one, else the best trial), its name; or None and why not."""
    from autotl.runtime.evaluation import confusion_matrix
    from autotl.search.ensemble import name_of, used_ensemble, used_probabilities

    ensemble = used_ensemble(search)
    if ensemble is not None:
        model = name_of(ensemble)
        probs, why_not = used_probabilities(store, search)
    else:
        model = f"trial {best.number}"
        probs, why_not = _trial_probabilities(store, search, best)
    if probs is None:
        return None, why_not, model
    labels, why_not = _validation_labels(search)
    if labels is None:
        return None, why_not, model
    if probs.ndim != 2 or len(probs) != len(labels) or probs.shape[1] != len(search.labels):
        return None, (f"the saved probabilities of {model} are {probs.shape} for {len(labels)} validation examples "
                      f"and {len(search.labels)} classes"), model
    return confusion_matrix(labels, probs.argmax(axis=1), len(search.labels)), "", model


def _trial_probabilities(store: Store, search: Search, best: Trial) -> tuple[np.ndarray | None, str]:
    """The validation probabilities saved beside the trial's checkpoint, or None and why not."""
    checkpoints = store.artifacts(search.id, kind="checkpoint", trial_id=best.id)
    if not checkpoints:
        return None, f"trial {best.number} has no checkpoint in the store"
    probs_path = Path(checkpoints[-1].path).parent / VAL_PROBS_NAME
    if not probs_path.is_file():
        return None, f"the validation probabilities of trial {best.number} are gone ({probs_path} is missing)"
    try:
        return np.load(probs_path), ""
    except (OSError, ValueError) as exc:
        return None, f"cannot read {probs_path}: {first_line(exc)}"


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
    parts.append("<h2>Evaluations on labelled data</h2>")
    parts.append(_evaluations_html(store.evaluations(search.id)))
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
        ("tuner", f"{config.get('tuner', '?')}, {describe_budget(config.get('max_trials'), config.get('time_limit'))}, "
                  f"epochs {config.get('epochs', '?')} + fine-tuning {_finetune_epochs(config)}"),
        ("trials", _status_counts(trials)),
        ("best trial", f"{best.number}: {search.objective} {format_value(best.value)} at {best.best_phase} epoch "
                       f"{best.best_epoch}"),
        ("best hyperparameters", best.hyperparameters_line(number=format_value)),
        *_model_choice_rows(search),
        ("status", search.status + (f" ({search.error})" if search.error else "")),
        ("started / finished", f"{_format_time(search.created_at)} / {_format_time(search.finished_at)}"),
        ("store", store.display_url),
        ("work folder", search.workdir),
    ]
    e = html.escape
    return '<dl class="summary">' + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in rows) + "</dl>"


def _finetune_epochs(config: dict) -> object:
    """The fine-tuning epochs the search planned (stored since backbones may set their own), else as set."""
    if "planned_finetune_epochs" in config:
        return config["planned_finetune_epochs"]
    return config.get("finetune_epochs") if config.get("finetune_epochs") is not None else config.get("epochs", "?")


def _model_choice_rows(search: Search) -> list[tuple[str, str]]:
    """What the search chose beyond its best trial: an ensemble (used or not) and a refit, when it made them."""
    from autotl.search.ensemble import RESULT_KEY as ENSEMBLE_KEY, describe_record
    from autotl.search.refit import RESULT_KEY as REFIT_KEY, describe_epochs

    rows = []
    if search.config.get(ENSEMBLE_KEY):
        rows.append(("ensemble", describe_record(search.config[ENSEMBLE_KEY], search.objective)))
    refit = search.config.get(REFIT_KEY)
    if refit:
        rows.append(("refit", f"trial {refit['trial']} on all {refit['examples']} labelled examples "
                              f"({describe_epochs(refit)}, {refit['seconds']} s)"))
    return rows


def _trials_table(search: Search, trials: list[Trial], best: Trial) -> str:
    e = html.escape
    names = hyperparameter_names(trials, best)
    header = ["trial", "status", search.objective, "best epoch", "duration (s)", "data", *names, "error"]
    lines = ["<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for trial in trials:
        css = "best" if trial.id == best.id else trial.status
        cells = [
            str(trial.number), trial.status, format_value(trial.value),
            f"{trial.best_phase}:{trial.best_epoch}" if trial.best_phase else "",
            "" if trial.duration_s is None else f"{trial.duration_s:.1f}",
            (trial.data_path or {}).get("status", ""),
            *[format_value(trial.hyperparameters.get(n)) for n in names],
        ]
        row = "".join(f"<td>{e(c)}</td>" for c in cells)
        row += f'<td class="text">{e(first_line(Exception(trial.error), "") if trial.error else "")}</td>'
        lines.append(f'<tr class="{e(css)}">{row}</tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _evaluations_html(evaluations: list) -> str:
    """`autotl evaluate`'s records of the search's exports, with the gap between the validation accuracy the
    search measured and the accuracy on the evaluated data."""
    e = html.escape
    if not evaluations:
        return ('<p class="note">No evaluation yet: <code>autotl evaluate EXPORT_DIR DATA</code> scores an export on '
                "labelled data the search never saw and records it here.</p>")
    header = ["when", "data", "exported", "format", "examples", "accuracy", "validation accuracy", "gap",
              "macro-F1", "log-loss", "calibration error"]
    lines = ['<div class="scroll"><table><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in header)
             + "</tr></thead><tbody>"]
    for row in evaluations:
        validation = row.metrics.get("validation_accuracy")
        cells = [_format_time(row.created_at), row.data, row.exported, row.model_format,
                 f"{row.examples}" + (f" ({row.skipped} skipped)" if row.skipped else ""),
                 format_value(row.accuracy), format_value(validation),
                 "" if validation is None else f"{validation - row.accuracy:+.4f}",
                 format_value(row.metrics.get("macro_f1")), format_value(row.metrics.get("log_loss")),
                 format_value(row.metrics.get("expected_calibration_error"))]
        lines.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    lines.append("</tbody></table></div>")
    lines.append('<p class="muted">gap: the validation accuracy the search measured minus the accuracy on the data; '
                 "a large gap says the validation split flattered the model.</p>")
    return "\n".join(lines)


# --- formatting --------------------------------------------------------------------------




def _format_time(value: dt.datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _status_counts(trials: list[Trial]) -> str:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())
