"""Cutting a trial model's graph where its trainable part begins.

For unfreeze depth k, everything below the top k blocks of the backbone is
frozen and runs in inference mode: it computes the same function in every trial
that shares the cut. `autotl.cache.entries` stores what crosses the cut once; this
module finds those tensors and builds the two halves:

* the *prefix* (inputs -> the tensors crossing the cut), run once per dataset;
* the *suffix* (the tensors crossing the cut -> the class probabilities): the
  top blocks and the head, the part a trial trains.

Both are built from a *flattened* copy of the trial model: the same layer
objects, called again on fresh symbolic inputs, with every nested functional
model (a keras-hub backbone inside a plugin's feature model, the feature model
inside the trial model) replayed layer by layer instead of as one opaque layer.
Because the layers are shared, training the suffix trains the trial model
itself: what is checkpointed and exported is always the full end-to-end model.

Only functional backbones can be cut. A subclassed backbone is one opaque layer;
`flatten` raises `NotFunctional` and the trial trains end to end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import keras
import numpy as np
from keras import tree

from autotl.cache.entries import digest
from autotl.search.hypermodel import BACKBONE_LAYER
from autotl.workarounds import is_functional, self_and_sublayers


INPUT_PREFIX = "input:"  # how a cut names a tensor that is a model input, not an activation
STEM_PREFIX = "stem:"  # how a cut names the output of a frozen stem (`frozen_stem`)


class NotFunctional(Exception):
    """The backbone is not a functional graph, so it cannot be cut."""


@dataclass
class FlatNode:
    layer: Any
    inputs: list  # symbolic tensors consumed
    outputs: list  # symbolic tensors produced
    in_backbone: bool


@dataclass
class FlatGraph:
    """A trial model replayed as one flat graph of its leaf layers."""

    inputs: dict[str, Any]  # model input name -> fresh symbolic input
    outputs: Any
    nodes: list[FlatNode]  # in execution (topological) order
    #: id(tensor) -> a name stable across builds of the same architecture:
    #: ``input:<name>`` for a model input, ``t<node>.<output>`` inside the backbone.
    names: dict[int, str] = field(default_factory=dict)

    def producer(self) -> dict[int, int]:
        """id(tensor) -> index of the node that produced it."""
        return {id(t): index for index, node in enumerate(self.nodes) for t in node.outputs}


@dataclass
class Cut:
    """What crosses the cut for one unfreeze depth, in a fixed order."""

    depth: int
    tensors: list  # symbolic tensors in `FlatGraph`; each is a cache entry or a model input
    names: list[str]

    @property
    def cached_names(self) -> list[str]:
        return [name for name in self.names if input_name(name) is None]


def input_name(name: str) -> str | None:
    """The model input a cut tensor's name stands for, or None for an activation."""
    return name[len(INPUT_PREFIX):] if name.startswith(INPUT_PREFIX) else None


def flatten(model: keras.Model) -> FlatGraph:
    """Replay `model` (a functional trial model with a nested ``backbone``) as one flat graph."""
    if not is_functional(model) or not is_functional(model.get_layer(BACKBONE_LAYER)):
        raise NotFunctional(f"{model.get_layer(BACKBONE_LAYER).__class__.__name__} is not a functional model")
    graph = FlatGraph(inputs={}, outputs=None, nodes=[])
    fresh = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in model.inputs]
    for tensor in fresh:
        graph.inputs[tensor.name] = tensor
        graph.names[id(tensor)] = f"{INPUT_PREFIX}{tensor.name}"
    graph.outputs = _replay(model, fresh, graph, in_backbone=False)
    # Numbering backbone nodes only keeps the names independent of the head built around it.
    backbone_nodes = (node for node in graph.nodes if node.in_backbone)
    for index, node in enumerate(backbone_nodes):
        for position, tensor in enumerate(node.outputs):
            graph.names[id(tensor)] = f"t{index}.{position}"
    return graph


