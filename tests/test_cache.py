"""The activation cache: cut points, reuse across searches, invalidation, bypass, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from autotl import api
from autotl.cache import cut as graph_module
from autotl.search import space as space_module
from autotl.cache.entries import ActivationCache
from autotl.cache.batches import JAX_LENGTH_STEP, batches, cropped_length, sequence_lengths
from autotl.cache.source import ActivationSource, StemOutputs
from autotl.search.hypermodel import BACKBONE_LAYER, TransferHyperModel, set_unfreeze_depth
from autotl.search.records import TrialData
from autotl.backbones.registry import load_registry
from autotl.store import Store
from autotl.search.runner import VAL_PROBS_NAME

from conftest import TINY_PLUGIN, run_cli

def tiny_config(data: Path, tmp_path: Path, name: str, **overrides) -> api.SearchConfig:
    fields = dict(data=str(data), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)], image_size=16,
                  max_trials=3, epochs=2, finetune_epochs=1, batch_size=16, seed=3, name=name,
                  workdir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), trials_per_worker=0)
    fields.update(overrides)
    return api.SearchConfig(**fields)


def trial_model(backbone_name: str, options: dict, pooling: str, depth: int):
    backbone = load_registry([str(TINY_PLUGIN)]).get(backbone_name)
    preprocessor = backbone.preprocessor(backbone.default_weights, options)
    space = space_module.build_space(backbone.modality, backbone.search_space(backbone.default_weights), None)
    hypermodel = TransferHyperModel(backbone, backbone.default_weights, preprocessor, 3, space)
    model = hypermodel.build(hypermodel.hyperparameters(dict(pooling=pooling, head_layers=1, head_units=16)))
    feature_model = model.get_layer(BACKBONE_LAYER)
    blocks = backbone.blocks(feature_model)
    set_unfreeze_depth(feature_model, blocks, depth)
    return model, blocks, preprocessor


def sample_inputs(backbone_name: str, options: dict, preprocessor):
    """Four model-ready examples: review snippets for text, random pixels for images."""
    if backbone_name == "bert":
        return preprocessor(["a tender, funny film", "dull and far too long", "fine", "not bad at all"])
    return np.random.default_rng(0).integers(0, 256, (4, *options["image_size"], 3)).astype("uint8")


def across_the_cut(flat, cut, x) -> dict:
    """Name -> value of each tensor crossing `cut` for inputs `x`: the frozen part's outputs, or model inputs."""
    cached_tensors = {n: t for n, t in zip(cut.names, cut.tensors) if graph_module.input_name(n) is None}
    cached = dict(zip(cached_tensors, _as_list(graph_module.prefix_model(flat, cached_tensors).predict(x, verbose=0))))
    return {**cached, **{name: x[graph_module.input_name(name)] for name in cut.names
                         if graph_module.input_name(name) is not None}}


@pytest.mark.parametrize("backbone_name, options, pooling", [
    ("tiny_cnn", {"image_size": (16, 16)}, "avg"),
    ("efficientnet_lite0", {"image_size": (32, 32)}, "flatten"),
    ("bert", {"sequence_length": 16}, "mean"),
])
def test_prefix_then_suffix_computes_what_the_whole_model_computes(backbone_name, options, pooling):
    """The cut is exact: frozen part once, then the trainable part, equals the end-to-end model."""
    model, blocks, preprocessor = trial_model(backbone_name, options, pooling, depth=2)
    x = sample_inputs(backbone_name, options, preprocessor)
    flat = graph_module.flatten(model)
    expected = model.predict(x, verbose=0)
    for depth in (0, 1, 2):
        top = [layer for block in blocks[len(blocks) - depth:] for layer in block] if depth else []
        cut = graph_module.cut(flat, depth, top)
        known = across_the_cut(flat, cut, x)
        feed = [known[name] for name in cut.names]
        suffix = graph_module.suffix_model(flat, cut)
        np.testing.assert_allclose(suffix.predict(feed, verbose=0), expected, atol=1e-4)
        # The suffix trains exactly the trainable weights of the whole model at this depth.
        if depth == 2:
            assert {id(w) for w in suffix.trainable_weights} == {id(w) for w in model.trainable_weights}
    assert cut.cached_names and all(not n.startswith("input:") for n in cut.cached_names)


