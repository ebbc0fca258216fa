"""End-to-end engine tests on real MNIST digits with the tiny backbone: search,
store, best-epoch checkpoint, export and prediction in a fresh process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
import sqlalchemy as sa

from autotl import api
from autotl.backbones.registry import load_registry
from autotl.insight.progress import Reporter
from autotl.store import COMPLETED, Artifact, EpochMetric, Store, Trial
from autotl.search.runner import VAL_PROBS_NAME

from conftest import TINY_PLUGIN, autotl_command, run_cli

# A worker process dying and Ctrl-C do not depend on the backend: on torch (CI's second run) they are slow checks.
SLOW_ON_TORCH = pytest.mark.slow if keras.backend.backend() == "torch" else (lambda test: test)
SPACE = "unfreeze_depth: {values: [1, 2]}\nhead_lr: {min: 0.001, max: 0.01, sampling: log}\n"


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("search")
    (root / "space.yaml").write_text(SPACE)
    store = Store(f"sqlite:///{root / 'autotl.db'}")
    config = api.SearchConfig(
        data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)], image_size=16,
        max_trials=3, epochs=4, finetune_epochs=3, batch_size=16, patience=2, seed=1, name="engine",
        space_file=str(root / "space.yaml"), workdir=str(root / "runs"))
    result = api.search(config, store)
    return root, store, result, config


def test_every_trial_is_stored_with_hyperparameters_and_epochs(finished_search):
    _, store, result, _ = finished_search
    trials = store.list_trials(result.search.id)
    assert [t.number for t in trials] == [1, 2, 3]
    assert all(t.status == COMPLETED and t.duration_s > 0 for t in trials)
    for trial in trials:
        assert set(trial.hyperparameters) == {"pooling", "head_layers", "head_units", "dropout",
                                              "unfreeze_depth", "head_lr", "finetune_lr", "augment", "optimizer",
                                              "weight_decay", "lr_schedule", "warmup", "label_smoothing", "lr_decay"}
        assert trial.hyperparameters["unfreeze_depth"] in (1, 2)  # the space file was applied
        assert 0.001 <= trial.hyperparameters["head_lr"] <= 0.01
        epochs = store.epoch_metrics(trial.id)
        phases = {m.phase for m in epochs}
        assert phases == {"head", "finetune"}, "a trial with unfreeze depth > 0 runs both phases"
        val_acc = {(m.phase, m.epoch): m.value for m in epochs if m.name == "val_accuracy"}
        assert {m.name for m in epochs} >= {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
        # The trial's value is its best epoch over both phases, and it says which epoch that was.
        assert trial.value == pytest.approx(max(val_acc.values()))
        assert val_acc[(trial.best_phase, trial.best_epoch)] == pytest.approx(trial.value)


def test_search_row_and_best_trial(finished_search, mnist_dir):
    _, store, result, _ = finished_search
    search = store.get_search("engine")
    assert search.status == COMPLETED and search.finished_at is not None
    assert search.labels == [str(d) for d in range(10)]
    assert search.config["train_examples"] + search.config["val_examples"] == 120
    best = store.best_trial(search)
    assert best.value == max(t.value for t in store.list_trials(search.id))
    assert result.best.id == best.id


def test_only_the_best_trial_keeps_a_checkpoint_at_its_best_epoch(finished_search):
    root, store, result, config = finished_search
    checkpoints = store.artifacts(result.search.id, kind="checkpoint")
    surviving = [a for a in checkpoints if (root / "runs" / "engine").exists() and
                 Path(a.path).is_file()]
    assert [a.trial_id for a in surviving] == [result.best.id]
    # The checkpoint scores exactly the best epoch's validation accuracy (not the last epoch's).
    model = keras.saving.load_model(surviving[0].path)
    backbone_registry = load_registry([str(TINY_PLUGIN)])
    preprocessor = backbone_registry.get("tiny_cnn").preprocessor("none", {"image_size": (16, 16)})
    _, val = api.load_split(config, "image", preprocessor)
    probs = model.predict(preprocessor(val.examples), verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == val.labels))
    assert accuracy == pytest.approx(result.best.value, abs=1e-6)
    saved = np.load(Path(surviving[0].path).parent / VAL_PROBS_NAME)
    np.testing.assert_allclose(saved, probs, atol=1e-6)


@pytest.mark.parametrize("model_format", ["keras", *(pytest.param(fmt, marks=pytest.mark.slow)
                                                      for fmt in ("savedmodel", "onnx", "tflite"))])
def test_export_then_predict_in_a_fresh_process_reproduces_the_search_probabilities(finished_search, model_format):
    root, store, result, config = finished_search
    out = root / f"export_{model_format}"
    run_cli("export", "engine", "--out", out, "--format", model_format, "--store", store.url,
            "--plugin", TINY_PLUGIN, check=True)
    manifest = json.loads((out / "autotl.json").read_text())
    assert manifest["labels"] == [str(d) for d in range(10)]
    assert manifest["hyperparameters"] == result.best.hyperparameters
    assert manifest["search"] == {**manifest["search"], "name": "engine", "trial": result.best.number}
    assert manifest["preprocessing"]["image_size"] == [16, 16]
    assert all(len(digest) == 64 for digest in manifest["files"].values())

    registry = load_registry([str(TINY_PLUGIN)])
    preprocessor = registry.get("tiny_cnn").preprocessor("none", {"image_size": (16, 16)})
    _, val = api.load_split(config, "image", preprocessor)
    predicted = run_cli("predict", out, *val.sources, "--format", model_format, "--json", "--plugin", TINY_PLUGIN,
                        check=True)
    rows = json.loads(predicted.stdout)
    assert [r["source"] for r in rows] == val.sources
    probs = np.array([[r["probabilities"][label] for label in manifest["labels"]] for r in rows])
    checkpoint = [a for a in store.artifacts(result.search.id, kind="checkpoint") if a.trial_id == result.best.id][0]
    expected = np.load(Path(checkpoint.path).parent / VAL_PROBS_NAME)
    np.testing.assert_allclose(probs, expected, atol=1e-5 if model_format in ("keras", "savedmodel") else 1e-4)
    assert [r["label"] for r in rows] == [manifest["labels"][i] for i in expected.argmax(axis=1)]
    exports = store.artifacts(result.search.id, kind="export")
    assert any(a.format == model_format and a.sha256 for a in exports)


def test_cli_reads_trials_and_best_from_the_store(finished_search):
    _, store, result, _ = finished_search
    listed = json.loads(run_cli("trials", "engine", "--store", store.url, "--json", "--epochs", check=True).stdout)
    assert [t["number"] for t in listed] == [1, 2, 3]
    assert all(t["epochs"] for t in listed)
    best = json.loads(run_cli("best", "engine", "--store", store.url, "--json", check=True).stdout)
    assert best["number"] == result.best.number and best["value"] == pytest.approx(result.best.value)
    table = run_cli("trials", "engine", "--store", store.url, check=True).stdout
    assert "unfreeze_depth=" in table and table.count("completed") == 3


class MessageLog(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def message(self, text):
        self.lines.append(text)


@pytest.mark.parametrize("tuner", ["bayesian", pytest.param("hyperband", marks=pytest.mark.slow)])
def test_other_tuners_complete_and_respect_max_trials(tmp_path, mnist_dir, tuner):
    store = Store(str(tmp_path / "autotl.db"))
    config = api.SearchConfig(data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)],
                              image_size=16, tuner=tuner, max_trials=2, epochs=3, finetune_epochs=1,
                              batch_size=32, name=tuner, workdir=str(tmp_path / "runs"))
    messages = MessageLog()
    result = api.search(config, store, reporter=messages)
    trials = store.list_trials(result.search.id)
    assert len(trials) == 2 and all(t.status == COMPLETED for t in trials)
    warnings = [m for m in messages.lines if "--tuner hyperband" in m]
    if tuner == "hyperband":  # Hyperband sets each bracket's epoch budget
        # With --epochs 3 its first bracket trains 3 trials for 1 epoch, then the 4th for 3: 2 trials stop short.
        assert warnings == ["warning: --tuner hyperband trains its first trials for 1 head epoch(s) and only trial 4 "
                            "for all --epochs 3: --max-trials 2 stops before; give --max-trials 4 or more, or "
                            "--tuner random or bayesian"]
        assert all("tuner/epochs" in t.hyperparameters for t in trials)
        for trial in trials:
            head_epochs = {m.epoch for m in store.epoch_metrics(trial.id) if m.phase == "head"}
            assert max(head_epochs) <= trial.hyperparameters["tuner/epochs"]
    else:
        assert warnings == []


def test_a_given_validation_folder_is_used_instead_of_a_split(tmp_path, mnist_dir):
    store = Store(str(tmp_path / "autotl.db"))
    config = api.SearchConfig(data=str(mnist_dir), val_data=str(mnist_dir), backbone="tiny_cnn",
                              plugin_files=[str(TINY_PLUGIN)], image_size=16, max_trials=1, epochs=1,
                              finetune_epochs=0, name="given-val", workdir=str(tmp_path / "runs"))
    result = api.search(config, store)
    assert result.search.config["train_examples"] == 120 and result.search.config["val_examples"] == 120
    assert {m.phase for m in store.epoch_metrics(result.best.id)} == {"head"}


CRASHING_PLUGIN = '''
import os
import signal
import sys

import keras

from autotl.backbones import Backbone


class Crashing(Backbone):
    """Builds fine in the search process, kills its own process inside a trial worker."""

    name = "crashing"
    modality = "image"
    default_image_size = (16, 16)

    def build(self, weights, preprocessor):
        if sys.modules["__main__"].__spec__ and sys.modules["__main__"].__spec__.name == "autotl.search.trial_process":
            os.kill(os.getpid(), signal.SIGKILL)
        inputs = keras.Input((16, 16, 3))
        return keras.Model(inputs, keras.layers.Conv2D(4, 3, name="conv")(inputs))

    def blocks(self, model):
        return [[model.get_layer("conv")]]
'''


@SLOW_ON_TORCH
def test_a_trial_whose_worker_process_dies_is_stored_as_failed(tmp_path, mnist_dir):
    plugin = tmp_path / "crashing.py"
    plugin.write_text(CRASHING_PLUGIN)
    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    result = run_cli("search", mnist_dir, "--backbone", "crashing", "--plugin", plugin, "--max-trials", "2",
                     "--epochs", "1", "--name", "crash", "--store", store_url, "--workdir", tmp_path / "runs")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: search 'crash': no trial completed (see `autotl trials crash`)"
    assert "Traceback" not in result.stderr
    store = Store(store_url)
    search = store.get_search("crash")
    assert search.status == "failed"
    trials = store.list_trials(search.id)
    assert [t.status for t in trials] == ["failed", "failed"]
    assert all(t.error == "the trial worker process died (exit code -9)" for t in trials)


def test_trials_can_run_in_the_search_process(tmp_path, mnist_dir):
    store = Store(str(tmp_path / "autotl.db"))
    config = api.SearchConfig(data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)],
                              image_size=16, max_trials=2, epochs=1, finetune_epochs=1, trials_per_worker=0,
                              name="in-process", workdir=str(tmp_path / "runs"))
    result = api.search(config, store)
    assert [t.status for t in store.list_trials(result.search.id)] == [COMPLETED, COMPLETED]
    assert not (tmp_path / "runs" / "in-process" / "data").exists()


@SLOW_ON_TORCH
def test_ctrl_c_marks_the_search_and_its_running_trial_interrupted(tmp_path, mnist_dir):
    import os
    import signal
    import subprocess
    import time

    from conftest import autotl_command

    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    process = subprocess.Popen(
        [*autotl_command(), "search", str(mnist_dir), "--backbone", "tiny_cnn", "--plugin", str(TINY_PLUGIN),
         "--image-size", "16", "--max-trials", "3", "--epochs", "200", "--patience", "200", "--name", "stop-me",
         "--store", store_url, "--workdir", str(tmp_path / "runs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # A child inherits an *ignored* SIGINT (set by some library in this test process,
        # or by a shell for background jobs); give it the disposition an interactive user's has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    store = Store(store_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the first trial has logged an epoch
        searches = store.list_searches()
        trials = store.list_trials(searches[0].id) if searches else []
        if trials and store.epoch_metrics(trials[0].id):
            break
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the search never started training")
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "Interrupted."
    search = store.get_search("stop-me")
    assert search.status == "interrupted"
    assert [t.status for t in store.list_trials(search.id)] == ["interrupted"]


def test_the_same_seed_tries_the_same_hyperparameters(tmp_path, mnist_dir):
    def tried(name: str, seed: int) -> list[dict]:
        config = api.SearchConfig(data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)],
                                  image_size=16, max_trials=3, epochs=1, finetune_epochs=0, seed=seed,
                                  trials_per_worker=0, name=name, workdir=str(tmp_path / "runs"),
                                  portfolio=False)  # the portfolio's first trials are the same for every seed
        result = api.search(config, Store(str(tmp_path / "autotl.db")))
        return [t.hyperparameters for t in result.trials]

    first = tried("seed-0-a", 0)
    assert tried("seed-0-b", 0) == first
    assert tried("seed-1", 1) != first


def test_a_worker_is_replaced_once_its_memory_grew_past_the_limit():
    import subprocess
    import sys

    from autotl.search.trial_process import TrialProcess, resident_mb

    worker = TrialProcess(spec=None, trials_per_worker=10, max_growth_mb=50)
    worker._process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        worker._trials_done = 1
        worker._baseline_mb = resident_mb(worker._process.pid)
        assert worker._baseline_mb > 0
        assert not worker._due_for_replacement()
        worker._baseline_mb -= 51  # as if it had grown by 51 MB since its first trial
        assert worker._due_for_replacement()
        worker._baseline_mb += 51
        worker._trials_done = 10
        assert worker._due_for_replacement()
    finally:
        worker._process.kill()
        worker._process.wait()


def test_the_best_epoch_of_a_tie_is_the_one_with_the_lower_validation_loss():
    """Within a trial as between trials (tests/test_store.py): equal accuracy, lower loss wins."""
    from autotl.search.records import Objective
    from autotl.search.runner import BestEpoch

    weight = keras.Variable(0.0)
    tracker = BestEpoch(Objective("val_accuracy", "max"))
    callback = tracker.callback("head", [weight])
    for epoch, (accuracy, loss) in enumerate([(0.9, 0.5), (1.0, 0.4), (1.0, 0.2), (1.0, 0.3), (0.95, 0.1)]):
        weight.assign(float(epoch))
        callback.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
    assert tracker.best == ("head", 3) and tracker.best_logs["val_loss"] == 0.2
    tracker.restore()
    assert float(keras.ops.convert_to_numpy(weight)) == 2.0


@pytest.mark.slow
def test_a_backbone_whose_frozen_features_hardly_vary_is_named_once_in_a_warning(tmp_path, mnist_dir):
    """Issue 29, 8: `keras:MobileNetV3Small --weights none` gave features of about 1e-10, and every trial sat at
    the loss of a uniform guess without a word. Here the tiny backbone's output is scaled by 1e-12."""
    from autotl.search.preparation import feature_spread

    flat = TINY_PLUGIN.read_text().replace('name = "tiny_cnn"', 'name = "flat_cnn"').replace(
        '        model = keras.Model(inputs, x, name="tiny_cnn")',
        '        x = keras.layers.Rescaling(1e-12, name="block2_scale")(x)\n'
        '        model = keras.Model(inputs, x, name="tiny_cnn")')
    plugin = tmp_path / "flat_cnn.py"
    plugin.write_text(flat)
    result = run_cli("search", mnist_dir, "--backbone", "flat_cnn", "--plugin", plugin, "--max-trials", "1",
                     "--epochs", "1", "--image-size", "16", "--no-portfolio", "--name", "flat",
                     "--store", f"sqlite:///{tmp_path / 'autotl.db'}", "--workdir", tmp_path / "runs", check=True)
    warnings = [line for line in result.stderr.splitlines() if "frozen features hardly differ" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "check --weights" in warnings[0]
    # The tiny backbone itself, random as it is, is far from the bound.
    tiny = load_registry([str(TINY_PLUGIN)]).get("tiny_cnn")
    preprocessor = tiny.preprocessor("none", {"image_size": (16, 16)})
    images = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 3), dtype=np.uint8)
    assert feature_spread(tiny.build("none", preprocessor), preprocessor(images)) > 1e-3


