"""Windows of at most 30 s for long audio, each cut at the quietest point near its end. Pure numpy."""

from __future__ import annotations

import numpy as np

from phi4mm.errors import InputError

MAX_WINDOW_S = 30.0   # the speech LoRA was trained on clips of at most 30 s (model card)
SEARCH_S = 5.0        # a window's cut is searched in its last 5 s ...
MIN_TAIL_S = 1.0      # ... but never leaves a last window shorter than 1 s
FRAME_S = 0.1         # loudness is the RMS of a 100 ms frame centred on the candidate cut
HOP_S = 0.01          # candidate cuts every 10 ms


def plan_windows(samples: np.ndarray, sample_rate_hz: int, max_window_s: float = MAX_WINDOW_S,
                 search_s: float = SEARCH_S, min_tail_s: float = MIN_TAIL_S) -> list[tuple[int, int]]:
    """float (n,) mono samples -> [(start_sample, end_sample)] covering all of them, in order.

    Rule: while more than `max_window_s` remains after `start`, the window ends at the quietest
    point within its last `search_s` seconds (the centre of the 100 ms frame with the lowest RMS,
    candidates every 10 ms; ties go to the latest, so windows stay long), never closer than
    `min_tail_s` to the end of the clip; the rest is the last window.
    """
    if not 0 < min_tail_s < search_s < max_window_s:
        raise InputError(f"window settings must satisfy 0 < min_tail_s < search_s < max_window_s, "
                         f"got {min_tail_s}, {search_s}, {max_window_s}")
    n = len(samples)
    max_len, search_len = int(max_window_s * sample_rate_hz), int(search_s * sample_rate_hz)
    tail = int(min_tail_s * sample_rate_hz)
    windows, start = [], 0
    while n - start > max_len:
        lo = start + max_len - search_len
        cut = quietest_point(samples, lo, min(start + max_len, n - tail), sample_rate_hz)
        windows.append((start, cut))
        start = cut
    return windows + [(start, n)] if n else []


def quietest_point(samples: np.ndarray, lo: int, hi: int, sample_rate_hz: int) -> int:
    """The sample in [lo, hi] (a 10 ms grid) at the centre of the lowest-RMS 100 ms frame; the
    latest on ties. Frames are clipped at the ends of the clip."""
    half = max(1, int(FRAME_S * sample_rate_hz) // 2)
    hop = max(1, int(HOP_S * sample_rate_hz))
    first = max(0, lo - half)
    region = np.asarray(samples[first:hi + half], dtype=np.float64)
    energy = np.concatenate([[0.0], np.cumsum(region * region)])  # (len(region) + 1,)
    cuts = np.arange(lo, hi + 1, hop)                              # (n_candidates,)
    left = np.maximum(cuts - half, first) - first
    right = np.minimum(cuts + half, first + len(region)) - first
    mean_square = (energy[right] - energy[left]) / np.maximum(right - left, 1)
    latest = len(cuts) - 1 - int(np.argmin(mean_square[::-1]))
    return int(cuts[latest])
