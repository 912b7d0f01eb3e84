"""POST /v1/audio/transcriptions and /v1/audio/translations: OpenAI's multipart forms -> one job
on the engine thread running phi4mm.transcription. The upload is decoded in a thread pool before
the job queues; errors are raised as typed exceptions and answered in server/errors.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import PurePath

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from phi4mm import media
from phi4mm.errors import InputError
from phi4mm.params import make_params
from phi4mm.server import sse
from phi4mm.server.errors import BodyTooLarge, error_body, is_fault
from phi4mm.server.guards import authorize
from phi4mm.server.routes import _service, until_disconnect
from phi4mm.server.service import Service
from phi4mm.server.worker import Job
from phi4mm.transcribe import FORMATS, Delta, Transcript, Window, instruction, render

MAX_FIELDS = 32
MAX_FIELD_BYTES = 1 << 20       # any one text field
STREAMED_FORMATS = ("json", "text")
log = logging.getLogger("phi4mm.server")


@dataclass(frozen=True)
class AudioRequest:
    waveform: media.Waveform
    response_format: str = "json"
    stream: bool = False
    options: dict = field(default_factory=dict)   # Phi4MM.transcribe_stream keywords


async def transcriptions(request: Request) -> Response:
    return await _answer(request, translate=False)


async def translations(request: Request) -> Response:
    return await _answer(request, translate=True)


async def _answer(request: Request, translate: bool) -> Response:
    service = _service(request)
    authorize(request, service.settings.api_key)
    audio = await read_audio_request(request, service, translate)
    job = _submit(service, audio)
    if audio.stream:
        return await _stream(request, service, job)
    try:
        transcript = await until_disconnect(request, _final(job))
    finally:
        service.worker.withdraw(job)
    body = render(transcript, audio.response_format)
    return JSONResponse(body) if isinstance(body, dict) else PlainTextResponse(body)


async def read_audio_request(request: Request, service: Service, translate: bool) -> AudioRequest:
    """Parse and check the form, then decode the upload in a thread pool (never on the engine)."""
    form = await read_form(request, service.settings.max_body_bytes)
    try:
        upload = _upload(form)
        fields = parse_audio_form(form, translate)
        data = await upload.read()
    finally:
        await form.close()
    name = upload.filename or "upload"
    waveform = await run_in_threadpool(service.media.decode_audio, data, service.settings.media_limits,
                                       f"the uploaded file {name!r}", PurePath(name).suffix[1:].lower() or None)
    return AudioRequest(waveform, **fields)


async def read_form(request: Request, max_bytes: int) -> FormData:
    """The multipart body, at most `max_bytes` (declared or streamed), one file at most."""
    kind = request.headers.get("content-type", "")
    if not kind.lower().startswith("multipart/form-data"):
        raise InputError(f"the request's Content-Type is {kind or 'missing'!r}; expected multipart/form-data "
                         "with the audio in a 'file' part")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    parser = MultiPartParser(request.headers, _limited(request, max_bytes), max_files=1,
                             max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise InputError(f"the multipart form could not be read: {exc.message}") from None


async def _limited(request: Request, max_bytes: int) -> AsyncGenerator[bytes, None]:
    n_bytes = 0
    async for chunk in request.stream():
        n_bytes += len(chunk)
        if n_bytes > max_bytes:
            raise _too_large(n_bytes, max_bytes)
        yield chunk


def _too_large(n_bytes: int, max_bytes: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body is {n_bytes} bytes or more, over the server's limit "
                        f"of {max_bytes} bytes (--max-body-mb {max_bytes / (1 << 20):g})")


def _upload(form: FormData) -> UploadFile:
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        got = "a text field" if "file" in form else "nothing"
        raise InputError(f"'file' is required: send the audio as a multipart file part named 'file' "
                         f"(got {got})", param="file")
    return upload


def parse_audio_form(form: FormData, translate: bool) -> dict:
    """The form's fields -> AudioRequest keywords (all but the waveform), or InputError."""
    fmt = _text(form, "response_format") or "json"
    if fmt not in FORMATS:
        raise InputError(f"response_format is {fmt!r}, expected one of {', '.join(FORMATS)}",
                         param="response_format")
    stream = _flag(form, "stream")
    if stream and fmt not in STREAMED_FORMATS:
        raise InputError(f"stream=true needs response_format json or text, got {fmt!r}", param="stream")
    _check_granularities(form.getlist("timestamp_granularities[]"))
    options = {"translate_to": (_text(form, "target_language") or "English") if translate else None,
               "language": _text(form, "language"), "prompt": _text(form, "prompt"),
               "temperature": _number(form, "temperature", float, 0.0)}
    max_tokens = _number(form, "max_tokens", int, None)
    if max_tokens is not None:
        options["max_tokens_per_window"] = max_tokens
    make_params(max_tokens=max_tokens, temperature=options["temperature"])
    instruction(options["translate_to"], options["language"])  # language names, before queueing
    return {"response_format": fmt, "stream": stream, "options": options}


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{name} must be a text field, got a file", param=name)
    return value or None


def _flag(form: FormData, name: str) -> bool:
    value = (_text(form, name) or "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InputError(f"{name} is {value!r}, expected 'true' or 'false'", param=name)
    return value in ("true", "1")


def _number(form: FormData, name: str, kind: type, default):
    value = _text(form, name)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        raise InputError(f"{name} is {value!r:.60}, expected a{'n integer' if kind is int else ' number'}",
                         param=name) from None


def _check_granularities(values: list) -> None:
    for value in values:
        if value != "segment":
            raise InputError(f"timestamp_granularities[] has {value!r}; only 'segment' timestamps are "
                             "available (one segment per window of at most 30 s)",
                             param="timestamp_granularities[]")


def _submit(service: Service, audio: AudioRequest) -> Job:
    """Queue the transcription (OverloadedError when the queue is full)."""
    def start():
        return service.engine.transcribe_stream(audio.waveform, media_limits=service.settings.media_limits,
                                                should_stop=lambda: job.cancelled, **audio.options)

    job = Job(start, asyncio.get_running_loop(), audio.waveform.samples.nbytes)
    service.worker.submit(job)
    return job


async def _final(job: Job) -> Transcript:
    while (event := await job.next()) is not None:
        if isinstance(event, Transcript):
            return event
    raise RuntimeError("the transcription ended without a transcript")


async def _output(job: Job):
    """The next event that is sent to the client (windows are progress only)."""
    while isinstance(event := await job.next(), Window):
        pass
    return event


async def _stream(request: Request, service: Service, job: Job) -> Response:
    """Wait for the first output (so input errors still get their status), then stream the rest."""
    release = partial(service.worker.withdraw, job)
    try:
        first = await until_disconnect(request, _output(job))
    except BaseException:
        release()
        raise
    return sse.EventStream(_events(job, first), on_close=release)


async def _events(job: Job, event) -> AsyncIterator[bytes]:
    """OpenAI's transcript events: `transcript.text.delta`, then `transcript.text.done` with the
    text and usage; a failure after the headers went out is sent as an OpenAI error event."""
    try:
        while event is not None:
            if isinstance(event, Delta):
                yield sse.encode({"type": "transcript.text.delta", "delta": event.text})
            elif isinstance(event, Transcript):
                yield sse.encode({"type": "transcript.text.done", "text": event.text, "usage": event.usage})
            event = await _output(job)
    except Exception as exc:
        if is_fault(exc):
            log.error("transcription failed after the response started", exc_info=exc)
        yield sse.encode(error_body(exc))


AUDIO_ROUTES = [
    Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
    Route("/v1/audio/translations", translations, methods=["POST"]),
]
