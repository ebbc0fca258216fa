"""Where a fine-tuning trial's seconds go (issue 28, item 1): each portfolio entry, one trial on each visible
workload, timed part by part, median of 3 repeats.

    python benchmarks/trial_profile.py                       # every entry, both workloads, 3 repeats
    python benchmarks/trial_profile.py --workloads images --repeats 1
    python benchmarks/trial_profile.py --report              # rebuild results/trial_profile.md from the runs

Each repeat is one default search of the workload's seed-0 split in this process (`trials_per_worker=0`),
capped at as many trials as the portfolio has entries, so its trials are the entries, in their order, with a
fresh activation cache. The parts, from timers put around autotl's own functions and a Keras callback added
to every `fit`:

- frozen prefix: the pass of the frozen part of the backbone over the data (the activation cache's filling);
- train steps: the training batches (forward and backward through the trainable blocks and the head, and the
  batches' feeding: Keras times them together);
- validation: the validation passes of every epoch;
- first-epoch overhead: each phase's first epoch minus its median later epoch (tracing, the short last batch's
  retracing, Keras' setup): a share of the train steps and validation above, not added to them;
- checkpoint writes: the trial's checkpoint and validation probabilities;
- the rest: the trial's wall time minus the frozen prefix, train steps, validation and checkpoint writes
  (building the model, compiling, Keras' `fit` machinery between batches, the store's writes).

Each finished run is appended to results/trial_profile-runs.jsonl at once; a restart skips the runs recorded
for the same code digest (autotl/ and plugins/). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import quality  # the workloads' data writers
import quality_records as records
from quality import REPO, SIZES, WORKLOADS, log, write_workload

RUNS_FILE = "trial_profile-runs.jsonl"
PARTS = ("frozen_prefix", "train_steps", "validation", "first_epoch_overhead", "checkpoint", "rest")
ADDING_UP = ("frozen_prefix", "train_steps", "validation", "checkpoint")  # the overhead lies within two of them


class Timers:
    """Seconds spent in each part, trial by trial."""

    def __init__(self):
        self.trials: list[dict[str, float]] = []
        self.epochs: list[list[tuple[int, float]]] = []  # per trial: (fit call, epoch seconds)

    def start_trial(self) -> None:
        self.trials.append({part: 0.0 for part in PARTS})
        self.epochs.append([])

    def add(self, part: str, seconds: float) -> None:
        if self.trials:  # the frozen pass of the preparation, before any trial, is no trial's
            self.trials[-1][part] += seconds

    @contextlib.contextmanager
    def timing(self, part: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(part, time.perf_counter() - started)


def timing_callback(timers: Timers, fit_id: int):
    import keras

    class PartTimes(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if timers.epochs:
                timers.epochs[-1].append((fit_id, time.perf_counter() - self._epoch))

        def on_train_batch_begin(self, batch, logs=None):
            self._batch = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            timers.add("train_steps", time.perf_counter() - self._batch)

        def on_test_begin(self, logs=None):
            self._test = time.perf_counter()

        def on_test_end(self, logs=None):
            timers.add("validation", time.perf_counter() - self._test)

    return PartTimes()


@contextlib.contextmanager
def instrumented(timers: Timers):
    """Timers around each trial, the frozen pass, the checkpoint writes and every `fit` of this process."""
    import keras

    from autotl.cache.source import ActivationSource
    from autotl.search.runner import TrialRunner

    originals = (TrialRunner.run, ActivationSource._run_prefix, TrialRunner._checkpoint_if_kept, keras.Model.fit)
    fits = iter(range(10**6))

    def run(self, *args, **kwargs):
        timers.start_trial()
        return originals[0](self, *args, **kwargs)

    def run_prefix(self, *args, **kwargs):
        with timers.timing("frozen_prefix"):
            return originals[1](self, *args, **kwargs)

    def checkpoint(self, *args, **kwargs):
        with timers.timing("checkpoint"):
            return originals[2](self, *args, **kwargs)

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = [*(callbacks or []), timing_callback(timers, next(fits))]
        return originals[3](self, *args, callbacks=callbacks, **kwargs)

    TrialRunner.run, ActivationSource._run_prefix, TrialRunner._checkpoint_if_kept, keras.Model.fit = \
        run, run_prefix, checkpoint, fit
    try:
        yield
    finally:
        TrialRunner.run, ActivationSource._run_prefix, TrialRunner._checkpoint_if_kept, keras.Model.fit = originals


def profile_run(workload: str, repeat: int, work: Path) -> dict[str, Any]:
    """One search of the portfolio's entries (one trial each, in their order), every trial timed by part."""
    from autotl import api
    from autotl.search.portfolio import portfolio_for
    from autotl.store import COMPLETED, Store

    modality, backbone_name = WORKLOADS[workload]
    paths = write_workload(workload, work / "data", SIZES[workload], seed=0)
    entries = portfolio_for(modality)
    size = {"image_size": quality.recipe.IMAGE_SIZE} if modality == "image" else \
        {"sequence_length": quality.recipe.SEQUENCE_LENGTH}
    config = api.SearchConfig(data=str(paths["train"]), val_data=str(paths["val"]), backbone=backbone_name,
                              max_trials=len(entries), seed=0, name=f"profile-{repeat}", trials_per_worker=0,
                              workdir=str(work / "runs"), cache_dir=str(work / "cache"), **size)
    timers = Timers()
    with instrumented(timers):
        result = api.search(config, Store(f"sqlite:///{work / 'autotl.db'}"))
    trials = []
    for entry, trial, parts, epochs in zip(entries, result.trials, timers.trials, timers.epochs):
        if trial.status != COMPLETED:
            continue
        parts["first_epoch_overhead"] = first_epoch_overhead(epochs)
        parts["rest"] = max(0.0, float(trial.duration_s) - sum(parts[p] for p in ADDING_UP))
        trials.append({"entry": entry, "values": trial.hyperparameters, "value": trial.value,
                       "trial_seconds": float(trial.duration_s),
                       "parts": {part: round(seconds, 3) for part, seconds in parts.items()}})
    return {"trials": trials}


