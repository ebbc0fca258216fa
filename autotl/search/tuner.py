"""The tuner: KerasTuner's search loop, autotl's two-phase trials and the SQL store.

KerasTuner splits the work three ways: the *HyperModel* builds a model from
hyperparameters (`autotl.search.hypermodel`), the *Oracle* proposes hyperparameters
(random, Bayesian or Hyperband, used unchanged) and the *Tuner* runs a trial.
`TransferTuner` is that last part: it writes each trial's row to the store when
the trial starts and when it ends, and hands the training itself to a
`TrialRunner` (`autotl.search.runner`), in this process or in a trial process
(`autotl.search.trial_process`).

A search survives being killed at any moment. The oracle's state (KerasTuner's
own files, written atomically here) says which trials were handed out; the store
says which finished. On resume KerasTuner hands out again the trials that were
running, and a trial the store already holds as completed is reported from the
store instead of being trained twice.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
from pathlib import Path

import keras_tuner as kt

from autotl import store as store_module
from autotl.errors import AutotlError
from autotl.workarounds import (AtomicOracleState, OracleOpenedElsewhere, keras_tuner_tracebacks_off,
                                set_oracle_project_dir)
from autotl.search.budget import DeadlineOracle
from autotl.search.portfolio import PortfolioOracle
from autotl.search.hypermodel import TransferHyperModel
from autotl.search.records import Objective, TrainingPlan, TrialData, TrialFailed, TrialOutcome
from autotl.search.space import in_declared_order
from autotl.insight.progress import Reporter
from autotl.store import Store
from autotl.search.runner import TrialRunner
from autotl.search.trial_process import TrialProcess

PROJECT_NAME = "keras_tuner"


class TooManyFailures(AutotlError):
    """The search stopped because `--max-failures` trials failed."""


_ORACLES = {
    "random": kt.oracles.RandomSearchOracle,
    "bayesian": kt.oracles.BayesianOptimizationOracle,
    "hyperband": kt.oracles.HyperbandOracle,
}


def make_oracle(kind: str, objective: kt.Objective, max_trials: int | None, max_epochs: int, seed: int) -> kt.Oracle:
    """KerasTuner's oracle of that kind, saving its state atomically, able to stop at a deadline
    (`DeadlineOracle`) and to start with a portfolio (`PortfolioOracle`, set by the caller).
    `max_trials` None: no cap (a search with a time limit)."""
    if kind not in _ORACLES:
        raise ValueError(f"unknown tuner {kind!r}")
    oracle_class = type(f"Resumable{_ORACLES[kind].__name__}",
                        (DeadlineOracle, PortfolioOracle, AtomicOracleState, _ORACLES[kind]), {})
    common = dict(objective=objective,
                  seed=seed + 1,  # KerasTuner takes seed 0 to mean "pick one at random"; autotl's --seed 0 is a seed
                  max_consecutive_failed_trials=sys.maxsize)  # autotl's --max-failures decides instead
    if kind == "hyperband":
        oracle = oracle_class(max_epochs=max(2, max_epochs), factor=3, **common)
        oracle.max_trials = max_trials  # Hyperband sizes its brackets by epochs; cap the trial count as asked
        return oracle
    return oracle_class(max_trials=max_trials, **common)


def open_oracle(oracle: kt.Oracle, hypermodel: TransferHyperModel, workdir: Path, resume: bool) -> kt.Oracle:
    """Point the oracle at its files: reload them to resume a search, or start afresh."""
    project_dir = Path(workdir) / PROJECT_NAME
    if not resume and project_dir.exists():
        shutil.rmtree(project_dir)
    set_oracle_project_dir(oracle, str(workdir), PROJECT_NAME)
    oracle.verbose = 0  # autotl's reporter shows the progress
    if resume and (project_dir / "oracle.json").exists():
        try:
            oracle.reload()  # the trials that were running go back into KerasTuner's retry queue
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise AutotlError(f"cannot resume: the tuner state in {project_dir} is unreadable ({exc}); "
                              "start a new search with another --name") from None
    # KerasTuner builds the model to discover conditional hyperparameters;
    # autotl's space has none, so declaring it is enough (and skips a backbone load).
    hp = oracle.get_space()
    hypermodel.declare(hp)
    oracle.update_space(hp)
    return oracle


class TransferTuner(OracleOpenedElsewhere, kt.Tuner):
    """Runs each trial through `trial_process` if given, else in this process.

    The oracle comes ready from `open_oracle` (fresh or reloaded); in a distributed
    search KerasTuner swaps it for a client of the chief's oracle.
    """

    def __init__(self, oracle: kt.Oracle, hypermodel: TransferHyperModel, *, store: Store, search_id: int,
                 plan: TrainingPlan, reporter: Reporter, workdir: Path, max_trials: int, max_failures: int,
                 trial_process: TrialProcess | None = None):
        with contextlib.redirect_stdout(io.StringIO()):  # KerasTuner prints "Reloading Tuner from ..."
            super().__init__(oracle, hypermodel, directory=str(workdir), project_name=PROJECT_NAME, overwrite=False)
        self.store = store
        self.search_id = search_id
        self.reporter = reporter
        self.max_trials = max_trials
        self.max_failures = max_failures
        self.trial_process = trial_process
        objective = Objective(oracle.objective.name, oracle.objective.direction)
        self.runner = TrialRunner(hypermodel, plan, objective, store, search_id, Path(workdir))
        self._rows: dict[str, store_module.Trial] = {}
        self._outcomes: dict[str, TrialOutcome] = {}
        self.completed_here = 0  # trials this tuner trained to completion (a distributed worker reports it)

    def search(self, *args, **kwargs) -> None:
        with keras_tuner_tracebacks_off():  # autotl stores a failed trial's error and reports it in one line
            super().search(*args, **kwargs)

    def reload(self) -> None:
        """The oracle is reloaded by `open_oracle`; the tuner keeps no state of its own worth reloading."""

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_begin(trial)
        done = self.store.completed_trial(self.search_id, trial.trial_id)
        if done is not None:  # finished before a kill that came before KerasTuner recorded it
            self._rows[trial.trial_id] = done
            return
        rerun_of = self._interrupted_number(trial.trial_id)
        values = in_declared_order(self.hypermodel.space, trial.hyperparameters.values)
        row = self.store.start_trial(self.search_id, trial.trial_id, values)
        self._rows[trial.trial_id] = row
        self.reporter.trial_started(row.number, self.max_trials, values,
                                    completed=self.store.count_trials(self.search_id, store_module.COMPLETED),
                                    rerun_of=rerun_of)

    def _interrupted_number(self, tuner_trial_id: str) -> int | None:
        """The number of the last interrupted row of KerasTuner's trial `tuner_trial_id`, which it runs again."""
        earlier = [t.number for t in self.store.list_trials(self.search_id)
                   if t.tuner_trial_id == tuner_trial_id and t.status == store_module.INTERRUPTED]
        return earlier[-1] if earlier else None

    def run_trial(self, trial: kt.engine.trial.Trial, data: TrialData | None = None, **_kwargs) -> dict[str, float]:
        row = self._rows[trial.trial_id]
        if row.status == store_module.COMPLETED:
            return {self.oracle.objective.name: row.value}
        values = dict(trial.hyperparameters.values)
        try:
            if self.trial_process is not None:
                outcome = self.trial_process.run(row.id, row.number, values, self.reporter.epoch_ended)
            else:
                outcome = self.runner.run(row.id, row.number, values, data, self.reporter.epoch_ended)
        except TrialFailed as exc:
            raise kt.errors.FailedTrialError(str(exc)) from exc
        self._outcomes[trial.trial_id] = outcome
        return {self.oracle.objective.name: outcome.value}

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        row = self._rows.pop(trial.trial_id)
        outcome = self._outcomes.pop(trial.trial_id, None)
        if row.status != store_module.COMPLETED:
            finished = self._finish(row, trial, outcome)
            self.reporter.trial_ended(finished)
        super().on_trial_end(trial)  # the oracle records it (and saves its state) only now
        self._check_failures()

    def _finish(self, row: store_module.Trial, trial: kt.engine.trial.Trial,
                outcome: TrialOutcome | None) -> store_module.Trial:
        if trial.status == kt.engine.trial.TrialStatus.COMPLETED and outcome is not None:
            finished = self.store.finish_trial(row.id, store_module.COMPLETED, value=outcome.value,
                                               best_phase=outcome.phase, best_epoch=outcome.epoch,
                                               metrics=outcome.metrics, data_path=outcome.data_path)
            self._prune_checkpoints()
            self.completed_here += 1
            return finished
        return self.store.finish_trial(row.id, store_module.FAILED, error=_last_line(trial.message))

    def _prune_checkpoints(self) -> None:
        """Only the best completed trials keep their checkpoints (backbones are large): the best one, or an
        ensemble's pool (`TrainingPlan.kept_checkpoints`); running trials keep theirs."""
        stale = self.store.stale_checkpoints(self.search_id, self.runner.plan.kept_checkpoints)
        for artifact in stale:
            shutil.rmtree(Path(artifact.path).parent, ignore_errors=True)
        self.store.delete_artifacts([artifact.id for artifact in stale])

    def _check_failures(self) -> None:
        failed = self.store.count_trials(self.search_id, store_module.FAILED)
        if failed >= self.max_failures:
            raise TooManyFailures(too_many_failures_message(failed, self.max_failures))

    def save_model(self, trial_id, model, step=0):
        """Checkpoints are written by the trial runner (the best trials' only)."""

    def load_model(self, trial):
        import keras

        row = next((t for t in self.store.list_trials(self.search_id) if t.tuner_trial_id == trial.trial_id), None)
        artifacts = self.store.artifacts(self.search_id, kind="checkpoint", trial_id=row.id) if row else []
        if not artifacts:
            raise ValueError(f"trial {trial.trial_id} has no checkpoint (only the best trials keep one)")
        return keras.saving.load_model(artifacts[-1].path, compile=False)


def too_many_failures_message(failed: int, max_failures: int) -> str:
    return f"{failed} trials failed (--max-failures {max_failures}); see `autotl trials` for their errors"


def _last_line(message: str | None) -> str:
    """The error of a failed trial: the last line of KerasTuner's traceback, minus its wrapper class."""
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "trial failed"
    wrapper = f"{kt.errors.FailedTrialError.__module__}.FailedTrialError: "
    return last[len(wrapper):] if last.startswith(wrapper) else last
