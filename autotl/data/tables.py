"""Loading a text dataset: a ``.csv`` / ``.tsv`` table or a ``.jsonl`` file of text and label columns."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from autotl.backbones.protocol import TEXT
from autotl.data.dataset import Dataset, one_line, resolve_class_names, role_of
from autotl.errors import AutotlError

CSV_SUFFIXES = frozenset({".csv", ".tsv"})
JSONL_SUFFIXES = frozenset({".jsonl", ".json-lines", ".ndjson"})
TEXT_SUFFIXES = CSV_SUFFIXES | JSONL_SUFFIXES
MAX_FIELD_CHARS = 2**31 - 1  # the largest the csv module takes on every platform (a C long)
# A number written with only zeros after its point names the same class as the integer ("1.0" is "1").
_WHOLE_NUMBER = re.compile(r"([+-]?\d+)\.0*")


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
    for, so ``1``, ``1.0``, ``"1"`` and ``"1.0"`` are one class ``"1"`` (``"01"`` and ``"cat"``
    are others); ``true`` is ``"true"``. A JSON list or object is not a label (one
    label per row).

    A row whose text is empty (or only spaces), or whose label is missing or
    empty (a JSON line without the field, ``null``, NaN), is skipped and recorded
    in ``skipped``, as an unreadable image is; with ``strict=True`` it is an
    error. So is a table with no text or no label at all, or a class whose every
    row is empty. A column no row has is an error (the wrong --text-col or --label-col).

    Sources are ``"file.csv:ROW"`` with the header as row 1 (as a spreadsheet
    numbers rows) or ``"file.jsonl:LINE"`` (1-based; blank lines are ignored).
    """
    file = _require_file(path, role_of(class_names))
    suffix = file.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise AutotlError(f"{file} is not a supported text table: use one of {' '.join(sorted(TEXT_SUFFIXES))}")
    records = _csv_records(file) if suffix in CSV_SUFFIXES else _jsonl_records(file)
    rows = _collect(file, records, text_col, label_col)
    if not rows.texts and not rows.empty and not rows.unlabeled:
        raise AutotlError(f"no rows in {file}: it needs a header line and at least one row per class")
    _check_unlabeled(file, rows, label_col, strict)
    _check_empty_texts(file, rows, text_col, strict)
    found = sorted(set(rows.labels) | {label for _, label in rows.empty})
    names = resolve_class_names(found, class_names, file)
    _check_classes_have_text(file, found, rows)
    index = {name: i for i, name in enumerate(names)}
    return Dataset(
        modality=TEXT,
        examples=rows.texts,
        labels=np.asarray([index[label] for label in rows.labels], dtype=np.int64),
        class_names=list(names),
        sources=rows.sources,
        skipped=sorted([(source, "empty text") for source, _ in rows.empty]
                       + [(source, "no label") for source in rows.unlabeled], key=lambda s: _row_number(s[0])),
    )


# A record is (source, available column names, row mapping).
Record = tuple[str, list[str], dict]


def column_values(path: str | Path, column: str) -> Iterator[tuple[str, str | None, str | None]]:
    """``(source, value, error)`` of each row of a table's `column`, read as it goes (for prediction over a
    file of any size). A row that lacks the column, or a JSON line that does not parse, is that row's error
    and the rows after it still come; a CSV header without the column is an error of the whole file."""
    file = _require_file(path, "input")
    if file.suffix.lower() in CSV_SUFFIXES:
        for source, columns, row in _csv_records(file):
            if column not in columns:
                raise AutotlError(f"{file} has no column {column!r}: available columns are "
                                  f"{', '.join(repr(c) for c in columns) or 'none'} (choose one with --column)")
            yield source, row.get(column) or "", None
        return
    with _open_text(file) as handle:
        try:
            for line_number, line in enumerate(handle, start=1):
                if line.strip():
                    yield _json_value(file, line_number, line, column)
        except UnicodeDecodeError as exc:
            raise _not_utf8(file, exc) from None


def _json_value(file: Path, line_number: int, line: str, column: str) -> tuple[str, str | None, str | None]:
    source = f"{file.name}:{line_number}"
    try:
        _, obj = _parse_json_line(file, line_number, line)
    except AutotlError as exc:
        return source, None, str(exc)
    if obj.get(column) is None:
        return source, None, f"no {column!r} field"
    value = obj[column]
    return source, value if isinstance(value, str) else json.dumps(value), None


def _csv_records(file: Path) -> Iterator[Record]:
    delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
    # utf-8-sig: spreadsheet exports often start with a byte-order mark, which
    # would otherwise become part of the first column's name.
    # A text longer than the csv module's default field limit (131,072 characters) is still one
    # text: it is cut to the sequence length later, as a long JSONL text is.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS))
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
            raise AutotlError(f"{file}:{reader.line_num} is not valid CSV: {one_line(exc)}") from None
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
    unlabeled: list[str] = field(default_factory=list)  # sources of the rows without a label


def _collect(file: Path, records: Iterable[Record], text_col: str, label_col: str) -> _Rows:
    """The rows, sorted into kept, empty text and unlabeled. A CSV's header must name both columns;
    a JSON line may lack one (that row is then empty or unlabeled), but some line must have each."""
    # Checked once all rows are read: a column that no row has is the wrong --text-col / --label-col.
    rows = _Rows()
    first: tuple[str, list[str]] | None = None
    seen: set[str] = set()
    for source, columns, row in records:
        first = first or (source, columns)
        seen.update(columns)
        text, label = row.get(text_col), _label_str(source, label_col, row.get(label_col))
        if not isinstance(text, str) and text is not None:
            raise AutotlError(f"{source}: the {text_col!r} value must be a string, got {type(text).__name__}")
        if not label:
            rows.unlabeled.append(source)
        elif text is None or not text.strip():
            rows.empty.append((source, label))
        else:
            rows.texts.append(text)
            rows.labels.append(label)
            rows.sources.append(source)
    absent = tuple(column for column in (text_col, label_col) if column not in seen)
    if first is not None and absent:
        _check_columns(file, first[0], first[1], absent)
    return rows


def _check_unlabeled(file: Path, rows: _Rows, label_col: str, strict: bool) -> None:
    if not rows.unlabeled:
        return
    first = rows.unlabeled[0]
    if not rows.texts and not rows.empty:
        raise AutotlError(f"no row of {file} has a label in column {label_col!r} (first: {first}): "
                          "fill them in, or choose the label column with --label-col")
    if strict:
        count = f"{len(rows.unlabeled)} rows" if len(rows.unlabeled) > 1 else "1 row"
        raise AutotlError(f"{count} in {file} with no label (first: {first}): label them or remove them, "
                          "or run without --strict to skip them")


def _row_number(source: str) -> int:
    return int(source.rsplit(":", 1)[1])


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
    text = str(value).strip()
    whole = _WHOLE_NUMBER.fullmatch(text)
    return whole.group(1) if whole else text  # "1.0" in a CSV is the class "1" too


def _require_file(path: str | Path, role: str = "dataset") -> Path:
    file = Path(path).expanduser()
    if not file.exists():
        raise AutotlError(f"{role} path {file} does not exist")
    if file.is_dir():
        raise AutotlError(
            f"{role} path {file} is a folder: a text dataset is one {' / '.join(sorted(TEXT_SUFFIXES))} file"
        )
    return file
