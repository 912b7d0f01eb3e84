"""`parallel` runner threads fed by a bounded FIFO of jobs (bounded by count and by the bytes of
decoded media the waiting jobs hold); each job's chunks are handed back to the event loop through
an asyncio queue. The engine decodes the running jobs' sequences together (phi4mm.scheduler), so
`parallel` should match its number of slots. A job cancelled while waiting leaves the queue at
once; one cancelled while running stops before its next chunk (its stream is closed, which frees
its sequence at the engine's next step)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from phi4mm.errors import Cancelled, OverloadedError
from phi4mm.server.errors import Unavailable

_END = object()


class Job:
    """One request. `start()` runs on the engine thread and returns an iterator of chunk dicts."""

    def __init__(self, start: Callable[[], Iterator[dict]], loop: asyncio.AbstractEventLoop, media_bytes: int = 0):
        self._start = start
        self.media_bytes = media_bytes      # decoded media this job holds while it waits
        self.submitted_s = time.perf_counter()
        self._loop = loop
        self._events: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def next(self) -> dict | None:
        """The next chunk, None after the last; raises what the engine raised."""
        item = await self._events.get()
        if isinstance(item, BaseException):
            raise item
        return None if item is _END else item

    def fail(self, exc: BaseException) -> None:
        self._emit(exc)

    def run(self) -> bool:
        """Engine thread: run to the end or until cancelled; True when stopped by cancellation."""
        try:
            stopped = self._pump()
        except Cancelled:  # stopped inside prefill or between tokens: nobody waits for the output
            self._emit(_END)
            return True
        except Exception as exc:  # noqa: BLE001 - re-raised in the request's task by next()
            self._emit(exc)
            return False
        self._emit(_END)
        return stopped

    def _pump(self) -> bool:
        if self.cancelled:
            return True
        chunks = self._start()
        try:
            for chunk in chunks:
                if self.cancelled:
                    return True
                self._emit(chunk)
            return False
        finally:
            getattr(chunks, "close", lambda: None)()

    def _emit(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody will read this job any more
            self._cancelled.set()


class Worker:
    """Runs up to `parallel` jobs at once, in arrival order, with at most `max_queue` waiting and
    at most `max_queued_media_bytes` of decoded media held by the waiting ones."""

    def __init__(self, max_queue: int, parallel: int = 1, max_queued_media_bytes: int = 1 << 62,
                 on_start: Callable[[float], None] | None = None):
        self.max_queue = max_queue
        self.parallel = parallel
        self.max_queued_media_bytes = max_queued_media_bytes
        self.n_cancelled = 0  # jobs dropped from the queue or stopped mid-generation
        self.n_rejected = 0   # jobs refused because the queue was full
        self._on_start = on_start or (lambda wait_s: None)
        self._queue: deque[Job] = deque()
        self._running: set[Job] = set()
        self._closing = False
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._serve, name=f"phi4mm-runner-{i}", daemon=True)
                         for i in range(parallel)]
        for thread in self._threads:
            thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def queued_media_bytes(self) -> int:
        return sum(job.media_bytes for job in self._queue)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closing:
                raise Unavailable("the server is shutting down; retry against a running server")
            free = self.parallel - len(self._running)
            if len(self._queue) >= self.max_queue + max(free, 0):
                self.n_rejected += 1
                raise OverloadedError(f"{len(self._queue)} requests are already waiting for the "
                                      f"engine (--max-queue {self.max_queue}); retry later")
            if job.media_bytes and self.queued_media_bytes + job.media_bytes > self.max_queued_media_bytes \
                    and len(self._queue) >= max(free, 0):
                self.n_rejected += 1
                raise OverloadedError(f"the waiting requests already hold {self.queued_media_bytes >> 20} MiB of "
                                      f"decoded media and this one adds {job.media_bytes >> 20} MiB "
                                      f"(--max-queued-media-mb {self.max_queued_media_bytes >> 20}); retry later")
            self._queue.append(job)
            self._cond.notify()

    def withdraw(self, job: Job) -> None:
        """Cancel `job`: removed from the queue if waiting, stopped at its next chunk if running."""
        job.cancel()
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                self.n_cancelled += 1

    def close(self, timeout_s: float) -> bool:
        """Refuse new jobs, fail the waiting ones, cancel the running ones; True once every runner
        has ended (only then may the engine be freed)."""
        with self._cond:
            self._closing = True
            waiting, running = list(self._queue), list(self._running)
            self._queue.clear()
            self._cond.notify_all()
        for job in waiting:
            job.fail(Unavailable("the server shut down before this request was started"))
        for job in running:
            job.cancel()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def _serve(self) -> None:
        while (job := self._next()) is not None:
            stopped = job.run()
            with self._cond:
                self._running.discard(job)
                self.n_cancelled += int(stopped)

    def _next(self) -> Job | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            job = self._queue.popleft()
            self._running.add(job)
        self._on_start(time.perf_counter() - job.submitted_s)
        return job
