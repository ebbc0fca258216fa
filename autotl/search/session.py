"""One run of a search, as a straight line of stages: prepare, plan, run, choose, finish.

`autotl.api.search` reads like KerasTuner's `Tuner.search`:

    session = SearchSession.begin(config, store, reporter, started_at)
    with trial_process(...) as process:
        session.prepare(registry)   # the backbone, the data and the space; the store's row
        with session.locked():
            session.plan()          # the budget, the oracle and its portfolio, the training plan
            session.run(process)    # the trials
            session.choose()        # the ensemble, or the refit
    return session.finish()         # the best trial and the search's status

What the stages share (the configuration, the store and the search's row, the prepared data,
the deadline, the oracle) lives on the session instead of passing from helper to helper. A
distributed worker (`autotl.api.join`) runs the same session in the "worker" role: prepare,
plan, run, with its oracle at the chief.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from autotl import data as data_module
from autotl.backbones.registry import Registry
from autotl.config import (Prepared, SearchConfig, check_resumable, check_same_options, config_record, extends,
                           planned_finetune_epochs, split_fingerprint)
from autotl.errors import AutotlError, first_line
from autotl.insight.progress import Reporter
from autotl.search.budget import Deadline, TrialCost, describe_budget, format_duration
from autotl.search.lock import SearchLock
from autotl.search.preparation import prepare
from autotl.search.records import Objective, TrainingPlan, TrialData
from autotl.search.trial_process import TrialProcess, TrialProcessSpec, remove_trial_data, save_trial_data
from autotl.store import COMPLETED, FAILED, INTERRUPTED, Search, Store, Trial
from autotl.store.queries import ONE_SE, no_better_than_a_guess

TRIAL_DATA_DIR = "data"  # inside the search's work folder, while trial workers run
DEADLINE_KEY = "deadline_at"  # in a time-limited search's stored config: when its current run must end
SINGLE, CHIEF, WORKER = "single", "chief", "worker"  # where the oracle and the trials run (`SearchSession.role`)


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


@dataclass
class SearchSession:
    """One run of one search. `role`: "single" (oracle and trials here), "chief" (oracle here, trials in
    worker processes) or "worker" (trials here, oracle at the chief)."""

    config: SearchConfig
    store: Store
    reporter: Reporter
    deadline: Deadline | None
    role: str = SINGLE
    existing: Search | None = None  # the stored search of that name, when this run continues it
    row: Search | None = None
    prepared: Prepared | None = None
    oracle: Any = None
    training: TrainingPlan | None = None
    reran: int = 0  # trials found interrupted, run again
    completed_before: int = 0  # the stored search's completed trials, when this run continues it
    completed_here: int = 0

    @classmethod
    def begin(cls, config: SearchConfig, store: Store | str, reporter: Reporter,
              started_at: float | None = None) -> "SearchSession":
        """The session of `config`'s search: a new one, or the stored search of its name to continue.
        `config.time_limit` counts from `started_at` (a ``time.time()``; default: now)."""
        config.validate()  # before the store: a refused configuration leaves no store behind
        store = store if isinstance(store, Store) else Store(store)
        deadline = Deadline.for_trials(config.time_limit, since=started_at) if config.time_limit is not None else None
        existing = find_search(store, config.name)
        completed = store.count_trials(existing.id, COMPLETED) if existing is not None else 0
        if existing is not None:
            check_same_options(existing, config, completed)
        role = CHIEF if config.workers > 0 else SINGLE
        return cls(config, store, reporter, deadline, role=role, existing=existing, row=existing,
                   completed_before=completed)

    @property
    def already_finished(self) -> bool:
        """A completed search asked for nothing more: there is nothing to run."""
        return (self.existing is not None and self.existing.status == COMPLETED
                and not extends(self.existing, self.config, self.completed_before))

    @property
    def trials_here(self) -> int:
        """How many trials the trial process of this machine may run before it is replaced (0: none here;
        with --workers, the trials run in the `autotl worker` processes)."""
        return 0 if self.role == CHIEF else self.config.trials_per_worker

    # ----------------------------------------------------------------------------------------- prepare

    def prepare(self, registry: Registry) -> None:
        """The backbone, the data and the space; then the search's row in the store (a new one, or the
        stored search once it is known that this data and space may continue it)."""
        self.prepared = prepare(self.config, registry)
        if self.role == WORKER:
            if split_fingerprint(self.prepared.train, self.prepared.val) != self.row.dataset_fingerprint:
                raise AutotlError(f"the data at {self.config.data} differ from the data search {self.row.name!r} "
                                  "was started on (fingerprints differ); point --data at the same data")
            return
        if self.existing is not None:
            check_resumable(self.existing, self.config, self.prepared)
        self.row = self.existing or self._create_row()

    def _create_row(self) -> Search:
        config, prepared = self.config, self.prepared
        name = config.name or default_name(prepared.backbone.name)
        return self.store.create_search(
            name=name, backbone=prepared.backbone.name, weights=prepared.weights,
            modality=prepared.backbone.modality, dataset_path=str(Path(config.data).resolve()),
            dataset_fingerprint=split_fingerprint(prepared.train, prepared.val),
            labels=list(prepared.train.class_names), config=config_record(config, prepared),
            objective=config.objective, direction=objective_direction(config.objective),
            workdir=str(Path(config.workdir).expanduser().resolve() / name),
        )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One process at a time runs a search (`autotl.search.lock`)."""
        with SearchLock(self.row.workdir, self.row.name):
            yield

    # -------------------------------------------------------------------------------------------- plan

    def plan(self) -> None:
        """What this run will do: the search's row reopened with its budget, the deadline stored where
        workers read it, the oracle with its portfolio and its rules for the time limit, and the plan each
        trial trains by."""
        if self.role != WORKER:
            if self.existing is not None:
                self._reopen()
            if self.deadline is not None:
                self.row = self.store.update_search_config(self.row.id, {DEADLINE_KEY: self.deadline.at})
        self.oracle = self._oracle()
        self.training = training_plan(self.config, self.prepared.backbone, self.row.name, self.deadline)
        if self.role != WORKER:
            self._open_oracle()

    def _reopen(self) -> None:
        """Take an unfinished search up again (the trials it was running when it stopped are interrupted,
        and run again), or a finished one to more trials or time."""
        store, row, config = self.store, self.row, self.config
        self.reran = store.interrupt_running_trials(row.id, "interrupted: the search stopped during this trial")
        completed = self.completed_before
        if extends(row, config, completed):
            before = describe_budget(row.config.get("max_trials"), row.config.get("time_limit"))
            self.reporter.message(f"extending search {row.name!r} from {before} to "
                                  f"{describe_budget(config.max_trials, config.time_limit)}: "
                                  f"{completed} trials completed")
            self.row = store.reopen_search(row.id, {"max_trials": config.max_trials,
                                                    "time_limit": config.time_limit})
            return
        again = f"; {self.reran} interrupted trial(s) will run again" if self.reran else ""
        of_cap = f" of {config.max_trials}" if config.max_trials is not None else ""
        self.reporter.message(f"resuming search {row.name!r}: {completed}{of_cap} trials completed{again}")
        self.row = store.reopen_search(row.id)

    def _oracle(self):
        import keras_tuner as kt

        from autotl.search.portfolio import first_trials, heads_first, portfolio_for
        from autotl.search.tuner import make_oracle

        config, store, row = self.config, self.store, self.row
        oracle = make_oracle(config.tuner, kt.Objective(row.objective, row.direction), config.max_trials,
                             config.epochs, config.seed)
        oracle.deadline = self.deadline
        if config.refit:
            from autotl.search.refit import reserve_seconds

            oracle.reserve = lambda: reserve_seconds(store, row)
        if config.portfolio and config.tuner != "hyperband":
            entries = portfolio_for(self.prepared.backbone.modality)
            if config.selection == ONE_SE:  # the rule prefers simpler models: make sure the heads ran
                entries = heads_first(entries)
            oracle.portfolio = first_trials(self.prepared.space, entries)
        oracle.completed_costs = lambda: [TrialCost(*cost) for cost in store.completed_trial_costs(row.id)]
        oracle.fill_time = config.fill_time
        return oracle

    def _open_oracle(self) -> None:
        from autotl.search.tuner import open_oracle

        open_oracle(self.oracle, self.hypermodel, Path(self.row.workdir), self.existing is not None)
        self._warn_if_budget_too_small()
        if self.training.tensorboard_dir is not None:
            from autotl.insight.board import write_experiment

            write_experiment(self.training.tensorboard_dir, self.prepared.space, self.objective)

    def _warn_if_budget_too_small(self) -> None:
        """Hyperband sizes its brackets by --epochs, and --max-trials may stop it before any trial trains
        them all."""
        from autotl.workarounds import hyperband_first_full_trial

        config = self.config
        if config.tuner != "hyperband" or config.max_trials is None:
            return
        needed, first_epochs = hyperband_first_full_trial(self.oracle)
        if config.max_trials < needed:
            self.reporter.message(
                f"warning: --tuner hyperband trains its first trials for {first_epochs} head epoch(s) and only "
                f"trial {needed} for all --epochs {self.oracle.max_epochs}: --max-trials {config.max_trials} "
                f"stops before; give --max-trials {needed} or more, or --tuner random or bayesian")

    # --------------------------------------------------------------------------------------------- run

    def run(self, process: TrialProcess | None) -> int:
        """Run the trials; returns how many completed here. A search (not a worker) records how it ended,
        and its errors leave as one-line AutotlErrors."""
        if self.role == WORKER:
            return self._run_trials(process)
        from autotl.search.tuner import TooManyFailures

        store, row = self.store, self.row
        best = store.best_trial(row)  # a resumed or extended search's best so far counts its earlier trials
        self.reporter.search_started(row.name, store.display_url, self.config.max_trials, self.deadline,
                                     best=best.value if best is not None else None,
                                     time_limit=self.config.time_limit)
        self.reporter.examples_skipped(data_module.skipped_of(self.prepared.train, self.prepared.val))
        for note in self.prepared.notes:
            self.reporter.message(note)
        try:
            if self.config.convex_head:
                self._run_convex_head()
            return self._run_trials(process)
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

    def _run_trials(self, process: TrialProcess | None) -> int:
        from autotl.search.distributed import run_chief
        from autotl.search.tuner import TransferTuner

        config, row = self.config, self.row
        if self.role == CHIEF:
            run_chief(self.oracle, self.store, row, self.reporter, address=config.oracle_address,
                      workers=config.workers, max_failures=config.max_failures)
            self._say_if_stopped_by_deadline()
            return 0
        workdir = Path(row.workdir)
        data = self.trial_data()
        data_dir = workdir / (TRIAL_DATA_DIR if self.role == SINGLE else f"{TRIAL_DATA_DIR}-{os.getpid()}")
        if process is not None:
            self._configure_trial_process(process, data, data_dir)
        tuner = None
        try:
            tuner = TransferTuner(self.oracle, self.hypermodel, store=self.store, search_id=row.id,
                                  plan=self.training, reporter=self.reporter, workdir=workdir,
                                  max_trials=config.max_trials, max_failures=config.max_failures,
                                  trial_process=process)
            tuner.search(data, verbose=0)
            self._say_if_stopped_by_deadline()
            self.completed_here = tuner.completed_here
            return tuner.completed_here
        finally:
            if tuner is not None:
                tuner.runner.close()
            if process is not None:
                process.close()
                remove_trial_data(data_dir)

    def _run_convex_head(self) -> None:
        """The convex head (`autotl.search.convex`) as the search's first trial, here in the search process:
        seconds on the cached activations, which the trials then find in the cache. Once per search."""
        from autotl.search import convex
        from autotl.search.runner import TrialRunner

        store, row = self.store, self.row
        if store.completed_trial(row.id, convex.TUNER_TRIAL_ID) is not None:
            return
        values = convex.model_values(self.prepared.space, self.prepared.backbone.modality)
        trial = store.start_trial(row.id, convex.TUNER_TRIAL_ID, values)
        self.reporter.trial_started(trial.number, None, values,
                                    completed=store.count_trials(row.id, COMPLETED))
        runner = TrialRunner(self.hypermodel, self.training, self.objective, store, row.id, Path(row.workdir))
        try:
            outcome = runner.convex_head(trial.id, trial.number, values, self.trial_data(), self.reporter.epoch_ended)
        except Exception as exc:  # noqa: BLE001 - the trials still run; the store keeps why this one failed
            finished = store.finish_trial(trial.id, FAILED, error=first_line(exc))
        else:
            finished = store.finish_trial(trial.id, COMPLETED, value=outcome.value, best_phase=outcome.phase,
                                          best_epoch=outcome.epoch, metrics=outcome.metrics,
                                          data_path=outcome.data_path)
        finally:
            runner.close()
        self.reporter.trial_ended(finished)

    def _configure_trial_process(self, process: TrialProcess, data: TrialData, data_dir: Path) -> None:
        save_trial_data(data, data_dir)
        prepared, row = self.prepared, self.row
        process.configure(TrialProcessSpec(
            store_url=self.store.url, search_id=row.id, backbone=prepared.backbone.name, weights=prepared.weights,
            plugin_files=[str(Path(p).resolve()) for p in self.config.plugin_files],
            preprocessor_options=prepared.preprocessor_options, num_classes=len(prepared.train.class_names),
            space=prepared.space, plan=self.training, objective=self.objective,
            workdir=row.workdir, data_dir=str(data_dir)))

    def _say_if_stopped_by_deadline(self) -> None:
        if not self.oracle.stopped_by_deadline:
            return
        another = "another trial and the refit" if self.config.refit else "another"
        completed = self.store.count_trials(self.row.id, COMPLETED)
        self.reporter.message(
            f"--time-limit {format_duration(self.config.time_limit)} reached: {completed} "
            f"trial{'' if completed == 1 else 's'} completed, and {another} would not have finished in the "
            f"{format_duration(max(0.0, self.oracle.deadline.left()))} left")

    # ------------------------------------------------------------------------------------------ choose

    def choose(self) -> None:
        """What the exports will use besides the best trial: an ensemble of the kept trials when it beats
        it on validation (`autotl.search.ensemble`), else, when asked, the best configuration trained again
        on training and validation data (`autotl.search.refit`)."""
        self.row = self.store.get_search(self.row.id)
        ensemble = self._choose_ensemble()
        if self.config.refit and ensemble:
            self.reporter.message("no refit: the ensemble is exported, and a refit of its members is not made")
        elif self.config.refit:
            self._refit()

    def _choose_ensemble(self) -> bool:
        """Whether exports will build an ensemble."""
        if self.config.ensemble_size < 2:
            return False
        from autotl.search.ensemble import choose

        choice = choose(self.store, self.row, self.prepared.val.labels, self.config.ensemble_size,
                        self.reporter.message)
        return bool(choice and choice.used)

    def _refit(self) -> None:
        """Here in the search process, with the time the deadline leaves."""
        from autotl.search.refit import refit_best
        from autotl.search.runner import TrialRunner

        row = self.store.get_search(self.row.id)
        runner = TrialRunner(self.hypermodel, training_plan(self.config, self.prepared.backbone, row.name, None),
                             self.objective, self.store, row.id, Path(row.workdir))
        try:
            refit_best(self.store, row, runner, self.trial_data(), self.objective, Path(row.workdir),
                       self.deadline, self.reporter.message)
        finally:
            runner.close()

    # ------------------------------------------------------------------------------------------ finish

    def finish(self) -> SearchResult:
        """The search's status from its best trial: completed, or failed when no trial completed."""
        best = self.store.best_trial(self.row)
        if best is None:
            self.store.finish_search(self.row.id, FAILED, "no trial completed")
            raise AutotlError(f"search {self.row.name!r}: no trial completed (see `autotl trials {self.row.name}`)")
        self.store.finish_search(self.row.id, COMPLETED)
        if self.row.objective == "val_accuracy" and best.value is not None:
            warning = no_better_than_a_guess(best.value, self.prepared.val.labels, self.row.labels)
            if warning:
                self.reporter.message(warning)
        return self.result(resumed=self.existing is not None, extended=self.extended, reran=self.reran)

    def result(self, **flags: bool | int) -> SearchResult:
        row = self.store.get_search(self.row.id)
        return SearchResult(self.store, row, self.store.best_trial(row), self.store.list_trials(row.id), **flags)

    # ------------------------------------------------------------------------------ shared by the stages

    @property
    def extended(self) -> bool:
        return self.existing is not None and extends(self.existing, self.config, self.completed_before)

    @property
    def objective(self) -> Objective:
        return Objective(self.row.objective, self.row.direction)

    @cached_property
    def hypermodel(self):
        from autotl.search.hypermodel import TransferHyperModel

        prepared = self.prepared
        return TransferHyperModel(prepared.backbone, prepared.weights, prepared.preprocessor,
                                  len(prepared.train.class_names), prepared.space)

    def trial_data(self) -> TrialData:
        """The training and validation examples as the model takes them (the preprocessor's output)."""
        preprocess = self.prepared.preprocessor
        return TrialData(preprocess(self.prepared.train.examples), self.prepared.train.labels,
                         preprocess(self.prepared.val.examples), self.prepared.val.labels)


