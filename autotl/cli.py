"""The `autotl` command line: a thin shell over `autotl.api` and `autotl.export.exporter`.

Exit codes: 0 ok, 1 failure, 2 usage error (click's convention). Errors a user
can cause print one line on stderr, never a traceback; set AUTOTL_DEBUG=1 to
see the traceback of an unexpected error.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time
from pathlib import Path
from typing import Any

import click

from autotl.config import CACHE_DTYPES, DEFAULT_CACHE_MAX_GB, OBJECTIVES, PRECISIONS, TUNERS
from autotl.store.queries import BEST, SELECTIONS
from autotl.cli_errors import handle_errors
from autotl.errors import AutotlError, UsageError
from autotl.export.manifest import DEFAULT_FORMATS, FORMATS
from autotl.cli_cache import cache
from autotl.cli_exported import evaluate, predict, serve
from autotl.cli_options import CACHE_DIR_OPTION, DURATION, JSON_OPTION, PLUGIN_OPTION, STORE_OPTION
from autotl.insight.table import print_table
from autotl.quiet import import_keras_quietly
from autotl.workarounds import exit_at_once

STARTED_AT = time.time()  # what --time-limit counts from: before Keras' imports, which take seconds


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="autotl")
def main() -> None:
    """autotl: find the best fine-tuned model for a small labelled dataset.

    Searches over pretrained backbone plugins, head, unfreeze depth and learning
    rates with KerasTuner, logs every trial to a SQL store and exports the winner.
    """


@main.command()
@click.argument("data", type=click.Path())
@click.option("--backbone", "-b", required=True, help="Backbone plugin name (see `autotl plugins`).")
@click.option("--weights", help="Weights source for the backbone (default: the plugin's).")
@click.option("--name", help="Name of the search (default: BACKBONE-DATE-TIME).")
@STORE_OPTION
@click.option("--tuner", type=click.Choice(TUNERS), default="random")
@click.option("--portfolio/--no-portfolio", default=True,
              help="Start with a few configurations that do well across datasets (README: Strong first trials); "
                   "the random and bayesian tuners only.")
@click.option("--selection", type=click.Choice(SELECTIONS), default=BEST, show_default=True,
              help="How the trial is chosen: best, the best validation figure (ties: lower validation loss, then "
                   "fewer fine-tuned blocks); one-se, the fewest fine-tuned blocks within one standard error of the "
                   "best validation accuracy, for small validation splits, trying the portfolio's cheap heads first "
                   "(README: Choosing on small validation splits).")
@click.option("--refit/--no-refit", default=False,
              help="Once the best trial is chosen, train its configuration again on training and validation "
                   "data together, for the epochs it needed; exports use that model.")
@click.option("--ensemble-size", type=click.IntRange(min=1), default=1,
              help="Keep the N best trials and export the weighted average of some of them when it beats the best "
                   "trial on validation (greedy ensemble selection, README: Ensembles); 1: no ensemble.")
@click.option("--checkpoint-soup/--no-checkpoint-soup", default=False,
              help="Average the weights of a fine-tune's 3 best epochs greedily, each kept only when validation "
                   "does not drop (README: Checkpoint soups); off until measured to help.")
@click.option("--convex-head/--no-convex-head", default=False,
              help="First fit a logistic regression on the frozen backbone's pooled features, its L2 penalty chosen "
                   "on validation (seconds on the cache), as one more trial (README: Convex heads); off until "
                   "measured to help.")
@click.option("--fill-time/--no-fill-time", default=True, show_default=True,
              help="With --time-limit, when the next trial would not fit the time left, run the next proposal that "
                   "does (a head on the cached activations, a shallower fine-tune), judged by what such trials took "
                   "so far; --no-fill-time: stop once the median trial would not fit.")
@click.option("--max-trials", type=click.IntRange(min=1), default=None,
              help="Trials to run (a cap when --time-limit is given)  [default: 5; none with --time-limit]")
@click.option("--time-limit", type=DURATION, metavar="DURATION",
              help="Time for the search, e.g. 90s, 10m, 2h: no trial starts that would not finish in it, "
                   "and a running one stops at it with its best epoch so far")
@click.option("--epochs", type=click.IntRange(min=1), default=10, help="Epochs of the head phase (at most).")
@click.option("--finetune-epochs", type=click.IntRange(min=0),
              help="Epochs of the fine-tuning phase (at most)  [default: the backbone's own, at most --epochs "
                   "(bert: 8); else --epochs]")
@click.option("--batch-size", type=click.IntRange(min=1), default=32)
@click.option("--patience", type=click.IntRange(min=1), default=3, help="Early-stopping patience, in epochs.")
@click.option("--seed", type=click.IntRange(min=0), default=0,
              help="Seeds the split, the tuner's choices and each trial's initialisation.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="val_accuracy")
@click.option("--val-split", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.2,
              help="Fraction of DATA held out for validation (stratified, seeded).")
@click.option("--val-data", type=click.Path(), help="A separate validation set (same format as DATA).")
@click.option("--image-size", type=click.IntRange(min=8), help="Square input size for image backbones  [default: the backbone's own]")
@click.option("--sequence-length", type=click.IntRange(min=4), help="Token length for text backbones  [default: the backbone's own]")
@click.option("--text-col", default="text", help="Text column of a CSV/JSONL dataset.")
@click.option("--label-col", default="label", help="Label column of a CSV/JSONL dataset.")
@click.option("--space", "space_file", type=click.Path(), help="YAML/JSON file narrowing or widening the space.")
@click.option("--workdir", default="autotl_runs", help="Folder for checkpoints and KerasTuner state.")
@click.option("--strict", is_flag=True, help="Fail on an unreadable image or an empty text instead of skipping it.")
@click.option("--trials-per-worker", type=click.IntRange(min=0), default=25,
              help="Trials run in a worker process, replaced after this many so memory stays flat; "
                   "0 runs them in this process.")
@click.option("--worker-memory-growth", "worker_memory_growth_mb", type=click.IntRange(min=1), default=1024,
              help="Replace the worker sooner once its memory grew by this many MB since its first trial.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="float32",
              help="Keras dtype policy for training (mixed precision pays off on GPUs).")
@click.option("--cache/--no-cache", default=True,
              help="Train each trial on cached activations of the frozen part of the backbone.")
@CACHE_DIR_OPTION
@click.option("--cache-dtype", type=click.Choice(CACHE_DTYPES), default="auto",
              help="How cached activations are kept; auto: float32, or float16 when they would not fit in memory.")
@click.option("--cache-memory", "cache_memory_mb", type=click.IntRange(min=0),
              help="MB of cached activations a trial loads into memory; beyond it, it reads them from disk  "
                   "[default: a quarter of this machine's memory]")
@click.option("--cache-max-gb", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_CACHE_MAX_GB,
              show_default=True, help="Bound of the activation cache: once a search has written its entries, the "
                                      "least recently used others are removed until the cache fits.")
@click.option("--max-failures", type=click.IntRange(min=1), default=5,
              help="Stop the search once this many trials have failed.")
@click.option("--workers", type=click.IntRange(min=0), default=0,
              help="Run trials in this many worker processes coordinated by a chief oracle "
                   "(KerasTuner's distributed mode); more can join with `autotl worker`. 0: one process.")
@click.option("--oracle-address", default="127.0.0.1:0",
              help="HOST:PORT the chief oracle listens on with --workers (port 0: a free one; "
                   "use 0.0.0.0:PORT for workers on other machines).")
@click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Log each trial for TensorBoard to DIR/NAME/trial_NNN: per-epoch scalars of each phase, "
                   "its hyperparameters and objective (HParams); view with `tensorboard --logdir DIR/NAME`.")
@PLUGIN_OPTION
@handle_errors(needs_keras=False)  # imported once the inputs pass the checks that need no Keras
def search(data: str, **options: Any) -> None:
    """Search for the best fine-tuned model on DATA.

    DATA is a folder of images (one sub-folder per class) or a CSV/JSONL file of
    text and label. Run again with the --name of a search that was killed or
    interrupted, and it resumes (or use `autotl resume`).
    """
    from autotl import api
    from autotl.insight.progress import ConsoleReporter
    from autotl.store import Store

    options["plugin_files"] = list(options["plugin_files"])
    store_url = options.pop("store")
    config = api.SearchConfig(data=data, **options)
    config.check_inputs()
    import_keras_quietly()
    store = Store(store_url)
    _print_result(api.search(config, store, reporter=ConsoleReporter(config.objective), started_at=STARTED_AT))
    exit_at_once(0)  # under --time-limit, the process's exit counts too


@main.command()
@click.argument("search_ref", metavar="SEARCH")
@STORE_OPTION
@click.option("--max-trials", type=click.IntRange(min=1), default=None,
              help="Go on to this many trials: more than it had extends a finished search  [default: as stored]")
@click.option("--time-limit", type=DURATION, metavar="DURATION", default=None,
              help="Time for this run, e.g. 10m; without --max-trials it lifts the trial cap, so a finished "
                   "search runs more trials for that long  [default: as stored]")
@handle_errors
def resume(search_ref: str, store: str, max_trials: int | None, time_limit: float | None) -> None:
    """Continue SEARCH (a name or id) after it was killed or interrupted, as it was started,
    or extend a finished one with --max-trials or --time-limit.

    Completed trials are kept; the trials that were running are marked interrupted
    and run again. A search that has finished, and is not extended, says so and exits 0.
    """
    from autotl import api
    from autotl.insight.progress import ConsoleReporter
    from autotl.store import Store

    opened = Store(store)
    reporter = ConsoleReporter(opened.get_search(search_ref).objective)
    _print_result(api.resume(search_ref, opened, reporter=reporter, started_at=STARTED_AT, max_trials=max_trials,
                             time_limit=time_limit))
    exit_at_once(0)


@main.command()
@click.argument("search_ref", metavar="SEARCH")
@click.option("--chief", required=True, metavar="HOST:PORT", help="Address of the search's chief oracle.")
@STORE_OPTION
@click.option("--data", type=click.Path(), help="This machine's copy of the search's data  [default: its path]")
@click.option("--workdir", help="Folder for this worker's checkpoints  [default: the search's]")
@click.option("--tuner-id", help="This worker's KerasTuner id  [default: HOST-PID]")
@handle_errors(needs_keras=False)
def worker(search_ref: str, chief: str, store: str, data: str | None, workdir: str | None,
           tuner_id: str | None) -> None:
    """Join SEARCH, running on a chief started by `autotl search --workers N`, as one more worker.

    Trials this worker runs land in the same store (use the chief's --store URL;
    across machines, a PostgreSQL URL).
    """
    from autotl import api
    from autotl.search.distributed import default_tuner_id
    from autotl.insight.progress import ConsoleReporter
    from autotl.store import Store
    from autotl.search.trial_process import die_with_parent

    die_with_parent(os.environ.get("AUTOTL_PARENT_PID"))
    opened = Store(store)
    api.check_joinable(search_ref, chief, opened)  # a wrong --chief or search in one line, before Keras' imports
    import_keras_quietly()
    tuner_id = tuner_id or default_tuner_id()
    reporter = ConsoleReporter(opened.get_search(search_ref).objective, prefix=f"[{tuner_id}] ")
    completed = api.join(search_ref, chief, opened, data=data, workdir=workdir, tuner_id=tuner_id,
                         reporter=reporter)
    click.echo(f"worker {tuner_id}: {completed} trial(s) completed for search {search_ref!r}")


def _print_result(result) -> None:
    from autotl.insight.summary import search_result_lines

    for line in search_result_lines(result):
        click.echo(line)


@main.command()
@STORE_OPTION
@JSON_OPTION
@handle_errors(needs_keras=False)
def searches(store: str, as_json: bool) -> None:
    """List the searches in the store."""
    from autotl.store import Store, as_dict

    rows = [{**as_dict(summary.search), "trials": summary.trials, "best_value": summary.best_value}
            for summary in Store(store).search_summaries()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_table(rows, ["id", "name", "backbone", "status", "trials", "objective", "best_value", "created_at"],
                paths=["backbone"])


@main.command()
@click.argument("search_ref", metavar="SEARCH")
@STORE_OPTION
@JSON_OPTION
@click.option("--epochs", "with_epochs", is_flag=True, help="Include per-epoch metrics (with --json).")
@click.option("--sort", "sort_by", type=click.Choice(["number", "value", "duration"]), default="number",
              help="Order by trial number; by value of the objective, best first (trials without one last); "
                   "or by duration, longest first.")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["completed", "failed", "interrupted", "running"]),
              help="Only trials with this status (repeatable).")
@click.option("--where", "conditions", multiple=True, metavar="NAME=VALUE",
              help="Only trials whose hyperparameter NAME is VALUE, as the listing prints it or as a number "
                   "(repeatable: all must hold), e.g. --where unfreeze_depth=2.")
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many trials (after sorting).")
@handle_errors(needs_keras=False)
def trials(search_ref: str, store: str, as_json: bool, with_epochs: bool, sort_by: str,
           statuses: tuple[str, ...], conditions: tuple[str, ...], limit: int | None) -> None:
    """List the trials of SEARCH (a name or id) with their hyperparameters and results."""
    from autotl.store import Store, as_dict, parse_where

    wanted = parse_where(conditions)
    opened = Store(store)
    search = opened.get_search(search_ref)
    selected = opened.select_trials(search, statuses=statuses, where=wanted, sort=sort_by, limit=limit)
    if as_json:
        epochs = opened.epochs_by_trial([t.id for t in selected]) if with_epochs else {}
        rows = [{**as_dict(t), **({"epochs": [{"phase": m.phase, "epoch": m.epoch, "name": m.name, "value": m.value}
                                              for m in epochs[t.id]]} if with_epochs else {})} for t in selected]
        click.echo(json.dumps(rows, indent=2))
        return
    table = [{"trial": t.number, "status": t.status, search.objective: t.value,
              "best": f"{t.best_phase}:{t.best_epoch}" if t.best_phase else "",
              "seconds": None if t.duration_s is None else f"{t.duration_s:.1f}",
              "data": (t.data_path or {}).get("status", ""),
              "hyperparameters": t.hyperparameters_line()} for t in selected]
    print_table(table, ["trial", "status", search.objective, "best", "seconds", "data", "hyperparameters"])


@main.command()
@click.argument("search_ref", metavar="SEARCH")
@STORE_OPTION
@JSON_OPTION
@handle_errors(needs_keras=False)
def best(search_ref: str, store: str, as_json: bool) -> None:
    """Show the best completed trial of SEARCH (and its refit or ensemble, when the search made one)."""
    from autotl.insight.summary import best_trial_lines
    from autotl.search import ensemble
    from autotl.search.refit import RESULT_KEY
    from autotl.store import Store, as_dict

    opened = Store(store)
    search = opened.get_search(search_ref)
    trial = opened.best_trial(search)
    if trial is None:
        raise AutotlError(f"search {search.name!r} has no completed trial yet")
    refit = search.config.get(RESULT_KEY)
    refit = refit if refit and refit.get("trial") == trial.number else None
    if as_json:
        click.echo(json.dumps({**as_dict(trial), "search": search.name, "objective": search.objective,
                               "refit": refit, "ensemble": search.config.get(ensemble.RESULT_KEY)}, indent=2))
        return
    for line in best_trial_lines(search, trial, opened.list_trials(search.id)):
        click.echo(line)


@main.command()
@click.argument("search_ref", metavar="SEARCH")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMATS),
              default=DEFAULT_FORMATS,
              help="Format(s) to write (repeatable): keras (model.keras), savedmodel (saved_model/), "
                   "onnx (model.onnx), tflite (model.tflite, LiteRT).")
@click.option("--refit/--no-refit", default=True,
              help="Export the best trial's refit on all labelled examples when the search made one "
                   "(search --refit); --no-refit exports the trial as validated.")
@click.option("--ensemble/--no-ensemble", default=True,
              help="Export the search's ensemble when it chose one (search --ensemble-size); --no-ensemble: the best "
                   "trial alone.")
@click.option("--quantize", type=click.Choice(("float16", "int8")),
              help="Quantize the tflite and onnx models (int8: weights, activations at run time), and report each "
                   "format's size, latency and validation accuracy (README: Exports).")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="With --quantize int8: refuse a model that loses more validation accuracy than this.")
@STORE_OPTION
@PLUGIN_OPTION
@handle_errors(needs_keras=False)  # imported once the search and --out pass the checks that need no Keras
def export(search_ref: str, out_dir: str, formats: tuple[str, ...], store: str, plugin_files: tuple[str, ...],
           refit: bool, ensemble: bool, quantize: str | None, max_accuracy_drop: float) -> None:
    """Export the best model of SEARCH, with its manifest autotl.json."""
    from autotl.export import exporter
    from autotl.insight.summary import exported_what
    from autotl.backbones.registry import load_registry
    from autotl.store import Store

    if quantize and not {"tflite", "onnx"} & set(formats):
        raise UsageError("--quantize applies to the tflite and onnx formats: add --format tflite or --format onnx")
    opened = Store(store)
    search, _, _ = exporter.check_exportable(opened, search_ref, formats, Path(out_dir).expanduser())
    import_keras_quietly()
    plugin_files = list(plugin_files) or search.config.get("plugin_files", [])
    result = exporter.export(opened, search_ref, out_dir, formats, load_registry(plugin_files), plugin_files,
                             refit=refit, ensemble=ensemble, quantize=quantize, max_accuracy_drop=max_accuracy_drop)
    click.echo(f"exported {exported_what(result.manifest)} of {search.name!r} to {result.directory}")
    for name in sorted(result.manifest["files"]):
        click.echo(f"  {name}")
    if quantize:
        from autotl.export.quantization import describe

        measured = result.manifest["quantization"]
        click.echo(f"quantized ({quantize}); measured on {measured['validation_examples']} validation examples:")
        for line in describe(measured):
            click.echo(line)


@main.command()
@click.argument("search_ref", metavar="SEARCH")
@click.option("--out", "out_dir", required=True, type=click.Path(), help="Folder to write index.html and plots/ into.")
@STORE_OPTION
@handle_errors(needs_keras=False)
def report(search_ref: str, out_dir: str, store: str) -> None:
    """Write an HTML report of SEARCH (a name or id): progress, hyperparameters, learning curves,
    confusion matrix of the best model, and every trial. It opens offline (plots are PNG files beside it)."""
    from autotl.insight.report import write_report
    from autotl.store import Store

    result = write_report(Store(store), search_ref, out_dir)
    for note in result.notes:
        click.echo(f"Warning: {note}", err=True)
    click.echo(f"report written to {result.index} ({len(result.plots)} plots)")


@main.command()
@PLUGIN_OPTION
@JSON_OPTION
@handle_errors
def plugins(plugin_files: tuple[str, ...], as_json: bool) -> None:
    """List the backbone plugins autotl can use, and those that failed to load.

    A family (``keras:NAME``) offers many backbones under one prefix: its names follow.
    """
    from autotl.backbones.registry import load_registry

    listing = load_registry(plugin_files).listing()
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    print_table(listing["backbones"], ["name", "modality", "default_weights", "source"])
    for family in listing["families"]:
        click.echo(f"\n{family['name']}: {family['description']} ({family['source']})")
        click.echo(textwrap.fill(", ".join(family["variants"]), width=100, initial_indent="  ",
                                 subsequent_indent="  "))
    for failure in listing["failed"]:
        click.echo(f"Warning: plugin {failure['name']!r} from {failure['source']} failed to load: "
                   f"{failure['error']}", err=True)


main.add_command(cache)
for command in (predict, evaluate, serve):
    main.add_command(command)


@main.command()
@click.argument("search_ref", metavar="SEARCH")
@STORE_OPTION
@click.option("--yes", is_flag=True, help="Delete without asking first.")
@handle_errors(needs_keras=False)
def delete(search_ref: str, store: str, yes: bool) -> None:
    """Delete SEARCH (a name or id): its trials, epochs and artifacts in the store, and its work folder with
    the checkpoints. Exports made with `autotl export` stay where they are."""
    from autotl.search.lock import SearchLock
    from autotl.store import Store

    opened = Store(store)
    search = opened.get_search(search_ref)
    workdir = Path(search.workdir)
    what = f"search {search.name!r} ({len(opened.list_trials(search.id))} trials) and its folder {workdir}"
    if not yes:
        click.confirm(f"delete {what}?", abort=True)
    with SearchLock(workdir, search.name):  # not while it runs
        opened.delete_search(search.id)
        shutil.rmtree(workdir, ignore_errors=True)
    click.echo(f"deleted {what}")

