"""Weights sources: where a plugin's pretrained weights come from, and what identifies them.

A weights source is a hub handle or preset name (``hf://...``, ``bert_tiny_en_uncased``),
a local file or folder, a file shipped inside an installed package, or ``"none"``.
These helpers are shared by the built-in plugins and open to outside ones.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

from autotl.errors import AutotlError


def looks_like_path(source: str) -> bool:
    """Whether `source` is spelled as a path (so a missing one is an error, not a hub name to download)."""
    return source.startswith((".", "~")) or "/" in source or "\\" in source or os.sep in source


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_file(package: str, relative: str, install: str) -> Path:
    """A file shipped inside the installed `package`, found without importing it.

    Weight and data packages often declare dependencies autotl does not install
    (torch, sentence-transformers), so importing them could fail where reading
    their files works. `install` is the command that installs the package.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AutotlError(f"the {package} package is not installed: install it with `{install}`")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise AutotlError(f"{path} is missing from the installed {package}: reinstall it with `{install}`")
    return path


def describe_weights_source(weights: str) -> str:
    """What a search records as its weights: a local file or folder becomes its absolute path plus a
    digest of its files' names, sizes and times (resuming with changed weights is then refused);
    a hub handle or ``"none"`` is kept as given."""
    path = Path(weights).expanduser()
    if not path.exists():
        return weights
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        digest.update(json.dumps([str(file.relative_to(path.parent)), stat.st_size, stat.st_mtime_ns]).encode())
    return f"{path.resolve()}#{digest.hexdigest()[:16]}"
