"""The only place HTTP status codes live: the server's own exception types and one table mapping
every exception to a status and an OpenAI error body {"error": {message, type, param, code}}."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from phi4mm.errors import AudioError, ContextOverflowError, InputError, MediaError, OverloadedError, Phi4MMError


class Unauthorized(Phi4MMError):
    """The bearer token is missing or wrong."""


class BodyTooLarge(Phi4MMError):
    """The request body is over --max-body-mb."""


class Unavailable(Phi4MMError):
    """The server is starting up or shutting down."""


class ClientGone(Phi4MMError):
    """The client disconnected before its response was ready; nobody reads this answer."""


@dataclass(frozen=True)
class HttpError:
    status: int
    type: str
    code: str | None = None


_TABLE: tuple[tuple[type[BaseException], HttpError], ...] = (  # most specific first
    (ContextOverflowError, HttpError(400, "invalid_request_error", "context_length_exceeded")),
    (AudioError, HttpError(400, "invalid_request_error", "invalid_audio")),
    (MediaError, HttpError(400, "invalid_request_error", "invalid_image")),
    (InputError, HttpError(400, "invalid_request_error")),
    (Unauthorized, HttpError(401, "authentication_error", "invalid_api_key")),
    (BodyTooLarge, HttpError(413, "invalid_request_error", "request_too_large")),
    (OverloadedError, HttpError(429, "rate_limit_error", "queue_full")),
    (Unavailable, HttpError(503, "server_error", "unavailable")),
    (ClientGone, HttpError(499, "invalid_request_error", "client_closed_request")),
)
_FAULT = HttpError(500, "server_error", "internal_error")
_ROUTING_CODES = {404: "not_found", 405: "method_not_allowed"}


def classify(exc: BaseException) -> HttpError:
    return next((http for kind, http in _TABLE if isinstance(exc, kind)), _FAULT)


def is_fault(exc: BaseException) -> bool:
    """True for real faults (500): the ones worth a traceback in the log."""
    return classify(exc) is _FAULT


def error_body(exc: BaseException) -> dict:
    """The OpenAI error object for `exc`; real faults get a generic message (details are logged)."""
    http = classify(exc)
    message = str(exc) if http is not _FAULT else (
        f"the server failed on this request ({type(exc).__name__}); see the server log")
    return _body(message, http.type, getattr(exc, "param", None), http.code)


def _body(message: str, kind: str, param: str | None, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


RETRY_AFTER_S = 1  # told to clients refused because the queue is full


async def on_exception(request: Request, exc: Exception) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if isinstance(exc, OverloadedError) else None
    return JSONResponse(error_body(exc), status_code=classify(exc).status, headers=headers)


async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404 / 405 (unknown path, wrong method) in the same body shape."""
    assert isinstance(exc, HTTPException)
    message = f"{exc.detail}: {request.method} {request.url.path}"
    body = _body(message, "invalid_request_error", None, _ROUTING_CODES.get(exc.status_code))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


# Phi4MMError is answered by starlette's ExceptionMiddleware; any other Exception by its
# ServerErrorMiddleware, which sends our 500 body and then re-raises so uvicorn logs the traceback.
EXCEPTION_HANDLERS = {HTTPException: on_http_exception, Phi4MMError: on_exception,
                      Exception: on_exception}
