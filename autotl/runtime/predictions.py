"""Predicting a whole dataset: inputs streamed in batches, one output row per input, memory bounded.

`autotl predict MODEL_DIR PATH...` takes image files and folders, texts, `.txt` files, CSV/JSONL tables (a
column of texts, or of image paths), or ``-`` for one input per line of stdin. `inputs_of` turns them into a
stream of ``(source, value)`` pairs without reading them; `predicted_rows` takes `batch_size` of them at a
time, reads each (an unreadable one becomes a row with its error, and the run goes on) and runs the readable
ones together; a writer (`writer_for`) puts each row out as soon as its batch is done. Nothing holds more than
one batch of inputs, so memory does not grow with the dataset, and the rows come out in the inputs' order.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, TextIO

import numpy as np

from autotl.errors import AutotlError, UsageError, first_line

STDIN = "-"
OUT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl"}
DEFAULT_COLUMN = {"image": "path", "text": "text"}  # the column a table's inputs are read from


@dataclass
class Row:
    """One input's prediction: its label and top classes, or why it could not be read."""

    source: str
    label: str | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    probabilities: dict[str, float] | None = None  # every class's, for --json
    error: str | None = None


def inputs_of(arguments: Iterable[str], modality: str, *, as_text: bool = False, column: str | None = None,
              stdin: TextIO | None = None) -> Iterator[tuple[str, Any]]:
    """``(source, value)`` of every input the arguments name, in order, lazily.

    For an image model: a folder's image files, an image file, a table's column of paths (relative to the
    table), or stdin's lines as paths. For a text model: a table's column of texts, a ``.txt`` file's content,
    stdin's lines, or the argument itself (every argument, with `as_text`)."""
    from autotl.data import TEXT_SUFFIXES

    column = column or DEFAULT_COLUMN["image" if modality == "image" else "text"]
    for argument in arguments:
        path = Path(argument).expanduser()
        if as_text:
            yield argument, argument
        elif argument == STDIN:
            yield from _stdin_values(stdin or sys.stdin, modality)
        elif path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
            yield from _table_values(path, column, modality)
        elif modality == "image":
            yield from _image_paths(argument)
        elif path.is_file() and path.suffix == ".txt":
            yield argument, path.read_text().strip()
        else:
            yield argument, argument


def check_arguments(arguments: Iterable[str], modality: str, as_text: bool) -> None:
    """Refuse, before any work, an image argument that names nothing: one line, exit 2."""
    if modality == "image" and not as_text:
        missing = [a for a in arguments if a != STDIN and not Path(a).expanduser().exists()]
        if missing:
            raise UsageError(f"image file or folder not found: {missing[0]}")


def _stdin_values(stream: TextIO, modality: str) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(stream, start=1):
        value = line.rstrip("\r\n")
        if value.strip():
            yield (value if modality == "image" else f"stdin:{number}"), value


def _table_values(path: Path, column: str, modality: str) -> Iterator[tuple[str, Any]]:
    from autotl.data.tables import column_values

    for source, value, error in column_values(path, column):
        if error is not None:
            yield source, _Unreadable(error)
        elif modality == "image":
            image = Path(value).expanduser()
            yield source, str(image if image.is_absolute() else path.parent / image)
        else:
            yield source, value


def _image_paths(argument: str) -> Iterator[tuple[str, Any]]:
    from autotl.data.folders import image_files_of

    for file in image_files_of([argument]):
        yield file, file


class _Unreadable(str):
    """An input known to be unreadable before it is read (a table row without the column): its reason."""


def predicted_rows(model, inputs: Iterable[tuple[str, Any]], batch_size: int = 32,
                   top_k: int = 3) -> Iterator[Row]:
    """A `Row` per input of `inputs` (``(source, value)``), in order, `batch_size` inputs in memory at a time."""
    stream = iter(inputs)
    while batch := list(islice(stream, batch_size)):
        yield from _predict_batch(model, batch, batch_size, top_k)


def _predict_batch(model, batch: list[tuple[str, Any]], batch_size: int, top_k: int) -> list[Row]:
    rows, ready, positions = [], [], []
    for source, value in batch:
        row = Row(source)
        if isinstance(value, _Unreadable):
            row.error = str(value)
        else:
            try:
                ready.append(model.prepare(value))
                positions.append(len(rows))
            except AutotlError as exc:
                row.error = first_line(exc)
            except OSError as exc:  # a file that vanished or cannot be opened
                row.error = first_line(exc)
        rows.append(row)
    if ready:
        for position, probabilities in zip(positions, model.probabilities(ready, batch_size)):
            _fill(rows[position], model, probabilities, top_k)
    return rows


