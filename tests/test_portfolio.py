"""Tests of autotl.search.portfolio and of the default depths: the first trials of a search."""

from __future__ import annotations

import keras_tuner as kt
import pytest

from autotl.search.portfolio import DEPTH_FRACTION, PORTFOLIOS, first_trials, fitted, portfolio_for
from autotl.search.space import build_space, declare, depth_grid
from autotl.search.tuner import make_oracle, open_oracle


class _Declaring:
    """What `open_oracle` needs of a hypermodel: it declares the space."""

    def __init__(self, space):
        self.space = space

    def declare(self, hp):
        declare(self.space, hp)


def test_default_depths_reach_the_whole_backbone_in_a_few_cuts():
    assert depth_grid(18) == [0, 1, 2, 4, 9, 14, 18]
    assert depth_grid(7) == [0, 1, 2, 4, 5, 7]
    assert depth_grid(1) == [0, 1]
    space = build_space("image", None, None, blocks=18)
    assert space["unfreeze_depth"] == {"values": [0, 1, 2, 4, 9, 14, 18]}
    # A plugin's range, and then the user's, still win over the default.
    assert build_space("text", {"unfreeze_depth": {"min": 0, "max": 6}}, None, blocks=7)["unfreeze_depth"]["max"] == 6
    assert build_space("image", None, {"unfreeze_depth": 3}, blocks=18)["unfreeze_depth"] == {"values": [3]}


def test_an_entry_takes_the_nearest_value_the_space_holds():
    space = build_space("image", None, {"unfreeze_depth": {"values": [0, 3, 8]}, "finetune_lr": {"min": 1e-5, "max": 1e-4},
                                        "head_units": {"values": [32, 300]}, "pooling": "flatten"}, blocks=18)
    values = fitted(space, {DEPTH_FRACTION: 0.5, "finetune_lr": 3e-4, "head_units": 256, "pooling": "avg",
                            "dropout": 0.25})
    assert values["unfreeze_depth"] == 3  # half of the deepest allowed (8) is 4: 3 is nearest
    assert values["finetune_lr"] == pytest.approx(1e-4)  # clipped into the range
    assert values["head_units"] == 300
    assert values["pooling"] == "flatten"  # the space fixes it
    assert values["dropout"] in (0.2, 0.3)  # snapped to the range's step of 0.1
    assert values["head_layers"] == 0  # not named by the entry: the range's lower end, KerasTuner's default
    assert list(values) == list(space)
    assert fitted(space, {DEPTH_FRACTION: 1.0})["unfreeze_depth"] == 8
    assert fitted(space, {DEPTH_FRACTION: 0.0})["unfreeze_depth"] == 0


def test_every_entry_fits_each_default_space_and_none_repeats():
    for modality, blocks in (("image", 18), ("image", 5), ("text", 7)):
        space = build_space(modality, None, None, blocks=blocks)
        trials = first_trials(space, portfolio_for(modality))
        assert len(trials) == len(PORTFOLIOS[modality])
        assert len({tuple(sorted(t.items(), key=str)) for t in trials}) == len(trials)
        deepest = max(t["unfreeze_depth"] for t in trials)
        assert deepest == max(space["unfreeze_depth"]["values"])  # the portfolio fine-tunes the whole backbone
    # A space that fixes what tells the entries apart leaves fewer first trials, not repeats.
    fixed = build_space("image", None, {"unfreeze_depth": 0, "pooling": "avg", "head_layers": 0, "dropout": 0.2,
                                        "head_lr": 1e-3, "head_units": 64, "finetune_lr": 1e-4}, blocks=18)
    assert len(first_trials(fixed, portfolio_for("image"))) == 1


