"""llama.cpp contexts, their KV contents and LoRA sets: prompt items (token ids and media spans)
are decoded into a context, reusing the KV prefix the context already holds.

LongRoPE (model-spec.md §3.1, llamacpp-notes §1.3): the reference uses the short factors while the
sequence holds at most `original_max_position_embeddings` (n_orig) tokens and recomputes the whole
sequence with the long factors once it grows past that. llama.cpp fixes the factor set per context
(long iff the context is larger than n_orig), so there is a context of exactly n_orig for short
sequences and a larger one for long sequences; callers re-decode everything at the crossing.
LoRA (model-spec.md §4): the adapter set is applied per context call; KV computed under another
adapter set is never reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from phi4mm.encoders import Span
from phi4mm.errors import InputError
from phi4mm.llama import Adapter, Context, ContextSettings, Model, StopCheck

Item = int | Span


@dataclass
class Slot:
    ctx: Context
    keys: list = field(default_factory=list)  # what the KV holds: token ids and (span key, row)


class Contexts:
    """The short- and long-factor contexts of one model (created on first need) and its adapters."""

    def __init__(self, model: Model, settings: ContextSettings, n_orig: int, adapter_paths: dict[str, Path]):
        self.model = model
        self.settings = settings          # settings.n_ctx is the long context's size
        self.n_orig = n_orig
        self.adapter_paths = adapter_paths
        self.adapters: dict[str, Adapter] = {}
        self.slots: dict[str, Slot] = {}

    @property
    def n_ctx(self) -> int:
        return self.settings.n_ctx

    def slot(self, n_rows: int) -> Slot:
        """The short-factor context while n_rows <= n_orig, else the long one (module docstring)."""
        kind = "short" if n_rows <= self.n_orig or self.n_ctx <= self.n_orig else "long"
        if kind not in self.slots:
            size = min(self.n_ctx, self.n_orig) if kind == "short" else self.n_ctx
            s = self.settings
            self.slots[kind] = Slot(Context(self.model, ContextSettings(size, s.n_batch, s.n_threads, s.flash_attn)))
        return self.slots[kind]

    def _adapter(self, name: str) -> Adapter:
        if name not in self.adapters:
            self.adapters[name] = Adapter(self.model, self.adapter_paths[name])
        return self.adapters[name]

    def evaluate(self, items: list[Item], lora: str | None, should_stop: StopCheck | None = None) -> tuple[Slot, int]:
        """Decode items (reusing the KV prefix) under adapter `lora` so the last position's logits
        are ready. Returns the slot and how many leading rows were reused from the KV cache. If
        decoding stops early (Cancelled, EngineError) the slot's keys name only rows known right."""
        if not items or isinstance(items[-1], Span):
            raise InputError("a prompt must end with a text token", param="messages")
        keys = row_keys(items)
        slot = self.slot(len(keys))
        if slot.ctx.set_adapters([(self._adapter(lora), 1.0)] if lora else []):
            slot.keys = []  # KV computed under another adapter set is never reused (notes §4.3)
        reuse = min(_common_prefix(slot.keys, keys), len(keys) - 1)
        slot.ctx.truncate(reuse)
        slot.keys = keys[:reuse]
        _decode_from(slot.ctx, items, reuse, should_stop)
        slot.keys = keys
        return slot, reuse

    def close(self) -> None:
        for slot in self.slots.values():
            slot.ctx.close()
        self.slots.clear()
        for adapter in self.adapters.values():
            adapter.close()
        self.adapters.clear()


def _decode_from(ctx: Context, items: list[Item], start: int, should_stop: StopCheck | None) -> None:
    """Decode the rows of `items` from row `start` on: token runs as tokens, spans as embeddings."""
    pos, run = 0, []
    for item in items:
        if isinstance(item, Span):
            if run:
                ctx.decode_tokens(run, pos - len(run), False, should_stop)
                run = []
            n = item.rows.shape[0]
            if pos + n > start:
                skip = max(0, start - pos)
                ctx.decode_embeddings(item.rows[skip:], pos + skip, should_stop)
            pos += n
            continue
        if pos >= start:
            run.append(item)
        pos += 1
    if run:
        ctx.decode_tokens(run, pos - len(run), True, should_stop)


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
