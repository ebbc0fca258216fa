"""Every use of a Keras, KerasTuner or TensorFlow private API, in one place, each with its reason.

Written against keras 3.15, keras-tuner 1.4.8 and tensorflow 2.21. Each function
says what it needs that has no public name; when one of these libraries changes,
this file is where autotl breaks, and the tests that exercise each use say which.
Keras is imported inside the functions that need it: the export formats' module,
which the CLI reads at startup, imports this one.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import tempfile
from typing import Callable


# --------------------------------------------------------------------------- Keras models


def is_functional(layer) -> bool:
    """Whether `layer` is a functional (graph) model, which autotl can cut between blocks.

    Keras has no public name for "a graph model": `keras.Model(inputs, outputs)` returns
    an instance of the private `Functional` class, a `keras.Sequential` is one too.
    """
    from keras.src.models.functional import Functional

    return isinstance(layer, Functional)


def self_and_sublayers(layer) -> list:
    """`layer` and every layer nested in it, depth first.

    Keras 3 has no public recursive walk; `_flatten_layers` is what `Layer` itself uses.
    Plain operations in a functional graph (``keras.ops`` calls) have none: they are their
    own only member.
    """
    flatten_layers = getattr(layer, "_flatten_layers", None)
    return list(flatten_layers(include_self=True, recursive=True)) if flatten_layers else [layer]


def node_counts(model) -> list[tuple]:
    """Each layer of `model` with how many inbound and outbound nodes it has now (see `drop_nodes_since`)."""
    return [(layer, len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in self_and_sublayers(model)]


def drop_nodes_since(counts: list[tuple]) -> None:
    """Drop the call nodes added to each layer since `node_counts` counted them.

    Calling a layer on symbolic inputs appends a node to its private node lists, and
    the node holds the model that called it: a backbone reused by many trial models
    keeps every past trial model alive through them. Keras has no public way to
    disconnect a layer from a model built around it.
    """
    for layer, inbound, outbound in counts:
        del layer._inbound_nodes[inbound:], layer._outbound_nodes[outbound:]


def build_training_state(model, first_batch: Callable[[], tuple]) -> None:
    """Create the optimizer's and the metrics' variables before `fit` traces its train step.

    On TensorFlow without a distribution strategy, Keras creates them while tracing the
    first train step, and TensorFlow traces a function that created variables a second
    time: every phase of every trial paid two traces of its train step (0.4 s for a small
    head, seconds for transformer blocks). Keras builds them this way itself when a
    strategy is set (`_symbolic_build`, which has no public name); other backends build
    them before tracing anyway. `first_batch` gives (inputs, labels); it is only called here.
    """
    import keras

    if keras.backend.backend() != "tensorflow" or not hasattr(model, "_symbolic_build"):
        return
    x, y = first_batch()
    model._symbolic_build(data_batch=(x, y, None))


# --------------------------------------------------------------------------- exports


def optimizer_variable_index(optimizer, variable) -> int:
    """The position of `variable` among those `optimizer` was built for.

    An optimizer's `update_step` receives the backend's variable (under TensorFlow the
    `tf.Variable` inside the KerasVariable it was built with); Keras' own optimizers find a
    variable's slots with the private `_get_variable_index`, and layer-wise learning-rate decay
    (`autotl.search.recipe.LayerwiseRates`) finds its factor the same way.
    """
    return optimizer._get_variable_index(variable)


def keras_input_signature(model) -> list:
    """The `tf.TensorSpec` structure a Keras model's inputs take, as `model.export` computes it
    (`keras.src.export.export_utils.get_input_signature`: Keras exports no public name for it)."""
    from keras.src.export.export_utils import get_input_signature

    return get_input_signature(model)


def frozen_for_onnx(concrete_function):
    """`concrete_function` with its variables folded into constants, ready for tf2onnx.

    TensorFlow 2 has no public way to freeze a function; tf2onnx and Keras use this one.
    Keras' `patch_tf2onnx` is applied first: tf2onnx 1.17's fixes for numpy 2, as Keras'
    own ONNX export applies them.
    """
    from keras.src.export.tf2onnx_lib import patch_tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    patch_tf2onnx()
    return convert_variables_to_constants_v2(concrete_function)


# --------------------------------------------------------------------------- TensorFlow's memory


@contextlib.contextmanager
def traced_gradients_released():
    """Unregister the custom gradients TensorFlow registered while the block ran (a trial).

    Tracing a custom gradient in a graph (the optimizer step's ``all_reduce`` of the
    gradients does, in every Keras train function traced on TensorFlow) adds an entry to
    TensorFlow's process-wide gradient registry that nothing ever removes, and the entry's
    closure holds the traced graph: the whole train step, optimizer and metric graphs stay
    alive, about 4 MB per ``fit`` of a small model, which ``clear_session()`` cannot return.
    Gradients are looked up while a function is traced; those traced in a trial are
    never traced again once it ends, so its entries are dropped then (only those).
    """
    registry = _custom_gradient_registry()
    before = set(registry) if registry is not None else set()
    try:
        yield
    finally:
        if registry is not None:
            for name in [name for name in registry if name not in before and name.startswith("CustomGradient-")]:
                registry.pop(name, None)


def _custom_gradient_registry() -> dict | None:
    """TensorFlow's gradient registry (op type -> gradient function), or None off TensorFlow.

    TensorFlow has no public way to unregister a gradient.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    try:
        from tensorflow.python.framework import ops as tf_ops

        registry = tf_ops._gradient_registry._registry
    except (ImportError, AttributeError):
        return None
    return registry if isinstance(registry, dict) else None


