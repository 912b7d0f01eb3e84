"""The chat page as a person meets it: headless Chromium (Debian's, driven by Playwright) against one
real `phi4mm serve` process on 127.0.0.1 (tiny checkpoint, --api-key, --max-body-mb 1). Set
PHI4MM_UI_SCREENSHOTS=DIR to keep the screenshots of a finished exchange (docs/ holds the README's)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
from test_server import LONG_PROMPT, Server, _env, _start, _stop

KEY = "ui-key"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
DESKTOP = {"width": 1280, "height": 820}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_q4: Path) -> Iterator[Server]:
    flags = ["--api-key", KEY, "--max-body-mb", "1", "--n-ctx", "8192"]
    server = _start(tmp_path_factory.mktemp("ui-server"), tiny_q4, flags, _env(), KEY)
    yield server
    _stop(server)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    yield browser
    browser.close()


@pytest.fixture()
def page(browser: Browser, server: Server) -> Iterator[Page]:
    """A fresh browser profile (empty localStorage) on the chat page, microphone allowed."""
    context = browser.new_context(viewport=DESKTOP, base_url=server.base)
    context.set_default_timeout(TIMEOUT_MS)
    context.grant_permissions(["microphone"], origin=server.base)
    page = context.new_page()
    page.goto("/")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    yield page
    context.close()


def configure(page: Page, key: str | None = KEY, **fields: str) -> None:
    """Fill the settings panel as a person would (labels, not ids), then close it."""
    page.get_by_role("button", name="Settings").click()
    if key is not None:
        page.get_by_label("API key").fill(key)
    labels = {"system": "System prompt", "temperature": "Temperature", "top_p": "Top p",
              "max_tokens": "Max tokens", "dynamic_hd": "Image crops (dynamic_hd)"}
    for name, value in fields.items():
        page.get_by_label(labels[name]).fill(value)
    page.get_by_role("button", name="Close settings").click()


def ask(page: Page, text: str) -> None:
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Message", exact=True).press("Enter")


def last_answer(page: Page):
    return page.locator(".msg.assistant").last


def wait_answered(page: Page) -> str:
    """Wait for the usage line of the last answer; return it."""
    usage = last_answer(page).locator(".usage")
    expect(usage).to_be_visible()
    return usage.inner_text()


def stored(page: Page) -> list[dict]:
    return page.evaluate("JSON.parse(localStorage.getItem('phi4mm.chat.v1'))")


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """Noise: a picture that PNG cannot compress, so its size is known in advance (~3 bytes/pixel)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return _png(pixels)


def scene_png(width: int = 360, height: int = 240) -> bytes:
    """A small drawn landscape: sky, a ridge of hills with snow on the high parts, grass."""
    y, x = np.mgrid[0:height, 0:width] / height
    ridge = 0.55 + 0.17 * np.sin(x * 2.7) + 0.08 * np.sin(x * 9.4)
    sky = np.stack([120 + 60 * y, 170 + 40 * y, 235 - 20 * y], -1)
    land = np.stack([50 + 30 * y, 100 + 40 * y, 55 + 10 * y], -1)
    pixels = np.where((y > ridge)[..., None], land, sky)
    pixels[(y > ridge) & (y < ridge + 0.06) & (ridge < 0.5)] = (240, 242, 246)
    return _png(pixels.clip(0, 255).astype(np.uint8))


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def chat_requests(page: Page) -> list[dict]:
    """Record the bodies the page posts to /v1/chat/completions."""
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith(
        "/v1/chat/completions") else None)
    return bodies


# -- conversation ------------------------------------------------------------------------------

