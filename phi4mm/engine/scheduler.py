"""Continuous batching: one engine thread runs a step loop over every admitted sequence.

Each step picks one group of sequences that share a context (one per LongRoPE factor set and
adapter set, its adapters fixed for its lifetime: no step changes them), taking turns between
groups, and decodes one batch: the next token of every decoding
sequence in the group plus a bounded chunk of pending prompt rows (token rows in the same
llama_decode call; image and audio rows in a second one, since a batch is either tokens or
embeddings), shortest prompts first. So a long prompt is spread over many steps and stalls other
streams by at most one chunk; a short prompt queued behind a long one starts within a step or two;
a lone prompt takes whole batches. Each sequence samples from its own logits row with its own
sampler chain.

Sequences wait in FIFO order for a free slot of their context (or for the KV budget to have room
for that context); a finished one leaves its KV in its slot as a cached prefix (contexts.py). A
sequence that outgrows its short context and finds no room for a long one waits again, first in
line, and is re-decoded in a long slot once there is room. A cancelled one (closed generator, gone
client, should_stop) leaves at the start of the next step. Contexts unused for their idle time are
closed at the start of a step, or every IDLE_CHECK_S while the engine has nothing to do.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from phi4mm.engine.contexts import Contexts
from phi4mm.engine.llama import EmbeddingRun, Model, TokenRow
from phi4mm.engine.sequence import END, Chunk, Run, Sequence
from phi4mm.errors import Cancelled, EngineError

RATE_WINDOW_S = 10.0
IDLE_CHECK_S = 5.0      # how often an idle engine thread looks for contexts to release


@dataclass
class SchedulerStats:
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    steps: int = 0
    prompt_rows: int = 0        # prompt rows decoded (not reused)
    completion_tokens: int = 0
    recent: deque = field(default_factory=deque)  # (time, tokens generated in that step)

    def record(self, now: float, generated: int) -> None:
        self.completion_tokens += generated
        self.recent.append((now, generated))
        while self.recent[0][0] < now - RATE_WINDOW_S:
            self.recent.popleft()

    def tokens_per_second(self, now: float) -> float:
        return sum(n for t, n in list(self.recent) if t >= now - RATE_WINDOW_S) / RATE_WINDOW_S


class Scheduler:
    def __init__(self, model: Model, contexts: Contexts, n_batch: int, prefill_chunk: int):
        self.model = model
        self.contexts = contexts
        self.n_batch = n_batch
        self.prefill_chunk = max(1, min(prefill_chunk, n_batch))
        self.stats = SchedulerStats()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._turn = -1
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="phi4mm-engine", daemon=True)
        self._thread.start()

    # -- any thread ----------------------------------------------------------------------------

    def submit(self, seq: Sequence) -> None:
        with self._cond:
            if self._closing:
                raise EngineError("the model is closed")
            self.waiting.append(seq)
            self._cond.notify()

    def wake(self) -> None:
        """Look at cancellations now (a sequence's cancel() calls this)."""
        with self._cond:
            self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout_s: float = 30.0) -> bool:
        """Cancel everything and stop the thread; True once it has ended."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # -- the engine thread -----------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self.running and not self.waiting:
                    self.contexts.release_idle()
                    self._cond.wait(IDLE_CHECK_S)
                if self._closing:
                    break
            self.step()
        for seq in [*self.running, *self.waiting]:
            self._finish(seq, Cancelled("the model was closed"))

    def step(self) -> None:
        self._drop_cancelled()
        self.contexts.release_idle()
        self._admit()
        group = self._next_group()
        if not group:
            if self.waiting and not self.running:  # cannot happen: a free slot admits the head
                self._finish(self.waiting[0], EngineError("no slot can hold this sequence"))
            return
        try:
            self._decode(group)
        except Exception as exc:  # noqa: BLE001 - the group's requests get it; the others go on
            error = exc if isinstance(exc, EngineError) else EngineError(f"decoding failed: {exc!r}")
            for seq in group:
                if seq.slot is not None:  # what the failed call left in the KV is unknown
                    seq.slot.ctx.truncate(seq.slot.seq, 0)
                self._finish(seq, error)

    def _drop_cancelled(self) -> None:
        with self._cond:
            gone = [s for s in [*self.running, *self.waiting] if s.cancelled]
        for seq in gone:
            self._finish(seq, Cancelled("the request was cancelled"))

    def _admit(self) -> None:
        while True:
            with self._cond:
                if not self.waiting:
                    return
                seq = self.waiting[0]
                got = self.contexts.acquire(self.contexts.kind_for(seq.total), seq.keys, seq.lora)
                if got is None:
                    return
                self.waiting.popleft()
                self.running.append(seq)
            seq.slot, seq.pos = got
            if seq.admitted_s is None:  # (not a sequence that came back to wait for a long slot)
                seq.usage.cached_tokens = seq.pos
                seq.admitted_s = time.perf_counter()
                seq.usage.queue_seconds = seq.admitted_s - seq.submitted_s

    def _next_group(self) -> list[Sequence]:
        """The sequences of the next context (LongRoPE kind, adapter set) in turn."""
        groups: dict[tuple[str, str], list[Sequence]] = {}
        for seq in self.running:
            groups.setdefault((seq.slot.kind, seq.slot.lora or ""), []).append(seq)
        if not groups:
            return []
        order = sorted(groups)
        self._turn = (self._turn + 1) % len(order)
        return groups[order[self._turn]]

    def _decode(self, group: list[Sequence]) -> None:
        ctx = group[0].slot.ctx
        streams = [s for s in group if s.decoding]
        prompts = sorted((s for s in group if not s.decoding), key=lambda s: s.total - s.pos)  # shortest first
        planned: list[tuple[Sequence, Run]] = [(s, s.next_run(1)) for s in streams]
        token_room, embd_room = self.n_batch - len(streams), self.n_batch
        chunk = self._prompt_rows()
        for seq in prompts:
            if chunk <= 0:
                break
            is_embd = seq.next_run(1).rows is not None
            room = min(chunk, embd_room if is_embd else token_room)
            if room <= 0:
                continue
            run = seq.next_run(room)
            if is_embd:
                embd_room -= run.n
            else:
                token_room -= run.n
            chunk -= run.n
            planned.append((seq, run))
        runs = [(s, r) for s, r in planned if r.rows is not None]
        if runs:
            ctx.decode_embeddings([EmbeddingRun(r.rows, r.pos0, s.slot.seq) for s, r in runs])
        token_rows, heads = [], []
        for seq, run in planned:
            if run.tokens is None:
                continue
            ends = run.pos0 + run.n == seq.total
            for i, tok in enumerate(run.tokens):
                token_rows.append(TokenRow(tok, run.pos0 + i, seq.slot.seq, ends and i == run.n - 1))
            if ends:
                heads.append((seq, len(token_rows) - 1))
        if token_rows:
            ctx.decode_tokens(token_rows)
        self.stats.steps += 1
        for seq, run in planned:
            seq.pos += run.n
            if seq.usage.completion_tokens == 0:
                self.stats.prompt_rows += run.n
        generated = 0
        for seq, index in heads:
            generated += self._after_logits(seq, ctx, index)
        self.stats.record(time.perf_counter(), generated)

    def _prompt_rows(self) -> int:
        """Prompt rows this step, all prompts together: a chunk while anyone waits for tokens; a
        quarter batch while several prompts share the steps (a short one then starts streaming
        within a step or two); whole batches for a lone prompt."""
        if any(s.decoding for s in self.running):
            return self.prefill_chunk
        return self.n_batch if len(self.running) == 1 else max(self.prefill_chunk, self.n_batch // 4)

    def _after_logits(self, seq: Sequence, ctx, index: int) -> int:
        """Sample (or hand out the logits); 1 if a token was generated."""
        now = time.perf_counter()
        if seq.first_token_s is None:
            seq.first_token_s = now
            seq.usage.prompt_seconds = now - seq.admitted_s
        if seq.params is None:
            seq.sink(ctx.logits(index))
            self._finish(seq)
            return 0
        token = seq.sampler.sample(ctx, index)
        seq.usage.completion_seconds = time.perf_counter() - seq.first_token_s
        self._on_token(seq, token)
        return 1

    def _on_token(self, seq: Sequence, token: int) -> None:
        usage, params = seq.usage, seq.params
        usage.completion_tokens += 1
        seq.token_times_s.append(time.perf_counter())
        if self.model.is_eog(token):
            return self._end(seq, "stop", flush=True)
        text, hit = seq.stops.feed(seq.utf8.feed(self.model.piece(token)))
        if text:
            seq.sink(Chunk(text))
        if hit:
            return self._end(seq, "stop", flush=False)
        limit = params.max_tokens or self.contexts.n_ctx
        if seq.total + 1 > self.contexts.n_ctx or usage.completion_tokens >= limit:
            return self._end(seq, "length", flush=True)
        seq.append(token)
        if seq.slot.kind == "short" and seq.total > self.contexts.capacity("short"):
            self._move_to_long(seq)
        return None

    def _move_to_long(self, seq: Sequence) -> None:
        """Past n_orig rows: the whole sequence is re-decoded with the long factors, now, or after
        waiting first in line when no long slot is free or the KV budget has no room yet."""
        self.contexts.release(seq.slot, seq.keys[:seq.pos])
        got = self.contexts.acquire("long", seq.keys, seq.lora)
        if got is None:
            seq.slot, seq.pos = None, 0
            with self._cond:
                self.running.remove(seq)
                self.waiting.appendleft(seq)
            return
        seq.slot, seq.pos = got

    def _end(self, seq: Sequence, finish: str, flush: bool) -> None:
        tail = ""
        if flush:  # what was held back as a possible stop-string start
            tail, _ = seq.stops.feed(seq.utf8.flush())
            tail += seq.stops.flush()
        seq.usage.completion_seconds = time.perf_counter() - seq.first_token_s
        seq.sink(Chunk(tail, finish))
        self._finish(seq)

    def _finish(self, seq: Sequence, error: BaseException | None = None) -> None:
        if seq.done:
            return
        seq.done = True
        with self._cond:
            if seq in self.running:
                self.running.remove(seq)
            elif seq in self.waiting:
                self.waiting.remove(seq)
        if seq.slot is not None:  # after a decoding failure the KV holds nothing known
            known = error is None or isinstance(error, Cancelled)
            self.contexts.release(seq.slot, seq.keys[:seq.pos] if known else [])
        if seq.sampler is not None:
            seq.sampler.close()
        if error is None:
            self.stats.finished += 1
        elif isinstance(error, Cancelled):
            self.stats.cancelled += 1
        else:
            self.stats.failed += 1
        if error is not None:
            seq.sink(error)
        seq.sink(END)
