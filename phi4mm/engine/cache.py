"""A least-recently-used cache bounded in bytes, for projected image rows (keyed by image content
and dynamic_hd), with counters that say what it saved."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    seconds_saved: float = 0.0


class RowCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.stats = CacheStats()
        self._entries: OrderedDict[str, tuple[np.ndarray, float]] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        self.stats.seconds_saved += entry[1]
        return entry[0]

    def put(self, key: str, rows: np.ndarray, cost_s: float) -> None:
        """Keep rows (made read-only) that took cost_s seconds to compute; evict the oldest."""
        if rows.nbytes > self.max_bytes or key in self._entries:
            return
        rows.setflags(write=False)
        self._entries[key] = (rows, cost_s)
        self.bytes += rows.nbytes
        while self.bytes > self.max_bytes:
            _, (old, _) = self._entries.popitem(last=False)
            self.bytes -= old.nbytes
            self.stats.evictions += 1

    def __len__(self) -> int:
        return len(self._entries)
