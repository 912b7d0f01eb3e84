"""Media decoding in worker processes: untrusted image and audio bytes are decoded by Pillow and
FFmpeg (PyAV) in a small pool of fresh `python -m phi4mm.media.decoder_process` processes, each
under a deadline, a memory limit and a CPU-time limit. A decoder that crashes, hangs, overruns or
runs out of memory fails only its own request (MediaError / AudioError, saying how) and its
process is replaced. Fetching stays in the caller.

`InProcess` decodes in the calling process (the Python API's default); `DecoderPool` in workers
(the server's default). Both load PIL images, numpy arrays, Waveforms and (samples, rate) tuples
in-process: only encoded bytes reach a codec."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
from PIL import Image

from phi4mm.errors import AudioError, ConfigError, MediaError
from phi4mm.media.audio import AudioSource, Waveform, decode_audio, load_audio, read_audio_bytes
from phi4mm.media.fetch import describe, read_source
from phi4mm.media.image import ImageSource, load_image
from phi4mm.media.limits import DEFAULT_LIMITS, MediaLimits

ENCODED = (str, Path, bytes, bytearray, memoryview)
_SIGNALS = {signal.SIGKILL: "was killed (SIGKILL: out of memory, or stopped from outside)",
            signal.SIGXCPU: "ran past its CPU-time limit", signal.SIGSEGV: "crashed (SIGSEGV)",
            signal.SIGABRT: "aborted (SIGABRT)", signal.SIGBUS: "crashed (SIGBUS)"}


class InProcess:
    """Decoding in this process: what the media functions do by themselves."""

    def load_image(self, source: ImageSource, limits: MediaLimits = DEFAULT_LIMITS) -> Image.Image:
        return load_image(source, limits)

    def load_audio(self, source: AudioSource, limits: MediaLimits = DEFAULT_LIMITS) -> Waveform:
        return load_audio(source, limits)

    def decode_audio(self, data: bytes, limits: MediaLimits = DEFAULT_LIMITS, origin: str = "the audio bytes",
                     format_hint: str | None = None) -> Waveform:
        return decode_audio(data, limits, origin, format_hint)

    def health(self) -> dict:
        return {"workers": 0}

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class PoolSettings:
    n_workers: int = 2
    deadline_s: float = 30.0     # wall time of one decode, waiting for a free worker excluded
    memory_mb: int = 2048        # address space a worker may add to what its imports took
    cpu_s: float = 60.0          # CPU time of one decode (several decoder threads may share it)

    def __post_init__(self):
        for name, least in (("n_workers", 1), ("deadline_s", 1e-3), ("memory_mb", 16), ("cpu_s", 1e-3)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < least:
                raise ConfigError(f"media worker setting {name} is {value!r}, expected >= {least}", key=name)


class _Worker:
    """One decoder process (`python -m phi4mm.media.decoder_process`, so nothing of the caller's
    __main__ is imported again) and the parent's end of the socket pair it answers on."""

    def __init__(self, memory_mb: int, env: dict[str, str]):
        parent, child = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "phi4mm.media.decoder_process", str(child.fileno()), str(memory_mb)],
            pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL)
        child.close()
        self.conn = Connection(parent.detach())
        self.answered = True  # whether the last task ended with a full answer (else: replace it)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive:
            self.process.kill()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()


