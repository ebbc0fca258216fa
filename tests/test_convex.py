"""`--convex-head`: logistic regression on the pooled frozen features as the search's first trial, its penalty
chosen on validation, exported like any trial and fitted again by the refit."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from autotl.backbones import layers  # noqa: F401 - the checkpoints hold autotl's layers
from autotl.search import convex
from autotl.search.ensemble import score
from autotl.search.records import VAL_PROBS_NAME
from autotl.search.refit import REFIT_KIND
from autotl.store import COMPLETED

from conftest import TINY_PLUGIN, run_cli
from test_refit import run_tiny_search, validation_split

# A frozen random backbone whose flattened features a regression separates, and a tuner trial that cannot learn
# in its one epoch (a rate of 1e-9): the convex head is the best trial by a wide margin.
SPACE = "unfreeze_depth: 0\nhead_lr: {values: [1.0e-9]}\npooling: flatten\nhead_layers: 0\ndropout: 0.0\n"


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def test_each_penalty_fits_the_regression_scikit_learn_fits():
    """On 300 real 8x8 digits: the same predictions as scikit-learn's L-BFGS at the same penalty (its C is
    1 / (penalty * examples) on standardised features), for all but a few of 1,497 held-out digits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = _digits()
    train, held_out = (x[:300], y[:300]), x[300:]
    models = convex.fit_path(*train, classes=10)
    scaler = StandardScaler().fit(train[0])
    for penalty in (1.0, 0.1, 0.01):
        theirs = LogisticRegression(C=1 / (penalty * 300), max_iter=5000).fit(scaler.transform(train[0]), train[1])
        agree = np.mean(models[penalty].probabilities(held_out).argmax(1) == theirs.predict(scaler.transform(held_out)))
        assert agree > 0.99, (penalty, agree)


def test_the_penalty_with_the_best_validation_accuracy_is_chosen():
    x, y = _digits()
    choice = convex.choose(x[:300], y[:300], x[300:600], y[300:600], classes=10)
    assert set(choice.tried) == set(convex.PENALTIES)
    assert choice.val_accuracy == max(accuracy for accuracy, _ in choice.tried.values())
    assert choice.val_accuracy > 0.9  # digits are linearly separable; the strongest penalty (10) gets 0.54
    np.testing.assert_allclose(choice.val_probabilities, choice.model.probabilities(x[300:600]), atol=1e-6)
    assert choice.val_accuracy == score(convex.ACCURACY, choice.val_probabilities, y[300:600])


@pytest.fixture(scope="module")
def convex_search(tmp_path_factory, mnist_dir):
    root = tmp_path_factory.mktemp("convex")
    store, result, config, messages = run_tiny_search(root, mnist_dir, SPACE, max_trials=1, epochs=1, batch_size=16,
                                                      name="convex", convex_head=True, refit=True, portfolio=False)
    return root, store, result, config, messages


def test_the_convex_head_is_the_first_trial_and_its_checkpoint_predicts_what_it_scored(convex_search):
    root, store, result, config, _ = convex_search
    first, tuned = store.list_trials(result.search.id)
    assert (first.number, first.tuner_trial_id, first.status) == (1, convex.TUNER_TRIAL_ID, COMPLETED)
    assert first.hyperparameters == {"pooling": "flatten", "unfreeze_depth": 0, "head_layers": 0, "dropout": 0.0}
    assert first.metrics[convex.PENALTY_KEY] in convex.PENALTIES
    assert [(m.phase, m.epoch) for m in store.epoch_metrics(first.id) if m.name == "val_accuracy"] == [("head", 1)]
    assert result.best.id == first.id and first.value > tuned.value + 0.2
    checkpoint = Path(store.artifacts(result.search.id, kind="checkpoint", trial_id=first.id)[-1].path)
    saved = np.load(checkpoint.parent / VAL_PROBS_NAME)
    val, preprocessor = validation_split(config)
    model = keras.saving.load_model(checkpoint, compile=False)
    probabilities = model.predict(preprocessor(val.examples), verbose=0)
    np.testing.assert_allclose(probabilities, saved, atol=1e-5)
    assert first.value == pytest.approx(score(convex.ACCURACY, saved, val.labels))


def test_the_refit_fits_the_regression_again_on_every_labelled_example(convex_search):
    root, store, result, config, messages = convex_search
    [refit] = store.artifacts(result.search.id, kind=REFIT_KIND)
    assert refit.trial_id == result.best.id
    assert any("its regression, at the penalty it chose" in line for line in messages.lines)
    checkpoint = store.artifacts(result.search.id, kind="checkpoint", trial_id=result.best.id)[-1].path
    before = keras.saving.load_model(checkpoint, compile=False).get_layer("classes").get_weights()[0]
    after = keras.saving.load_model(refit.path, compile=False).get_layer("classes").get_weights()[0]
    assert not np.allclose(before, after)  # 96 + 24 digits, not 96


@pytest.mark.slow
def test_a_resumed_search_does_not_fit_the_convex_head_again(convex_search):
    root, store, result, _, _ = convex_search
    store, again, _, _ = run_tiny_search(root, Path(result.search.dataset_path), SPACE, max_trials=2, epochs=1,
                                         batch_size=16, name="convex", convex_head=True, refit=True, portfolio=False)
    assert [t.tuner_trial_id for t in again.trials].count(convex.TUNER_TRIAL_ID) == 1
    assert len(again.trials) == 3


def test_a_configuration_trains_alike_whichever_trial_number_runs_it(convex_search, tmp_path):
    """Trials are seeded from their configuration: the tuned trial, number 2 after the convex head, starts from
    the weights and batches it gets as number 1 of a search without it (so an ablation that adds a trial leaves
    the others' draws alone)."""
    root, store, result, _, _ = convex_search
    with_convex = store.list_trials(result.search.id)[1]
    alone_store, alone, _, _ = run_tiny_search(tmp_path, Path(result.search.dataset_path), SPACE, max_trials=1,
                                               epochs=1, batch_size=16, name="alone", portfolio=False)
    [without] = alone.trials
    assert (with_convex.number, without.number) == (2, 1)
    assert with_convex.hyperparameters == without.hyperparameters

    def losses(trial_store, trial):
        return {(m.phase, m.epoch, m.name): m.value for m in trial_store.epoch_metrics(trial.id) if "loss" in m.name}

    assert losses(store, with_convex) and losses(store, with_convex) == pytest.approx(losses(alone_store, without))


def test_the_convex_head_with_workers_is_a_usage_error(tmp_path, mnist_dir):
    result = run_cli("search", mnist_dir, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--convex-head",
                     "--workers", "2", "--store", f"sqlite:///{tmp_path / 'a.db'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("it does not combine with --workers")
    assert not (tmp_path / "a.db").exists()
