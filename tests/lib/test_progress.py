"""The progress reporter of long stages (``kernelbook_lib.progress``): plain lines without a
terminal, a live display on one, drawn on the console the log handler prints through."""

from __future__ import annotations

import io
import logging
import re

import pytest
from rich.console import Console
from rich.theme import Theme

from kernelbook_lib import progress as progress_mod
from kernelbook_lib.progress import Progress, format_count, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    return clock


def terminal() -> tuple[Console, io.StringIO]:
    """A terminal console like Prefect's console handler's: a theme of its own, without rich's
    default styles (the display must not rely on them)."""
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=160, theme=Theme({}, inherit=False)), buffer


def test_plain_lines_come_at_most_every_interval_with_rate_eta_and_fields(clock):
    lines: list[str] = []
    p = Progress("judge", 100, unit="requests", rate_unit="calls", done=20, emit=lines.append, mode="plain",
                 interval_s=5.0).start()
    assert not p.live
    clock.now += 2
    p.update(30, rate_count=10, fields={"failed": "1", "cost": "$0.01"})
    assert lines == []  # the interval has not passed
    clock.now += 3
    p.update(40, rate_count=20, fields={"failed": "1", "cost": "$0.02"})
    assert lines == ["judge: 40/100 requests done (40.0%), 4.0 calls/s, ETA 15s, elapsed 5s, failed 1, cost $0.02"]
    # The 20 requests done at the start (cache hits) count in done, not in the rate or the ETA.
    clock.now += 1
    p.update(41, rate_count=21)
    assert len(lines) == 1
    p.close()
    assert lines[-1].startswith("judge: 41/100 requests done (41.0%)") and lines[-1].endswith("(finished)")
    p.close()
    assert len(lines) == 2  # the final line comes once


def test_auto_mode_without_a_terminal_prints_plain_lines(clock):
    lines: list[str] = []
    with Progress("load", 10, emit=lines.append, console=Console(file=io.StringIO()), interval_s=0) as p:
        assert not p.live
        p.advance(4)
        p.advance(6)
    assert [re.sub(r", elapsed .*", "", line) for line in lines] == [
        "load: 4/10 rows done (40.0%), 0.0 rows/s, ETA ?",
        "load: 10/10 rows done (100.0%), 0.0 rows/s, ETA 0s",
        "load: 10/10 rows done (100.0%), 0.0 rows/s, ETA 0s"]
    assert lines[-1].endswith("(finished)")


def test_a_terminal_gets_a_live_display_with_every_figure(clock):
    console, buffer = terminal()
    lines: list[str] = []
    p = Progress("judge", 200, unit="requests", rate_unit="calls", emit=lines.append, console=console).start()
    try:
        assert p.live
        clock.now += 10
        p.update(50, rate_count=50, fields={"cache hits": "0", "failed": "2 (+1 retrying)", "tokens": "1.2M in (40% cached) / 80k out",
                                           "cost": "$0.42"})
        p._live.refresh()
        shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
        assert "display error" not in shown
        for figure in ("judge", "50/200 requests", "25.0%", "5.0 calls/s", "ETA 30s", "failed 2 (+1 retrying)",
                       "tokens 1.2M in (40% cached) / 80k out", "cost $0.42"):
            assert figure in shown, figure
        assert lines == []  # no periodic lines while the display shows the state
    finally:
        p.close()
    assert not p.live and len(lines) == 1 and "50/200 requests done" in lines[0]


def test_log_lines_print_above_the_live_display_not_through_it(clock, monkeypatch):
    console, buffer = terminal()

    class RichHandler(logging.Handler):  # what Prefect's console handler is: it prints through a Console
        def __init__(self) -> None:
            super().__init__()
            self.console = console

        def emit(self, record: logging.LogRecord) -> None:
            self.console.print(self.format(record), soft_wrap=True)

    handler = RichHandler()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    assert progress_mod.log_console() is console
    logger = logging.getLogger("kernelbook.test-progress")
    logger.setLevel(logging.INFO)

    with Progress("judge", 10, emit=logger.info) as p:  # no console given: it finds the handler's
        assert p.live
        p.update(3)
        p._live.refresh()
        logger.info("a warning from a chunk, in one piece")
        p.update(4)
        p._live.refresh()
    out = buffer.getvalue()
    assert "a warning from a chunk, in one piece" in out  # whole, on its own line
    assert re.search(r"^a warning from a chunk, in one piece\s*$", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", out), re.M)
    assert out.rstrip().endswith("(finished)")  # the display is gone; the final line stays


def test_a_display_problem_falls_back_to_plain_lines(clock, monkeypatch):
    import rich.live

    def broken(*args, **kwargs):
        raise RuntimeError("Only one live display may be active at once")

    monkeypatch.setattr(rich.live, "Live", broken)
    console, _ = terminal()
    lines: list[str] = []
    with Progress("judge", 2, emit=lines.append, console=console, interval_s=0) as p:
        assert not p.live
        p.update(1)
    assert len(lines) == 2


def test_a_wrong_mode_is_refused():
    with pytest.raises(ValueError, match="progress mode"):
        Progress("x", 1, mode="fancy")


@pytest.mark.parametrize(("seconds", "text"), [(None, "?"), (0, "0s"), (42.4, "42s"), (185, "3m05s"), (3720, "1h02m"),
                                               (float("inf"), "?")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [(950, "950"), (12_345, "12.3k"), (4_560_000, "4.56M"), (250_000, "250k")])
def test_format_count(n, text):
    assert format_count(n) == text


def test_a_stage_stopped_before_any_work_emits_no_final_line(clock):
    lines: list[str] = []
    with pytest.raises(ValueError):
        with Progress("load", 10, emit=lines.append, mode="plain"):
            raise ValueError("the source has no rows")
    assert lines == []
    with pytest.raises(ValueError):
        with Progress("judge", 10, emit=lines.append, mode="plain") as p:
            p.update(4)
            raise ValueError("HTTP 401")
    assert len(lines) == 1 and lines[0].startswith("judge: 4/10 rows done") and lines[0].endswith("(stopped)")
