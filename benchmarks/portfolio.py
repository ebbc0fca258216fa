"""How the portfolio of first trials (autotl/search/portfolio.py) is chosen: a reproducible procedure.

    python benchmarks/portfolio.py SUITE_DIR [--size 3] [--modalities image text] [--candidates NAME ...]
                                             [--out results/]
    python benchmarks/portfolio.py SUITE_DIR --report [--size 3] [--modalities image text] [--out results/]

SUITE_DIR is a tuning suite written by ``benchmarks/tuning_suite.py`` (its ``suite.json``); the two
workloads of ``benchmarks/quality.py`` are not in it, so the portfolio is not chosen on the data it is
judged on.

1. Every candidate configuration of `CANDIDATES` (the entries of the portfolio are drawn from
   them; ``--candidates`` runs only those named, in that order) runs as a single trial of
   ``autotl search --max-trials 1 --no-portfolio`` on every dataset of its modality (modalities in
   the order ``--modalities`` gives), its values written as a space file that fixes them (fitted to
   the backbone by `autotl.search.portfolio.fitted`, as a search fits its portfolio). One seed; the
   suite's own splits.
2. Each run's **validation** accuracy (the test split is never read) is scaled per dataset to
   [0, 1] between the worst and the best candidate.
3. Greedy forward selection, as AutoGluon's and Auto-sklearn 2.0's portfolios are built: start
   empty; add the candidate that most raises the mean over datasets of the best scaled accuracy
   the portfolio holds (ties: the faster); stop at ``--size`` entries. The order is the order the
   search tries them in. Only the datasets on which every candidate of the modality has a result
   take part (the report names them), so a partial run is never compared on unequal ground.

A run of every candidate on every dataset takes hours, so it lands in pieces. Each finished run
(its candidate, dataset, fitted values, validation accuracy, seconds, command, or its error) is
appended at once as one JSON line to ``OUT/portfolio-runs.jsonl``, with ``revision``: a digest of
the code that decides a trial's result (every ``.py`` file under ``autotl/`` and ``plugins/``), and
``dataset_digest``: a digest of the dataset's ``suite.json`` entry (a suite written again with
another seed or other sources gets new digests). A restart skips the runs recorded with the same
candidate, dataset, fitted values, revision and dataset digest (failed runs are tried again). After
each run ``OUT/portfolio.json`` and ``OUT/portfolio.md`` are rebuilt from every record of the current
revision and suite, with the runs still missing. ``--report`` only rebuilds them, running nothing:
it still needs SUITE_DIR, whose ``suite.json`` gives the datasets of each modality and their
digests (the records alone cannot say which datasets a complete run would have).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from autotl.search.portfolio import DEPTH_FRACTION  # noqa: E402
import quality_records  # noqa: E402

MODALITIES = ("image", "text")
RUNS_FILE = "portfolio-runs.jsonl"

BACKBONE = {"image": "efficientnet_lite0", "text": "bert"}
SIZE_OPTION = {"image": ["--image-size", "96"], "text": ["--sequence-length", "64"]}  # as benchmarks/quality.py
HEAD = {"head_layers": 0, "dropout": 0.2, "head_lr": 1e-3}
FINETUNE_EPOCHS = "finetune_epochs"  # not a hyperparameter: passed as `autotl search --finetune-epochs`
CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    "image": {
        "probe": {DEPTH_FRACTION: 0.0, "pooling": "avg", "head_layers": 1, "head_units": 256, "dropout": 0.3,
                  "head_lr": 1e-3},
        "quarter-1e-3": {DEPTH_FRACTION: 0.25, "finetune_lr": 1e-3, "pooling": "avg", **HEAD},
        "half-1e-4": {DEPTH_FRACTION: 0.5, "finetune_lr": 1e-4, "pooling": "avg", **HEAD},
        "half-3e-4": {DEPTH_FRACTION: 0.5, "finetune_lr": 3e-4, "pooling": "avg", **HEAD},
        "all-1e-4": {DEPTH_FRACTION: 1.0, "finetune_lr": 1e-4, "pooling": "avg", **HEAD},
        "all-3e-4": {DEPTH_FRACTION: 1.0, "finetune_lr": 3e-4, "pooling": "avg", **HEAD},
    },
    "text": {
        "probe": {DEPTH_FRACTION: 0.0, "pooling": "mean", "head_layers": 1, "head_units": 256, "dropout": 0.2,
                  "head_lr": 1e-3},
        "half-1e-4": {DEPTH_FRACTION: 0.5, "finetune_lr": 1e-4, "pooling": "mean", **HEAD, "dropout": 0.1},
        "all-3e-5": {DEPTH_FRACTION: 1.0, "finetune_lr": 3e-5, "pooling": "mean", **HEAD, "dropout": 0.1},
        "all-5e-5": {DEPTH_FRACTION: 1.0, "finetune_lr": 5e-5, "pooling": "mean", **HEAD, "dropout": 0.1},
        "all-1e-4": {DEPTH_FRACTION: 1.0, "finetune_lr": 1e-4, "pooling": "mean", **HEAD, "dropout": 0.1},
        "all-2e-4": {DEPTH_FRACTION: 1.0, "finetune_lr": 2e-4, "pooling": "mean", **HEAD, "dropout": 0.1},
        "all-5e-5-cls": {DEPTH_FRACTION: 1.0, "finetune_lr": 5e-5, "pooling": "cls", **HEAD, "dropout": 0.1},
        # bert's fine-tuning epochs (its default_finetune_epochs, 4 above) chosen the same way: 2 and 8.
        "all-1e-4-2ep": {DEPTH_FRACTION: 1.0, "finetune_lr": 1e-4, "pooling": "mean", **HEAD, "dropout": 0.1,
                         FINETUNE_EPOCHS: 2},
        "all-1e-4-8ep": {DEPTH_FRACTION: 1.0, "finetune_lr": 1e-4, "pooling": "mean", **HEAD, "dropout": 0.1,
                         FINETUNE_EPOCHS: 8},
    },
}


def scaled(scores: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """dataset -> candidate -> validation accuracy, scaled per dataset to [0, 1] (all equal: all 1)."""
    out = {}
    for dataset, by_candidate in scores.items():
        low, high = min(by_candidate.values()), max(by_candidate.values())
        out[dataset] = {c: 1.0 if high == low else (v - low) / (high - low) for c, v in by_candidate.items()}
    return out


def greedy_portfolio(scores: dict[str, dict[str, float]], seconds: dict[str, float], size: int) -> list[dict]:
    """Greedy forward selection: each step adds the candidate that most raises the mean over datasets
    of the portfolio's best scaled score (ties: the fewer seconds). Returns the steps in order."""
    table = scaled(scores)
    candidates = sorted({c for by_candidate in table.values() for c in by_candidate})
    chosen: list[str] = []
    steps = []
    while len(chosen) < min(size, len(candidates)):
        def value(candidate: str) -> float:
            members = chosen + [candidate]
            return sum(max(by.get(m, 0.0) for m in members) for by in table.values()) / max(len(table), 1)

        best = min((c for c in candidates if c not in chosen), key=lambda c: (-value(c), seconds.get(c, 0.0), c))
        chosen.append(best)
        steps.append({"add": best, "mean_best_scaled": round(value(best), 4)})
    return steps


