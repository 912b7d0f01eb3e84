"""llama.cpp contexts as pools of sequence slots: one context per (LongRoPE factor set, adapter
set), created on first need, all sharing the one loaded model; which KV cells hold which rows, and
which idle slot a new request should reuse.

LoRA (model-spec.md §4): llama.cpp applies adapters per context, so each context has its adapter
set fixed when it is created (the base model, the vision LoRA or the speech LoRA) and keeps it: no
decode step ever changes a context's adapters (a change makes llama.cpp re-reserve its scheduler
and drop its reusable graphs on the next decode; on a GPU that costs tens of milliseconds a time).
A sequence lives in the context of its mode.

LongRoPE (model-spec.md §3.1, llamacpp-notes §1.3): the reference uses the short factors while a
sequence holds at most `original_max_position_embeddings` (n_orig) rows and recomputes the whole
sequence with the long factors once it grows past that. llama.cpp fixes the factor set per context
by its cells per sequence (long iff more than n_orig), so "short" contexts have exactly n_orig
cells per slot and "long" ones n_ctx; a sequence that crosses is re-decoded in a long slot.

Memory: each slot owns its cells whether used or not (f16 K and V: `bytes_per_cell`, 128 KiB for
the real model), so a short context costs n_slots × n_orig cells (512 MiB per slot at n_orig 4096)
and a long one n_slots × n_ctx. The KV budget (in cells) bounds the cells of all contexts together:
a context that would not fit is created only after idle contexts (no running sequence) are closed,
least recently used first; until then the request waits. Contexts idle for `idle_release_s` are
closed too, so memory follows the mix of modalities. Idle slots keep their KV as cached prefixes
(a system prompt, an image, the earlier turns of a chat): a new request takes the idle slot sharing
its longest prefix where that prefix is at least SLOT_SIMILARITY of what the slot holds, else the
least recently used one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from phi4mm.engine.encoders import Span
from phi4mm.engine.llama import Adapter, Context, ContextSettings, Model

Item = int | Span
Key = tuple[str, str | None]  # (LongRoPE kind: "short" or "long", adapter set: None, "vision", "speech")
KINDS = ("short", "long")
SLOT_SIMILARITY = 0.5  # a slot is reused when the new prompt shares at least this fraction of its rows


@dataclass
class Slot:
    kind: str                   # "short" or "long": the LongRoPE factors of its context
    lora: str | None            # the adapter set of its context (fixed)
    seq: int                    # the sequence id inside that context
    ctx: Context
    keys: list = field(default_factory=list)  # while idle, what its KV holds: token ids and (span key, row)
    busy: bool = False
    last_used: int = 0


@dataclass
class PrefixStats:
    hits: int = 0           # slots handed out that reused at least one row
    rows_reused: int = 0


@dataclass
class ContextStats:
    created: int = 0
    closed_for_room: int = 0    # closed to make room under the KV budget
    closed_idle: int = 0        # closed after idle_release_s without use


class Contexts:
    """The contexts of one model, `n_slots` slots each, keyed by (kind, adapter set), within a KV
    budget of `budget_cells` cells (None: unbounded). Not thread-safe: used by the engine thread only."""

    def __init__(self, model: Model, settings: ContextSettings, n_orig: int, adapter_paths: dict[str, Path],
                 n_slots: int = 1, budget_cells: int | None = None, idle_release_s: float | None = None):
        self.model = model
        self.settings = settings          # settings.n_ctx is the long contexts' size per slot
        self.n_orig = n_orig
        self.n_slots = n_slots
        self.adapter_paths = adapter_paths
        self.budget_cells = budget_cells
        self.idle_release_s = idle_release_s
        self.adapters: dict[str, Adapter] = {}
        self.contexts: dict[Key, Context] = {}
        self.slots: dict[Key, list[Slot]] = {}
        self.used_s: dict[Key, float] = {}  # when each context last had a slot taken or given back
        self.stats = PrefixStats()
        self.context_stats = ContextStats()
        self._tick = 0
        if budget_cells is not None and budget_cells < self.context_cells("long"):
            raise ValueError(f"a KV budget of {budget_cells} cells cannot hold one long context "
                             f"({self.context_cells('long')} cells)")

    @property
    def n_ctx(self) -> int:
        return self.settings.n_ctx

    def kind_for(self, n_rows: int) -> str:
        """"short" while n_rows <= n_orig (or when no long context is configured), else "long"."""
        return "short" if n_rows <= self.n_orig or self.n_ctx <= self.n_orig else "long"

    def capacity(self, kind: str) -> int:
        """Cells per slot of a `kind` context."""
        return min(self.n_ctx, self.n_orig) if kind == "short" else self.n_ctx

    def context_cells(self, kind: str) -> int:
        """Cells a `kind` context holds (every slot's)."""
        return self.n_slots * self.capacity(kind)

    def cells_allocated(self) -> int:
        """KV cells of every open context (read from other threads too: iterates a snapshot)."""
        return sum(self.context_cells(kind) for kind, _ in list(self.contexts))

    def context(self, kind: str, lora: str | None = None) -> Context:
        """The (kind, lora) context, created now if it is not there (regardless of the budget)."""
        key = (kind, lora)
        if key not in self.contexts:
            s = self.settings
            ctx = Context(self.model, ContextSettings(self.capacity(kind), s.n_batch, s.n_threads, s.flash_attn,
                                                      self.n_slots))
            try:
                ctx.set_adapters([(self._adapter(lora), 1.0)] if lora else [])  # once, for its lifetime
            except BaseException:
                ctx.close()
                raise
            self.contexts[key] = ctx
            self.slots[key] = [Slot(kind, lora, i, ctx) for i in range(self.n_slots)]
            self.used_s[key] = time.monotonic()
            self.context_stats.created += 1
        return self.contexts[key]

    def acquire(self, kind: str, keys: list, lora: str | None) -> tuple[Slot, int] | None:
        """An idle slot of the (kind, lora) context for a sequence whose rows are `keys`, and how
        many leading rows its KV already holds (at most len(keys) - 1, so the last row is decoded
        for its logits); the rest of that slot's KV is dropped. None when every slot is busy, or
        when the context does not exist and the KV budget has no room for it yet."""
        key = (kind, lora)
        if key not in self.contexts and not self._make_room(self.context_cells(kind)):
            return None
        self.context(kind, lora)
        idle = [s for s in self.slots[key] if not s.busy]
        if not idle:
            return None
        shared = {id(s): _common_prefix(s.keys, keys) for s in idle}
        # Reuse a slot only when what it shares is most of what it holds (llama.cpp's server has the
        # same rule, --slot-prompt-similarity 0.5): else a few shared rows (a common system prompt)
        # would throw away another conversation's earlier turns, and the least recently used slot
        # (an empty one first) is taken instead.
        worth = [s for s in idle if shared[id(s)] and shared[id(s)] >= SLOT_SIMILARITY * len(s.keys)]
        if worth:
            best = max(worth, key=lambda s: (shared[id(s)], -s.last_used))
        else:
            best = min(idle, key=lambda s: s.last_used)
        reuse = min(shared[id(best)], max(len(keys) - 1, 0))
        best.ctx.truncate(best.seq, reuse)
        best.keys, best.busy = best.keys[:reuse], True
        self.used_s[key] = time.monotonic()
        self.stats.hits += int(reuse > 0)
        self.stats.rows_reused += reuse
        return best, reuse

    def release(self, slot: Slot, keys: list) -> None:
        """The slot goes idle; its KV, holding the rows `keys`, stays as a cached prefix."""
        self._tick += 1
        slot.keys, slot.busy, slot.last_used = keys, False, self._tick
        self.used_s[(slot.kind, slot.lora)] = time.monotonic()

    def release_idle(self, now_s: float | None = None) -> int:
        """Close the contexts nobody has used for idle_release_s (their cached prefixes go with
        them); how many were closed."""
        if self.idle_release_s is None:
            return 0
        now_s = time.monotonic() if now_s is None else now_s
        stale = [k for k in self._idle_keys() if now_s - self.used_s[k] >= self.idle_release_s]
        for key in stale:
            self._close(key)
        self.context_stats.closed_idle += len(stale)
        return len(stale)

    def _make_room(self, cells: int) -> bool:
        """Close idle contexts, least recently used first, until `cells` more fit the budget."""
        if self.budget_cells is None:
            return True
        while self.cells_allocated() + cells > self.budget_cells:
            idle = self._idle_keys()
            if not idle:
                return False
            self._close(min(idle, key=lambda k: self.used_s[k]))
            self.context_stats.closed_for_room += 1
        return True

    def _idle_keys(self) -> list[Key]:
        return [k for k, slots in self.slots.items() if not any(s.busy for s in slots)]

    def _close(self, key: Key) -> None:
        self.contexts.pop(key).close()
        self.slots.pop(key)
        self.used_s.pop(key)

    def _adapter(self, name: str) -> Adapter:
        if name not in self.adapters:
            self.adapters[name] = Adapter(self.model, self.adapter_paths[name])
        return self.adapters[name]

    def cells_cached(self) -> int:
        """Cells holding the cached prefixes of idle slots."""
        return sum(len(s.keys) for slots in list(self.slots.values()) for s in slots if not s.busy)

    def busy(self) -> int:
        return sum(s.busy for slots in list(self.slots.values()) for s in slots)

    def close(self) -> None:
        for key in list(self.contexts):
            self._close(key)
        for adapter in self.adapters.values():
            adapter.close()
        self.adapters.clear()


def default_budget_cells(n_slots: int, n_ctx: int, n_orig: int) -> int:
    """The default KV budget: room for a short context of each adapter set at once (text, image
    and audio requests never wait for each other's context), and, when n_ctx > n_orig, for a long
    context beside a short one (a long conversation and another request)."""
    short = min(n_ctx, n_orig)
    per_slot = 3 * short if n_ctx <= n_orig else max(3 * short, short + n_ctx)
    return n_slots * per_slot


def n_rows(items: list[Item]) -> int:
    return sum(i.rows.shape[0] if isinstance(i, Span) else 1 for i in items)


def row_keys(items: list[Item]) -> list:
    keys: list = []
    for item in items:
        if isinstance(item, Span):
            keys.extend((item.key, i) for i in range(item.rows.shape[0]))
        else:
            keys.append(item)
    return keys


def _common_prefix(a: list, b: list) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
