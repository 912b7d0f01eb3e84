"""One HTTP request through an ASGI app in the same process, as plain picklable values: how an
engine replica runs the single-process server's app on a request the gateway hands it.

`HttpRequest` goes in; `ResponseStart` then the body's chunks (bytes) come out, as the app sends
them, so a stream stays a stream. Closing the iterator early (the gateway's client left, or the
gateway's call was cancelled) tells the app its client disconnected and ends it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

_END = object()


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query_string: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    client: tuple[str, int] | None = None

    def header(self, name: str) -> str | None:
        return header(self.headers, name)


@dataclass(frozen=True)
class Accepted:
    """Sent by an engine replica before anything else: which replica took the request."""

    replica: str


@dataclass(frozen=True)
class ResponseStart:
    status: int
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())


def header(headers: tuple[tuple[bytes, bytes], ...], name: str) -> str | None:
    """The first value of header `name` (any case) in raw ASGI headers."""
    wanted = name.lower().encode()
    return next((v.decode("latin-1") for k, v in headers if k.lower() == wanted), None)


async def call_app(app: Any, request: HttpRequest, state: dict | None = None) -> AsyncIterator[ResponseStart | bytes]:
    """Run `app` on `request`; `state` becomes the scope's lifespan state (what `request.state`
    reads). Yields the response start, then each non-empty body chunk."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": request.method, "scheme": "http", "path": request.path,
             "raw_path": request.path.encode(), "query_string": request.query_string, "root_path": "",
             "headers": list(request.headers), "client": request.client, "server": None,
             "state": dict(state or {})}
    messages: asyncio.Queue = asyncio.Queue()
    disconnected = asyncio.Event()
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await messages.put(_END)

    task = asyncio.create_task(run())
    try:
        while (message := await messages.get()) is not _END:
            if message["type"] == "http.response.start":
                headers = tuple((bytes(k), bytes(v)) for k, v in message.get("headers", ()))
                yield ResponseStart(message["status"], headers)
            elif message["type"] == "http.response.body" and message.get("body"):
                yield bytes(message["body"])
        await task  # re-raises what the app raised after its response
    finally:
        disconnected.set()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
