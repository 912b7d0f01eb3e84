"""One media decoder process, `python -m phi4mm.media.decoder_process FD MEMORY_MB` (isolation.py
starts it with one end of a socket pair as FD): decodes untrusted image and audio bytes with
Pillow and PyAV under a memory limit (RLIMIT_AS) and a CPU-time limit (RLIMIT_CPU) per task, and
sends the decoded array back over the socket. The limits are set once the decoders are imported
(at the top of this module); a crash here ends this process, never the server."""

from __future__ import annotations

import importlib
import os
import resource
import signal
import sys
import traceback
from multiprocessing.connection import Connection

import numpy as np

from phi4mm.errors import MediaError
from phi4mm.media import audio, image

HOOK_ENV = "PHI4MM_MEDIA_TEST_HOOK"  # "module:function" called before each decode: fault injection for tests


def serve(conn, memory_mb: int, hook_spec: str | None = None) -> None:
    """Answer tasks from `conn` until it closes or sends None; `hook_spec` is "module:function",
    run before each decode (PHI4MM_MEDIA_TEST_HOOK: tests only). A task is (kind, data, limits,
    origin, format_hint, cpu_s); the answer ("ok", meta) is followed by the array's bytes, else
    ("refused", error class name, message) or ("failed", what happened)."""
    hook = _hook(hook_spec)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file behind
    _limit_address_space(memory_mb)
    while (task := _receive(conn)) is not None:
        kind, data, limits, origin, format_hint, cpu_s = task
        _limit_cpu(cpu_s)
        try:
            if hook is not None:
                hook(kind, data)
            array, meta = _decode(kind, data, limits, origin, format_hint)
        except MemoryError:
            conn.send(("failed", f"ran out of memory (limit {memory_mb} MiB)"))
            continue
        except Exception as exc:  # noqa: BLE001 - every refusal goes back to the caller as data
            conn.send(_refusal(exc))
            continue
        conn.send(("ok", meta))
        conn.send_bytes(memoryview(array).cast("B"))


def _decode(kind, data, limits, origin, format_hint):
    """-> (C-contiguous array, (shape, dtype name, sample rate or None))."""
    if kind == "image":
        picture = image.decode_image(data, limits, origin)
        pixels = np.asarray(picture)  # (H, W, 3) uint8
        return pixels, (pixels.shape, str(pixels.dtype), None)
    waveform = audio.decode_audio(data, limits, origin, format_hint)
    samples = np.ascontiguousarray(waveform.samples)  # (n,) float32
    return samples, (samples.shape, str(samples.dtype), waveform.sample_rate_hz)


def _refusal(exc: BaseException) -> tuple:
    if isinstance(exc, MediaError):
        return ("refused", type(exc).__name__, str(exc))
    last = traceback.extract_tb(exc.__traceback__)[-1:] or [None]
    where = f" at {last[0].name}" if last[0] is not None else ""
    return ("failed", f"raised {type(exc).__name__}{where}: {exc}"[:500])


def _receive(conn):
    try:
        return conn.recv()
    except (EOFError, OSError):
        return None


def _hook(spec: str | None):
    if not spec:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _limit_address_space(memory_mb: int) -> None:
    """This process's address space may grow by `memory_mb` past what the imports took."""
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = used + (memory_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _limit_cpu(cpu_s: float) -> None:
    """SIGXCPU once this task has used `cpu_s` more seconds of CPU (the limit counts the whole
    process, so it is moved on before each task)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(used + cpu_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle; it stops us
    fd, memory_mb = int(argv[0]), int(argv[1])
    serve(Connection(fd), memory_mb, os.environ.get(HOOK_ENV) or None)


if __name__ == "__main__":
    main(sys.argv[1:])
