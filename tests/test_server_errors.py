"""Error paths of the server in-process: starlette's TestClient against the app factory with a
small fake engine, plus the worker queue on its own. The real process is in test_server.py."""

from __future__ import annotations

import asyncio
import json
import threading
from functools import partial

import pytest
from starlette.testclient import TestClient

from phi4mm.errors import (
    ConfigError,
    ContextOverflowError,
    EngineError,
    InputError,
    MediaError,
    ModelNotFoundError,
    OverloadedError,
)
from phi4mm.server.app import create_app
from phi4mm.server.errors import BodyTooLarge, ClientGone, Unauthorized, Unavailable, classify
from phi4mm.server.settings import ServerSettings
from phi4mm.server.worker import Job, Worker

KEY = {"Authorization": "Bearer k"}


class FakeEngine:
    """Stands in for Phi4MM; what it does is chosen by the last message's text."""

    def __init__(self):
        self.calls: list[dict] = []
        self.closed = False

    def create_chat_completion(self, messages, stream=False, **options):
        self.calls.append(options)
        text = messages[-1]["content"]
        if text == "boom":
            raise RuntimeError("secret internals")
        if text == "overflow":
            raise ContextOverflowError(5000, 4096)
        if text == "bad image":
            raise MediaError("the image bytes is not an image")
        chunks = self._chunks(text)
        return chunks if stream else {"choices": [], "consumed": list(chunks)}

    def _chunks(self, text: str):
        head = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "inner"}
        yield head | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                   "logprobs": None, "finish_reason": None}]}
        yield head | {"choices": [{"index": 0, "delta": {"content": "hel"}, "logprobs": None,
                                   "finish_reason": None}]}
        if text == "midstream":
            raise EngineError("llama_decode returned 1")
        yield head | {"choices": [{"index": 0, "delta": {"content": "lo"}, "logprobs": None,
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}

    def close(self):
        self.closed = True


@pytest.fixture()
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def client(engine: FakeEngine):
    settings = ServerSettings(model="served-name", api_key="k", max_body_bytes=4096, max_queue=2)
    with TestClient(create_app(settings, load_engine=lambda s: engine),
                    raise_server_exceptions=False) as test_client:
        yield test_client


def chat(client: TestClient, content="hi", **fields):
    body = {"model": "whatever", "messages": [{"role": "user", "content": content}]} | fields
    return client.post("/v1/chat/completions", json=body, headers=KEY)


def error_of(reply, status: int) -> dict:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("exc, status", [
    (InputError("x"), 400), (MediaError("x"), 400), (ContextOverflowError(9, 8), 400),
    (Unauthorized("x"), 401), (BodyTooLarge("x"), 413), (OverloadedError("x"), 429),
    (Unavailable("x"), 503), (ClientGone("x"), 499), (EngineError("x"), 500),
    (ConfigError("x"), 500), (ModelNotFoundError("x"), 500), (RuntimeError("x"), 500),
])
def test_one_table_maps_every_error(exc, status):
    assert classify(exc).status == status


def test_lifespan_warms_up_then_closes_the_engine(engine: FakeEngine):
    with TestClient(create_app(ServerSettings(), load_engine=lambda s: engine)) as test_client:
        assert engine.calls == [{"max_tokens": 1, "temperature": 0.0}]
        assert test_client.get("/health").json()["model_loaded"] is True
        assert not engine.closed
    assert engine.closed


def test_completion_echoes_served_name_and_passes_options(client: TestClient, engine: FakeEngine):
    reply = chat(client, max_tokens=9, max_completion_tokens=4, top_k=3, min_p=0.1,
                 repeat_penalty=1.2, dynamic_hd=4, stop="x", user="u", whatever={"ignored": 1})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "served-name" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["choices"][0]["finish_reason"] == "stop" and body["usage"]["total_tokens"] == 5
    options = engine.calls[-1]
    assert options["max_tokens"] == 4 and options["top_k"] == 3 and options["dynamic_hd"] == 4
    assert options["media_limits"].allow_local_files is False  # no --allowed-media-dir


def test_stream_usage_only_when_asked(client: TestClient):
    def frames(**fields):
        text = chat(client, stream=True, **fields).text
        return [f[len("data: "):] for f in text.split("\n\n") if f]

    plain = frames()
    assert plain[-1] == "[DONE]" and all("usage" not in json.loads(f) for f in plain[:-1])
    asked = frames(stream_options={"include_usage": True})
    *chunks, usage_chunk = [json.loads(f) for f in asked[:-1]]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] == 5
    assert all(c["usage"] is None and c["model"] == "served-name" for c in chunks)


def test_real_fault_is_500_and_the_server_keeps_serving(client: TestClient):
    error = error_of(chat(client, "boom"), 500)
    assert error["type"] == "server_error" and "secret internals" not in error["message"]
    assert chat(client).status_code == 200


def test_fault_after_headers_is_an_sse_error_event(client: TestClient):
    reply = chat(client, "midstream", stream=True)
    assert reply.status_code == 200
    frames = [json.loads(f[len("data: "):]) for f in reply.text.split("\n\n") if f]
    assert frames[-1]["error"]["type"] == "server_error" and "[DONE]" not in reply.text
    assert chat(client).status_code == 200


@pytest.mark.parametrize("content, status, code", [
    ("overflow", 400, "context_length_exceeded"), ("bad image", 400, "invalid_image")])
def test_engine_input_errors_are_400(client: TestClient, content: str, status: int, code: str):
    for stream in (False, True):  # raised before any chunk: a status, not an SSE event
        assert error_of(chat(client, content, stream=stream), status)["code"] == code
    assert chat(client).status_code == 200


@pytest.mark.parametrize("fields, param", [
    ({"temperature": "hot"}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 1.5}, "max_tokens"), ({"top_k": 1.5}, "top_k"),
    ({"stop": [1, 2]}, "stop"), ({"seed": "x"}, "seed"), ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "x"}}, "stream_options.include_usage"),
    ({"n": 2}, "n"), ({"n": True}, "n"), ({"model": 5}, "model"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"response_format": "json"}, "response_format"), ({"frequency_penalty": 9}, "frequency_penalty"),
])
def test_bad_fields_are_400_naming_the_field(client: TestClient, engine: FakeEngine, fields, param):
    error = error_of(chat(client, **fields), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert len(engine.calls) == 1  # only the warm-up: refused before reaching the engine


@pytest.mark.parametrize("body", [b"", b"{", b"[1]", b"\xff", b"[" * 3000 + b"]" * 3000])
def test_unparseable_bodies_are_400(body: bytes, engine: FakeEngine):
    settings = ServerSettings(max_body_bytes=1 << 20)
    with TestClient(create_app(settings, load_engine=lambda s: engine)) as test_client:
        error_of(test_client.post("/v1/chat/completions", content=body), 400)


def test_api_key(client: TestClient):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic k"},
                    {"Authorization": "k"}):
        reply = client.post("/v1/chat/completions", json={"messages": []}, headers=headers)
        assert error_of(reply, 401)["code"] == "invalid_api_key"
    assert error_of(client.get("/v1/models"), 401)["type"] == "authentication_error"
    assert client.get("/v1/models", headers=KEY).json()["data"][0]["id"] == "served-name"
    assert client.get("/health").status_code == 200  # health needs no key


