"""Tests of autotl.search.space: defaults, overrides, space files, and declaring on KerasTuner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras_tuner as kt
import pytest

from autotl.errors import UsageError
from autotl.search.space import (DEFAULT_SPACE, build_space, check_depth_within, declare, default_space, depth_choices,
                                 in_declared_order,
                                 load_space_file)

HP_NAMES = {"pooling", "head_layers", "head_units", "dropout", "unfreeze_depth", "head_lr", "finetune_lr",
            "optimizer", "weight_decay", "lr_schedule", "warmup", "label_smoothing", "lr_decay"}
IMAGE_HP_NAMES = HP_NAMES | {"augment"}


def usage_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert excinfo.type is UsageError or issubclass(excinfo.type, UsageError)
    assert message and "\n" not in message and "\r" not in message, repr(message)
    for fragment in fragments:
        assert fragment in message, message
    return message


def declared(space) -> kt.HyperParameters:
    hp = kt.HyperParameters()
    declare(space, hp)
    return hp


def sample(space, n: int = 30, seed: int = 7) -> list[dict]:
    """`n` value sets drawn by KerasTuner's own RandomSearchOracle from the declared space."""
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=n, seed=seed,
                                           hyperparameters=declared(space))
    draws = []
    for i in range(n):
        result = oracle.populate_space(f"trial_{i}")
        assert result["status"] == "RUNNING", result
        draws.append(result["values"])
    return draws


# --------------------------------------------------------------------------- defaults and merging


def test_defaults_per_modality():
    image, text = default_space("image"), default_space("text")
    assert set(text) == HP_NAMES
    assert set(image) == HP_NAMES | {"augment"}
    assert image["augment"] == {"values": [False]}  # off unless a space file asks: it bypasses the cache
    assert image["pooling"] == {"values": ["avg", "flatten"]}
    assert text["pooling"] == {"values": ["mean", "cls"]}
    assert build_space("image")["pooling"]["values"] == ["avg", "flatten"]
    assert build_space("text")["pooling"]["values"] == ["mean", "cls"]
    for name in HP_NAMES - {"pooling"}:
        assert image[name] == text[name] == DEFAULT_SPACE[name]


def test_augment_takes_booleans_and_only_for_images():
    assert build_space("image", None, {"augment": {"values": [False, True]}})["augment"] == {"values": [False, True]}
    with pytest.raises(UsageError) as excinfo:
        build_space("image", None, {"augment": {"values": ["yes"]}})
    usage_error(excinfo, "'augment'", "'yes'", "true or false")
    with pytest.raises(UsageError) as excinfo:
        build_space("text", None, {"augment": True})
    usage_error(excinfo, "unknown hyperparameter 'augment'")


def test_depth_choices_lists_every_depth_a_trial_can_ask_for():
    assert depth_choices(build_space("image", None, {"unfreeze_depth": {"min": 0, "max": 3}})) == [0, 1, 2, 3]
    assert depth_choices(build_space("image", None, {"unfreeze_depth": {"values": [2, 0, 2]}})) == [0, 2]
    assert depth_choices(build_space("image", None, {"unfreeze_depth": 1})) == [1]


def test_default_space_is_a_copy():
    space = default_space("image")
    space["head_units"]["values"].append(4096)
    space["pooling"]["values"].clear()
    assert 4096 not in default_space("image")["head_units"]["values"]
    assert default_space("image")["pooling"]["values"] == ["avg", "flatten"]


def test_plugin_overrides_then_user_overrides():
    plugin = {"unfreeze_depth": {"min": 0, "max": 5}, "head_units": {"values": [32, 64]},
              "finetune_lr": {"min": 1e-5, "max": 1e-3}}
    user = {"unfreeze_depth": {"max": 3}, "head_units": {"values": [16]}}
    space = build_space("image", plugin, user)
    # The user's max is merged onto the plugin's range (plugin's min kept), not onto the default.
    assert space["unfreeze_depth"] == {"type": "int", "min": 0, "max": 3}
    assert space["head_units"] == {"values": [16]}  # the user wins
    # Plugin-only overrides survive; the default's log sampling stays unless replaced.
    assert space["finetune_lr"] == {"type": "float", "min": 1e-5, "max": 1e-3, "sampling": "log"}
    assert space["dropout"] == DEFAULT_SPACE["dropout"]  # untouched
    assert build_space("image", plugin)["unfreeze_depth"]["max"] == 5