def first_epoch_overhead(epochs: list[tuple[int, float]]) -> float:
    """Over each `fit` of a trial: its first epoch's seconds minus the median of its later epochs."""
    by_fit: dict[int, list[float]] = {}
    for fit, seconds in epochs:
        by_fit.setdefault(fit, []).append(seconds)
    return sum(max(0.0, times[0] - statistics.median(times[1:])) for times in by_fit.values() if len(times) > 1)


def report(runs: list[dict[str, Any]], out: Path, digest: str) -> Path:
    lines = ["# Where a fine-tuning trial's seconds go", "",
             f"`python benchmarks/trial_profile.py`, code digest `{digest}`; runs in `{RUNS_FILE}`. Seconds, median "
             "of the repeats (min-max); the parts as `benchmarks/trial_profile.py` defines them. Each repeat is one "
             "search of the portfolio's entries, one trial each, in their order (a later trial may find the "
             "activations an earlier one cached).", ""]
    for workload in WORKLOADS:
        trials = [t for r in runs if r["workload"] == workload for t in r["trials"]]
        if not trials:
            continue
        lines += [f"## {workload}", "", "| entry | repeats | trial | " + " | ".join(PARTS) + " |",
                  "|---|---|---|" + "---|" * len(PARTS)]
        for entry in _unique([t["entry"] for t in trials]):
            group = [t for t in trials if t["entry"] == entry]
            cells = [spread([t["trial_seconds"] for t in group])]
            cells += [spread([t["parts"][part] for t in group]) for part in PARTS]
            lines.append(f"| {describe(entry)} | {len(group)} | " + " | ".join(cells) + " |")
        lines.append("")
    path = out / "trial_profile.md"
    path.write_text("\n".join(lines))
    return path


def _unique(items: list) -> list:
    seen: list = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def describe(entry: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in entry.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", action="store_true", help="rebuild the page from the runs; run nothing")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    digest = records.code_digest()
    runs_log = records.RunLog(args.out / RUNS_FILE)
    if not args.report:
        for workload in args.workloads:
            for repeat in range(args.repeats):
                key = {"workload": workload, "seed": repeat, "kind": "portfolio", "code_digest": digest,
                       "settings": {"repeat": repeat}}
                if runs_log.find(key):
                    continue
                with tempfile.TemporaryDirectory() as work:
                    run = profile_run(workload, repeat, Path(work))
                runs_log.append({**key, **run, "command": "python benchmarks/trial_profile.py",
                                 "revision": records.git_revision()})
                log(f"{workload} repeat {repeat}: " + "; ".join(f"{t['trial_seconds']:.0f} s {t['parts']}"
                                                                 for t in run["trials"]))
    runs = [r for r in runs_log.records() if r.get("code_digest") == digest and records.counts(r)]
    print(report(runs, args.out, digest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
