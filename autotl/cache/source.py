"""How a trial's data reach the layers it trains: from the activation cache, or end to end.

On the cached path (`CachedFeed`) each phase of a trial fits only the part of
the model above its cut (`autotl.cache.cut`): the head phase fits the head on the
backbone's cached output (pooled once per process, `StemOutputs`), the
fine-tuning phase fits the top k blocks and the head on the cached input of
those blocks. The cut tensors of every depth the
search space allows are computed together, in one pass of the frozen backbone
over each split, the first time any trial needs them (`ActivationSource`).

A trial trains end to end (`EndToEndFeed`) when its inputs change from epoch to
epoch (data augmentation), when the backbone is not a functional graph, or when
the cache is switched off. Either way the trial's model is the full model, and
the store says which path each trial took. How the inputs are cut into batches
is `autotl.cache.batches`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import keras
import numpy as np

from autotl.cache import cut as graph_module
from autotl.cache.batches import (PADDING_MASK, as_list, call_eagerly, cropped_length, model_input, pad_sequence,
                                  sequence_lengths, slices, take_rows, variable_length)
from autotl.insight.bar import ProgressLine
from autotl.cache.entries import ActivationCache, digest, storage_dtype
from autotl.search.hypermodel import BACKBONE_LAYER, top_block_layers
from autotl.search.records import TrialData

HIT, COMPUTED, BYPASSED = "hit", "computed", "bypassed"
SPLITS = ("train", "val")


@dataclass
class Phase:
    """What one training phase fits, and on which inputs."""

    model: keras.Model
    x_train: Any
    x_val: Any
    runs_backbone: bool = True  # False: a head on cached activations, whose steps are short


@dataclass
class EndToEndFeed:
    model: keras.Model
    data: TrialData
    reason: str

    def phase(self, depth: int) -> Phase:
        return Phase(self.model, self.data.x_train, self.data.x_val)

    def pass_seconds(self) -> float | None:
        return None  # no cache pass: each epoch runs the backbone

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
    stems: StemOutputs
    _phases: dict[int, tuple[graph_module.Cut, keras.Model]] = field(default_factory=dict)

    def phase(self, depth: int) -> Phase:
        if depth not in self._phases:
            item = self._through_stem(self.cuts[depth])
            self._phases[depth] = (item, graph_module.suffix_model(self.graph, item))
        item, model = self._phases[depth]
        return Phase(model, self._inputs(item, "train"), self._inputs(item, "val"), runs_backbone=depth > 0)

    def _through_stem(self, item: graph_module.Cut) -> graph_module.Cut:
        """The cut above the frozen stem of `item` (pooling) when its outputs are smaller than
        what it reads, with the stem's outputs added to `arrays`; otherwise `item` itself."""
        stem = graph_module.frozen_stem(self.graph, item)
        if stem is None or not _shrinks(stem, [self.arrays[("train", n)] for n in stem.reads
                                               if graph_module.input_name(n) is None]):
            return item
        for split in SPLITS:
            inputs = [self._input(split, name) for name in stem.reads]
            self.arrays.update({(split, name): array for name, array in
                                self.stems.outputs(stem, inputs).items()})
        return stem.after

    def _inputs(self, item: graph_module.Cut, split: str) -> list:
        return [self._input(split, name) for name in item.names]

    def _input(self, split: str, name: str):
        if graph_module.input_name(name) is None:
            return self.arrays[(split, name)]
        return model_input(self.data.x_train if split == "train" else self.data.x_val, graph_module.input_name(name))

    def pass_seconds(self) -> float | None:
        """What computing this feed's activations took, the whole backbone forward over the training and
        validation examples; None when they were read from the cache."""
        return self.seconds if self.status == COMPUTED else None

    def report(self) -> dict[str, Any]:
        return {"status": self.status, "seconds": round(self.seconds, 3),
                "cuts": {str(depth): item.cached_names for depth, item in self.cuts.items()},
                "cached_mb": round(self.cached_bytes / 2**20, 1)}


