"""`--ensemble-size`: greedy ensemble selection over the kept trials, exported as one model that shares
the frozen backbone, reloaded without autotl in every format with the tolerances of every export.
Its search holds out 40 % of the digits for validation (48), so that accuracy moves in steps small enough
for an average of the kept trials to pass the best one."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from autotl.backbones import layers  # noqa: F401 - the checkpoints hold autotl's layers
from autotl.backbones.registry import load_registry
from autotl.export.ensemble_model import ensemble_model
from autotl.search import ensemble
from autotl.search.records import VAL_PROBS_NAME, Objective

from conftest import TINY_PLUGIN, run_cli
from test_export_formats import ALL_FORMATS, assert_reloads_like, image_inputs
from test_refit import IMAGE_SIZE, assert_holds_the_best_trials_weights, run_tiny_search, validation_split

POOL = 4
# Fine-tuned top blocks of different depths (the tiny backbone's random weights learn little frozen), so that
# the ensemble model shares only what lies below the deepest member's blocks.
SPACE = ("unfreeze_depth: {values: [1, 2]}\nhead_lr: {values: [0.01, 0.03]}\nfinetune_lr: {values: [0.003, 0.01]}\n"
         "pooling: flatten\nhead_layers: 0\ndropout: 0.0\n")
ACCURACY = Objective("val_accuracy", "max")


def _two_classes(class_one: list[float]) -> np.ndarray:
    return np.stack([1 - np.array(class_one), np.array(class_one)], axis=1)


def test_selection_adds_with_replacement_the_member_that_makes_the_average_best():
    labels = np.array([0, 0, 0, 1, 1, 1])
    candidates = {1: _two_classes([0.8, 0.1, 0.2, 0.5, 0.7, 0.7]),  # 4 of 6 right (a tie 0.5/0.5 reads as class 0)
                  2: _two_classes([0.0, 0.6, 0.3, 0.7, 0.3, 0.4]),  # 3 of 6
                  3: _two_classes([0.3, 0.7, 0.2, 0.4, 0.4, 0.7])}  # 3 of 6
    singles = [ensemble.score(ACCURACY, c, labels) for c in candidates.values()]
    pairs = [ensemble.score(ACCURACY, (candidates[i] + candidates[j]) / 2, labels) for i, j in ((1, 2), (1, 3), (2, 3))]
    assert singles == pytest.approx([4 / 6, 3 / 6, 3 / 6]) and max(pairs) == pytest.approx(5 / 6)
    counts, value = ensemble.select(candidates, labels, steps=4, objective=ACCURACY)
    # Only trial 1 twice, with 2 and 3 once each, gets all six right: no single trial or equal pair does.
    assert counts == {1: 2, 2: 1, 3: 1} and value == 1.0
    mean = (2 * candidates[1] + candidates[2] + candidates[3]) / 4
    assert ensemble.score(ACCURACY, mean, labels) == value
    assert ensemble.select(candidates, labels, steps=1, objective=ACCURACY) == ({1: 1}, pytest.approx(4 / 6))
    log_loss = ensemble.score(Objective("val_loss", "min"), candidates[1], labels)
    assert log_loss == pytest.approx(-np.mean(np.log([0.2, 0.9, 0.8, 0.5, 0.7, 0.7])))


@pytest.fixture(scope="module")
def ensemble_search(tmp_path_factory, mnist_dir):
    # Seed 4: the random draws for which an average of the kept trials beats the best one on these digits (seed 3
    # did until the space gained lr_decay, which moved KerasTuner's draws; seeds 5 and 6 give no ensemble).
    root = tmp_path_factory.mktemp("ensemble")
    store, result, config, messages = run_tiny_search(
        root, mnist_dir, SPACE, max_trials=6, epochs=8, finetune_epochs=8, batch_size=16, patience=8, seed=4,
        name="ens", ensemble_size=POOL, portfolio=False, val_split=0.4)
    return root, store, result, config, messages


def _members(store, search) -> dict[int, keras.Model]:
    trials = {t.id: t.number for t in store.list_trials(search.id)}
    return {trials[a.trial_id]: keras.saving.load_model(a.path, compile=False)
            for a in store.artifacts(search.id, kind="checkpoint")}


def test_the_search_keeps_its_best_trials_and_records_the_ensemble_it_chose(ensemble_search):
    _, store, result, config, messages = ensemble_search
    search = store.get_search("ens")
    kept = {t.number for t in store.best_trials(search, POOL)}
    members = _members(store, search)
    assert set(members) == kept and len(kept) == POOL  # the others' checkpoints were removed
    stored = search.config[ensemble.RESULT_KEY]
    assert stored["used"], stored  # on these digits the average of the kept trials beats the best one
    # Recomputed from the members' own predictions of the validation digits, not the saved probabilities.
    val, preprocessor = validation_split(config)
    x = preprocessor(val.examples)
    mean = sum(m["weight"] * members[m["trial"]].predict(x, verbose=0) for m in stored["members"])
    best_alone = members[result.best.number].predict(x, verbose=0)
    assert float(np.mean(mean.argmax(axis=1) == val.labels)) == pytest.approx(stored["value"])
    assert float(np.mean(best_alone.argmax(axis=1) == val.labels)) == pytest.approx(stored["best_trial_value"])
    assert stored["value"] > result.best.value == pytest.approx(stored["best_trial_value"])
    assert stored["best_trial"] == result.best.number
    assert sum(m["weight"] for m in stored["members"]) == pytest.approx(1.0)
    said = [line for line in messages.lines if line.startswith("ensemble: ")]
    assert len(said) == 1 and "exports use it" in said[0]
    shown = json.loads(run_cli("best", "ens", "--store", store.url, "--json", check=True).stdout)
    assert shown["ensemble"] == stored
    assert said[0] in run_cli("best", "ens", "--store", store.url, check=True).stdout


def test_the_ensemble_model_computes_the_frozen_part_once(ensemble_search):
    _, store, _, config, _ = ensemble_search
    search = store.get_search("ens")
    members = _members(store, search)
    chosen = search.config[ensemble.RESULT_KEY]["members"]
    models = [members[m["trial"]] for m in chosen]
    weights = [m["weight"] for m in chosen]
    trials = {t.number: t for t in store.list_trials(search.id)}
    depths = [trials[m["trial"]].metrics["unfreeze_depth_applied"] if trials[m["trial"]].best_phase == "finetune"
              else 0 for m in chosen]
    backbone = load_registry([str(TINY_PLUGIN)]).get("tiny_cnn")
    val, preprocessor = validation_split(config)
    x = preprocessor(val.examples)
    expected = sum(w * m.predict(x, verbose=0) for w, m in zip(weights, models))

    shared = ensemble_model(models, weights, depths, backbone)
    np.testing.assert_allclose(shared.predict(x, verbose=0), expected, atol=1e-6)
    assert shared.count_params() < sum(m.count_params() for m in models)
    # A member whose frozen part differs shares nothing: every member is computed whole.
    frozen = models[1].get_layer("backbone").get_layer("block0_conv")
    frozen.kernel.assign(frozen.kernel.numpy() + 0.5)
    expected = sum(w * m.predict(x, verbose=0) for w, m in zip(weights, models))
    whole = ensemble_model(models, weights, depths, backbone)
    np.testing.assert_allclose(whole.predict(x, verbose=0), expected, atol=1e-6)
    assert whole.count_params() == sum(m.count_params() for m in models)


# Every format but model.keras is a slow check here (-m slow): test_export_formats covers each in CI.
FORMATS_IN_CI = [fmt if fmt == "keras" else pytest.param(fmt, marks=pytest.mark.slow) for fmt in ALL_FORMATS]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS_IN_CI)
def test_the_ensemble_exports_and_reloads_without_autotl_in_every_format(ensemble_search, fmt, tmp_path):
    root, store, _, config, _ = ensemble_search
    search = store.get_search("ens")
    out = root / f"export_{fmt}"
    done = run_cli("export", "ens", "--out", out, "--format", fmt, "--store", store.url, "--plugin", TINY_PLUGIN,
                   check=True)
    stored = search.config[ensemble.RESULT_KEY]
    assert "exported the ensemble of trials " + ", ".join(
        f"{m['trial']} ({m['weight']:.2f})" for m in stored["members"]) in done.stdout
    assert json.loads((out / "autotl.json").read_text())["ensemble"] == stored
    val, _ = validation_split(config)
    pixels, takes = image_inputs(val.sources[:20], IMAGE_SIZE, tmp_path)
    members = _members(store, search)
    expected = sum(m["weight"] * members[m["trial"]].predict(pixels, verbose=0) for m in stored["members"])
    assert_reloads_like(fmt, out, takes, expected, tmp_path, "the members' weighted mean")


@pytest.mark.slow
def test_export_no_ensemble_writes_the_best_trial(ensemble_search):
    root, store, result, _, _ = ensemble_search
    out = root / "export_single"
    done = run_cli("export", "ens", "--out", out, "--format", "keras", "--no-ensemble", "--store", store.url,
                   "--plugin", TINY_PLUGIN, check=True)
    assert f"exported trial {result.best.number} of" in done.stdout
    assert json.loads((out / "autotl.json").read_text())["ensemble"] is None
    assert_holds_the_best_trials_weights(out, store, result)


def test_saved_probabilities_are_the_members_predictions(ensemble_search):
    _, store, _, config, _ = ensemble_search
    search = store.get_search("ens")
    val, preprocessor = validation_split(config)
    trials = {t.id: t.number for t in store.list_trials(search.id)}
    for artifact in store.artifacts(search.id, kind="checkpoint"):
        saved = np.load(Path(artifact.path).parent / VAL_PROBS_NAME)
        predicted = keras.saving.load_model(artifact.path, compile=False).predict(preprocessor(val.examples), verbose=0)
        np.testing.assert_allclose(saved, predicted, atol=1e-5, err_msg=f"trial {trials[artifact.trial_id]}")


def test_the_report_names_the_ensembles_members_and_weights(ensemble_search):
    import html

    root, store, _, _, _ = ensemble_search
    stored = store.get_search("ens").config[ensemble.RESULT_KEY]
    run_cli("report", "ens", "--out", root / "report", "--store", store.url, check=True)
    page = html.unescape((root / "report" / "index.html").read_text())
    assert ensemble.describe_record(stored, "val_accuracy") in page
    for member in stored["members"]:
        assert f"{member['weight']:.2f} x trial {member['trial']}" in page
    # Issue 29, 7: the confusion matrix is the exported model's, the ensemble's, not the best trial's alone.
    right = round(stored["value"] * store.get_search("ens").config["val_examples"])
    assert f"{ensemble.name_of(stored)}: {right} of " in page
    assert right != round(stored["best_trial_value"] * store.get_search("ens").config["val_examples"])


def test_the_search_summary_on_stdout_says_which_ensemble_the_exports_use(ensemble_search):
    """Issue 29, 7: the ensemble's line went to stderr only. `autotl resume` of the finished search prints the
    summary a search ends with."""
    _, store, _, _, _ = ensemble_search
    stored = store.get_search("ens").config[ensemble.RESULT_KEY]
    shown = run_cli("resume", "ens", "--store", store.url, check=True)
    assert ensemble.describe_record(stored, "val_accuracy") in shown.stdout.splitlines()