def test_text_prompt_streams_the_answer_with_usage(page: Page, server: Server):
    bodies = chat_requests(page)
    configure(page, system="You are terse.", temperature="0", top_p="0.9", max_tokens="12", dynamic_hd="4")
    prompt = page.get_by_label("Message", exact=True)
    prompt.fill("Tell me about")
    prompt.press("Shift+Enter")  # a new line, not a send
    prompt.type("mountains.")
    assert bodies == []
    prompt.press("Enter")
    usage = wait_answered(page)
    assert re.fullmatch(r"\d+ prompt · \d+ completion tokens · first token \d+\.\d\d s · [\d.]+ tokens/s", usage), usage
    assert page.locator(".msg.user .bubble").inner_text() == "Tell me about\nmountains."
    (body,) = bodies
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["dynamic_hd"]) == (0, 0.9, 12, 4)
    assert body["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "Tell me about\nmountains."}]
    expected = server.post({k: v for k, v in body.items() if k not in ("stream", "stream_options")}).json()
    answer = stored(page)[1]
    assert answer["text"] == expected["choices"][0]["message"]["content"]  # every streamed piece, in order
    assert answer["usage"]["completion_tokens"] == expected["usage"]["completion_tokens"]
    assert f"{answer['usage']['prompt_tokens']} prompt" in usage


def test_conversation_survives_reload_then_regenerate_and_clear(page: Page):
    configure(page, temperature="0", max_tokens="6")
    ask(page, "hello there")
    wait_answered(page)
    first = stored(page)
    page.reload()
    expect(page.locator(".msg")).to_have_count(2)
    expect(page.locator(".msg.user .bubble")).to_have_text("hello there")
    expect(page.get_by_label("Temperature")).to_have_value("0")
    bodies = chat_requests(page)
    page.get_by_role("button", name="Regenerate").click()
    wait_answered(page)
    expect(page.locator(".msg")).to_have_count(2)
    assert bodies[0]["messages"] == [{"role": "user", "content": "hello there"}]
    assert stored(page)[1]["text"] == first[1]["text"]  # greedy: the same answer again
    ask(page, "and again")
    wait_answered(page)
    assert [m["role"] for m in bodies[1]["messages"]] == ["user", "assistant", "user"]
    page.get_by_role("button", name="New chat").click()
    expect(page.locator(".msg")).to_have_count(0)
    assert stored(page) == []
    page.reload()
    expect(page.locator(".msg")).to_have_count(0)


def test_stop_mid_stream_frees_the_server(page: Page, server: Server):
    cancelled = server.health()["cancelled"]
    configure(page, temperature="0")
    ask(page, LONG_PROMPT)
    answer = last_answer(page).locator(".answer")
    expect(answer).to_contain_text(re.compile(r"\w{2,}"))  # words arrive while it is still running
    page.get_by_role("button", name="Stop").click()
    expect(last_answer(page).locator(".flag")).to_have_text("stopped")
    deadline = time.monotonic() + 10
    while (health := server.health())["in_flight"] or health["cancelled"] == cancelled:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)  # polling interval
    assert health["cancelled"] == cancelled + 1
    configure(page, key=None, max_tokens="4")
    ask(page, "hi")
    assert "4 completion tokens" in wait_answered(page)


# -- attachments -----------------------------------------------------------------------------------

def test_image_by_picker_drop_and_paste_gets_an_answer(page: Page, tmp_path: Path):
    picture = tmp_path / "mountain.png"
    picture.write_bytes(scene_png())
    bodies = chat_requests(page)
    configure(page, temperature="0", max_tokens="24")
    page.locator("#file").set_input_files(str(picture))
    expect(page.locator(".chip img")).to_have_count(1)
    ask(page, "What is shown in this image?")
    usage = wait_answered(page)
    expect(page.locator(".msg.user .attachment img")).to_have_count(1)
    content = bodies[0]["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[1] == {"type": "text", "text": "What is shown in this image?"}
    assert stored(page)[1]["usage"]["prompt_tokens_details"]["image_tokens"] > 0, usage
    screenshots(page, Path(os.environ.get("PHI4MM_UI_SCREENSHOTS") or tmp_path))

    page.get_by_role("button", name="New chat").click()
    drop_and_paste(page, scene_png(64, 48))
    expect(page.locator(".chip img")).to_have_count(2)
    page.get_by_role("button", name=re.compile("Remove")).first.click()
    expect(page.locator(".chip img")).to_have_count(1)
    ask(page, "And this one?")
    wait_answered(page)
    assert len([p for p in bodies[1]["messages"][0]["content"] if p["type"] == "image_url"]) == 1


def drop_and_paste(page: Page, png: bytes) -> None:
    """A file dropped on the page and one pasted into the message box, as browsers deliver them."""
    page.evaluate("""async (bytes) => {
        const file = (name) => new File([new Uint8Array(bytes)], name, {type: "image/png"});
        const drop = new DataTransfer();
        drop.items.add(file("dropped.png"));
        window.dispatchEvent(new DragEvent("dragover", {dataTransfer: drop, cancelable: true}));
        window.dispatchEvent(new DragEvent("drop", {dataTransfer: drop, cancelable: true}));
        const paste = new DataTransfer();
        paste.items.add(file("pasted.png"));
        document.getElementById("prompt").dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: paste, cancelable: true, bubbles: true}));
    }""", list(png))


def screenshots(page: Page, out: Path) -> None:
    """The finished exchange at desktop and phone width; neither may scroll sideways."""
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name}: the page is {overflow} px wider than the window"
        page.screenshot(path=str(out / f"chat-{name}.png"))
    page.set_viewport_size(DESKTOP)


def test_microphone_recording_gets_an_answer(page: Page):
    """Chromium's fake capture device gives a beep; MediaRecorder makes webm/opus of it."""
    bodies = chat_requests(page)
    configure(page, temperature="0", max_tokens="8")
    page.get_by_role("button", name="Record from the microphone").click()
    expect(page.locator("#rec-time")).to_have_text("0:01")
    page.get_by_role("button", name="Stop recording").click()
    expect(page.locator(".chip audio")).to_have_count(1)
    ask(page, "What did I say?")
    wait_answered(page)
    expect(page.locator(".msg.user .attachment audio")).to_have_count(1)
    audio = bodies[0]["messages"][0]["content"][0]
    assert audio["type"] == "input_audio" and audio["input_audio"]["format"] == "webm"
    assert len(audio["input_audio"]["data"]) > 1000
    expect(last_answer(page).locator(".error")).to_have_count(0)