class StemOutputs:
    """Outputs of frozen stems (`autotl.cache.cut.frozen_stem`) over the cached activations, kept in
    memory for the trials of this process: each pooling is computed once per split, not per epoch."""

    max_entries = 16  # a few poolings x two splits

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size
        # (stem output name, ids of the arrays it was computed from) -> (outputs, those arrays):
        # the arrays are held so that their ids stay theirs.
        self._memo: dict[tuple[str, tuple[int, ...]], tuple[np.ndarray, list]] = {}

    def outputs(self, stem: graph_module.Stem, inputs: list) -> dict[str, np.ndarray]:
        names = self._names(stem)
        sources = tuple(id(a) for a in inputs)
        if not all((name, sources) in self._memo for name in names):
            computed = self._compute(stem.model, inputs)
            self._memo.update({(name, sources): (array, inputs) for name, array in zip(names, computed)})
            while len(self._memo) > self.max_entries:  # oldest first: a new search's arrays replace the old
                self._memo.pop(next(iter(self._memo)))
        return {name: self._memo[(name, sources)][0] for name in names}

    @staticmethod
    def _names(stem: graph_module.Stem) -> list[str]:
        return [name for name in stem.after.names if name.startswith(graph_module.STEM_PREFIX)]

    def _compute(self, model: keras.Model, inputs: list) -> list[np.ndarray]:
        """The stem called eagerly: a few cheap ops need no traced function."""
        return call_eagerly(model, slices(inputs, self.batch_size))


