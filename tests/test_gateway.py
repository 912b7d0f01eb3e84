"""The gateway's forwarding rules, with stand-in engine replicas (no Ray instance): 429 passed on to
the other replicas and answered only when all refused, one retry when a replica dies before the
response starts, a stream cut by a replica's death ending with an OpenAI error event, and
draining."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("ray")
from ray.exceptions import ActorDiedError  # noqa: E402
from starlette.responses import StreamingResponse  # noqa: E402

from phi4mm.cluster.bridge import Accepted, HttpRequest, ResponseStart  # noqa: E402
from phi4mm.cluster.deployments import Gateway  # noqa: E402
from phi4mm.server.settings import ServerSettings  # noqa: E402

SSE = ((b"content-type", b"text/event-stream; charset=utf-8"),)
JSON = ((b"content-type", b"application/json"),)


class Died(ActorDiedError):
    def __init__(self):  # ActorDiedError's own constructor wants a death cause
        Exception.__init__(self, "the replica's process died")


class FakeStream:
    def __init__(self, items):
        self.items = list(items)
        self.cancelled = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        self.cancelled = True


class FakeEngines:
    """Replicas in preference order; `script[replica]` is what that replica sends. A call goes
    to the first replica not excluded (all of them when every one is), as AffinityRouter does."""

    def __init__(self, script: dict[str, list]):
        self.script = script
        self.calls: list[tuple[str, tuple]] = []
        self.preferred: list[str | None] = []

    def options(self, **kwargs):
        return self

    @property
    def forward(self):
        return self

    def remote(self, http, affinity_key=None, prefer=None, exclude=()):
        allowed = [r for r in self.script if r not in exclude] or list(self.script)
        replica = prefer if prefer in allowed else allowed[0]
        self.calls.append((replica, tuple(exclude)))
        self.preferred.append(prefer)
        return FakeStream(self.script[replica])


def _reply(replica: str, status: int, body: bytes, headers=JSON) -> list:
    return [Accepted(replica), ResponseStart(status, (*headers, (b"x-phi4mm-replica", replica.encode()))), body]


async def _send(gateway: Gateway) -> tuple[int, dict, bytes]:
    response = await gateway.forward(HttpRequest("POST", "/v1/chat/completions", body=b"{}"), "key")
    body = b""
    if isinstance(response, StreamingResponse):
        async for chunk in response.body_iterator:
            body += chunk
    else:
        body = response.body
    return response.status_code, {k.decode(): v.decode() for k, v in response.raw_headers}, body


def _gateway(script) -> tuple[Gateway, FakeEngines]:
    engines = FakeEngines(script)
    return Gateway(engines, ServerSettings(), 2), engines


def test_a_full_replica_passes_the_request_on_and_429_only_when_all_are_full():
    full = _reply("a", 429, b'{"error": {"code": "queue_full"}}')
    gateway, engines = _gateway({"a": full, "b": _reply("b", 200, b'{"ok": 1}')})
    status, headers, body = asyncio.run(_send(gateway))
    assert (status, headers["x-phi4mm-replica"], body) == (200, "b", b'{"ok": 1}')
    assert engines.calls == [("a", ()), ("b", ("a",))]

    # the request's key is remembered where it was served: its next request prefers "b"
    engines.script["a"] = _reply("a", 200, b"{}")
    engines.script["b"] = _reply("b", 200, b"{}")
    status, headers, _ = asyncio.run(_send(gateway))
    assert (status, headers["x-phi4mm-replica"], engines.preferred) == (200, "b", [None, None, "b"])

    gateway, engines = _gateway({"a": full, "b": _reply("b", 429, b'{"error": {"code": "queue_full"}}')})
    status, headers, body = asyncio.run(_send(gateway))
    assert status == 429 and json.loads(body)["error"]["code"] == "queue_full"
    assert [replica for replica, _ in engines.calls] == ["a", "b", "a"]  # every replica refused


def test_a_replica_that_dies_before_answering_costs_one_retry_elsewhere():
    gateway, engines = _gateway({"a": [Accepted("a"), Died()], "b": _reply("b", 200, b"{}")})
    status, headers, _ = asyncio.run(_send(gateway))
    assert (status, headers["x-phi4mm-replica"]) == (200, "b")
    assert engines.calls == [("a", ()), ("b", ("a",))]

    # a second death is not retried again: 503 with an OpenAI body
    gateway, engines = _gateway({"a": [Accepted("a"), Died()], "b": [Accepted("b"), Died()]})
    status, _, body = asyncio.run(_send(gateway))
    assert status == 503 and json.loads(body)["error"]["code"] == "unavailable" and len(engines.calls) == 2


def test_a_stream_whose_replica_dies_ends_with_an_error_event():
    events = [b'data: {"choices": []}\n\n', b'data: {"choices": [1]}\n\n']
    script = [Accepted("a"), ResponseStart(200, SSE), events[0], events[1], Died()]
    gateway, engines = _gateway({"a": script, "b": _reply("b", 200, b"{}")})
    status, _, body = asyncio.run(_send(gateway))
    frames = [f for f in body.decode().split("\n\n") if f]
    assert status == 200 and frames[:2] == [e.decode().strip() for e in events]
    assert json.loads(frames[2][len("data: "):])["error"]["code"] == "unavailable"
    assert frames[3] == "data: [DONE]" and len(engines.calls) == 1  # already under way: not retried


def test_draining_refuses_new_requests_and_waits_for_those_in_flight():
    class Slow(FakeEngines):
        def remote(self, http, affinity_key=None, prefer=None, exclude=()):
            return FakeStream([Accepted("a"), ResponseStart(200, SSE), b"data: 1\n\n"])

    async def scenario():
        gateway = Gateway(Slow({"a": []}), ServerSettings(), 1)
        http = HttpRequest("POST", "/v1/chat/completions", body=b"{}")
        request = _Request(http)
        response = await gateway(request)
        assert gateway.in_flight == 1  # the stream's body has not been sent yet
        drained = asyncio.create_task(gateway.drain(timeout_s=5))
        await asyncio.sleep(0.05)
        refused = await gateway(_Request(http))
        assert not drained.done()
        assert [chunk async for chunk in response.body_iterator] == [b"data: 1\n\n"]
        assert await drained == 0 and refused.status_code == 503
        health = await gateway.health()
        assert health.status_code == 503

    asyncio.run(scenario())


class _Request:
    """The parts of starlette's Request the gateway reads."""

    def __init__(self, http: HttpRequest):
        self.method = http.method
        self.url = type("U", (), {"path": http.path, "query": ""})()
        self.headers = type("H", (), {"raw": list(http.headers)})()
        self.client = None
        self._body = http.body

    async def stream(self):
        yield self._body


@pytest.fixture(autouse=True)
def _no_broadcast(monkeypatch):
    """health() asks every replica through handle.broadcast: here, nobody answers."""
    async def nobody(self):
        return []

    monkeypatch.setattr(Gateway, "_snapshots", nobody)
