"""What the lifespan owns: the loaded engine, its one worker thread, and the settings every
request is served with. No HTTP here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from starlette.concurrency import run_in_threadpool

from phi4mm import media
from phi4mm.prompt import MediaRef, map_media_sources
from phi4mm.server.schemas import ChatRequest
from phi4mm.server.settings import ServerSettings
from phi4mm.server.worker import Job, Worker

WARMUP_MESSAGES = [{"role": "user", "content": "Hello"}]


class Service:
    """`engine` is a Phi4MM (or any object with its create_chat_completion and close)."""

    def __init__(self, engine: Any, settings: ServerSettings):
        self.engine = engine
        self.settings = settings
        self.name = settings.model
        self.started = int(time.time())
        self.worker = Worker(settings.max_queue)

    def submit(self, chat: ChatRequest) -> Job:
        """Queue `chat` (OverloadedError when the queue is full); its chunks come from the job."""
        job = Job(lambda: self._start(chat, lambda: job.cancelled), asyncio.get_running_loop())
        self.worker.submit(job)
        return job

    async def fetch_media(self, chat: ChatRequest) -> ChatRequest:
        """Fetch and decode the request's images and audio in a thread pool, within the limits."""
        messages = await run_in_threadpool(map_media_sources, chat.messages, self._load)
        return replace(chat, messages=messages)

    def _load(self, ref: MediaRef):
        load = media.load_image if ref.kind == "image" else media.load_audio
        return load(ref.source, self.settings.media_limits)

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
                "max_queue": self.worker.max_queue, "cancelled": self.worker.n_cancelled}

    def close(self) -> None:
        """Stop the worker; free the engine only once its thread has ended."""
        if self.worker.close(self.settings.shutdown_timeout_s):
            self.engine.close()
