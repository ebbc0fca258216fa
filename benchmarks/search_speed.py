"""Search speed: autotl against plain KerasTuner and against one pass through the backbone.

    python benchmarks/search_speed.py                  # both workloads, 20 trials (hours on 2 cores)
    python benchmarks/search_speed.py --workload images --plain-trials all
    python benchmarks/search_speed.py --quick          # smoke test -> results/search_speed_quick.{md,json}

Two workloads, each measured in this one process on the same data, search
space, trial count and seeds:

* ``images``: `efficientnet_lite0` (ImageNet weights) on Fashion-MNIST at 96x96:
  1,000 training images (100 per class, seed 0), 1,000 validation images (100 per
  class from the rest of the official train file), test = the first 2,000 images
  of the official test file;
* ``text``: `bert` (all-MiniLM-L6-v2) on Rotten Tomatoes snippets (``plot`` rows
  dropped): 2,000 training, 1,000 validation, 2,000 test, random and disjoint
  (seed 0); sequence length 64.

For each workload:

(a) the floor: one forward pass of train + validation through the backbone
    (`model.predict`, after one warm-up batch; the fastest of the batch sizes tried);
(c) autotl (`autotl.api.search`), three runs: ``cold`` (unfreeze depth 0-2, fresh
    activation cache), ``warm`` (the same again, new search name, same cache: it
    should do no backbone pass) and ``depth0`` (feature extraction only, another
    fresh cache), each exported and scored on the test split;
(b) plain KerasTuner over the end-to-end model (benchmarks/plain_keras_tuner.py),
    replaying exactly the hyperparameters of autotl's cold run: on a fixed sample of
    its trials (``--plain-trials``, default 5, chosen with RandomState(0), every
    unfreeze depth tried by autotl included), or on all of them. Its time for the
    full search is projected as mean trial time x trial count.

For the depth-0 run it also times the trials' head phases, arithmetic only
(`head_arithmetic.py`, TensorFlow backend): the floor plus that sum is what no
depth-0 search on this machine can go below.

Wall time, peak memory (RSS of this process and its descendants, sampled from
/proc every 0.2 s), best validation accuracy and test accuracy go to
``OUT/search_speed.{md,json}`` with the machine and the command line, and the
three targets: autotl >= 10x faster than plain KerasTuner at the same best
validation accuracy (within 1 point); the depth-0 search within 3x the floor;
no backbone pass in the warm run. A run of one workload keeps the other
workload's earlier results in those files.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "examples"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import head_arithmetic  # noqa: E402
import make_datasets  # noqa: E402
from trial_memory import rss_mb  # noqa: E402

from autotl import api

from autotl.export import exporter  # noqa: E402
from autotl.runtime import loaded  # noqa: E402
from autotl import data as data_module  # noqa: E402
from autotl.errors import AutotlError  # noqa: E402
from autotl.search.records import TrialData  # noqa: E402
from autotl.insight.progress import Reporter  # noqa: E402
from autotl.backbones.registry import load_registry  # noqa: E402
from autotl.store import Store  # noqa: E402

IMAGE_SIZE = 96
SEQUENCE_LENGTH = 64
BATCH_SIZE = 32
PATIENCE = 3
SEED = 0
DEPTHS = {"min": 0, "max": 2}
ACCURACY_TOLERANCE = 0.01  # "the same best validation accuracy": within 1 point
SPEEDUP_TARGET = 10.0
FLOOR_RATIO_TARGET = 3.0


@dataclasses.dataclass
class Workload:
    name: str
    backbone: str
    modality: str
    epochs: int
    finetune_epochs: int
    sizes: dict[str, int]  # images: per_class, test; text: train, val, test


@dataclasses.dataclass
class Settings:
    trials: int
    plain_trials: int | None  # None: all of autotl's trials
    floor_batch_sizes: tuple[int, ...]
    quick: bool


WORKLOADS = {
    "images": Workload("images", "efficientnet_lite0", "image", 10, 5, {"per_class": 100, "test": 2000}),
    "text": Workload("text", "bert", "text", 5, 3, {"train": 2000, "val": 1000, "test": 2000}),
}
QUICK_SIZES = {"images": {"per_class": 10, "test": 200}, "text": {"train": 100, "val": 50, "test": 100}}
QUICK = {"trials": 3, "epochs": 1, "finetune_epochs": 1, "plain_trials": 2, "floor_batch_sizes": (32,)}
FULL_FLOOR_BATCH_SIZES = (32, 128)


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- memory


def descendant_pids(pid: int | str = "self") -> list[str]:
    """Every process below `pid` (the trial workers and anything they start), from /proc."""
    found, stack = [], [str(pid)]
    while stack:
        for task in Path(f"/proc/{stack.pop()}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:  # the process or thread ended meanwhile
                continue
            found += children
            stack += children
    return found


def total_rss_mb() -> float:
    return rss_mb() + sum(rss_mb(pid) for pid in descendant_pids())


class PeakMemory:
    """Peak RSS of this process plus its descendants since the last `reset`, sampled every 0.2 s."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def reset(self) -> float:
        """Start a new phase; returns the RSS at its start."""
        now = total_rss_mb()
        with self._lock:
            self.peak_mb = now
        return now

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = total_rss_mb()
            with self._lock:
                self.peak_mb = max(self.peak_mb, now)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(memory: PeakMemory, action):
    """Run `action()`; returns (its result, wall seconds, memory figures of the phase)."""
    start_mb = memory.reset()
    started = time.perf_counter()
    value = action()
    seconds = time.perf_counter() - started
    return value, seconds, {"rss_start_mb": round(start_mb, 1), "peak_rss_mb": round(memory.peak_mb, 1)}


