"""The chat page at `/` (off with `--no-ui`): the page with its Content-Security-Policy, its static
files from `static/`, the limits it checks uploads against, and Markdown rendering of answers."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from markdown_it import MarkdownIt
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from phi4mm.errors import InputError
from phi4mm.server.guards import authorize, read_json
from phi4mm.server.settings import ServerSettings

STATIC_DIR = Path(__file__).parent / "static"
MAX_MARKDOWN_TEXTS = 200  # a whole stored conversation is rendered in one request after a reload

# No inline script or style anywhere; pictures and recordings the user attaches are blob:/data: URLs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "media-src 'self' blob: data:; connect-src 'self'; font-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def ui_routes(settings: ServerSettings) -> list[BaseRoute]:
    """The page, its files under /ui/, GET /v1/ui/config and POST /v1/ui/markdown."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    markdown = _markdown()
    return [
        Route("/", partial(_page, page), methods=["GET"]),
        Route("/v1/ui/config", partial(_config, settings), methods=["GET"]),
        Route("/v1/ui/markdown", partial(_render, settings, markdown), methods=["POST"]),
        Mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui"),
    ]


async def _page(page: str, request: Request) -> HTMLResponse:
    return HTMLResponse(page, headers=PAGE_HEADERS)


def ui_config(settings: ServerSettings) -> dict:
    """What the page must know before it uploads anything; no secrets (only whether a key is set)."""
    limits = settings.media_limits
    return {"model": settings.model, "api_key_required": settings.api_key is not None,
            "max_body_bytes": settings.max_body_bytes, "max_image_bytes": limits.max_bytes,
            "max_audio_bytes": limits.max_audio_bytes, "max_audio_seconds": limits.max_audio_s}


async def _config(settings: ServerSettings, request: Request) -> JSONResponse:
    return JSONResponse(ui_config(settings))


def _markdown() -> MarkdownIt:
    """CommonMark without raw HTML (tags in the text come out escaped) or images (the CSP would
    block remote ones anyway); links open in a new tab without a referrer."""
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"]).disable("image")
    md.add_render_rule("link_open", _link_open)
    return md


def _link_open(renderer, tokens, idx, options, env) -> str:
    tokens[idx].attrSet("target", "_blank")
    tokens[idx].attrSet("rel", "noopener noreferrer")
    return renderer.renderToken(tokens, idx, options, env)


async def _render(settings: ServerSettings, markdown: MarkdownIt, request: Request) -> JSONResponse:
    """{"texts": [markdown, ...]} -> {"html": [html, ...]}, same key and body limit as the API."""
    authorize(request, settings.api_key)
    body = await read_json(request, settings.max_body_bytes)
    texts = body.get("texts") if isinstance(body, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InputError("expected a JSON object {\"texts\": [string, ...]}", param="texts")
    if len(texts) > MAX_MARKDOWN_TEXTS:
        raise InputError(f"{len(texts)} texts, expected at most {MAX_MARKDOWN_TEXTS}", param="texts")
    return JSONResponse({"html": [markdown.render(text) for text in texts]})