def test_a_range_over_a_choice_becomes_an_int_range():
    space = build_space("image", user_overrides={"head_units": {"min": 32, "max": 96, "step": 32}})
    assert space["head_units"] == {"type": "int", "min": 32, "max": 96, "step": 32}
    hp = declared(space)
    assert isinstance(hp._hps["head_units"][0], kt.engine.hyperparameters.Int)
    assert {draw["head_units"] for draw in sample(space)} <= {32, 64, 96}


def test_a_scalar_fixes_a_value():
    space = build_space("text", user_overrides={"dropout": 0.2, "pooling": "cls", "head_layers": 1})
    assert space["dropout"] == {"values": [0.2]}
    hp = declared(space)
    for name, value in (("dropout", 0.2), ("pooling", "cls"), ("head_layers", 1)):
        [param] = hp._hps[name]
        assert isinstance(param, kt.engine.hyperparameters.Fixed), (name, param)
        assert param.value == value
    for draw in sample(space, n=10):
        assert (draw["dropout"], draw["pooling"], draw["head_layers"]) == (0.2, "cls", 1)


def test_min_equal_max_is_fixed_too():
    hp = declared(build_space("image", user_overrides={"unfreeze_depth": {"min": 1, "max": 1}}))
    [param] = hp._hps["unfreeze_depth"]
    assert isinstance(param, kt.engine.hyperparameters.Fixed) and param.value == 1


@pytest.mark.parametrize("where", ["plugin", "user"])
def test_unknown_hyperparameter_is_named(where):
    overrides = {"learning_rate": {"min": 0.1, "max": 0.2}}
    with pytest.raises(UsageError) as excinfo:
        build_space("image", **{f"{where}_overrides": overrides})
    usage_error(excinfo, "'learning_rate'", "head_lr")  # names it, and lists the known ones


@pytest.mark.parametrize("overrides, fragments", [
    ({"unfreeze_depth": {"min": 3, "max": 1}}, ["unfreeze_depth", "min 3", "max 1"]),
    ({"dropout": {"min": 0.6, "max": 0.5}}, ["dropout"]),
    ({"head_lr": {"min": 0.0, "max": 0.1}}, ["head_lr", "min 0.0", "a number > 0"]),
    ({"finetune_lr": {"min": -1e-5, "max": 1e-4, "sampling": "log"}}, ["finetune_lr", "a number > 0"]),
    ({"dropout": {"min": 0.0, "max": 0.4, "sampling": "log"}}, ["dropout", "log sampling needs min > 0"]),
    ({"head_units": {"values": []}}, ["head_units", "empty"]),
    ({"head_units": {"values": 128}}, ["head_units", "list"]),  # was a raw TypeError
    ({"pooling": {"values": "avg"}}, ["pooling", "list"]),  # was split into 'a', 'v', 'g'
    ({"head_units": {"max": 64}}, ["head_units", "min"]),  # a choice widened with only a max
    ({"head_lr": {"min": "small", "max": 0.1}}, ["head_lr", "'small'", "a number > 0"]),
    ({"head_lr": {"lo": 0.1}}, ["head_lr", "lo"]),
    ({"pooling": {"values": ["avg", "max"]}}, ["pooling", "max"]),
    ({"unfreeze_depth": {"min": -1, "max": 1}}, ["unfreeze_depth"]),
])
def test_invalid_ranges_are_usage_errors(overrides, fragments):
    with pytest.raises(UsageError) as excinfo:
        build_space("image", user_overrides=overrides)
    usage_error(excinfo, *fragments)