class TrialHeap:
    """Returns a past trial's memory before the next one, without walking the whole heap each time.

    A trial's model, traced functions and optimizer are reference cycles: only a full
    garbage collection frees them. With TensorFlow and Keras loaded, a full collection
    walks millions of objects (0.2-0.3 s on a 2-core machine) that almost all live as
    long as the process: modules, the backbone, the cached activations. It ran once
    before every trial, and Python ran about as many again on its own while a trial
    traced its functions: on cached activations, a fifth of a depth-0 trial.

    So what survives the collection before a trial is frozen (`gc.freeze`): later
    collections, ours and Python's, skip it and walk only what the trials since
    created. What is frozen is what was alive between two trials, with the past
    trials' models already dropped (`drop_nodes_since`); `thaw` gives it back to
    the collector once the trials are over. A process that froze objects itself is
    left as it is, and collected in full as before.
    """

    def __init__(self):
        self._freezing: bool | None = None  # decided on the first release

    def collect_and_freeze(self) -> None:
        import keras

        keras.utils.clear_session(free_memory=True)  # Keras' global state, then a collection
        if self._freezing is None:
            self._freezing = gc.get_freeze_count() == 0
        if self._freezing:
            gc.freeze()

    def thaw(self) -> None:
        if self._freezing:
            gc.unfreeze()
        self._freezing = None


# --------------------------------------------------------------------------- KerasTuner


def set_oracle_project_dir(oracle, directory: str, project_name: str) -> None:
    """Point a KerasTuner oracle at its files without a Tuner (which is what normally does it).

    autotl opens the oracle before its tuner exists, to reload a resumed search or to
    serve it to distributed workers; `Oracle._set_project_dir` is the tuner's own call.
    """
    oracle._set_project_dir(directory, project_name)


@contextlib.contextmanager
def keras_tuner_tracebacks_off():
    """KerasTuner prints the traceback of every failed trial while its (private) DEBUG flag is on;
    autotl stores the error and reports it in one line instead."""
    from keras_tuner.src import config as kt_config

    debug, kt_config.DEBUG = kt_config.DEBUG, False
    try:
        yield
    finally:
        kt_config.DEBUG = debug


def write_json_atomically(path: str | os.PathLike, state: dict) -> None:
    """Write to a temporary file and rename it over `path`: a kill leaves the old file or the new one."""
    folder = os.path.dirname(os.fspath(path)) or "."
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as handle:
        json.dump(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


class AtomicOracleState:
    """Oracle mixin: KerasTuner writes its oracle and trial files in place, and a kill mid-write
    leaves a file `reload()` cannot parse. The same state, written atomically, through the
    oracle's private file names and its private `_save_trial` hook."""

    def save(self):
        write_json_atomically(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        write_json_atomically(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state())


class OracleOpenedElsewhere:
    """Tuner mixin: KerasTuner's `Tuner.__init__` fills the oracle's search space by building a
    model (its private `_populate_initial_space`). autotl's oracle arrives ready, opened fresh or
    reloaded (`search.tuner.open_oracle`) or served by a distributed search's chief."""

    def _populate_initial_space(self) -> None:
        pass


def serve_oracle(oracle, server):
    """Add KerasTuner's oracle service for `oracle` to the gRPC `server`; returns the servicer.

    KerasTuner serves its chief only from `Tuner.search` in a process whose environment
    names it chief, then exits the process; autotl's chief serves the oracle itself (to
    log to the store and stop cleanly), through KerasTuner's private servicer and protos.
    """
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer

    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    return servicer


def chief_may_exit(servicer, oracle) -> bool:
    """KerasTuner's own end condition for its chief (private `exit_chief`): the oracle said
    stop, and no tuner is still at work."""
    from keras_tuner.src.distribute.oracle_chief import exit_chief

    return servicer.stop_triggered and exit_chief(oracle)


def hyperband_first_full_trial(oracle) -> tuple[int, int]:
    """(how many trials a Hyperband oracle starts before its first trial trained for `max_epochs`,
    the epochs its first trials train), from its own private bracket arithmetic (`_get_num_brackets`,
    `_get_size`, `_get_epochs`): its first bracket is the most exploratory, and only its last round
    trains for the full epochs."""
    bracket = oracle._get_num_brackets() - 1
    before = sum(oracle._get_size(bracket, round_num) for round_num in range(bracket))
    return before + 1, oracle._get_epochs(bracket, 0)


def stopped_trial(oracle, tuner_id: str):
    """The answer KerasTuner's `Oracle.create_trial` gives when the search is over (`max_trials` reached).

    autotl stops a search for a reason of its own (`autotl.search.budget`), but KerasTuner
    has no public way to say so: the tuner must receive a STOPPED trial, and the oracle
    must forget the tuner id (its `tuner_ids`), or a distributed chief would wait for that
    worker forever (`chief_may_exit`).
    """
    from keras_tuner.src.engine import trial as trial_module

    oracle.tuner_ids.discard(tuner_id)
    return trial_module.Trial(hyperparameters=oracle.hyperparameters.copy(), trial_id="stopped",
                              status=trial_module.TrialStatus.STOPPED)


def exit_at_once(code: int = 0) -> None:
    """End this process without TensorFlow's teardown.

    A process that imported TensorFlow takes 2-3 s to exit here (its atexit handlers and thread pools): a search
    under --time-limit waited 1.7 s for its trial worker to exit after the last trial, then 2.4 s for its own exit
    after printing its summary (a tiny search, 25 s limit: 29.3 s from the command to the shell's prompt, 24.0 s
    with both exits at once). A search or trial worker that has finished has nothing left to write (its store
    rows, checkpoints and TensorBoard files are closed explicitly): its output is flushed, and it leaves.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to write anyway
            pass
    os._exit(code)
