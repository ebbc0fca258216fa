"""Micro-batching for `autotl serve`: requests that arrive within a few milliseconds run as one batch.

A model answers 8 requests of one image each far faster as one batch of 8 than as 8 calls, one after the
other (each call pays the framework's fixed cost, and a batch uses the cores better). `MicroBatcher` runs
the model in one thread: it takes the first waiting request, waits up to `wait_s` for more (or until
`max_instances` are gathered), runs them together and hands each request its own rows. A request's
instances are never split across batches. With ``wait_s = 0`` each request runs alone, as before.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

DEFAULT_WAIT_MS = 5.0
DEFAULT_MAX_BATCH = 64  # instances in one batch (a single request may hold more; it then runs alone)


class MicroBatcher:
    """Runs `forward` (a list of prepared inputs -> probabilities, one row each) on the gathered requests."""

    def __init__(self, forward: Callable[[list[Any]], np.ndarray], wait_s: float = DEFAULT_WAIT_MS / 1000,
                 max_instances: int = DEFAULT_MAX_BATCH):
        self.forward, self.wait_s, self.max_instances = forward, wait_s, max_instances
        self._waiting: queue.Queue[tuple[list[Any], Future]] = queue.Queue()
        self._lock = threading.Lock()  # without batching: one model call at a time
        self.batches = 0  # how many model calls ran (for tests and the benchmark)
        if wait_s > 0:
            threading.Thread(target=self._run, name="autotl-batcher", daemon=True).start()

    def __call__(self, prepared: list[Any]) -> np.ndarray:
        """The probabilities of one request's prepared inputs; raises what the model raised for its batch."""
        if self.wait_s <= 0:
            with self._lock:
                self.batches += 1
                return self.forward(prepared)
        done: Future = Future()
        self._waiting.put((prepared, done))
        return done.result()

    def _run(self) -> None:
        while True:
            batch = [self._waiting.get()]
            count = len(batch[0][0])
            deadline = time.monotonic() + self.wait_s
            while count < self.max_instances:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self._waiting.get(timeout=left)
                except queue.Empty:
                    break
                batch.append(item)
                count += len(item[0])
            self._answer(batch)

    def _answer(self, batch: list[tuple[list[Any], Future]]) -> None:
        self.batches += 1
        try:
            rows = self.forward([x for prepared, _ in batch for x in prepared])
        except BaseException as exc:  # noqa: BLE001 - every request of the batch gets the error
            for _, done in batch:
                done.set_exception(exc)
            return
        start = 0
        for prepared, done in batch:
            done.set_result(rows[start:start + len(prepared)])
            start += len(prepared)
