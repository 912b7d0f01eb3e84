"""What the lifespan owns: the loaded engine, the worker that runs requests on it, the metrics,
and the settings every request is served with. No HTTP here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from starlette.concurrency import run_in_threadpool

from phi4mm import media
from phi4mm.prompt import MediaRef, map_media_sources
from phi4mm.server.metrics import Metrics
from phi4mm.server.schemas import ChatRequest
from phi4mm.server.settings import ServerSettings
from phi4mm.server.worker import Job, Worker

WARMUP_MESSAGES = [{"role": "user", "content": "Hello"}]


class Service:
    """`engine` is a Phi4MM (or any object with its create_chat_completion and close; with its
    `placement()` too, /health reports what sits on the GPU)."""

    def __init__(self, engine: Any, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        self.name = settings.model
        self.started = int(time.time())
        self.metrics = Metrics(self)
        self.media = media.media_loader(settings.media_workers, deadline_s=settings.media_deadline_s,
                                        cpu_s=2 * settings.media_deadline_s,
                                        memory_mb=settings.media_worker_memory_mb)
        self.worker = Worker(settings.max_queue, settings.parallel, settings.max_queued_media_mb << 20,
                             on_start=self.metrics.queue_wait.observe)

    def submit(self, chat: ChatRequest, media_bytes: int = 0) -> Job:
        """Queue `chat` (OverloadedError when the queue is full); its chunks come from the job."""
        job = Job(lambda: self._start(chat, lambda: job.cancelled), asyncio.get_running_loop(), media_bytes)
        self.worker.submit(job)
        return job

    async def fetch_media(self, chat: ChatRequest) -> tuple[ChatRequest, int]:
        """Fetch and decode the request's images and audio in a thread pool, within the limits;
        also the bytes the decoded media hold."""
        held: list[int] = []
        messages = await run_in_threadpool(map_media_sources, chat.messages, lambda ref: self._load(ref, held))
        return replace(chat, messages=messages), sum(held)

    def _load(self, ref: MediaRef, held: list[int]):
        if ref.kind == "image":
            picture = self.media.load_image(ref.source, self.settings.media_limits)
            held.append(picture.width * picture.height * len(picture.getbands()))
            return picture
        clip = self.media.load_audio(ref.source, self.settings.media_limits)
        held.append(clip.samples.nbytes)
        return clip

    def _start(self, chat: ChatRequest, should_stop: Callable[[], bool]):
        return self.engine.create_chat_completion(
            chat.messages, stream=True, media_limits=self.settings.media_limits, should_stop=should_stop,
            **chat.options)

    def warm_up(self) -> None:
        """One short greedy decode, so the first request does not pay for lazy set-up."""
        self.engine.create_chat_completion(WARMUP_MESSAGES, max_tokens=1, temperature=0.0)

    def health(self) -> dict:
        status = "shutting_down" if self.worker.closing else "ok"
        return {"status": status, "model": self.name, "model_loaded": True,
                "queued": self.worker.queued, "in_flight": self.worker.in_flight,
                "parallel": self.worker.parallel, "max_queue": self.worker.max_queue,
                "cancelled": self.worker.n_cancelled, "media_decoders": self.media.health(),
                **(self.engine.placement() if hasattr(self.engine, "placement") else {})}

    def close(self) -> None:
        """Stop the worker; free the engine only once its thread has ended."""
        if self.worker.close(self.settings.shutdown_timeout_s):
            self.engine.close()
        self.media.close()
