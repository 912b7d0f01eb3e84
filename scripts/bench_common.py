"""What the encoder benchmarks share: the reference encoder's weights read from a hub checkpoint into
a torch state dict, wall times of repeated calls, one engine per spawned process, and peak RSS."""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path


def torch_state(checkpoint: str | Path, prefix: str, rename: Callable[[str], str | None]) -> dict:
    """The float32 torch tensors of every `prefix`* key of the checkpoint's safetensors shards, named
    rename(key without prefix); a key whose rename is None is left out."""
    from safetensors import safe_open

    state = {}
    for path in sorted(Path(checkpoint).glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                if key.startswith(prefix) and (name := rename(key[len(prefix):])) is not None:
                    state[name] = f.get_tensor(key).float()
    return state


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Wall times of `repeats` calls and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def spawned(fn, *args, env: dict[str, str]):
    """fn(*args) in a fresh spawned process whose environment adds `env` (read at numpy import)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(fn, args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def peak_rss_gb() -> float:
    """This process's peak resident set, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
