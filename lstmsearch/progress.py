"""Progress of long work on stderr: a tqdm bar on a terminal, plain lines in a log or a pipe.

A build that writes to a log file would otherwise print nothing for minutes (a tqdm bar
redraws one line with carriage returns, useless in a file). `LineProgress` prints a line
such as

    indexing: 196,608/1,000,000 tok (19.7%), 28,100 tok/s, 29 s left

at most every `every` seconds and once at the end, with the same `update`/`with` interface
as a tqdm bar, so callers never ask which one they have.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm

LINE_EVERY = 2.0
"""Least seconds between two progress lines."""


class LineProgress:
    """A tqdm stand-in that prints plain progress lines (see the module docstring)."""

    def __init__(self, total: int, desc: str, unit: str = "tok", every: float = LINE_EVERY,
                 file: IO[str] | None = None):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.file = file if file is not None else sys.stderr
        self.n = 0
        self.started = time.perf_counter()
        self.printed = self.started
        self.closed = False

    def update(self, n: int = 1) -> None:
        """Count `n` more done; print a line when `every` seconds passed since the last."""
        self.n += n
        now = time.perf_counter()
        if now - self.printed >= self.every or (self.total and self.n >= self.total):
            self.printed = now
            self.file.write(self.line(now) + "\n")
            self.file.flush()

    def line(self, now: float) -> str:
        """`desc: done/total unit (percent), rate, time left`."""
        seconds = max(now - self.started, 1e-9)
        rate = self.n / seconds
        parts = [f"{self.desc}: {self.n:,}" + (f"/{self.total:,}" if self.total else "")
                 + f" {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.1f}%)"
        parts.append(f"{rate:,.0f} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"{(self.total - self.n) / rate:,.0f} s left")
        elif self.total and self.n >= self.total:
            parts.append(f"done in {seconds:,.1f} s")
        return ", ".join(parts)

    def close(self) -> None:
        """Print the last line if the count moved since the one before."""
        if not self.closed and self.n and self.printed < time.perf_counter() and (
                not self.total or self.n < self.total):
            self.file.write(self.line(time.perf_counter()) + "\n")
            self.file.flush()
        self.closed = True

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_bar(total: int, enabled: bool | None, desc: str, unit: str = "tok"
                 ) -> tqdm | LineProgress:
    """Progress on stderr: `enabled=None` (the default of every long command) gives a tqdm
    bar on a terminal and plain lines otherwise; True always a bar; False nothing."""
    if enabled is None and not sys.stderr.isatty():
        return LineProgress(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                file=sys.stderr, disable=enabled is False, smoothing=0.1)
