"""The search space: which hyperparameters a search tunes, and over what ranges.

Defaults depend on the modality; a plugin narrows or widens them
(`Backbone.search_space`) and so can the user, with a YAML or JSON file whose
keys are hyperparameter names::

    unfreeze_depth: {min: 0, max: 2}
    head_units: {values: [128, 256]}
    head_lr: {min: 1.0e-4, max: 1.0e-2, sampling: log}
    dropout: 0.2            # a single value fixes it

The result is declared on a KerasTuner `HyperParameters` object, the form every
KerasTuner oracle understands.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from autotl.backbones.protocol import IMAGE
from autotl.errors import UsageError, first_line
from autotl.search.domains import CHOICE, Domain, checked, domains_for

# name -> spec. "values" is a choice; min/max with "step" or "sampling" is a range.
# A spec's "type" ("int" or "float") says how a range is sampled.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "pooling": {"values": ["avg", "flatten"]},  # images; text uses mean / cls (below)
    "head_layers": {"type": "int", "min": 0, "max": 2},
    "head_units": {"values": [64, 128, 256, 512]},
    "dropout": {"type": "float", "min": 0.0, "max": 0.5, "step": 0.1},
    # Until the backbone is built; then every depth of `depth_grid` (`build_space(blocks=...)`).
    "unfreeze_depth": {"type": "int", "min": 0, "max": 2},
    "head_lr": {"type": "float", "min": 1e-4, "max": 1e-2, "sampling": "log"},
    "finetune_lr": {"type": "float", "min": 1e-5, "max": 1e-3, "sampling": "log"},
    # How each phase trains (autotl.search.recipe): fixed by default, tunable or switched off by a space file.
    "optimizer": {"values": ["adamw"]},
    "weight_decay": {"values": [0.01]},
    "lr_schedule": {"values": ["cosine"]},
    "warmup": {"values": [0.1]},
    "label_smoothing": {"values": [0.1]},
    "lr_decay": {"values": [1.0]},  # layer-wise learning-rate decay: off until measured on the tuning suite
}
# Hyperparameters added to the default space since searches were first stored, with the value that trains as
# the searches stored before them did: such a search continues under today's space (`autotl.config`).
TRAINED_AS_BEFORE: dict[str, Any] = {"lr_decay": 1.0}
# Images only: random flips, shifts and zooms before the backbone. Off unless a space
# file asks (``augment: {values: [false, true]}``): a trial that augments sees new
# inputs every epoch, so it cannot train on cached activations (see `autotl.cache.entries`).
AUGMENT = {"values": [False]}
TEXT_POOLING = {"values": ["mean", "cls"]}
IMAGE_POOLING = {"values": ["avg", "flatten"]}
_SPEC_KEYS = {"values", "min", "max", "step", "sampling", "type"}


# Fractions of a backbone's blocks the default unfreeze depths reach, besides 0, 1 and 2.
DEPTH_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def default_space(modality: str, blocks: int | None = None) -> dict[str, dict[str, Any]]:
    """The default space; with the backbone's block count, its depths reach the whole backbone."""
    space = copy.deepcopy(DEFAULT_SPACE)
    space["pooling"] = copy.deepcopy(IMAGE_POOLING if modality == IMAGE else TEXT_POOLING)
    if modality == IMAGE:
        space["augment"] = copy.deepcopy(AUGMENT)
    if blocks is not None:
        space["unfreeze_depth"] = {"values": depth_grid(blocks)}
    return space


def depth_grid(blocks: int) -> list[int]:
    """The default unfreeze depths of a backbone of `blocks` blocks: 0 to 2, then a quarter,
    half, three quarters and all of it (18 blocks: 0, 1, 2, 4, 9, 14, 18).

    Fine-tuning deep is what wins when the data look unlike the backbone's pretraining
    (results/quality-images.md), but each depth the space allows is a cut whose activations
    are cached: a few spread out cost a few caches, every depth of a deep backbone would cost
    one each.
    """
    return sorted({depth for depth in (0, 1, 2, *(round(blocks * f) for f in DEPTH_FRACTIONS)) if depth <= blocks})


def depth_choices(space: Mapping[str, Mapping[str, Any]]) -> list[int]:
    """Every unfreeze depth a trial of this space can ask for, ascending."""
    spec = space["unfreeze_depth"]
    if "values" in spec:
        return sorted({int(v) for v in spec["values"]})
    return list(range(int(spec["min"]), int(spec["max"]) + 1, int(spec.get("step", 1))))