@pytest.mark.parametrize("kind", ["random", "bayesian"])
def test_the_oracle_hands_out_the_portfolio_first_then_draws_and_resumes_past_it(kind, tmp_path):
    space = build_space("image", None, None, blocks=18)
    portfolio = first_trials(space, portfolio_for("image"))

    def oracle_in(workdir, resume):
        oracle = make_oracle(kind, kt.Objective("val_accuracy", "max"), 6, 2, seed=0)
        oracle.portfolio = portfolio
        return open_oracle(oracle, _Declaring(space), workdir, resume)

    oracle = oracle_in(tmp_path, resume=False)
    handed = []
    for number in range(3):
        trial = oracle.create_trial(f"tuner{number}")
        handed.append(dict(trial.hyperparameters.values))
        if number < 2:  # the third is running when the search is killed
            oracle.update_trial(trial.trial_id, {"val_accuracy": 0.5 + number / 10})
            trial.status = kt.engine.trial.TrialStatus.COMPLETED  # as KerasTuner's tuner sets it
            oracle.end_trial(trial)
    assert handed == portfolio
    resumed = oracle_in(tmp_path, resume=True)
    values = [dict(resumed.create_trial(f"tuner{n}").hyperparameters.values) for n in range(3, 5)]
    assert values[0] == portfolio[2]  # the interrupted trial, run again
    assert values[1] not in portfolio  # past the portfolio the oracle draws, and does not start it again


def test_without_a_portfolio_the_first_trial_is_drawn(tmp_path):
    space = build_space("image", None, None, blocks=18)
    oracle = open_oracle(make_oracle("random", kt.Objective("val_accuracy", "max"), 3, 2, seed=0),
                         _Declaring(space), tmp_path, False)
    assert dict(oracle.create_trial("tuner0").hyperparameters.values) not in first_trials(space, portfolio_for("image"))


@pytest.mark.parametrize("portfolio", [True, False])
def test_a_search_starts_with_the_portfolio_fitted_to_its_backbone(tmp_path, mnist_dir, portfolio):
    """Through the CLI, on real digits and the tiny backbone (depths 0-2): the first trials are the
    portfolio's, half the backbone then all of it fine-tuned (drawn ones with --no-portfolio)."""
    from autotl.store import COMPLETED, Store

    from conftest import TINY_PLUGIN, run_cli

    store_url = f"sqlite:///{tmp_path / 'autotl.db'}"
    flag = "--portfolio" if portfolio else "--no-portfolio"
    result = run_cli("search", mnist_dir, "--backbone", "tiny_cnn", "--plugin", TINY_PLUGIN, "--image-size", "16",
                     "--max-trials", "2", "--epochs", "2", "--finetune-epochs", "1", "--name", "p", flag,
                     "--store", store_url, "--workdir", tmp_path / "runs", "--trials-per-worker", "0")
    assert result.returncode == 0, result.stderr
    store = Store(store_url)
    search = store.get_search("p")
    space = search.config["space"]
    assert search.config["portfolio"] is portfolio
    trials = store.list_trials(search.id)
    assert [t.status for t in trials] == [COMPLETED, COMPLETED]
    expected = first_trials(space, portfolio_for("image"))[:2]
    if portfolio:
        assert [t.hyperparameters for t in trials] == expected
        assert [t.hyperparameters["unfreeze_depth"] for t in trials] == [1, 2]
        assert {m.phase for m in store.epoch_metrics(trials[0].id)} == {"head", "finetune"}
    else:
        assert trials[0].hyperparameters != expected[0]


def _portfolio_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "portfolio.py"
    spec = importlib.util.spec_from_file_location("portfolio_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_portfolio_procedure_adds_what_covers_the_datasets_best_then_the_faster():
    benchmark = _portfolio_benchmark()
    # An all-rounder first, then a specialist: on d1 "a" is best, on d2 "b"; "c" is good on both.
    scores = {"d1": {"a": 1.0, "b": 0.5, "c": 0.875}, "d2": {"a": 0.5, "b": 1.0, "c": 0.875}}  # c scales to 0.75
    steps = benchmark.greedy_portfolio(scores, {"a": 10.0, "b": 5.0, "c": 1.0}, size=2)
    assert [s["add"] for s in steps] == ["c", "b"]  # after c, a and b both reach 0.875 on average: b is faster
    assert [s["mean_best_scaled"] for s in steps] == [0.75, 0.875]
    assert [s["add"] for s in benchmark.greedy_portfolio(scores, {"a": 1.0, "b": 5.0}, size=3)] == ["c", "a", "b"]
    # Every candidate in the script fits its modality's default space.
    for modality, candidates in benchmark.CANDIDATES.items():
        space = build_space(modality, None, None, blocks=7)
        assert len(first_trials(space, list(candidates.values()))) == len(candidates)
