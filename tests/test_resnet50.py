"""The ResNet50 plugin at a small input size: blocks, what each unfreeze depth trains,
BatchNorm frozen in inference mode while fine-tuning, local weights files."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from autotl.backbones import ImagePreprocessor
from autotl.errors import AutotlError
from autotl.search.hypermodel import set_unfreeze_depth
from autotl_plugins.resnet50 import ResNet50

SIZE = (32, 32)


@pytest.fixture(scope="module")
def resnet():
    plugin = ResNet50()
    model = plugin.build("none", ImagePreprocessor(SIZE))
    return plugin, model


def test_blocks_are_the_stem_then_sixteen_residual_blocks(resnet):
    plugin, model = resnet
    blocks = plugin.blocks(model)
    assert len(blocks) == 17
    assert [layer.name for layer in blocks[0]][:2] == ["conv1_pad", "conv1_conv"]
    assert {layer.name.split("_")[0] + "_" + layer.name.split("_")[1] for layer in blocks[-1]} == {"conv5_block3"}
    assert blocks[-2][0].name.startswith("conv5_block2_")
    layers_in_blocks = {id(layer) for block in blocks for layer in block}
    weighted = [layer for layer in model.layers if layer.weights]
    assert all(id(layer) in layers_in_blocks for layer in weighted), "every weighted layer is in a block"


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_unfreeze_depth_trains_exactly_the_top_blocks_without_batchnorm(resnet, depth):
    plugin, model = resnet
    blocks = plugin.blocks(model)
    set_unfreeze_depth(model, blocks, depth)
    top = {layer.name for block in blocks[len(blocks) - depth:] for layer in block} if depth else set()
    expected = {name for name in top if not isinstance(model.get_layer(name), keras.layers.BatchNormalization)
                and model.get_layer(name).weights}
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trainable == expected
    assert all(not layer.trainable for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert len(model.trainable_weights) == 2 * len(expected)  # kernel + bias of each conv in the top blocks


def test_fine_tuning_updates_the_top_block_and_keeps_batchnorm_statistics(resnet):
    plugin, backbone = resnet
    set_unfreeze_depth(backbone, plugin.blocks(backbone), 1)
    inputs = keras.Input((*SIZE, 3))
    features = backbone(inputs, training=False)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(features))
    model = keras.Model(inputs, outputs)
    before = {name: [np.array(w) for w in backbone.get_layer(name).get_weights()]
              for name in ("conv5_block3_3_conv", "conv5_block3_3_bn", "conv4_block6_3_conv")}
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    model.fit(rng.uniform(0, 255, (8, *SIZE, 3)).astype("float32"), rng.integers(0, 2, 8), epochs=1, verbose=0)
    after = {name: backbone.get_layer(name).get_weights() for name in before}
    assert not np.allclose(before["conv5_block3_3_conv"][0], after["conv5_block3_3_conv"][0])
    for old, new in zip(before["conv5_block3_3_bn"], after["conv5_block3_3_bn"]):  # gamma, beta, mean, variance
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(before["conv4_block6_3_conv"][0], after["conv4_block6_3_conv"][0])


def test_loads_a_local_weights_file(resnet, tmp_path):
    plugin, model = resnet
    path = tmp_path / "resnet50_notop.weights.h5"
    model.save_weights(path)
    loaded = plugin.build(str(path), ImagePreprocessor(SIZE))
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_normalisation_is_caffe_bgr(resnet):
    _, model = resnet
    layer = model.get_layer("caffe_bgr")
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32")
    np.testing.assert_allclose(np.array(layer(pixel))[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)


def test_bad_weights_sources_are_one_line_errors():
    with pytest.raises(AutotlError, match="none of these") as missing:
        ResNet50().build("/no/such/weights.h5", ImagePreprocessor(SIZE))
    assert "\n" not in str(missing.value)
    with pytest.raises(AutotlError, match="at least 32x32"):
        ResNet50().build("none", ImagePreprocessor((16, 16)))


def test_imagenet_uses_the_real_keras_download(capsys):
    """Offline this fails with one line naming the Keras URL; online it loads the weights. Either way Keras'
    "Downloading data from ..." goes to stderr: stdout is for results (issue 29, 9)."""
    try:
        model = ResNet50().build("imagenet", ImagePreprocessor(SIZE))
    except AutotlError as exc:
        assert capsys.readouterr().out == ""
        assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in str(exc)
        assert "\n" not in str(exc)
    else:
        assert model.output.shape[-1] == 2048
