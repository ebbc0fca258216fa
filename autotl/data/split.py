"""Splitting a dataset into training and validation parts, and fingerprinting its content."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from autotl.data.dataset import Dataset
from autotl.errors import AutotlError, UsageError


def stratified_split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split into (train, validation), class by class, reproducibly for a seed.

    Each class sends ``round(n * val_fraction)`` examples to validation, clamped
    so that it keeps at least one training example and, when it has two or
    more, gives at least one to validation. A class with a single example stays
    entirely in training (it cannot be in both); when every class has one, nothing
    is left to validate on, and that is an error. Both parts keep the dataset's
    original order.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise UsageError(f"validation fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val_parts: list[np.ndarray] = []
    for label in range(len(dataset.class_names)):
        members = np.flatnonzero(dataset.labels == label)
        n = len(members)
        if n < 2:
            continue
        n_val = min(max(math.floor(n * val_fraction + 0.5), 1), n - 1)
        val_parts.append(rng.permutation(members)[:n_val])
    if not val_parts:
        raise AutotlError(_single_examples_message(dataset))
    is_val = np.zeros(len(dataset), dtype=bool)
    is_val[np.concatenate(val_parts)] = True
    return dataset.subset(np.flatnonzero(~is_val)), dataset.subset(np.flatnonzero(is_val))


def _single_examples_message(dataset: Dataset) -> str:
    names = ", ".join(repr(name) for name in dataset.class_names[:5])
    more = f" and {len(dataset.class_names) - 5} more" if len(dataset.class_names) > 5 else ""
    return (f"every class has a single example ({names}{more}), so none is left to validate on: "
            "give each class two or more examples, or a validation set with --val-data")


def fingerprint(dataset: Dataset) -> str:
    """SHA-256 of the content: modality, class names, labels and examples.

    Sources are left out, so moving or renaming the folder keeps the
    fingerprint; every length is hashed so that no two datasets share a byte
    stream (``["ab", "c"]`` vs ``["a", "bc"]``).
    """
    digest = hashlib.sha256()
    header = {"modality": dataset.modality, "class_names": list(dataset.class_names), "n": len(dataset)}
    _update_blob(digest, json.dumps(header, sort_keys=True).encode())
    _update_blob(digest, np.ascontiguousarray(dataset.labels, dtype="<i8").tobytes())
    if isinstance(dataset.examples, np.ndarray):
        examples = np.ascontiguousarray(dataset.examples, dtype=np.uint8)
        _update_blob(digest, json.dumps(list(examples.shape)).encode())
        if examples.size:  # a memoryview of no bytes cannot be cast
            digest.update(memoryview(examples).cast("B"))
    else:
        for text in dataset.examples:
            _update_blob(digest, text.encode("utf-8"))
    return digest.hexdigest()


def _update_blob(digest, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)