# --------------------------------------------------------------------------- data


def write_images(folder: Path, sizes: dict[str, int]) -> dict[str, Path]:
    """Train / val / test class folders of Fashion-MNIST PNGs (grey; autotl's loader makes them RGB)."""
    source = make_datasets.FASHION_MNIST_DIR
    images, labels = make_datasets.read_fashion_mnist("train", source)
    train = make_datasets.sample_per_class(labels, sizes["per_class"], SEED)
    rest = np.setdiff1d(np.arange(len(labels)), train)
    val = rest[make_datasets.sample_per_class(labels[rest], sizes["per_class"], SEED)]
    test_images, test_labels = make_datasets.read_fashion_mnist("test", source)
    classes = make_datasets.FASHION_MNIST_CLASSES
    paths = {split: folder / split for split in ("train", "val", "test")}
    make_datasets.write_image_folder(paths["train"], images, labels, train, classes)
    make_datasets.write_image_folder(paths["val"], images, labels, val, classes)
    make_datasets.write_image_folder(paths["test"], test_images, test_labels, np.arange(sizes["test"]), classes)
    return paths


def write_texts(folder: Path, sizes: dict[str, int]) -> dict[str, Path]:
    """Train / val / test CSVs (text,label) of Rotten Tomatoes snippets, random and disjoint."""
    rows = make_datasets.read_rotten_tomatoes()
    order = np.random.default_rng(SEED).permutation(len(rows))
    folder.mkdir(parents=True, exist_ok=True)
    paths, start = {}, 0
    for split in ("train", "val", "test"):
        paths[split] = folder / f"{split}.csv"
        with open(paths[split], "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows[i] for i in order[start:start + sizes[split]])
        start += sizes[split]
    return paths


def load_splits(workload: Workload, paths: dict[str, Path]) -> dict[str, data_module.Dataset]:
    """The splits as autotl's loader reads them, so (a), (b) and (c) see identical inputs."""
    options = dict(image_size=(IMAGE_SIZE, IMAGE_SIZE), text_col="text", label_col="label")
    train = data_module.load_dataset(paths["train"], workload.modality, **options)
    return {"train": train, **{split: data_module.load_dataset(paths[split], workload.modality,
                                                               class_names=train.class_names, **options)
                               for split in ("val", "test")}}


def concatenate(parts: list):
    """Model inputs of several splits as one (arrays, or BERT's dicts of arrays)."""
    if isinstance(parts[0], dict):
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    return np.concatenate(parts)


def head_of(inputs, count: int):
    if isinstance(inputs, dict):
        return {key: value[:count] for key, value in inputs.items()}
    return inputs[:count]


# --------------------------------------------------------------------------- (a) the floor


def time_floor(backbone, weights: str, preprocessor, inputs, batch_sizes: tuple[int, ...]) -> dict[str, Any]:
    """One forward pass of `inputs` per batch size, each after a one-batch warm-up (tracing excluded)."""
    import keras

    started = time.perf_counter()
    model = backbone.build(weights, preprocessor)
    build_s = time.perf_counter() - started
    passes = {}
    for batch_size in batch_sizes:
        model.predict(head_of(inputs, batch_size), batch_size=batch_size, verbose=0)
        started = time.perf_counter()
        model.predict(inputs, batch_size=batch_size, verbose=0)
        passes[batch_size] = time.perf_counter() - started
        log(f"  floor: batch {batch_size}: {passes[batch_size]:.1f}s")
    del model
    keras.utils.clear_session(free_memory=True)
    best = min(passes, key=passes.get)
    return {"seconds": round(passes[best], 2), "batch_size": best, "build_s": round(build_s, 2),
            "pass_s_by_batch_size": {str(b): round(s, 2) for b, s in passes.items()}}


# --------------------------------------------------------------------------- (c) autotl


class ProgressLines(Reporter):
    """One line per finished trial on stderr."""

    def __init__(self, label: str):
        self.label = label
        self._started = time.perf_counter()

    def trial_started(self, number, max_trials, hyperparameters, **_progress):
        self._started = time.perf_counter()

    def trial_ended(self, trial):
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        log(f"  {self.label}: trial {trial.number} {trial.status}, val_accuracy {value}, "
            f"{time.perf_counter() - self._started:.0f}s, depth {trial.hyperparameters.get('unfreeze_depth')}, "
            f"data path {data_path_status(trial)}")


def search_config(workload: Workload, paths: dict[str, Path], name: str, space_file: Path, cache_dir: Path,
                  trials: int, workdir: Path) -> api.SearchConfig:
    options = dict(data=str(paths["train"]), val_data=str(paths["val"]), backbone=workload.backbone, name=name,
                   max_trials=trials, epochs=workload.epochs, finetune_epochs=workload.finetune_epochs,
                   batch_size=BATCH_SIZE, patience=PATIENCE, seed=SEED, text_col="text", label_col="label",
                   space_file=str(space_file), workdir=str(workdir), cache_dir=str(cache_dir))
    if workload.modality == "image":
        options["image_size"] = IMAGE_SIZE
    else:
        options["sequence_length"] = SEQUENCE_LENGTH
    return api.SearchConfig(**options)


def run_autotl(config: api.SearchConfig, store: Store, test: data_module.Dataset, export_dir: Path,
               memory: PeakMemory) -> dict[str, Any]:
    log(f"autotl {config.name}: {config.max_trials} trials, activation cache {config.cache_dir}")
    result, seconds, rss = measure(memory, lambda: api.search(config, store, reporter=ProgressLines(config.name)))
    exporter.export(store, config.name, export_dir, formats=("keras",))
    inputs = test.sources if test.modality == "image" else list(test.examples)
    predicted = [p.label for p in loaded.predict(export_dir, inputs)]
    truth = [test.class_names[label] for label in test.labels]
    trials = [trial_record(trial) for trial in result.trials]
    summary = {
        "search": config.name, "wall_s": round(seconds, 1), **rss,
        "best_trial": result.best.number, "best_val_accuracy": result.best.value,
        "best_hyperparameters": trial_record(result.best)["hyperparameters"],
        "test_accuracy": float(np.mean([p == t for p, t in zip(predicted, truth)])),
        "cache_dir": config.cache_dir, "data_paths": cache_counts(trials),
        "backbone_passes": backbone_passes(trials), "trials": trials,
    }
    log(f"autotl {config.name}: {seconds:.0f}s, best val {result.best.value:.4f}, "
        f"test {summary['test_accuracy']:.4f}, backbone passes {summary['backbone_passes']}")
    return summary


def trial_record(trial) -> dict[str, Any]:
    return {"number": trial.number, "status": trial.status, "val_accuracy": trial.value,
            "duration_s": None if trial.duration_s is None else round(trial.duration_s, 1),
            "hyperparameters": {k: v for k, v in trial.hyperparameters.items() if not k.startswith("tuner/")},
            "data_path": getattr(trial, "data_path", None)}


def data_path_status(trial) -> str | None:
    """How autotl fed the trial (its `data_path`): "computed" (it ran the backbone to fill the
    activation cache), "hit" (cached activations only) or "bypassed" (end to end); None if not recorded."""
    return (getattr(trial, "data_path", None) or {}).get("status")


def cache_counts(trials: list[dict]) -> dict[str, int] | None:
    """How many trials took each data path (None: autotl records none)."""
    statuses = [(t["data_path"] or {}).get("status") for t in trials]
    if all(status is None for status in statuses):
        return None
    return dict(Counter(str(status) for status in statuses))


def backbone_passes(trials: list[dict]) -> int | None:
    """Trials that ran a backbone pass to fill the cache (data path "computed")."""
    counts = cache_counts(trials)
    return None if counts is None else counts.get("computed", 0)


# --------------------------------------------------------------------------- (b) plain KerasTuner


def sample_trials(trials: list[dict], size: int | None, seed: int = SEED) -> list[int]:
    """`size` trial numbers (all when None) drawn with RandomState(seed); every depth tried appears."""
    completed = [t for t in trials if t["status"] == "completed"]
    numbers = [t["number"] for t in completed]
    if size is None or size >= len(numbers):
        return numbers
    depth = {t["number"]: t["hyperparameters"]["unfreeze_depth"] for t in completed}
    rng = np.random.RandomState(seed)
    chosen = [int(n) for n in rng.choice(numbers, size=size, replace=False)]
    for missing in sorted(set(depth.values()) - {depth[n] for n in chosen}):
        candidates = [n for n in numbers if depth[n] == missing]
        surplus = [n for n in chosen if sum(depth[m] == depth[n] for m in chosen) > 1]
        if surplus:
            chosen.remove(surplus[-1])
        chosen.append(candidates[rng.randint(len(candidates))])
    return sorted(chosen)


def run_plain(workload: Workload, splits: dict, space: dict, autotl_trials: list[dict], sample: list[int],
              trials_total: int, directory: Path, memory: PeakMemory) -> dict[str, Any]:
    import plain_keras_tuner as plain

    backbone, preprocessor = backbone_and_preprocessor(workload)
    hypermodel = plain.PlainTransferHyperModel(
        backbone, backbone.default_weights, preprocessor, len(splits["train"].class_names), space,
        workload.epochs, workload.finetune_epochs, PATIENCE)
    by_number = {t["number"]: t for t in autotl_trials}
    replay = [(n, by_number[n]["hyperparameters"]) for n in sample]
    x = {split: preprocessor(splits[split].examples) for split in splits}
    log(f"plain KerasTuner: trials {sample} of autotl's {trials_total}")
    (tuner, trials), seconds, rss = measure(memory, lambda: plain.run_search(
        hypermodel, replay, (x["train"], splits["train"].labels), (x["val"], splits["val"].labels),
        BATCH_SIZE, SEED, directory))
    test_accuracy = plain.test_accuracy(tuner, x["test"], splits["test"].labels, BATCH_SIZE)
    rows = [plain_row(trial, by_number[trial.number]) for trial in trials]
    for row in rows:
        log(f"  plain trial {row['number']}: val {row['plain_val_accuracy']}, autotl {row['autotl_val_accuracy']}, "
            f"{row['plain_seconds']}s")
    mean_s = float(np.mean([row["plain_seconds"] for row in rows]))
    return {"sampled": len(sample) < trials_total, "sampled_trials": sample, "wall_s": round(seconds, 1), **rss,
            "mean_trial_s": round(mean_s, 1), "projected_wall_s": round(mean_s * trials_total, 1),
            "projected_by_depth_s": round(projection_by_depth(rows, autotl_trials), 1),
            "best_val_accuracy": max_or_none(row["plain_val_accuracy"] for row in rows),
            "test_accuracy_of_best": test_accuracy, "trials": rows}


def projection_by_depth(rows: list[dict], autotl_trials: list[dict]) -> float:
    """A cross-check of the projection: each of autotl's trials costed at the mean plain time of the
    sampled trials with its unfreeze depth (the sample holds every depth tried)."""
    seconds: dict[int, list[float]] = {}
    for row in rows:
        seconds.setdefault(row["unfreeze_depth"], []).append(row["plain_seconds"])
    depths = [t["hyperparameters"]["unfreeze_depth"] for t in autotl_trials]
    return float(sum(np.mean(seconds[d]) for d in depths if d in seconds))


def backbone_and_preprocessor(workload: Workload):
    backbone = load_registry([]).get(workload.backbone)
    options = {"image_size": (IMAGE_SIZE, IMAGE_SIZE), "sequence_length": SEQUENCE_LENGTH}
    return backbone, backbone.preprocessor(backbone.default_weights, options)


def plain_row(trial, autotl_trial: dict) -> dict[str, Any]:
    return {"number": trial.number, "status": str(trial.status),
            "unfreeze_depth": autotl_trial["hyperparameters"]["unfreeze_depth"],
            "plain_val_accuracy": trial.val_accuracy, "autotl_val_accuracy": autotl_trial["val_accuracy"],
            "plain_seconds": round(trial.seconds, 1), "autotl_seconds": autotl_trial["duration_s"]}


def max_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return max(values) if values else None


# --------------------------------------------------------------------------- one workload


def run_workload(workload: Workload, settings: Settings, workdir: Path, memory: PeakMemory) -> dict[str, Any]:
    folder = workdir / workload.name
    log(f"== {workload.name}: writing the splits to {folder}")
    writer = write_images if workload.modality == "image" else write_texts
    paths = writer(folder / "data", workload.sizes)
    splits = load_splits(workload, paths)

    log(f"(a) floor: {workload.backbone}, one pass of {len(splits['train']) + len(splits['val'])} examples")
    backbone, preprocessor = backbone_and_preprocessor(workload)
    inputs = concatenate([preprocessor(splits[s].examples) for s in ("train", "val")])
    floor, _, floor_rss = measure(memory, lambda: time_floor(backbone, backbone.default_weights, preprocessor,
                                                              inputs, settings.floor_batch_sizes))
    floor.update(floor_rss)
    del inputs

    store = Store(f"sqlite:///{folder / 'autotl.db'}")
    space_files = {"depth012": folder / "space_depth012.json", "depth0": folder / "space_depth0.json"}
    space_files["depth012"].write_text(json.dumps({"unfreeze_depth": DEPTHS}))
    space_files["depth0"].write_text(json.dumps({"unfreeze_depth": 0}))
    runs = {}
    for run, space, cache in (("cold", "depth012", "cache_depth012"), ("warm", "depth012", "cache_depth012"),
                              ("depth0", "depth0", "cache_depth0")):
        config = search_config(workload, paths, f"{workload.name}-{run}", space_files[space], folder / cache,
                               settings.trials, folder / "runs")
        runs[run] = run_autotl(config, store, splits["test"], folder / f"export-{run}", memory)

    runs["depth0"]["heads_arithmetic"] = heads_arithmetic(store, runs["depth0"]["search"], backbone, preprocessor,
                                                          splits, folder / "cache_depth0")
    cold = runs["cold"]
    space = store.get_search(cold["search"]).config["space"]
    sample = sample_trials(cold["trials"], settings.plain_trials)
    plain = run_plain(workload, splits, space, cold["trials"], sample, len(cold["trials"]), folder / "plain", memory)
    return {
        "command": command_line(), "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "backbone": workload.backbone, "examples": {split: len(splits[split]) for split in splits},
        "settings": {"trials": settings.trials, "epochs": workload.epochs, "finetune_epochs": workload.finetune_epochs,
                     "batch_size": BATCH_SIZE, "patience": PATIENCE, "seed": SEED, "unfreeze_depth": DEPTHS,
                     "image_size": IMAGE_SIZE if workload.modality == "image" else None,
                     "sequence_length": SEQUENCE_LENGTH if workload.modality == "text" else None,
                     "space": space},
        "floor": floor, "autotl": runs, "plain_keras_tuner": plain, "targets": targets(floor, runs, plain),
    }


def heads_arithmetic(store: Store, search: str, backbone, preprocessor, splits: dict, cache_dir: Path) -> dict | None:
    """The depth-0 trials' head phases, arithmetic only (`head_arithmetic.py`); None off TensorFlow."""
    if not head_arithmetic.runs_here():
        return None
    log(f"heads' arithmetic of {search}")
    train, val = splits["train"], splits["val"]
    data = TrialData(preprocessor(train.examples), train.labels, preprocessor(val.examples), val.labels)
    trials = head_arithmetic.head_phase_seconds(store, search, backbone, preprocessor, data, str(cache_dir))
    return {"seconds": round(sum(t["seconds"] for t in trials), 2), "trials": trials}


def targets(floor: dict, runs: dict, plain: dict) -> dict[str, Any]:
    cold = runs["cold"]
    on_sample = max_or_none(t["val_accuracy"] for t in cold["trials"] if t["number"] in plain["sampled_trials"])
    speedup = plain["projected_wall_s"] / cold["wall_s"]
    gap_sample = None if plain["best_val_accuracy"] is None else plain["best_val_accuracy"] - on_sample
    gap_overall = None if plain["best_val_accuracy"] is None else plain["best_val_accuracy"] - cold["best_val_accuracy"]
    ratio = runs["depth0"]["wall_s"] / floor["seconds"]
    heads = (runs["depth0"].get("heads_arithmetic") or {}).get("seconds")
    bound = None if heads is None else round(floor["seconds"] + heads, 2)
    passes = runs["warm"]["backbone_passes"]
    return {
        "speedup": {"plain_projected_s": plain["projected_wall_s"], "autotl_s": cold["wall_s"],
                    "speedup": round(speedup, 2), "autotl_best_val_on_sample": on_sample,
                    "plain_best_val_on_sample": plain["best_val_accuracy"],
                    "plain_minus_autotl_on_sample": gap_sample,
                    "autotl_best_val_overall": cold["best_val_accuracy"],
                    "plain_minus_autotl_overall": gap_overall,
                    "met": speedup >= SPEEDUP_TARGET and gap_sample is not None
                    and abs(gap_sample) <= ACCURACY_TOLERANCE},
        "depth0_vs_floor": {"autotl_depth0_s": runs["depth0"]["wall_s"], "floor_s": floor["seconds"],
                            "ratio": round(ratio, 2), "met": ratio <= FLOOR_RATIO_TARGET,
                            "heads_arithmetic_s": heads, "lower_bound_s": bound,
                            "lower_bound_ratio": None if bound is None else round(bound / floor["seconds"], 2)},
        "warm_no_backbone_pass": {"backbone_passes": passes, "met": None if passes is None else passes == 0},
    }


# --------------------------------------------------------------------------- machine and output


def machine() -> dict[str, Any]:
    import keras
    import keras_hub
    import keras_tuner
    import tensorflow as tf

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor() or "unknown")
    meminfo = Path("/proc/meminfo").read_text()
    ram_kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal")))
    return {"cpu": model, "cores": os.cpu_count(), "ram_gib": round(ram_kb / 2**20, 1),
            "python": platform.python_version(), "keras": keras.__version__, "tensorflow": tf.__version__,
            "keras_tuner": keras_tuner.__version__, "keras_hub": keras_hub.__version__,
            "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", f"unset ({keras.backend.backend()})"),
            "platform": platform.platform()}


