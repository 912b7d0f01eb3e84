"""Generated hostile input (issue 18), seeded from valid input (tests/fuzzing.py). In-process: request
parsing and validation raise only InputError; the media loaders, run in decoder processes, answer
only with decoded media or a MediaError from our own checks, and no worker dies. Over HTTP against a
real `phi4mm serve`: every answer is a 2xx, or a 4xx with OpenAI's error body; never a 5xx, a hang
or a dead server. CI runs a bounded number of examples; PHI4MM_FUZZ_EXAMPLES=N runs N times more
(the README's campaign)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import pytest
from fuzzing import bounded, mutated_bodies, mutated_media
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import FormData
from test_server import Server, _env, _start, _stop

from phi4mm.errors import InputError, MediaError
from phi4mm.media import DecoderPool, PoolSettings
from phi4mm.prompt import map_media_sources
from phi4mm.server.audio_routes import parse_audio_form
from phi4mm.server.schemas import parse_chat_request

DEAD_WORKER = ("decoder crashed", "decoder was killed", "decoder aborted", "deadline", "stopped answering",
               "decoder raised", "decoder exited", "ended by signal")
FORM_FIELDS = ["model", "response_format", "stream", "language", "prompt", "temperature", "target_language",
               "timestamp_granularities[]", "include[]", "chunking_strategy"]


@bounded(400)
@given(mutated_bodies())
def test_request_parsing_raises_only_input_errors(body):
    try:
        chat = parse_chat_request(body)
        map_media_sources(chat.messages, lambda ref: ref.source)
    except InputError:
        pass


@bounded(300)
@given(st.lists(st.tuples(st.sampled_from(FORM_FIELDS), st.text(max_size=12)
                          | st.sampled_from(["json", "srt", "true", "false", "0.5", "-1", "nan", "1e999", "word"])),
                max_size=8), st.booleans())
def test_audio_form_parsing_raises_only_input_errors(fields, translate):
    try:
        parse_audio_form(FormData(fields), translate)
    except InputError:
        pass


@pytest.fixture(scope="module")
def pool():
    decoders = DecoderPool(PoolSettings(n_workers=2, deadline_s=20.0))
    yield decoders
    decoders.close()


@bounded(150)
@given(mutated_media())
def test_media_loaders_answer_media_or_a_media_error_and_no_worker_dies(pool, sample):
    name, kind, data = sample
    try:
        if kind == "image":
            pool.load_image(data)
        else:
            pool.decode_audio(data, origin=f"a mutated {name}", format_hint=name)
    except MediaError as exc:
        assert not any(sign in str(exc) for sign in DEAD_WORKER), (name, str(exc))
    _no_worker_left_dead(lambda: pool.health())


def _no_worker_left_dead(health, timeout_s: float = 30.0) -> None:
    """Both decoders are alive, at once or once a replacement has started (after an out-of-memory)."""
    deadline = time.monotonic() + timeout_s
    while health()["alive"] != health()["workers"]:
        assert time.monotonic() < deadline, health()
        time.sleep(0.05)


# -- over HTTP -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_q4: Path):
    srv = _start(tmp_path_factory.mktemp("fuzz"), tiny_q4, ["--media-workers", "2", "--parallel", "2"], _env(), "")
    srv.slowest_s = 0.0
    yield srv
    _no_worker_left_dead(lambda: httpx.get(f"{srv.base}/health", timeout=10).json()["media_decoders"])
    assert httpx.get(f"{srv.base}/health", timeout=10).json()["status"] == "ok"
    _stop(srv)


def _check(server: Server, reply: httpx.Response, started: float) -> None:
    server.slowest_s = max(server.slowest_s, time.monotonic() - started)
    assert reply.status_code < 500, (reply.status_code, reply.text[:500])
    if reply.status_code >= 400:
        error = reply.json()["error"]
        assert isinstance(error["message"], str) and error["message"], error
        assert error["type"] in ("invalid_request_error", "authentication_error", "rate_limit_error"), error


def _post(server: Server, content: bytes) -> None:
    started = time.monotonic()
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", content=content, timeout=60,
                      headers={"content-type": "application/json"}) as reply:
        reply.read()
    _check(server, reply, started)


@pytest.mark.slow
@bounded(80)
@given(mutated_bodies())
def test_http_mutated_json_bodies(server, body):
    _post(server, json.dumps(body).encode())


@pytest.mark.slow
@bounded(30)
@given(st.binary(max_size=256) | st.sampled_from([b"{", b"[]", b"null", b"{\"messages\": " * 2000, b"\xff\xfe"]))
def test_http_bodies_that_are_not_json(server, content):
    _post(server, content)


@pytest.mark.slow
@bounded(60)
@given(mutated_media())
def test_http_mutated_media(server, sample):
    name, kind, data = sample
    encoded = base64.b64encode(data).decode()
    part = ({"type": "image_url", "image_url": {"url": f"data:image/{name};base64,{encoded}"}} if kind == "image"
            else {"type": "input_audio", "input_audio": {"data": encoded, "format": name}})
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [part, {"type": "text",
                                                                                          "text": "What?"}]}]}
    _post(server, json.dumps(body).encode())


@pytest.mark.slow
def test_the_server_survived_and_reports_the_slowest_answer(server):
    """Runs after the campaigns above (file order): the server answers and says how slow it got."""
    assert httpx.get(f"{server.base}/health", timeout=10).status_code == 200
    assert server.slowest_s < 30, server.slowest_s
    print(f"slowest fuzz answer: {server.slowest_s:.2f} s")
