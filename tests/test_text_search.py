"""A two-trial text search with the real MiniLM weights on real Rotten Tomatoes snippets,
exported and reloaded in a fresh process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autotl import api
from autotl.registry import load_registry
from autotl.store import COMPLETED, Store
from autotl.trial import VAL_PROBS_NAME

from conftest import run_cli

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


@pytest.mark.parametrize("model_format", ["keras", "savedmodel"])
def test_text_export_predicts_the_search_probabilities_in_a_fresh_process(text_search, model_format):
    root, store, config, result = text_search
    out = root / f"export_{model_format}"
    run_cli("export", "reviews", "--out", out, "--format", model_format, "--store", store.url, check=True)
    manifest = json.loads((out / "autotl.json").read_text())
    assert manifest["preprocessing"]["type"] == "text" and manifest["labels"] == ["fresh", "rotten"]

    backbone = load_registry().get("bert")
    preprocessor = backbone.preprocessor(backbone.default_weights, {"sequence_length": 32})
    _, val = api.load_split(config, "text", preprocessor)
    texts = list(val.examples[:12])
    rows = json.loads(run_cli("predict", out, *texts, "--text", "--json", "--format", model_format,
                              check=True).stdout)
    probs = np.array([[r["probabilities"][label] for label in manifest["labels"]] for r in rows])
    checkpoint = [a for a in store.artifacts(result.search.id, kind="checkpoint") if a.trial_id == result.best.id][0]
    expected = np.load(Path(checkpoint.path).parent / VAL_PROBS_NAME)[:12]
    np.testing.assert_allclose(probs, expected, atol=1e-5)