def fitted_values(entry: dict[str, Any], modality: str) -> dict[str, Any]:
    """The candidate's values in the default space of the backbone, as a search would fit its portfolio."""
    from autotl.backbones.registry import load_registry
    from autotl.search.portfolio import fitted
    from autotl.search.space import build_space

    backbone = load_registry([]).get(BACKBONE[modality])
    weights = backbone.default_weights
    size = {"image_size": (96, 96)} if modality == "image" else {"sequence_length": 64}
    preprocessor = backbone.preprocessor(weights, size)
    blocks = len(backbone.blocks(backbone.build(weights, preprocessor)))
    space = build_space(modality, backbone.search_space(weights), None, blocks=blocks)
    return fitted(space, entry)


def run_candidate(name: str, values: dict[str, Any], dataset: dict, suite_dir: Path, work: Path) -> dict:
    """One single trial of `values` on `dataset`: its validation accuracy, or the error's last line."""
    folder = work / f"{dataset['name']}-{name}"
    folder.mkdir(parents=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(values))
    paths = {split: suite_dir / path for split, path in dataset["paths"].items()}
    store = f"sqlite:///{folder / 'autotl.db'}"
    command = [sys.executable, "-m", "autotl", "search", str(paths["train"]), "--val-data", str(paths["val"]),
               "--backbone", BACKBONE[dataset["modality"]], *SIZE_OPTION[dataset["modality"]],
               "--space", str(folder / "space.yaml"), "--max-trials", "1", "--no-portfolio", "--name", "run",
               "--store", store, "--workdir", str(folder / "work"), "--cache-dir", str(work / "cache")]
    epochs = CANDIDATES[dataset["modality"]].get(name, {}).get(FINETUNE_EPOCHS)
    command += ["--finetune-epochs", str(epochs)] if epochs is not None else []
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 1)
    shown = shlex.join(command[2:])
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:], "seconds": seconds, "command": shown}
    best = json.loads(subprocess.run([sys.executable, "-m", "autotl", "best", "run", "--json", "--store", store],
                                     capture_output=True, text=True, check=True).stdout)
    return {"val_accuracy": best["value"], "seconds": seconds, "command": shown}


