"""Property tests of the search-space checks (issue 17, 5): random space files, drawn by Hypothesis.

Every space `build_space` accepts declares on KerasTuner, every trial KerasTuner samples from it
holds values in its hyperparameter's domain (as defined here, independently of autotl's checks),
and the tiny backbone's trial model builds and runs for it; every space it refuses is a one-line
UsageError (exit 2 in the CLI) naming a key of the file. The CLI's side (exit 2, no search row)
is tested in test_cli_errors.py.
"""

from __future__ import annotations

import math

import keras
import keras_tuner as kt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotl.backbones.registry import load_registry
from autotl.errors import UsageError
from autotl.search.hypermodel import TransferHyperModel
from autotl.search.recipe import Recipe
from autotl.search.space import build_space, check_depth_within, declare

from conftest import TINY_PLUGIN

pytestmark = pytest.mark.slow  # minutes of real searches: the whole suite only (README: Tests)

BLOCKS = 3  # the tiny backbone's
NAMES = ["pooling", "head_layers", "head_units", "dropout", "unfreeze_depth", "head_lr", "finetune_lr", "augment",
         "optimizer", "weight_decay", "lr_schedule", "warmup", "label_smoothing"]


def in_domain(name: str, value) -> bool:
    """What a trial's value must be, hyperparameter by hyperparameter (the issue's list)."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return {
        "pooling": value in ("avg", "flatten"),
        "head_layers": whole and value >= 0,
        "head_units": whole and value >= 1,
        "dropout": number and 0 <= value < 1,
        "unfreeze_depth": whole and 0 <= value <= BLOCKS,
        "head_lr": number and value > 0,
        "finetune_lr": number and value > 0,
        "augment": isinstance(value, bool),
        "optimizer": value in ("adamw", "adam"),
        "weight_decay": number and value >= 0,
        "lr_schedule": value in ("cosine", "constant"),
        "warmup": number and 0 <= value < 1,
        "label_smoothing": number and 0 <= value < 1,
    }[name]


# The domains' edges and either side of them, then anything.
EDGES = [-1, 0, 1, 2, 3, 4, 50, -0.5, 0.0, 1e-9, 0.5, 0.999, 1.0, 1.5, 2.0]
numbers = st.one_of(st.sampled_from(EDGES), st.integers(-2, 300), st.floats(-1, 3),
                    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(numbers, st.booleans(), st.none(),
                    st.sampled_from(["avg", "flatten", "mean", "cls", "1e-3", "0.2", "3", "", "x", "adamw", "adam",
                                     "cosine", "constant", "sgd"]))
ranges = st.fixed_dictionaries({}, optional={
    "min": st.one_of(numbers, scalars), "max": st.one_of(numbers, scalars),
    "step": st.one_of(st.integers(-1, 3), st.floats(-0.5, 3), scalars),
    "sampling": st.sampled_from(["linear", "log", "reverse_log", "cubic", "LOG", None]),
    "type": st.sampled_from(["int", "float", "str"]),
})
specs = st.one_of(scalars, st.fixed_dictionaries({"values": st.lists(scalars, max_size=4)}), ranges,
                  st.fixed_dictionaries({"values": scalars}))
anything = st.dictionaries(st.sampled_from(NAMES + ["learning_rate"]), specs, max_size=4)

well_formed = st.fixed_dictionaries({}, optional={
    "head_layers": st.one_of(st.integers(0, 3), st.builds(lambda a, b: {"min": min(a, b), "max": max(a, b)},
                                                          st.integers(0, 3), st.integers(0, 3))),
    "head_units": st.one_of(st.integers(1, 64), st.fixed_dictionaries({"values": st.lists(st.integers(1, 64),
                                                                                          min_size=1, max_size=3)})),
    "dropout": st.one_of(st.floats(0, 0.99), st.fixed_dictionaries(
        {"min": st.just(0), "max": st.floats(0, 0.99), "step": st.floats(0.01, 0.5)})),
    "unfreeze_depth": st.one_of(st.integers(0, BLOCKS), st.fixed_dictionaries({"min": st.just(0),
                                                                               "max": st.integers(0, BLOCKS)})),
    "head_lr": st.fixed_dictionaries({"min": st.floats(1e-5, 1e-3), "max": st.floats(1e-3, 1e-1),
                                      "sampling": st.sampled_from(["linear", "log", "reverse_log"])}),
    "finetune_lr": st.one_of(st.floats(1e-7, 1.0), st.floats(1e-7, 1.0).map("{:.0e}".format)),  # '1e-05': YAML's text
    "pooling": st.sampled_from(["avg", "flatten"]),
    "augment": st.fixed_dictionaries({"values": st.lists(st.booleans(), min_size=1, max_size=2)}),
    "optimizer": st.sampled_from(["adamw", "adam"]),
    "weight_decay": st.one_of(st.floats(0, 0.3), st.fixed_dictionaries({"values": st.lists(
        st.sampled_from([0.0, 1e-4, 0.01, 0.1]), min_size=1, max_size=3)})),
    "lr_schedule": st.fixed_dictionaries({"values": st.lists(st.sampled_from(["cosine", "constant"]), min_size=1,
                                                             max_size=2)}),
    "warmup": st.floats(0, 0.99),
    "label_smoothing": st.fixed_dictionaries({"min": st.just(0.0), "max": st.floats(0, 0.99)}),
})
# Random files, files whose every value is in its domain, and such files with one random entry over them
# (to reach the edges: one bad key among good ones, a good key made bad).
space_files = st.one_of(anything, well_formed, st.builds(lambda good, other: {**good, **other}, well_formed,
                                                         st.dictionaries(st.sampled_from(NAMES), specs, max_size=1)))


@pytest.fixture(scope="module")
def tiny():
    registry = load_registry([str(TINY_PLUGIN)])
    backbone = registry.get("tiny_cnn")
    return backbone, backbone.preprocessor("none", {"image_size": (16, 16)})


def accepted_space(user: dict):
    """The space as `autotl search` takes it: built, then its unfreeze depth held to the backbone's blocks."""
    space = build_space("image", {"unfreeze_depth": {"min": 0, "max": 2}}, user)
    if "unfreeze_depth" in user:
        check_depth_within(space, BLOCKS, "tiny_cnn")
    return space


