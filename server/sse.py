"""Server-sent events: a job's chunks as `data: {json}` lines ending with `data: [DONE]`, and a
streaming response that always releases its job, whether the stream ends or the client leaves."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from phi4mm.server.errors import error_body, is_fault
from phi4mm.server.responses import stream_chunks
from phi4mm.server.worker import Job

DONE = b"data: [DONE]\n\n"
log = logging.getLogger("phi4mm.server")


def encode(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def events(job: Job, first: dict | None, include_usage: bool, model: str) -> AsyncIterator[bytes]:
    """SSE frames for `first` and the job's later chunks; a failure after the headers went out is
    sent as an OpenAI error event (the status line can no longer change)."""
    chunk = first
    try:
        while chunk is not None:
            for out in stream_chunks(chunk, include_usage, model):
                yield encode(out)
            chunk = await job.next()
    except Exception as exc:
        if is_fault(exc):
            log.error("generation failed after the response started", exc_info=exc)
        yield encode(error_body(exc))
        return
    yield DONE


class EventStream(StreamingResponse):
    """text/event-stream; `on_close` runs when the response ends for any reason."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
