"""Loading an image dataset: a folder holding one sub-folder of images per class."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from autotl.backbones.protocol import IMAGE
from autotl.data.dataset import Dataset, resolve_class_names, role_of
from autotl.data.images import UnreadableImageError, check_image_size, read_image
from autotl.errors import AutotlError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


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
    root = _require_dir(path, role_of(class_names))
    size = check_image_size(image_size)
    folders = _class_folders(root)
    if not folders:
        raise AutotlError(
            f"no class folders in {root}: put each class's images in its own sub-folder, e.g. {root}/cat/1.jpg"
        )
    names = resolve_class_names(sorted(f.name for f in folders), class_names, root)
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


def image_files_of(paths: Sequence[str]) -> list[str]:
    """The image files `paths` name, for prediction: a file as given, a folder's image files (in its
    sub-folders too, sorted), in the order of `paths`."""
    files: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = _image_files(path)
            if not found:
                raise AutotlError(f"no image files in folder {given} (looked for {_suffix_list()})")
            files += [str(p) for p in found]
        elif path.is_file():
            files.append(given)
        else:
            raise AutotlError(f"image file not found: {given}")
    return files


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


def _require_dir(path: str | Path, role: str = "dataset") -> Path:
    root = Path(path).expanduser()
    if not root.exists():
        raise AutotlError(f"{role} path {root} does not exist")
    if not root.is_dir():
        raise AutotlError(f"{role} path {root} is a file: an image dataset is a folder with one sub-folder per class")
    return root
