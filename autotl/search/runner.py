"""One trial: build the model for a set of hyperparameters and train it in two phases.

1. ``head``: the head on the frozen backbone, at the head learning rate;
2. ``finetune`` (when ``unfreeze_depth`` k > 0): the best head restored, the top k
   blocks made trainable, recompiled at the (lower) fine-tuning rate.

Both phases are monitored on the validation split with early stopping. The
weights of the best epoch over both phases are restored at the end: that model
is what the trial reports, and what is checkpointed when it is the best of the
search so far. Each epoch is written to the store as it ends.

`TrialRunner` runs in the search process or in a trial worker process
(`autotl.search.trial_process`); it needs nothing from KerasTuner but hyperparameter values.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import keras
import numpy as np

from autotl.workarounds import TrialHeap, build_training_state, traced_gradients_released

from autotl.search import convex
from autotl.search import space as space_module
from autotl.search.budget import Deadline, room_for_a_finetune
from autotl.search.recipe import Recipe, steps_in
from autotl.insight.bar import ProgressLine
from autotl.insight.board import TrialBoard
from autotl.cache.entries import ActivationCache
from autotl.cache.batches import batches, predict_in_order, sequence_lengths, variable_length_inputs
from autotl.cache.source import ActivationSource, Phase
from autotl.search.hypermodel import (BACKBONE_LAYER, ReusableBackbone, TransferHyperModel, set_unfreeze_depth,
                                      trainable_blocks)
from autotl.search.ensemble import score
from autotl.search.soup import SOUP_METRIC, TopEpochs, greedy_soup
from autotl.search.records import (FINETUNE, HEAD, VAL_PROBS_NAME, Objective, TrainingPlan, TrialData, TrialFailed,
                                   TrialOutcome, trial_seed)
from autotl.store import Store
from autotl.store.queries import TIE_BREAK_METRIC, may_be_chosen, rank_key, trial_rank

CHECKPOINT_NAME = "model.keras"
CLASSES_LAYER = "classes"  # the model's last Dense layer (`autotl.search.hypermodel`)

EpochCallback = Callable[[int, str, int, int, dict], None]


EPOCH_PROGRESS_AFTER_S = 2.0  # an epoch shows its batches on a terminal once it has lasted this long


class TrialRunner:
    def __init__(self, hypermodel: TransferHyperModel, plan: TrainingPlan, objective: Objective, store: Store,
                 search_id: int, workdir: Path):
        self.hypermodel = hypermodel
        self.plan = plan
        self.objective = objective
        self.store = store
        self.search_id = search_id
        self.workdir = Path(workdir)
        self.backbone = ReusableBackbone(hypermodel, plan.seed)
        self.activations = ActivationSource(
            ActivationCache(plan.cache_dir) if plan.cache else None, hypermodel.backbone,
            hypermodel.preprocessor.config(), space_module.depth_choices(hypermodel.space),
            storage=plan.cache_storage, batch_size=plan.inference_batch_size,
            memory_budget_bytes=plan.cache_memory_mb * 2**20,
            max_cache_bytes=None if plan.cache_max_gb is None else int(plan.cache_max_gb * 2**30))
        self.heap = TrialHeap()

    def release_past_trials(self) -> None:
        """Return the memory of the trials run so far (their models, traced functions, optimizers)."""
        self.backbone.forget_past_trials()  # first: it is what still holds their models
        self.heap.collect_and_freeze()

    def close(self) -> None:
        """The trials are over: give the objects they kept frozen back to Python's collector."""
        self.heap.thaw()

    def run(self, trial_id: int, trial_number: int, values: dict[str, Any], data: TrialData,
            on_epoch: EpochCallback) -> TrialOutcome:
        self.release_past_trials()
        with dtype_policy(self.plan.precision), traced_gradients_released():
            return self._run(trial_id, trial_number, values, data, on_epoch)

    def _run(self, trial_id: int, trial_number: int, values: dict[str, Any], data: TrialData,
             on_epoch: EpochCallback) -> TrialOutcome:
        if self.plan.tensorboard_dir is None:
            return self._train(trial_id, trial_number, values, data, on_epoch, None)
        board = TrialBoard(self.plan.tensorboard_dir, trial_number, values, self.objective)
        try:
            outcome = self._train(trial_id, trial_number, values, data, on_epoch, board)
        except Exception:
            board.finish(None, ok=False)
            raise
        except BaseException:  # interrupted: the run keeps what it logged, with no end
            board.close()
            raise
        board.finish(outcome.value, ok=True)
        return outcome

    def _train(self, trial_id: int, trial_number: int, values: dict[str, Any], data: TrialData,
               on_epoch: EpochCallback, board: TrialBoard | None) -> TrialOutcome:
        feature_model = self.backbone.fresh()
        keras.utils.set_random_seed(trial_seed(self.plan.seed, values))
        hp = self.hypermodel.hyperparameters(values)
        model = self.hypermodel.build(hp, feature_model)
        feed = self.activations.feed(model, data, values)
        tracker = BestEpoch(self.objective)
        epochs, finetune_epochs = self._epoch_budget(values)
        deadline = Deadline(self.plan.deadline) if self.plan.deadline is not None else None
        recipe = Recipe.from_values(values)
        top_epochs: list[TopEpochs] = []  # the fine-tuning phase's best epochs, with --checkpoint-soup

        def fit(learning_rate: float, phase: str, phase_epochs: int, depth: int) -> None:
            phase_data = feed.phase(depth)
            blocks = trainable_blocks(self.hypermodel.backbone.blocks(feature_model), depth) if depth else []
            logger = _EpochLogger(self.store, trial_id, trial_number, phase, phase_epochs, on_epoch)
            batches_shown = _BatchProgress(f"  trial {trial_number} {phase}", phase_epochs,
                                           math.ceil(len(data.y_train) / self.plan.batch_size))
            callbacks = [FailOnNonFiniteLoss(phase), tracker.callback(phase, phase_data.model.weights), batches_shown,
                         logger]
            if phase == FINETUNE and self.plan.checkpoint_soup:
                top_epochs.append(TopEpochs(self.objective, phase_data.model.weights))
                callbacks.append(top_epochs[-1])
            if board is not None:
                callbacks.append(_BoardLogger(board, phase))
            if deadline is not None:
                callbacks.append(StopAtDeadline(deadline))
            self._fit(phase_data, data, recipe, learning_rate, phase_epochs, callbacks, blocks=blocks)

        fit(hp.get("head_lr"), HEAD, epochs, 0)
        depth = 0
        if hp.get("unfreeze_depth") > 0 and finetune_epochs > 0 and self._finetune_fits(deadline, feed, data, hp,
                                                                                         model):
            tracker.restore()  # fine-tune from the best head, not the last one
            feature_model = model.get_layer(BACKBONE_LAYER)
            depth = set_unfreeze_depth(feature_model, self.hypermodel.backbone.blocks(feature_model),
                                       hp.get("unfreeze_depth"))
            self.backbone.mark_changed()
            fit(hp.get("finetune_lr"), FINETUNE, finetune_epochs, depth)
        tracker.restore()
        if tracker.best is None:
            raise TrialFailed(f"no finite {self.objective.name} in any epoch")
        outcome = TrialOutcome(tracker.best_value, tracker.best[0], tracker.best[1],
                               {**tracker.best_logs, "unfreeze_depth_applied": depth}, feed.report())
        if top_epochs and outcome.phase == FINETUNE and len(top_epochs[0].best) > 1:
            outcome = self._soup(outcome, top_epochs[0], feed.phase(depth), data)
        # A best epoch of the head phase left the blocks as they were: the head on the cached
        # backbone output computes what the model does. After it, the fine-tuned blocks do too.
        best_depth = depth if outcome.phase == FINETUNE else 0
        best_phase = feed.phase(best_depth)
        self._checkpoint_if_kept(model, lambda: predict_in_order(best_phase.model, best_phase.x_val,
                                                                 self.plan.batch_size, sequence_lengths(data.x_val)),
                                 trial_id, trial_number, outcome)
        return outcome

    def _finetune_fits(self, deadline: Deadline | None, feed, data: TrialData, hp, model: keras.Model) -> bool:
        """Budget rule 4 (`room_for_a_finetune`) for this trial's fine-tuning phase."""
        blocks = len(self.hypermodel.backbone.blocks(model.get_layer(BACKBONE_LAYER)))
        depth_share = min(hp.get("unfreeze_depth"), blocks) / max(blocks, 1)
        train_share = len(data.y_train) / max(len(data.y_train) + len(data.y_val), 1)
        return room_for_a_finetune(deadline, feed.pass_seconds(), depth_share, train_share)

    def convex_head(self, trial_id: int, trial_number: int, values: dict[str, Any], data: TrialData,
                    on_epoch: EpochCallback) -> TrialOutcome:
        """The convex head trial (`autotl.search.convex`): the regression's penalty chosen on validation,
        its weights in the model's last Dense layer; recorded as one head epoch."""
        self.release_past_trials()
        with dtype_policy(self.plan.precision), traced_gradients_released():
            model, features = self._pooled_features(values, data)
            choice = convex.choose(features.train, data.y_train, features.val, data.y_val,
                                   self.hypermodel.num_classes)
            model.get_layer(CLASSES_LAYER).set_weights([choice.model.weights, choice.model.bias])
            train_probabilities = choice.model.probabilities(features.train)
            metrics = {"loss": score(convex.LOSS, train_probabilities, data.y_train),
                       "accuracy": score(convex.ACCURACY, train_probabilities, data.y_train),
                       "val_loss": choice.val_loss, "val_accuracy": choice.val_accuracy,
                       convex.PENALTY_KEY: choice.penalty}
            _EpochLogger(self.store, trial_id, trial_number, HEAD, 1, on_epoch).on_epoch_end(0, metrics)
            outcome = TrialOutcome(metrics[self.objective.name], HEAD, 1,
                                   {**metrics, "unfreeze_depth_applied": 0}, features.data_path)
            self._checkpoint_if_kept(model, lambda: choice.val_probabilities, trial_id, trial_number, outcome)
            return outcome

    def refit_convex(self, values: dict[str, Any], penalty: float, data: TrialData, out_dir: Path) -> Path:
        """The convex head trial's regression fitted again at its `penalty` on `data.x_train` (training
        and validation examples together, `autotl.search.refit`), and saved with its predictions on
        `data.x_val`."""
        self.release_past_trials()
        with dtype_policy(self.plan.precision), traced_gradients_released():
            model, features = self._pooled_features(values, data)
            fitted = convex.fit_path(features.train, data.y_train, self.hypermodel.num_classes, (penalty,))[penalty]
            model.get_layer(CLASSES_LAYER).set_weights([fitted.weights, fitted.bias])
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / CHECKPOINT_NAME
            keras.Model(model.input, model.output, name=model.name).save(path)
            np.save(out_dir / VAL_PROBS_NAME, fitted.probabilities(features.val))
            return path

    def _pooled_features(self, values: dict[str, Any], data: TrialData) -> tuple[keras.Model, PooledFeatures]:
        """A head model for `values` (one Dense layer on the pooled backbone output) and the pooled
        features of each split, computed on the cached path where it can."""
        model = self.hypermodel.build(self.hypermodel.hyperparameters(values), self.backbone.fresh())
        # Built just now, the layer before the classes has one inbound node: its output is the features.
        pooled = keras.Model(model.inputs, model.get_layer(CLASSES_LAYER).input, name="autotl_pooled")
        feed = self.activations.feed(pooled, data, values)
        phase = feed.phase(0)
        train = predict_in_order(phase.model, phase.x_train, self.plan.inference_batch_size,
                                 sequence_lengths(data.x_train))
        val = predict_in_order(phase.model, phase.x_val, self.plan.inference_batch_size, sequence_lengths(data.x_val))
        return model, PooledFeatures(train, val, feed.report())

    def refit(self, values: dict[str, Any], trial_number: int, data: TrialData, head_epochs: int,
              finetune_epochs: int, out_dir: Path) -> Path:
        """Train the configuration `values` again on `data` for exactly `head_epochs`, then
        `finetune_epochs`, and save the model (`autotl.search.refit`).

        `data.x_train` holds the training and validation examples together, so nothing is left
        to monitor: no early stopping, no validation pass, and the last epoch is the model. Each
        phase's learning-rate schedule spans the epochs the search planned for it, as the trial's
        did, and stops where the trial's best epoch was. The model's predictions on `data.x_val`
        are saved beside it, as a trial's are: an export must reproduce them.
        """
        self.release_past_trials()
        with dtype_policy(self.plan.precision), traced_gradients_released():
            feature_model = self.backbone.fresh()
            keras.utils.set_random_seed(trial_seed(self.plan.seed, values))  # the trial's initialisation
            hp = self.hypermodel.hyperparameters(values)
            model = self.hypermodel.build(hp, feature_model)
            feed = self.activations.feed(model, data, values)
            recipe = Recipe.from_values(values)
            planned_head, planned_finetune = self._epoch_budget(values)
            self._fit(feed.phase(0), data, recipe, hp.get("head_lr"), planned_head, [FailOnNonFiniteLoss(HEAD)],
                      stop_after=head_epochs)
            depth = 0
            if finetune_epochs > 0 and hp.get("unfreeze_depth") > 0:
                feature_model = model.get_layer(BACKBONE_LAYER)
                depth = set_unfreeze_depth(feature_model, self.hypermodel.backbone.blocks(feature_model),
                                           hp.get("unfreeze_depth"))
                self.backbone.mark_changed()
                self._fit(feed.phase(depth), data, recipe, hp.get("finetune_lr"), planned_finetune,
                          [FailOnNonFiniteLoss(FINETUNE)], stop_after=finetune_epochs,
                          blocks=trainable_blocks(self.hypermodel.backbone.blocks(feature_model), depth))
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / CHECKPOINT_NAME
            keras.Model(model.input, model.output, name=model.name).save(path)
            phase = feed.phase(depth)
            np.save(out_dir / VAL_PROBS_NAME, predict_in_order(phase.model, phase.x_val, self.plan.batch_size,
                                                               sequence_lengths(data.x_val)))
            return path

    def _epoch_budget(self, values: dict[str, Any]) -> tuple[int, int]:
        if "tuner/epochs" in values:  # Hyperband decides the budget of each bracket
            budget = int(values["tuner/epochs"])
            return budget, budget
        return self.plan.epochs, self.plan.finetune_epochs

    def _fit(self, phase: Phase, data: TrialData, recipe: Recipe, learning_rate: float, epochs: int,
             callbacks: list, stop_after: int | None = None, blocks: list[list] = ()) -> None:
        """Fit `phase` for up to `epochs` with early stopping on the validation split; with
        `stop_after` (a refit), for that many epochs of a schedule planned for `epochs`, unvalidated.
        `blocks`: the trainable blocks' variables, top first (the recipe's layer-wise decay)."""
        total_steps = steps_in(len(data.y_train), self.plan.batch_size, epochs)
        phase.model.compile(optimizer=recipe.optimizer_for(learning_rate, total_steps, blocks),
                            loss=recipe.loss(self.hypermodel.num_classes), metrics=["accuracy"],
                            steps_per_execution=steps_per_execution(phase.runs_backbone))
        croppable = variable_length_inputs(phase.model, phase.x_train)
        shuffle_seed = int(np.random.randint(2**31))  # numpy is seeded per trial
        train = batches(phase.x_train, data.y_train, self.plan.batch_size, shuffle=True, seed=shuffle_seed,
                        lengths=sequence_lengths(data.x_train), croppable=croppable)
        build_training_state(phase.model, train.first)
        if stop_after is not None:
            phase.model.fit(train.x, train.y, epochs=stop_after, batch_size=train.batch_size, shuffle=train.shuffle,
                            callbacks=callbacks, verbose=0)
            return
        callbacks = [
            keras.callbacks.EarlyStopping(monitor=self.objective.name, mode=self.objective.direction,
                                          patience=self.plan.patience),
            *callbacks,
        ]
        val = batches(phase.x_val, data.y_val, self.plan.batch_size, lengths=sequence_lengths(data.x_val),
                      croppable=croppable)
        phase.model.fit(train.x, train.y, validation_data=val.as_validation(), epochs=epochs,
                        batch_size=train.batch_size, shuffle=train.shuffle, callbacks=callbacks, verbose=0)

    def _soup(self, outcome: TrialOutcome, top: TopEpochs, phase: Phase, data: TrialData) -> TrialOutcome:
        """The trial's result once its best fine-tuning epochs are mixed (`autotl.search.soup`); the model
        holds the soup, which is never worse on validation than the best epoch alone."""
        epochs, logs = greedy_soup(top.best, top.variables, lambda: self._validate(phase, data), self.objective)
        return TrialOutcome(logs[self.objective.name], outcome.phase, outcome.epoch,
                            {**outcome.metrics, **logs, SOUP_METRIC: float(len(epochs))}, outcome.data_path)

    def _validate(self, phase: Phase, data: TrialData) -> dict[str, float]:
        """The compiled model's loss and metrics on the validation split, named as `fit` logs them."""
        val = batches(phase.x_val, data.y_val, self.plan.batch_size, lengths=sequence_lengths(data.x_val),
                      croppable=variable_length_inputs(phase.model, phase.x_val))
        sized = {"batch_size": val.batch_size} if val.y is not None else {}
        results = phase.model.evaluate(val.x, val.y, verbose=0, return_dict=True, **sized)
        return {f"val_{name}": float(value) for name, value in results.items()}

    def _checkpoint_if_kept(self, model: keras.Model, val_probabilities: Callable[[], np.ndarray], trial_id: int,
                            trial_number: int, outcome: TrialOutcome) -> None:
        """Keep the model of a trial among the best `plan.kept_checkpoints` completed so far (the
        best one, or an ensemble's pool).

        The tuner removes the checkpoints that dropped out of them once the trial is
        recorded as completed (`TransferTuner`), so a kill never leaves a search without one.
        """
        search = self.store.get_search(self.search_id)
        kept = self.store.best_trials(search, self.plan.kept_checkpoints)
        direction = self.objective.direction
        rank = rank_key(outcome.value, outcome.metrics, trial_number, direction)
        best_value = max((trial.value for trial in kept), default=None)
        if (len(kept) >= self.plan.kept_checkpoints and rank > trial_rank(kept[-1], direction)
                and not may_be_chosen(search, outcome.value, best_value)):
            return
        trial_dir = self.workdir / f"trial_{trial_number:03d}"
        trial_dir.mkdir(parents=True, exist_ok=True)
        path = trial_dir / CHECKPOINT_NAME
        # An uncompiled twin sharing the layers: the checkpoint is for inference and export,
        # and an optimizer state saved with it would not match on reload.
        keras.Model(model.input, model.output, name=model.name).save(path)
        # The validation predictions as the search computed them (on the cached path, from
        # the cached activations, through the blocks the best epoch had fine-tuned): an export
        # must reproduce them.
        np.save(trial_dir / VAL_PROBS_NAME, val_probabilities())
        self.store.add_artifact(search_id=self.search_id, trial_id=trial_id, kind="checkpoint", format="keras",
                                path=str(path.resolve()), sha256=None, size_bytes=path.stat().st_size)