@pytest.mark.parametrize("backbone_name, options, pooling", [
    ("tiny_cnn", {"image_size": (16, 16)}, "avg"),
    ("bert", {"sequence_length": 16}, "mean"),
    ("bert", {"sequence_length": 16}, "cls"),
])
def test_the_pooling_stem_is_computed_once_and_the_head_trains_on_its_outputs(backbone_name, options, pooling):
    """Above the depth-0 cut, pooling has no weights and no randomness: a trial pools the cached
    activations once and trains the head on vectors, and the result is still the whole model's."""
    model, _, preprocessor = trial_model(backbone_name, options, pooling, depth=0)
    x = sample_inputs(backbone_name, options, preprocessor)
    flat = graph_module.flatten(model)
    cut = graph_module.cut(flat, 0, [])
    stem = graph_module.frozen_stem(flat, cut)
    assert stem is not None and [type(layer).__name__ for layer in stem.model.layers[len(stem.model.inputs):]] \
        == [type(model.get_layer(f"pool_{pooling}")).__name__]
    pooled = [name for name in stem.after.names if name.startswith(graph_module.STEM_PREFIX)]
    assert len(pooled) == 1 and len(stem.model.outputs) == 1 and len(stem.model.outputs[0].shape) == 2
    known = across_the_cut(flat, cut, x)
    known[pooled[0]] = keras.ops.convert_to_numpy(stem.model([known[name] for name in stem.reads]))
    head = graph_module.suffix_model(flat, stem.after)
    assert not any(type(layer).__name__.startswith(("Global", "Masked", "FirstToken")) for layer in head.layers)
    np.testing.assert_allclose(head.predict([known[name] for name in stem.after.names], verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    # The same pooling over the same cut has the same name in another trial's model; another pooling not.
    again, _, _ = trial_model(backbone_name, options, pooling, depth=0)
    flat_again = graph_module.flatten(again)
    assert graph_module.frozen_stem(flat_again, graph_module.cut(flat_again, 0, [])).after.names == stem.after.names
    if backbone_name == "bert":
        other_pooling = "cls" if pooling == "mean" else "mean"
        other, _, _ = trial_model(backbone_name, options, other_pooling, depth=0)
        flat_other = graph_module.flatten(other)
        assert not set(pooled) & set(graph_module.frozen_stem(flat_other, graph_module.cut(flat_other, 0, [])).after.names)


def test_a_whole_backbone_fine_tune_reads_the_pixels_and_the_cache_holds_no_float_copy_of_them():
    """Issue 29: the quick start cached its 96 px input as float32 (84 MB for 1,000 images), the output of the
    backbone's pixel normalization. The trainable part now normalizes the uint8 pixels it reads from memory."""
    options = {"image_size": (32, 32)}
    model, blocks, preprocessor = trial_model("efficientnet_lite0", options, "avg", depth=0)
    set_unfreeze_depth(model.get_layer(BACKBONE_LAYER), blocks, len(blocks))
    flat = graph_module.flatten(model)
    top = [layer for block in blocks for layer in block]
    whole = graph_module.cut(flat, len(blocks), top)
    assert whole.names == [f"input:{model.inputs[0].name}"] and not whole.cached_names
    x = sample_inputs("efficientnet_lite0", options, preprocessor)
    suffix = graph_module.suffix_model(flat, whole)
    np.testing.assert_allclose(suffix.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert {id(w) for w in suffix.trainable_weights} == {id(w) for w in model.trainable_weights}
    # Below the whole backbone the cut still crosses the frozen blocks' outputs, which the cache holds.
    part = graph_module.cut(flat, 1, list(blocks[-1]))
    assert part.cached_names and all(graph_module.input_name(name) is None for name in part.names)


def test_a_cut_whose_trainable_part_begins_with_weights_has_no_stem():
    model, blocks, _ = trial_model("tiny_cnn", {"image_size": (16, 16)}, "avg", depth=1)
    flat = graph_module.flatten(model)
    top = [layer for layer in blocks[-1]]
    assert graph_module.frozen_stem(flat, graph_module.cut(flat, 1, top)) is None


def _as_list(outputs):
    return outputs if isinstance(outputs, list) else [outputs]


def test_a_second_search_on_the_same_data_does_no_backbone_pass(mnist_dir, tmp_path, monkeypatch):
    store = Store(tmp_path / "autotl.db")
    first = api.search(tiny_config(mnist_dir, tmp_path, "first"), store)
    statuses = [t.data_path["status"] for t in first.trials]
    assert statuses[0] == "computed" and set(statuses[1:]) <= {"hit"}
    entries = {e.key: e.meta["created_at"] for e in ActivationCache(tmp_path / "cache").entries()}
    # three cuts (depth 0, 1, 2) x two splits
    assert len(entries) == 6

    def no_backbone_pass(*_args, **_kwargs):
        raise AssertionError("the frozen backbone ran again")

    monkeypatch.setattr(ActivationSource, "_run_prefix", no_backbone_pass)
    second = api.search(tiny_config(mnist_dir, tmp_path, "second"), store)
    assert [t.data_path["status"] for t in second.trials] == ["hit"] * 3
    assert {e.key: e.meta["created_at"] for e in ActivationCache(tmp_path / "cache").entries()} == entries
    # Same seed, same data, same cache: the same results as the first search.
    assert [t.value for t in second.trials] == pytest.approx([t.value for t in first.trials])


def test_trials_sharing_a_pooling_pool_the_cached_activations_once(mnist_dir, tmp_path, monkeypatch):
    calls = []
    compute = StemOutputs._compute

    def counted(self, model, inputs):
        calls.append(len(inputs[0]))
        return compute(self, model, inputs)

    monkeypatch.setattr(StemOutputs, "_compute", counted)
    (tmp_path / "space.json").write_text(json.dumps({"pooling": "avg", "unfreeze_depth": 0}))
    store = Store(tmp_path / "autotl.db")
    result = api.search(tiny_config(mnist_dir, tmp_path, "pooled", space_file=str(tmp_path / "space.json")), store)
    assert [t.status for t in result.trials] == ["completed"] * 3
    assert len(calls) == 2 and sum(calls) == 120  # one pooling pass per split (120 digits), for all three trials


def test_a_best_epoch_in_fine_tuning_is_checkpointed_with_the_predictions_of_the_fine_tuned_blocks(
        mnist_dir, tmp_path):
    """The saved validation predictions (what an export must reproduce) come from the cut the trial
    fine-tuned at, not from the backbone's cached output, which the fine-tuned blocks no longer compute."""
    (tmp_path / "space.json").write_text(json.dumps({"unfreeze_depth": 1, "head_lr": 1e-6, "finetune_lr": 3e-3,
                                                    "label_smoothing": 0}))  # val_loss: the plain cross-entropy
    store = Store(tmp_path / "autotl.db")
    config = tiny_config(mnist_dir, tmp_path, "tuned", max_trials=1, epochs=1, finetune_epochs=4,
                         objective="val_loss", space_file=str(tmp_path / "space.json"))
    result = api.search(config, store)
    assert result.best.best_phase == "finetune"  # the head alone (learning rate 1e-6) learns nothing
    checkpoint = store.artifacts(result.search.id, kind="checkpoint")[0]
    preprocessor = load_registry([str(TINY_PLUGIN)]).get("tiny_cnn").preprocessor("none", {"image_size": (16, 16)})
    _, val = api.load_split(config, "image", preprocessor)
    probs = keras.saving.load_model(checkpoint.path).predict(preprocessor(val.examples), verbose=0)
    np.testing.assert_allclose(np.load(Path(checkpoint.path).parent / VAL_PROBS_NAME), probs, atol=1e-5)
    loss = float(np.mean(-np.log(probs[np.arange(len(val.labels)), val.labels])))
    assert loss == pytest.approx(result.best.value, abs=1e-4)  # the best epoch's own validation loss


def test_a_changed_image_is_a_new_cache_entry(mnist_dir, tmp_path):
    data = tmp_path / "digits"
    shutil.copytree(mnist_dir, data)
    store = Store(tmp_path / "autotl.db")
    api.search(tiny_config(data, tmp_path, "before", max_trials=1), store)
    before = {e.key for e in ActivationCache(tmp_path / "cache").entries()}
    image = sorted((data / "3").iterdir())[0]
    from PIL import Image

    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)
    after_search = api.search(tiny_config(data, tmp_path, "after", max_trials=1), store)
    assert after_search.trials[0].data_path["status"] == "computed"
    after = {e.key for e in ActivationCache(tmp_path / "cache").entries()}
    assert before < after  # new entries for the changed split; the old ones are never read again


@pytest.mark.slow
def test_trials_that_augment_or_run_without_the_cache_train_end_to_end_and_say_why(mnist_dir, tmp_path):
    (tmp_path / "space.yaml").write_text("augment: true\n")
    store = Store(tmp_path / "autotl.db")
    augmented = api.search(tiny_config(mnist_dir, tmp_path, "augmented", max_trials=2,
                                       space_file=str(tmp_path / "space.yaml")), store)
    for trial in augmented.trials:
        assert trial.status == "completed"
        assert trial.data_path["status"] == "bypassed"
        assert "augmentation" in trial.data_path["reason"]
    off = api.search(tiny_config(mnist_dir, tmp_path, "off", max_trials=1, cache=False), store)
    assert off.trials[0].data_path == {"status": "bypassed", "reason": "the activation cache is off"}
    assert not (tmp_path / "cache" / "activations").exists() or not ActivationCache(tmp_path / "cache").entries()


def test_cache_entries_larger_than_the_memory_budget_train_from_disk_in_float16(mnist_dir, tmp_path):
    """Over budget, `auto` stores float16 and trials read batches from the memory-mapped files."""
    store = Store(tmp_path / "autotl.db")
    result = api.search(tiny_config(mnist_dir, tmp_path, "disk", max_trials=2, cache_memory_mb=0), store)
    assert [t.status for t in result.trials] == ["completed", "completed"]
    entries = ActivationCache(tmp_path / "cache").entries()
    assert entries and {e.meta["dtype"] for e in entries} == {"float16"}
    assert all(isinstance(e.load(in_memory=False), np.memmap) for e in entries)


def test_float16_entries_widen_to_float32_when_values_do_not_fit(tmp_path):
    cache = ActivationCache(tmp_path)
    writer = cache.writer("k", (4, 2), "float16", {"dtype": "float16"})
    writer.write(np.array([[1.5, 2.0], [3.0, 4.0]], "float32"))
    writer.write(np.array([[1e6, -2.0], [5.0, 6.0]], "float32"))
    entry = writer.commit()
    array = entry.load(in_memory=True)
    assert array.dtype == np.float32 and entry.meta["dtype"] == "float32"
    np.testing.assert_array_equal(array, [[1.5, 2.0], [3.0, 4.0], [1e6, -2.0], [5.0, 6.0]])


def test_an_interrupted_write_leaves_no_entry(tmp_path):
    cache = ActivationCache(tmp_path)
    writer = cache.writer("k", (4, 2), "float32", {})
    writer.write(np.ones((2, 2), "float32"))
    with pytest.raises(RuntimeError, match="2 of 4 rows"):
        writer.commit()
    writer.abort()
    assert cache.get("k") is None and cache.entries() == []
    assert list(cache.directory.iterdir()) == []


def test_cache_ls_and_clear_from_the_command_line(mnist_dir, tmp_path):
    store = Store(tmp_path / "autotl.db")
    api.search(tiny_config(mnist_dir, tmp_path, "listed", max_trials=1), store)
    cache_dir = tmp_path / "cache"
    listed = json.loads(run_cli("cache", "ls", "--json", "--cache-dir", cache_dir, check=True).stdout)
    assert listed["directory"] == str(cache_dir / "activations")
    assert len(listed["entries"]) == 6
    assert {e["split"] for e in listed["entries"]} == {"train", "val"}
    assert all(e["backbone"] == "tiny_cnn" and e["size_mb"] > 0 for e in listed["entries"])
    assert listed["total_mb"] == pytest.approx(sum(e["size_mb"] for e in listed["entries"]))
    table = run_cli("cache", "ls", "--cache-dir", cache_dir, check=True).stdout
    assert f"cache: {cache_dir / 'activations'}  (6 entries" in table

    one = listed["entries"][0]["key"]
    removed = run_cli("cache", "clear", one, "--cache-dir", cache_dir, check=True)
    assert removed.stdout.startswith("removed 1 entries")
    assert one not in {e.key for e in ActivationCache(cache_dir).entries()}
    unknown = run_cli("cache", "clear", one, "--cache-dir", cache_dir)
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert unknown.stderr.strip() == f"Error: no cache entry {one!r} in {cache_dir / 'activations'} (see `autotl cache ls`)"
    run_cli("cache", "clear", "--cache-dir", cache_dir, check=True)
    assert ActivationCache(cache_dir).entries() == []


def _entry(cache: ActivationCache, key: str, megabytes: int, unused_days: float) -> None:
    """An entry of `megabytes` that a search last read `unused_days` ago."""
    import os
    import time

    writer = cache.writer(key, (megabytes, 2**18), "float32", {"backbone": "test"})
    writer.write(np.zeros((megabytes, 2**18), "float32"))
    entry = writer.commit()
    then = time.time() - unused_days * 86400
    os.utime(entry.path / "meta.json", (then, then))


def test_cache_prune_removes_unused_entries_then_the_least_recently_used_beyond_a_bound(tmp_path):
    """Issue 29, 3: the cache grew without bound; `cache clear` took keys or everything, nothing in between."""
    cache = ActivationCache(tmp_path)
    for key, days in (("a", 30), ("b", 10), ("c", 3), ("d", 1), ("e", 0)):
        _entry(cache, key, 1, days)
    cache.get("b").load(in_memory=False)  # a trial reads it now: the most recently used
    pruned = run_cli("cache", "prune", "--older-than", "7d", "--cache-dir", tmp_path, check=True)
    assert [e.key for e in cache.entries()] == ["b", "c", "d", "e"]  # a: 30 days unused
    assert pruned.stdout.strip() == f"removed 1 entries (1.0 MB) from {cache.directory}; 4 left (4.0 MB)"
    run_cli("cache", "prune", "--max-gb", str(2.5 / 1024), "--cache-dir", tmp_path, check=True)
    assert sorted(e.key for e in cache.entries()) == ["b", "e"]  # c and d were used least recently
    nothing = run_cli("cache", "prune", "--cache-dir", tmp_path)
    assert nothing.returncode == 2 and "--older-than DURATION, --max-gb N, or both" in nothing.stderr


def test_a_search_keeps_the_cache_within_its_bound_and_keeps_its_own_entries(mnist_dir, tmp_path):
    cache = ActivationCache(tmp_path / "cache")
    _entry(cache, "old", 3, 1)
    api.search(tiny_config(mnist_dir, tmp_path, "bounded", max_trials=1, cache_max_gb=2 / 1024), Store(tmp_path / "a.db"))
    kept = cache.entries()
    assert "old" not in {e.key for e in kept} and len(kept) == 6  # the search's own six stay
    _entry(cache, "old", 3, 1)
    api.search(tiny_config(mnist_dir, tmp_path, "unbounded", max_trials=1, seed=4), Store(tmp_path / "b.db"))
    assert "old" in {e.key for e in cache.entries()}  # 10 GB by default: nothing to remove here


@pytest.mark.parametrize("precision", [pytest.param("mixed_bfloat16", marks=pytest.mark.slow), "mixed_float16"])
def test_mixed_precision_searches_run_and_cache_under_their_own_key(mnist_dir, tmp_path, precision):
    store = Store(tmp_path / "autotl.db")
    result = api.search(tiny_config(mnist_dir, tmp_path, precision, max_trials=2, precision=precision), store)
    assert [t.status for t in result.trials] == ["completed", "completed"]
    assert result.search.config["precision"] == precision
    float32 = api.search(tiny_config(mnist_dir, tmp_path, "float32", max_trials=1), store)
    assert float32.trials[0].data_path["status"] == "computed"  # not the mixed-precision activations


def test_text_cropped_to_its_longest_sequence_gives_the_same_outputs():
    """Cropping trailing padding is exact: masked positions never change the real ones."""
    model, _, preprocessor = trial_model("bert", {"sequence_length": 32}, "mean", depth=0)
    x = preprocessor(["a tender, funny film", "dull", "long-winded, but the last act is worth the wait"])
    lengths = sequence_lengths(x)
    crop = cropped_length(lengths)
    step = JAX_LENGTH_STEP if keras.backend.backend() == "jax" else 1
    assert max(lengths) <= crop < max(lengths) + step and crop % step == 0 and crop < 32
    cropped = {name: array[:, :crop] for name, array in x.items()}
    np.testing.assert_allclose(model.predict(cropped, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_length_batches_cover_every_example_once_per_epoch_cropped_to_their_longest():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, 200)
    mask = (np.arange(48)[None, :] < lengths[:, None]).astype("int32")
    x = {"padding_mask": mask, "token_ids": mask * 7}
    y = np.arange(200)
    step = JAX_LENGTH_STEP if keras.backend.backend() == "jax" else 1
    dataset = batches(x, y, 16, shuffle=True, seed=1, lengths=lengths,
                      croppable={"padding_mask": True, "token_ids": True}).x
    epochs = []
    for _ in range(2):
        seen = []
        for index in range(len(dataset)):
            inputs, labels = dataset[index]
            width = inputs["token_ids"].shape[1]
            longest = lengths[labels].max()
            assert width % step == 0 and longest <= width < longest + step  # cut to its longest example
            np.testing.assert_array_equal(inputs["padding_mask"].sum(axis=1), lengths[labels])
            seen += list(labels)
        assert sorted(seen) == list(range(200))
        epochs.append(seen)
        dataset.on_epoch_end()
    assert epochs[0] != epochs[1]  # a new order every epoch


def test_memory_mapped_inputs_of_a_two_input_model_predict_in_order(tmp_path):
    """`predict` through the on-disk batches returns one row per example, in the examples' order."""
    first = keras.Input((3,), name="a")
    second = keras.Input((3,), name="b")
    model = keras.Model([first, second], keras.layers.Add()([first, second]))
    arrays = []
    for name, offset in (("a", 0.0), ("b", 100.0)):
        np.save(tmp_path / f"{name}.npy", np.arange(60, dtype="float32").reshape(20, 3) + offset)
        arrays.append(np.load(tmp_path / f"{name}.npy", mmap_mode="r"))
    feed = batches(arrays, None, 8)
    predicted = model.predict(feed.x, batch_size=feed.batch_size, verbose=0)
    np.testing.assert_allclose(predicted, np.asarray(arrays[0]) + np.asarray(arrays[1]))


def test_a_model_trains_on_length_batches_of_varying_widths():
    """Every batch may have its own length; the model sees them all (not only the first two's)."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 33, 96)
    mask = (np.arange(32)[None, :] < lengths[:, None]).astype("int32")
    inputs = keras.Input((None,), dtype="int32", name="padding_mask")
    pooled = keras.layers.Lambda(lambda m: keras.ops.sum(keras.ops.cast(m, "float32"), axis=1, keepdims=True))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    model.compile("adam", "sparse_categorical_crossentropy")
    feed = batches({"padding_mask": mask}, (lengths > 16).astype("int32"), 8, shuffle=True, seed=2,
                   lengths=lengths, croppable={"padding_mask": True})
    history = model.fit(feed.x, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    widths = {feed.x[i][0]["padding_mask"].shape[1] for i in range(len(feed.x))}
    assert len(widths) > 2


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's tracing")
def test_each_phase_traces_its_train_step_once(mnist_dir, tmp_path, monkeypatch):
    """The optimizer's and metrics' variables exist before `fit` traces (else TensorFlow traces twice)."""
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    traces = []
    train_step = TensorFlowTrainer.train_step

    def counted(self, data):
        traces.append(self.name)
        return train_step(self, data)

    monkeypatch.setattr(TensorFlowTrainer, "train_step", counted)
    (tmp_path / "space.json").write_text(json.dumps({"unfreeze_depth": 1}))
    store = Store(tmp_path / "autotl.db")
    result = api.search(tiny_config(mnist_dir, tmp_path, "traced", max_trials=2,
                                    space_file=str(tmp_path / "space.json")), store)
    assert [t.status for t in result.trials] == ["completed"] * 2
    assert traces == ["autotl_suffix_0", "autotl_suffix_1"] * 2  # head, then fine-tuning, once each per trial


def test_the_cache_pass_traces_the_backbone_once_for_both_splits_and_their_short_last_batches(tmp_path, monkeypatch):
    """The last batch of a split is filled up with its own rows: a batch of another size would
    trace the backbone's function again. The filling rows are not written to the cache."""
    model, _, preprocessor = trial_model("tiny_cnn", {"image_size": (16, 16)}, "avg", depth=0)
    rng = np.random.default_rng(0)
    x_train, x_val = (rng.integers(0, 256, (count, 16, 16, 3)).astype("uint8") for count in (23, 10))
    data = TrialData(x_train, np.zeros(23, "int32"), x_val, np.zeros(10, "int32"))
    prefixes = []
    build_prefix = graph_module.prefix_model

    def recorded(*args):
        prefixes.append(build_prefix(*args))
        return prefixes[-1]

    monkeypatch.setattr(graph_module, "prefix_model", recorded)
    backbone = load_registry([str(TINY_PLUGIN)]).get("tiny_cnn")
    source = ActivationSource(ActivationCache(tmp_path / "cache"), backbone, preprocessor.config(), [0, 1],
                              batch_size=8)
    feed = source.feed(model, data, {})
    assert feed.status == "computed" and len(prefixes) == 1  # one model for both splits
    assert feed.pass_seconds() == feed.seconds > 0  # what budget rule 4 weighs a fine-tune by
    assert ActivationSource(ActivationCache(tmp_path / "cache"), backbone, preprocessor.config(), [0, 1],
                            batch_size=8).feed(model, data, {}).pass_seconds() is None  # read from the cache
    if keras.backend.backend() == "tensorflow":
        assert prefixes[0].predict_function.experimental_get_tracing_count() == 1
    for split, x in (("train", x_train), ("val", x_val)):
        for depth, cut in feed.cuts.items():
            expected = across_the_cut(feed.graph, cut, x)
            for name in cut.cached_names:
                assert feed.arrays[(split, name)].shape == expected[name].shape
                np.testing.assert_allclose(feed.arrays[(split, name)], expected[name], atol=1e-5)

