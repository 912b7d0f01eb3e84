"""The HTTP server as users meet it: a real `phi4mm serve` process on 127.0.0.1 (tiny checkpoint)
driven by the official `openai` client and raw httpx/socket requests. Two processes: `open_server`
(the seed's setup: --api-key foobar, --allow-private-urls, --allowed-media-dir) and `strict_server`
(key from $PHI4MM_API_KEY, no private URLs, no media dir, --max-queue 1, --max-body-mb 1)."""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image

QUESTION = "<|image_1|>\nWhat is shown in this image? Write a detailed response analyzing the scene."
LONG_PROMPT = "Tell me a long story."  # the tiny model's greedy answer runs for hundreds of tokens
RSS_GROWTH_BOUND_KB = 8 << 10          # 50 hostile requests may not grow the server by 8 MiB


@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    key: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])

    def headers(self, key: str | None = None) -> dict:
        return {"Authorization": f"Bearer {key or self.key}"}

    def post(self, body, key: str | None = None, **kwargs) -> httpx.Response:
        content = json.dumps(body) if isinstance(body, dict) else body  # or bytes, or an iterator
        return httpx.post(f"{self.base}/v1/chat/completions", content=content, timeout=60,
                          headers=self.headers(key) | kwargs.pop("headers", {}), **kwargs)

    def health(self) -> dict:
        return httpx.get(f"{self.base}/health", timeout=10).json()

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(api_key=key or self.key, base_url=f"{self.base}/v1/", max_retries=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(tmp: Path, model_dir: Path, flags: list[str], env: dict, key: str) -> Server:
    port, log = _free_port(), tmp / "server.log"
    cmd = [sys.executable, "-m", "phi4mm.cli", "serve", "--model", str(model_dir), "--port", str(port),
           "--n-ctx", "2048", "--threads", "2", *flags]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, f"http://127.0.0.1:{port}", key, log)
    _wait_healthy(server)
    return server


def _wait_healthy(server: Server, timeout_s: float = 120) -> None:
    """Poll /health until it answers 200; fail early with the log if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        try:
            server.proc.wait(timeout=0.1)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"the server exited ({server.proc.returncode}):\n{server.log.read_text()}")
    raise AssertionError(f"the server did not become healthy:\n{server.log.read_text()}")


def _stop(server: Server) -> None:
    """SIGTERM: a clean shutdown (uvicorn re-raises the signal once it is done)."""
    server.proc.terminate()
    try:
        returncode = server.proc.wait(timeout=30)
    finally:
        server.proc.kill()
    log = server.log.read_text()
    assert returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in log, log[-4000:]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PHI4MM_API_KEY"}
    return env | extra


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """A directory served over HTTP and allowed with --allowed-media-dir, holding mountain.png."""
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(1)
    pixels = np.clip(np.linspace(0, 255, 96)[None, :, None] + rng.normal(0, 20, (64, 96, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(root / "mountain.png")
    return root


@pytest.fixture(scope="session")
def image_url(media_dir: Path) -> Iterator[str]:
    """http://127.0.0.1:PORT/mountain.png from a local http.server (a loopback address)."""
    handler = functools.partial(_QuietHandler, directory=str(media_dir))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/mountain.png"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def open_server(tmp_path_factory, tiny_q4: Path, media_dir: Path) -> Iterator[Server]:
    flags = ["--api-key", "foobar", "--allow-private-urls", "--allowed-media-dir", str(media_dir)]
    server = _start(tmp_path_factory.mktemp("open-server"), tiny_q4, flags, _env(), "foobar")
    yield server
    _stop(server)


@pytest.fixture(scope="session")
def strict_server(tmp_path_factory, tiny_q4: Path) -> Iterator[Server]:
    flags = ["--max-queue", "1", "--parallel", "1", "--max-body-mb", "1", "--n-ctx", "4096"]
    env = _env(PHI4MM_API_KEY="s3cret")
    server = _start(tmp_path_factory.mktemp("strict-server"), tiny_q4, flags, env, "s3cret")
    yield server
    _stop(server)


def seed_request(client: openai.OpenAI, url: str):
    """The seed's server example, as written (only the image URL differs)."""
    return client.chat.completions.create(
        model="phi4mm",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": QUESTION},
                ],
            },
        ],
        max_tokens=256,
        frequency_penalty=1.0,
        top_p=0.1,
        temperature=0,
    )


