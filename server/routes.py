"""The endpoints: POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics. Each handler only
adapts; errors are raised as typed exceptions and answered in server/errors.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from functools import partial
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from phi4mm.server import sse
from phi4mm.server.errors import ClientGone, Unavailable
from phi4mm.server.guards import authorize, read_json
from phi4mm.server.responses import Completion
from phi4mm.server.schemas import parse_chat_request
from phi4mm.server.service import Service
from phi4mm.server.worker import Job

T = TypeVar("T")


def _service(request: Request) -> Service:
    service = getattr(request.state, "service", None)
    if service is None:
        raise Unavailable("the model is not loaded yet; retry once GET /health answers 200")
    return service


async def chat_completions(request: Request) -> Response:
    service = _service(request)
    authorize(request, service.settings.api_key)
    chat = parse_chat_request(await read_json(request, service.settings.max_body_bytes))
    chat, media_bytes = await service.fetch_media(chat)  # downloads and decoding never hold the engine
    job = service.submit(chat, media_bytes)
    if chat.stream:
        return await _stream(request, service, job, chat.include_usage)
    try:
        return JSONResponse(await until_disconnect(request, _collect(job, service.name)))
    finally:
        service.worker.withdraw(job)


async def _stream(request: Request, service: Service, job: Job, include_usage: bool) -> Response:
    """Wait for the first chunk (so input errors still get their status), then stream the rest."""
    release = partial(service.worker.withdraw, job)
    try:
        first = await until_disconnect(request, job.next())
    except BaseException:
        release()
        raise
    return sse.EventStream(sse.events(job, first, include_usage, service.name), on_close=release)


async def _collect(job: Job, model: str) -> dict:
    completion = Completion(model)
    while (chunk := await job.next()) is not None:
        completion.add(chunk)
    return completion.as_dict()


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        task.cancel()  # no effect once done
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientGone("the client disconnected before the response was ready")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def models(request: Request) -> JSONResponse:
    service = _service(request)
    authorize(request, service.settings.api_key)
    card = {"id": service.name, "object": "model", "created": service.started, "owned_by": "phi4mm"}
    return JSONResponse({"object": "list", "data": [card]})


async def health(request: Request) -> JSONResponse:
    """200 while serving; 503 while loading (Unavailable) or draining, for readiness probes."""
    body = _service(request).health()
    return JSONResponse(body, status_code=503 if body["status"] == "shutting_down" else 200)


async def metrics(request: Request) -> Response:
    body, content_type = _service(request).metrics.exposition()
    return Response(body, media_type=content_type)


ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