def test_body_limit_declared_and_streamed(client: TestClient):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    assert error_of(client.post("/v1/chat/completions", content=big, headers=KEY), 413)["code"] \
        == "request_too_large"
    chunked = client.post("/v1/chat/completions", content=iter([big[:3000], big[3000:]]), headers=KEY)
    error_of(chunked, 413)
    assert chat(client).status_code == 200


def test_routing_errors_share_the_body(client: TestClient):
    assert error_of(client.get("/v2/nothing"), 404)["code"] == "not_found"
    assert error_of(client.get("/v1/chat/completions"), 405)["code"] == "method_not_allowed"


def test_not_loaded_is_503(engine: FakeEngine):
    app = create_app(ServerSettings(), load_engine=lambda s: engine)
    test_client = TestClient(app)  # lifespan not run: no engine
    assert error_of(test_client.get("/health"), 503)["code"] == "unavailable"
    assert error_of(test_client.post("/v1/chat/completions", json={}), 503)["code"] == "unavailable"


def test_shutting_down_is_503(client: TestClient, engine: FakeEngine):
    assert client.app_state["service"].worker.close(timeout_s=5)
    assert error_of(chat(client), 503)["code"] == "unavailable"
    health = client.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "shutting_down"  # readiness probes fail


# -- the worker on its own ---------------------------------------------------------------------

def test_worker_bounds_the_queue_and_withdraw_frees_a_slot():
    async def scenario():
        loop, gate, started = asyncio.get_running_loop(), threading.Event(), threading.Event()

        def blocked():
            started.set()
            gate.wait(10)
            return iter([{"n": 1}])

        worker = Worker(max_queue=1)
        first, second, third = Job(blocked, loop), Job(lambda: iter([{"n": 2}]), loop), \
            Job(lambda: iter([{"n": 3}]), loop)
        worker.submit(first)
        await asyncio.to_thread(started.wait, 10)
        worker.submit(second)
        with pytest.raises(OverloadedError):
            worker.submit(third)
        worker.withdraw(second)
        assert (worker.queued, worker.in_flight, worker.n_cancelled) == (0, 1, 1)
        worker.submit(third)
        gate.set()
        assert [await first.next(), await first.next()] == [{"n": 1}, None]
        assert [await third.next(), await third.next()] == [{"n": 3}, None]
        assert worker.close(timeout_s=5)

    asyncio.run(scenario())