def _shrinks(stem: graph_module.Stem, activations: list) -> bool:
    """Whether the stem's outputs take less memory per example than the cached activations it reads."""
    read = sum(a.nbytes // max(len(a), 1) for a in activations)
    shapes = [tuple(t.shape[1:]) for t in stem.model.outputs]
    if any(dim is None for shape in shapes for dim in shape):
        return False
    written = sum(int(np.prod(shape)) * 4 for shape in shapes)
    return written < read


PROGRESS_AFTER_S = 1.0  # a cache pass shows its progress on a terminal once it has lasted this long
# A search's bound spares the entries read this recently: another search running beside it may be about to
# read them again (a new trial process loads its entries afresh).
SPARE_RECENT_S = 3600.0


class ActivationSource:
    """One per process: builds each trial's feed, computing cache entries when missing.

    Arrays already loaded stay loaded for the next trial of this process.
    """

    def __init__(self, cache: ActivationCache | None, backbone, preprocessing: Mapping[str, Any],
                 depths: list[int], *, storage: str = "auto", batch_size: int = 128,
                 memory_budget_bytes: int = 4 * 2**30, max_cache_bytes: int | None = None):
        self.cache = cache
        self.backbone = backbone
        self.preprocessing = dict(preprocessing)
        self.depths = sorted(set(depths) | {0})
        self.storage = storage
        self.batch_size = batch_size
        self.memory_budget_bytes = memory_budget_bytes
        self.max_cache_bytes = max_cache_bytes  # the cache's bound (autotl.cache.entries), None: unbounded
        self._fingerprints: dict[int, str] = {}
        self._split_fingerprints: dict[str, str] = {}
        self._loaded: dict[str, tuple[Any, int]] = {}  # cache key -> (activations, bytes on disk)
        self._stems = StemOutputs(batch_size)

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
            cuts[depth] = graph_module.cut(graph, depth, top_block_layers(blocks, depth))
        started = time.perf_counter()
        keys = self._keys(graph, model, cuts, data)
        computed = self._compute_missing(graph, data, keys)
        if computed and self.max_cache_bytes is not None:  # the new entries stay; the least recently used others go
            self.cache.prune(max_bytes=self.max_cache_bytes, keep=[key for key, _ in keys.values()],
                             spare_used_within=SPARE_RECENT_S)
        arrays, size = self._load(keys)
        return CachedFeed(graph, cuts, data, arrays, COMPUTED if computed else HIT,
                          time.perf_counter() - started, size, self._stems)

    def _keys(self, graph, model, cuts, data: TrialData) -> dict[tuple[str, str], tuple[str, Any]]:
        """(split, tensor name) -> (cache key, symbolic tensor) for every cached tensor of `cuts`."""
        fingerprint = self._model_fingerprint(graph, model)
        keys = {}
        for split, x in (("train", data.x_train), ("val", data.x_val)):
            split_fingerprint = self._split_fingerprint(split, x)
            for item in cuts.values():
                for name, tensor in zip(item.names, item.tensors):
                    if graph_module.input_name(name) is None:
                        keys[(split, name)] = (ActivationCache.key(fingerprint, name, split_fingerprint), tensor)
        return keys

    def _model_fingerprint(self, graph, model) -> str:
        """Architecture, weights and numerics of the frozen part: what its outputs depend on.

        The weights are hashed from their values (not named by their source), so
        random or changed weights never match an old entry. Once per process:
        every trial resets the same backbone to the same values
        (`autotl.search.hypermodel.ReusableBackbone`).
        """
        backbone = model.get_layer(BACKBONE_LAYER)
        if id(backbone) not in self._fingerprints:
            self._fingerprints[id(backbone)] = self._hash_model(graph, backbone)
        return self._fingerprints[id(backbone)]

    def _hash_model(self, graph, backbone) -> str:
        architecture = [[type(node.layer).__name__, _layer_config(node.layer)]
                        for node in graph.nodes if node.in_backbone]
        hasher = hashlib.blake2b(digest_size=32)
        for variable in backbone.weights:
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
        prefixes: dict[tuple[str, ...], keras.Model] = {}  # one model (one traced function) for both splits
        for split, x in (("train", data.x_train), ("val", data.x_val)):
            missing = {name: tensor for (s, name), (key, tensor) in keys.items()
                       if s == split and key not in self._loaded and self.cache.get(key) is None}
            if missing:
                if tuple(missing) not in prefixes:
                    prefixes[tuple(missing)] = graph_module.prefix_model(graph, missing)
                self._run_prefix(prefixes[tuple(missing)], x, split, list(missing),
                                 {name: keys[(split, name)][0] for name in missing})
        return bool(prefixes)

    def _run_prefix(self, prefix: keras.Model, x, split: str, names: list[str], keys: dict[str, str]) -> None:
        """One pass of the frozen part over `x`, writing each output of `prefix` (`names`) to its entry."""
        count = len(model_input(x, prefix.inputs[0].name))
        lengths = sequence_lengths(x)
        # Text goes through in order of length, each batch cropped to its longest sequence:
        # most of a padded batch is padding, and the outputs at real positions do not change.
        order = np.arange(count) if lengths is None else np.argsort(lengths, kind="stable")
        croppable = [variable_length(t) for t in prefix.inputs]
        full_length = None if lengths is None else model_input(x, PADDING_MASK).shape[1]
        writers = {}
        progress = ProgressLine(f"computing the frozen backbone's activations of the {split} split", total=count,
                                after_s=PROGRESS_AFTER_S)
        try:
            for start in range(0, count, self.batch_size):
                rows = order[start:start + self.batch_size]
                crop = None if lengths is None else cropped_length(lengths[rows])
                # A short last batch is filled up with its own rows: a batch of a new size
                # would trace the backbone's function again (a second of the pass on CPU).
                padded = np.resize(rows, self.batch_size) if count > self.batch_size else rows
                batch = [take_rows(model_input(x, t.name), padded, crop if can else None)
                         for t, can in zip(prefix.inputs, croppable)]
                outputs = prefix.predict_on_batch(batch)
                outputs = [np.asarray(o)[:len(rows)] for o in as_list(outputs)]
                if crop is not None:
                    outputs = [pad_sequence(o, crop, full_length) for o in outputs]
                if not writers:
                    writers = self._writers(keys, names, outputs, count, split)
                for name, output in zip(names, outputs):
                    writers[name].write(output, rows)
                progress.update(start + len(rows))
            for writer in writers.values():
                writer.commit()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        finally:
            progress.close()

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
        """The activations of `keys`, read from disk the first time this process needs them."""
        new = {key: self.cache.get(key) for key, _ in keys.values() if key not in self._loaded}
        size = sum(entry.size_bytes for entry in new.values())
        for key, entry in new.items():
            self._loaded[key] = (entry.load(in_memory=size <= self.memory_budget_bytes), entry.size_bytes)
        arrays = {slot: self._loaded[key][0] for slot, (key, _) in keys.items()}
        return arrays, sum(self._loaded[key][1] for key, _ in keys.values())


def _layer_config(layer) -> str:
    try:
        return digest(layer.get_config())
    except Exception:  # noqa: BLE001 - a layer without a serialisable config: its class stands for it
        return type(layer).__name__