def assert_serving(server: Server) -> None:
    """A plain request still succeeds."""
    reply = server.post({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"


def assert_error(reply: httpx.Response, status: int, code: str | None = None,
                 mentions: str = "") -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["code"] == code and mentions in error["message"]
    return error


# -- the seed's example and its image source variants ----------------------------------------

@pytest.fixture(scope="session")
def url_answer(open_server: Server, image_url: str):
    return seed_request(open_server.client(), image_url)


def test_seed_example_image_by_url(open_server: Server, image_url: str, tiny_q4: Path):
    client = OpenAI(api_key="foobar", base_url=f"http://localhost:{open_server.port}/v1/")
    completion = seed_request(client, image_url)
    resp = completion.choices[0].message.content
    print(resp)
    assert isinstance(resp, str)
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.model == str(tiny_q4)
    assert completion.usage.completion_tokens <= 256
    assert completion.usage.prompt_tokens > 256  # the image's rows are part of the prompt


def _sources(media_dir: Path) -> dict[str, str]:
    png = (media_dir / "mountain.png").read_bytes()
    b64 = base64.b64encode(png).decode()
    return {"data-url": f"data:image/png;base64,{b64}", "bare-base64": b64,
            "path": str(media_dir / "mountain.png"), "file-url": (media_dir / "mountain.png").as_uri()}


@pytest.mark.parametrize("kind", ["data-url", "bare-base64", "path", "file-url"])
def test_image_sources_give_the_url_answer(open_server: Server, media_dir: Path, url_answer, kind: str):
    """The same pixels by base64, data URL, allowed local path or file:// URL: the same greedy answer."""
    answer = seed_request(open_server.client(), _sources(media_dir)[kind])
    assert answer.choices[0].message.content == url_answer.choices[0].message.content
    assert answer.usage.prompt_tokens == url_answer.usage.prompt_tokens


# -- text features -----------------------------------------------------------------------------

def test_models_and_health(open_server: Server, tiny_q4: Path):
    models = open_server.client().models.list()
    assert [m.id for m in models.data] == [str(tiny_q4)]
    health = open_server.health()
    assert health["model_loaded"] is True and health["in_flight"] == 0 and health["queued"] == 0


def _story(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(
        model="anything", messages=[{"role": "user", "content": "Tell me about mountains."}],
        max_tokens=12, temperature=0, seed=3, **kwargs)


def test_stream_with_include_usage(open_server: Server):
    client = open_server.client()
    whole = _story(client)
    chunks = list(_story(client, stream=True, stream_options={"include_usage": True}))
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in body)
    assert body[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text == whole.choices[0].message.content


def test_stream_without_usage_has_none(open_server: Server):
    reply = open_server.post({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                              "stream": True})
    frames = [line[len("data: "):] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert all("usage" not in c and len(c["choices"]) == 1 for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_json_schema_output_parses(open_server: Server):
    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
              "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}}}
    out = open_server.client().chat.completions.create(
        model="phi4mm", messages=[{"role": "user", "content": "A person as JSON."}], max_tokens=120,
        temperature=0, response_format={"type": "json_schema",
                                        "json_schema": {"name": "person", "schema": schema}})
    person = json.loads(out.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)


def test_json_object_is_constrained(open_server: Server):
    """An unbounded object may be cut by max_tokens; one that stopped by itself must parse."""
    out = open_server.client().chat.completions.create(
        model="phi4mm", messages=[{"role": "user", "content": "JSON please."}], max_tokens=40,
        temperature=0, response_format={"type": "json_object"}, user="someone", n=1)
    content = out.choices[0].message.content
    assert content.lstrip().startswith("{")
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_stop_and_llama_extras_accepted(open_server: Server):
    reply = open_server.post({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                              "stop": ["zzz"], "top_k": 5, "min_p": 0.1, "repeat_penalty": 1.1,
                              "presence_penalty": 0.5, "max_completion_tokens": 3, "unknown": 1})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] <= 3  # max_completion_tokens wins


# -- every error class, each followed by a request that succeeds ---------------------------------

def _user(content) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 2}


def _image(url: str, text: str = "what?") -> list:
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]


ERRORS = {  # name: (body, key, status, code, text the message must contain)
    "malformed-json": (b'{"messages": [', None, 400, None, "not valid JSON"),
    "not-an-object": (b"[1, 2]", None, 400, None, "JSON object"),
    "missing-messages": ({"model": "phi4mm"}, None, 400, None, "'messages' is required"),
    "wrong-type": (_user("hi") | {"temperature": "hot"}, None, 400, None, "temperature"),
    "n-2": (_user("hi") | {"n": 2}, None, 400, None, "n=1"),
    "bad-base64": (_user(_image("data:image/png;base64,@@@@")), None, 400, "invalid_image", "base64"),
    "not-an-image": (_user(_image("data:image/png;base64," + "A" * 80)), None, 400, "invalid_image", ""),
    "tag-mismatch": (_user(_image("data:,x", "<|image_2|> hi")), None, 400, None, "<|image_2|>"),
    "context-overflow": (_user("hello " * 3000), None, 400, "context_length_exceeded", "context"),
    "outside-media-dir": (_user(_image("/etc/hostname")), None, 400, "invalid_image",
                          "--allowed-media-dir"),
    "wrong-key": (_user("hi"), "nope", 401, "invalid_api_key", "--api-key"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_error_then_success(open_server: Server, name: str):
    body, key, status, code, mentions = ERRORS[name]
    assert_error(open_server.post(body, key=key), status, code, mentions)
    assert_serving(open_server)


def test_path_traversal_refused(open_server: Server, media_dir: Path):
    sneaky = f"{media_dir}/../../../../etc/passwd"
    assert_error(open_server.post(_user(_image(sneaky))), 400, "invalid_image", "--allowed-media-dir")
    assert_serving(open_server)


def test_missing_key_and_routing_errors(open_server: Server):
    reply = httpx.post(f"{open_server.base}/v1/chat/completions", json=_user("hi"))
    assert_error(reply, 401, "invalid_api_key")
    assert_error(httpx.get(f"{open_server.base}/v1/nothing-here"), 404, "not_found")
    assert_error(httpx.get(f"{open_server.base}/v1/chat/completions"), 405, "method_not_allowed")
    assert_serving(open_server)


def test_openai_client_sees_typed_errors(open_server: Server):
    client = open_server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi " * 3000}])
    assert caught.value.code == "context_length_exceeded" and caught.value.param == "messages"
    with pytest.raises(openai.AuthenticationError):
        open_server.client(key="wrong").models.list()
    assert _story(client).choices[0].message.content is not None


# -- the strict server: refused sources, limits, queue, disconnects ------------------------------

def test_private_url_refused_naming_the_flag(strict_server: Server, image_url: str):
    for url in (image_url, "http://169.254.169.254/latest/meta-data", "http://[::1]:9/x.png"):
        assert_error(strict_server.post(_user(_image(url))), 400, "invalid_image", "--allow-private-urls")
    assert_serving(strict_server)


def test_local_files_refused_naming_the_flag(strict_server: Server, media_dir: Path):
    for source in (str(media_dir / "mountain.png"), (media_dir / "mountain.png").as_uri()):
        assert_error(strict_server.post(_user(_image(source))), 400, "invalid_image",
                     "--allowed-media-dir")
    assert_serving(strict_server)


def test_body_limit_declared_and_streamed(strict_server: Server):
    huge = json.dumps(_user("x" * (2 << 20))).encode()
    assert_error(strict_server.post(huge), 413, "request_too_large", "--max-body-mb")
    chunked = strict_server.post(iter([huge[i:i + 65536] for i in range(0, len(huge), 65536)]))
    assert_error(chunked, 413, "request_too_large")
    assert_serving(strict_server)


def raw_post(server: Server, body: dict) -> socket.socket:
    """POST `body` to /v1/chat/completions over a plain socket (so the test can drop it at any
    moment); returns the socket."""
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            f"{server.key}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(head.encode() + data)
    return sock


def read_frames(sock: socket.socket, n: int = 3, marker: bytes = b"data: ") -> bytes:
    """Read until `marker` has arrived n times; what was read."""
    data = b""
    while data.count(marker) < n:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _open_stream(server: Server, prompt: str = LONG_PROMPT) -> socket.socket:
    """A raw streaming request that generates until the context is full; returns its socket."""
    return raw_post(server, {"messages": [{"role": "user", "content": prompt}], "stream": True,
                             "temperature": 0, "max_tokens": 100000})


def _wait_health(server: Server, timeout_s: float = 10, **expected) -> dict:
    deadline = time.monotonic() + timeout_s
    while (health := server.health()) and any(health[k] != v for k, v in expected.items()):
        assert time.monotonic() < deadline, f"health stayed {health}, expected {expected}"
        time.sleep(0.02)  # polling interval
    return health


def test_disconnect_frees_the_slot(strict_server: Server):
    before = _wait_health(strict_server, in_flight=0, queued=0)["cancelled"]
    sock = _open_stream(strict_server)
    assert b"200 OK" in read_frames(sock)
    assert strict_server.health()["in_flight"] == 1
    sock.close()
    _wait_health(strict_server, timeout_s=5, in_flight=0, queued=0, cancelled=before + 1)
    started = time.monotonic()
    assert_serving(strict_server)
    assert time.monotonic() - started < 5


def test_full_queue_is_429_then_recovers(strict_server: Server):
    running = _open_stream(strict_server)
    read_frames(running)
    waiting = _open_stream(strict_server)
    _wait_health(strict_server, in_flight=1, queued=1)
    error = assert_error(strict_server.post(_user("hi")), 429, "queue_full", "--max-queue 1")
    assert error["type"] == "rate_limit_error"
    running.close()
    waiting.close()
    _wait_health(strict_server, in_flight=0, queued=0)
    assert_serving(strict_server)


def _hostile_requests(server: Server, image_url: str) -> list:
    """(send, expected status) pairs: each a malformed or hostile request."""
    post = server.post
    deep = b"[" * 100_000 + b"]" * 100_000
    return [
        (lambda: post(b"{nope"), 400),
        (lambda: post(b"\xff\xfe\x00garbage"), 400),
        (lambda: post(deep), 400),  # nesting deeper than Python's recursion limit
        (lambda: post(b"x" * (3 << 20)), 413),
        (lambda: post(iter([b"y" * (1 << 16)] * 40)), 413),  # chunked: no Content-Length
        (lambda: post(json.dumps(_user("hi") | {"max_tokens": "ten"})), 400),
        (lambda: post(json.dumps({"messages": "hi"})), 400),
        (lambda: post(json.dumps(_user([{"type": "video", "url": "x"}]))), 400),
        (lambda: post(json.dumps(_user(_image("data:image/png;base64,!!!!")))), 400),
        (lambda: post(json.dumps(_user(_image(image_url)))), 400),
        (lambda: post(json.dumps(_user(_image("http://10.0.0.1/a.png")))), 400),
        (lambda: post(json.dumps(_user(_image("../../../../etc/shadow")))), 400),
        (lambda: post(json.dumps(_user(_image("file:///etc/passwd")))), 400),
        (lambda: post(json.dumps(_user(_image("gopher://example.com/x")))), 400),
        (lambda: post(json.dumps(_user("hi")), key="wrong-key"), 401),
        (lambda: post(json.dumps(_user("hi") | {"n": 2})), 400),
        (lambda: post(json.dumps(_user("hi") | {"stop": ["a"] * 100})), 400),
        (lambda: post(json.dumps(_user("hi") | {"response_format": {"type": "xml"}})), 400),
        (lambda: post(json.dumps(_user("hello " * 5000))), 400),
    ]


def test_fifty_hostile_requests_keep_memory_flat(strict_server: Server, image_url: str):
    cases = _hostile_requests(strict_server, image_url)
    for send, status in cases:  # a first round pays for lazy allocations
        assert send().status_code == status
    rss_before = strict_server.rss_kb()
    for i in range(50):
        send, status = cases[i % len(cases)]
        reply = send()
        assert reply.status_code == status, (i, reply.text)
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert_serving(strict_server)
    growth_kb = strict_server.rss_kb() - rss_before
    print(f"RSS {rss_before} kB before, grew by {growth_kb} kB")
    assert growth_kb < RSS_GROWTH_BOUND_KB, f"RSS grew by {growth_kb} kB"


def test_no_fault_was_logged(open_server: Server, strict_server: Server):
    """Runs last: every request above, hostile ones included, was answered without a 500."""
    for server in (open_server, strict_server):
        log = server.log.read_text()
        assert "Traceback" not in log, log[log.index("Traceback"):][:4000]

