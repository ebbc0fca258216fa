"""The tuner: KerasTuner's search loop, autotl's two-phase trials and the SQL store.

KerasTuner splits the work three ways: the *HyperModel* builds a model from
hyperparameters (`autotl.hypermodel`), the *Oracle* proposes hyperparameters
(random, Bayesian or Hyperband, used unchanged) and the *Tuner* runs a trial.
`TransferTuner` is that last part: it writes each trial's row to the store when
the trial starts and when it ends, and hands the training itself to a
`TrialRunner` (`autotl.trial`), in this process or in a trial worker process
(`autotl.worker`).
"""

from __future__ import annotations

from pathlib import Path

import keras_tuner as kt

from . import store as store_module
from .hypermodel import TransferHyperModel
from .plan import Objective, TrainingPlan, TrialData, TrialFailed, TrialOutcome
from .progress import Reporter
from .store import Store
from .trial import TrialRunner
from .worker import TrialWorker


def make_oracle(kind: str, objective: kt.Objective, max_trials: int, max_epochs: int, seed: int) -> kt.Oracle:
    seed = seed + 1  # KerasTuner takes seed 0 to mean "pick one at random"; autotl's --seed 0 is a seed
    if kind == "random":
        return kt.oracles.RandomSearchOracle(objective=objective, max_trials=max_trials, seed=seed)
    if kind == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(objective=objective, max_trials=max_trials, seed=seed)
    if kind == "hyperband":
        oracle = kt.oracles.HyperbandOracle(objective=objective, max_epochs=max(2, max_epochs), factor=3, seed=seed)
        oracle.max_trials = max_trials  # Hyperband sizes its brackets by epochs; cap the trial count as asked
        return oracle
    raise ValueError(f"unknown tuner {kind!r}")


class TransferTuner(kt.Tuner):
    """Runs each trial through `worker` if given, else in this process."""

    def __init__(self, oracle: kt.Oracle, hypermodel: TransferHyperModel, *, store: Store, search_id: int,
                 plan: TrainingPlan, reporter: Reporter, workdir: Path, max_trials: int,
                 worker: TrialWorker | None = None, **kwargs):
        super().__init__(oracle, hypermodel, directory=str(workdir), project_name="keras_tuner", **kwargs)
        self.store = store
        self.search_id = search_id
        self.reporter = reporter
        self.max_trials = max_trials
        self.worker = worker
        objective = Objective(oracle.objective.name, oracle.objective.direction)
        self.runner = TrialRunner(hypermodel, plan, objective, store, search_id, Path(workdir))
        self._rows: dict[str, store_module.Trial] = {}
        self._outcomes: dict[str, TrialOutcome] = {}

    def search(self, *args, **kwargs) -> None:
        # KerasTuner prints the traceback of every failed trial while its (private) DEBUG flag
        # is on; autotl stores the error and reports it in one line instead.
        from keras_tuner.src import config as kt_config

        debug, kt_config.DEBUG = kt_config.DEBUG, False
        try:
            super().search(*args, **kwargs)
        finally:
            kt_config.DEBUG = debug

    def _populate_initial_space(self) -> None:
        # KerasTuner builds the model here to discover conditional hyperparameters;
        # autotl's space has none, so declaring it is enough (and skips a backbone load).
        hp = self.oracle.get_space()
        self.hypermodel.declare(hp)
        self.oracle.update_space(hp)

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_begin(trial)
        row = self.store.start_trial(self.search_id, trial.trial_id, dict(trial.hyperparameters.values))
        self._rows[trial.trial_id] = row
        self.reporter.trial_started(row.number, self.max_trials, dict(trial.hyperparameters.values))

    def run_trial(self, trial: kt.engine.trial.Trial, data: TrialData | None = None, **_kwargs) -> dict[str, float]:
        row = self._rows[trial.trial_id]
        values = dict(trial.hyperparameters.values)
        try:
            if self.worker is not None:
                outcome = self.worker.run(row.id, row.number, values, self.reporter.epoch_ended)
            else:
                outcome = self.runner.run(row.id, row.number, values, data, self.reporter.epoch_ended)
        except TrialFailed as exc:
            raise kt.errors.FailedTrialError(str(exc)) from exc
        self._outcomes[trial.trial_id] = outcome
        return {self.oracle.objective.name: outcome.value}

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        row = self._rows.pop(trial.trial_id)
        outcome = self._outcomes.pop(trial.trial_id, None)
        if trial.status == kt.engine.trial.TrialStatus.COMPLETED and outcome is not None:
            finished = self.store.finish_trial(row.id, store_module.COMPLETED, value=outcome.value,
                                               best_phase=outcome.phase, best_epoch=outcome.epoch,
                                               metrics=outcome.metrics, data_path=outcome.data_path)
        else:
            finished = self.store.finish_trial(row.id, store_module.FAILED, error=_last_line(trial.message))
        self.reporter.trial_ended(finished)
        super().on_trial_end(trial)

    def save_model(self, trial_id, model, step=0):
        """Checkpoints are written by the trial runner (the best trial's only)."""

    def load_model(self, trial):
        import keras

        row = next((t for t in self.store.list_trials(self.search_id) if t.tuner_trial_id == trial.trial_id), None)
        artifacts = self.store.artifacts(self.search_id, kind="checkpoint", trial_id=row.id) if row else []
        if not artifacts:
            raise ValueError(f"trial {trial.trial_id} has no checkpoint (only the best trial keeps one)")
        return keras.saving.load_model(artifacts[-1].path, compile=False)


def _last_line(message: str | None) -> str:
    """The error of a failed trial: the last line of KerasTuner's traceback, minus its wrapper class."""
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    last = lines[-1] if lines else "trial failed"
    wrapper = f"{kt.errors.FailedTrialError.__module__}.FailedTrialError: "
    return last[len(wrapper):] if last.startswith(wrapper) else last
