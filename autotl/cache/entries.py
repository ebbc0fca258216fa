"""The activation cache: what the frozen part of a backbone computes, kept on disk.

A trial with unfreeze depth k trains only the top k blocks and the head; the
layers below compute the same function for every trial that shares the cut.
Their outputs for a dataset split are computed once and kept here as ``.npy``
files, one *entry* per (backbone architecture and weights, cut tensor,
preprocessing, dataset split, numeric settings). An entry's key is a hash of
all of these, so a change to any of them (new weights, a different image size,
one image changed) is a different key and the stale entry is simply never read
again; ``autotl cache clear`` removes entries.

The cache is bounded: once a search has written its entries, the least recently used
others are removed until the whole fits the bound (``--cache-max-gb``, 10 GB by default).
``autotl cache prune`` removes entries unused for a while, or above a bound.

Entries are written to a temporary folder and renamed into place, so a
reader never sees half an entry and concurrent writers cannot corrupt one.
They are read memory-mapped: the trial worker processes of a search, and
later searches, share one copy through the page cache.

The cache lives in ``$AUTOTL_CACHE_DIR`` or ``~/.cache/autotl`` unless told otherwise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from autotl.errors import AutotlError

FORMAT_VERSION = 1
ACTIVATIONS_DIR = "activations"
META_FILE = "meta.json"
ARRAY_FILE = "activations.npy"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def default_cache_dir() -> Path:
    return Path(os.environ.get("AUTOTL_CACHE_DIR") or Path.home() / ".cache" / "autotl").expanduser()


def digest(value: Any) -> str:
    """A hex digest of a JSON-able value, or of an array's dtype, shape and bytes."""
    hasher = hashlib.sha256()
    if isinstance(value, np.ndarray):
        hasher.update(json.dumps([str(value.dtype), list(value.shape)]).encode())
        hasher.update(np.ascontiguousarray(value).data)
    else:
        hasher.update(json.dumps(value, sort_keys=True, default=str).encode())
    return hasher.hexdigest()


@dataclass
class Entry:
    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    @property
    def last_used(self) -> float:
        """When a trial last read the entry (or it was written): its metadata file's modification time."""
        try:
            return (self.path / META_FILE).stat().st_mtime
        except OSError:
            return 0.0

    def summary(self) -> dict[str, Any]:
        """What `autotl cache ls` lists of the entry."""
        meta = self.meta
        return {"key": self.key, "backbone": meta.get("backbone"), "tensor": meta.get("tensor"),
                "split": meta.get("split"), "examples": meta.get("examples"),
                "shape": "x".join(str(d) for d in meta.get("shape", [])), "dtype": meta.get("dtype"),
                "size_mb": round(self.size_bytes / 2**20, 2), "created_at": meta.get("created_at")}

    def load(self, in_memory: bool) -> np.ndarray:
        try:
            os.utime(self.path / META_FILE)  # used now: the last entry a bound evicts
        except OSError:  # a read-only cache is still read
            pass
        array = np.load(self.path / ARRAY_FILE, mmap_mode="r")
        return np.array(array) if in_memory else array


class ActivationCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.directory = self.root / ACTIVATIONS_DIR

    @staticmethod
    def key(model_fingerprint: str, tensor: str, split_fingerprint: str) -> str:
        return digest({"format": FORMAT_VERSION, "model": model_fingerprint, "tensor": tensor,
                       "split": split_fingerprint})[:32]

    def get(self, key: str) -> Entry | None:
        path = self.directory / key
        try:
            meta = json.loads((path / META_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not (path / ARRAY_FILE).is_file():
            return None
        return Entry(key, path, meta)

    def writer(self, key: str, shape: tuple[int, ...], dtype: str, meta: Mapping[str, Any]) -> "EntryWriter":
        return EntryWriter(self, key, shape, dtype, dict(meta))

    def entries(self) -> list[Entry]:
        if not self.directory.is_dir():
            return []
        found = (self.get(path.name) for path in sorted(self.directory.iterdir()) if path.is_dir())
        return sorted((e for e in found if e is not None), key=lambda e: e.meta.get("created_at", ""))

    def clear(self, keys: Iterable[str] | None = None) -> tuple[int, int]:
        """Remove the given entries (all when `keys` is None); returns (entries, bytes) removed.

        An unknown key is an error, and then nothing is removed.
        """
        unknown = [k for k in keys or () if self.get(k) is None]
        if unknown:
            raise AutotlError(f"no cache entry {unknown[0]!r} in {self.directory} (see `autotl cache ls`)")
        chosen = self.entries() if keys is None else [self.get(k) for k in keys]
        removed = 0
        for entry in chosen:
            removed += entry.size_bytes
            shutil.rmtree(entry.path, ignore_errors=True)
        if keys is None and self.directory.is_dir():  # leftovers of interrupted writes too
            for leftover in self.directory.glob(".tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        return len(chosen), removed

    def prune(self, *, unused_for: float | None = None, max_bytes: int | None = None,
              keep: Iterable[str] = (), spare_used_within: float = 0.0) -> tuple[int, int]:
        """Remove the entries unused for more than `unused_for` seconds, then the least recently used until the
        rest fits in `max_bytes`; never those of `keep` (what this search reads), nor those used in the last
        `spare_used_within` seconds (what another search may be about to read). Returns (entries, bytes)
        removed."""
        kept = set(keep)
        entries = sorted(self.entries(), key=lambda e: e.last_used)
        sizes = {entry.key: entry.size_bytes for entry in entries}
        total = sum(sizes.values())
        now = dt.datetime.now().timestamp()
        cutoff = None if unused_for is None else now - unused_for
        removed = freed = 0
        for entry in entries:
            stale = cutoff is not None and entry.last_used < cutoff
            over = max_bytes is not None and total > max_bytes
            if entry.key in kept or entry.last_used > now - spare_used_within or not (stale or over):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed, freed, total = removed + 1, freed + sizes[entry.key], total - sizes[entry.key]
        return removed, freed


class EntryWriter:
    """Fills one entry batch by batch, then publishes it atomically (`commit`)."""

    def __init__(self, cache: ActivationCache, key: str, shape: tuple[int, ...], dtype: str, meta: dict):
        self.cache, self.key, self.meta = cache, key, meta
        try:
            cache.directory.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=cache.directory))
        except OSError as exc:
            raise AutotlError(f"cannot write the activation cache in {cache.directory}: {exc.strerror}") from None
        self.array = np.lib.format.open_memmap(self._tmp / ARRAY_FILE, mode="w+", dtype=dtype, shape=shape)
        self._filled = 0

    def write(self, batch: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Write `batch` to the next rows, or to the given `rows` (each row exactly once)."""
        if self.array.dtype == np.float16 and not fits_float16(batch):
            self._widen()
        if rows is None:
            rows = slice(self._filled, self._filled + len(batch))
        self.array[rows] = batch
        self._filled += len(batch)

    def _widen(self) -> None:
        """Values beyond float16's range turned up: keep this entry in float32 after all."""
        wide = np.lib.format.open_memmap(self._tmp / "wide.npy", mode="w+", dtype="float32", shape=self.array.shape)
        wide[:] = self.array
        del self.array
        os.replace(self._tmp / "wide.npy", self._tmp / ARRAY_FILE)
        self.array = wide
        self.meta["dtype"] = "float32"

    def commit(self) -> Entry:
        if self._filled != len(self.array):
            raise RuntimeError(f"cache entry {self.key}: {self._filled} of {len(self.array)} rows written")
        self.array.flush()
        del self.array
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        (self._tmp / META_FILE).write_text(json.dumps({**self.meta, "created_at": now}, indent=2))
        final = self.cache.directory / self.key
        try:
            os.rename(self._tmp, final)
        except OSError:  # another process published the same entry first: keep theirs
            shutil.rmtree(self._tmp, ignore_errors=True)
        entry = self.cache.get(self.key)
        if entry is None:
            raise AutotlError(f"cache entry {final} could not be written")
        return entry

    def abort(self) -> None:
        self.array = None
        shutil.rmtree(self._tmp, ignore_errors=True)


def storage_dtype(dtype: Any, requested: str) -> str:
    """The dtype an activation of `dtype` is stored in, for `requested` float16 or float32.

    Integer tensors (a padding mask) keep their dtype; bfloat16 has no ``.npy``
    form, so it is widened to float32 (or narrowed to float16 when asked).
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f" and "bfloat16" not in dtype.name:
        return dtype.name
    return "float16" if requested == "float16" else "float32"


def fits_float16(batch: np.ndarray) -> bool:
    finite = np.isfinite(batch)
    return bool(np.all(np.abs(batch[finite]) < FLOAT16_MAX))