# Issue 17, 5: each value is checked against its hyperparameter's domain, the error names the key
# and what it takes (these failed inside a trial, or ran clipped, or divided by zero).
@pytest.mark.parametrize("modality, overrides, fragments", [
    ("image", {"dropout": {"min": -0.5, "max": 2}}, ["'dropout'", "min -0.5", "a number in [0, 1)"]),
    ("image", {"dropout": {"min": 0, "max": 1}}, ["'dropout'", "max 1", "[0, 1)"]),
    ("image", {"dropout": 1.5}, ["'dropout'", "1.5", "[0, 1)"]),
    ("image", {"dropout": {"values": [0.1, "high"]}}, ["'dropout'", "'high'", "[0, 1)"]),
    ("image", {"head_units": {"values": [0]}}, ["'head_units'", "value 0", "a whole number >= 1"]),
    ("image", {"head_units": {"values": [64.5]}}, ["'head_units'", "64.5", "whole number"]),
    ("image", {"head_units": {"min": 32, "max": 96, "step": 0}}, ["'head_units'", "step 0", "whole number >= 1"]),
    ("image", {"head_units": {"min": 32, "max": 96, "type": "float"}}, ["'head_units'", "'float'", "whole number"]),
    ("image", {"head_units": True}, ["'head_units'", "True", "whole number"]),
    ("image", {"head_layers": -1}, ["'head_layers'", "-1", "a whole number >= 0"]),
    ("image", {"head_layers": "2"}, ["'head_layers'", "'2'", "whole number"]),
    ("image", {"dropout": {"min": 0.0, "max": 0.5, "step": 0}}, ["'dropout'", "step 0", "a number > 0"]),
    ("image", {"dropout": {"min": 0.0, "max": 0.5, "step": -0.1}}, ["'dropout'", "step -0.1", "> 0"]),
    ("image", {"head_lr": {"min": 1e-4, "max": 1e-2, "step": 0.5}}, ["'head_lr'", "step 0.5", "> 1", "multiplies"]),
    ("image", {"head_lr": {"min": 1e-4, "max": 1e-2, "sampling": "cubic"}},
     ["'head_lr'", "'cubic'", "linear, log, reverse_log"]),
    ("image", {"head_lr": 0}, ["'head_lr'", "value 0", "a number > 0"]),
    ("image", {"head_lr": float("inf")}, ["'head_lr'", "inf", "a number > 0"]),
    ("image", {"finetune_lr": {"values": [1e-5, -1e-5]}}, ["'finetune_lr'", "-1e-05", "> 0"]),
    ("image", {"unfreeze_depth": {"min": 0, "max": 2.5}}, ["'unfreeze_depth'", "max 2.5", "whole number"]),
    ("image", {"pooling": "mean"}, ["'pooling'", "'mean'", "one of avg, flatten"]),
    ("text", {"pooling": {"values": ["cls", "avg"]}}, ["'pooling'", "'avg'", "one of mean, cls"]),
    ("image", {"pooling": {"min": 0, "max": 1}}, ["'pooling'", "takes `values`", "not a range"]),
    ("image", {"augment": 1}, ["'augment'", "1", "true or false"]),
    ("image", {"augment": {"values": [False, "true"]}}, ["'augment'", "'true'", "true or false"]),
])
def test_values_outside_their_domain_are_usage_errors(modality, overrides, fragments):
    with pytest.raises(UsageError) as excinfo:
        build_space(modality, user_overrides=overrides)
    usage_error(excinfo, *fragments)


def test_values_are_declared_in_their_domain_type():
    """A float choice of 0 and 0.5 reaches KerasTuner as floats (its Choice refuses mixed types), and a
    number YAML leaves as text (``1e-3``, without a dot) as that number, not the string."""
    space = build_space("image", user_overrides={"dropout": {"values": [0, 0.5]}, "head_lr": "1e-3",
                                                 "finetune_lr": {"min": "1e-6", "max": "1e-6"}})
    assert space["dropout"] == {"values": [0.0, 0.5]} and all(type(v) is float for v in space["dropout"]["values"])
    assert space["head_lr"] == {"values": [0.001]}
    hp = declared(space)
    assert hp.values["head_lr"] == 0.001 and hp.values["finetune_lr"] == 1e-6