# --------------------------------------------------------------------------- records


def code_revision(root: Path = REPO) -> str:
    """Digest of every ``.py`` file under autotl/ and plugins/, by relative path: the quality benchmark's."""
    return quality_records.code_digest(root)


def dataset_digest(entry: dict) -> str:
    """Digest of a dataset's suite.json entry (seed, sources, classes, split sizes)."""
    return quality_records.json_digest(entry)


def canonical(values: dict[str, Any]) -> dict[str, Any]:
    """`values` as they read back from JSON, so that a recorded run and a planned one compare equal."""
    return json.loads(json.dumps(values, default=str))


def run_key(record: dict) -> tuple:
    """What makes two runs the same run: a restart skips a planned run whose key is recorded."""
    return (record["candidate"], record["dataset"], json.dumps(record["values"], sort_keys=True),
            record["revision"], record["dataset_digest"])


# --------------------------------------------------------------------------- running


def chosen_candidates(modality: str, names: list[str] | None) -> list[str]:
    """The candidates of `modality` to run: all of them, or those of `names` it has, in that order."""
    return list(CANDIDATES[modality]) if names is None else [n for n in names if n in CANDIDATES[modality]]


def planned_runs(suite: list[dict], modalities: list[str], names: list[str] | None, code: str,
                 values_of: Callable[[dict, str], dict]) -> Iterator[tuple[dict, dict]]:
    """(record so far, dataset entry) of every run, modality by modality, candidate by candidate."""
    for modality in modalities:
        datasets = [d for d in suite if d["modality"] == modality]
        for name in chosen_candidates(modality, names):
            entry = CANDIDATES[modality][name]
            values = canonical(values_of(entry, modality))
            for dataset in datasets:
                yield ({"candidate": name, "modality": modality, "dataset": dataset["name"], "entry": canonical(entry),
                        "values": values, "revision": code, "dataset_digest": dataset_digest(dataset)}, dataset)


def run_missing(suite_dir: Path, suite: list[dict], modalities: list[str], names: list[str] | None, log: Path,
                code: str, extra: dict | None = None, runner: Callable[..., dict] = run_candidate,
                values_of: Callable[[dict, str], dict] = fitted_values,
                after_each: Callable[[], None] = lambda: None) -> int:
    """Run every planned run that `log` has no successful record of, appending each as it ends and
    calling `after_each` then; returns how many ran. `runner` and `values_of` are replaceable for tests."""
    runs = quality_records.RunLog(log)
    done = {run_key(r) for r in runs.records() if "val_accuracy" in r}
    ran = 0
    with tempfile.TemporaryDirectory(prefix="autotl-portfolio-") as tmp:
        for record, dataset in planned_runs(suite, modalities, names, code, values_of):
            if run_key(record) in done:
                continue
            record.update(runner(record["candidate"], record["values"], dataset, suite_dir, Path(tmp)))
            record.update(extra or {})
            runs.append(record)
            print(json.dumps({k: v for k, v in record.items() if k not in ("values", "entry", "machine")}), flush=True)
            ran += 1
            after_each()
    return ran


# --------------------------------------------------------------------------- report


def current_records(records: list[dict], suite: list[dict], modality: str, code: str) -> dict[tuple[str, str], dict]:
    """(candidate, dataset) -> the record that counts: of this code revision, of the dataset as the suite
    has it now and of the candidate's entry as `CANDIDATES` has it now; the last success, else the last error."""
    digests = {d["name"]: dataset_digest(d) for d in suite if d["modality"] == modality}
    entries = {name: canonical(entry) for name, entry in CANDIDATES[modality].items()}
    chosen: dict[tuple[str, str], dict] = {}
    for record in records:
        if (record.get("revision") != code or digests.get(record.get("dataset")) != record.get("dataset_digest")
                or entries.get(record.get("candidate")) != record.get("entry")):
            continue
        key = (record["candidate"], record["dataset"])
        if "val_accuracy" in record or "val_accuracy" not in chosen.get(key, {}):
            chosen[key] = record
    return chosen


