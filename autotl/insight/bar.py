"""Progress on a terminal, for the long stretches a search and an export would otherwise spend in
silence: the pass that fills the activation cache, the batches of a long epoch, each export format.

One line on stderr, redrawn in place and cleared when the work ends, so that the lines around it
(epochs, trials) read as before. Only on a terminal: piped or logged output never holds it. A line
that asks to wait (`after_s`) appears only once its work has lasted that long, so quick epochs do
not flicker.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24  # characters of the bar itself
REDRAW_S = 0.2  # at most five redraws a second


def on_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


class ProgressLine:
    """``label [#######-----------------] 12/25 3s``, or ``label... 12 3s`` without a `total`."""

    def __init__(self, label: str, total: int | None = None, *, after_s: float = 0.0,
                 stream: TextIO | None = None):
        self.label, self.total, self.after_s = label, total, after_s
        self.stream = stream or sys.stderr
        self.enabled = on_terminal(self.stream)
        self.started = time.perf_counter()
        self._drawn_at: float | None = None
        if after_s <= 0:
            self.update(0)

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.started < self.after_s or (self._drawn_at is not None and now - self._drawn_at < REDRAW_S):
            return
        self._drawn_at = now
        elapsed = f"{now - self.started:.0f}s"
        if self.total:
            filled = min(WIDTH, int(WIDTH * done / self.total))
            text = f"{self.label} [{'#' * filled}{'-' * (WIDTH - filled)}] {min(done, self.total)}/{self.total} {elapsed}"
        else:
            text = f"{self.label}... {done} {elapsed}" if done else f"{self.label}... {elapsed}"
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Clear the line, if it was drawn."""
        if self.enabled and self._drawn_at is not None:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn_at = None

    def __enter__(self) -> "ProgressLine":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
