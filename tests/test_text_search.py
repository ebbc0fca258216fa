"""A two-trial text search with the real MiniLM weights on real Rotten Tomatoes snippets,
exported and reloaded in a fresh process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autotl import api
from autotl.backbones.registry import load_registry
from autotl.store import COMPLETED, Store
from autotl.search.runner import VAL_PROBS_NAME

from conftest import run_cli
from test_export_formats import reload_without_autotl

pytestmark = pytest.mark.slow  # MiniLM's two phases also run in test_backbones and test_keras_hub_presets

SPACE = "unfreeze_depth: {values: [1]}\npooling: {values: [mean, cls]}\nhead_layers: 0\n"


@pytest.fixture(scope="module")
def text_search(tmp_path_factory, reviews_csv):
    root = tmp_path_factory.mktemp("text")
    (root / "space.yaml").write_text(SPACE)
    store = Store(str(root / "autotl.db"))
    config = api.SearchConfig(data=str(reviews_csv), backbone="bert", sequence_length=32, max_trials=2,
                              epochs=2, finetune_epochs=1, batch_size=16, seed=0, name="reviews",
                              space_file=str(root / "space.yaml"), workdir=str(root / "runs"))
    return root, store, config, api.search(config, store)


def test_two_trial_text_search_runs_both_phases_on_minilm(text_search):
    _, store, _, result = text_search
    trials = store.list_trials(result.search.id)
    assert len(trials) == 2 and all(t.status == COMPLETED for t in trials)
    assert result.search.labels == ["fresh", "rotten"]
    assert result.search.config["preprocessing"]["sequence_length"] == 32
    minilm_folder = load_registry().get("bert").describe_weights("all-minilm-l6-v2")
    assert result.search.config["weights_identity"] == minilm_folder and "#" in minilm_folder
    for trial in trials:
        assert {m.phase for m in store.epoch_metrics(trial.id)} == {"head", "finetune"}
        assert 0.0 <= trial.value <= 1.0


ALL_FORMATS = ("keras", "savedmodel", "onnx", "tflite")
# Largest absolute difference of a class probability from the Keras model's, per format
# (measured on these snippets: a few 1e-7 or less for each; see README, Exports).
TOLERANCE = {"keras": 1e-6, "savedmodel": 1e-5, "onnx": 1e-4, "tflite": 1e-4}


@pytest.fixture(scope="module")
def text_export(text_search):
    """The best model exported once in every format, through the CLI."""
    root, store, _, _ = text_search
    out = root / "export"
    run_cli("export", "reviews", "--out", out, *[arg for fmt in ALL_FORMATS for arg in ("--format", fmt)],
            "--store", store.url, check=True)
    return out


@pytest.fixture(scope="module")
def val_snippets(text_search):
    """The first 20 validation snippets, their token ids, and the search's probabilities for them."""
    root, store, config, result = text_search
    backbone = load_registry().get("bert")
    preprocessor = backbone.preprocessor(backbone.default_weights, {"sequence_length": 32})
    _, val = api.load_split(config, "text", preprocessor)
    texts = list(val.examples[:20])
    checkpoint = [a for a in store.artifacts(result.search.id, kind="checkpoint") if a.trial_id == result.best.id][0]
    expected = np.load(Path(checkpoint.path).parent / VAL_PROBS_NAME)[:20]
    np.savez(root / "tokens.npz", **preprocessor(texts))
    return texts, str(root / "tokens.npz"), expected


@pytest.mark.slow
@pytest.mark.parametrize("model_format", ALL_FORMATS)
def test_text_export_predicts_the_search_probabilities_in_a_fresh_process(text_export, val_snippets, model_format):
    manifest = json.loads((text_export / "autotl.json").read_text())
    assert manifest["preprocessing"]["type"] == "text" and manifest["labels"] == ["fresh", "rotten"]
    texts, _, expected = val_snippets
    rows = json.loads(run_cli("predict", text_export, *texts[:12], "--text", "--json", "--format", model_format,
                              check=True).stdout)
    probs = np.array([[r["probabilities"][label] for label in manifest["labels"]] for r in rows])
    np.testing.assert_allclose(probs, expected[:12], atol=1e-5 if model_format in ("keras", "savedmodel") else 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_each_text_format_predicts_like_the_keras_model_without_autotl(text_export, val_snippets, fmt, tmp_path):
    """Real MiniLM, 20 real snippets: the SavedModel tokenizes raw strings itself (tensorflow-text ops);
    the others take the token ids of the exported vocabulary."""
    texts, tokens, expected = val_snippets
    spec = {"texts": texts} if fmt == "savedmodel" else {"model_inputs": tokens}
    results, imported = reload_without_autotl(fmt, text_export, spec, tmp_path)
    assert "autotl" not in imported and "autotl_plugins" not in imported
    if fmt in ("onnx", "tflite"):
        assert "tensorflow" not in imported and "keras" not in imported
    got = results["texts" if fmt == "savedmodel" else "model_inputs"]
    assert got.shape == expected.shape == (20, 2)
    difference = float(np.abs(got - expected).max())
    print(f"{fmt}: max abs probability difference {difference:.3g} (tolerance {TOLERANCE[fmt]})")
    assert difference <= TOLERANCE[fmt]


@pytest.mark.slow
def test_text_manifest_says_what_each_format_takes(text_export):
    inputs = json.loads((text_export / "autotl.json").read_text())["inputs"]
    tokens = {name: {"shape": [None, None], "dtype": "int32"} for name in ("token_ids", "segment_ids", "padding_mask")}
    assert inputs["keras"]["inputs"] == inputs["onnx"]["inputs"] == inputs["tflite"]["inputs"] == tokens
    default = inputs["savedmodel"]["signatures"]["serving_default"]
    assert default["inputs"] == {"texts": {"shape": [None], "dtype": "string"}}
    assert "tensorflow_text" in default["takes"]
