"""How a phase trains (`autotl.search.recipe`): AdamW without decay on biases, warm-up then cosine, smoothing,
layer-wise learning-rate decay."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from autotl.search.recipe import LayerwiseRates, Recipe, steps_in
from autotl.search.space import build_space

DEFAULT = Recipe.from_values({name: spec["values"][0] for name, spec in build_space("image").items()
                              if name in {"optimizer", "weight_decay", "lr_schedule", "warmup", "label_smoothing", "lr_decay"}})


def test_the_default_space_trains_with_adamw_warmup_cosine_and_smoothing():
    assert DEFAULT == Recipe(optimizer="adamw", weight_decay=0.01, lr_schedule="cosine", warmup=0.1,
                             label_smoothing=0.1, lr_decay=1.0)  # layer-wise decay: off until measured
    plain = DEFAULT.optimizer_for(1e-3, 10, [[keras.Variable(1.0)], [keras.Variable(1.0)]])
    assert isinstance(plain, keras.optimizers.AdamW) and not isinstance(plain, LayerwiseRates)


def test_trials_stored_before_the_recipe_existed_train_as_they_did():
    old = Recipe.from_values({"head_lr": 1e-3, "dropout": 0.2})
    assert isinstance(old.optimizer_for(1e-3, 100), keras.optimizers.Adam)
    assert not isinstance(old.optimizer_for(1e-3, 100), keras.optimizers.AdamW)
    assert old.learning_rate(1e-3, 100) == 1e-3
    assert old.loss(3) == "sparse_categorical_crossentropy"


def test_adamw_decays_kernels_but_not_biases():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    layer.kernel.assign(np.ones((3, 2), "float32"))
    layer.bias.assign(np.ones(2, "float32"))
    optimizer = Recipe(optimizer="adamw", weight_decay=0.5).optimizer_for(0.1, 10)
    zero = [keras.ops.zeros((3, 2)), keras.ops.zeros((2,))]
    optimizer.apply(zero, [layer.kernel, layer.bias])  # no gradient: only the decay moves a variable
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.kernel), 0.95, rtol=1e-6)  # 1 - 0.1 * 0.5
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.bias), 1.0)


def test_the_rate_warms_up_to_its_peak_then_decays_to_zero_by_the_last_step():
    schedule = Recipe(lr_schedule="cosine", warmup=0.1).learning_rate(1e-3, 100)
    rates = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 5, 10, 55, 100)]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(5e-4)
    assert rates[2] == pytest.approx(1e-3)
    assert rates[3] == pytest.approx(5e-4, rel=1e-3)  # half-way through the cosine
    assert rates[4] == pytest.approx(0.0, abs=1e-9)
    no_warmup = Recipe(lr_schedule="cosine", warmup=0.0).learning_rate(1e-3, 100)
    assert float(keras.ops.convert_to_numpy(no_warmup(0))) == pytest.approx(1e-3)


def test_label_smoothing_is_crossentropy_against_smoothed_one_hot_labels():
    loss = Recipe(label_smoothing=0.1).loss(4)
    probabilities = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]], "float32")
    labels = np.array([0, 2])
    target = np.full((2, 4), 0.1 / 4, "float32")
    target[[0, 1], labels] += 0.9
    expected = -(target * np.log(probabilities)).sum(axis=1).mean()
    assert float(keras.ops.convert_to_numpy(loss(labels, probabilities))) == pytest.approx(expected, rel=1e-5)


def test_a_phase_counts_its_steps_by_batches_per_epoch():
    assert steps_in(100, 32, 3) == 12
    assert steps_in(0, 32, 3) == 1


def test_a_backbone_sets_its_fine_tuning_epochs_unless_the_user_does():
    from autotl import api
    from autotl.backbones.registry import load_registry
    from autotl.config import SearchConfig, planned_finetune_epochs

    from conftest import TINY_PLUGIN

    tiny = load_registry([str(TINY_PLUGIN)]).get("tiny_cnn")
    few = type("FewEpochs", (type(tiny),), {"default_finetune_epochs": 3})()
    plan = api.training_plan(SearchConfig(data="d", backbone="b", epochs=10), few, "s", None)
    assert (plan.epochs, plan.finetune_epochs) == (10, 3)
    assert planned_finetune_epochs(SearchConfig(data="d", backbone="b", epochs=2), few) == 2  # --epochs caps it
    assert planned_finetune_epochs(SearchConfig(data="d", backbone="b", epochs=10, finetune_epochs=7), few) == 7
    assert planned_finetune_epochs(SearchConfig(data="d", backbone="b", epochs=10), tiny) == 10  # no own: --epochs


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_layerwise_decay_trains_each_block_below_the_top_at_decay_times_the_rate_above(optimizer):
    """Adam's first step moves every weight by the rate (its update is m / sqrt(v) = 1 for a constant gradient):
    the head and the top block by 0.01, the block below by 0.5 x 0.01, the one below that by 0.25 x 0.01."""
    lowest, lower, top, head = (keras.Variable(np.zeros(3, "float32")) for _ in range(4))
    recipe = Recipe(optimizer=optimizer, weight_decay=0.0, lr_decay=0.5)
    trained = recipe.optimizer_for(0.01, 10, [[top], [lower], [lowest]])
    trained.apply([keras.ops.ones(3)] * 4, [lowest, lower, top, head])
    moved = [float(np.abs(keras.ops.convert_to_numpy(v)).max()) for v in (head, top, lower, lowest)]
    assert moved == pytest.approx([0.01, 0.01, 0.005, 0.0025], rel=1e-4)


@pytest.mark.slow
def test_a_fine_tune_with_layerwise_decay_leaves_the_lower_blocks_where_a_vanishing_factor_keeps_them(
        tmp_path, mnist_dir):
    """Through a real search on cached activations: the top of two unfrozen blocks trains; the block below,
    at lr_decay ** 1 = 1e-9 times its rate, ends where the weights file had it."""
    from autotl import api
    from autotl.backbones.registry import load_registry
    from autotl.store import Store

    from conftest import TINY_PLUGIN

    tiny = load_registry([str(TINY_PLUGIN)]).get("tiny_cnn")
    # A seeded start: from some random starts every unit of block 2 is dead on these digits (its ReLU never
    # fires), no gradient reaches its kernel, and nothing would show that the top block trains.
    keras.utils.set_random_seed(1)
    start = tiny.build("none", tiny.preprocessor("none", {"image_size": (16, 16)}))
    start.save_weights(tmp_path / "start.weights.h5")
    before = {name: keras.ops.convert_to_numpy(start.get_layer(name).kernel) for name in ("block1_conv", "block2_conv")}
    # A head rate that overshoots in its one epoch, so that the fine-tune's epochs have the lower validation loss
    # by a wide margin (a head that merely barely learns ties with them on 20 validation digits, and a tie can go
    # either way on another machine); Adam, since AdamW's decoupled weight decay keeps the unscaled rate
    # (LayerwiseRates' docstring).
    (tmp_path / "space.yaml").write_text("unfreeze_depth: {values: [2]}\nhead_lr: {values: [1.0]}\n"
                                         "finetune_lr: {values: [0.01]}\nlr_decay: {values: [1.0e-9]}\n"
                                         "optimizer: adam\n")
    store = Store(f"sqlite:///{tmp_path / 'autotl.db'}")
    config = api.SearchConfig(data=str(mnist_dir), backbone="tiny_cnn", plugin_files=[str(TINY_PLUGIN)],
                              weights=str(tmp_path / "start.weights.h5"), image_size=16, max_trials=1, epochs=1,
                              finetune_epochs=2, patience=5, batch_size=16, portfolio=False, name="decay",
                              objective="val_loss",
                              space_file=str(tmp_path / "space.yaml"), workdir=str(tmp_path / "runs"))
    result = api.search(config, store)
    assert result.best.best_phase == "finetune"
    checkpoint = store.artifacts(result.search.id, kind="checkpoint")[0].path
    backbone = keras.saving.load_model(checkpoint).get_layer("backbone")
    after = {name: keras.ops.convert_to_numpy(backbone.get_layer(name).kernel) for name in before}
    np.testing.assert_allclose(after["block1_conv"], before["block1_conv"], atol=1e-7)
    assert np.abs(after["block2_conv"] - before["block2_conv"]).max() > 1e-3
