"""The one-line progress indicator of long jobs (statistics, shards), on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO

#: Runs shorter than this many seconds print nothing.
PROGRESS_DELAY_S = 2.0


def fmt_time(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = int(max(0.0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A one-line progress indicator on stderr; nothing at all for runs under ``delay`` s.

    On a terminal the line is rewritten in place (at most 10 times a second); elsewhere (logs)
    a line is printed every 10 seconds. ``unit`` names what ``total`` counts (``"images"``,
    ``"shards"``); with ``images`` given to :meth:`update` for another unit, the image rate is
    shown beside it.
    """

    def __init__(
        self,
        total: int | None,
        *,
        name: str,
        unit: str = "images",
        initial: int = 0,
        quiet: bool = False,
        delay: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.total = total
        self.name = name
        self.unit = unit
        self.done = initial
        self.initial = initial
        self.images = 0
        self.quiet = quiet
        self.delay = PROGRESS_DELAY_S if delay is None else delay
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def line(self, now: float | None = None) -> str:
        """The text of the progress line at time ``now`` (``time.monotonic()``)."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        new = self.done - self.initial
        count = self.images if self.unit != "images" else new
        rate = f"{count / elapsed:,.0f} img/s"
        extra = f", {self.images:,} images" if self.unit != "images" else ""
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) * elapsed / new if new > 0 else 0.0
            return (
                f"firstlayer: {self.name}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%)"
                f"{extra}, {rate}, {fmt_time(elapsed)} elapsed, {fmt_time(eta)} left"
            )
        return (
            f"firstlayer: {self.name}: {self.done:,} {self.unit}{extra}, {rate}, "
            f"{fmt_time(elapsed)} elapsed"
        )

    def update(self, n: int, *, images: int = 0) -> None:
        """Count ``n`` more units (and ``images`` more images when the unit is not images)."""
        self.done += n
        self.images += images
        if self.quiet:
            return
        now = time.monotonic()
        if now - self.start < self.delay:
            return
        if now - self.last < (0.1 if self.tty else 10.0) and self.shown:
            return
        self.last = now
        self.shown = True
        line = self.line(now)
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Print the final state (only if a line was shown)."""
        if self.quiet or not self.shown:
            return
        line = self.line()
        self.stream.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
        self.stream.flush()
