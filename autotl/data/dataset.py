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
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from autotl.backbones.protocol import IMAGE, MODALITIES, TEXT
from autotl.errors import AutotlError, UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
CSV_SUFFIXES = frozenset({".csv", ".tsv"})
JSONL_SUFFIXES = frozenset({".jsonl", ".json-lines", ".ndjson"})
TEXT_SUFFIXES = CSV_SUFFIXES | JSONL_SUFFIXES

# Transparent pixels have no defined colour (a PNG may store anything under
# alpha 0), so they are composited onto this fixed background.
ALPHA_BACKGROUND = (255, 255, 255)

# PIL opens 16-bit grayscale PNG/TIFF as one of these ("I", 32-bit, on older
# versions); their values are read as 0..65535, and an "I" image with values
# outside that range (a true 32-bit or a signed image) is refused rather than
# clipped. Float ("F") images are read as 0..255, clipped to that range.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# At most this many skipped files or rows are listed in a search's record (all are counted).
SKIPPED_LISTED = 100


class UnreadableImageError(AutotlError):
    """An image file (or buffer) that PIL cannot decode."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source
        self.reason = reason


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


# --------------------------------------------------------------------------- images


def read_image(source: str | Path | bytes | np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Decode `source` into a uint8 ``(H, W, 3)`` RGB array of ``image_size = (H, W)``.

    `source` is a file path, encoded image bytes, or an array ``(H, W)``,
    ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` of uint8 pixels. The steps:
    apply the EXIF orientation (phone photos are often stored sideways), take
    the first frame of animations, convert any mode to RGB (grayscale is
    replicated; 16-bit is scaled to 8-bit; transparency is composited onto
    white), then resize with PIL's bilinear filter. Palette, CMYK, YCbCr, LAB,
    1-bit, grayscale(+alpha) and 16-bit images are all converted this way.

    Raises `UnreadableImageError` when the source cannot be decoded, or holds
    pixels with no 8-bit reading (32-bit integers beyond 16-bit values).
    """
    height, width = _check_image_size(image_size)
    rgb = _decode_rgb(source)
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def decode_image(source: str | Path | bytes | np.ndarray) -> np.ndarray:
    """`read_image` without the resize: a uint8 ``(H, W, 3)`` RGB array at the source's own size.

    What exports that resize inside the model take (see `autotl.export.tf_formats`):
    their resize reproduces the one `read_image` applies.
    """
    return np.asarray(_decode_rgb(source), dtype=np.uint8)


def _decode_rgb(source: str | Path | bytes | np.ndarray) -> Image.Image:
    try:
        image = _open_image(source)
        with image:
            return _to_rgb(image)
    except (AutotlError, MemoryError):
        raise
    except Exception as exc:  # PIL raises a zoo of types for bad files: OSError, SyntaxError, ValueError...
        raise UnreadableImageError(_describe(source), _reason(exc)) from exc