def endless_tokens(closed: threading.Event):
    """A generation that never ends by itself; `closed` is set when its generator is closed."""
    try:
        while True:
            yield {"token": 1}
    finally:
        closed.set()


def test_worker_cancels_a_running_generation_between_chunks():
    async def scenario():
        loop, closed = asyncio.get_running_loop(), threading.Event()

        endless = partial(endless_tokens, closed)
        worker = Worker(max_queue=0)
        job = Job(endless, loop)
        worker.submit(job)
        assert await job.next() == {"token": 1}
        worker.withdraw(job)
        assert await asyncio.to_thread(closed.wait, 10)  # the generator was closed
        assert worker.close(timeout_s=5) and worker.n_cancelled == 1
        with pytest.raises(Unavailable):
            worker.submit(Job(endless, loop))

    asyncio.run(scenario())


def test_worker_close_fails_waiting_jobs_and_stops_the_running_one():
    async def scenario():
        loop, closed = asyncio.get_running_loop(), threading.Event()

        endless = partial(endless_tokens, closed)
        worker = Worker(max_queue=2)
        running, waiting = Job(endless, loop), Job(lambda: iter([{"never": True}]), loop)
        worker.submit(running)
        assert await running.next() == {"token": 1}
        worker.submit(waiting)
        assert await asyncio.to_thread(worker.close, 10)  # the thread ended: the engine may be freed
        assert closed.is_set()
        with pytest.raises(Unavailable):
            await waiting.next()

    asyncio.run(scenario())


def test_worker_runs_parallel_jobs_and_bounds_waiting_media_bytes():
    """Two runners take two jobs at once; waiting jobs may hold at most the media-byte budget (a
    job that would wait past it is refused, naming the flag); a job that runs at once is not."""
    async def scenario():
        loop, gate = asyncio.get_running_loop(), threading.Event()
        started = [threading.Event(), threading.Event()]

        def blocked(i):
            started[i].set()
            gate.wait(10)
            return iter([{"n": i}])

        worker = Worker(max_queue=4, parallel=2, max_queued_media_bytes=3 << 20)
        running = [Job(partial(blocked, i), loop, media_bytes=5 << 20) for i in range(2)]
        for job in running:
            worker.submit(job)  # over the budget, but they start at once
        for event in started:
            assert await asyncio.to_thread(event.wait, 10)
        assert (worker.in_flight, worker.queued) == (2, 0)
        small = Job(lambda: iter([{"n": 2}]), loop, media_bytes=2 << 20)
        worker.submit(small)
        with pytest.raises(OverloadedError, match="--max-queued-media-mb 3"):
            worker.submit(Job(lambda: iter([{"n": 3}]), loop, media_bytes=2 << 20))
        worker.submit(Job(lambda: iter([{"n": 4}]), loop))  # no media: only the count bounds it
        assert (worker.queued, worker.queued_media_bytes, worker.n_rejected) == (2, 2 << 20, 1)
        gate.set()
        assert [await running[0].next(), await running[0].next()] == [{"n": 0}, None]
        assert [await small.next(), await small.next()] == [{"n": 2}, None]
        assert worker.close(timeout_s=5)

    asyncio.run(scenario())


def test_metrics_and_retry_after_with_a_stand_in_engine():
    """/metrics works for any engine (the engine series only when it has a scheduler); a full
    queue's 429 carries Retry-After."""
    from prometheus_client.parser import text_string_to_metric_families

    engine = FakeEngine()
    settings = ServerSettings(max_queue=0, parallel=1)
    with TestClient(create_app(settings, load_engine=lambda s: engine)) as test_client:
        service = test_client.app_state["service"]
        text = test_client.get("/metrics").text
        names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        assert {"phi4mm_requests_running", "phi4mm_requests_queued", "phi4mm_queue_wait_seconds_count",
                "phi4mm_requests_rejected_total"} <= names
        assert not any(n.startswith("phi4mm_sequences") for n in names)
        service.worker.submit = lambda job: (_ for _ in ()).throw(OverloadedError("full"))
        reply = test_client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 429 and reply.headers["retry-after"] == "1"
        assert reply.json()["error"]["code"] == "queue_full"
