"""An ensemble of trials (`autotl.search.ensemble`) as one Keras model.

The members of an ensemble share their backbone: below the deepest member's unfreeze
depth, every member holds the same pretrained, frozen layers with the same weights. The
ensemble model computes that part once (the *prefix* of `autotl.cache.cut`, cut at the
deepest member's depth), and each member only what lies above it (its own top blocks,
fine-tuned or not, and its head: the *suffix*); the output is the members' class
probabilities averaged with their weights. Its inputs are a trial model's, so every
export format takes it as it takes a single trial's model.

Where the members' frozen parts differ after all (a plugin whose blocks do not cover a
trained layer), nothing is shared: each member is its whole model.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import tree

from autotl.cache import cut as cut_module
from autotl.search.hypermodel import BACKBONE_LAYER, top_block_layers


def ensemble_model(members: Sequence[keras.Model], weights: Sequence[float], depths: Sequence[int],
                   backbone) -> keras.Model:
    """One model averaging `members` (trial models, float32) with `weights`; `depths`: each member's
    unfreeze depth at its best epoch; `backbone`: the plugin, whose `blocks` say where to cut."""
    depth = max(depths)
    graphs = [cut_module.flatten(member) for member in members]
    cuts = [cut_module.cut(graph, depth, _top_layers(member, backbone, depth))
            for graph, member in zip(graphs, members)]
    fresh = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in members[0].inputs]
    inputs = tree.pack_sequence_as(members[0]._inputs_struct, fresh)
    prefix = _prefix(graphs[0], cuts[0])
    if _shared_prefix(prefix, graphs, cuts):
        probabilities = _through_shared_prefix(prefix, graphs, cuts, fresh)
    else:
        probabilities = [_renamed(member, f"autotl_member_{index}")(inputs) for index, member in enumerate(members)]
    return keras.Model(inputs, _weighted_mean(probabilities, weights), name="autotl_ensemble")


def _renamed(model: keras.Model, name: str) -> keras.Model:
    """`model` under another name, sharing its layers (one model may not hold two operations of one name)."""
    return keras.Model(model.input, model.output, name=name)


def _top_layers(member: keras.Model, backbone, depth: int) -> list:
    return top_block_layers(backbone.blocks(member.get_layer(BACKBONE_LAYER)), depth)


def _shared_prefix(prefix: keras.Model, graphs: list, cuts: list) -> bool:
    """The members cross their cuts through the same tensors, computed by the weights of `prefix`
    (the first member's)."""
    names = cuts[0].names
    if any(item.names != names for item in cuts[1:]):
        return False
    reference = prefix.get_weights()
    for graph, item in zip(graphs[1:], cuts[1:]):
        other = _prefix(graph, item).get_weights()
        if len(other) != len(reference) or not all(np.array_equal(a, b) for a, b in zip(reference, other)):
            return False
    return True


def _prefix(graph, item) -> keras.Model:
    activations = {name: tensor for name, tensor in zip(item.names, item.tensors) if cut_module.input_name(name) is None}
    return cut_module.prefix_model(graph, activations)


def _through_shared_prefix(prefix: keras.Model, graphs: list, cuts: list, fresh: list) -> list:
    """Each member's probabilities, its suffix fed by `prefix` (the first member's) on `fresh` inputs."""
    by_name = {fresh_input.name: fresh_input for fresh_input in fresh}
    crossing = {}
    activations = [name for name in cuts[0].names if cut_module.input_name(name) is None]
    if activations:
        outputs = prefix([by_name[t.name] for t in prefix.inputs])
        crossing.update(zip(activations, outputs if isinstance(outputs, (list, tuple)) else [outputs]))
    probabilities = []
    for index, (graph, item) in enumerate(zip(graphs, cuts)):
        suffix = keras.Model(item.tensors, graph.outputs, name=f"autotl_member_{index}")
        feeds = [by_name[cut_module.input_name(name)] if cut_module.input_name(name) is not None else crossing[name]
                 for name in item.names]
        probabilities.append(suffix(feeds))
    return probabilities


def _weighted_mean(probabilities: list, weights: Sequence[float]):
    """Keras operations on symbolic tensors: nodes of the functional graph that Keras saves and
    loads itself (no Lambda layer, so safe-mode loading works without autotl)."""
    total = float(sum(weights))
    mean = None
    for probability, weight in zip(probabilities, weights):
        term = keras.ops.multiply(probability, weight / total)
        mean = term if mean is None else keras.ops.add(mean, term)
    return mean