@pytest.mark.parametrize("overrides, fragments", [
    ({"unfreeze_depth": {"min": 0, "max": 50}}, ["'unfreeze_depth'", "max 50", "3 blocks", "'tiny'", "0 to 3"]),
    ({"unfreeze_depth": {"values": [1, 4]}}, ["'unfreeze_depth'", "value 4", "3 blocks", "0 to 3"]),
    ({"unfreeze_depth": 9}, ["'unfreeze_depth'", "9", "0 to 3"]),
])
def test_unfreeze_depth_above_the_block_count_is_refused(overrides, fragments):
    space = build_space("image", user_overrides=overrides)
    with pytest.raises(UsageError) as excinfo:
        check_depth_within(space, 3, "tiny")
    usage_error(excinfo, *fragments)
    check_depth_within(build_space("image", user_overrides={"unfreeze_depth": {"min": 0, "max": 3}}), 3, "tiny")


# --------------------------------------------------------------------------- files


def test_yaml_file_loads(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("# narrow the search\nunfreeze_depth: {min: 0, max: 1}\nhead_units:\n  values: [128, 256]\n"
                    "head_lr: {min: 1.0e-4, max: 1.0e-3, sampling: log}\ndropout: 0.3\n")
    data = load_space_file(path)
    assert data == {"unfreeze_depth": {"min": 0, "max": 1}, "head_units": {"values": [128, 256]},
                    "head_lr": {"min": 1.0e-4, "max": 1.0e-3, "sampling": "log"}, "dropout": 0.3}
    space = build_space("image", user_overrides=data)
    assert space["head_lr"] == {"type": "float", "min": 1e-4, "max": 1e-3, "sampling": "log"}
    assert space["dropout"] == {"values": [0.3]}


def test_yml_suffix_and_json_file_load(tmp_path):
    spec = {"head_layers": {"min": 1, "max": 2}, "pooling": {"values": ["mean"]}}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    (tmp_path / "s.yml").write_text(json.dumps(spec))  # JSON is YAML too
    assert load_space_file(tmp_path / "s.json") == spec
    assert load_space_file(str(tmp_path / "s.yml")) == spec
    space = build_space("text", user_overrides=load_space_file(tmp_path / "s.json"))
    assert space["pooling"] == {"values": ["mean"]}
    assert space["head_layers"] == {"type": "int", "min": 1, "max": 2}


@pytest.mark.parametrize("name, text", [
    ("bad.yaml", "head_units: {values: [64, 128\nhead_lr: 1\n"),
    ("bad.yaml", "head_units:\n  - 1\n bad indent: [\n"),
    ("bad.json", '{"head_units": {"values": [64, 128]},}'),
    ("bad.json", "head_units: {values: [64]}"),  # YAML in a .json file
])
def test_a_file_that_does_not_parse_is_one_line(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError) as excinfo:
        load_space_file(path)
    usage_error(excinfo, str(path), "does not parse")


@pytest.mark.parametrize("text", ["- head_units\n- dropout\n", "just a string\n", ""])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as excinfo:
        load_space_file(path)
    usage_error(excinfo, str(path))


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(UsageError) as excinfo:
        load_space_file(tmp_path / "nope.yaml")
    usage_error(excinfo, "nope.yaml")


# --------------------------------------------------------------------------- declare + sampling


def test_declare_gives_keras_tuner_types():
    hp = declared(build_space("image"))
    params = {name: hp._hps[name][0] for name in HP_NAMES}
    assert set(hp.values) == IMAGE_HP_NAMES
    head_layers, head_lr, head_units = params["head_layers"], params["head_lr"], params["head_units"]
    assert isinstance(head_layers, kt.engine.hyperparameters.Int)
    assert (head_layers.min_value, head_layers.max_value) == (0, 2)
    assert isinstance(head_lr, kt.engine.hyperparameters.Float)
    assert (head_lr.min_value, head_lr.max_value, head_lr.sampling) == (1e-4, 1e-2, "log")
    assert isinstance(head_units, kt.engine.hyperparameters.Choice)
    assert list(head_units.values) == [64, 128, 256, 512]
    assert isinstance(params["pooling"], kt.engine.hyperparameters.Choice)
    assert isinstance(params["unfreeze_depth"], kt.engine.hyperparameters.Int)
    assert isinstance(params["dropout"], kt.engine.hyperparameters.Float) and params["dropout"].step == 0.1


def test_declare_twice_is_a_no_op():
    space = build_space("image")
    hp = declared(space)
    declare(space, hp)
    assert len(hp.space) == len(IMAGE_HP_NAMES)


def test_random_search_oracle_samples_stay_in_range():
    draws = sample(build_space("image"), n=30)
    for v in draws:
        assert set(v) == IMAGE_HP_NAMES
        assert v["pooling"] in ("avg", "flatten")
        assert isinstance(v["head_layers"], int) and 0 <= v["head_layers"] <= 2
        assert v["head_units"] in (64, 128, 256, 512)
        assert 0.0 <= v["dropout"] <= 0.5 and math.isclose(v["dropout"] * 10, round(v["dropout"] * 10), abs_tol=1e-9)
        assert isinstance(v["unfreeze_depth"], int) and 0 <= v["unfreeze_depth"] <= 2
        assert 1e-4 <= v["head_lr"] <= 1e-2
        assert 1e-5 <= v["finetune_lr"] <= 1e-3
    # The draws really vary (so the checks above looked at more than one point).
    assert len({v["head_lr"] for v in draws}) > 10
    assert {v["pooling"] for v in draws} == {"avg", "flatten"}
    # Log sampling: a good share of head_lr draws fall in the lowest decade.
    assert sum(v["head_lr"] < 1e-3 for v in draws) >= 5


def test_overridden_space_is_what_the_oracle_samples():
    user = {"head_units": {"values": [128, 256]}, "unfreeze_depth": {"min": 1, "max": 2},
            "head_lr": {"min": 1e-3, "max": 2e-3}, "pooling": {"values": ["mean"]}}
    draws = sample(build_space("text", {"unfreeze_depth": {"min": 0, "max": 4}}, user), n=30)
    for v in draws:
        assert v["head_units"] in (128, 256)
        assert v["unfreeze_depth"] in (1, 2)
        assert 1e-3 <= v["head_lr"] <= 2e-3
        assert v["pooling"] == "mean"
    assert {v["unfreeze_depth"] for v in draws} == {1, 2}


@pytest.mark.parametrize("override, fragment", [
    ({"optimizer": "sgd"}, "'optimizer': value 'sgd' is not one of adamw, adam"),
    ({"lr_schedule": {"values": ["cosine", "linear"]}}, "'lr_schedule': value 'linear' is not one of cosine, constant"),
    ({"warmup": 1.0}, "'warmup': value 1.0 is not a number in [0, 1)"),
    ({"label_smoothing": -0.1}, "'label_smoothing': value -0.1 is not a number in [0, 1)"),
    ({"weight_decay": "lots"}, "'weight_decay': value 'lots' is not a number >= 0"),
])
def test_the_training_recipe_is_checked_against_its_domains(override, fragment):
    with pytest.raises(UsageError) as excinfo:
        build_space("image", None, override)
    usage_error(excinfo, fragment)


def test_the_training_recipe_can_be_switched_off_or_tuned():
    space = build_space("text", None, {"optimizer": "adam", "label_smoothing": {"values": [0.0, 0.1]},
                                       "warmup": {"min": 0.0, "max": 0.2}})
    assert space["optimizer"] == {"values": ["adam"]}
    assert space["label_smoothing"] == {"values": [0.0, 0.1]}
    assert space["warmup"]["max"] == 0.2


def test_a_trial_through_keras_tuners_protobuf_is_put_back_in_the_space_order():
    """Issue 17, 7: a distributed worker's trial arrives through KerasTuner's protobuf messages, which
    reorder its hyperparameters; autotl prints and stores them in the space's order, as the chief does."""
    space = build_space("image", user_overrides={"augment": {"values": [False, True]}})
    hp = declared(space)
    hp.values["tuner/epochs"] = 2
    received = kt.engine.trial.Trial.from_proto(kt.engine.trial.Trial(hp, trial_id="1").to_proto())
    assert list(received.hyperparameters.values) != [*space, "tuner/epochs"]  # what a worker got
    ordered = in_declared_order(space, received.hyperparameters.values)
    assert list(ordered) == [*space, "tuner/epochs"]
    assert ordered == received.hyperparameters.values