def command_line() -> str:
    return shlex.join(["python", "benchmarks/search_speed.py", *sys.argv[1:]])


def write_results(out: Path, quick: bool, workloads: dict[str, Any]) -> Path:
    """Write OUT/search_speed[_quick].{json,md}, keeping earlier results of workloads not run now."""
    stem = out / ("search_speed_quick" if quick else "search_speed")
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
    merged = {**previous.get("workloads", {}), **workloads}
    result = {"quick": quick, "workloads": {name: merged[name] for name in WORKLOADS if name in merged}}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    stem.with_suffix(".md").write_text(render_markdown(result))
    return stem


def render_markdown(result: dict[str, Any]) -> str:
    lines = ["# Search speed: autotl vs plain KerasTuner vs one backbone pass", ""]
    if result["quick"]:
        lines += ["**Quick smoke run (`--quick`): tiny data, few trials and epochs; not a measurement.**", ""]
    lines += ["Written by `benchmarks/search_speed.py` (its docstring says what each phase does). "
              "Peak memory: RSS of the benchmark process plus its children (autotl's trial workers), "
              "sampled every 0.2 s; `start` is the RSS when the phase began (the benchmark process carries "
              "the earlier phases' memory).", ""]
    for name, w in result["workloads"].items():
        lines += render_workload(name, w)
    return "\n".join(lines) + "\n"


