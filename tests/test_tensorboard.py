"""`autotl search --tensorboard DIR`: a real tiny search through the CLI, its event files read back
with TensorBoard's own EventAccumulator and compared with what the store holds."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from autotl.store import COMPLETED, Store

from conftest import TINY_PLUGIN, autotl_command, run_cli

pytestmark = pytest.mark.slow  # an optional extra's logs: a search of half a minute

SPACE = "unfreeze_depth: {values: [1]}\nhead_lr: {min: 0.001, max: 0.01, sampling: log}\n"
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def accumulator(directory: Path) -> EventAccumulator:
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def plugin_data(events: EventAccumulator, tag: str) -> bytes:
    return events.SummaryMetadata(tag).plugin_data.content


def hparam_value(value):
    kind = value.WhichOneof("kind")
    return {"bool_value": value.bool_value, "number_value": value.number_value,
            "string_value": value.string_value}[kind]


@pytest.fixture(scope="module")
def logged_search(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("tensorboard")
    (root / "space.yaml").write_text(SPACE)
    store_url = f"sqlite:///{root / 'autotl.db'}"
    run_cli("search", mnist_dir, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16",
            "--max-trials", "2", "--epochs", "3", "--finetune-epochs", "2", "--patience", "5", "--batch-size", "32",
            "--space", root / "space.yaml", "--name", "logged", "--store", store_url, "--workdir", root / "runs",
            "--tensorboard", root / "tb", cwd=root, check=True)
    store = Store(store_url)
    search = store.get_search("logged")
    return root / "tb" / "logged", store, search


def test_one_run_per_trial_under_the_search_name(logged_search):
    directory, store, search = logged_search
    trials = store.list_trials(search.id)
    assert [t.status for t in trials] == [COMPLETED, COMPLETED]
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == ["trial_001", "trial_002"]
    assert search.config["tensorboard_dir"] == str(directory.parent)  # kept, absolute, for `autotl resume`


def test_every_epoch_of_both_phases_is_a_scalar_equal_to_the_store(logged_search):
    directory, store, search = logged_search
    for trial in store.list_trials(search.id):
        events = accumulator(directory / f"trial_{trial.number:03d}")
        stored = {(m.phase, m.name, m.epoch): m.value for m in store.epoch_metrics(trial.id)}
        for phase in ("head", "finetune"):
            epochs = sorted({epoch for (p, name, epoch) in stored if p == phase})
            assert epochs, f"trial {trial.number} ran no {phase} epoch"
            for name in METRICS:
                scalars = events.Scalars(f"{phase}/{name}")
                assert [s.step for s in scalars] == epochs
                for s in scalars:
                    assert s.value == pytest.approx(stored[(phase, name, s.step)], rel=1e-6, abs=1e-7)
        # seconds stay in the store; the run holds the metrics Keras reported, and the objective
        assert set(events.Tags()["scalars"]) == {f"{p}/{m}" for p in ("head", "finetune") for m in METRICS} | \
            {"val_accuracy"}


def test_each_trial_is_an_hparams_session_with_its_values_and_objective(logged_search):
    directory, store, search = logged_search
    for trial in store.list_trials(search.id):
        events = accumulator(directory / f"trial_{trial.number:03d}")
        start = metadata.parse_session_start_info_plugin_data(
            plugin_data(events, metadata.SESSION_START_INFO_TAG))
        assert start.group_name == f"trial_{trial.number:03d}"
        logged = {name: hparam_value(value) for name, value in start.hparams.items()}
        assert logged == pytest.approx(trial.hyperparameters)
        assert {type(v) for k, v in logged.items() if k in ("pooling", "augment")} == {str, bool}
        end = metadata.parse_session_end_info_plugin_data(plugin_data(events, metadata.SESSION_END_INFO_TAG))
        assert end.status == api_pb2.STATUS_SUCCESS
        [objective] = events.Scalars(search.objective)
        assert objective.value == pytest.approx(trial.value, rel=1e-6)


def test_the_experiment_holds_the_search_space_domains(logged_search):
    directory, _, search = logged_search
    events = accumulator(directory)
    experiment = metadata.parse_experiment_plugin_data(plugin_data(events, metadata.EXPERIMENT_TAG))
    infos = {info.name: info for info in experiment.hparam_infos}
    space = search.config["space"]
    assert set(infos) == set(space)
    assert [v.number_value for v in infos["unfreeze_depth"].domain_discrete.values] == [1.0]
    assert [v.string_value for v in infos["pooling"].domain_discrete.values] == ["avg", "flatten"]
    assert [v.bool_value for v in infos["augment"].domain_discrete.values] == [False]
    assert (infos["head_lr"].domain_interval.min_value, infos["head_lr"].domain_interval.max_value) == \
        pytest.approx((0.001, 0.01))
    assert infos["head_layers"].domain_interval.max_value == space["head_layers"]["max"]
    [metric] = experiment.metric_infos
    assert metric.name.tag == "val_accuracy" and metric.name.group == ""


def test_trials_lists_the_real_search_best_first(logged_search):
    _, store, search = logged_search
    rows = json.loads(run_cli("trials", "logged", "--store", store.url, "--json", "--sort", "value",
                              check=True).stdout)
    values = [row["value"] for row in rows]
    assert values == sorted(values, reverse=True)
    assert rows[0]["number"] == store.best_trial(search).number


def blocked(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment where importing `modules` fails, as on an install without them."""
    shadow = tmp_path / "blocked"
    for module in modules:
        (shadow / module).mkdir(parents=True)
        (shadow / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError({f'No module named {module!r}'!r}, name={module!r})\n")
    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "3"}