def build_space(modality: str, plugin_overrides: Mapping[str, Any] | None = None,
                user_overrides: Mapping[str, Any] | None = None, blocks: int | None = None) -> dict[str, dict[str, Any]]:
    """Defaults (for a backbone of `blocks` blocks, when known), then the plugin's proposals, then
    the user's file, each merged by name, then every value checked against its hyperparameter's
    domain (`DOMAINS`)."""
    space = default_space(modality, blocks)
    domains = domains_for(modality)
    for overrides in (plugin_overrides or {}), (user_overrides or {}):
        for name, spec in overrides.items():
            if name not in space:
                known = ", ".join(sorted(space))
                raise UsageError(f"unknown hyperparameter {name!r} in search space (known: {known})")
            space[name] = _merge(name, space[name], spec, domains[name])
    return {name: checked(name, spec, domains[name]) for name, spec in space.items()}


def check_depth_within(space: Mapping[str, Mapping[str, Any]], blocks: int, backbone: str) -> None:
    """Refuse an unfreeze depth above the backbone's block count (known once it is built)."""
    deepest = max(depth_choices(space))
    if deepest > blocks:
        spec = space["unfreeze_depth"]
        given = f"max {spec['max']}" if "max" in spec else f"value {deepest}"
        raise UsageError(f"hyperparameter 'unfreeze_depth': {given} is above the {blocks} blocks of backbone "
                         f"{backbone!r} (allowed: 0 to {blocks})")


def in_declared_order(space: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's `values` in the space's order, then any others (KerasTuner's ``tuner/`` entries) as they came.

    A distributed worker gets its trial through KerasTuner's protobuf messages, which group the
    hyperparameters by type and their values by name: printed and stored as they came, a worker's
    trials listed them in another order than the chief's and a single process's.
    """
    ordered = {name: values[name] for name in space if name in values}
    ordered.update((name, value) for name, value in values.items() if name not in ordered)
    return ordered


def load_space_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read search-space file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise UsageError(f"search-space file {path} does not parse: {_parse_error(exc)}") from None
    if not isinstance(data, dict):
        raise UsageError(f"search-space file {path} must map hyperparameter names to ranges")
    return data


def _parse_error(exc: Exception) -> str:
    """A YAML error's problem and where it is (its first line alone says only what was being parsed)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return first_line(exc)


def declare(space: Mapping[str, Mapping[str, Any]], hp) -> None:
    """Declare every hyperparameter of `space` on `hp`, a `keras_tuner.HyperParameters`
    (a no-op for those already there)."""
    for name, spec in space.items():
        if "values" in spec:
            values = list(spec["values"])
            if len(set(values)) == 1:
                hp.Fixed(name, values[0])
            elif all(isinstance(v, bool) for v in values):
                hp.Boolean(name)  # a Choice of booleans samples the ints 0 and 1
            else:
                hp.Choice(name, values)
        elif spec.get("type") == "int" and spec["min"] == spec["max"]:
            hp.Fixed(name, int(spec["min"]))
        elif float(spec["min"]) == float(spec["max"]):
            hp.Fixed(name, float(spec["min"]))
        elif spec.get("type") == "int":
            hp.Int(name, int(spec["min"]), int(spec["max"]), step=int(spec.get("step", 1)))
        else:
            hp.Float(name, float(spec["min"]), float(spec["max"]), step=spec.get("step"),
                     sampling=spec.get("sampling", "linear"))


def _merge(name: str, base: dict[str, Any], spec: Any, domain: Domain) -> dict[str, Any]:
    if not isinstance(spec, Mapping):  # a single value fixes the hyperparameter
        return {"values": [spec]}
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise UsageError(f"hyperparameter {name!r}: unknown keys {sorted(unknown)} (use values, min, max, step, sampling)")
    if "values" in spec:
        if not isinstance(spec["values"], (list, tuple)):
            raise UsageError(f"hyperparameter {name!r}: `values` must be a list, e.g. values: [64, 128]")
        return {"values": list(spec["values"])}
    if domain.kind == CHOICE:
        raise UsageError(f"hyperparameter {name!r} takes `values` ({domain.describe()}), not a range")
    if spec.get("type", domain.kind) != domain.kind:
        raise UsageError(f"hyperparameter {name!r}: type {spec['type']!r} does not fit; it takes {domain.describe()}")
    merged = {k: v for k, v in base.items() if k != "values"}
    if "sampling" in spec and "step" not in spec:
        merged.pop("step", None)  # the default's step was for the default's sampling
    merged.update(spec)
    merged["type"] = domain.kind
    return merged
