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
              *chosen_model_lines(search),
              f"store: {result.store.display_url}",
              f"next: autotl export {search.name} --out exported/{search.name}"]
    return lines


def chosen_model_lines(search) -> list[str]:
    """What the search chose beyond its best trial, as `autotl best` says it: its ensemble (used or not) and
    its refit, when it made them."""
    from autotl.search.ensemble import RESULT_KEY as ENSEMBLE_KEY, describe_record
    from autotl.search.refit import RESULT_KEY as REFIT_KEY, describe_epochs

    lines = []
    if search.config.get(ENSEMBLE_KEY):
        lines.append(describe_record(search.config[ENSEMBLE_KEY], search.objective))
    refit = search.config.get(REFIT_KEY)
    if refit:
        lines.append(f"refit on all {refit['examples']} labelled examples ({describe_epochs(refit)}): exports use it")
    return lines


def best_trial_lines(search, trial, refit: dict[str, Any] | None, ensemble: dict[str, Any] | None = None) -> list[str]:
    """The best trial in detail; `refit`: its refit's stored result (`autotl.search.refit`), if any;
    `ensemble`: the ensemble the search chose (`autotl.search.ensemble`), used or not, if any."""
    from autotl.search.ensemble import describe_record
    from autotl.search.refit import describe_epochs

    lines = [f"search {search.name!r} ({search.backbone}): best trial {trial.number}",
             f"{search.objective}: {trial.value:.4f} at {trial.best_phase} epoch {trial.best_epoch}"]
    if ensemble:
        lines.append(describe_record(ensemble, search.objective))
    if refit:
        lines.append(f"refit on all {refit['examples']} labelled examples ({describe_epochs(refit)}): exports use it")
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