def render_workload(name: str, w: dict[str, Any]) -> list[str]:
    m, s, floor, runs, plain, t = (w["machine"], w["settings"], w["floor"], w["autotl"], w["plain_keras_tuner"],
                                   w["targets"])
    by_batch = ", ".join(f"{size}: {seconds} s" for size, seconds in floor["pass_s_by_batch_size"].items())
    lines = [f"## {name}: {w['backbone']}", "",
             f"Command: `{w['command']}` ({w['date']})  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; Python {m['python']}, "
             f"Keras {m['keras']}, TensorFlow {m['tensorflow']}, KerasTuner {m['keras_tuner']}, "
             f"keras-hub {m['keras_hub']}; KERAS_BACKEND={m['KERAS_BACKEND']}  ",
             f"Data: {w['examples']['train']} train, {w['examples']['val']} validation, {w['examples']['test']} test. "
             f"{s['trials']} trials, epochs {s['epochs']} + fine-tune {s['finetune_epochs']}, batch {s['batch_size']}, "
             f"patience {s['patience']}, seed {s['seed']}, unfreeze depth {s['unfreeze_depth']['min']}-"
             f"{s['unfreeze_depth']['max']} (depth0 run: 0).", "", "### Targets", "",
             "| target | figures | met |", "|---|---|---|",
             f"| autotl >= {SPEEDUP_TARGET:g}x faster than plain KerasTuner, same best val accuracy (+-1 point) | "
             f"speedup {t['speedup']['speedup']}x ({t['speedup']['plain_projected_s']} s / "
             f"{t['speedup']['autotl_s']} s); best val on the sampled trials: plain "
             f"{fmt(t['speedup']['plain_best_val_on_sample'])}, autotl {fmt(t['speedup']['autotl_best_val_on_sample'])}"
             f" (autotl overall {fmt(t['speedup']['autotl_best_val_overall'])}) | {yes_no(t['speedup']['met'])} |",
             f"| depth-0 search <= {FLOOR_RATIO_TARGET:g}x the floor | {t['depth0_vs_floor']['autotl_depth0_s']} s / "
             f"{t['depth0_vs_floor']['floor_s']} s = {t['depth0_vs_floor']['ratio']}x{lower_bound(t)} | "
             f"{yes_no(t['depth0_vs_floor']['met'])} |",
             f"| warm run: no backbone pass | {t['warm_no_backbone_pass']['backbone_passes']} trials ran one "
             f"(data path `computed`) | {yes_no(t['warm_no_backbone_pass']['met'])} |", "",
             "### Phases", "",
             "| phase | wall time (s) | peak RSS (MB) | start RSS (MB) | best val acc | test acc |",
             "|---|---|---|---|---|---|",
             f"| (a) floor: one pass of train+val, batch {floor['batch_size']} (model build {floor['build_s']} s "
             f"not included; by batch size: {by_batch}) | {floor['seconds']} | "
             f"{floor['peak_rss_mb']} | {floor['rss_start_mb']} | | |"]
    for run, r in runs.items():
        lines.append(f"| (c) autotl {run} (data paths {r['data_paths']}) | {r['wall_s']} | {r['peak_rss_mb']} "
                     f"| {r['rss_start_mb']} | {fmt(r['best_val_accuracy'])} (trial {r['best_trial']}) | "
                     f"{fmt(r['test_accuracy'])} |")
    sampled = (f"{len(plain['sampled_trials'])} sampled trials {plain['sampled_trials']}, mean "
               f"{plain['mean_trial_s']} s a trial, projected x{len(runs['cold']['trials'])} (costed by "
               f"unfreeze depth instead: {plain['projected_by_depth_s']} s)" if plain["sampled"] else "all trials")
    lines += [f"| (b) plain KerasTuner: {sampled}; measured {plain['wall_s']} s in all | {plain['projected_wall_s']} | "
              f"{plain['peak_rss_mb']} | {plain['rss_start_mb']} | {fmt(plain['best_val_accuracy'])} (sample) | "
              f"{fmt(plain['test_accuracy_of_best'])} |", "",
              "Test accuracy: autotl's exported best model (`autotl.export.exporter`); plain KerasTuner's best trial "
              "reloaded from its best-epoch checkpoint (`get_best_models`).", "",
              "### Plain KerasTuner vs autotl, trial by trial (same hyperparameters)", "",
              "| trial | unfreeze depth | plain val acc | autotl val acc | plain - autotl | plain s | autotl s |",
              "|---|---|---|---|---|---|---|"]
    for row in plain["trials"]:
        gap = (None if row["plain_val_accuracy"] is None or row["autotl_val_accuracy"] is None
               else row["plain_val_accuracy"] - row["autotl_val_accuracy"])
        lines.append(f"| {row['number']} | {row['unfreeze_depth']} | {fmt(row['plain_val_accuracy'])} | "
                     f"{fmt(row['autotl_val_accuracy'])} | {fmt(gap)} | {row['plain_seconds']} | "
                     f"{row['autotl_seconds']} |")
    lines += ["", "### autotl trials (cold run), and each run's data path per trial", "",
              "Data path: `computed` = the trial ran the backbone to fill the activation cache (seconds it took), "
              "`hit` = it trained on cached activations only, `bypassed` = end to end.", "",
              "| trial | hyperparameters | val acc | s | data path (cold) | (warm) | (depth0) |",
              "|---|---|---|---|---|---|---|"]
    warm = {t["number"]: t for t in runs["warm"]["trials"]}
    depth0 = {t["number"]: t for t in runs["depth0"]["trials"]}
    for trial in runs["cold"]["trials"]:
        hp = ", ".join(f"{k}={fmt(v)}" for k, v in trial["hyperparameters"].items())
        lines.append(f"| {trial['number']} | {hp} | {fmt(trial['val_accuracy'])} | {trial['duration_s']} | "
                     f"{describe_path(trial)} | {describe_path(warm.get(trial['number']))} | "
                     f"{describe_path(depth0.get(trial['number']))} |")
    return lines + [""]


