"""Progress lines on a terminal (`autotl.insight.bar`): drawn in place, cleared at the end, never elsewhere."""

from __future__ import annotations

import io
import time

from autotl.insight.bar import REDRAW_S, ProgressLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_line_is_drawn_in_place_at_most_five_times_a_second_and_cleared():
    terminal = Terminal()
    line = ProgressLine("computing", total=4, stream=terminal)
    assert terminal.getvalue() == "\rcomputing [------------------------] 0/4 0s\x1b[K"
    line.update(2)  # too soon to draw again
    assert terminal.getvalue().count("\r") == 1
    time.sleep(REDRAW_S + 0.05)
    line.update(2)
    assert terminal.getvalue().endswith("\rcomputing [############------------] 2/4 0s\x1b[K")
    line.close()
    assert terminal.getvalue().endswith("\r\x1b[K")


def test_a_line_that_waits_shows_nothing_for_work_shorter_than_its_wait():
    terminal = Terminal()
    with ProgressLine("epoch 1/3", total=10, after_s=60, stream=terminal) as line:
        line.update(5)
    assert terminal.getvalue() == ""


def test_nothing_is_written_where_stderr_is_not_a_terminal():
    piped = io.StringIO()
    with ProgressLine("exporting onnx", stream=piped) as line:
        line.update(1)
    assert piped.getvalue() == ""
