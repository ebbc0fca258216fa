"""What the CLI prints about a search once it has run (`autotl search`, `resume`) and about its best
trial (`autotl best`): lines of text, so that the commands only echo them."""

from __future__ import annotations

from typing import Any


def how_continued(result) -> str:
    """`` (extended)``, `` (resumed; 2 interrupted trial(s) ran again)``, or nothing for a new search."""
    if result.extended:
        return " (extended)"
    if not result.resumed:
        return ""
    return f" (resumed; {result.reran} interrupted trial(s) ran again)" if result.reran else " (resumed)"


def search_result_lines(result) -> list[str]:
    """How the search ended: trials completed, its best trial, the store, the next command."""
    best, search = result.best, result.search
    completed = sum(t.status == "completed" for t in result.trials)
    lines = [f"search {search.name!r} had already finished; nothing to run"] if result.already_finished else []
    cap = search.config.get("max_trials", len(result.trials))
    lines += [f"search {search.name!r}: {completed}{f'/{cap}' if cap is not None else ''} "
              f"{'trial' if completed == 1 and cap is None else 'trials'} completed{how_continued(result)}",
              f"best trial: {best.number}  {search.objective} {best.value:.4f}  "
              f"({best.best_phase} epoch {best.best_epoch})",
              f"hyperparameters: {best.hyperparameters_line()}",
              *selection_lines(result.trials, search),
              *chosen_model_lines(search, best),
              f"store: {result.store.display_url}",
              f"next: autotl export {search.name} --out exported/{search.name}"]
    return lines


def selection_lines(trials, search) -> list[str]:
    """Why the search chose another trial than the one with the best validation figure, if it did."""
    from autotl.store.queries import selection_line

    line = selection_line(trials, search)
    return [line] if line else []


def chosen_model_lines(search, best) -> list[str]:
    """What the search chose beyond its best trial `best`: its ensemble (used or not), and the refit of that
    trial, when it made them."""
    from autotl.search.ensemble import RESULT_KEY as ENSEMBLE_KEY, describe_record
    from autotl.search.refit import RESULT_KEY as REFIT_KEY, describe_epochs

    lines = []
    if search.config.get(ENSEMBLE_KEY):
        lines.append(describe_record(search.config[ENSEMBLE_KEY], search.objective))
    refit = search.config.get(REFIT_KEY)
    if refit and refit.get("trial") == best.number:  # a later, better trial has no refit
        lines.append(f"refit on all {refit['examples']} labelled examples ({describe_epochs(refit)}): exports use it")
    return lines


def best_trial_lines(search, trial, trials=()) -> list[str]:
    """The best trial in detail, why it was chosen when it is not the best by its figure (`selection_lines` of
    the search's `trials`), the ensemble and the refit the search made (`chosen_model_lines`)."""
    lines = [f"search {search.name!r} ({search.backbone}): best trial {trial.number}",
             f"{search.objective}: {trial.value:.4f} at {trial.best_phase} epoch {trial.best_epoch}",
             *selection_lines(list(trials), search),
             *chosen_model_lines(search, trial)]
    lines += [f"  {key}: {value}" for key, value in trial.hyperparameters.items()]
    lines += [f"  {key} = {value:.4f}" if isinstance(value, float) else f"  {key} = {value}"
              for key, value in (trial.metrics or {}).items()]
    return lines


def exported_what(manifest: dict[str, Any]) -> str:
    """What an export holds, from its manifest: ``trial 3``, ``trial 3 (its refit ...)`` or ``the ensemble ...``."""
    if manifest.get("ensemble"):
        members = manifest["ensemble"]["members"]
        return "the ensemble of trials " + ", ".join(f"{m['trial']} ({m['weight']:.2f})" for m in members)
    refit = " (its refit on all labelled examples)" if manifest.get("refit") else ""
    return f"trial {manifest['search']['trial']}{refit}"


def evaluation_lines(result) -> list[str]:
    """`autotl evaluate`'s report of an `autotl.runtime.evaluation.Evaluation`: the figures, each class, the
    confusion matrix."""
    skipped = f"; {result.skipped} skipped (unreadable or empty)" if result.skipped else ""
    lines = [f"{result.model_dir} ({result.model_format}) on {result.data}: {result.examples} examples{skipped}",
             f"accuracy {result.accuracy:.4f}  balanced accuracy {result.balanced_accuracy:.4f}  "
             f"macro-F1 {result.macro_f1:.4f}  log-loss {result.log_loss:.4f}  "
             f"calibration error {result.expected_calibration_error:.4f}", "",
             f"{'class':<16} precision  recall  f1      support"]
    lines += [f"{name[:16]:<16} {s['precision']:.4f}     {s['recall']:.4f}  {s['f1']:.4f}  {s['support']}"
              for name, s in result.per_class.items()]
    width = max(5, *(len(name[:12]) for name in result.labels))
    lines += ["", "confusion matrix (rows: true class, columns: predicted)",
              " " * (width + 1) + " ".join(f"{name[:12]:>{width}}" for name in result.labels)]
    lines += [f"{name[:12]:<{width}} " + " ".join(f"{count:>{width}}" for count in row)
              for name, row in zip(result.labels, result.confusion_matrix)]
    return lines
