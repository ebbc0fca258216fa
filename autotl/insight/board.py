"""TensorBoard logs of a search (`autotl search --tensorboard DIR`).

Layout, under the search's folder ``DIR/NAME``::

    DIR/NAME/              the HParams experiment: the search space's domains and the objective
    DIR/NAME/trial_001/    one run per trial: its hyperparameters (an HParams session), the
                           scalars of every epoch under ``head/...`` and ``finetune/...``
                           (step: the epoch within the phase), and the trial's value of the
                           objective under the objective's own name (the HParams metric)

The files are written with TensorBoard's own event writer and protocol buffers,
never through TensorFlow: Keras' `TensorBoard` callback imports `tensorflow.summary`,
which a torch or JAX install does not have. (For the same reason the HParams
helpers come from ``tensorboard.plugins.hparams.summary_v2``, which
``tensorboard.plugins.hparams.api`` re-exports next to a TensorFlow-only Keras callback.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from autotl.errors import UsageError, first_line
from autotl.search.records import Objective

_EVENT_GLOB = "events.out.tfevents.*"


def require_tensorboard() -> None:
    """Fail in one line, before any trial, where the tensorboard package is missing."""
    try:
        _modules()
    except ImportError as exc:
        raise UsageError(f"--tensorboard needs the tensorboard package (pip install tensorboard): "
                         f"{first_line(exc)}") from None


def _modules():
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from tensorboard.plugins.hparams import summary_v2 as hparams
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    return event_pb2, summary_pb2, api_pb2, metadata, plugin_data_pb2, hparams, EventFileWriter


def trial_run_name(number: int) -> str:
    return f"trial_{number:03d}"


def hparam_values(values: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """A trial's hyperparameters as the HParams plugin takes them (KerasTuner's own `tuner/...` left out)."""
    out: dict[str, bool | int | float | str] = {}
    for name, value in values.items():
        if name.startswith("tuner/"):
            continue
        if hasattr(value, "item"):  # numpy scalars
            value = value.item()
        out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class _Writer:
    """An event file in `directory`, replacing the event files an earlier run of the same name left there."""

    def __init__(self, directory: Path):
        (self._event_pb2, self._summary_pb2, self._api_pb2, self._metadata, self._plugin_data_pb2,
         self._hparams, writer_class) = _modules()
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(_EVENT_GLOB):
            stale.unlink()
        self.directory = directory
        self._writer = writer_class(str(directory))

    def summary(self, summary, step: int = 0) -> None:
        self._writer.add_event(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        summary = self._summary_pb2.Summary()
        for tag, value in values.items():
            summary.value.add(tag=tag, simple_value=float(value))
        self.summary(summary, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def write_experiment(directory: str | Path, space: Mapping[str, Mapping[str, Any]], objective: Objective) -> None:
    """The search's HParams experiment: each hyperparameter with its domain, and the objective as the metric."""
    writer = _Writer(Path(directory))
    hp = writer._hparams
    params = [hp.HParam(name, _domain(hp, spec)) for name, spec in space.items()]
    metric = hp.Metric(objective.name, display_name=f"{objective.name} ({objective.direction})",
                       dataset_type=hp.Metric.VALIDATION)
    writer.summary(hp.hparams_config_pb(params, [metric], time_created_secs=time.time()))
    writer.close()


def _domain(hp, spec: Mapping[str, Any]):
    if "values" in spec:
        values = list(spec["values"])
        if all(isinstance(v, bool) for v in values):
            return hp.Discrete(values, dtype=bool)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return hp.Discrete([float(v) for v in values], dtype=float)
        if all(isinstance(v, str) for v in values):
            return hp.Discrete(values, dtype=str)
        return None  # mixed types: the plugin takes the values as they come
    if spec.get("type") == "int":
        return hp.IntInterval(int(spec["min"]), int(spec["max"]))
    return hp.RealInterval(float(spec["min"]), float(spec["max"]))


class TrialBoard:
    """One trial's run: its HParams session, its epochs and its result."""

    def __init__(self, search_dir: str | Path, number: int, values: Mapping[str, Any], objective: Objective):
        self.objective = objective
        self.run = trial_run_name(number)
        self._writer = _Writer(Path(search_dir) / self.run)
        hp = self._writer._hparams
        self._writer.summary(hp.hparams_pb(hparam_values(values), trial_id=self.run, start_time_secs=time.time()))
        self._writer.flush()

    def epoch(self, phase: str, epoch: int, logs: Mapping[str, Any]) -> None:
        """The epoch's metrics (loss, accuracy, val_loss, val_accuracy) as `PHASE/NAME`, step `epoch`."""
        self._writer.scalars({f"{phase}/{name}": float(value) for name, value in logs.items()}, epoch)
        self._writer.flush()

    def finish(self, value: float | None, ok: bool) -> None:
        """The trial's value of the objective (the HParams metric) and how the session ended."""
        w = self._writer
        if ok and value is not None:
            w.scalars({self.objective.name: value}, 0)
        status = w._api_pb2.STATUS_SUCCESS if ok else w._api_pb2.STATUS_FAILURE
        end = w._plugin_data_pb2.HParamsPluginData(
            session_end_info=w._plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time()))
        summary = w._summary_pb2.Summary()
        summary.value.add(tag=w._metadata.SESSION_END_INFO_TAG, metadata=w._metadata.create_summary_metadata(end),
                          tensor=w._metadata.NULL_TENSOR)
        w.summary(summary)
        w.close()

    def close(self) -> None:
        """End the run's file without an end of session (the trial was interrupted)."""
        self._writer.close()
