"""A search's time budget (``--time-limit``): when to stop handing out trials, and when a trial stops training.

Like AutoGluon's ``time_limit`` or Optuna's ``timeout``, the limit bounds one run of the
search, from the moment it is asked for (a resumed or extended search gets it again). Three
rules keep the run within it and still end it with a usable best model:

1. the first trial always starts: a search needs one completed trial;
2. another trial starts only when the time left is at least the median duration of the
   trials completed so far; otherwise the oracle says "stop" to every tuner that asks
   (`DeadlineOracle`), workers of a distributed search included. With ``--fill-time`` (the
   default since the tuning suite's runs, README: A time budget) the oracle instead weighs
   each proposed trial by what a trial like it costs (`expected_seconds`): one that would not fit is passed over for the next proposal (the
   portfolio's next entry, another draw), so the time a long fine-tune leaves goes to heads
   on the cached activations and shallower fine-tunes, and the search stops only when no
   proposal fits;
3. a running trial stops at the deadline: at the end of the batch step that passes it, or
   at the end of an epoch when the next would end past it (`StopAtDeadline`, in
   `autotl.search.runner`). Its validation pass still runs, and the trial keeps its best
   epoch, like one that early stopping ended;
4. a trial's fine-tuning phase starts only when the time left covers at least the forward
   pass of its unfrozen blocks over the training examples (`room_for_a_finetune`): its tracing,
   first step and validation pass cannot be cut short, and once a head phase ends near the
   deadline, starting them anyway overran a 45 s limit by a third (the README's quick start).

The deadline is a wall-clock time (``time.time()``), so the trial processes and the workers
of the same machine share it. It comes `SEARCH_END_S` before the limit: what a search does
after its last trial (choosing its model, its summary, its process's exit) fits in the limit too.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple

from autotl.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``10m``, ``1.5h`` or ``1h30m``; a one-line UsageError otherwise."""
    compact = str(text).strip().lower().replace(" ", "")
    try:
        seconds = float(compact)
    except ValueError:
        parts = _PART.findall(compact)
        if not parts or "".join(f"{number}{unit}" for number, unit in parts) != compact:
            raise UsageError(f"cannot read the duration {text!r}: use e.g. 90s, 10m, 2h or 1h30m") from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(f"a duration must be more than 0 seconds, not {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``45s``, ``7m 05s``, ``2h 03m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def describe_budget(max_trials: int | None, time_limit: float | None) -> str:
    """``5 trials``, ``10m 00s``, or ``8 trials or 10m 00s`` (whichever ends the search first)."""
    parts = [f"{max_trials} trials"] if max_trials is not None else []
    if time_limit is not None:
        parts.append(format_duration(time_limit))
    return " or ".join(parts) or "no limit"


# Seconds kept for what follows the trials' deadline: the running trial's validation and checkpoint after the
# step that passed it, the summary (0.2 s) and the processes' exit (`autotl.workarounds.exit_at_once`).
SEARCH_END_S = 2.0


@dataclass(frozen=True)
class Deadline:
    at: float  # time.time() when the budget is spent

    @classmethod
    def after(cls, seconds: float, since: float | None = None) -> "Deadline":
        """`seconds` after `since` (a ``time.time()``; default: now)."""
        return cls((time.time() if since is None else since) + seconds)

    @classmethod
    def for_trials(cls, time_limit: float, since: float | None = None) -> "Deadline":
        """When the trials of a search limited to `time_limit` seconds from `since` must end: `SEARCH_END_S`
        before the limit."""
        return cls.after(time_limit - SEARCH_END_S, since)

    def left(self) -> float:
        return self.at - time.time()

    def passed(self) -> bool:
        return self.left() <= 0


def room_for_a_trial(deadline: Deadline, completed_durations: list[float], reserve: float = 0.0) -> bool:
    """Rules 1 and 2: with no trial completed, yes; else when the median trial still fits, and then
    `reserve` seconds more (the refit's, `autotl.search.refit`)."""
    if not completed_durations:
        return True
    return deadline.left() >= statistics.median(completed_durations) + reserve


def room_for_a_finetune(deadline: Deadline | None, pass_seconds: float | None, depth_share: float,
                        train_share: float) -> bool:
    """Rule 4. `pass_seconds`: what the trial's cache pass took, the whole backbone forward over the training
    and validation examples (None: its activations were read from the cache, and nothing bounds the
    phase); `depth_share`: the unfrozen blocks' share of the backbone's; `train_share`: the training
    examples' share of those the pass read. A lower bound of one fine-tuning epoch: no backward pass, no
    tracing."""
    if deadline is None:
        return True
    return deadline.left() > (pass_seconds or 0.0) * depth_share * train_share


class TrialCost(NamedTuple):
    """A completed trial's unfreeze depth (0: a head on the cached activations) and duration."""

    depth: int
    seconds: float


def expected_seconds(depth: int, completed: list[TrialCost]) -> float:
    """How long a trial that fine-tunes `depth` blocks should take, from the completed trials.

    A head on the cached activations (depth 0) takes what such heads took, and nothing
    when none ran yet (seconds: the backbone's pass is cached). A fine-tune takes the
    completed fine-tunes' median time per block times its depth: this overestimates
    shallow fine-tunes (the head phase and tracing do not shrink with depth), which errs
    on the side of the limit. With no fine-tune completed, rule 2's median of all trials.
    """
    if depth == 0:
        heads = [cost.seconds for cost in completed if cost.depth == 0]
        return statistics.median(heads) if heads else 0.0
    per_block = [cost.seconds / cost.depth for cost in completed if cost.depth > 0]
    if not per_block:
        return statistics.median(cost.seconds for cost in completed) if completed else 0.0
    return statistics.median(per_block) * depth


PROPOSALS_TO_FIT = 20  # proposals weighed before a --fill-time search concludes that none fits


class DeadlineOracle:
    """Mixed into a KerasTuner oracle: `create_trial` answers "stop" once no other trial fits.

    `deadline` is None for a search without a time limit; `completed_costs` returns the
    depths and durations of the search's completed trials (from the store).
    """

    deadline: Deadline | None = None
    completed_costs: Callable[[], list[TrialCost]] = staticmethod(list)
    reserve: Callable[[], float] = staticmethod(float)  # seconds kept for after the trials (a refit)
    fill_time: bool = False  # weigh each proposal by its expected cost (--fill-time)
    stopped_by_deadline: bool = False

    def create_trial(self, tuner_id):
        from autotl.workarounds import stopped_trial

        running_again = tuner_id in self.ongoing_trials  # KerasTuner hands that tuner its trial again
        if self.deadline is not None and not running_again and not self.fill_time \
                and not room_for_a_trial(self.deadline, [cost.seconds for cost in self.completed_costs()],
                                         self.reserve()):
            self.stopped_by_deadline = True
            return stopped_trial(self, tuner_id)
        return super().create_trial(tuner_id)

    def populate_space(self, trial_id):
        """With --fill-time, the first proposal that fits the time left; "stop" when none of
        `PROPOSALS_TO_FIT` does. The first trial always starts (rule 1)."""
        completed = self.completed_costs() if self.fill_time and self.deadline is not None else []
        if not completed:
            return super().populate_space(trial_id)
        for _ in range(PROPOSALS_TO_FIT):
            proposal = super().populate_space(trial_id)
            if proposal.get("status") != "RUNNING" or self._fits(proposal["values"], completed):
                return proposal
            self.pass_over(proposal["values"])
        self.stopped_by_deadline = True
        return {"status": "STOPPED", "values": None}

    def _fits(self, values: Mapping[str, Any], completed: list[TrialCost]) -> bool:
        depth = int(values.get("unfreeze_depth", 0))
        return self.deadline.left() >= expected_seconds(depth, completed) + self.reserve()

    def pass_over(self, values: Mapping[str, Any]) -> None:
        """A proposal that does not fit the time left: the portfolio skips it (`PortfolioOracle`, next in
        the oracle's classes); a draw is simply not recorded, and the next is another."""
        passed_over = getattr(super(), "pass_over", None)
        if passed_over is not None:
            passed_over(values)
