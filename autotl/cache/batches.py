"""Batching a trial's inputs for Keras, and calling a model batch by batch in order.

Arrays in memory go to Keras as they are; memory-mapped cache entries, and text
that can be cropped to each batch's longest example, are read through a
`keras.utils.PyDataset` (`batches`). `predict_in_order` runs a model over inputs
the same way and returns its outputs in the examples' order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import keras
import numpy as np

PADDING_MASK = "padding_mask"  # the text input that says which positions are real (`autotl.backbones.protocol`)
#: Cropped text lengths are rounded up to a multiple of this on JAX, which compiles a
#: function for every input shape; TensorFlow traces one for any length (`_Batches`),
#: and torch compiles nothing, so there every batch is cut to its longest example.
JAX_LENGTH_STEP = 8


def as_list(outputs) -> list:
    """A model's outputs as a list (one output is a list of one)."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def slices(x: Any, batch_size: int) -> list:
    """`x` (an array, a list or a dict of arrays) cut into consecutive batches."""
    count = len(_leaves(x)[0])
    return [_map_leaves(x, lambda a, _: np.asarray(a[start:start + batch_size])) for start in range(0, count, batch_size)]


def call_eagerly(model: keras.Model, batch_inputs: list) -> list[np.ndarray]:
    """Each of the model's outputs over all the batches, concatenated, the model called directly."""
    parts = [[keras.ops.convert_to_numpy(o) for o in as_list(model(_as_call_inputs(inputs), training=False))]
             for inputs in batch_inputs]
    return [np.concatenate(column) for column in zip(*parts)]


def _as_call_inputs(inputs: Any) -> Any:
    return list(inputs) if isinstance(inputs, tuple) else inputs


def sequence_lengths(x: Any) -> np.ndarray | None:
    """The real length of each example of text inputs (from their padding mask); None for others."""
    if isinstance(x, Mapping) and PADDING_MASK in x:
        return np.asarray(x[PADDING_MASK]).astype(bool).sum(axis=1)
    return None


def cropped_length(lengths: np.ndarray) -> int:
    """The longest of `lengths` (on JAX rounded up, so that few distinct shapes are compiled)."""
    step = JAX_LENGTH_STEP if keras.backend.backend() == "jax" else 1
    return int(-(-max(int(lengths.max()), 1) // step) * step)


def variable_length(tensor) -> bool:
    """Whether a model input takes any length on axis 1 (text that can be cropped)."""
    return len(tensor.shape) >= 2 and tensor.shape[1] is None


def take_rows(array, rows: np.ndarray, crop: int | None) -> np.ndarray:
    """`array`'s `rows`, in that order, cut to `crop` positions on axis 1 when given."""
    taken = np.asarray(array[np.sort(rows)] if isinstance(array, np.memmap) else array[rows])
    if isinstance(array, np.memmap):  # read in file order, then put back in the order asked
        taken = taken[np.argsort(np.argsort(rows))]
    return taken if crop is None else taken[:, :crop]


def pad_sequence(output: np.ndarray, crop: int, full: int) -> np.ndarray:
    """Back to the full length (zeros at padding positions, which nothing reads)."""
    if output.ndim < 2 or output.shape[1] != crop or crop >= full:
        return output
    padding = [(0, 0)] * output.ndim
    padding[1] = (0, full - crop)
    return np.pad(output, padding)


def model_input(x: Any, name: str):
    """The input called `name` of `x` (a dict of inputs), or `x` itself (one input)."""
    return x[name] if isinstance(x, Mapping) else x


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
        return call_eagerly(model, slices(x, batch_size))[0]
    predictions = call_eagerly(model, [feed.x[index][0] for index in range(len(feed.x))])[0]
    in_order = np.empty_like(predictions)
    in_order[np.concatenate(feed.x.batch_rows())] = predictions
    return in_order


def variable_length_inputs(model: keras.Model, x: Any) -> Any:
    """For each input in `x` (same structure), whether `model` takes it at any length on axis 1."""
    if isinstance(x, Mapping):
        by_name = {t.name: variable_length(t) for t in model.inputs}
        return {name: by_name.get(name, False) for name in x}
    return [variable_length(t) for t in model.inputs]


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
        x = _map_leaves(self.x, lambda a, can: take_rows(a, rows, crop if can else None), self.croppable)
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
