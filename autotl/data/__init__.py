"""Loading small labelled datasets into memory.

Two on-disk layouts are read:

* images: one sub-folder per class (``train/cat/001.jpg``, ``train/dog/002.png``);
* text: a ``.csv`` / ``.tsv`` table with a header row, or a ``.jsonl`` file with
  one JSON object per line, each holding a text column and a label column.

Images are decoded and resized once, at load time, by `read_image`; the search
keeps the resulting uint8 arrays in memory, and prediction calls the very same
function, so a deployed model sees exactly the pixels the search saw.

Everything a user can get wrong (a missing folder, one class, a missing column)
raises `AutotlError` with a one-line message.

The public names live in `dataset` (the `Dataset`), `images` (reading one
image), `folders` (image datasets), `tables` (text datasets), `loader`
(either) and `split` (train/validation split, fingerprint); all are here.
"""

from autotl.data.dataset import SKIPPED_LISTED, Dataset, skipped_of, skipped_record
from autotl.data.folders import IMAGE_SUFFIXES, load_image_folder
from autotl.data.images import ALPHA_BACKGROUND, UnreadableImageError, decode_image, read_image
from autotl.data.loader import load_dataset
from autotl.data.split import fingerprint, stratified_split
from autotl.data.tables import CSV_SUFFIXES, JSONL_SUFFIXES, TEXT_SUFFIXES, load_text_table

__all__ = [
    "ALPHA_BACKGROUND",
    "CSV_SUFFIXES",
    "IMAGE_SUFFIXES",
    "JSONL_SUFFIXES",
    "SKIPPED_LISTED",
    "TEXT_SUFFIXES",
    "Dataset",
    "UnreadableImageError",
    "decode_image",
    "fingerprint",
    "load_dataset",
    "load_image_folder",
    "load_text_table",
    "read_image",
    "skipped_of",
    "skipped_record",
    "stratified_split",
]