def _fill(row: Row, model, probabilities: np.ndarray, top_k: int) -> None:
    row.label, row.probabilities = model.labelled(probabilities)
    order = np.argsort(-probabilities, kind="stable")
    row.top = [(model.labels[int(i)], float(probabilities[i])) for i in order[:top_k]]


def check_out(out: str | None, as_json: bool) -> str | None:
    """The format `out` is written in (``csv`` or ``jsonl``), None for stdout; a one-line usage error for an
    extension that names neither, or `as_json` with a file."""
    if out is None:
        return None
    if as_json:
        raise UsageError("--json prints to stdout; --out FILE writes CSV or JSONL by its extension")
    kind = OUT_SUFFIXES.get(Path(out).suffix.lower())
    if kind is None:
        raise UsageError(f"--out {out}: give a file ending in {' or '.join(OUT_SUFFIXES)}")
    return kind


def writer_for(out: str | None, as_json: bool, top_k: int, stream: TextIO | None = None) -> "RowWriter":
    """Where and how rows go: `out`'s format by its extension (CSV or JSONL), else stdout as a JSON array
    (`as_json`) or as lines a person reads."""
    kind = check_out(out, as_json)
    if kind is None:
        stream = stream or sys.stdout
        return JsonArrayWriter(stream) if as_json else LineWriter(stream)
    handle = open(Path(out).expanduser(), "w", encoding="utf-8", newline="")
    return CsvWriter(handle, top_k) if kind == "csv" else JsonlWriter(handle)


class RowWriter:
    """Writes rows as they come; `close` ends the output (and closes a file it opened)."""

    def __init__(self, stream: TextIO, owns: bool = False):
        self.stream, self.owns = stream, owns
        self.written = self.unreadable = 0

    def write(self, row: Row) -> None:
        self.written += 1
        self.unreadable += row.error is not None
        self._write(row)
        self.stream.flush()

    def _write(self, row: Row) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.owns:
            self.stream.close()


class LineWriter(RowWriter):
    """``label<TAB>class=p  class=p<TAB>source``, or ``-<TAB>error: why<TAB>source``: today's stdout."""

    def _write(self, row: Row) -> None:
        from autotl.insight.table import clip

        if row.error is not None:
            self.stream.write(f"-\terror: {row.error}\t{clip(row.source)}\n")
        else:
            self.stream.write(f"{row.label}\t" + "  ".join(f"{k}={v:.4f}" for k, v in row.top)
                              + f"\t{clip(row.source)}\n")


class JsonArrayWriter(RowWriter):
    """A JSON array of ``{source, label, probabilities}`` (every class; ``error`` for an unreadable input),
    written element by element."""

    def _write(self, row: Row) -> None:
        item = {"source": row.source, "label": row.label, "probabilities": row.probabilities}
        if row.error is not None:
            item["error"] = row.error
        self.stream.write(("[\n" if self.written == 1 else ",\n") + json.dumps(item, indent=2))

    def close(self) -> None:
        self.stream.write("\n]\n" if self.written else "[]\n")
        super().close()


class CsvWriter(RowWriter):
    """``source,label,top1,p1,...,error``: the top `top_k` classes and their probabilities."""

    def __init__(self, stream: TextIO, top_k: int):
        super().__init__(stream, owns=True)
        self.top_k = top_k
        self.csv = csv.writer(stream)
        self.csv.writerow(["source", "label", *(f"{name}{i}" for i in range(1, top_k + 1) for name in ("top", "p")),
                           "error"])

    def _write(self, row: Row) -> None:
        top = [value for label, p in row.top for value in (label, f"{p:.6f}")]
        top += [""] * (2 * self.top_k - len(top))
        self.csv.writerow([row.source, row.label or "", *top, row.error or ""])


class JsonlWriter(RowWriter):
    """One ``{"source", "label", "top": [{"label", "probability"}], "error"}`` object per line."""

    def __init__(self, stream: TextIO):
        super().__init__(stream, owns=True)

    def _write(self, row: Row) -> None:
        top = [{"label": label, "probability": round(p, 6)} for label, p in row.top]
        self.stream.write(json.dumps({"source": row.source, "label": row.label, "top": top, "error": row.error})
                          + "\n")