def _open_image(source: str | Path | bytes | np.ndarray) -> Image.Image:
    if isinstance(source, np.ndarray):
        return _image_from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        image = Image.open(io.BytesIO(bytes(source)))
    else:
        image = Image.open(Path(source))
    try:
        image.load()  # decode now: truncated files fail here rather than later
    except BaseException:
        image.close()
        raise
    return image


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise UnreadableImageError(
            f"array of shape {array.shape}",
            f"pixels must be uint8, got dtype {array.dtype}: convert with np.clip(a, 0, 255).astype('uint8')",
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))
    raise UnreadableImageError(
        f"array of shape {array.shape}", "the shape must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own conversion clips 16-bit values at 255 (nearly all white).
        image = _sixteen_bit_to_gray(image)
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).round().astype(np.uint8))
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_to_gray(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(
            f"unsupported pixels: 32-bit integers ({values.min():.0f} to {values.max():.0f}) beyond the "
            "16-bit range autotl reads: save it as an 8- or 16-bit image"
        )
    scaled = values / 257.0  # 65535 -> 255
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info


def _check_image_size(image_size: tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise UsageError(f"image size must be two positive integers (height, width), got {image_size!r}") from None
    if height <= 0 or width <= 0:
        raise UsageError(f"image size must be two positive integers (height, width), got {image_size!r}")
    return height, width


def _describe(source: object) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, np.ndarray):
        return f"array of shape {source.shape}"
    return f"<{len(source)} bytes>"  # type: ignore[arg-type]


def _reason(exc: BaseException) -> str:
    """The exception's message on one line."""
    if isinstance(exc, UnidentifiedImageError):  # PIL's message only repeats the path
        return "corrupt, or not an image format PIL can decode"
    return " ".join(str(exc).split()) or type(exc).__name__


def load_image_folder(
    path: str | Path,
    image_size: tuple[int, int],
    strict: bool = False,
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """Load a folder holding one sub-folder of images per class.

    Sub-folders of a class folder are searched too; hidden files and folders
    (names starting with ``.``) and files without an image suffix are ignored.
    Image files directly in `path` are recorded in ``skipped``, as are
    unreadable ones (or, with ``strict=True``, an unreadable one is an error).

    With `class_names` (a validation set read against the training classes),
    labels index into those names and a folder not among them is an error.
    """
    root = _require_dir(path, _role(class_names))
    size = _check_image_size(image_size)
    folders = _class_folders(root)
    if not folders:
        raise AutotlError(
            f"no class folders in {root}: put each class's images in its own sub-folder, e.g. {root}/cat/1.jpg"
        )
    names = _resolve_class_names(sorted(f.name for f in folders), class_names, root)
    index = {name: i for i, name in enumerate(names)}

    files, labels = [], []
    for folder in folders:
        found = _image_files(folder)
        if not found:
            raise AutotlError(f"class folder {folder} holds no readable images (suffixes: {_suffix_list()})")
        files += found
        labels += [index[folder.name]] * len(found)
    skipped = [(str(p), "not inside a class folder (ignored)") for p in _image_files(root, recursive=False)]

    examples, ok, unreadable = _read_images(files, size, strict)
    skipped += unreadable
    kept_labels = np.asarray(labels, dtype=np.int64)[ok]
    _check_classes_readable(folders, [index[f.name] for f in folders], kept_labels, unreadable)
    return Dataset(
        modality=IMAGE,
        examples=examples,
        labels=kept_labels,
        class_names=list(names),
        sources=[str(files[i]) for i in ok],
        skipped=skipped,
    )


def _class_folders(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_dir() and not _hidden(p)), key=lambda p: p.name)


def _image_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder`, skipping hidden entries, in sorted (deterministic) order."""
    candidates: Iterable[Path] = folder.rglob("*") if recursive else folder.iterdir()
    files = [
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(_hidden(part) for part in p.relative_to(folder).parts)
        and p.is_file()
    ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _hidden(part: Path | str) -> bool:
    name = part.name if isinstance(part, Path) else part
    return name.startswith(".")


def _suffix_list() -> str:
    return " ".join(sorted(IMAGE_SUFFIXES))


def _read_images(
    files: list[Path], size: tuple[int, int], strict: bool
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode `files` into one preallocated array; returns (examples, kept indices, skipped)."""
    height, width = size
    out = np.empty((len(files), height, width, 3), dtype=np.uint8)
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    for i, file in enumerate(files):
        try:
            out[len(kept)] = _read_image_file(file, size)
        except UnreadableImageError as exc:
            if strict:
                raise AutotlError(f"{exc} (remove the file, or run without --strict to skip it)") from exc
            skipped.append((str(file), exc.reason))
            continue
        kept.append(i)
    examples = out[: len(kept)]
    if len(kept) < len(files):
        examples = examples.copy()  # release the unused tail of the buffer
    return examples, np.asarray(kept, dtype=np.int64), skipped


def _read_image_file(file: Path, size: tuple[int, int]) -> np.ndarray:
    if file.stat().st_size == 0:
        raise UnreadableImageError(str(file), "empty file (0 bytes)")
    return read_image(file, size)


def _check_classes_readable(
    folders: list[Path], folder_labels: list[int], kept_labels: np.ndarray, unreadable: list[tuple[str, str]]
) -> None:
    present = set(kept_labels.tolist())
    for folder, label in zip(folders, folder_labels):
        if label not in present:
            first = next((f"{src}: {why}" for src, why in unreadable if folder in Path(src).parents), "?")
            raise AutotlError(
                f"class folder {folder} holds no readable images: every image in it failed to decode (first: {first})"
            )


# --------------------------------------------------------------------------- text


def load_text_table(
    path: str | Path,
    text_col: str = "text",
    label_col: str = "label",
    class_names: Sequence[str] | None = None,
    strict: bool = False,
) -> Dataset:
    """Load a ``.csv`` / ``.tsv`` (header row) or ``.jsonl`` (one object per line) file.

    Labels are class names, compared as text: a string is stripped of
    surrounding spaces, and a JSON number or boolean becomes the text it stands
    for, so ``1``, ``1.0`` and ``"1"`` are one class ``"1"`` (and ``"cat"``
    another); ``true`` is ``"true"``. A JSON list or object is not a label (one
    label per row), and a row with an empty label is an error, reported with
    the count and the first such row.

    A row whose text is empty (or only spaces) is skipped and recorded in
    ``skipped``, as an unreadable image is; with ``strict=True`` it is an
    error. So is a table with no text at all, or a class whose every row is empty.

    Sources are ``"file.csv:ROW"`` with the header as row 1 (as a spreadsheet
    numbers rows) or ``"file.jsonl:LINE"`` (1-based; blank lines are ignored).
    """
    file = _require_file(path, _role(class_names))
    suffix = file.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise AutotlError(f"{file} is not a supported text table: use one of {' '.join(sorted(TEXT_SUFFIXES))}")
    records = _csv_records(file) if suffix in CSV_SUFFIXES else _jsonl_records(file)
    rows = _collect(file, records, text_col, label_col)
    if not rows.texts and not rows.empty:
        raise AutotlError(f"no rows in {file}: it needs a header line and at least one row per class")
    _check_empty_texts(file, rows, text_col, strict)
    found = sorted(set(rows.labels) | {label for _, label in rows.empty})
    names = _resolve_class_names(found, class_names, file)
    _check_classes_have_text(file, found, rows)
    index = {name: i for i, name in enumerate(names)}
    return Dataset(
        modality=TEXT,
        examples=rows.texts,
        labels=np.asarray([index[label] for label in rows.labels], dtype=np.int64),
        class_names=list(names),
        sources=rows.sources,
        skipped=[(source, "empty text") for source, _ in rows.empty],
    )


# A record is (source, available column names, row mapping).
Record = tuple[str, list[str], dict]


def _csv_records(file: Path) -> Iterator[Record]:
    delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
    # utf-8-sig: spreadsheet exports often start with a byte-order mark, which
    # would otherwise become part of the first column's name.
    with _open_text(file) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return
            columns = [c.strip() for c in header]
            for row_number, row in enumerate(reader, start=2):
                yield f"{file.name}:{row_number}", columns, dict(zip(columns, row))
        except csv.Error as exc:
            raise AutotlError(f"{file}:{reader.line_num} is not valid CSV: {_reason(exc)}") from None
        except UnicodeDecodeError as exc:
            raise _not_utf8(file, exc) from None


def _jsonl_records(file: Path) -> Iterator[Record]:
    with _open_text(file) as handle:
        try:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                yield f"{file.name}:{line_number}", *_parse_json_line(file, line_number, line)
        except UnicodeDecodeError as exc:
            raise _not_utf8(file, exc) from None


def _parse_json_line(file: Path, line_number: int, line: str) -> tuple[list[str], dict]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise AutotlError(f"{file}:{line_number} is not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise AutotlError(
            f"{file}:{line_number} holds a JSON {type(obj).__name__}, not an object: "
            'write one object per line, e.g. {"text": "...", "label": "..."}'
        )
    return list(obj), obj


def _open_text(file: Path):
    return open(file, encoding="utf-8-sig", newline="")


def _not_utf8(file: Path, exc: UnicodeDecodeError) -> AutotlError:
    return AutotlError(f"{file} is not UTF-8 text (bad byte at offset {exc.start}): re-save it as UTF-8")


@dataclass
class _Rows:
    """A text table's rows: those kept, and ``(source, label)`` of those with empty text."""

    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    empty: list[tuple[str, str]] = field(default_factory=list)


def _collect(file: Path, records: Iterable[Record], text_col: str, label_col: str) -> _Rows:
    rows = _Rows()
    empty_label: list[str] = []
    for source, columns, row in records:
        _check_columns(file, source, columns, (text_col, label_col))
        text, label = row.get(text_col), _label_str(source, label_col, row.get(label_col))
        if not isinstance(text, str) and text is not None:
            raise AutotlError(f"{source}: the {text_col!r} value must be a string, got {type(text).__name__}")
        if not label:
            empty_label.append(source)
        if text is None or not text.strip():
            rows.empty.append((source, label))
            continue
        rows.texts.append(text)
        rows.labels.append(label)
        rows.sources.append(source)
    _raise_if_empty(file, empty_label, "an empty label")
    return rows


def _check_empty_texts(file: Path, rows: _Rows, text_col: str, strict: bool) -> None:
    if not rows.empty:
        return
    first = rows.empty[0][0]
    if not rows.texts:
        raise AutotlError(
            f"every row of {file} has empty text in column {text_col!r} (first: {first}): "
            "fill them in, or choose the text column with --text-col"
        )
    if strict:
        count = f"{len(rows.empty)} rows" if len(rows.empty) > 1 else "1 row"
        raise AutotlError(
            f"{count} in {file} with empty text (first: {first}): fill them in or remove them, "
            "or run without --strict to skip them"
        )


def _check_classes_have_text(file: Path, classes: list[str], rows: _Rows) -> None:
    """A class whose every row has empty text would vanish from the data: an error, as for images."""
    kept = set(rows.labels)
    for name in classes:
        if name not in kept:
            first = next(source for source, label in rows.empty if label == name)
            raise AutotlError(
                f"class {name!r} in {file} has only rows with empty text (first: {first}): "
                "fill them in, or remove the class"
            )


def _check_columns(file: Path, source: str, columns: list[str], wanted: tuple[str, str]) -> None:
    missing = [c for c in wanted if c not in columns]
    if not missing:
        return
    # A CSV's columns come from its header; a JSON line's from that line alone.
    where = str(file) if file.suffix.lower() in CSV_SUFFIXES else f"{file} (line {source.rsplit(':', 1)[1]})"
    available = ", ".join(repr(c) for c in columns) or "none"
    raise AutotlError(
        f"{where} has no column {missing[0]!r}: available columns are {available} "
        "(choose them with --text-col / --label-col)"
    )


def _label_str(source: str, label_col: str, value: object) -> str:
    """A label as its class name ("" when missing; see `load_text_table`)."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        kind = "object" if isinstance(value, dict) else "list"
        raise AutotlError(
            f"{source}: the {label_col!r} value is a JSON {kind}, not a label: "
            "give each row one label, a string or a number (multi-label data is not supported)"
        )
    if isinstance(value, bool):
        return json.dumps(value)  # "true", as written in the file, not Python's "True"
    if isinstance(value, float):
        if value != value:  # NaN: how pandas writes a missing value
            return ""
        if value.is_integer():
            return str(int(value))  # 1.0 is the class "1", as 1 and "1" are
    return str(value).strip()


def _raise_if_empty(file: Path, rows: list[str], what: str) -> None:
    if rows:
        count = f"{len(rows)} rows" if len(rows) > 1 else "1 row"
        raise AutotlError(f"{count} in {file} with {what} (first: {rows[0]}): fill them in or remove them")


# --------------------------------------------------------------------------- shared


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


def _resolve_class_names(found: list[str], given: Sequence[str] | None, where: Path) -> list[str]:
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


def _role(class_names: Sequence[str] | None) -> str:
    """What a loaded path is called in errors: a set read against training classes is the validation data."""
    return "dataset" if class_names is None else "validation data (--val-data)"


def _require_dir(path: str | Path, role: str = "dataset") -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise AutotlError(f"{role} path {root} does not exist")
    if not root.is_dir():
        raise AutotlError(f"{role} path {root} is a file: an image dataset is a folder with one sub-folder per class")
    return root


def _require_file(path: str | Path, role: str = "dataset") -> Path:
    file = Path(path).expanduser()
    if not file.exists():
        raise AutotlError(f"{role} path {file} does not exist")
    if file.is_dir():
        raise AutotlError(
            f"{role} path {file} is a folder: a text dataset is one {' / '.join(sorted(TEXT_SUFFIXES))} file"
        )
    return file


def stratified_split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split into (train, validation), class by class, reproducibly for a seed.

    Each class sends ``round(n * val_fraction)`` examples to validation, clamped
    so that it keeps at least one training example and, when it has two or
    more, gives at least one to validation. A class with a single example stays
    entirely in training (it cannot be in both). Both parts keep the dataset's
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
    is_val = np.zeros(len(dataset), dtype=bool)
    if val_parts:
        is_val[np.concatenate(val_parts)] = True
    return dataset.subset(np.flatnonzero(~is_val)), dataset.subset(np.flatnonzero(is_val))


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
        digest.update(memoryview(examples).cast("B"))
    else:
        for text in dataset.examples:
            _update_blob(digest, text.encode("utf-8"))
    return digest.hexdigest()


def _update_blob(digest, data: bytes) -> None:
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)
