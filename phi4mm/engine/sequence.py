"""One request inside the engine: its rows (prompt items, then the tokens it generates), how many
of them its KV slot holds, its sampler and stop scanner, and where its output goes. Pure
bookkeeping; the scheduler decides when rows are decoded."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from phi4mm.engine.contexts import Item, Slot, row_keys
from phi4mm.engine.encoders import Span
from phi4mm.engine.llama import Sampler
from phi4mm.engine.streaming import StopScanner, Utf8Stream
from phi4mm.modes import Mode
from phi4mm.params import GenerationParams
from phi4mm.usage import Usage

END = object()  # the last thing a sink receives (after the final Chunk, the logits, or an exception)


@dataclass(frozen=True)
class Chunk:
    text: str
    finish_reason: str | None = None   # "stop" or "length" on the last chunk


@dataclass(frozen=True)
class Run:
    """A slice of a sequence's pending rows that one decode call can take: token ids or
    embedding rows (never both: notes §5), starting at row `pos0`."""
    pos0: int
    tokens: list[int] | None = None
    rows: np.ndarray | None = None      # (n, n_embd) float32

    @property
    def n(self) -> int:
        return len(self.tokens) if self.tokens is not None else self.rows.shape[0]


Sink = Callable[[object], None]


class Sequence:
    """`items` end with a text token (Engine.prepare checks). `params` None: a prompt-logits
    request (its sink gets the last row's logits, then END). Otherwise a generation: Chunks, the
    last with finish_reason, then END. Errors: the exception, then END. `usage` is filled in as it
    goes and final once END is sent."""

    def __init__(self, items: list[Item], mode: Mode, params: GenerationParams | None, sampler: Sampler | None,
                 sink: Sink, usage: Usage, should_stop: Callable[[], bool] | None = None):
        self.items = list(items)
        self.keys = row_keys(self.items)
        self.mode = mode
        self.params = params
        self.sampler = sampler
        self.sink = sink
        self.usage = usage
        self.should_stop = should_stop
        self.slot: Slot | None = None
        self.pos = 0                        # rows whose KV the slot holds
        self.done = False
        self.utf8, self.stops = Utf8Stream(), StopScanner(params.stop if params else ())
        self.submitted_s = time.perf_counter()
        self.admitted_s: float | None = None
        self.first_token_s: float | None = None
        self.token_times_s: list[float] = []  # perf_counter() at each generated token
        self._cancelled = threading.Event()
        self._starts, self._payloads = _segments(self.items)

    @property
    def lora(self) -> str | None:
        return self.mode.lora

    @property
    def total(self) -> int:
        return len(self.keys)

    @property
    def decoding(self) -> bool:
        """Only the last sampled token is pending: a latency-bound stream."""
        return self.total - self.pos == 1 and self.usage.completion_tokens > 0

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set() or (self.should_stop is not None and self.should_stop())

    def next_run(self, budget: int) -> Run:
        """The next at most `budget` pending rows, within one token run or one span."""
        i = bisect.bisect_right(self._starts, self.pos) - 1
        start, payload = self._starts[i], self._payloads[i]
        lo = self.pos - start
        if isinstance(payload, np.ndarray):
            return Run(self.pos, rows=payload[lo:lo + budget])
        return Run(self.pos, tokens=payload[lo:lo + budget])

    def append(self, token: int) -> None:
        """A generated token becomes the next pending row."""
        self.items.append(token)
        self.keys.append(token)
        last = self._payloads[-1]
        if isinstance(last, list):
            last.append(token)
        else:  # cannot happen: a sequence ends with a token run
            self._starts.append(self.total - 1)
            self._payloads.append([token])


def _segments(items: list[Item]) -> tuple[list[int], list]:
    """Items -> (start rows, payloads): runs of token ids (lists) and spans' rows (arrays)."""
    starts: list[int] = []
    payloads: list = []
    pos = 0
    for item in items:
        if isinstance(item, Span):
            starts.append(pos)
            payloads.append(item.rows)
            pos += item.rows.shape[0]
            continue
        if not payloads or not isinstance(payloads[-1], list):
            starts.append(pos)
            payloads.append([])
        payloads[-1].append(item)
        pos += 1
    return starts, payloads
