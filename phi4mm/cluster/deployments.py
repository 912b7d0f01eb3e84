"""The two Serve deployments.

`EngineReplica`: one engine (Phi4MM, its worker, metrics and media decoders: the single-process
server's Service) running the single-process server's app, one request at a time through
phi4mm.cluster.bridge. Every flag means what it means for `phi4mm serve`, per replica.

`Gateway`: the HTTP ingress behind Serve's proxy. It reads the body once, works out the
conversation's affinity key, and forwards the request to an engine replica through a handle whose
router is phi4mm.cluster.router. It answers /health and /metrics itself, for the whole deployment,
by asking every replica (handle.broadcast). It retries once on another replica when the chosen
one dies before anything was sent to the client, tries the others when one answers 429, and ends
a stream whose replica died mid-way with an OpenAI error event."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from phi4mm.cluster.affinity import REPLICA_HEADER, Placements, affinity_key
from phi4mm.cluster.bridge import Accepted, HttpRequest, ResponseStart, call_app, header
from phi4mm.server.app import build_app, load_phi4mm, start_service
from phi4mm.server.errors import BodyTooLarge, Unavailable, error_body
from phi4mm.server.metrics import merge_expositions
from phi4mm.server.settings import ServerSettings
from phi4mm.server.sse import DONE, encode

REPLICA_LOST = (RayActorError, ActorUnavailableError)
SNAPSHOT_TIMEOUT_S = 5.0


class ReplicaLost(Unavailable):
    """The engine replica serving a request died."""


class EngineReplica:
    def __init__(self, settings: ServerSettings):
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.service = start_service(settings, load_phi4mm)
        self.app = build_app(settings)

    async def forward(self, request: HttpRequest, affinity_key: str | None = None, prefer: str | None = None,
                      exclude: tuple[str, ...] = ()) -> AsyncIterator[Accepted | ResponseStart | bytes]:
        """This replica's id, then the app's response to `request`, its start marked with that id.
        (The keyword arguments are read by the router, not here.)"""
        yield Accepted(self.replica_id)
        async for item in call_app(self.app, request, {"service": self.service}):
            if isinstance(item, ResponseStart):
                item = ResponseStart(item.status, (*item.headers, (REPLICA_HEADER.encode(), self.replica_id.encode())))
            yield item

    def snapshot(self) -> dict:
        """This replica's health (as its own /health would say) and its metrics exposition."""
        body, _ = self.service.metrics.exposition()
        return {"replica": self.replica_id, "pid": os.getpid(), "health": self.service.health(),
                "metrics": body.decode()}

    def check_health(self) -> None:
        """Serve's periodic probe: a replica whose worker has stopped is replaced."""
        if self.service.worker.closing:
            raise RuntimeError(f"replica {self.replica_id}: its worker has stopped")

    def __del__(self) -> None:  # Serve calls this when it stops the replica, after draining
        service = getattr(self, "service", None)
        if service is not None:
            service.close()


