"""One engine thread fed by a bounded FIFO of jobs; each job's chunks are handed back to the event
loop through an asyncio queue. A job cancelled while waiting leaves the queue at once; one cancelled
while running stops before its next chunk (its generator is closed, which ends the generation)."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterator

from phi4mm.errors import Cancelled, OverloadedError
from phi4mm.server.errors import Unavailable

_END = object()


class Job:
    """One request. `start()` runs on the engine thread and returns an iterator of chunk dicts."""

    def __init__(self, start: Callable[[], Iterator[dict]], loop: asyncio.AbstractEventLoop):
        self._start = start
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
    """Runs jobs one at a time, in arrival order, with at most `max_queue` waiting."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.n_cancelled = 0  # jobs dropped from the queue or stopped mid-generation
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name="phi4mm-engine", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def in_flight(self) -> int:
        return int(self._running is not None)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closing:
                raise Unavailable("the server is shutting down; retry against a running server")
            if len(self._queue) + self.in_flight > self.max_queue:
                raise OverloadedError(f"{len(self._queue)} requests are already waiting for the "
                                      f"engine (--max-queue {self.max_queue}); retry later")
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
        """Refuse new jobs, fail the waiting ones, cancel the running one; True once the thread
        has ended (only then may the engine be freed)."""
        with self._cond:
            self._closing = True
            waiting, running = list(self._queue), self._running
            self._queue.clear()
            self._cond.notify_all()
        for job in waiting:
            job.fail(Unavailable("the server shut down before this request was started"))
        if running is not None:
            running.cancel()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        while (job := self._next()) is not None:
            stopped = job.run()
            with self._cond:
                self._running = None
                self.n_cancelled += int(stopped)

    def _next(self) -> Job | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            self._running = self._queue.popleft()
            return self._running
