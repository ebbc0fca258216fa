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
the store says which path each trial took.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import keras
import numpy as np

from autotl.cache import cut as graph_module
from autotl.cache.entries import ActivationCache, digest, storage_dtype
from autotl.search.hypermodel import BACKBONE_LAYER
from autotl.search.records import TrialData

HIT, COMPUTED, BYPASSED = "hit", "computed", "bypassed"
SPLITS = ("train", "val")
PADDING_MASK = "padding_mask"  # the text input that says which positions are real (`autotl.backbones.protocol`)
#: Cropped text lengths are rounded up to a multiple of this on JAX, which compiles a
#: function for every input shape; TensorFlow traces one for any length (`_Batches`),
#: and torch compiles nothing, so there every batch is cut to its longest example.
JAX_LENGTH_STEP = 8


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
    stems: StemOutputs
    _phases: dict[int, tuple[graph_module.Cut, keras.Model]] = field(default_factory=dict)

    def phase(self, depth: int) -> Phase:
        if depth not in self._phases:
            item = self._through_stem(self.cuts[depth])
            self._phases[depth] = (item, graph_module.suffix_model(self.graph, item))
        item, model = self._phases[depth]
        return Phase(model, self._inputs(item, "train"), self._inputs(item, "val"))

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
        return _model_input(self.data.x_train if split == "train" else self.data.x_val, graph_module.input_name(name))

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
        return _call_eagerly(model, _slices(inputs, self.batch_size))