def modality_part(records: list[dict], suite: list[dict], modality: str, code: str, size: int) -> dict:
    """The report of one modality: every current result, what is missing, and the greedy selection over
    the datasets on which every candidate has a result."""
    candidates = list(CANDIDATES[modality])
    datasets = [d["name"] for d in suite if d["modality"] == modality]
    chosen = current_records(records, suite, modality, code)
    scores = {d: {c: chosen[c, d]["val_accuracy"] for c in candidates if "val_accuracy" in chosen.get((c, d), {})}
              for d in datasets}
    complete = [d for d in datasets if len(scores[d]) == len(candidates)]
    seconds = {c: round(sum(chosen[c, d]["seconds"] for d in complete), 1) for c in candidates}
    # An entry is a point of the search space; fine-tuning epochs are the backbone's, chosen apart (`epoch_choice`).
    entries = [c for c in candidates if FINETUNE_EPOCHS not in CANDIDATES[modality][c]]
    return {"candidates": candidates, "datasets": datasets, "scores": scores, "seconds_on_complete": seconds,
            "runs": list(chosen.values()),
            "missing": [[c, d] for c in candidates for d in datasets if d not in scores or c not in scores[d]],
            "failed": [[c, d] for (c, d), r in chosen.items() if "val_accuracy" not in r],
            "complete_datasets": complete,
            "steps": greedy_portfolio({d: {c: scores[d][c] for c in entries} for d in complete}, seconds, size)
            if complete else [],
            "epochs": epoch_choice(modality, {d: scores[d] for d in complete})}


def epoch_choice(modality: str, scores: dict[str, dict[str, float]]) -> list[dict]:
    """Each candidate that differs from another only in its fine-tuning epochs, with that other (the
    backbone's own epochs): mean validation accuracy and mean scaled accuracy over `scores`' datasets."""
    family = CANDIDATES[modality]
    rows = []
    for name, entry in family.items():
        if FINETUNE_EPOCHS not in entry:
            continue
        base = next(b for b, e in family.items() if e == {k: v for k, v in entry.items() if k != FINETUNE_EPOCHS})
        for candidate, epochs in ((base, None), (name, entry[FINETUNE_EPOCHS])):
            if scores and candidate not in (row["candidate"] for row in rows):
                table = scaled(scores)
                rows.append({"candidate": candidate, "finetune_epochs": epochs or "the backbone's",
                             "mean_val_accuracy": round(sum(s[candidate] for s in scores.values()) / len(scores), 4),
                             "mean_scaled": round(sum(t[candidate] for t in table.values()) / len(table), 4)})
    return rows


def chosen_epochs(rows: list[dict]) -> dict | None:
    """The row whose fine-tuning epochs become the backbone's: the best mean scaled validation accuracy, as
    the selection scores its entries (ties: the row listed first, the backbone's own epochs)."""
    return max(rows, key=lambda row: row["mean_scaled"]) if rows else None


def machines(records: list[dict]) -> list[dict]:
    """The distinct machines the counted runs ran on (their date left out)."""
    seen = {json.dumps({k: v for k, v in r["machine"].items() if k != "date"}, sort_keys=True)
            for r in records if isinstance(r.get("machine"), dict)}
    return [json.loads(m) for m in sorted(seen)]


def build_document(records: list[dict], suite: list[dict], modalities: list[str], code: str, size: int,
                   command: str, log: Path) -> dict:
    parts = {m: modality_part(records, suite, m, code, size) for m in modalities}
    counted = [r for part in parts.values() for r in part["runs"]]
    return {"command": command, "revision": code, "records": str(log), "machines": machines(counted),
            "modalities": parts}


def render_scores(part: dict) -> list[str]:
    """The table of validation accuracies: ``-`` not run yet, ``error`` failed."""
    failed = {tuple(pair) for pair in part["failed"]}
    lines = ["| candidate | " + " | ".join(part["datasets"]) + " | seconds (complete datasets) |",
             "|---" * (len(part["datasets"]) + 2) + "|"]
    for candidate in part["candidates"]:
        cells = [f"{part['scores'][d][candidate]:.4f}" if candidate in part["scores"][d]
                 else "error" if (candidate, d) in failed else "-" for d in part["datasets"]]
        lines.append(f"| {candidate} | " + " | ".join(cells) + f" | {part['seconds_on_complete'][candidate]:.0f} |")
    return lines


