"""How a trial's data reach the layers it trains: from the activation cache, or end to end.

On the cached path (`CachedFeed`) each phase of a trial fits only the part of
the model above its cut (`autotl.graph`): the head phase fits the head on the
backbone's cached output, the fine-tuning phase fits the top k blocks and the
head on the cached input of those blocks. The cut tensors of every depth the
search space allows are computed together, in one pass of the frozen backbone
over each split, the first time any trial needs them (`ActivationSource`).

A trial trains end to end (`EndToEndFeed`) when its inputs change from epoch to
epoch (data augmentation), when the backbone is not a functional graph, or when
the cache is switched off. Either way the trial's model is the full model, and
the store says which path each trial took.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import keras
import numpy as np

from . import graph as graph_module
from .cache import ActivationCache, digest, storage_dtype
from .hypermodel import BACKBONE_LAYER
from .plan import TrialData

HIT, COMPUTED, BYPASSED = "hit", "computed", "bypassed"


@dataclass
class Phase:
    """What one training phase fits, and on which inputs."""

    model: keras.Model
    x_train: Any
    x_val: Any


@dataclass
class EndToEndFeed:
    model: keras.Model
    data: TrialData
    reason: str

    def phase(self, depth: int) -> Phase:
        return Phase(self.model, self.data.x_train, self.data.x_val)

    def report(self) -> dict[str, Any]:
        return {"status": BYPASSED, "reason": self.reason}


@dataclass
class CachedFeed:
    graph: graph_module.FlatGraph
    cuts: dict[int, graph_module.Cut]
    data: TrialData
    arrays: dict[tuple[str, str], Any]  # (split, tensor name) -> activations
    status: str
    seconds: float
    cached_bytes: int
    _models: dict[int, keras.Model] = field(default_factory=dict)

    def phase(self, depth: int) -> Phase:
        item = self.cuts[depth]
        if depth not in self._models:
            self._models[depth] = graph_module.suffix_model(self.graph, item)
        return Phase(self._models[depth], self._inputs(item, "train"), self._inputs(item, "val"))

    def _inputs(self, item: graph_module.Cut, split: str) -> list:
        raw = self.data.x_train if split == "train" else self.data.x_val
        return [_model_input(raw, name[len("input:"):]) if name.startswith("input:") else self.arrays[(split, name)]
                for name in item.names]

    def report(self) -> dict[str, Any]:
        return {"status": self.status, "seconds": round(self.seconds, 3),
                "cuts": {str(depth): item.cached_names for depth, item in self.cuts.items()},
                "cached_mb": round(self.cached_bytes / 2**20, 1)}


class ActivationSource:
    """One per process: builds each trial's feed, computing cache entries when missing.

    Arrays already loaded stay loaded for the next trial of this process.
    """

    def __init__(self, cache: ActivationCache | None, backbone, preprocessing: Mapping[str, Any],
                 depths: list[int], *, storage: str = "auto", batch_size: int = 64,
                 memory_budget_bytes: int = 4 * 2**30):
        self.cache = cache
        self.backbone = backbone
        self.preprocessing = dict(preprocessing)
        self.depths = sorted(set(depths) | {0})
        self.storage = storage
        self.batch_size = batch_size
        self.memory_budget_bytes = memory_budget_bytes
        self._split_fingerprints: dict[str, str] = {}
        self._loaded: dict[str, Any] = {}

    def feed(self, model: keras.Model, data: TrialData, values: Mapping[str, Any]):
        if self.cache is None:
            return EndToEndFeed(model, data, "the activation cache is off")
        if values.get("augment"):
            return EndToEndFeed(model, data, "data augmentation changes the inputs every epoch")
        try:
            graph = graph_module.flatten(model)
        except graph_module.NotFunctional as exc:
            return EndToEndFeed(model, data, f"the backbone cannot be cut: {exc}")
        blocks = self.backbone.blocks(model.get_layer(BACKBONE_LAYER))
        cuts = {}
        for depth in sorted({min(d, len(blocks)) for d in self.depths}):
            top = [layer for block in blocks[len(blocks) - depth:] for layer in block] if depth else []
            cuts[depth] = graph_module.cut(graph, depth, top)
        started = time.perf_counter()
        keys = self._keys(graph, model, cuts, data)
        computed = self._compute_missing(graph, data, keys)
        arrays, size = self._load(keys)
        return CachedFeed(graph, cuts, data, arrays, COMPUTED if computed else HIT,
                          time.perf_counter() - started, size)

    def _keys(self, graph, model, cuts, data: TrialData) -> dict[tuple[str, str], tuple[str, Any]]:
        """(split, tensor name) -> (cache key, symbolic tensor) for every cached tensor of `cuts`."""
        fingerprint = self._model_fingerprint(graph, model)
        keys = {}
        for split, x in (("train", data.x_train), ("val", data.x_val)):
            split_fingerprint = self._split_fingerprint(split, x)
            for item in cuts.values():
                for name, tensor in zip(item.names, item.tensors):
                    if not name.startswith("input:"):
                        keys[(split, name)] = (ActivationCache.key(fingerprint, name, split_fingerprint), tensor)
        return keys

    def _model_fingerprint(self, graph, model) -> str:
        """Architecture, weights and numerics of the frozen part: what its outputs depend on.

        The weights are hashed from their values in every trial (not from the
        weights source), so random or changed weights never match an old entry.
        """
        architecture = [[type(node.layer).__name__, _layer_config(node.layer)]
                        for node in graph.nodes if node.in_backbone]
        hasher = hashlib.blake2b(digest_size=32)
        for variable in model.get_layer(BACKBONE_LAYER).weights:
            hasher.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value)).data)
        return digest({"backbone": self.backbone.name, "architecture": architecture,
                       "weights": hasher.hexdigest(), "preprocessing": self.preprocessing,
                       "keras": keras.__version__, "backend": keras.backend.backend(),
                       "dtype_policy": keras.config.dtype_policy().name, "storage": self.storage})

    def _split_fingerprint(self, split: str, x: Any) -> str:
        if split not in self._split_fingerprints:
            parts = x if isinstance(x, Mapping) else {"x": x}
            self._split_fingerprints[split] = digest({name: digest(np.asarray(a)) for name, a in parts.items()})
        return self._split_fingerprints[split]

    def _compute_missing(self, graph, data: TrialData, keys) -> bool:
        computed = False
        for split, x in (("train", data.x_train), ("val", data.x_val)):
            missing = {name: tensor for (s, name), (key, tensor) in keys.items()
                       if s == split and self.cache.get(key) is None}
            if missing:
                self._run_prefix(graph, x, split, missing, {name: keys[(split, name)][0] for name in missing})
                computed = True
        return computed

    def _run_prefix(self, graph, x, split: str, tensors: dict[str, Any], keys: dict[str, str]) -> None:
        """One pass of the frozen part over `x`, writing each tensor of `tensors` to its entry."""
        prefix = graph_module.prefix_model(graph, tensors)
        names = list(tensors)
        count = len(_model_input(x, prefix.inputs[0].name))
        writers = {}
        try:
            for start in range(0, count, self.batch_size):
                batch = [np.asarray(_model_input(x, t.name)[start:start + self.batch_size]) for t in prefix.inputs]
                outputs = prefix.predict_on_batch(batch)
                outputs = [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
                if not writers:
                    writers = self._writers(keys, names, outputs, count, split)
                for name, output in zip(names, outputs):
                    writers[name].write(output)
            for writer in writers.values():
                writer.commit()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise

    def _writers(self, keys, names, first_outputs, count: int, split: str) -> dict:
        """One cache writer per tensor, in float16 when asked, or (``auto``) when float32 would not fit
        the memory budget: what stays in memory is exact, what is read from disk is half the size."""
        full_size = sum(count * (o.nbytes // max(len(o), 1)) for o in first_outputs)
        half = self.storage == "float16" or (self.storage == "auto" and full_size > self.memory_budget_bytes)
        writers = {}
        for name, output in zip(names, first_outputs):
            dtype = storage_dtype(output.dtype, "float16" if half else "float32")
            shape = (count, *output.shape[1:])
            writers[name] = self.cache.writer(keys[name], shape, dtype, {
                "backbone": self.backbone.name, "tensor": name, "split": split, "examples": count,
                "shape": list(shape), "dtype": dtype, "preprocessing": self.preprocessing})
        return writers

    def _load(self, keys) -> tuple[dict[tuple[str, str], Any], int]:
        entries = {slot: self.cache.get(key) for slot, (key, _) in keys.items()}
        size = sum(entry.size_bytes for entry in entries.values())
        in_memory = size <= self.memory_budget_bytes
        arrays = {}
        for slot, entry in entries.items():
            if entry.key not in self._loaded:
                self._loaded[entry.key] = entry.load(in_memory)
            arrays[slot] = self._loaded[entry.key]
        return arrays, size


def _model_input(x: Any, name: str):
    return x[name] if isinstance(x, Mapping) else x


def _layer_config(layer) -> str:
    try:
        return digest(layer.get_config())
    except Exception:  # noqa: BLE001 - a layer without a serialisable config: its class stands for it
        return type(layer).__name__


@dataclass
class Batches:
    """Arguments for `fit` / `predict`: arrays Keras batches itself, or a `keras.utils.PyDataset`."""

    x: Any
    y: Any
    batch_size: int | None
    shuffle: bool

    def as_validation(self):
        return self.x if self.y is None else (self.x, self.y)


def batches(x: Any, y: np.ndarray | None, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Batches:
    """In-memory inputs go to Keras as they are; memory-mapped ones are read a batch at a time.

    Keras would copy a memory-mapped array whole into memory before its first
    batch, which is exactly what keeping a large cache entry on disk avoids.
    """
    if not any(isinstance(a, np.memmap) for a in _leaves(x)):
        return Batches(x, y, batch_size, shuffle)
    return Batches(_DiskBatches(x, y, batch_size, shuffle, seed), None, None, False)


class _DiskBatches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size: int, shuffle: bool, seed: int):
        super().__init__(workers=2, use_multiprocessing=False)  # threads read ahead while the model trains
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self._count = len(_leaves(x)[0])
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(self._count)
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-self._count // self.batch_size)

    def __getitem__(self, index: int):
        rows = np.sort(self._order[index * self.batch_size:(index + 1) * self.batch_size])  # sorted: sequential reads
        x = _map_leaves(self.x, lambda a: np.asarray(a[rows]))
        return x if self.y is None else (x, self.y[rows])

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._rng.shuffle(self._order)


def _leaves(x: Any) -> list:
    if isinstance(x, Mapping):
        return list(x.values())
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _map_leaves(x: Any, fn):
    if isinstance(x, Mapping):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [fn(v) for v in x]
    return fn(x)