def _replay(model, flat_inputs: list, graph: FlatGraph, in_backbone: bool):
    def operation_fn(operation):
        def call(*args, **kwargs):
            if is_functional(operation):  # replay its layers instead of calling it whole
                inner = tree.flatten(args[0] if len(args) == 1 else list(args))  # the order of `.inputs`
                return _replay(operation, inner, graph, in_backbone or operation.name == BACKBONE_LAYER)
            outputs = operation(*args, **kwargs)
            _record(graph, operation, (args, kwargs), outputs, in_backbone)
            return outputs

        return call

    outputs = model._run_through_graph(flat_inputs, operation_fn=operation_fn)
    return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs


def _record(graph: FlatGraph, layer, arguments, outputs, in_backbone: bool) -> None:
    consumed = [t for t in tree.flatten(arguments) if isinstance(t, keras.KerasTensor)]
    produced = [t for t in tree.flatten(outputs) if isinstance(t, keras.KerasTensor)]
    graph.nodes.append(FlatNode(layer, consumed, produced, in_backbone))


def cut(graph: FlatGraph, depth: int, top_blocks: Iterable) -> Cut:
    """The tensors crossing into the trainable part for `depth`.

    `top_blocks` are the layers of the top `depth` blocks. The trainable part
    is those layers, the head (the layers after the backbone) and everything
    downstream of them; the cut is every tensor it consumes from the rest.
    """
    starts = {id(layer) for block_layer in top_blocks for layer in self_and_sublayers(block_layer)}
    backbone_outputs = {id(t) for node in graph.nodes if node.in_backbone for t in node.outputs}
    suffix_outputs: set[int] = set()
    crossing: list = []
    seen: set[int] = set()
    for node in graph.nodes:
        downstream = any(id(t) in suffix_outputs for t in node.inputs)
        head = not node.in_backbone and any(id(t) in backbone_outputs for t in node.inputs)
        if not (downstream or head or id(node.layer) in starts):
            continue  # below the cut, or before the backbone (augmentation)
        suffix_outputs.update(id(t) for t in node.outputs)
        for tensor in node.inputs:
            if id(tensor) not in suffix_outputs and id(tensor) not in seen:
                seen.add(id(tensor))
                crossing.append(tensor)
    crossing = _reading_inputs_for_their_transforms(graph, crossing)
    crossing.sort(key=lambda t: graph.names[id(t)])
    return Cut(depth, crossing, [graph.names[id(t)] for t in crossing])


def _reading_inputs_for_their_transforms(graph: FlatGraph, crossing: list) -> list:
    """`crossing` with each tensor that weightless, deterministic layers compute from the model inputs alone,
    at no smaller size (a pixel normalization), replaced by those inputs: the trainable part recomputes it
    per batch (an elementwise op), and the cache holds no float32 copy of pixels that are in memory already
    at their own dtype (uint8: a quarter of the size)."""
    sources = {id(t): [t] for t in graph.inputs.values()}  # tensor -> the model inputs it is computed from
    for node in graph.nodes:
        if not node.inputs or not all(id(t) in sources for t in node.inputs) \
                or not _frozen_and_deterministic(node.layer):
            continue
        inputs = list({id(t): t for t in node.inputs for t in sources[id(t)]}.values())
        if all(_size(t) >= sum(_size(i) for i in inputs) for t in node.outputs):
            sources.update({id(t): inputs for t in node.outputs})
    replaced = {id(t): t for tensor in crossing for t in sources.get(id(tensor), [tensor])}
    return list(replaced.values())


def _size(tensor) -> float:
    """Values per example (unknown dimensions count as infinitely many)."""
    return float(np.prod([float("inf") if d is None else d for d in tensor.shape[1:]]))


@dataclass
class Stem:
    """The weightless, deterministic layers at the start of a cut's trainable part.

    Pooling is the usual stem: it has nothing to train and computes the same
    function in every epoch (and in every trial with the same pooling), so its
    outputs can be computed once from the cached activations, and the trial
    trains the rest on them: 2,000 pooled vectors instead of 2,000 sequences.
    """

    model: keras.Model  # the stem's inputs (tensors of the cut) -> its outputs, in `after` order
    reads: list[str]  # names of the cut tensors `model` takes, in order
    after: Cut  # the cut above the stem: what the rest of the trainable part consumes


