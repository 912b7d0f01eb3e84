"""Media decoders isolated from a real `phi4mm serve` (issue 18): a decoder process SIGKILLed in the
middle of a decode, one that overruns its deadline and one that runs out of memory each fail only
their own request (400 with invalid_image / invalid_audio saying how), a stream running meanwhile
finishes, the next image and audio requests succeed, and the server's memory does not move. The
faults come from tests/media_faults.py, loaded by the decoder processes through
PHI4MM_MEDIA_TEST_HOOK, which only this test sets."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from media_faults import PID_FILE_ENV, fault
from PIL import Image
from test_media_isolation import _wait_for
from test_server import LONG_PROMPT, Server, _env, _start, _stop

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
DEADLINE_S = 3.0
MEMORY_MB = 256


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_q4: Path):
    tmp = tmp_path_factory.mktemp("isolation")
    env = _env(PHI4MM_MEDIA_TEST_HOOK="media_faults:hook", PYTHONPATH=str(TESTS),
               **{PID_FILE_ENV: str(tmp / "fault.pid")})
    flags = ["--api-key", "k", "--parallel", "2", "--media-workers", "2",
             "--media-deadline-s", str(DEADLINE_S), "--media-worker-memory-mb", str(MEMORY_MB)]
    srv = _start(tmp, tiny_q4, flags, env, "k")
    srv.pid_file = tmp / "fault.pid"
    yield srv
    _stop(srv)


def _png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def _wav() -> bytes:
    t = np.arange(16000) / 16000
    out = io.BytesIO()
    sf.write(out, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="WAV")
    return out.getvalue()


def _image_body(data: bytes) -> dict:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]}]}


def _audio_body(data: bytes) -> dict:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}
    return {"model": "m", "max_tokens": 3, "messages": [{"role": "user", "content": [
        part, {"type": "text", "text": "Transcribe the audio clip into text."}]}]}


def _error(reply: httpx.Response, code: str) -> str:
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error", error
    return error["message"]


def _both_succeed(server: Server) -> None:
    assert server.post(_image_body(_png(3))).status_code == 200
    assert server.post(_audio_body(_wav())).status_code == 200


def _stream_in_background(server: Server) -> tuple[threading.Thread, dict]:
    """A long text stream: its frames and how it ended."""
    result: dict = {"frames": 0, "finish": None}

    def run():
        body = {"model": "m", "stream": True, "max_tokens": 150, "temperature": 0,
                "messages": [{"role": "user", "content": LONG_PROMPT}]}
        with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, headers=server.headers(),
                          timeout=120) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: {"):
                    result["frames"] += 1
                    result["finish"] = json.loads(line[6:])["choices"][0].get("finish_reason") or result["finish"]

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_decoder_killed_mid_decode_fails_only_its_request(server: Server):
    server.pid_file.unlink(missing_ok=True)
    stream, streamed = _stream_in_background(server)
    replies: dict = {}
    image = threading.Thread(target=lambda: replies.setdefault("image", server.post(_image_body(fault("sleep:20")))))
    image.start()
    _wait_for(lambda: server.pid_file.exists() and server.pid_file.read_text())
    os.kill(int(server.pid_file.read_text()), signal.SIGKILL)
    image.join(30)
    message = _error(replies["image"], "invalid_image")
    assert "the image decoder was killed (SIGKILL" in message, message
    stream.join(120)
    assert streamed["finish"] in ("stop", "length") and streamed["frames"] > 10, streamed
    _both_succeed(server)
    _wait_for(lambda: server.health()["media_decoders"]["alive"] == 2)
    assert server.health()["media_decoders"]["replaced"] >= 1


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_a_decode_past_its_deadline_is_stopped_at_the_deadline(server: Server, kind: str):
    body = _image_body(fault("hang")) if kind == "image" else _audio_body(fault("hang"))
    started = time.monotonic()
    reply = server.post(body)
    took = time.monotonic() - started
    message = _error(reply, f"invalid_{kind}")
    assert f"the {kind} decoder ran past its {DEADLINE_S:g} s deadline and was stopped" in message, message
    assert DEADLINE_S <= took < DEADLINE_S + 3, took
    _both_succeed(server)


def test_a_decode_past_the_memory_limit_fails_cleanly_and_the_server_keeps_its_memory(server: Server):
    _both_succeed(server)  # warm: every code path of a media request has run once
    before_kb = server.rss_kb()
    for kind in ("image", "audio"):
        body = _image_body(fault("oom")) if kind == "image" else _audio_body(fault("oom"))
        message = _error(server.post(body), f"invalid_{kind}")
        assert f"the {kind} decoder ran out of memory (limit {MEMORY_MB} MiB)" in message, message
    _both_succeed(server)
    grown_kb = server.rss_kb() - before_kb
    assert grown_kb < 8 << 10, f"the server grew by {grown_kb} KiB"


def test_a_decoder_crash_is_a_400_and_health_reports_the_decoders(server: Server):
    message = _error(server.post(_image_body(fault("crash"))), "invalid_image")
    assert "the image decoder crashed (SIGSEGV)" in message, message
    _both_succeed(server)
    health = server.health()["media_decoders"]
    assert health["workers"] == 2 and health["replaced"] >= 1