# -- safety and errors -----------------------------------------------------------------------------

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def test_xss_in_a_prompt_shows_as_text(page: Page):
    configure(page, max_tokens="4")
    ask(page, XSS)
    wait_answered(page)
    expect(page.locator(".msg.user .bubble")).to_have_text(XSS)
    assert page.locator("#transcript img, #transcript script").count() == 0
    assert page.evaluate("window.__xss") is None
    page.reload()
    expect(page.locator(".msg.user .bubble")).to_have_text(XSS)
    assert page.evaluate("window.__xss") is None


def sse(*pieces: str) -> str:
    head = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    frames = [head | {"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
              for p in pieces]
    frames.append(head | {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(pieces)}})
    return "".join(f"data: {json.dumps(f)}\n\n" for f in frames) + "data: [DONE]\n\n"


def test_xss_in_an_answer_shows_as_text(page: Page):
    """The stream is answered by the test; Markdown still goes through the real server."""
    pieces = ["Here: <script>window.__xss=3</script> ", '<img src=x onerror="window.__xss=4">',
              " and **bold** [x](javascript:window.__xss=5)\n\n```\n<b>code</b>\n```\n"]
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=sse(*pieces)))
    configure(page)
    ask(page, "say something nasty")
    assert wait_answered(page).startswith("5 prompt · 3 completion tokens · first token")  # measured here
    answer = last_answer(page).locator(".answer")
    expect(answer.locator("strong")).to_have_text("bold")  # rendered Markdown, not raw text
    expect(answer).to_contain_text('Here: <script>window.__xss=3</script> <img src=x onerror="window.__xss=4">')
    expect(answer.locator("pre code")).to_have_text("<b>code</b>\n")
    assert answer.locator("script, img, b").count() == 0
    assert answer.locator("a").count() == 0  # the javascript: link is not a link
    assert page.evaluate("window.__xss") is None


def test_too_big_an_image_is_refused_before_upload(page: Page, tmp_path: Path):
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(800, 600))  # ~1.4 MB: over --max-body-mb 1 once base64-encoded
    bodies = chat_requests(page)
    page.locator("#file").set_input_files(str(big))
    expect(page.get_by_role("alert")).to_contain_text("accepts requests up to 1.0 MB (its --max-body-mb)")
    expect(page.locator(".chip")).to_have_count(0)
    assert bodies == []


def test_413_from_the_server_is_shown(page: Page, server: Server, tmp_path: Path):
    """The page is told a larger limit than the server's, so the upload goes out and meets the 413."""
    def bigger_limit(route):
        config = route.fetch().json() | {"max_body_bytes": 64 << 20}
        route.fulfill(json=config)

    page.route("**/v1/ui/config", bigger_limit)
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(800, 600))
    configure(page, max_tokens="4")
    page.locator("#file").set_input_files(str(big))
    ask(page, "too big?")
    error = last_answer(page).locator(".error")
    expect(error).to_contain_text("The request is too large (HTTP 413)")
    expect(error).to_contain_text("--max-body-mb 1")
    page.get_by_role("button", name="New chat").click()
    ask(page, "hi")
    wait_answered(page)


def test_401_asks_for_the_key_then_retry_works(page: Page):
    expect(page.get_by_label("API key")).to_be_hidden()  # in the closed panel
    configure(page, key="wrong", max_tokens="4")
    ask(page, "hi")
    error = last_answer(page).locator(".error")
    expect(error).to_contain_text("The server needs a valid API key (HTTP 401)")
    expect(error).to_contain_text("--api-key")
    key = page.get_by_label("API key")
    expect(key).to_be_focused()  # the panel opened at the key field
    key.fill(KEY)
    page.get_by_role("button", name="Retry").click()
    wait_answered(page)
    expect(page.locator(".msg")).to_have_count(2)


def test_key_field_only_when_the_server_wants_one(page: Page):
    page.get_by_role("button", name="Settings").click()
    expect(page.get_by_label("API key")).to_be_visible()
    page.route("**/v1/ui/config", lambda route: route.fulfill(
        json=route.fetch().json() | {"api_key_required": False}))
    page.reload()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.get_by_role("button", name="Settings").click()
    expect(page.get_by_label("System prompt")).to_be_visible()
    expect(page.get_by_label("API key")).to_be_hidden()


def test_every_control_is_labelled_and_reachable_by_keyboard(page: Page):
    unlabelled = page.evaluate("""() => [...document.querySelectorAll("button, input, textarea")]
        .filter((el) => !el.hidden && el.type !== "file")
        .filter((el) => !(el.getAttribute("aria-label") || el.textContent.trim() || el.labels?.length))
        .map((el) => el.outerHTML.slice(0, 80))""")
    assert unlabelled == []
    page.get_by_label("Message", exact=True).focus()
    order = []
    for _ in range(7):  # Tab goes round the page; the browser's own stop after the last is ""
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert [i for i in order if i] == ["attach", "record", "send", "clear", "settings-toggle", "prompt"], order

