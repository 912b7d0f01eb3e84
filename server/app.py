"""The app factory: a Starlette app whose lifespan loads the engine, warms it up with one decode,
serves, then stops the worker and frees the engine. Also `serve(settings)`: run it with uvicorn."""

from __future__ import annotations

import asyncio
import sys
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from phi4mm.server.audio_routes import AUDIO_ROUTES
from phi4mm.server.errors import EXCEPTION_HANDLERS
from phi4mm.server.openapi import openapi_route
from phi4mm.server.routes import ROUTES
from phi4mm.server.service import Service
from phi4mm.server.settings import ServerSettings
from phi4mm.server.ui import ui_routes

EngineLoader = Callable[[ServerSettings], Any]


def load_phi4mm(settings: ServerSettings) -> Any:
    """The real engine: Phi4MM from the converted directory (or whatever `model` names). Says where
    the decoder went, and any offload warning, on stderr."""
    from phi4mm.api import Phi4MM
    from phi4mm.errors import OffloadWarning
    from phi4mm.progress import ProgressPrinter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OffloadWarning)
        model = Phi4MM.from_pretrained(settings.model_dir or settings.model, quant=settings.quant,
                                       n_ctx=settings.n_ctx, n_threads=settings.n_threads,
                                       dynamic_hd=settings.dynamic_hd, media_limits=settings.media_limits,
                                       n_parallel=settings.parallel, prefill_chunk=settings.prefill_chunk,
                                       n_gpu_layers=settings.gpu_layers, main_gpu=settings.main_gpu,
                                       encoder_device=settings.encoder_device,
                                       kv_budget_mb=settings.kv_budget_mb, progress=ProgressPrinter())
    for warning in caught:
        _say(f"warning: {warning.message}")
    _say(model.offload.describe())
    return model


def create_app(settings: ServerSettings, load_engine: EngineLoader = load_phi4mm) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict]:
        service = await asyncio.to_thread(start_service, settings, load_engine)
        try:
            yield {"service": service}
        finally:
            await asyncio.to_thread(service.close)

    return build_app(settings, lifespan)


def build_app(settings: ServerSettings, lifespan: Callable | None = None) -> Starlette:
    """Every route, with the service taken from the lifespan state. Without a lifespan the caller
    owns the service and puts it in each request's scope state (an engine replica on Ray Serve)."""
    routes = [*ROUTES, *AUDIO_ROUTES, openapi_route(settings), *(ui_routes(settings) if settings.ui else [])]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)


def start_service(settings: ServerSettings, load_engine: EngineLoader) -> Service:
    """Load the engine and run the warm-up decode, reporting both on stderr."""
    started = time.perf_counter()
    _say(f"loading {settings.model_dir or settings.model} ...")
    service = Service(load_engine(settings), settings)
    _say(f"loaded in {time.perf_counter() - started:.1f} s")
    if settings.warmup:
        started = time.perf_counter()
        service.warm_up()
        _say(f"warm-up decode done in {time.perf_counter() - started:.1f} s")
    return service


def _say(message: str) -> None:
    print(f"phi4mm: {message}", file=sys.stderr, flush=True)


def serve(settings: ServerSettings) -> None:
    """Serve until SIGTERM or Ctrl-C: the listening socket closes at once (new requests are
    refused), requests in flight get shutdown_timeout_s to finish, then are cancelled. A SIGTERM
    shutdown that completes exits with status 0."""
    import signal

    import uvicorn

    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                            timeout_graceful_shutdown=int(settings.shutdown_timeout_s))
    # uvicorn re-raises the signal it caught once it has shut down; with this handler in place the
    # re-raised SIGTERM returns here instead of killing the process with status -15.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        uvicorn.Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
