"""GET /openapi.json: an OpenAPI 3.1 document of every endpoint and body this server accepts and
every answer it gives. What OpenAI's API does not have is marked `x-phi4mm-extension: true`.
Checked by openapi-spec-validator and, against a live server, by schemathesis (tests/test_openapi.py)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from phi4mm import __version__, keys
from phi4mm.server.settings import ServerSettings
from phi4mm.transcribe import FORMATS

EXT = {"x-phi4mm-extension": True}
JSON = "application/json"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(properties: dict, required: tuple[str, ...] = (), **more: Any) -> dict:
    return {"type": "object", "properties": properties, **({"required": list(required)} if required else {}), **more}


def _content(schema: dict, media_type: str = JSON) -> dict:
    return {media_type: {"schema": schema}}


def _error(description: str, headers: dict | None = None) -> dict:
    return {"description": description, "content": _content(_ref("Error")), **({"headers": headers} if headers else {})}


ERRORS = {
    "400": _error("invalid request: a malformed body, a field of the wrong type or range, media that could "
                  "not be fetched or decoded (code invalid_image / invalid_audio), a prompt over the context"),
    "401": _error("missing or wrong API key (code invalid_api_key)"),
    "413": _error("the body is over --max-body-mb (code request_too_large)"),
    "429": _error("the queue is full (code queue_full)",
                  {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}),
    "503": _error("the model is still loading (code unavailable)"),
}


def _schemas() -> dict:
    text_part = _obj({"type": {"const": "text"}, "text": {"type": "string"}}, ("type", "text"))
    image_part = _obj({"type": {"const": "image_url"}, "image_url": {"anyOf": [
        _obj({"url": {"type": "string", "description": "http(s) URL, data URL or base64"},
              "detail": {"enum": ["auto", "low", "high"]}}, ("url",)),
        {"type": "string", **EXT}]}}, ("type", "image_url"))
    audio_part = _obj({"type": {"const": "input_audio"}, "input_audio": _obj(
        {"data": {"type": "string", "description": "base64"}, "format": {"type": "string"}}, ("data",))},
        ("type", "input_audio"))
    audio_url_part = _obj({"type": {"const": "audio_url"}, "audio_url": {"anyOf": [
        _obj({"url": {"type": "string"}}, ("url",)), {"type": "string"}]}}, ("type", "audio_url"), **EXT)
    usage = _obj({"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                  "total_tokens": {"type": "integer"},
                  "prompt_tokens_details": _obj({"cached_tokens": {"type": "integer"},
                                                 "image_tokens": {"type": "integer", **EXT},
                                                 "audio_tokens": {"type": "integer"}})},
                 ("prompt_tokens", "completion_tokens", "total_tokens"))
    return {
        "Error": _obj({"error": _obj({"message": {"type": "string"}, "type": {"type": "string"},
                                      "param": _nullable({"type": "string"}), "code": _nullable({"type": "string"})},
                                     ("message", "type", "param", "code"))}, ("error",)),
        "ContentPart": {"oneOf": [text_part, image_part, audio_part, audio_url_part]},
        "Message": _obj({"role": {"enum": ["system", "user", "assistant", "tool"]},
                         "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _ref("ContentPart")},
                                               {"type": "null"}]},
                         "name": {"type": "string"}}, ("role", "content")),
        "ChatCompletionRequest": _chat_request(),
        "Usage": usage,
        "ChatCompletion": _obj({
            "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {"type": "array", "items": _obj({
                "index": {"type": "integer"}, "message": _obj({"role": {"const": "assistant"},
                                                                "content": {"type": "string"}}, ("role", "content")),
                "finish_reason": _nullable({"enum": ["stop", "length"]}), "logprobs": {"type": "null"}},
                ("index", "message", "finish_reason"))},
            "usage": _ref("Usage")}, ("id", "object", "created", "model", "choices", "usage")),
        "Transcription": _obj({"text": {"type": "string"}, "usage": {"type": "object"}}, ("text",)),
        "VerboseTranscription": _obj({"task": {"type": "string"}, "language": {"type": "string"},
                                      "duration": {"type": "number"}, "text": {"type": "string"},
                                      "segments": {"type": "array", "items": {"type": "object"}}},
                                     ("task", "language", "duration", "text", "segments")),
    }


def _chat_request() -> dict:
    number = {"type": "number"}
    optional_int = _nullable({"type": "integer"})
    return _obj({
        "model": {"type": "string", "description": "ignored: the server serves one model"},
        "messages": {"type": "array", "items": _ref("Message"), "minItems": 1},
        "max_tokens": optional_int, "max_completion_tokens": optional_int,
        "temperature": _nullable({**number, "minimum": 0, "maximum": 2}),
        "top_p": _nullable({**number, "minimum": 0, "maximum": 1}),
        "top_k": _nullable({"type": "integer", "minimum": 0, **EXT}),
        "min_p": _nullable({**number, "minimum": 0, "maximum": 1, **EXT}),
        "frequency_penalty": _nullable({**number, "minimum": -2, "maximum": 2}),
        "presence_penalty": _nullable({**number, "minimum": -2, "maximum": 2}),
        "repeat_penalty": _nullable({**number, **EXT}),
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
        "seed": optional_int, "stream": _nullable({"type": "boolean"}),
        "stream_options": _nullable(_obj({"include_usage": {"type": "boolean"}})),
        "n": _nullable({"const": 1}), "user": {"type": "string"},
        "response_format": _nullable(_obj({"type": {"enum": ["text", "json_object", "json_schema"]},
                                           "json_schema": {"type": "object"}})),
        "dynamic_hd": _nullable({"type": "integer", "minimum": 1, **EXT,
                                 "description": "most image crops for this request"}),
    }, ("messages",))


def _transcription_form(translate: bool) -> dict:
    fields = {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
              "prompt": {"type": "string"}, "response_format": {"enum": list(FORMATS)},
              "temperature": {"type": "number"}, "stream": {"type": "boolean"}}
    if translate:
        fields["target_language"] = {"type": "string", **EXT, "description": "default English"}
    else:
        fields["language"] = {"type": "string"}
    return _obj(fields, ("file",))


def _operation(summary: str, responses: dict, body: dict | None = None, secured: bool = True, **more) -> dict:
    op = {"summary": summary, "responses": responses, **more}
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    if not secured:
        op["security"] = []
    return op


def _paths(settings: ServerSettings) -> dict:
    chat = {"200": {"description": "the completion, or its chunks as server-sent events (stream: true)",
                    "content": {**_content(_ref("ChatCompletion")),
                                **_content({"type": "string"}, "text/event-stream")}},
            **ERRORS}
    audio = {"200": {"description": "the transcript: json / verbose_json, or text / srt / vtt, or events",
                     "content": {**_content({"anyOf": [_ref("Transcription"), _ref("VerboseTranscription")]}),
                                 **_content({"type": "string"}, "text/plain"),
                                 **_content({"type": "string"}, "text/event-stream")}}, **ERRORS}
    paths = {
        "/v1/chat/completions": {"post": _operation("chat completion (text, images, audio)", chat,
                                                    _content(_ref("ChatCompletionRequest")))},
        "/v1/audio/transcriptions": {"post": _operation("transcribe audio of any length", audio,
                                                        _content(_transcription_form(False), "multipart/form-data"))},
        "/v1/audio/translations": {"post": _operation("translate speech (into English by default)", audio,
                                                      _content(_transcription_form(True), "multipart/form-data"))},
        "/v1/models": {"get": _operation("the served model", {"200": {"description": "one model", "content": _content(
            _obj({"object": {"const": "list"}, "data": {"type": "array", "items": {"type": "object"}}},
                 ("object", "data")))}, "401": ERRORS["401"], "503": ERRORS["503"]})},
        "/health": {"get": _operation("readiness: 200 once loaded, 503 while loading", {
            "200": {"description": "status, queue, and what sits on the GPU", "content": _content(_health())},
            "503": ERRORS["503"]}, secured=False, **EXT)},
        "/metrics": {"get": _operation("Prometheus metrics", {
            "200": {"description": "text exposition", "content": _content({"type": "string"}, "text/plain")},
            "503": ERRORS["503"]}, secured=False, **EXT)},
        "/openapi.json": {"get": _operation("this document", {
            "200": {"description": "OpenAPI 3.1", "content": _content({"type": "object"})}}, secured=False, **EXT)},
    }
    if settings.ui:
        paths |= _ui_paths()
    return paths


def _health() -> dict:
    integer, flag, text = {"type": "integer"}, {"type": "boolean"}, {"type": "string"}
    device = _obj({"name": text, "description": text, "backend": text, "memory_free_bytes": integer,
                   "memory_total_bytes": integer})
    return _obj({
        "status": text,
        "text_decoder": _obj({"layers_on_gpu": integer, "layers": integer,
                              "devices": {"type": "array", "items": text}, "kv_on_gpu": flag,
                              "lora": _obj({"loaded": {"type": "array", "items": text}, "on_gpu": flag})}),
        "gpu": _obj({"offload_supported": flag, "devices": {"type": "array", "items": device}}),
        "encoders": _obj({"device": {"enum": list(keys.ENCODER_DEVICES)},
                          "weight_bytes": _obj({"vision": integer, "audio": integer})}),
    }, ("status",))


def _ui_paths() -> dict:
    markdown = _obj({"texts": {"type": "array", "items": {"type": "string"}, "maxItems": 64}}, ("texts",))
    return {
        "/": {"get": _operation("the chat page", {"200": {"description": "HTML", "content": _content(
            {"type": "string"}, "text/html")}}, secured=False, **EXT)},
        "/v1/ui/config": {"get": _operation("what the chat page must know before uploading", {
            "200": {"description": "limits", "content": _content({"type": "object"})}}, secured=False, **EXT)},
        "/v1/ui/markdown": {"post": _operation("render Markdown for the chat page", {
            "200": {"description": "HTML per text", "content": _content(
                _obj({"html": {"type": "array", "items": {"type": "string"}}}, ("html",)))},
            "400": ERRORS["400"], "401": ERRORS["401"], "413": ERRORS["413"]}, _content(markdown), **EXT)},
    }


def openapi_document(settings: ServerSettings) -> dict:
    """The document for a server started with `settings` (the chat page's paths only with the UI)."""
    document = {
        "openapi": "3.1.0",
        "info": {"title": "phi4mm", "version": __version__,
                 "description": "OpenAI-compatible API for Phi-4-multimodal-instruct on llama.cpp. "
                                "Fields and paths marked x-phi4mm-extension are not in OpenAI's API."},
        "paths": _paths(settings),
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
    if settings.api_key is not None:
        document["security"] = [{"bearer": []}]
    return document


def openapi_route(settings: ServerSettings) -> Route:
    """GET /openapi.json, the document built once."""
    document = openapi_document(settings)

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(document)

    return Route("/openapi.json", openapi, methods=["GET"])
