"""`--refit`: the best configuration trained again on training + validation examples, stored apart from
the trial, and exported in every format (reloaded without autotl, with the tolerances of every export)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from autotl import api
from autotl.backbones import layers  # noqa: F401 - the refit checkpoint holds autotl's layers
from autotl.search.budget import Deadline, room_for_a_trial
from autotl.search.records import VAL_PROBS_NAME
from autotl.search.refit import REFIT_KIND, RESULT_KEY
from autotl.store import Store

from conftest import TINY_PLUGIN, run_cli
from test_export_formats import ALL_FORMATS, assert_reloads_like, image_inputs
from test_search import MessageLog

IMAGE_SIZE = (16, 16)
# The whole tiny backbone trains (random weights: frozen, it learns little), fast enough to learn digits.
SPACE = ("unfreeze_depth: 2\nhead_lr: {values: [0.01, 0.02]}\nfinetune_lr: 0.003\npooling: flatten\n"
         "head_layers: 0\ndropout: 0.0\n")


def run_tiny_search(root: Path, data: Path, space: str, **options):
    """A real search of the tiny backbone on `data` (digits at 16 px) with `space`, through the API, its
    messages kept: (store, result, config, messages)."""
    (root / "space.yaml").write_text(space)
    store = Store(f"sqlite:///{root / 'autotl.db'}")
    config = api.SearchConfig(data=str(data), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)],
                              image_size=IMAGE_SIZE[0], space_file=str(root / "space.yaml"),
                              workdir=str(root / "runs"), **options)
    messages = MessageLog()
    result = api.search(config, store, reporter=messages)
    return store, result, config, messages


def validation_split(config):
    """The search's validation split, and the tiny backbone's preprocessor."""
    from autotl.backbones.registry import load_registry

    preprocessor = load_registry([str(TINY_PLUGIN)]).get("tiny_cnn").preprocessor("none", {"image_size": IMAGE_SIZE})
    _, val = api.load_split(config, "image", preprocessor)
    return val, preprocessor


@pytest.fixture(scope="module")
def refit_search(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("refit")
    store, result, config, messages = run_tiny_search(
        root, mnist_dir, SPACE, max_trials=2, epochs=8, finetune_epochs=8, batch_size=16, patience=8, seed=2,
        name="refit", refit=True)
    return root, store, result, config, messages


def _refit_path(store, result) -> Path:
    artifacts = store.artifacts(result.search.id, kind=REFIT_KIND)
    assert [a.trial_id for a in artifacts] == [result.best.id]
    return Path(artifacts[0].path)


@pytest.mark.slow
def test_the_refit_trains_the_best_trials_epochs_on_every_labelled_example(refit_search):
    _, store, result, config, messages = refit_search
    search = store.get_search("refit")
    best = result.best
    head: dict[int, dict[str, float]] = {}
    for metric in store.epoch_metrics(best.id):
        if metric.phase == "head":
            head.setdefault(metric.epoch, {})[metric.name] = metric.value
    # The best accuracy; of equal ones, the lower validation loss; then the earlier epoch.
    best_head_epoch = min(head, key=lambda epoch: (-head[epoch]["val_accuracy"], head[epoch]["val_loss"], epoch))
    expected = {"trial": best.number, "examples": search.config["train_examples"] + search.config["val_examples"],
                "head_epochs": best.best_epoch if best.best_phase == "head" else best_head_epoch,
                "finetune_epochs": best.best_epoch if best.best_phase == "finetune" else 0}
    stored = search.config[RESULT_KEY]
    assert {k: stored[k] for k in expected} == expected and stored["seconds"] > 0
    epochs = f"{expected['head_epochs']} head" + (
        f" + {expected['finetune_epochs']} fine-tuning" if expected["finetune_epochs"] else "")
    said = [line for line in messages.lines if line.startswith("refit: ")]
    assert len(said) == 1 and said[0].startswith(
        f"refit: trial {best.number}'s configuration trained again on all {expected['examples']} labelled examples "
        f"({epochs} epochs) in "), said
    shown = json.loads(run_cli("best", "refit", "--store", store.url, "--json", check=True).stdout)
    assert shown["refit"] == stored and shown["value"] == pytest.approx(best.value)
    assert f"refit on all {expected['examples']} labelled examples" in run_cli("best", "refit", "--store", store.url,
                                                                               check=True).stdout
    # The trial keeps its own checkpoint and validation figure: the refit is stored beside it.
    assert store.artifacts(search.id, kind="checkpoint", trial_id=best.id)
    assert search.status == "completed" and best.value == result.best.value


@pytest.mark.slow
def test_the_refit_model_learned_the_validation_examples(refit_search):
    _, store, result, config, _ = refit_search
    val, preprocessor = validation_split(config)
    path = _refit_path(store, result)
    refit = keras.saving.load_model(path, compile=False)
    probs = refit.predict(preprocessor(val.examples), verbose=0)
    np.testing.assert_allclose(np.load(path.parent / VAL_PROBS_NAME), probs, atol=1e-5)
    checkpoint = store.artifacts(result.search.id, kind="checkpoint", trial_id=result.best.id)[-1].path
    trial_model = keras.saving.load_model(checkpoint, compile=False)
    trial_accuracy = float(np.mean(trial_model.predict(preprocessor(val.examples), verbose=0).argmax(1) == val.labels))
    refit_accuracy = float(np.mean(probs.argmax(axis=1) == val.labels))
    print(f"validation accuracy: trial {trial_accuracy:.3f}, refit (trained on them) {refit_accuracy:.3f}")
    assert trial_accuracy == pytest.approx(result.best.value, abs=1e-6)
    assert refit_accuracy > trial_accuracy


# Every format but model.keras is a slow check here (-m slow): test_export_formats covers each in CI.
FORMATS_IN_CI = [fmt if fmt == "keras" else pytest.param(fmt, marks=pytest.mark.slow) for fmt in ALL_FORMATS]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS_IN_CI)
def test_the_refit_exports_and_reloads_without_autotl_in_every_format(refit_search, fmt, tmp_path):
    root, store, result, config, _ = refit_search
    out = root / f"export_{fmt}"
    done = run_cli("export", "refit", "--out", out, "--format", fmt, "--store", store.url, "--plugin", TINY_PLUGIN,
                   check=True)
    assert f"exported trial {result.best.number} (its refit on all labelled examples)" in done.stdout
    manifest = json.loads((out / "autotl.json").read_text())
    assert manifest["refit"] == store.get_search("refit").config[RESULT_KEY]
    assert manifest["search"]["trial"] == result.best.number
    val, _ = validation_split(config)
    pixels, takes = image_inputs(val.sources[:20], IMAGE_SIZE, tmp_path)
    expected = keras.saving.load_model(_refit_path(store, result), compile=False).predict(pixels, verbose=0)
    assert_reloads_like(fmt, out, takes, expected, tmp_path, "the refit model")


@pytest.mark.slow
def test_export_no_refit_writes_the_validated_trial(refit_search):
    root, store, result, _, _ = refit_search
    out = root / "export_validated"
    done = run_cli("export", "refit", "--out", out, "--format", "keras", "--no-refit", "--store", store.url,
                   "--plugin", TINY_PLUGIN, check=True)
    assert "its refit" not in done.stdout
    manifest = json.loads((out / "autotl.json").read_text())
    assert manifest["refit"] is None
    assert_holds_the_best_trials_weights(out, store, result)


def assert_holds_the_best_trials_weights(export_dir: Path, store, result) -> None:
    """The export's model.keras has the weights of the best trial's checkpoint."""
    checkpoint = store.artifacts(result.search.id, kind="checkpoint", trial_id=result.best.id)[-1].path
    exported = keras.saving.load_model(export_dir / "model.keras", compile=False)
    trial = keras.saving.load_model(checkpoint, compile=False)
    for mine, theirs in zip(exported.get_weights(), trial.get_weights()):
        np.testing.assert_array_equal(mine, theirs)


def test_a_time_limited_search_keeps_room_for_the_refit():
    deadline = Deadline.after(100)
    assert room_for_a_trial(deadline, [30.0, 40.0])
    assert not room_for_a_trial(deadline, [30.0, 40.0], reserve=70.0)


@pytest.mark.slow
def test_without_time_for_it_the_search_skips_the_refit_and_says_so(tmp_path, mnist_dir):
    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    result = run_cli("search", mnist_dir, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16",
                     "--epochs", "200", "--patience", "200", "--time-limit", "12s", "--refit", "--name", "tight",
                     "--no-portfolio", "--store", store_url, "--workdir", tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    assert "no refit: it would take about" in result.stdout + result.stderr
    assert "completed, and another trial and the refit would not have finished" in result.stderr
    store = Store(store_url)
    search = store.get_search("tight")
    assert RESULT_KEY not in search.config and not store.artifacts(search.id, kind=REFIT_KIND)
    exported = run_cli("export", "tight", "--out", tmp_path / "out", "--format", "keras", "--store", store_url,
                       "--plugin", TINY_PLUGIN, check=True)
    assert json.loads((tmp_path / "out" / "autotl.json").read_text())["refit"] is None
    assert "its refit" not in exported.stdout