@pytest.mark.slow
def test_torch_backend_logs_without_tensorflow(tmp_path, mnist_dir):
    pytest.importorskip("torch")
    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    (tmp_path / "space.yaml").write_text(SPACE)
    result = subprocess.run(
        [*autotl_command(), "search", str(mnist_dir), "--backbone", "tiny_cnn", "--plugin", str(TINY_PLUGIN),
         "--image-size", "16", "--max-trials", "1", "--epochs", "1", "--finetune-epochs", "1",
         "--space", str(tmp_path / "space.yaml"), "--name", "torch", "--store", store_url,
         "--workdir", str(tmp_path / "runs"), "--tensorboard", str(tmp_path / "tb")],
        capture_output=True, text=True, env=blocked(tmp_path, "tensorflow"))
    assert result.returncode == 0, result.stderr
    store = Store(store_url)
    [trial] = store.list_trials(store.get_search("torch").id)
    events = accumulator(tmp_path / "tb" / "torch" / "trial_001")
    assert [s.step for s in events.Scalars("head/loss")] == [1]
    assert [s.step for s in events.Scalars("finetune/val_accuracy")] == [1]
    assert events.Scalars("val_accuracy")[0].value == pytest.approx(trial.value, rel=1e-6)
    assert metadata.EXPERIMENT_TAG in accumulator(tmp_path / "tb" / "torch").Tags()["tensors"]


def test_missing_tensorboard_is_a_one_line_usage_error_before_any_trial(tmp_path, mnist_dir):
    pytest.importorskip("torch")
    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    result = subprocess.run(
        [*autotl_command(), "search", str(mnist_dir), "--backbone", "tiny_cnn", "--plugin", str(TINY_PLUGIN),
         "--image-size", "16", "--max-trials", "1", "--name", "no-tb", "--store", store_url,
         "--workdir", str(tmp_path / "runs"), "--tensorboard", str(tmp_path / "tb")],
        capture_output=True, text=True, env=blocked(tmp_path, "tensorflow", "tensorboard"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("Error: --tensorboard needs the tensorboard package (pip install tensorboard): "
                                     "No module named 'tensorboard'")
    assert Store(store_url).list_searches() == []
    assert not (tmp_path / "tb").exists() and not (tmp_path / "runs").exists()
