"""The in-memory `Dataset`, and what its loaders share: class-name checks, error roles, skip records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from autotl.errors import AutotlError

# At most this many skipped files or rows are listed in a search's record (all are counted).
SKIPPED_LISTED = 100


@dataclass
class Dataset:
    """A labelled dataset held in memory.

    Attributes:
        modality: ``"image"`` or ``"text"``.
        examples: uint8 ``(N, H, W, 3)`` for images; ``list[str]`` for text.
        labels: int64 ``(N,)``, indices into `class_names`.
        class_names: the classes, sorted by name (or as given for a validation set).
        sources: per example, the image path, or ``"file.csv:ROW"`` /
            ``"file.jsonl:LINE"`` for text.
        skipped: ``(source, reason)`` for files that were found but not loaded.
            It describes the load, so `subset` passes it on unchanged.
    """

    modality: str
    examples: np.ndarray | list
    labels: np.ndarray
    class_names: list[str]
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.labels)
        if len(self.examples) != n or len(self.sources) != n:
            raise ValueError(
                f"Dataset lengths differ: {len(self.examples)} examples, {n} labels, {len(self.sources)} sources"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The examples at `indices`, in that order, with the same class names."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if isinstance(self.examples, np.ndarray):
            examples: np.ndarray | list = self.examples[idx]
        else:
            examples = [self.examples[i] for i in idx]
        return Dataset(
            modality=self.modality,
            examples=examples,
            labels=self.labels[idx],
            class_names=list(self.class_names),
            sources=[self.sources[i] for i in idx],
            skipped=list(self.skipped),
        )

    def class_counts(self) -> dict[str, int]:
        """Number of examples per class name (classes with none included)."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}


def resolve_class_names(found: list[str], given: Sequence[str] | None, where: Path) -> list[str]:
    """The class names: those `found`, or those `given` (a validation set's training classes), holding them all."""
    if given is None:
        return found
    known = set(given)
    unknown = [name for name in found if name not in known]
    if unknown:
        raise AutotlError(
            f"{where} has class {unknown[0]!r}, which is not a training class "
            f"({', '.join(repr(n) for n in given)}): remove it or train with it"
        )
    return list(given)


def skipped_of(*datasets: Dataset) -> list[tuple[str, str]]:
    """What `datasets` skipped, each ``(source, reason)`` once, in order.

    The two parts of a split share their dataset's list, so it is counted once;
    a separate validation set adds its own.
    """
    seen: dict[tuple[str, str], None] = {}
    for dataset in datasets:
        for source, reason in dataset.skipped:
            seen.setdefault((source, reason), None)
    return list(seen)


def skipped_record(*datasets: Dataset) -> dict[str, object]:
    """How a search records what its data skipped: the count, and the first `SKIPPED_LISTED`."""
    skipped = skipped_of(*datasets)
    return {"skipped_examples": [list(item) for item in skipped[:SKIPPED_LISTED]], "skipped_count": len(skipped)}


def role_of(class_names: Sequence[str] | None) -> str:
    """What a loaded path is called in errors: a set read against training classes is the validation data."""
    return "dataset" if class_names is None else "validation data (--val-data)"


def one_line(exc: BaseException) -> str:
    """The exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__