def sampled_trials(space, n: int) -> list[dict]:
    hp = kt.HyperParameters()
    declare(space, hp)
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=n,
                                           hyperparameters=hp, seed=3)
    trials = [dict(hp.values)]
    for i in range(n):
        result = oracle.populate_space(f"t{i}")
        if result["status"] != "RUNNING":  # every value of a small space already tried
            break
        trials.append(result["values"])
    return trials


def builds_and_runs(tiny, space, values: dict) -> None:
    backbone, preprocessor = tiny
    hypermodel = TransferHyperModel(backbone, "none", preprocessor, 3, space)
    model = hypermodel.build(hypermodel.hyperparameters(values))
    probs = keras.ops.convert_to_numpy(model(np.zeros((1, 16, 16, 3), "float32")))
    assert probs.shape == (1, 3) and np.isfinite(probs).all()
    recipe = Recipe.from_values(values)
    for rate in (values["head_lr"], values["finetune_lr"]):
        model.compile(optimizer=recipe.optimizer_for(rate, 10), loss=recipe.loss(3))
    keras.utils.clear_session()


def test_every_space_file_is_refused_in_one_line_or_builds_trials_in_domain(tiny):
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=50, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(space_files)
    def check(user):
        try:
            space = accepted_space(user)
        except UsageError as exc:
            message = str(exc)
            assert message and "\n" not in message, message
            assert any(repr(name) in message for name in user), (user, message)
            outcomes["refused"] += 1
            return
        trials = sampled_trials(space, 4)
        for values in trials:
            bad = {name: value for name, value in values.items() if not in_domain(name, value)}
            assert not bad, (user, bad)
        builds_and_runs(tiny, space, trials[-1])
        outcomes["accepted"] += 1

    check()
    # Both sides of the property were exercised, not one alone.
    assert outcomes["accepted"] >= 5 and outcomes["refused"] >= 5, outcomes


@settings(max_examples=20, deadline=None, database=None)
@given(well_formed)
def test_every_space_within_the_domains_is_accepted_and_builds(tiny, user):
    """The other direction: no space whose every value is in its domain is refused."""
    space = accepted_space(user)
    for values in sampled_trials(space, 3):
        assert all(in_domain(name, value) for name, value in values.items()), values
    builds_and_runs(tiny, space, values)
