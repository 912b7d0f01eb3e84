"""The chat page's server side in-process (server/ui.py): the page and its headers, the static files
(and that the wheel ships them), GET /v1/ui/config, POST /v1/ui/markdown, and --no-ui. The page
itself, in a real browser against a real server, is in test_ui_browser.py."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from phi4mm.cli import build_parser
from phi4mm.server.app import create_app
from phi4mm.server.settings import ServerSettings, settings_from_args
from phi4mm.server.ui import STATIC_DIR

ROOT = Path(__file__).resolve().parents[1]


class SilentEngine:
    """Enough of Phi4MM for routes that never generate."""

    def create_chat_completion(self, messages, stream=False, **options):
        raise AssertionError("the UI routes must not reach the engine")

    def close(self) -> None:
        pass


def client(**settings) -> TestClient:
    app = create_app(ServerSettings(warmup=False, **settings), load_engine=lambda s: SilentEngine())
    return TestClient(app)


class Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def page_tags(html: str) -> list[tuple[str, dict]]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


def test_page_has_a_strict_csp_and_no_inline_code():
    with client() as c:
        page = c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = dict(part.strip().split(" ", 1) for part in page.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'self'" and csp["script-src"] == "'self'" and csp["style-src"] == "'self'"
    assert csp["img-src"] == csp["media-src"] == "'self' blob: data:"
    assert csp["object-src"] == "'none'" and csp["frame-ancestors"] == "'none'"
    assert page.headers["x-content-type-options"] == "nosniff"
    tags = page_tags(page.text)
    assert not [t for t, _ in tags if t == "style"], "inline <style>"
    assert all(attrs.get("src") for t, attrs in tags if t == "script"), "inline <script>"
    inline = [(t, name) for t, attrs in tags for name in attrs if name == "style" or name.startswith("on")]
    assert not inline, f"inline style or event handler attributes: {inline}"


def test_every_asset_the_page_names_is_served():
    with client() as c:
        tags = page_tags(c.get("/").text)
        urls = {attrs.get("src") or attrs.get("href") for t, attrs in tags if t in ("script", "link")}
        modules = {f"/ui/{p.name}" for p in STATIC_DIR.glob("*.js")}
        for url in sorted(urls | modules):
            reply = c.get(url)
            assert reply.status_code == 200, url
            if url.endswith(".js"):
                assert "javascript" in reply.headers["content-type"], url  # module scripts need it
        imports = {m for p in STATIC_DIR.glob("*.js") for m in re.findall(r'from "\./([\w.]+)"', p.read_text())}
        assert {f"/ui/{m}" for m in imports} <= modules
        assert c.get("/ui/nothing.js").status_code == 404


def test_config_tells_the_limits_and_not_the_key():
    with client(api_key="hush-secret", max_body_bytes=12345, model="my/model") as c:
        reply = c.get("/v1/ui/config")  # no key needed: the page asks before it has one
    assert reply.status_code == 200
    assert reply.json() == {"model": "my/model", "api_key_required": True, "max_body_bytes": 12345,
                            "max_image_bytes": 20 << 20, "max_audio_bytes": 50 << 20,
                            "max_audio_seconds": 1800.0}
    assert "hush-secret" not in reply.text
    with client() as c:
        assert c.get("/v1/ui/config").json()["api_key_required"] is False


def test_markdown_escapes_html_and_renders_code():
    text = "<script>alert(1)</script> <img src=x onerror=alert(2)> **bold** [a](javascript:alert(3))\n\n" \
           "```python\nprint('<b>')\n```\n\n![pic](http://example.com/x.png) [ok](https://example.com)"
    with client() as c:
        reply = c.post("/v1/ui/markdown", json={"texts": [text, "plain"]})
    assert reply.status_code == 200, reply.text
    html, plain = reply.json()["html"]
    assert "<script" not in html and "<img" not in html and 'href="javascript' not in html
    assert "[a](javascript:alert(3))" in html  # left as text, not a link
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "<strong>bold</strong>" in html
    assert '<pre><code class="language-python">print(\'&lt;b&gt;\')' in html
    assert '<a href="https://example.com" target="_blank" rel="noopener noreferrer">ok</a>' in html
    assert plain == "<p>plain</p>\n"


@pytest.mark.parametrize("body, mentions", [
    ({"texts": "x"}, "texts"),
    ({"texts": [1]}, "texts"),
    ({"texts": ["x"] * 201}, "at most 200"),
    ([], "texts"),
])
def test_markdown_refuses_bad_bodies(body, mentions: str):
    with client() as c:
        reply = c.post("/v1/ui/markdown", json=body)
    assert reply.status_code == 400 and mentions in reply.json()["error"]["message"]


def test_markdown_needs_the_key_and_keeps_the_body_limit():
    with client(api_key="k", max_body_bytes=1000) as c:
        assert c.post("/v1/ui/markdown", json={"texts": ["x"]}).status_code == 401
        good = c.post("/v1/ui/markdown", json={"texts": ["x"]}, headers={"Authorization": "Bearer k"})
        assert good.status_code == 200
        huge = c.post("/v1/ui/markdown", json={"texts": ["x" * 2000]}, headers={"Authorization": "Bearer k"})
        assert huge.status_code == 413


def test_no_ui_flag_leaves_only_the_api():
    args = build_parser().parse_args(["serve", "--no-ui"])
    assert settings_from_args(args).ui is False
    assert settings_from_args(build_parser().parse_args(["serve"])).ui is True
    with client(ui=False) as c:
        for path in ("/", "/v1/ui/config", "/ui/app.js"):
            assert c.get(path).status_code == 404, path
        assert c.get("/health").status_code == 200


def test_the_wheel_ships_the_static_files(tmp_path: Path):
    """package-data: a built wheel holds every file of server/static/ under phi4mm/server/static/."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("phi4mm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"phi4mm/server/static/{p.name}" for p in STATIC_DIR.iterdir()}
    assert expected and expected <= names, expected - names
