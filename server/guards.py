"""What every request passes before it is parsed: the API key and the body size limit."""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request

from phi4mm.errors import InputError
from phi4mm.server.errors import BodyTooLarge, Unauthorized


def authorize(request: Request, api_key: str | None) -> None:
    """Constant-time check of `Authorization: Bearer KEY` when the server has a key."""
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer KEY' with the "
                           "key the server was started with (--api-key or $PHI4MM_API_KEY)")


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body decoded as JSON; BodyTooLarge past `max_bytes` (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise _too_large(len(body), max_bytes)
    return _decode(bytes(body))


def _too_large(n_bytes: int, max_bytes: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body is {n_bytes} bytes or more, over the server's limit "
                        f"of {max_bytes} bytes (--max-body-mb {max_bytes / (1 << 20):g})")


def _decode(body: bytes) -> Any:
    if not body.strip():
        raise InputError("the request body is empty; expected a JSON object")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: hostile nesting depth
        raise InputError(f"the request body is not valid JSON: {str(exc)[:200]}") from None