def _shrinks(stem: graph_module.Stem, activations: list) -> bool:
    """Whether the stem's outputs take less memory per example than the cached activations it reads."""
    read = sum(a.nbytes // max(len(a), 1) for a in activations)
    shapes = [tuple(t.shape[1:]) for t in stem.model.outputs]
    if any(dim is None for shape in shapes for dim in shape):
        return False
    written = sum(int(np.prod(shape)) * 4 for shape in shapes)
    return written < read


def _as_list(outputs) -> list:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _slices(x: Any, batch_size: int) -> list:
    """`x` (an array, a list or a dict of arrays) cut into consecutive batches."""
    count = len(_leaves(x)[0])
    return [_map_leaves(x, lambda a, _: np.asarray(a[start:start + batch_size])) for start in range(0, count, batch_size)]


def _call_eagerly(model: keras.Model, batch_inputs: list) -> list[np.ndarray]:
    """Each of the model's outputs over all the batches, concatenated, the model called directly."""
    parts = [[keras.ops.convert_to_numpy(o) for o in _as_list(model(_as_call_inputs(inputs), training=False))]
             for inputs in batch_inputs]
    return [np.concatenate(column) for column in zip(*parts)]


def _as_call_inputs(inputs: Any) -> Any:
    return list(inputs) if isinstance(inputs, tuple) else inputs


class ActivationSource:
    """One per process: builds each trial's feed, computing cache entries when missing.

    Arrays already loaded stay loaded for the next trial of this process.
    """

    def __init__(self, cache: ActivationCache | None, backbone, preprocessing: Mapping[str, Any],
                 depths: list[int], *, storage: str = "auto", batch_size: int = 128,
                 memory_budget_bytes: int = 4 * 2**30):
        self.cache = cache
        self.backbone = backbone
        self.preprocessing = dict(preprocessing)
        self.depths = sorted(set(depths) | {0})
        self.storage = storage
        self.batch_size = batch_size
        self.memory_budget_bytes = memory_budget_bytes
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
            top = [layer for block in blocks[len(blocks) - depth:] for layer in block] if depth else []
            cuts[depth] = graph_module.cut(graph, depth, top)
        started = time.perf_counter()
        keys = self._keys(graph, model, cuts, data)
        computed = self._compute_missing(graph, data, keys)
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
        count = len(_model_input(x, prefix.inputs[0].name))
        lengths = sequence_lengths(x)
        # Text goes through in order of length, each batch cropped to its longest sequence:
        # most of a padded batch is padding, and the outputs at real positions do not change.
        order = np.arange(count) if lengths is None else np.argsort(lengths, kind="stable")
        croppable = [_variable_length(t) for t in prefix.inputs]
        full_length = None if lengths is None else _model_input(x, PADDING_MASK).shape[1]
        writers = {}
        try:
            for start in range(0, count, self.batch_size):
                rows = order[start:start + self.batch_size]
                crop = None if lengths is None else cropped_length(lengths[rows])
                # A short last batch is filled up with its own rows: a batch of a new size
                # would trace the backbone's function again (a second of the pass on CPU).
                padded = np.resize(rows, self.batch_size) if count > self.batch_size else rows
                batch = [_take(_model_input(x, t.name), padded, crop if can else None)
                         for t, can in zip(prefix.inputs, croppable)]
                outputs = prefix.predict_on_batch(batch)
                outputs = [np.asarray(o)[:len(rows)] for o in _as_list(outputs)]
                if crop is not None:
                    outputs = [_pad_sequence(o, crop, full_length) for o in outputs]
                if not writers:
                    writers = self._writers(keys, names, outputs, count, split)
                for name, output in zip(names, outputs):
                    writers[name].write(output, rows)
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
        """The activations of `keys`, read from disk the first time this process needs them."""
        new = {key: self.cache.get(key) for key, _ in keys.values() if key not in self._loaded}
        size = sum(entry.size_bytes for entry in new.values())
        for key, entry in new.items():
            self._loaded[key] = (entry.load(in_memory=size <= self.memory_budget_bytes), entry.size_bytes)
        arrays = {slot: self._loaded[key][0] for slot, (key, _) in keys.items()}
        return arrays, sum(self._loaded[key][1] for key, _ in keys.values())


def sequence_lengths(x: Any) -> np.ndarray | None:
    """The real length of each example of text inputs (from their padding mask); None for others."""
    if isinstance(x, Mapping) and PADDING_MASK in x:
        return np.asarray(x[PADDING_MASK]).astype(bool).sum(axis=1)
    return None


def cropped_length(lengths: np.ndarray) -> int:
    """The longest of `lengths` (on JAX rounded up, so that few distinct shapes are compiled)."""
    step = JAX_LENGTH_STEP if keras.backend.backend() == "jax" else 1
    return int(-(-max(int(lengths.max()), 1) // step) * step)


def _variable_length(tensor) -> bool:
    return len(tensor.shape) >= 2 and tensor.shape[1] is None


def _take(array, rows: np.ndarray, crop: int | None) -> np.ndarray:
    taken = np.asarray(array[np.sort(rows)] if isinstance(array, np.memmap) else array[rows])
    if isinstance(array, np.memmap):  # read in file order, then put back in the order asked
        taken = taken[np.argsort(np.argsort(rows))]
    return taken if crop is None else taken[:, :crop]


def _pad_sequence(output: np.ndarray, crop: int, full: int) -> np.ndarray:
    """Back to the full length (zeros at padding positions, which nothing reads)."""
    if output.ndim < 2 or output.shape[1] != crop or crop >= full:
        return output
    padding = [(0, 0)] * output.ndim
    padding[1] = (0, full - crop)
    return np.pad(output, padding)


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

    def first(self) -> tuple[Any, Any]:
        """The first batch, as (inputs, labels)."""
        if self.y is None:  # a dataset: it yields (inputs, labels) itself
            return tuple(self.x[0])
        return _map_leaves(self.x, lambda a, _: np.asarray(a[:self.batch_size])), self.y[:self.batch_size]


def batches(x: Any, y: np.ndarray | None, batch_size: int, *, shuffle: bool = False, seed: int = 0,
            lengths: np.ndarray | None = None, croppable: Any = None) -> Batches:
    """What `fit` / `predict` get: the arrays themselves, or a `keras.utils.PyDataset` over them.

    Arrays in memory go to Keras as they are. A dataset reads batches instead
    when inputs are memory-mapped (Keras would first copy a memory-mapped array
    whole into memory, exactly what keeping a large cache entry on disk avoids),
    or when text can be cropped: given each example's real length and which
    inputs take any length (`croppable`, shaped like `x`), batches are formed of
    examples of similar length and cut to the longest of them.
    """
    crop = lengths is not None and any(_leaves(croppable))
    if not crop and not any(isinstance(a, np.memmap) for a in _leaves(x)):
        return Batches(x, y, batch_size, shuffle)
    dataset = _Batches(x, y, batch_size, shuffle, seed, lengths if crop else None, croppable)
    return Batches(dataset, None, None, False)


def predict_in_order(model: keras.Model, x: Any, batch_size: int, lengths: np.ndarray | None = None) -> np.ndarray:
    """The model's outputs for `x`, one row per example in order, text cropped as in training.

    The model is called batch by batch, eagerly: once per trial, on the validation
    split, tracing a predict function for the trained blocks would cost several
    times what running them does.
    """
    feed = batches(x, None, batch_size, lengths=lengths, croppable=variable_length_inputs(model, x))
    if not isinstance(feed.x, _Batches):
        return _call_eagerly(model, _slices(x, batch_size))[0]
    predictions = _call_eagerly(model, [feed.x[index][0] for index in range(len(feed.x))])[0]
    in_order = np.empty_like(predictions)
    in_order[np.concatenate(feed.x.batch_rows())] = predictions
    return in_order


def variable_length_inputs(model: keras.Model, x: Any) -> Any:
    """For each input in `x` (same structure), whether `model` takes it at any length on axis 1."""
    if isinstance(x, Mapping):
        by_name = {t.name: _variable_length(t) for t in model.inputs}
        return {name: by_name.get(name, False) for name in x}
    return [_variable_length(t) for t in model.inputs]


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size: int, shuffle: bool, seed: int, lengths: np.ndarray | None, croppable):
        super().__init__(workers=2, use_multiprocessing=False)  # threads read ahead while the model trains
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.lengths, self.croppable = lengths, croppable
        self._count = len(_leaves(x)[0])
        self._rng = np.random.default_rng(seed)
        self._batches: list[np.ndarray] = []
        self.on_epoch_end()

    def __len__(self) -> int:
        return len(self._batches)

    def batch_rows(self) -> list[np.ndarray]:
        """The examples of each batch of this epoch, in order."""
        return list(self._batches)

    def __getitem__(self, index: int):
        rows = self._batches[index]
        crop = None if self.lengths is None else cropped_length(self.lengths[rows])
        x = _map_leaves(self.x, lambda a, can: _take(a, rows, crop if can else None), self.croppable)
        return (x,) if self.y is None else (x, self.y[rows])  # a bare tuple of inputs would read as (x, y)

    def on_epoch_end(self) -> None:
        order = self._rng.permutation(self._count) if self.shuffle else np.arange(self._count)
        if self.lengths is None:
            self._batches = [order[i:i + self.batch_size] for i in range(0, self._count, self.batch_size)]
            return
        # Sort by length within pools of a few dozen batches, then shuffle the batches:
        # batches of similar lengths, in a new order and composition every epoch.
        pool = self.batch_size * 32 if self.shuffle else self._count
        self._batches = []
        for start in range(0, self._count, pool):
            part = order[start:start + pool]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            self._batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
        if self.shuffle:
            self._batches = [self._batches[i] for i in self._rng.permutation(len(self._batches))]
        self._vary_first_two()

    def _vary_first_two(self) -> None:
        """Keras' TensorFlow adapter fixes each axis that is the same in the first two batches;
        make their lengths differ (when any batch's does) so that the length axis stays open."""
        widths = [cropped_length(self.lengths[rows]) for rows in self._batches]
        other = next((i for i, width in enumerate(widths) if width != widths[0]), None)
        if other is not None and len(self._batches) > 1:
            self._batches[1], self._batches[other] = self._batches[other], self._batches[1]


def _leaves(x: Any) -> list:
    if isinstance(x, Mapping):
        return list(x.values())
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _map_leaves(x: Any, fn, flags: Any = None):
    """`fn(leaf, flag)` over the inputs `x` (an array, a list or a dict), with `flags` shaped like `x`."""
    if isinstance(x, Mapping):
        return {k: fn(v, (flags or {}).get(k, False)) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        flags = flags if flags is not None else [False] * len(x)
        return tuple(fn(v, f) for v, f in zip(x, flags))  # tf.data takes a tuple of inputs, not a list
    return fn(x, (flags or [False])[0])
