"""Loading a dataset of either modality and checking that it can train a classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from autotl.backbones.protocol import IMAGE, MODALITIES
from autotl.data.dataset import Dataset
from autotl.data.folders import load_image_folder
from autotl.data.tables import load_text_table
from autotl.errors import AutotlError, UsageError


def load_dataset(
    path: str | Path,
    modality: str,
    *,
    image_size: tuple[int, int] | None = None,
    text_col: str = "text",
    label_col: str = "label",
    strict: bool = False,
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """Load an image folder or a text table and check it can train a classifier.

    With ``strict=True`` an unreadable image or a row with empty text is an
    error; otherwise it is skipped and recorded in ``skipped``.
    """
    if modality not in MODALITIES:
        raise UsageError(f"unknown modality {modality!r}: use one of {', '.join(MODALITIES)}")
    if modality == IMAGE:
        if image_size is None:
            raise UsageError("image datasets need an image size (height, width)")
        dataset = load_image_folder(path, image_size, strict=strict, class_names=class_names)
    else:
        dataset = load_text_table(path, text_col=text_col, label_col=label_col, class_names=class_names,
                                  strict=strict)
    if len(dataset.class_names) < 2:
        raise AutotlError(
            f"found only one class {dataset.class_names[0]!r} in {path}: a classifier needs at least two"
        )
    return dataset