class DecoderPool(InProcess):
    """`n_workers` decoder processes; `load_image` / `load_audio` / `decode_audio` as InProcess,
    the codec's work done in a worker. Thread-safe: a caller waits for a free worker."""

    def __init__(self, settings: PoolSettings | None = None):
        self.settings = settings or PoolSettings()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self.replaced = 0
        self.closed = False
        self._env = dict(os.environ)  # every worker, replacements too, starts with the same environment
        for _ in range(self.settings.n_workers):
            self._add(_Worker(self.settings.memory_mb, self._env))

    def load_image(self, source: ImageSource, limits: MediaLimits = DEFAULT_LIMITS) -> Image.Image:
        if not isinstance(source, ENCODED):
            return load_image(source, limits)
        data = read_source(source, limits, "image")
        pixels, _ = self._run("image", data, limits, describe(source, "image"), None)
        return Image.fromarray(pixels)  # (H, W, 3) uint8: RGB

    def load_audio(self, source: AudioSource, limits: MediaLimits = DEFAULT_LIMITS) -> Waveform:
        if not isinstance(source, ENCODED):
            return load_audio(source, limits)
        return self.decode_audio(read_audio_bytes(source, limits), limits, describe(source, "audio"))

    def decode_audio(self, data: bytes, limits: MediaLimits = DEFAULT_LIMITS, origin: str = "the audio bytes",
                     format_hint: str | None = None) -> Waveform:
        samples, rate = self._run("audio", bytes(data), limits, origin, format_hint)
        return Waveform(samples, rate)

    def health(self) -> dict:
        with self._lock:
            alive = sum(w.alive for w in self._workers)
        return {"workers": self.settings.n_workers, "alive": alive, "replaced": self.replaced}

    def pids(self) -> list[int]:
        with self._lock:
            return sorted(w.process.pid for w in self._workers)

    def close(self) -> None:
        self.closed = True
        with self._lock:
            workers, self._workers = list(self._workers), set()
        for worker in workers:
            try:
                worker.conn.send(None)
                worker.process.wait(1)
            except (OSError, subprocess.TimeoutExpired):
                pass
            worker.stop()

    # -- one task ---------------------------------------------------------------------------

    def _run(self, kind: str, data: bytes, limits: MediaLimits, origin: str, hint: str | None):
        """Decode in a free worker -> (array, sample rate or None); the error class of `kind` if not.
        A worker that answered (even a refusal) is reused; any other is replaced."""
        error = _error_class(kind)
        if self.closed:
            raise error(f"{origin} could not be decoded: the media decoders are shut down")
        worker = self._idle.get()
        worker.answered = False
        try:
            worker.conn.send((kind, data, limits, origin, hint, self.settings.cpu_s))
            return self._answer(worker, kind, origin, error)
        finally:
            if worker.answered:
                self._idle.put(worker)
            else:
                self._replace(worker)

    def _answer(self, worker: _Worker, kind: str, origin: str, error: type[MediaError]):
        deadline = time.monotonic() + self.settings.deadline_s
        try:
            if not worker.conn.poll(self.settings.deadline_s):
                raise error(f"{origin} could not be decoded: the {kind} decoder ran past its "
                            f"{self.settings.deadline_s:g} s deadline and was stopped")
            reply = worker.conn.recv()
            if reply[0] == "refused":
                worker.answered = True
                raise (AudioError if reply[1] == "AudioError" else error)(reply[2])
            if reply[0] == "failed":
                worker.answered = not reply[1].startswith("ran out of memory")
                raise error(f"{origin} could not be decoded: the {kind} decoder {reply[1]}")
            shape, dtype, rate = reply[1]
            array = np.empty(shape, dtype)
            if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                raise error(f"{origin} could not be decoded: the {kind} decoder stalled sending its result")
            worker.conn.recv_bytes_into(memoryview(array).cast("B"))
            worker.answered = True
            return array, rate
        except (EOFError, OSError):
            raise error(f"{origin} could not be decoded: the {kind} decoder {self._death(worker)}") from None

    @staticmethod
    def _death(worker: _Worker) -> str:
        try:
            code = worker.process.wait(2)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            return _SIGNALS.get(-code, f"was ended by signal {-code}")
        return f"exited with status {code}"

    def _replace(self, worker: _Worker) -> None:
        """Stop `worker` (it may be mid-task) and start another in the background."""
        worker.stop()
        with self._lock:
            self._workers.discard(worker)
            self.replaced += 1
        if not self.closed:
            threading.Thread(target=lambda: self._add(_Worker(self.settings.memory_mb, self._env)),
                             name="phi4mm-media-respawn", daemon=True).start()

    def _add(self, worker: _Worker) -> None:
        with self._lock:
            if self.closed:
                worker.stop()
                return
            self._workers.add(worker)
        self._idle.put(worker)


def _error_class(kind: str) -> type[MediaError]:
    return MediaError if kind == "image" else AudioError


def media_loader(n_workers: int, **settings) -> InProcess:
    """InProcess for 0 workers, else a DecoderPool of `n_workers` with `settings` (PoolSettings)."""
    return DecoderPool(PoolSettings(n_workers=n_workers, **settings)) if n_workers else InProcess()