def lower_bound(t: dict[str, Any]) -> str:
    d = t["depth0_vs_floor"]
    if d.get("lower_bound_s") is None:
        return ""
    return (f"; lower bound, the floor plus the trained heads' own arithmetic (`head_arithmetic.py`): "
            f"{d['floor_s']} s + {d['heads_arithmetic_s']} s = {d['lower_bound_s']} s = {d['lower_bound_ratio']}x")


def describe_path(trial: dict | None) -> str:
    path = (trial or {}).get("data_path") or {}
    status = str(path.get("status", "-"))
    if status == "computed":
        return f"computed ({path.get('seconds')} s)"
    return f"{status}: {path['reason']}" if path.get("reason") else status


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def yes_no(met: bool | None) -> str:
    return "unknown" if met is None else ("yes" if met else "**no**")


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("images", "text", "both"), default="both")
    parser.add_argument("--trials", type=int, help="trials of each autotl search (default 20; --quick 3)")
    parser.add_argument("--plain-trials", type=plain_trials, help="plain KerasTuner trials: a sample size, or 'all' "
                                                                  "(default 5; --quick 2)")
    parser.add_argument("--epochs", type=int, help="head epochs (default: images 10, text 5; --quick 1)")
    parser.add_argument("--finetune-epochs", type=int, help="fine-tune epochs (default: images 5, text 3; --quick 1)")
    parser.add_argument("--out", default=str(REPO / "results"), help="folder for search_speed.{md,json}")
    parser.add_argument("--workdir", help="empty or new folder for data, stores, caches and exports, kept "
                                          "afterwards (default: a temporary folder, removed)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, written to search_speed_quick.*")
    return parser.parse_args(argv)


