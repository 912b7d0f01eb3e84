"""llama.cpp contexts as pools of sequence slots: which KV cells hold which rows, under which LoRA
set, and which idle slot a new request should reuse.

LongRoPE (model-spec.md §3.1, llamacpp-notes §1.3): the reference uses the short factors while a
sequence holds at most `original_max_position_embeddings` (n_orig) rows and recomputes the whole
sequence with the long factors once it grows past that. llama.cpp fixes the factor set per context
by its cells per sequence (long iff more than n_orig), so there is a "short" context of exactly
n_orig cells per slot and a "long" one of n_ctx cells per slot (created on first need); a sequence
that crosses is re-decoded in a long slot.

Memory: each slot owns its cells whether used or not (f16 K and V: 128 KiB per cell for the real
model), so `n_slots` slots cost n_slots × n_orig × 128 KiB (512 MiB each at n_orig 4096) for the
short context, and n_slots × n_ctx × 128 KiB more once a sequence outgrows n_orig.

LoRA (model-spec.md §4): the adapter set is applied per decode call, so a batch only holds
sequences of one set; a slot remembers the set its KV was computed under and is reused only by a
request of the same set. Idle slots keep their KV as cached prefixes (a system prompt, an image,
the earlier turns of a chat): a new request takes the idle slot sharing its longest prefix, else
the least recently used one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from phi4mm.engine.encoders import Span
from phi4mm.engine.llama import Adapter, Context, ContextSettings, Model

Item = int | Span


@dataclass
class Slot:
    kind: str                   # "short" or "long": which context
    seq: int                    # the sequence id inside that context
    ctx: Context
    keys: list = field(default_factory=list)  # while idle, what its KV holds: token ids and (span key, row)
    lora: str | None = None     # the adapter set those rows were computed under
    busy: bool = False
    last_used: int = 0


@dataclass
class PrefixStats:
    hits: int = 0           # slots handed out that reused at least one row
    rows_reused: int = 0


class Contexts:
    """The short- and long-factor contexts of one model, `n_slots` slots each, and its adapters.
    Not thread-safe: used by the engine thread only."""

    def __init__(self, model: Model, settings: ContextSettings, n_orig: int, adapter_paths: dict[str, Path],
                 n_slots: int = 1):
        self.model = model
        self.settings = settings          # settings.n_ctx is the long context's size per slot
        self.n_orig = n_orig
        self.n_slots = n_slots
        self.adapter_paths = adapter_paths
        self.adapters: dict[str, Adapter] = {}
        self.contexts: dict[str, Context] = {}
        self.slots: dict[str, list[Slot]] = {}
        self.stats = PrefixStats()
        self._tick = 0

    @property
    def n_ctx(self) -> int:
        return self.settings.n_ctx

    def kind_for(self, n_rows: int) -> str:
        """"short" while n_rows <= n_orig (or when no long context is configured), else "long"."""
        return "short" if n_rows <= self.n_orig or self.n_ctx <= self.n_orig else "long"

    def context(self, kind: str) -> Context:
        if kind not in self.contexts:
            s = self.settings
            ctx = Context(self.model, ContextSettings(self.capacity(kind), s.n_batch, s.n_threads, s.flash_attn,
                                                      self.n_slots))
            self.contexts[kind] = ctx
            self.slots[kind] = [Slot(kind, i, ctx) for i in range(self.n_slots)]
        return self.contexts[kind]

    def capacity(self, kind: str) -> int:
        """Cells per slot of the `kind` context."""
        return min(self.n_ctx, self.n_orig) if kind == "short" else self.n_ctx

    def acquire(self, kind: str, keys: list, lora: str | None) -> tuple[Slot, int] | None:
        """An idle slot for a sequence whose rows are `keys`, and how many leading rows its KV
        already holds (at most len(keys) - 1, so the last row is decoded for its logits); the rest
        of that slot's KV is dropped. None when every slot is busy."""
        self.context(kind)
        idle = [s for s in self.slots[kind] if not s.busy]
        if not idle:
            return None
        def shared(s: Slot) -> int:
            return _common_prefix(s.keys, keys) if s.lora == lora else 0
        best = max(idle, key=lambda s: (shared(s), -s.last_used))
        reuse = min(shared(best), max(len(keys) - 1, 0))
        if reuse == 0:
            best = min(idle, key=lambda s: s.last_used)  # nothing shared: evict the least recently used
        best.ctx.truncate(best.seq, reuse)
        best.keys, best.lora, best.busy = best.keys[:reuse], lora, True
        self.stats.hits += int(reuse > 0)
        self.stats.rows_reused += reuse
        return best, reuse

    def release(self, slot: Slot, keys: list) -> None:
        """The slot goes idle; its KV, holding the rows `keys`, stays as a cached prefix."""
        self._tick += 1
        slot.keys, slot.busy, slot.last_used = keys, False, self._tick

    def apply_lora(self, ctx: Context, lora: str | None) -> None:
        ctx.set_adapters([(self._adapter(lora), 1.0)] if lora else [])

    def _adapter(self, name: str) -> Adapter:
        if name not in self.adapters:
            self.adapters[name] = Adapter(self.model, self.adapter_paths[name])
        return self.adapters[name]

    def cells_cached(self) -> int:
        """Cells holding the cached prefixes of idle slots."""
        return sum(len(s.keys) for slots in self.slots.values() for s in slots if not s.busy)

    def busy(self) -> int:
        return sum(s.busy for slots in self.slots.values() for s in slots)

    def close(self) -> None:
        for ctx in self.contexts.values():
            ctx.close()
        self.contexts.clear()
        self.slots.clear()
        for adapter in self.adapters.values():
            adapter.close()
        self.adapters.clear()


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
