"""Progress of long stages: a live display on a terminal, plain periodic lines otherwise.

    with Progress("judge", total=7181, unit="requests", rate_unit="calls", emit=logger.info) as progress:
        ...
        progress.update(done, rate_count=calls_made, fields={"failed": "3", "cost": "$0.42"})

- On a terminal (``mode="auto"`` and the console is a TTY, or ``mode="live"``) a ``rich`` live
  display shows the label, a bar, done/total, the rate, the ETA and the caller's fields,
  redrawn four times a second. It draws on the console of the logging handler that prints
  through ``rich`` (Prefect's console handler) when there is one, so a log line printed
  meanwhile appears above the display instead of tearing through it. It is erased when the
  stage ends.
- Otherwise (CI, a worker, output to a file) one plain line through ``emit`` at most every
  ``interval_s`` seconds, from the first :meth:`Progress.update` on.
- Either way :meth:`Progress.close` emits one final line, which stays in the log.

``update`` is cheap (it stores numbers; the display thread renders them), so a caller may call it
often. Nothing here imports Prefect; ``rich`` is imported only for a live display.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

ProgressMode = Literal["auto", "live", "plain"]
PROGRESS_MODES: tuple[str, ...] = ("auto", "live", "plain")

_logger = logging.getLogger("kernelbook.progress")


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_count(n: float) -> str:
    """``950``, ``12.3k``, ``4.56M``: token counts at a glance."""
    n = float(n)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            value = n / limit
            return f"{value:.3g}{suffix}" if value < 100 else f"{value:.0f}{suffix}"
    return f"{n:.0f}"


def log_console() -> Any | None:
    """The ``rich`` Console a logging handler prints through (Prefect's console handler on the
    root or ``prefect`` logger), if any: a live display must draw on that one."""
    from rich.console import Console

    for name in (None, "prefect"):
        for handler in logging.getLogger(name).handlers:
            console = getattr(handler, "console", None)
            if isinstance(console, Console):
                return console
    return None


class Progress:
    """The progress of one stage (see the module doc).

    Args:
        label: names the stage in every line ("judge", "load").
        total: units of work in the stage.
        unit: what ``done`` counts ("requests", "rows").
        rate_unit: what the rate counts, when not ``unit`` (the LLM stages count calls/s while
            ``done`` counts requests, some of them answered from the cache).
        done: units already done when the stage starts (cache hits): not counted in the rate.
        emit: where plain lines and the final line go (default: this module's logger).
        mode: ``auto`` (live on a terminal), ``live`` or ``plain``.
        console: the ``rich`` Console to draw on (default: :func:`log_console`, else stderr).
        interval_s: seconds between plain lines.
    """

    def __init__(self, label: str, total: int, *, unit: str = "rows", rate_unit: str | None = None,
                 done: int = 0, emit: Callable[[str], Any] | None = None, mode: str = "auto",
                 console: Any | None = None, interval_s: float = 5.0) -> None:
        if mode not in PROGRESS_MODES:
            raise ValueError(f"progress mode must be one of {', '.join(PROGRESS_MODES)}, not {mode!r}")
        self.label = label
        self.total = max(0, int(total))
        self.unit = unit
        self.rate_unit = rate_unit or unit
        self.emit = emit or _logger.info
        self.mode = mode
        self.interval_s = interval_s
        self._console = console
        self._lock = threading.Lock()
        self._done = int(done)
        self._rate_count = 0
        self._fields: dict[str, str] = {}
        self._started = time.monotonic()
        self._start_done = int(done)
        self._start_rate_count = 0
        self._last_line = self._started
        self._live: Any = None
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close(note="stopped" if exc[0] is not None else "finished")

    @property
    def live(self) -> bool:
        """True while a live display is shown."""
        return self._live is not None

    def start(self) -> Progress:
        """Show the live display when there is a terminal for it (else nothing to do yet)."""
        if self.mode == "plain" or self._live is not None:
            return self
        try:
            console = self._console or log_console()
            if console is None:
                from rich.console import Console

                console = Console(stderr=True)
            if self.mode == "auto" and not (console.is_terminal and not console.is_dumb_terminal):
                return self
            from rich.live import Live

            live = Live(_Renderable(self), console=console, refresh_per_second=4, transient=True)
            live.start()
            self._live = live
        except Exception as exc:  # noqa: BLE001 - a display problem must never stop the work
            _logger.debug(f"no live progress display ({type(exc).__name__}: {exc}); plain lines instead")
            self._live = None
        return self

    def close(self, *, note: str = "finished") -> None:
        """Stop the live display and emit the final line (once). A stage that stopped before
        doing anything (a user mistake found at its start) emits none: the error says it all."""
        if self._closed:
            return
        self._closed = True
        live, self._live = self._live, None
        if live is not None:
            try:
                live.stop()
            except Exception:  # noqa: BLE001
                pass
        if note == "finished" or self._done != self._start_done:
            self.emit(self.line() + (f" ({note})" if note else ""))

    # --- updates ---------------------------------------------------------------------------

    def update(self, done: int, *, rate_count: int | None = None, fields: Mapping[str, str] | None = None) -> None:
        """Record the state: ``done`` units, ``rate_count`` (what the rate counts; default
        ``done``) and the caller's ``fields`` (shown in order, as ``name value``). In plain
        mode, emits a line when ``interval_s`` has passed since the last one."""
        with self._lock:
            self._done = int(done)
            self._rate_count = int(rate_count) if rate_count is not None else int(done) - self._start_done
            if fields is not None:
                self._fields = dict(fields)
        if self._live is None and not self._closed:
            now = time.monotonic()
            if now - self._last_line >= self.interval_s:
                self._last_line = now
                self.emit(self.line())

    def advance(self, n: int = 1, *, fields: Mapping[str, str] | None = None) -> None:
        """``update`` with ``n`` more units done."""
        self.update(self._done + n, fields=fields)

    # --- rendering -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """done, total, percent, elapsed_s, rate (per second), eta_s (None when unknown), fields."""
        with self._lock:
            done, rate_count, fields = self._done, self._rate_count, dict(self._fields)
        elapsed = max(0.0, time.monotonic() - self._started)
        progressed = done - self._start_done
        remaining = max(0, self.total - done)
        timed = elapsed >= 1e-3  # no rate from an instant
        eta = 0.0 if not remaining else (remaining * elapsed / progressed if progressed > 0 and timed else None)
        return {
            "done": done, "total": self.total,
            "percent": 100.0 * done / self.total if self.total else 100.0,
            "elapsed_s": elapsed, "rate": (rate_count - self._start_rate_count) / elapsed if timed else 0.0,
            "eta_s": eta, "fields": fields,
        }

    def line(self) -> str:
        """The plain line: ``judge: 30/32 requests done (93.8%), 5.6 calls/s, ETA 1s, failed 0``."""
        s = self.snapshot()
        parts = [f"{self.label}: {s['done']}/{s['total']} {self.unit} done ({s['percent']:.1f}%)",
                 f"{s['rate']:.1f} {self.rate_unit}/s", f"ETA {format_duration(s['eta_s'])}",
                 f"elapsed {format_duration(s['elapsed_s'])}"]
        parts += [f"{name} {value}" for name, value in s["fields"].items()]
        return ", ".join(parts)


class _Renderable:
    """What the live display draws, built from the progress's state at every refresh."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __rich__(self) -> Any:
        try:
            return self._render()
        except Exception as exc:  # noqa: BLE001 - an error in the display thread must not end the run
            from rich.text import Text

            return Text(f"{self.progress.line()} (display error: {type(exc).__name__})")

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        p = self.progress
        s = p.snapshot()
        grid = Table.grid(padding=(0, 1))
        grid.add_row(
            Text(p.label, style="bold"),
            # Colours, not theme names: Prefect's console has a theme of its own without rich's
            # "bar.*" styles, and a missing style is an error in the display thread.
            ProgressBar(total=max(s["total"], 1), completed=min(s["done"], max(s["total"], 1)), width=30,
                        style="grey35", complete_style="cyan", finished_style="green", pulse_style="cyan"),
            Text(f"{s['done']}/{s['total']} {p.unit}"),
            Text(f"{s['percent']:.1f}%"),
            Text(f"{s['rate']:.1f} {p.rate_unit}/s"),
            Text(f"ETA {format_duration(s['eta_s'])}"),
        )
        if s["fields"]:
            details = Table.grid(padding=(0, 1))
            details.add_row(Text("  " + "  ".join(f"{name} {value}" for name, value in s["fields"].items()), style="dim"))
            outer = Table.grid()
            outer.add_row(grid)
            outer.add_row(details)
            return outer
        return grid

