"""Streaming text assembly: incremental UTF-8 decoding of token bytes and stop-string scanning
that never emits the stop text (nor a prefix of it that may still become one)."""

from __future__ import annotations

import codecs


class Utf8Stream:
    """Token bytes -> text, holding back an incomplete multi-byte character."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopScanner:
    """Emits text up to the first stop string; holds back a tail that could start one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        self._pending += text
        if not self.stops:
            out, self._pending = self._pending, ""
            return out, False
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self._pending[:min(hits)]
            self._pending = ""
            return out, True
        hold = self._held_tail()
        cut = len(self._pending) - hold
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def _held_tail(self) -> int:
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out
