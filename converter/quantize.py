"""Quantize the exact bf16 text decoder with llama.cpp's own quantizer, atomically, with progress
estimated from the growing output file (llama.cpp reports none of its own)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from phi4mm.converter.plan import QUANT_SIZE_RATIO as _RATIO
from phi4mm.converter.write import partial_path
from phi4mm.engine import llama


def quantize_file(src: Path, dst: Path, quant: str, n_threads: int,
                  progress: Callable[[str, int, int], None] | None = None) -> None:
    tmp = partial_path(dst)
    expected = int(os.path.getsize(src) * _RATIO[quant])
    done = threading.Event()

    def watch() -> None:
        while not done.wait(1.0):
            if progress and tmp.exists():
                progress(f"text ({quant})", min(tmp.stat().st_size, expected), expected)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        llama.quantize_model(src, tmp, quant, n_threads or llama.default_threads())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        done.set()
        watcher.join()
    os.replace(tmp, dst)
    if progress:
        progress(f"text ({quant})", expected, expected)