class PooledFeatures(NamedTuple):
    train: np.ndarray
    val: np.ndarray
    data_path: dict[str, Any]  # how they were computed (`ActivationSource`'s report)


class BestEpoch:
    """Tracks the best epoch of the objective across both phases and keeps its weights.

    Only the variables a phase can change are copied (those of the part it fits:
    the head, then the head and the unfrozen blocks), not the whole backbone: a
    BERT copy costs more than a head epoch on cached features. A variable a later
    phase adds has not changed since the best epoch so far, so its current value
    joins that epoch's copy.
    """

    def __init__(self, objective: Objective):
        self.objective = objective
        self.best: tuple[str, int] | None = None
        self.best_value: float | None = None
        self.best_logs: dict[str, float] = {}
        self._variables: list = []
        self._values: list[np.ndarray] | None = None

    def callback(self, phase: str, variables: list) -> keras.callbacks.Callback:
        """The callback for one phase that fits `variables` (its model's weights)."""
        tracked = {id(v) for v in self._variables}
        added = [v for v in variables if id(v) not in tracked]
        self._variables += added
        if self._values is not None:
            self._values += [keras.ops.convert_to_numpy(v) for v in added]
        tracker = self

        class _Track(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                value = (logs or {}).get(tracker.objective.name)
                if value is None or not math.isfinite(value):
                    return
                if tracker.objective.better(value, tracker.best_value, logs.get(TIE_BREAK_METRIC),
                                            tracker.best_logs.get(TIE_BREAK_METRIC)):
                    tracker.best, tracker.best_value = (phase, epoch + 1), float(value)
                    tracker.best_logs = {k: float(v) for k, v in logs.items()}
                    tracker._values = [keras.ops.convert_to_numpy(v) for v in tracker._variables]

        return _Track()

    def restore(self) -> None:
        if self._values is not None:
            for variable, value in zip(self._variables, self._values):
                variable.assign(value)


class StopAtDeadline(keras.callbacks.Callback):
    """Ends a phase at a time-limited search's deadline (`autotl.search.budget`, rule 3): after the
    step when the next, as long, would end past it, or after an epoch when the next one would. Keras
    still runs the validation pass of that epoch, so it counts like any other. A step is one call into
    the compiled function: a batch when fine-tuning (`steps_per_execution`)."""

    def __init__(self, deadline: Deadline):
        super().__init__()
        self.deadline = deadline
        self._epoch_started = self._step_started = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.time()

    def on_train_batch_begin(self, batch, logs=None):
        self._step_started = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if self.deadline.left() < time.time() - self._step_started:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.deadline.left() < time.time() - self._epoch_started:
            self.model.stop_training = True


class FailOnNonFiniteLoss(keras.callbacks.Callback):
    """A NaN or infinite loss fails the trial at once (Keras' TerminateOnNaN would only end the phase)."""

    def __init__(self, phase: str):
        super().__init__()
        self.phase = phase
        self.epoch = 1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrialFailed(f"the loss became {float(loss)} in epoch {self.epoch} of the {self.phase} phase")


class _EpochLogger(keras.callbacks.Callback):
    def __init__(self, store: Store, trial_id: int, trial_number: int, phase: str, epochs: int,
                 on_epoch: EpochCallback):
        super().__init__()
        self.store, self.trial_id, self.trial_number = store, trial_id, trial_number
        self.phase, self.epochs, self.on_epoch = phase, epochs, on_epoch
        self._started = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        metrics["seconds"] = time.perf_counter() - self._started
        self.store.log_epoch(self.trial_id, self.phase, epoch + 1, metrics)
        self.on_epoch(self.trial_number, self.phase, epoch + 1, self.epochs, metrics)


class _BatchProgress(keras.callbacks.Callback):
    """A long epoch's batches on a terminal (`autotl.insight.bar`), cleared before the epoch's own line."""

    def __init__(self, label: str, epochs: int, batches: int):
        super().__init__()
        self.label, self.epochs, self.batches = label, epochs, batches
        self.line: ProgressLine | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.line = ProgressLine(f"{self.label} epoch {epoch + 1}/{self.epochs}", total=self.batches,
                                 after_s=EPOCH_PROGRESS_AFTER_S)

    def on_train_batch_end(self, batch, logs=None):
        if self.line is not None:
            self.line.update(batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        if self.line is not None:
            self.line.close()


class _BoardLogger(keras.callbacks.Callback):
    """Each epoch's metrics to the trial's TensorBoard run (`autotl.insight.board`)."""

    def __init__(self, board: TrialBoard, phase: str):
        super().__init__()
        self.board, self.phase = board, phase

    def on_epoch_end(self, epoch, logs=None):
        self.board.epoch(self.phase, epoch + 1, logs or {})


def steps_per_execution(through_backbone: bool) -> int:
    """Batches per call into the compiled train step. A head on cached activations takes about as
    long for a step as Python's trip into it; batching 32 calls removes most of that (the torch
    backend only takes 1). A phase that runs backbone blocks takes one batch per call: its steps
    are long, and a time limit can stop it only between calls (a whole epoch, in 32 batches)."""
    return 1 if through_backbone or keras.backend.backend() == "torch" else 32


@contextlib.contextmanager
def dtype_policy(name: str):
    """Build and train under Keras' dtype policy `name` (float32, mixed_float16, mixed_bfloat16)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