class Gateway:
    def __init__(self, engines, settings: ServerSettings, target_replicas: int | None, affinity: bool = True):
        self.engines = engines
        self.settings = settings
        self.target_replicas = target_replicas  # None: autoscaling, read from Serve's status
        self.affinity = affinity
        self.placements = Placements()  # where each conversation went: its later turns go there too
        self.in_flight = 0      # requests whose response has not ended yet
        self.draining = False

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        if path == "/health" and method == "GET":
            return await self.health()
        if path == "/metrics" and method == "GET":
            return await self.metrics()
        if self.draining:
            return JSONResponse(error_body(Unavailable("the server is shutting down; retry against a running "
                                                       "server")), status_code=503)
        self.in_flight += 1
        response: Response | None = None
        try:
            try:
                http = await _read(request, self.settings.max_body_bytes)
            except BodyTooLarge as exc:
                return JSONResponse(error_body(exc), status_code=413)
            headers = {k.decode().lower(): v.decode("latin-1") for k, v in http.headers}
            key = affinity_key(headers, _json(http)) if self.affinity else None
            response = await self.forward(http, key)
            return response
        finally:
            if isinstance(response, StreamingResponse):
                response.body_iterator = self._counted(response.body_iterator)
            else:
                self.in_flight -= 1

    async def _counted(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.in_flight -= 1

    async def drain(self, timeout_s: float) -> int:
        """Refuse new requests (503) and wait up to `timeout_s` for those in flight to end; how many
        had not ended by then."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.in_flight

    async def forward(self, http: HttpRequest, key: str | None) -> Response:
        """Send `http` to a replica; commit to the client only once the replica has sent its
        response start and first body chunk. Until then a replica that dies costs one retry
        elsewhere, and one that answers 429 (full) passes the request to the others."""
        excluded: list[str] = []  # replicas that died under this request or refused it
        lost = 0
        while True:
            stream = self.engines.options(stream=True).forward.remote(
                http, affinity_key=key, prefer=self.placements.get(key), exclude=tuple(excluded))
            replica = None
            try:
                replica = (await stream.__anext__()).replica
                start = await stream.__anext__()
                first = await anext(stream, b"")
            except REPLICA_LOST:
                stream.cancel()
                lost += 1
                if lost > 1:
                    return JSONResponse(error_body(ReplicaLost(
                        "the engine replicas serving this request died twice; retry")), status_code=503)
                excluded += [replica] if replica else []
                continue
            except Exception as exc:  # noqa: BLE001 - a fault in the replica's code: a 500 body, not Serve's text
                stream.cancel()
                return JSONResponse(error_body(exc), status_code=500)
            if start.status == 429 and replica not in excluded:
                stream.cancel()
                excluded.append(replica)
                continue
            self.placements.remember(key, replica)
            return _relay(start, first, stream)

    async def _snapshots(self) -> list[dict]:
        """Every replica's snapshot that came back within SNAPSHOT_TIMEOUT_S."""
        try:
            results = await self.engines.broadcast("snapshot").results_async(timeout_s=SNAPSHOT_TIMEOUT_S,
                                                                             return_exceptions=True)
        except TimeoutError:
            return []
        return [r for r in results if isinstance(r, dict)]

    async def health(self) -> JSONResponse:
        snapshots = await self._snapshots()
        healthy = [s for s in snapshots if s["health"].get("status") == "ok"]
        target = self.target_replicas if self.target_replicas is not None else await asyncio.to_thread(_serve_target)
        status = "shutting_down" if self.draining else "ok" if healthy else "unavailable"
        body = {"status": status, "model": self.settings.model,
                "replicas": {"target": target, "healthy": len(healthy)},
                "queued": sum(s["health"].get("queued", 0) for s in snapshots),
                "in_flight": sum(s["health"].get("in_flight", 0) for s in snapshots),
                "replica_health": {s["replica"]: {**s["health"], "pid": s["pid"]} for s in snapshots}}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    async def metrics(self) -> Response:
        snapshots = await self._snapshots()
        body, content_type = merge_expositions({s["replica"]: s["metrics"] for s in snapshots})
        return Response(body, media_type=content_type)


async def _read(request: Request, limit: int) -> HttpRequest:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is over {limit} bytes (--max-body-mb)")
        chunks.append(chunk)
    client = (request.client.host, request.client.port) if request.client else None
    return HttpRequest(request.method, request.url.path, request.url.query.encode(), tuple(request.headers.raw),
                       b"".join(chunks), client)


def _json(http: HttpRequest):
    if "json" not in (http.header("content-type") or ""):
        return None
    try:
        return json.loads(http.body)
    except ValueError:
        return None


def _relay(start: ResponseStart, first: bytes, stream) -> Response:
    sse = (header(start.headers, "content-type") or "").startswith("text/event-stream")
    response = StreamingResponse(_rest(first, stream, sse), status_code=start.status)
    response.raw_headers = list(start.headers)  # the replica's, content-length included
    return response


async def _rest(first: bytes, stream, sse: bool) -> AsyncIterator[bytes]:
    """The body after its first chunk. A replica lost mid-way ends an event stream with an OpenAI
    error event and [DONE]; any other body just ends (its length no longer matches)."""
    try:
        if first:
            yield first
        async for chunk in stream:
            yield chunk
    except REPLICA_LOST:
        if sse:
            yield encode(error_body(ReplicaLost("the engine replica serving this stream died; retry the request")))
            yield DONE
    finally:
        stream.cancel()


def _serve_target() -> int:
    """Replicas Serve is keeping for the engine deployment (starting, running or recovering)."""
    status = serve.status()
    for app in status.applications.values():
        for name, deployment in app.deployments.items():
            if name == "EngineReplica":
                return sum(n for state, n in deployment.replica_states.items()
                           if str(getattr(state, "value", state)) not in ("STOPPING", "STOPPED"))
    return 0