def frozen_stem(graph: FlatGraph, item: Cut) -> Stem | None:
    """The stem of the trainable part above `item`, or None when it starts with a trainable layer.

    A stem layer has no weights and no ``training`` argument (so no dropout or
    noise), and reads only tensors crossing the cut or other stem outputs.
    Each stem output is named from the layers that produce it and what they
    read, so the same pooling over the same cut has the same name in every trial.
    """
    names = {id(t): name for t, name in zip(item.tensors, item.names)}
    suffix = _nodes_above(graph, item)
    stem, rest = [], []
    for index in suffix:
        node = graph.nodes[index]
        if _frozen_and_deterministic(node.layer) and all(id(t) in names for t in node.inputs):
            signature = [type(node.layer).__name__, _config_without_name(node.layer),
                         [names[id(t)] for t in node.inputs]]
            for position, tensor in enumerate(node.outputs):
                names[id(tensor)] = f"{STEM_PREFIX}{digest([signature, position])}"
            stem.append(node)
        else:
            rest.append(node)
    if not stem:
        return None
    produced_by_rest = {id(t) for node in rest for t in node.outputs}
    crossing, seen = [], set()
    for node in rest:
        for tensor in node.inputs:
            if id(tensor) not in produced_by_rest and id(tensor) not in seen:
                seen.add(id(tensor))
                crossing.append(tensor)
    crossing.sort(key=lambda t: names[id(t)])
    after = Cut(item.depth, crossing, [names[id(t)] for t in crossing])
    outputs = [t for t, name in zip(after.tensors, after.names) if name.startswith(STEM_PREFIX)]
    if not outputs:
        return None
    read_ids = {id(t) for node in stem for t in node.inputs}
    reads = [t for t in item.tensors if id(t) in read_ids]
    return Stem(keras.Model(reads, outputs, name="autotl_stem"), [names[id(t)] for t in reads], after)


def _nodes_above(graph: FlatGraph, item: Cut) -> list[int]:
    """Indices of the nodes computing the model's outputs from the cut, in execution order."""
    producer = graph.producer()
    boundary = {id(t) for t in item.tensors}
    needed: set[int] = set()
    stack = list(tree.flatten(graph.outputs))
    while stack:
        tensor = stack.pop()
        if id(tensor) in boundary or id(tensor) not in producer:
            continue
        index = producer[id(tensor)]
        if index not in needed:
            needed.add(index)
            stack.extend(graph.nodes[index].inputs)
    return sorted(needed)


def _frozen_and_deterministic(operation) -> bool:
    """No weights and no ``training`` argument. A functional graph also holds plain operations
    (``x + y`` between layers, as in ConvNeXt): those are weightless and deterministic."""
    if not isinstance(operation, keras.layers.Layer):
        return True
    return not operation.weights and not getattr(operation, "_call_has_training_arg", True)


def _config_without_name(layer) -> Any:
    try:
        config = dict(layer.get_config())
    except Exception:  # noqa: BLE001 - no serialisable config: never shared across trials
        return f"{type(layer).__name__}@{id(layer)}"
    config.pop("name", None)
    return config


def prefix_model(graph: FlatGraph, tensors: Mapping[str, Any]) -> keras.Model:
    """One model computing all of `tensors` (name -> tensor of `graph`) in a single pass.

    Its inputs are the model inputs those tensors depend on, in `graph.inputs`
    order; its outputs follow the order of `tensors`.
    """
    used_inputs = _inputs_reaching(graph, list(tensors.values()))
    return keras.Model(used_inputs, list(tensors.values()), name="autotl_prefix")


def suffix_model(graph: FlatGraph, item: Cut) -> keras.Model:
    """The trainable part for one cut: its inputs are the cut's tensors, in `item.names` order."""
    return keras.Model(item.tensors, graph.outputs, name=f"autotl_suffix_{item.depth}")


def _inputs_reaching(graph: FlatGraph, tensors: list) -> list:
    """The model inputs the given tensors depend on (a prefix model must take no unused input)."""
    producer = graph.producer()
    stack, seen = list(tensors), set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if id(tensor) in producer:
            stack.extend(graph.nodes[producer[id(tensor)]].inputs)
    return [t for t in graph.inputs.values() if id(t) in seen]

