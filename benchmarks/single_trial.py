"""One configuration, one trial: its test accuracy on a quality workload (seed 0), to choose portfolio entries
and plugin defaults by measurement.

    python benchmarks/single_trial.py text t_d6_1e4_e4 \\
        "{unfreeze_depth: 6, finetune_lr: 1.0e-4, pooling: mean, head_layers: 0, head_lr: 1.0e-3, dropout: 0.1}" \\
        --max-trials 1 --finetune-epochs 4 [--refit]
    python benchmarks/single_trial.py --table           # rewrite results/single_trials.md from the log

WORKLOAD (images | text) and its seed-0 splits are `benchmarks/quality.py`'s (written once under --root). The
space YAML fixes the configuration (`--space`); the arguments after it go to `autotl search` as they are. The
search runs through the CLI with a cache folder shared between runs, then ``autotl export --format keras`` and
the export's test accuracy (with ``--refit``: the refit's, and the validated trial's with ``--no-refit``).
Each run appends a line to results/single_trials.jsonl; ``--table`` writes results/single_trials.md from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import quality  # noqa: E402

LOG = REPO / "results" / "single_trials.jsonl"
TABLE = REPO / "results" / "single_trials.md"


def splits(workload: str, root: Path, seed: int = 0) -> dict[str, Path]:
    folder = root / "data" / workload
    if not (folder / f"seed{seed}").exists():
        return quality.write_workload(workload, root / "data", quality.SIZES[workload], seed)
    image = workload == "images"
    return {"train": folder / f"seed{seed}" / ("train" if image else "train.csv"),
            "val": folder / f"seed{seed}" / ("val" if image else "val.csv"),
            "test": folder / ("test" if image else "test.csv")}


def run(workload: str, name: str, space: str, extra: list[str], root: Path) -> dict:
    modality = "image" if workload == "images" else "text"
    paths = splits(workload, root)
    folder = root / "runs" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "space.yaml").write_text(space)
    command = quality.search_command(modality, paths, folder, name, 0, 100000,
                                     ["--space", str(folder / "space.yaml"), *extra])
    command[command.index("--cache-dir") + 1] = str(root / "cache" / workload)
    log, store = folder / "log.txt", f"sqlite:///{folder / 'autotl.db'}"
    _, seconds = quality.run_logged(command, log)
    quality.run_logged(quality.autotl("export", name, "--out", folder / "export", "--format", "keras",
                                      "--store", store), log)
    best, _ = quality.run_logged(quality.autotl("best", name, "--json", "--store", store), log)
    best = json.loads(best.stdout)
    row = {"workload": workload, "name": name, "space": space, "args": extra,
           "test": quality.test_accuracy(folder / "export", paths["test"], modality),
           "val": best.get("value"), "search_s": round(seconds, 1), "validated_test": None,
           "hyperparameters": best.get("hyperparameters"), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if "--refit" in extra:
        quality.run_logged(quality.autotl("export", name, "--out", folder / "export-validated", "--format",
                                          "keras", "--no-refit", "--store", store), log)
        row["validated_test"] = quality.test_accuracy(folder / "export-validated", paths["test"], modality)
    return row


def write_table() -> None:
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]
    lines = ["# Single trials: one configuration each, seed 0 of a quality workload", "",
             "Made by `python benchmarks/single_trial.py WORKLOAD NAME SPACE ARGS...` (the configuration is the space "
             "file; each row's arguments went to `autotl search`). Test accuracy of the export on the workload's fixed "
             "test split; with `--refit`, that of the refit and, in brackets, of the validated trial. Search seconds "
             "include the cache pass of a run that computed it and whatever else ran on the 2-core machine then. Rows "
             "dated without a time were run by this script's uncommitted first form, which took the same steps.", "",
             "| workload | name | configuration (space file) | search arguments | val | test | search s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        test = f"{r['test']:.4f}" + (f" ({r['validated_test']:.4f})" if r.get("validated_test") is not None else "")
        lines.append(f"| {r['workload']} | {r['name']} | `{r['space']}` | `{' '.join(r['args'])}` | {r['val']:.4f} | "
                     f"{test} | {r['search_s']} |")
    TABLE.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", nargs="?", choices=sorted(quality.WORKLOADS))
    parser.add_argument("name", nargs="?")
    parser.add_argument("space", nargs="?", help="YAML of the configuration, e.g. '{unfreeze_depth: 6}'")
    parser.add_argument("--root", default="/tmp/autotl-single-trials", help="data, cache and runs")
    parser.add_argument("--table", action="store_true", help="only rewrite results/single_trials.md")
    args, extra = parser.parse_known_args()
    if not args.table:
        if not (args.workload and args.name and args.space):
            parser.error("WORKLOAD NAME SPACE are needed (or --table)")
        row = run(args.workload, args.name, args.space, extra, Path(args.root))
        print(json.dumps(row))
        with LOG.open("a") as log:
            log.write(json.dumps(row) + "\n")
    write_table()


if __name__ == "__main__":
    main()
