"""Progress display for a running search.

The tuner calls a `Reporter` at each trial and epoch; the CLI uses
`ConsoleReporter` (one line per epoch on stderr, so stdout stays clean for
results), the Python API a silent one unless told otherwise.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from autotl.search.budget import format_duration


class Reporter:
    """Receives progress events; the base class ignores them all."""

    def search_started(self, name: str, store_url: str, max_trials: int | None, deadline: Any = None, *,
                       best: float | None = None, time_limit: float | None = None) -> None:
        """`max_trials` None: no cap (a time-limited search); `deadline`: its `autotl.search.budget.Deadline`,
        set by `time_limit` seconds; `best`: the best value of the trials it completed before (a resumed or
        extended search)."""

    def examples_skipped(self, skipped: list[tuple[str, str]]) -> None:
        """The image files or text rows the data loading skipped, as ``(source, reason)``."""

    def trial_started(self, number: int, max_trials: int | None, hyperparameters: dict[str, Any], *,
                      completed: int = 0, rerun_of: int | None = None) -> None:
        """Trial `number` of the store starts; `completed` trials of the `max_trials` are done, and
        `rerun_of` is the number of the interrupted trial it runs again, if it does."""

    def epoch_ended(self, trial_number: int, phase: str, epoch: int, epochs: int,
                    metrics: dict[str, float]) -> None: ...

    def trial_ended(self, trial: Any) -> None: ...

    def message(self, text: str) -> None:
        """A line about the search itself (resuming, workers joining, ...)."""


class ConsoleReporter(Reporter):
    def __init__(self, objective: str, stream: TextIO | None = None, prefix: str = ""):
        self.objective = objective
        self.stream = stream or sys.stderr
        self.prefix = prefix  # tells apart the lines of a distributed search's workers
        self.direction = "min" if objective.endswith("loss") else "max"
        self.best: float | None = None
        self._trial_started = time.perf_counter()
        self._labels: dict[int, str] = {}  # trial number -> how its epoch lines name it
        self.deadline = None

    def search_started(self, name, store_url, max_trials, deadline=None, *, best=None, time_limit=None):
        self.deadline = deadline
        self._update_best(best)
        budget = [f"up to {max_trials} trials"] if max_trials is not None else []
        if deadline is not None:  # the limit as given, and what start-up (imports, data, the backbone) left of it
            given = f"--time-limit {format_duration(time_limit)}, " if time_limit is not None else ""
            budget.append(f"for {given}{format_duration(deadline.left())} left")
        self._print(f"search {name!r}: {' or '.join(budget)}, logging to {store_url}")

    def examples_skipped(self, skipped):
        if skipped:
            source, reason = skipped[0]
            self._print(f"warning: skipped {len(skipped)} unusable example{'s' if len(skipped) > 1 else ''} "
                        f"(first: {source}: {reason}); the search records them as skipped_examples, "
                        "and --strict makes them an error")

    def trial_started(self, number, max_trials, hyperparameters, *, completed=0, rerun_of=None):
        """``trial 3/5``; a trial numbered past the maximum (a resumed search's re-runs) is counted
        by what is completed instead: ``trial 7 (re-run of trial 3; 4/5 completed)``."""
        self._trial_started = time.perf_counter()
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in hyperparameters.items() if not k.startswith("tuner/"))
        left = f" ({format_duration(self.deadline.left())} left)" if self.deadline is not None else ""
        if rerun_of is None and (max_trials is None or number <= max_trials):
            self._labels[number] = f"{number}/{max_trials}" if max_trials is not None else str(number)
            self._print(f"trial {self._labels[number]}{left}: {shown}")
            return
        self._labels[number] = str(number)
        again = f"re-run of trial {rerun_of}; " if rerun_of is not None else ""
        of_cap = f"/{max_trials}" if max_trials is not None else ""
        self._print(f"trial {number} ({again}{completed}{of_cap} completed{left.replace(' (', '; ').rstrip(')')}): "
                    f"{shown}")

    def epoch_ended(self, trial_number, phase, epoch, epochs, metrics):
        self._update_best(metrics.get(self.objective))
        shown = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if k != "seconds")
        best_text = f"  best so far {_fmt(self.best)}" if self.best is not None else ""
        self._print(f"  trial {self._labels.get(trial_number, trial_number)} {phase:8s} epoch {epoch}/{epochs}  {shown}"
                    f"  ({metrics.get('seconds', 0):.1f}s){best_text}")

    def trial_ended(self, trial):
        elapsed = time.perf_counter() - self._trial_started
        self._update_best(trial.value)
        if trial.status == "completed":
            self._print(f"trial {trial.number} completed: {self.objective} {_fmt(trial.value)} "
                        f"({trial.best_phase} epoch {trial.best_epoch}) in {elapsed:.0f}s; "
                        f"best so far {_fmt(self.best)}")
        else:
            self._print(f"trial {trial.number} {trial.status}: {trial.error}")

    def message(self, text):
        self._print(text)

    def _update_best(self, value: float | None) -> None:
        """A trial's value is its best epoch, so the best epoch seen is the search's best so far."""
        if value is None or value != value:
            return
        if self.best is None or (value > self.best if self.direction == "max" else value < self.best):
            self.best = value

    def _print(self, text: str) -> None:
        print(f"{self.prefix}{text}", file=self.stream, flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