def render_part(modality: str, part: dict) -> list[str]:
    lines = [f"## {modality}", "", "Validation accuracy of each candidate (a single trial):", "",
             *render_scores(part), ""]
    missing = ", ".join(f"({c}, {d})" for c, d in part["missing"])
    lines += [f"Still missing: {missing}." if missing else "Every run is there.", ""]
    if not part["complete_datasets"]:
        lines += ["Greedy selection: none yet (no dataset has a result of every candidate).", ""]
        return lines
    steps = ", then ".join(f"{s['add']} ({s['mean_best_scaled']})" for s in part["steps"])
    lines += [f"Greedy selection over {', '.join(part['complete_datasets'])} (the datasets with a result of "
              f"every candidate; the entries, not their fine-tuning epochs): {steps}", ""]
    if part.get("epochs"):
        lines += ["Fine-tuning epochs (the same entry, the backbone's epochs or as given; over the same datasets):",
                  "", "| candidate | fine-tuning epochs | mean validation accuracy | mean scaled |", "|---|---|---|---|"]
        lines += [f"| {r['candidate']} | {r['finetune_epochs']} | {r['mean_val_accuracy']:.4f} | {r['mean_scaled']:.4f} |"
                  for r in part["epochs"]] + [""]
        best = chosen_epochs(part["epochs"])
        lines += [f"Chosen fine-tuning epochs: {best['finetune_epochs']} ({best['candidate']}: the best mean scaled "
                  "validation accuracy; ties: the backbone's own).", ""]
    return lines


def render(document: dict) -> str:
    lines = ["# The portfolio of first trials, chosen on the tuning suite", "",
             f"Command: `{document['command']}`", "",
             f"Code revision: `{document['revision']}`; runs from `{document['records']}`", ""]
    lines += [f"Machine: {machine}" for machine in document["machines"]] or ["Machine: no run yet"]
    lines.append("")
    for modality, part in document["modalities"].items():
        lines += render_part(modality, part)
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that a stopped run leaves the old file or the new one, never half."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_report(out: Path, document: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "portfolio.json", json.dumps(document, indent=2, default=str) + "\n")
    write_atomically(out / "portfolio.md", render(document))


# --------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite_dir", type=Path, help="the tuning suite (its suite.json), also for --report")
    parser.add_argument("--size", type=int, default=3, help="entries of the portfolio (default 3)")
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES,
                        help="modalities to run and report, in this order (default: image text)")
    parser.add_argument("--candidates", nargs="+", metavar="NAME",
                        help="run only these candidates, in this order (the report still shows every candidate)")
    parser.add_argument("--out", type=Path, default=REPO / "results",
                        help=f"folder of {RUNS_FILE}, portfolio.json and portfolio.md (default results/)")
    parser.add_argument("--report", action="store_true",
                        help=f"only rebuild portfolio.json and portfolio.md from {RUNS_FILE}; run nothing")
    parser.add_argument("--revision", metavar="DIGEST",
                        help="record and count runs under this code digest instead of the checkout's: to finish a "
                             "run begun at DIGEST after commits that left a trial's training as it was (say which "
                             "in the results); the command, with this option, is in every record")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.modalities = list(dict.fromkeys(args.modalities))
    if args.candidates:
        known = {name for modality in args.modalities for name in CANDIDATES[modality]}
        unknown = [name for name in args.candidates if name not in known]
        if unknown:
            parser.error(f"unknown candidates {unknown} for {' '.join(args.modalities)}: "
                         f"choose from {sorted(known)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite = json.loads((args.suite_dir / "suite.json").read_text())["datasets"]
    code = args.revision or code_revision()
    log = args.out / RUNS_FILE
    runs = quality_records.RunLog(log)
    command = shlex.join(["python", "benchmarks/portfolio.py", *(sys.argv[1:] if argv is None else argv)])

    def rebuild() -> None:
        write_report(args.out, build_document(runs.records(), suite, args.modalities, code, args.size, command, log))

    if not args.report:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import common

        run_missing(args.suite_dir, suite, args.modalities, args.candidates, log, code,
                    extra={"machine": common.machine()}, after_each=rebuild)
    rebuild()
    return 0


if __name__ == "__main__":
    sys.exit(main())
