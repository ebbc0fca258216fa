"""How the portfolio of first trials (autotl/search/portfolio.py) is chosen: a reproducible procedure.

    python benchmarks/portfolio.py SUITE_DIR [--size 3] [--modalities image text] [--out results/]

SUITE_DIR is a tuning suite written by ``benchmarks/tuning_suite.py`` (its ``suite.json``); the two
workloads of ``benchmarks/quality.py`` are not in it, so the portfolio is not chosen on the data it is
judged on.

1. Every candidate configuration of `CANDIDATES` (the entries of the portfolio are drawn from
   them) runs as a single trial of ``autotl search --max-trials 1 --no-portfolio`` on every dataset
   of its modality, its values written as a space file that fixes them (fitted to the backbone by
   `autotl.search.portfolio.fitted`, as a search fits its portfolio). One seed; the suite's own
   splits.
2. Each run's **validation** accuracy (the test split is never read) is scaled per dataset to
   [0, 1] between the worst and the best candidate.
3. Greedy forward selection, as AutoGluon's and Auto-sklearn 2.0's portfolios are built: start
   empty; add the candidate that most raises the mean over datasets of the best scaled accuracy
   the portfolio holds (ties: the faster); stop at ``--size`` entries. The order is the order the
   search tries them in.

Results: ``OUT/portfolio.json`` (every run, the selection and its steps) and ``OUT/portfolio.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from autotl.search.portfolio import DEPTH_FRACTION  # noqa: E402

BACKBONE = {"image": "efficientnet_lite0", "text": "bert"}
SIZE_OPTION = {"image": ["--image-size", "96"], "text": ["--sequence-length", "64"]}  # as benchmarks/quality.py
HEAD = {"head_layers": 0, "dropout": 0.2, "head_lr": 1e-3}
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
        "all-5e-5-cls": {DEPTH_FRACTION: 1.0, "finetune_lr": 5e-5, "pooling": "cls", **HEAD, "dropout": 0.1},
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
    folder = work / f"{dataset['name']}-{name}"
    folder.mkdir(parents=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(values))
    paths = {split: suite_dir / path for split, path in dataset["paths"].items()}
    store = f"sqlite:///{folder / 'autotl.db'}"
    command = [sys.executable, "-m", "autotl", "search", str(paths["train"]), "--val-data", str(paths["val"]),
               "--backbone", BACKBONE[dataset["modality"]], *SIZE_OPTION[dataset["modality"]],
               "--space", str(folder / "space.yaml"), "--max-trials", "1", "--no-portfolio", "--name", "run",
               "--store", store, "--workdir", str(folder / "work"), "--cache-dir", str(work / "cache")]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:], "seconds": round(seconds, 1)}
    best = json.loads(subprocess.run([sys.executable, "-m", "autotl", "best", "run", "--json", "--store", store],
                                     capture_output=True, text=True, check=True).stdout)
    return {"val_accuracy": best["value"], "seconds": round(seconds, 1), "command": shlex.join(command[2:])}


def render(document: dict) -> str:
    lines = ["# The portfolio of first trials, chosen on the tuning suite", "",
             f"Command: `{document['command']}`", "", f"Machine: {document['machine']}", ""]
    for modality, part in document["modalities"].items():
        datasets = sorted(part["scores"])
        lines += [f"## {modality}", "", "Validation accuracy of each candidate (a single trial):", "",
                  "| candidate | " + " | ".join(datasets) + " | seconds |", "|---" * (len(datasets) + 2) + "|"]
        for candidate in part["candidates"]:
            cells = [f"{part['scores'][d].get(candidate, float('nan')):.4f}" for d in datasets]
            lines.append(f"| {candidate} | " + " | ".join(cells) + f" | {part['seconds'].get(candidate, 0):.0f} |")
        lines += ["", "Greedy selection: " + ", then ".join(f"{s['add']} ({s['mean_best_scaled']})"
                                                           for s in part["steps"]), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite_dir", type=Path)
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--modalities", nargs="*", default=["image", "text"], choices=["image", "text"])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "results")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    suite = json.loads((args.suite_dir / "suite.json").read_text())["datasets"]
    document = {"command": shlex.join(["python", "benchmarks/portfolio.py", *(argv or sys.argv[1:])]),
                "machine": common.machine(), "modalities": {}}
    with tempfile.TemporaryDirectory(prefix="autotl-portfolio-") as tmp:
        for modality in args.modalities:
            datasets = [d for d in suite if d["modality"] == modality]
            scores: dict[str, dict[str, float]] = {d["name"]: {} for d in datasets}
            seconds: dict[str, float] = {}
            runs = []
            for name, entry in CANDIDATES[modality].items():
                values = fitted_values(entry, modality)
                for dataset in datasets:
                    run = {"candidate": name, "dataset": dataset["name"], "values": values,
                           **run_candidate(name, values, dataset, args.suite_dir, Path(tmp))}
                    runs.append(run)
                    print(json.dumps({k: v for k, v in run.items() if k != "values"}), flush=True)
                    if "val_accuracy" in run:
                        scores[dataset["name"]][name] = run["val_accuracy"]
                        seconds[name] = seconds.get(name, 0.0) + run["seconds"]
            document["modalities"][modality] = {
                "candidates": list(CANDIDATES[modality]), "scores": scores, "seconds": seconds, "runs": runs,
                "steps": greedy_portfolio(scores, seconds, args.size)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "portfolio.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    (args.out / "portfolio.md").write_text(render(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
