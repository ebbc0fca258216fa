"""`--checkpoint-soup`: a fine-tune's best epochs averaged greedily (autotl.search.soup), never worse on validation
than the best epoch alone, and what the checkpoint holds."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from autotl.backbones import layers  # noqa: F401 - the checkpoint holds autotl's layers
from autotl.search.records import VAL_PROBS_NAME, Objective
from autotl.search.soup import SOUP_METRIC, Ingredient, TopEpochs, greedy_soup

from test_refit import SPACE, run_tiny_search, validation_split

pytestmark = pytest.mark.slow  # a lever that is off by default: a fine-tuning search of half a minute

ACCURACY = Objective("val_accuracy", "max")


def test_the_top_epochs_are_kept_best_first_ties_by_the_lower_loss():
    weight = keras.Variable(0.0)
    top = TopEpochs(ACCURACY, [weight], size=3)
    for epoch, (accuracy, loss) in enumerate([(0.5, 1.0), (0.8, 0.6), (0.8, 0.4), (0.7, 0.1), (0.9, 0.9),
                                              (float("nan"), 0.1)]):
        weight.assign(float(epoch))
        top.on_epoch_end(epoch, {"val_accuracy": accuracy, "val_loss": loss})
    assert [ingredient.epoch for ingredient in top.best] == [5, 3, 2]
    assert [float(ingredient.values[0]) for ingredient in top.best] == [4.0, 2.0, 1.0]


def test_an_epoch_joins_the_soup_only_when_validation_does_not_drop():
    weight, step = keras.Variable(0.0), keras.Variable(7, dtype="int64")

    def validate():  # accuracy 1.0 near 2, else 0.5; loss: the distance to 2
        value = float(keras.ops.convert_to_numpy(weight))
        return {"val_accuracy": 1.0 if 1.5 < value < 2.5 else 0.5, "val_loss": abs(value - 2.0)}

    ingredients = [Ingredient(4, {"val_accuracy": 0.9, "val_loss": 1.0}, [np.float32(1.0), np.int64(7)]),
                   Ingredient(6, {"val_accuracy": 0.8, "val_loss": 1.2}, [np.float32(3.0), np.int64(9)]),
                   Ingredient(2, {"val_accuracy": 0.8, "val_loss": 1.3}, [np.float32(-100.0), np.int64(3)])]
    epochs, logs = greedy_soup(ingredients, [weight, step], validate, ACCURACY)
    assert epochs == [4, 6]  # 1 and 3 average to 2 (accuracy 1.0); with -100 the mean falls to -32 (0.5)
    assert logs == {"val_accuracy": 1.0, "val_loss": 0.0}
    assert float(keras.ops.convert_to_numpy(weight)) == 2.0
    assert int(keras.ops.convert_to_numpy(step)) == 7  # not a float: the best epoch's own value
    # An ingredient that makes validation worse leaves the best epoch alone, as the trial had it.
    epochs, logs = greedy_soup([ingredients[0], ingredients[2]], [weight, step], validate, ACCURACY)
    assert epochs == [4] and logs == ingredients[0].logs
    assert float(keras.ops.convert_to_numpy(weight)) == 1.0


@pytest.fixture(scope="module")
def soup_search(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("soup")
    store, result, config, _ = run_tiny_search(
        root, mnist_dir, SPACE, max_trials=2, epochs=4, finetune_epochs=6, batch_size=16, patience=6, seed=2,
        name="soup", checkpoint_soup=True)
    return store, result, config


def test_a_fine_tune_records_its_soup_and_the_checkpoint_holds_it(soup_search):
    store, result, config = soup_search
    fine_tuned = [t for t in result.trials if t.best_phase == "finetune"]
    assert fine_tuned, [t.best_phase for t in result.trials]
    for trial in fine_tuned:
        assert 1 <= trial.metrics[SOUP_METRIC] <= 3
        best_epoch_logged = max(m.value for m in store.epoch_metrics(trial.id)
                                if m.phase == "finetune" and m.name == "val_accuracy")
        assert trial.value >= best_epoch_logged  # never worse than the best epoch alone
    # The kept checkpoint is the soup: its validation accuracy is the trial's value, its probabilities the saved ones.
    val, preprocessor = validation_split(config)
    checkpoint = store.artifacts(result.search.id, kind="checkpoint", trial_id=result.best.id)[-1].path
    probs = keras.saving.load_model(checkpoint, compile=False).predict(preprocessor(val.examples), verbose=0)
    assert float(np.mean(probs.argmax(axis=1) == val.labels)) == pytest.approx(result.best.value, abs=1e-6)
    np.testing.assert_allclose(np.load(Path(checkpoint).parent / VAL_PROBS_NAME), probs, atol=1e-5)
