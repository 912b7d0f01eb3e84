"""The audio endpoints: POST /v1/audio/transcriptions and /v1/audio/translations, and audio in chat.

First in-process with starlette's TestClient (the route and form handling on the real driver, a
fake chat model), then one real `phi4mm serve` process on the tiny checkpoint driven by the
official `openai` client. The tiny model's words are random: timing, structure and formats are
checked, never words. Audio is synthetic: loud noise with silences where the cuts must fall."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import socket
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile
from starlette.testclient import TestClient
from test_server import Server, _env, _start, _stop, _wait_health

from phi4mm.audio.features import n_audio_tokens, n_frames
from phi4mm.media import MediaLimits
from phi4mm.server.app import create_app
from phi4mm.server.settings import ServerSettings
from phi4mm.transcribe import Segment, to_srt, to_vtt, transcribe_events

RATE = 16_000
KEY = "sesame"
LONG_S, LONG_CUTS_S = 65.0, ((26.0, 27.0), (53.0, 53.6))  # silences: the two cuts fall inside them
FEW_TOKENS = {"max_tokens": "6"}                           # extension field: tokens per window


def wav_bytes(seconds: float, silences=(), rate: int = RATE, seed: int = 0) -> bytes:
    samples = np.random.default_rng(seed).normal(0, 0.2, int(seconds * rate))
    for start, end in silences:
        samples[int(start * rate):int(end * rate)] = 0.0
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def srt_seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest.replace(",", "."))


def error_of(reply: httpx.Response, status: int, code: str | None = None) -> dict:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert code is None or body["error"]["code"] == code
    return body["error"]


# -- in-process: forms, fields and limits -------------------------------------------------------

class FakeEngine:
    """Phi4MM's transcribe_stream on the real driver; each window's chat answers 'said N'."""

    def __init__(self):
        self.calls: list[dict] = []

    def create_chat_completion(self, messages, stream=False, **options):
        self.calls.append({"messages": messages} | options)
        return iter([{"choices": [{"delta": {"content": f"said {len(self.calls)}"}}],
                      "usage": {"prompt_tokens": 9, "completion_tokens": 2}}])

    def tokenize(self, text):
        return list(range(len(text.split())))

    def transcribe_stream(self, audio, media_limits, **options):
        return transcribe_events(self, audio, media_limits, **options)

    def close(self):
        pass


@pytest.fixture()
def fake() -> FakeEngine:
    return FakeEngine()


@pytest.fixture()
def local(fake: FakeEngine):
    settings = ServerSettings(api_key=KEY, max_body_bytes=1 << 20, warmup=False,
                              media_limits=MediaLimits(max_audio_s=20.0))
    with TestClient(create_app(settings, load_engine=lambda s: fake), raise_server_exceptions=False) as client:
        yield client


def post_form(client, path: str = "/v1/audio/transcriptions", audio: bytes | None = None,
              **fields: str) -> httpx.Response:
    files = {"file": ("clip.wav", wav_bytes(2.0) if audio is None else audio, "audio/wav")}
    return client.post(path, files=files, data={"model": "m"} | fields,
                       headers={"Authorization": f"Bearer {KEY}"})


def test_form_fields_reach_the_driver(local: TestClient, fake: FakeEngine):
    reply = post_form(local, language="de", prompt="Names: Ada.", temperature="0.5", max_tokens="7")
    assert reply.status_code == 200, reply.text
    assert reply.json()["text"] == "said 1"
    call = fake.calls[-1]
    assert call["messages"][0] == {"role": "system", "content": "Names: Ada."}
    assert call["messages"][1]["content"][1]["text"] == ("Transcribe the audio clip into text. "
                                                         "The audio is in German.")
    assert call["max_tokens"] == 7 and call["temperature"] == 0.5
    reply = post_form(local, "/v1/audio/translations", target_language="fr", response_format="verbose_json")
    assert reply.json()["task"] == "translate" and reply.json()["language"] == "french"
    assert fake.calls[-1]["messages"][0]["content"][1]["text"] == "Translate the audio to French."
    reply = post_form(local, "/v1/audio/translations")
    assert fake.calls[-1]["messages"][0]["content"][1]["text"] == "Translate the audio to English."


@pytest.mark.parametrize("fields, param", [
    ({"response_format": "xml"}, "response_format"),
    ({"response_format": "srt", "stream": "true"}, "stream"),
    ({"stream": "maybe"}, "stream"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": "3"}, "temperature"),
    ({"max_tokens": "0"}, "max_tokens"),
    ({"language": "xx"}, "language"),
    ({"timestamp_granularities[]": "word"}, "timestamp_granularities[]"),
])
def test_bad_fields_are_400_naming_the_field(local: TestClient, fake: FakeEngine, fields: dict, param: str):
    error = error_of(post_form(local, **fields), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert fake.calls == []  # refused before the engine


def test_refused_uploads(local: TestClient, fake: FakeEngine):
    key = {"Authorization": f"Bearer {KEY}"}
    no_file = local.post("/v1/audio/transcriptions", files={"model": (None, "m")}, headers=key)
    assert error_of(no_file, 400)["param"] == "file"
    as_text = local.post("/v1/audio/transcriptions", files={"file": (None, "not a file")}, headers=key)
    assert error_of(as_text, 400)["param"] == "file"
    assert "multipart/form-data" in error_of(local.post("/v1/audio/transcriptions", json={"file": "x"},
                                                        headers=key), 400)["message"]
    two = local.post("/v1/audio/transcriptions", headers=key,
                     files=[("file", ("a.wav", wav_bytes(1.0))), ("file", ("b.wav", wav_bytes(1.0)))])
    error_of(two, 400)
    too_long = error_of(post_form(local, audio=wav_bytes(25.0, rate=8000)), 400, "invalid_audio")
    assert "max_audio_s" in too_long["message"]
    error_of(post_form(local, audio=wav_bytes(40.0)), 413, "request_too_large")
    error_of(local.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"x")}), 401, "invalid_api_key")
    assert fake.calls == []
    assert post_form(local, response_format="text").text == "said 1"


# -- a real server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tiny_q4: Path, tmp_path_factory) -> Server:
    running = _start(tmp_path_factory.mktemp("audio-server"), tiny_q4, ["--api-key", KEY, "--max-body-mb", "4"],
                     _env(), KEY)
    yield running
    _stop(running)


@pytest.fixture(scope="module")
def short_wav() -> bytes:
    return wav_bytes(3.0)


@pytest.fixture(scope="module")
def long_wav() -> bytes:
    return wav_bytes(LONG_S, LONG_CUTS_S, seed=1)


def transcribe(server: Server, audio: bytes, **options):
    return server.client().audio.transcriptions.create(model="phi4mm", file=("clip.wav", audio),
                                                       extra_body=FEW_TOKENS, **options)


def test_json_and_text(server: Server, short_wav: bytes):
    result = transcribe(server, short_wav)
    assert isinstance(result.text, str) and result.text == result.text.strip()
    assert result.usage.type == "tokens" and 1 <= result.usage.output_tokens <= 6  # max_tokens reached the form
    assert result.usage.input_token_details.audio_tokens == n_audio_tokens(n_frames(3 * RATE, RATE))
    assert transcribe(server, short_wav, response_format="text").strip() == result.text  # greedy


def test_srt_vtt_and_verbose_json(server: Server, short_wav: bytes):
    text = transcribe(server, short_wav).text
    whole = [Segment(0, 0.0, 3.0, text)]
    srt = transcribe(server, short_wav, response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:03,000\n") and srt == to_srt(whole)
    vtt = transcribe(server, short_wav, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:03.000\n") and vtt == to_vtt(whole)
    verbose = transcribe(server, short_wav, response_format="verbose_json")
    assert (verbose.task, verbose.duration, verbose.language, verbose.text) == ("transcribe", 3.0, "unknown", text)
    (segment,) = verbose.segments
    assert (segment.id, segment.start, segment.end, segment.text) == (0, 0.0, 3.0, text)
    hinted = transcribe(server, short_wav, response_format="verbose_json", language="en")
    assert hinted.language == "english" and hinted.text == hinted.segments[0].text


def test_long_clip_is_cut_in_its_silences(server: Server, long_wav: bytes):
    verbose = transcribe(server, long_wav, response_format="verbose_json")
    assert verbose.duration == LONG_S and len(verbose.segments) == 3
    starts = [s.start for s in verbose.segments]
    ends = [s.end for s in verbose.segments]
    assert starts[0] == 0.0 and ends[-1] == LONG_S and starts[1:] == ends[:-1]
    assert all(0 < end - start <= 30.0 for start, end in zip(starts, ends, strict=True))
    assert all(lo <= cut <= hi for cut, (lo, hi) in zip(ends, LONG_CUTS_S, strict=False))
    srt = transcribe(server, long_wav, response_format="srt")
    stamps = re.findall(r"^(\d+)\n(\S+) --> (\S+)$", srt, re.M)
    assert [(int(n), srt_seconds(a), srt_seconds(b)) for n, a, b in stamps] == [
        (i, start, end) for i, (start, end) in enumerate(zip(starts, ends, strict=True), 1)]
    assert srt == to_srt([Segment(s.id, s.start, s.end, s.text) for s in verbose.segments])


def test_translation(server: Server, short_wav: bytes):
    client = server.client()
    result = client.audio.translations.create(model="phi4mm", file=("clip.wav", short_wav),
                                              response_format="verbose_json", extra_body=FEW_TOKENS)
    assert result.task == "translate" and result.language == "english" and result.duration == 3.0
    french = client.audio.translations.create(model="phi4mm", file=("clip.wav", short_wav),
                                              response_format="verbose_json",
                                              extra_body=FEW_TOKENS | {"target_language": "fr"})
    assert french.language == "french"


def test_streaming_deltas_add_up_to_the_done_text(server: Server, long_wav: bytes):
    events = list(transcribe(server, long_wav, stream=True))
    *deltas, done = events
    assert done.type == "transcript.text.done" and done.text
    assert all(e.type == "transcript.text.delta" for e in deltas) and len(deltas) >= 3
    assert "".join(e.delta for e in deltas) == done.text
    assert done.usage.input_token_details.audio_tokens > 0


def test_chat_with_input_audio(server: Server, short_wav: bytes):
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(short_wav).decode(), "format": "wav"}}
    ask = {"type": "text", "text": "Transcribe the audio clip into text."}
    completion = server.client().chat.completions.create(
        model="phi4mm", max_tokens=5, temperature=0, messages=[{"role": "user", "content": [part, ask]}])
    assert completion.choices[0].message.content is not None
    details = completion.usage.prompt_tokens_details
    assert details.audio_tokens == n_audio_tokens(n_frames(3 * RATE, RATE))


def test_errors_keep_openai_shape_and_the_server_serves(server: Server, short_wav: bytes):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="m", file=("notes.txt", b"these are not audio samples"))
    assert set(caught.value.body) == {"message", "type", "param", "code"}
    assert caught.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").audio.transcriptions.create(model="m", file=("a.wav", short_wav))
    url, key = f"{server.base}/v1/audio/transcriptions", server.headers()
    assert error_of(httpx.post(url, files={"model": (None, "m")}, headers=key, timeout=30), 400)["param"] == "file"
    big = wav_bytes(140.0)  # 4.5 MB, over --max-body-mb 4
    error_of(httpx.post(url, files={"file": ("big.wav", big)}, headers=key, timeout=30), 413, "request_too_large")
    upload = httpx.Request("POST", url, files={"file": ("big.wav", big)})
    body = upload.read()
    chunked = httpx.post(url, headers=key | {"Content-Type": upload.headers["content-type"]}, timeout=30,
                         content=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]))  # no length
    error_of(chunked, 413, "request_too_large")
    assert transcribe(server, short_wav, response_format="text").strip()


def test_content_types(server: Server, short_wav: bytes):
    url = f"{server.base}/v1/audio/transcriptions"
    for fmt, kind in (("json", "application/json"), ("verbose_json", "application/json"),
                      ("text", "text/plain"), ("srt", "text/plain"), ("vtt", "text/plain")):
        reply = httpx.post(url, headers=server.headers(), timeout=60, files={"file": ("a.wav", short_wav)},
                           data={"response_format": fmt, **FEW_TOKENS})
        assert reply.status_code == 200 and reply.headers["content-type"].startswith(kind), reply.text
        if fmt == "json":
            assert set(json.loads(reply.text)) == {"text", "usage"}


def test_disconnect_cancels_the_transcription(server: Server, long_wav: bytes):
    before = _wait_health(server, in_flight=0, queued=0)["cancelled"]
    request = httpx.Request("POST", "/v1/audio/transcriptions", headers=server.headers(),
                            files={"file": ("long.wav", long_wav)},
                            data={"stream": "true", "max_tokens": "100000"})
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode()
                 + request.read())
    data = b""
    while b"transcript.text.delta" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert b"200 OK" in data and server.health()["in_flight"] == 1
    sock.close()
    _wait_health(server, timeout_s=10, in_flight=0, queued=0, cancelled=before + 1)
    assert transcribe(server, wav_bytes(1.5), response_format="json").text is not None


def test_no_fault_was_logged(server: Server):
    log = server.log.read_text()
    assert "Traceback" not in log, log[log.index("Traceback"):][:4000]


def test_audio_limit_flags_reach_the_limits(fake: FakeEngine):
    """--max-audio-s / --max-audio-mb set the server's audio limits; a clip over them is 400
    invalid_audio naming the limit, before the engine."""
    from phi4mm.cli import build_parser
    from phi4mm.server.settings import settings_from_args

    args = build_parser().parse_args(["serve", "--max-audio-s", "1.5", "--max-audio-mb", "2"])
    settings = settings_from_args(args)
    assert (settings.media_limits.max_audio_s, settings.media_limits.max_audio_bytes) == (1.5, 2 << 20)
    settings = dataclasses.replace(settings, api_key=KEY, warmup=False)
    with TestClient(create_app(settings, load_engine=lambda s: fake), raise_server_exceptions=False) as client:
        error = error_of(post_form(client, audio=wav_bytes(2.0)), 400, "invalid_audio")
        assert "max_audio_s=1.5" in error["message"]
        assert post_form(client, audio=wav_bytes(1.0)).status_code == 200
    assert len(fake.calls) == 1
