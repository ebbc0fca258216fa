"""The Python API: run a search, resume it, or join one as a distributed worker. The CLI
(`autotl.cli`) is a thin shell over these functions.

    from autotl import api
    result = api.search(api.SearchConfig(data="photos/", backbone="efficientnet_lite0", max_trials=5))
    print(result.best.value, result.best.hyperparameters)

`search`, `resume` and `join` are the entry points; the configuration they take lives in
`autotl.config`. Exporting the best model is `autotl.export.exporter.export`, and predicting
with an export `autotl.runtime.loaded.predict`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

from autotl import data as data_module
from autotl.search import space as space_module
from autotl.config import (Prepared, SearchConfig, check_resumable, check_same_options, config_from_record,
                           config_record, extends, load_split, planned_finetune_epochs, split_fingerprint)
from autotl.search.distributed import (check_reachable, default_tuner_id, parse_address, run_chief,
                                       worker_environment)
from autotl.errors import AutotlError, UsageError, first_line
from autotl.search.budget import Deadline, describe_budget, format_duration
from autotl.search.lock import SearchLock
from autotl.search.records import Objective, TrainingPlan, TrialData
from autotl.insight.progress import Reporter
from autotl.backbones.registry import Registry, load_registry
from autotl.store import COMPLETED, DEFAULT_STORE, FAILED, INTERRUPTED, Search, Store, Trial
from autotl.search.fleet import trial_process
from autotl.workarounds import hyperband_first_full_trial
from autotl.search.trial_process import TrialProcess, TrialProcessSpec, remove_trial_data, save_trial_data

__all__ = ["SearchConfig", "SearchResult", "config_from_record", "join", "load_split", "objective_direction",
           "resume", "search"]

TRIAL_DATA_DIR = "data"  # inside the search's work folder, while trial workers run
DEADLINE_KEY = "deadline_at"  # in a time-limited search's stored config: when its current run must end


@dataclass
class SearchResult:
    store: Store
    search: Search
    best: Trial | None
    trials: list[Trial]
    resumed: bool = False  # a search of that name was continued (an unfinished one, or a finished one extended)
    already_finished: bool = False  # it had completed before: nothing was run
    extended: bool = False  # a finished search given more trials or time
    reran: int = 0  # trials this run found interrupted and ran again


def objective_direction(objective: str) -> str:
    return "min" if objective.endswith("loss") else "max"


def search(config: SearchConfig, store: Store | str = DEFAULT_STORE, reporter: Reporter | None = None,
           registry: Registry | None = None, started_at: float | None = None) -> SearchResult:
    """Run a whole search and return what the store holds about it.

    If the store already holds an unfinished search of `config.name` (killed, interrupted,
    stopped by failures), it is resumed: its completed trials count, the trials that were
    running are marked interrupted and run again. A search that had completed is returned as it is.
    `config.time_limit` counts from `started_at` (a `time.time()`; default: now): the CLI passes
    the moment its process started, so that the limit covers its imports too.
    """
    config.validate()
    deadline = Deadline.after(config.time_limit, since=started_at) if config.time_limit is not None else None
    store = store if isinstance(store, Store) else Store(store)
    reporter = reporter or Reporter()
    existing = _find_search(store, config.name)
    if existing is not None:
        check_same_options(existing, config)
        if existing.status == COMPLETED and not extends(existing, config):
            return _result(store, existing, already_finished=True)
    # The trial process starts now, so that its imports overlap the data loading; with --workers there is none
    # here (the trials run in the `autotl worker` processes).
    trials_here = config.trials_per_worker if config.workers == 0 else 0
    with trial_process(trials_here, config.worker_memory_growth_mb) as process:
        prepared = _prepare(config, registry or load_registry(config.plugin_files))
        if existing is not None:
            check_resumable(existing, config, prepared)
        row = existing or _create_search_row(store, config, prepared)
        extended, reran = existing is not None and extends(existing, config), 0
        with SearchLock(row.workdir, row.name):
            if existing is not None:
                row, reran = _reopen(store, row, config, reporter)
            if deadline is not None:  # where workers that join read it
                row = store.update_search_config(row.id, {DEADLINE_KEY: deadline.at})
            _run_search(config, store, row, prepared, reporter, process, resume=existing is not None,
                        deadline=deadline)
            ensemble = _choose_ensemble(config, store, store.get_search(row.id), prepared, reporter)
            if config.refit and ensemble:
                reporter.message("no refit: the ensemble is exported, and a refit of its members is not made")
            elif config.refit:
                _refit(config, store, store.get_search(row.id), prepared, reporter, deadline)
    best = store.best_trial(row)
    if best is None:
        store.finish_search(row.id, FAILED, "no trial completed")
        raise AutotlError(f"search {row.name!r}: no trial completed (see `autotl trials {row.name}`)")
    store.finish_search(row.id, COMPLETED)
    return _result(store, store.get_search(row.id), resumed=existing is not None, extended=extended, reran=reran)


def resume(search_ref: str | int, store: Store | str = DEFAULT_STORE, reporter: Reporter | None = None,
           registry: Registry | None = None, started_at: float | None = None, *, max_trials: int | None = None,
           time_limit: float | None = None) -> SearchResult:
    """Continue a search (by name or id) with the configuration it was started with; `max_trials` or
    `time_limit`, where given, replace the stored ones, and extend a finished search that they ask more of.
    A time limit without `max_trials` lifts the trial cap, as ``autotl search --time-limit`` has none."""
    store = store if isinstance(store, Store) else Store(store)
    config = config_from_record(store.get_search(search_ref), max_trials=max_trials, time_limit=time_limit)
    if time_limit is not None and max_trials is None:
        config.max_trials = None
    return search(config, store, reporter, registry, started_at)


def join(search_ref: str | int, chief: str, store: Store | str = DEFAULT_STORE, *, data: str | None = None,
         workdir: str | None = None, tuner_id: str | None = None, reporter: Reporter | None = None,
         registry: Registry | None = None) -> int:
    """Run trials of a distributed search as a worker of the chief at `chief` (HOST:PORT).

    The search's configuration comes from the store; `data` points at this machine's copy
    of the data (it must be the same data: checked by fingerprint). Returns how many
    trials this worker completed.
    """
    store = store if isinstance(store, Store) else Store(store)
    row, (host, port) = check_joinable(search_ref, chief, store)
    config = config_from_record(row, data=data)
    if config.tensorboard_dir is not None:
        from autotl.insight.board import require_tensorboard

        require_tensorboard()
    reporter = reporter or Reporter()
    with trial_process(config.trials_per_worker, config.worker_memory_growth_mb) as process:
        prepared = _prepare(config, registry or load_registry(config.plugin_files))
        if split_fingerprint(prepared.train, prepared.val) != row.dataset_fingerprint:
            raise AutotlError(f"the data at {config.data} differ from the data search {row.name!r} was started "
                              "on (fingerprints differ); point --data at the same data")
        if workdir is not None:
            row.workdir = str(Path(workdir).expanduser().resolve() / row.name)
        os.environ.update(worker_environment(tuner_id or default_tuner_id(), host, port))
        deadline_at = row.config.get(DEADLINE_KEY) if config.time_limit is not None else None
        deadline = Deadline(deadline_at) if deadline_at is not None else None
        return _run_tuner(config, store, row, prepared, reporter, process, resume=True, role="worker",
                          deadline=deadline)


def check_joinable(search_ref: str | int, chief: str, store: Store) -> tuple[Search, tuple[str, int]]:
    """The search to join and its chief's address, once the search is known to be unfinished and the
    chief to answer: the checks `join` makes before anything slow (the CLI's worker, before Keras' imports)."""
    host, port = parse_address(chief)
    row = store.get_search(search_ref)
    if row.status == COMPLETED:
        raise AutotlError(f"search {row.name!r} has already finished; there is nothing to join")
    check_reachable(host, port)
    return row, (host, port)


def _find_search(store: Store, name: str | None) -> Search | None:
    if name is None:
        return None
    try:
        return store.get_search(name)
    except AutotlError:
        return None


def _result(store: Store, row: Search, **flags: bool | int) -> SearchResult:
    return SearchResult(store, row, store.best_trial(row), store.list_trials(row.id), **flags)


def _reopen(store: Store, row: Search, config: SearchConfig, reporter: Reporter) -> tuple[Search, int]:
    """Take an unfinished search up again (the trials it was running when it stopped are interrupted, and run
    again), or a finished one to more trials; returns the search and how many trials it found interrupted."""
    interrupted = store.interrupt_running_trials(row.id, "interrupted: the search stopped during this trial")
    completed = store.count_trials(row.id, COMPLETED)
    if extends(row, config):
        before = describe_budget(row.config.get("max_trials"), row.config.get("time_limit"))
        reporter.message(f"extending search {row.name!r} from {before} to "
                         f"{describe_budget(config.max_trials, config.time_limit)}: {completed} trials completed")
        budget = {"max_trials": config.max_trials, "time_limit": config.time_limit}
        return store.reopen_search(row.id, budget), interrupted
    again = f"; {interrupted} interrupted trial(s) will run again" if interrupted else ""
    of_cap = f" of {config.max_trials}" if config.max_trials is not None else ""
    reporter.message(f"resuming search {row.name!r}: {completed}{of_cap} trials completed{again}")
    return store.reopen_search(row.id), interrupted


def _run_search(config: SearchConfig, store: Store, row: Search, prepared: "Prepared", reporter: Reporter,
                process: TrialProcess | None, resume: bool, deadline: Deadline | None) -> None:
    """Run the tuner and record how the search ended; errors leave as one-line AutotlErrors."""
    from autotl.search.tuner import TooManyFailures

    best = store.best_trial(row)  # a resumed or extended search's best so far counts its earlier trials
    reporter.search_started(row.name, store.display_url, config.max_trials, deadline,
                            best=best.value if best is not None else None, time_limit=config.time_limit)
    reporter.examples_skipped(data_module.skipped_of(prepared.train, prepared.val))
    try:
        _run_tuner(config, store, row, prepared, reporter, process, resume=resume,
                   role="chief" if config.workers > 0 else "single", deadline=deadline)
    except KeyboardInterrupt:
        store.interrupt_running_trials(row.id, "interrupted by the user")
        store.finish_search(row.id, INTERRUPTED, "interrupted by the user")
        raise
    except TooManyFailures as exc:
        store.interrupt_running_trials(row.id, "interrupted: the search stopped")
        store.finish_search(row.id, FAILED, str(exc))
        raise AutotlError(f"search {row.name!r} stopped: {exc}") from None
    except Exception as exc:
        store.interrupt_running_trials(row.id, "interrupted: the search stopped")
        store.finish_search(row.id, FAILED, first_line(exc))
        if isinstance(exc, AutotlError):
            raise
        raise AutotlError(f"search {row.name!r} failed: {first_line(exc)}") from exc


def _prepare(config: SearchConfig, registry: Registry) -> Prepared:
    backbone = registry.get(config.backbone)
    weights = config.weights or backbone.default_weights
    user_space = space_module.load_space_file(config.space_file) if config.space_file else None
    options = {"image_size": _image_size(config.image_size), "sequence_length": config.sequence_length}
    preprocessor = backbone.preprocessor(weights, options)
    # After the preprocessor: a plugin may size its proposals (e.g. BERT's layer count) by the weights.
    # Checked before the data load and the backbone build, so that a bad space file fails fast;
    # built again once the backbone's block count sets the default depths.
    space_module.build_space(backbone.modality, backbone.search_space(weights), user_space)
    train, val = load_split(config, backbone.modality, preprocessor)
    blocks = _check_build(backbone, weights, preprocessor)
    space = space_module.build_space(backbone.modality, backbone.search_space(weights), user_space, blocks=blocks)
    if user_space and "unfreeze_depth" in user_space:  # a plugin's own range may exceed them: it is capped
        space_module.check_depth_within(space, blocks, backbone.name)
    _check_precision(config.precision)
    return Prepared(backbone, weights, options, preprocessor, space, train, val)


def _create_search_row(store: Store, config: SearchConfig, prepared: Prepared) -> Search:
    name = config.name or _default_name(prepared.backbone.name)
    return store.create_search(
        name=name, backbone=prepared.backbone.name, weights=prepared.weights, modality=prepared.backbone.modality,
        dataset_path=str(Path(config.data).resolve()),
        dataset_fingerprint=split_fingerprint(prepared.train, prepared.val),
        labels=list(prepared.train.class_names), config=config_record(config, prepared),
        objective=config.objective, direction=objective_direction(config.objective),
        workdir=str(Path(config.workdir).expanduser().resolve() / name),
    )


def _run_tuner(config: SearchConfig, store: Store, row: Search, prepared: Prepared, reporter: Reporter,
               process: TrialProcess | None, *, resume: bool, role: str, deadline: Deadline | None) -> int:
    """Returns how many trials completed here. role: "single" (oracle and trials here), "chief"
    (oracle here, trials in worker processes) or "worker" (trials here, oracle at the chief).
    `deadline`: when a time-limited search stops handing out trials and stops those running."""
    # Keras and KerasTuner are imported here, not at module level, so that
    # `autotl --help` and the listing commands stay fast.
    import keras_tuner as kt

    from autotl.search.hypermodel import TransferHyperModel
    from autotl.search.portfolio import first_trials, portfolio_for
    from autotl.search.tuner import TransferTuner, make_oracle, open_oracle

    num_classes = len(prepared.train.class_names)
    hypermodel = TransferHyperModel(prepared.backbone, prepared.weights, prepared.preprocessor, num_classes,
                                    prepared.space)
    oracle = make_oracle(config.tuner, kt.Objective(row.objective, row.direction), config.max_trials,
                         config.epochs, config.seed)
    oracle.deadline = deadline
    if config.refit:
        from autotl.search.refit import reserve_seconds

        oracle.reserve = lambda: reserve_seconds(store, row)
    if config.portfolio and config.tuner != "hyperband":
        oracle.portfolio = first_trials(prepared.space, portfolio_for(prepared.backbone.modality))
    oracle.completed_durations = lambda: store.completed_durations(row.id)
    workdir = Path(row.workdir)
    plan = _training_plan(config, prepared.backbone, row.name, deadline)
    if role != "worker":
        open_oracle(oracle, hypermodel, workdir, resume)
        _warn_if_budget_too_small(config, oracle, reporter)
        if plan.tensorboard_dir is not None:
            from autotl.insight.board import write_experiment

            write_experiment(plan.tensorboard_dir, prepared.space, Objective(row.objective, row.direction))
    if role == "chief":
        run_chief(oracle, store, row, reporter, address=config.oracle_address, workers=config.workers,
                  max_failures=config.max_failures)
        _say_if_stopped_by_deadline(oracle, config, store, row, reporter)
        return 0
    data = _trial_data(prepared)
    data_dir = workdir / (TRIAL_DATA_DIR if role == "single" else f"{TRIAL_DATA_DIR}-{os.getpid()}")
    if process is not None:
        _configure_trial_process(process, store, row, prepared, plan, data, config.plugin_files, data_dir)
    tuner = None
    try:
        tuner = TransferTuner(oracle, hypermodel, store=store, search_id=row.id, plan=plan, reporter=reporter,
                              workdir=workdir, max_trials=config.max_trials, max_failures=config.max_failures,
                              trial_process=process)
        tuner.search(data, verbose=0)
        _say_if_stopped_by_deadline(oracle, config, store, row, reporter)
        return tuner.completed_here
    finally:
        if tuner is not None:
            tuner.runner.close()
        if process is not None:
            process.close()
            remove_trial_data(data_dir)


def _choose_ensemble(config: SearchConfig, store: Store, row: Search, prepared: Prepared, reporter: Reporter) -> bool:
    """Choose the ensemble of the kept trials (`autotl.search.ensemble`); whether exports will build it."""
    if config.ensemble_size < 2:
        return False
    from autotl.search.ensemble import choose

    choice = choose(store, row, prepared.val.labels, config.ensemble_size, reporter.message)
    return bool(choice and choice.used)


def _refit(config: SearchConfig, store: Store, row: Search, prepared: Prepared, reporter: Reporter,
           deadline: Deadline | None) -> None:
    """Train the best trial's configuration again on training and validation data (`autotl.search.refit`),
    here in the search process."""
    from autotl.search.hypermodel import TransferHyperModel
    from autotl.search.refit import refit_best
    from autotl.search.runner import TrialRunner

    hypermodel = TransferHyperModel(prepared.backbone, prepared.weights, prepared.preprocessor,
                                    len(prepared.train.class_names), prepared.space)
    objective = Objective(row.objective, row.direction)
    runner = TrialRunner(hypermodel, _training_plan(config, prepared.backbone, row.name, None), objective, store, row.id,
                         Path(row.workdir))
    try:
        refit_best(store, row, runner, _trial_data(prepared), objective, Path(row.workdir), deadline,
                   reporter.message)
    finally:
        runner.close()


def _trial_data(prepared: Prepared) -> TrialData:
    """The training and validation examples as the model takes them (the preprocessor's output)."""
    preprocess = prepared.preprocessor
    return TrialData(preprocess(prepared.train.examples), prepared.train.labels,
                     preprocess(prepared.val.examples), prepared.val.labels)


def _say_if_stopped_by_deadline(oracle, config: SearchConfig, store: Store, row: Search, reporter: Reporter) -> None:
    if oracle.stopped_by_deadline:
        another = "another trial and the refit" if config.refit else "another"
        completed = store.count_trials(row.id, COMPLETED)
        reporter.message(f"--time-limit {format_duration(config.time_limit)} reached: "
                         f"{completed} trial{'' if completed == 1 else 's'} completed, and {another} would not have "
                         f"finished in the {format_duration(max(0.0, oracle.deadline.left()))} left")


def _warn_if_budget_too_small(config: SearchConfig, oracle, reporter: Reporter) -> None:
    """Hyperband sizes its brackets by --epochs, and --max-trials may stop it before any trial trains them all."""
    if config.tuner != "hyperband" or config.max_trials is None:
        return
    needed, first_epochs = hyperband_first_full_trial(oracle)
    if config.max_trials < needed:
        reporter.message(f"warning: --tuner hyperband trains its first trials for {first_epochs} head epoch(s) and "
                         f"only trial {needed} for all --epochs {oracle.max_epochs}: --max-trials {config.max_trials} "
                         f"stops before; give --max-trials {needed} or more, or --tuner random or bayesian")


def _training_plan(config: SearchConfig, backbone, search_name: str, deadline: Deadline | None) -> TrainingPlan:
    tensorboard_dir = None
    if config.tensorboard_dir is not None:
        tensorboard_dir = str(Path(config.tensorboard_dir).expanduser().resolve() / search_name)
    return TrainingPlan(epochs=config.epochs,
                        finetune_epochs=planned_finetune_epochs(config, backbone),
                        batch_size=config.batch_size, patience=config.patience, seed=config.seed,
                        precision=config.precision, cache=config.cache,
                        cache_dir=str(Path(config.cache_dir).expanduser().resolve()) if config.cache_dir else None,
                        cache_storage=config.cache_dtype,
                        cache_memory_mb=_cache_memory_mb(config.cache_memory_mb), tensorboard_dir=tensorboard_dir,
                        deadline=deadline.at if deadline is not None else None,
                        kept_checkpoints=config.ensemble_size, checkpoint_soup=config.checkpoint_soup)


def _configure_trial_process(process: TrialProcess, store: Store, row: Search, prepared: Prepared,
                             plan: TrainingPlan, data: TrialData, plugin_files: list[str], data_dir: Path) -> None:
    save_trial_data(data, data_dir)
    process.configure(TrialProcessSpec(
        store_url=store.url, search_id=row.id, backbone=prepared.backbone.name, weights=prepared.weights,
        plugin_files=[str(Path(p).resolve()) for p in plugin_files],
        preprocessor_options=prepared.preprocessor_options, num_classes=len(prepared.train.class_names),
        space=prepared.space, plan=plan, objective=Objective(row.objective, row.direction),
        workdir=row.workdir, data_dir=str(data_dir)))


def _check_build(backbone, weights, preprocessor) -> int:
    """Build the backbone once before the search, so a bad weights source fails fast in one line;
    returns its number of blocks."""
    try:
        model = backbone.build(weights, preprocessor)
        blocks = backbone.blocks(model)
    except AutotlError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's failure, reported in one line
        raise AutotlError(f"backbone {backbone.name!r} failed to build from weights {weights!r}: "
                          f"{first_line(exc)}") from None
    if not blocks:
        raise AutotlError(f"backbone {backbone.name!r} reports no blocks to fine-tune")
    from autotl.search.hypermodel import fresh_inputs

    try:
        fresh_inputs(model)
    except AutotlError as exc:
        raise AutotlError(f"backbone {backbone.name!r}: {exc}") from None
    del model
    import keras

    keras.utils.clear_session()
    return len(blocks)


def _cache_memory_mb(requested: int | None) -> int:
    if requested is not None:
        return requested
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 4 / 2**20)
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows)
        return 4096


def _check_precision(precision: str) -> None:
    """Run one small layer under the dtype policy, so an unsupported one fails before any trial."""
    if precision == "float32":
        return
    import keras
    import numpy as np

    from autotl.search.runner import dtype_policy

    try:
        with dtype_policy(precision):
            keras.ops.convert_to_numpy(keras.layers.Dense(2)(np.ones((1, 2), "float32")))
    except Exception as exc:  # noqa: BLE001 - the backend's refusal, in one line
        raise UsageError(f"precision {precision} does not run on the {keras.backend.backend()} backend here: "
                         f"{first_line(exc)}") from None


def _image_size(value: int | None):
    return None if value is None else (int(value), int(value))


def _default_name(backbone: str) -> str:
    """The backbone and the time, made fit to name a folder (``keras:ConvNeXtTiny`` -> ``keras-ConvNeXtTiny-...``)."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', backbone).strip('-')}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