def test_delete_removes_a_search_its_rows_and_checkpoints_after_asking(tmp_path, mnist_dir):
    """Issue 29, 3: `autotl delete SEARCH` (store rows and checkpoints), with a prompt and --yes."""
    store = Store(f"sqlite:///{tmp_path / 'autotl.db'}")
    for name in ("gone", "kept"):
        api.search(api.SearchConfig(data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)],
                                    image_size=16, max_trials=1, epochs=1, finetune_epochs=1, name=name,
                                    workdir=str(tmp_path / "runs")), store)
    gone = store.get_search("gone")
    assert (tmp_path / "runs" / "gone").is_dir() and store.artifacts(gone.id)
    refused = subprocess.run([*autotl_command(), "delete", "gone", "--store", store.url], input="n\n",
                             capture_output=True, text=True)
    assert refused.returncode == 1 and store.get_search("gone").id == gone.id
    assert f"delete search 'gone' (1 trials) and its folder {tmp_path / 'runs' / 'gone'}?" in refused.stdout
    deleted = run_cli("delete", "gone", "--store", store.url, "--yes", check=True)
    assert deleted.stdout.strip() == f"deleted search 'gone' (1 trials) and its folder {tmp_path / 'runs' / 'gone'}"
    assert [s.name for s in store.list_searches()] == ["kept"]
    assert not (tmp_path / "runs" / "gone").exists() and (tmp_path / "runs" / "kept").is_dir()
    with store.session() as session:  # its trials, epochs and artifacts went with it
        assert session.scalar(sa.select(sa.func.count()).select_from(Trial).where(Trial.search_id == gone.id)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(Artifact)
                              .where(Artifact.search_id == gone.id)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(EpochMetric)) > 0  # the kept search's
    unknown = run_cli("delete", "gone", "--store", store.url, "--yes")
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1
