"""Progress lines on stderr for long steps (conversion, quantization): one line per stage,
rewritten in place on a terminal, throttled elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressPrinter:
    """A `progress(stage, done, total)` callback."""

    def __init__(self, stream: TextIO = sys.stderr, every_s: float = 0.5):
        self.stream = stream
        self.every_s = every_s if stream.isatty() else 5.0
        self._stage = ""
        self._started = self._last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self._stage:
            if self._stage:
                self.stream.write("\n" if self.stream.isatty() else "")
            self._stage, self._started, self._last = stage, now, 0.0
        finished = total > 0 and done >= total
        if not finished and now - self._last < self.every_s:
            return
        self._last = now
        pct = 100.0 * done / total if total else 100.0
        line = f"{stage}: {pct:5.1f}% {done / 1e9:.2f}/{total / 1e9:.2f} GB {now - self._started:.0f}s"
        if self.stream.isatty():
            self.stream.write("\r" + line + ("\n" if finished else ""))
        else:
            self.stream.write(line + "\n")
        if finished:
            self._stage = ""
        self.stream.flush()