def plain_trials(value: str) -> str:
    if value != "all" and not (value.isdigit() and int(value) > 0):
        raise argparse.ArgumentTypeError(f"give a positive number of trials or 'all', not {value!r}")
    return value


def resolve(args: argparse.Namespace) -> tuple[Settings, list[Workload]]:
    quick = QUICK if args.quick else {}
    plain = args.plain_trials or str(quick.get("plain_trials", 5))
    settings = Settings(trials=args.trials or quick.get("trials", 20),
                        plain_trials=None if plain == "all" else int(plain),
                        floor_batch_sizes=quick.get("floor_batch_sizes", FULL_FLOOR_BATCH_SIZES), quick=args.quick)
    names = list(WORKLOADS) if args.workload == "both" else [args.workload]
    workloads = []
    for name in names:
        base = WORKLOADS[name]
        workloads.append(dataclasses.replace(
            base, epochs=args.epochs or quick.get("epochs", base.epochs),
            finetune_epochs=quick.get("finetune_epochs", base.finetune_epochs) if args.finetune_epochs is None
            else args.finetune_epochs,
            sizes=QUICK_SIZES[name] if args.quick else base.sizes))
    return settings, workloads


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, workloads = resolve(args)
    if args.workdir and Path(args.workdir).exists() and any(Path(args.workdir).iterdir()):
        print(f"error: --workdir {args.workdir} is not empty", file=sys.stderr)
        return 2
    memory = PeakMemory()
    try:
        with tempfile.TemporaryDirectory(prefix="search_speed_") as tmp:
            workdir = Path(args.workdir or tmp)
            results = {w.name: run_workload(w, settings, workdir, memory) for w in workloads}
    except (make_datasets.SourceError, AutotlError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        memory.stop()
    stem = write_results(Path(args.out), settings.quick, results)
    log(f"wrote {stem}.md and {stem}.json")
    print(json.dumps({name: r["targets"] for name, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