def find_search(store: Store, name: str | None) -> Search | None:
    if name is None:
        return None
    try:
        return store.get_search(name)
    except AutotlError:
        return None


def training_plan(config: SearchConfig, backbone, search_name: str, deadline: Deadline | None) -> TrainingPlan:
    """How each trial trains: epochs, batches, the cache, precision, the deadline, the checkpoints kept."""
    tensorboard_dir = None
    if config.tensorboard_dir is not None:
        tensorboard_dir = str(Path(config.tensorboard_dir).expanduser().resolve() / search_name)
    return TrainingPlan(epochs=config.epochs,
                        finetune_epochs=planned_finetune_epochs(config, backbone),
                        batch_size=config.batch_size, patience=config.patience, seed=config.seed,
                        precision=config.precision, cache=config.cache,
                        cache_dir=str(Path(config.cache_dir).expanduser().resolve()) if config.cache_dir else None,
                        cache_storage=config.cache_dtype,
                        cache_memory_mb=_cache_memory_mb(config.cache_memory_mb), cache_max_gb=config.cache_max_gb,
                        tensorboard_dir=tensorboard_dir,
                        deadline=deadline.at if deadline is not None else None,
                        kept_checkpoints=config.ensemble_size, checkpoint_soup=config.checkpoint_soup)


def default_name(backbone: str) -> str:
    """The backbone and the time, made fit to name a folder (``keras:ConvNeXtTiny`` -> ``keras-ConvNeXtTiny-...``)."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', backbone).strip('-')}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _cache_memory_mb(requested: int | None) -> int:
    if requested is not None:
        return requested
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 4 / 2**20)
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows)
        return 4096
