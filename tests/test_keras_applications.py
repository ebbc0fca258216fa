"""`--backbone keras:NAME`: every `keras.applications` family as a backbone without a plugin of its own.

For each family: its blocks (from its layer names) cover the network in order, with the count its
architecture has; its normalisation is what the family's own `preprocess_input` does; and a real
one-trial search (random weights, tiny images) fine-tunes its top block on the cached activations.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from autotl import api
from autotl.backbones import ImagePreprocessor
from autotl.search.hypermodel import set_unfreeze_depth
from autotl.backbones.layers import PixelNormalization
from autotl.backbones.registry import load_registry
from autotl.store import COMPLETED, Store

from conftest import run_cli
from test_backbones import assert_close, saved_probabilities, validation_inputs

# network: (its keras.applications module, image size, blocks: the stem (if any) + the blocks it is built of)
NETWORKS = {
    "ConvNeXtTiny": ("convnext", 32, 1 + (3 + 3 + 9 + 3) + 3),  # stem, 18 blocks in 4 stages, 3 downsamplings
    "EfficientNetV2B0": ("efficientnet_v2", 32, 1 + 21 + 1),  # stem, 1+2+2+3+5+8 blocks, top conv
    "MobileNetV3Small": ("mobilenet_v3", 32, 1 + 11 + 1),  # stem, 11 inverted residuals, last conv
    "DenseNet121": ("densenet", 32, 1 + (6 + 12 + 24 + 16) + 3),  # stem, 58 dense layers, 3 transitions
    "ResNet50V2": ("resnet_v2", 32, 1 + 16),  # stem, 3+4+6+3 residual blocks (post-BN with the last)
    "Xception": ("xception", 71, 14),  # blocks 1 (the entry convs) to 14
    "MobileNet": ("mobilenet", 32, 1 + 13),  # stem, 13 depthwise-separable blocks
    "VGG16": ("vgg16", 32, 5),  # five conv blocks
}


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.mark.parametrize("network", list(NETWORKS))
def test_blocks_cover_the_network_in_order(registry, network):
    module, size, count = NETWORKS[network]
    backbone = registry.get(f"keras:{network}")
    model = backbone.build("none", ImagePreprocessor((size, size)))
    blocks = backbone.blocks(model)
    assert len(blocks) == count
    position = {id(layer): index for index, layer in enumerate(model.layers)}
    order = [position[id(layer)] for block in blocks for layer in block]
    assert order == sorted(order) and len(set(order)) == len(order), "each layer once, blocks in model order"
    in_blocks = set(order)
    assert all(position[id(layer)] in in_blocks for layer in model.layers if layer.weights)
    set_unfreeze_depth(model, blocks, 1)
    top = {id(layer) for layer in blocks[-1]}
    trainable = [layer for layer in model.layers if layer.trainable and layer.weights]
    assert trainable and all(id(layer) in top for layer in trainable)
    keras.utils.clear_session()


@pytest.mark.parametrize("network", list(NETWORKS))
def test_normalisation_is_the_familys_own_preprocess_input(registry, network):
    module, size, _ = NETWORKS[network]
    model = registry.get(f"keras:{network}").build("none", ImagePreprocessor((size, size)))
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    official = np.asarray(getattr(keras.applications, module).preprocess_input(pixels.copy()))
    ours = [layer for layer in model.layers if isinstance(layer, PixelNormalization)]
    if np.allclose(official, pixels):  # the network normalises inside itself
        assert not ours
    else:
        (layer,) = ours
        np.testing.assert_allclose(np.asarray(layer(pixels)), official, rtol=1e-5, atol=1e-4)
    keras.utils.clear_session()


@pytest.mark.parametrize("network", ["ConvNeXtTiny", "EfficientNetV2B0", "MobileNetV3Small", "DenseNet121",
                                     "ResNet50V2", "Xception"])
@pytest.mark.slow
def test_a_one_trial_search_fine_tunes_the_top_block(tmp_path, mnist_dir, network):
    _, size, _ = NETWORKS[network]
    (tmp_path / "space.yaml").write_text("pooling: avg\nhead_layers: 0\nunfreeze_depth: 1\n")
    store = Store(f"sqlite:///{tmp_path / 'autotl.db'}")
    config = api.SearchConfig(data=str(mnist_dir), backbone=f"keras:{network}", weights="none", image_size=size,
                              max_trials=1, epochs=1, finetune_epochs=1, batch_size=16, trials_per_worker=0,
                              space_file=str(tmp_path / "space.yaml"), workdir=str(tmp_path / "runs"))
    result = api.search(config, store)
    (trial,) = store.list_trials(result.search.id)
    assert trial.status == COMPLETED and result.search.backbone == f"keras:{network}"
    assert {m.phase for m in store.epoch_metrics(trial.id)} == {"head", "finetune"}
    assert trial.data_path["status"] in ("computed", "hit")
    assert result.search.name.startswith(f"keras-{network}-")


def test_autotl_plugins_lists_the_family_and_its_networks():
    listed = json.loads(run_cli("plugins", "--json", check=True).stdout)
    (family,) = [f for f in listed["families"] if f["name"] == "keras:NAME"]
    assert set(NETWORKS) <= set(family["variants"])
    assert "InceptionV3" not in family["variants"]


def test_names_are_case_insensitive_and_recorded_as_keras_spells_them(registry):
    assert registry.get("keras:convnexttiny").name == "keras:ConvNeXtTiny"


@pytest.mark.slow
def test_a_keras_family_search_exports_and_predicts_through_the_cli(tmp_path, mnist_dir):
    """A backbone name with a colon (TensorFlow refuses one in a name scope: every prediction of such an
    export failed) and typed in lower case, through search, export and predict."""
    (tmp_path / "space.yaml").write_text("pooling: avg\nhead_layers: 0\nunfreeze_depth: 1\n")
    store = Store(f"sqlite:///{tmp_path / 'autotl.db'}")
    run_cli("search", mnist_dir, "--backbone", "keras:mobilenetv3small", "--weights", "none", "--image-size", 32,
            "--space", tmp_path / "space.yaml", "--max-trials", 1, "--epochs", 1, "--finetune-epochs", 1,
            "--workdir", tmp_path / "runs", "--store", store.url, check=True)
    (search,) = store.list_searches()
    assert search.backbone == "keras:MobileNetV3Small" and search.name.startswith("keras-MobileNetV3Small-")
    formats = ("keras", "savedmodel") if keras.backend.backend() == "tensorflow" else ("keras",)
    out = tmp_path / "export"
    run_cli("export", search.name, "--out", out, *[a for f in formats for a in ("--format", f)],
            "--store", store.url, check=True)
    inputs = validation_inputs(search, [])
    expected = saved_probabilities(store, search, len(inputs))
    for model_format in formats:
        rows = json.loads(run_cli("predict", out, *inputs, "--json", "--format", model_format, check=True).stdout)
        labels = json.loads((out / "autotl.json").read_text())["labels"]
        got = np.array([[row["probabilities"][label] for label in labels] for row in rows])
        assert_close(got, expected, f"keras:MobileNetV3Small {model_format}", 1e-5)
