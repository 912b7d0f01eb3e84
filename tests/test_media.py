"""Image loading (phi4mm/media/): every source kind, every Pillow format we promise, every limit
and refusal. The only network is a local http.server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import ssl
import struct
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phi4mm.errors import ConfigError, MediaError
from phi4mm.media import MediaLimits, fetch, load_image

LOCAL = MediaLimits(allow_private_urls=True)  # the test server lives on 127.0.0.1


def pattern_rgb(width: int = 24, height: int = 16) -> np.ndarray:
    """(H, W, 3) uint8 with a distinct value per pixel and channel."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 10 % 256, ys * 15 % 256, (xs * 7 + ys * 3) % 256], -1).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but carries no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def png_rgb16(samples_hwc: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): filter 0 rows, big-endian."""
    height, width, _ = samples_hwc.shape
    rows = b"".join(b"\x00" + samples_hwc[y].astype(">u2").tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


PIXELS = pattern_rgb()
PNG = encode(Image.fromarray(PIXELS), "PNG")


# ------------------------------------------------------------------------------ local server

# A throwaway self-signed certificate for IP 127.0.0.1 (valid 2000-2125) and its key, for the
# https tests only; generated with openssl for this file, trusted nowhere else.
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIBXDCCAQKgAwIBAgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAkxMjcuMC4w
LjEwIBcNMDAwMTAxMDAwMDAwWhgPMjEyNTAxMDEwMDAwMDBaMBQxEjAQBgNVBAMM
CTEyNy4wLjAuMTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABG/VMnTgqtnifiBi
JJS5rRRKDgeO0rYpLZ/qnZcS+VWZGM6PH1Hu48w+7gDhLeU4GYlTOnYxz8dVnhqh
O43bMOujQzBBMA8GA1UdEQQIMAaHBH8AAAEwDwYDVR0TAQH/BAUwAwEB/zAdBgNV
HQ4EFgQUc9la4KT/1muezZUlUwOZluHcdCswCgYIKoZIzj0EAwIDSAAwRQIgSBhl
tTW8WjNbC2K/Hm2lTZinmF8wgUpmGkrAnypPyvcCIQD6YBMtqLcYXaQ0Uyfg5KGL
4ARnb9KFW+vcG3MGzDmXZQ==
-----END CERTIFICATE-----
"""
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgT5ucrGSi+Fa7JDSX
82aJu3ABsCIw6LKb/bDiqojDhkWhRANCAARv1TJ04KrZ4n4gYiSUua0USg4HjtK2
KS2f6p2XEvlVmRjOjx9R7uPMPu4A4S3lOBmJUzp2Mc/HVZ4aoTuN2zDr
-----END PRIVATE KEY-----
"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        missing = (404, {}, b"missing", None)
        status, headers, body, delay = self.server.routes.get(self.path, missing)
        if delay == "headers":
            self.server.release.wait(10)  # the server's delay, until the test tears it down
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            pieces = [body[i:i + 1] for i in range(len(body))] if delay == "drip" else [body]
            for piece in pieces:
                self.wfile.write(piece)
                if delay == "drip":
                    self.server.release.wait(0.05)  # one byte per 50 ms: each read is quick
        except OSError:  # the client already gave up (timeout tests)
            pass

    def log_message(self, *args):
        pass


class LocalServer:
    def __init__(self, tls: ssl.SSLContext | None = None):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.scheme = "https" if tls else "http"
        if tls:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.httpd.routes = {}
        self.httpd.release = threading.Event()  # set at teardown: delayed answers finish at once
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.httpd.server_address[1]}{path}"

    def route(self, path, body=b"", status=200, headers=None, delay=None) -> str:
        """delay: None, "headers" (answer nothing until teardown) or "drip" (1 byte / 50 ms)."""
        self.httpd.routes[path] = (status, headers or {"Content-Type": "image/png"}, body, delay)
        return self.url(path)

    def redirect(self, path, location, status=302) -> str:
        return self.route(path, status=status, headers={"Location": location})

    def close(self):
        self.httpd.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    running = LocalServer()
    yield running
    running.close()


@pytest.fixture
def tls_server(tmp_path):
    (tmp_path / "cert.pem").write_text(TEST_CERT)
    (tmp_path / "key.pem").write_text(TEST_KEY)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    running = LocalServer(tls=context)
    yield running
    running.close()


# ------------------------------------------------------------------------------ source kinds

def assert_pixels(image: Image.Image, expected: np.ndarray = PIXELS):
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_str_and_pathlib_paths(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(PNG)
    assert_pixels(load_image(str(path)))
    assert_pixels(load_image(path))


def test_file_url(tmp_path):
    path = tmp_path / "with space.png"
    path.write_bytes(PNG)
    assert_pixels(load_image(path.as_uri()))


def test_http_url_allowed_for_private_when_asked(server):
    assert_pixels(load_image(server.route("/a.png", PNG), LOCAL))


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_http_url_to_a_private_address_is_refused_by_default(server, host):
    server.route("/a.png", PNG)
    with pytest.raises(MediaError, match="allow_private_urls"):
        load_image(server.url("/a.png", host))


def test_https_with_a_trusted_certificate(tls_server, monkeypatch):
    monkeypatch.setattr(fetch, "_tls_context", lambda: ssl.create_default_context(cadata=TEST_CERT))
    assert_pixels(load_image(tls_server.route("/a.png", PNG), LOCAL))


def test_https_with_an_untrusted_certificate_is_refused(tls_server):
    with pytest.raises(MediaError, match="(?i)certificate verify failed"):
        load_image(tls_server.route("/a.png", PNG), LOCAL)


def test_redirect_is_followed(server):
    server.route("/final.png", PNG)
    assert_pixels(load_image(server.redirect("/start", "/final.png"), LOCAL))


def test_data_url():
    assert_pixels(load_image("data:image/png;base64," + base64.b64encode(PNG).decode()))


@pytest.mark.parametrize("text", [
    pytest.param(base64.b64encode(PNG).decode(), id="standard"),
    pytest.param(base64.urlsafe_b64encode(PNG).decode().rstrip("="), id="urlsafe-unpadded"),
    pytest.param(base64.encodebytes(PNG).decode(), id="with-newlines"),
])
def test_bare_base64(text):
    assert_pixels(load_image(text))


def test_pil_image_in_other_modes():
    assert_pixels(load_image(Image.fromarray(PIXELS)))
    grey = load_image(Image.fromarray(PIXELS[:, :, 0]))
    assert_pixels(grey, np.repeat(PIXELS[:, :, :1], 3, axis=2))


@pytest.mark.parametrize("array, expected", [
    pytest.param(PIXELS, PIXELS, id="hwc3"),
    pytest.param(np.dstack([PIXELS, np.zeros(PIXELS.shape[:2], np.uint8)]), PIXELS,
                 id="hwc4-alpha-dropped"),
    pytest.param(PIXELS[:, :, 1], np.repeat(PIXELS[:, :, 1:2], 3, axis=2), id="hw-grey"),
    pytest.param(PIXELS[:, ::-1], PIXELS[:, ::-1], id="non-contiguous"),
])
def test_numpy_arrays(array, expected):
    assert_pixels(load_image(array), expected)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_raw_bytes(kind):
    assert_pixels(load_image(kind(PNG)))


# ------------------------------------------------------------------------------ formats

def _gif_two_frames() -> bytes:
    first, second = Image.new("P", (8, 8), 1), Image.new("P", (8, 8), 2)
    palette = [0, 0, 0, 200, 30, 40, 10, 220, 90] + [0] * (256 * 3 - 9)
    first.putpalette(palette)
    second.putpalette(palette)
    return encode(first, "GIF", save_all=True, append_images=[second])


LOSSLESS = [
    pytest.param(PNG, PIXELS, id="png-rgb"),
    pytest.param(encode(Image.fromarray(PIXELS), "WEBP", lossless=True), PIXELS,
                 id="webp-lossless"),
    pytest.param(encode(Image.fromarray(PIXELS), "BMP"), PIXELS, id="bmp"),
    pytest.param(encode(Image.fromarray(PIXELS), "TIFF"), PIXELS, id="tiff"),
    pytest.param(encode(Image.fromarray(PIXELS), "TIFF", compression="tiff_lzw"), PIXELS,
                 id="tiff-lzw"),
    pytest.param(_gif_two_frames(), np.full((8, 8, 3), (200, 30, 40), np.uint8),
                 id="gif-first-frame"),
    pytest.param(png_rgb16(PIXELS.astype(np.uint16) * 256 + 77), PIXELS,
                 id="png-16bit-rgb-high-byte"),
    pytest.param(encode(Image.fromarray(PIXELS[:, :, 0].astype(np.uint16) * 3), "PNG"),
                 np.repeat(np.minimum(PIXELS[:, :, :1] * 3.0, 255).astype(np.uint8), 3, axis=2),
                 id="png-16bit-grey-clipped-like-reference-convert"),
    pytest.param(encode(Image.fromarray(PIXELS).quantize(64), "PNG"),
                 np.asarray(Image.fromarray(PIXELS).quantize(64).convert("RGB")), id="png-palette"),
]


@pytest.mark.parametrize("data, expected", LOSSLESS)
def test_lossless_formats_decode_exactly(data, expected):
    assert_pixels(load_image(data), expected)


def test_jpeg_decodes_close():
    smooth = np.full((32, 32, 3), (90, 140, 200), np.uint8)
    got = np.asarray(load_image(encode(Image.fromarray(smooth), "JPEG", quality=95)), np.int16)
    assert np.abs(got - smooth).max() <= 3


def test_rgba_alpha_is_dropped_not_composited():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)  # fully transparent: compositing on white or black would differ
    assert_pixels(load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")),
                  np.full((4, 4, 3), (10, 20, 30), np.uint8))


def test_palette_with_transparency_drops_it():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([250, 5, 5] + [0] * 765)
    assert_pixels(load_image(encode(image, "PNG", transparency=0)),
                  np.full((4, 4, 3), (250, 5, 5), np.uint8))


# ------------------------------------------------------------------------------ errors

def test_too_many_bytes_everywhere(server, tmp_path):
    small = MediaLimits(max_bytes=50, allow_private_urls=True)
    path = tmp_path / "big.png"
    path.write_bytes(PNG)
    assert len(PNG) > 50
    sources = [PNG, str(path), "data:image/png;base64," + base64.b64encode(PNG).decode(),
               base64.b64encode(PNG).decode(), server.route("/big.png", PNG)]
    for source in sources:
        with pytest.raises(MediaError, match="max_bytes=50"):
            load_image(source, small)


@pytest.mark.parametrize("width, height", [
    pytest.param(8000, 8000, id="64-megapixels-over-our-50"),
    pytest.param(100_000, 100_000, id="over-pillows-own-bomb-limit"),
])
def test_too_many_pixels_is_refused_from_the_header(width, height):
    with pytest.raises(MediaError, match="max_pixels=50000000"):
        load_image(png_header_only(width, height))


def test_too_many_pixels_for_decoded_sources():
    limits = MediaLimits(max_pixels=100)
    for source in (PIXELS, Image.fromarray(PIXELS), PNG):
        with pytest.raises(MediaError, match=r"24x16 = 384 pixels, over max_pixels=100"):
            load_image(source, limits)


@pytest.mark.parametrize("fixture", ["server", "tls_server"])
def test_slow_server_times_out(fixture, request, monkeypatch):
    monkeypatch.setattr(fetch, "_tls_context", lambda: ssl.create_default_context(cadata=TEST_CERT))
    url = request.getfixturevalue(fixture).route("/slow.png", PNG, delay="headers")
    with pytest.raises(MediaError, match=r"timeout_s=0\.3"):
        load_image(url, MediaLimits(timeout_s=0.3, allow_private_urls=True))


def test_timeout_bounds_the_whole_download_not_each_read(server):
    url = server.route("/drip.png", PNG, delay="drip")  # ~4.5 s in all, 50 ms per byte
    with pytest.raises(MediaError, match=r"timeout_s=0\.5"):
        load_image(url, MediaLimits(timeout_s=0.5, allow_private_urls=True))


def test_http_error_status(server):
    with pytest.raises(MediaError, match="HTTP 404"):
        load_image(server.url("/nothing-here.png"), LOCAL)


@pytest.mark.parametrize("source", [b"hello, this is text", "data:image/png;base64,aGVsbG8=",
                                    "data:,plain%20text"])
def test_not_an_image(source):
    with pytest.raises(MediaError, match="not an image"):
        load_image(source)


def test_html_from_a_server_is_not_an_image(server):
    url = server.route("/page", b"<html>hi</html>", headers={"Content-Type": "text/html"})
    with pytest.raises(MediaError, match="not an image"):
        load_image(url, LOCAL)


def test_truncated_png():
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noisy), "PNG")
    with pytest.raises(MediaError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize("source", [
    pytest.param("data:image/png;base64,iVBORw0K!!!!", id="data-url-bad-chars"),
    pytest.param("A" * 65, id="bare-impossible-length"),
    pytest.param("QUJD" * 20 + "=QUJD", id="bare-padding-in-the-middle"),
])
def test_bad_base64(source):
    with pytest.raises(MediaError, match="not valid base64"):
        load_image(source)


def test_redirect_to_a_refused_address(server, monkeypatch):
    # Let 127.0.0.1 pass as public so the first hop connects; 127.0.0.2 stays refused.
    real = fetch._address_refusal
    monkeypatch.setattr(fetch, "_address_refusal",
                        lambda ip: None if ip == "127.0.0.1" else real(ip))
    server.route("/ok.png", PNG)
    assert_pixels(load_image(server.url("/ok.png")))  # default limits
    url = server.redirect("/hop", server.url("/ok.png", host="127.0.0.2"))
    with pytest.raises(MediaError, match="127.0.0.2 is a loopback address.*allow_private_urls"):
        load_image(url)


def test_peer_address_is_checked_after_connect(server, monkeypatch):
    # A rebinding DNS answer passes the check on the resolved address; the peer check still refuses.
    seen = []

    def refusal(ip):
        seen.append(ip)
        return None if len(seen) == 1 else "a loopback address"

    monkeypatch.setattr(fetch, "_address_refusal", refusal)
    with pytest.raises(MediaError, match="connected to 127.0.0.1, a loopback address"):
        load_image(server.route("/a.png", PNG))
    assert seen == ["127.0.0.1", "127.0.0.1"]


def test_redirect_to_a_file_url_is_refused(server, tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(PNG)
    with pytest.raises(MediaError, match="only http and https"):
        load_image(server.redirect("/to-file", path.as_uri()), LOCAL)


def test_redirect_loop_stops_at_max_redirects(server):
    server.redirect("/loop", "/loop")
    with pytest.raises(MediaError, match="max_redirects=3"):
        load_image(server.url("/loop"), MediaLimits(max_redirects=3, allow_private_urls=True))


def test_remote_urls_can_be_disabled(server):
    with pytest.raises(MediaError, match="allow_remote_urls"):
        load_image(server.route("/a.png", PNG), MediaLimits(allow_remote_urls=False))


def test_unsupported_scheme():
    with pytest.raises(MediaError, match="unsupported URL scheme 'ftp'"):
        load_image("ftp://example.com/a.png")


def test_local_files_can_be_disabled(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(PNG)
    no_files = MediaLimits(allow_local_files=False)
    for source in (path, str(path), path.as_uri()):
        with pytest.raises(MediaError, match="allow_local_files"):
            load_image(source, no_files)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MediaError, match="No such file"):
        load_image(tmp_path / "absent.png")
    with pytest.raises(MediaError, match="not a regular file"):
        load_image(tmp_path)


@pytest.fixture
def media_dirs(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "sub" / "in.png").write_bytes(PNG)
    (outside / "out.png").write_bytes(PNG)
    (allowed / "escape.png").symlink_to(outside / "out.png")
    (allowed / "inner-link.png").symlink_to(allowed / "sub" / "in.png")
    return allowed, outside


def test_allowed_dirs_accepts_files_inside(media_dirs):
    allowed, _ = media_dirs
    limits = MediaLimits(allowed_dirs=(allowed,))
    assert_pixels(load_image(allowed / "sub" / "in.png", limits))
    assert_pixels(load_image(str(allowed / "inner-link.png"), limits))
    assert_pixels(load_image((allowed / "sub" / ".." / "sub" / "in.png").as_uri(), limits))


@pytest.mark.parametrize("relative", [
    pytest.param("../outside/out.png", id="outside"),
    pytest.param("sub/../../outside/out.png", id="dot-dot-escape"),
    pytest.param("escape.png", id="symlink-escape"),
])
def test_allowed_dirs_refuses_escapes(media_dirs, relative):
    allowed, _ = media_dirs
    limits = MediaLimits(allowed_dirs=(str(allowed),))
    with pytest.raises(MediaError, match="outside allowed_dirs"):
        load_image(str(allowed / relative), limits)
    with pytest.raises(MediaError, match="outside allowed_dirs"):
        load_image((allowed / relative).absolute().as_uri(), limits)


def test_file_url_with_a_remote_host_is_refused():
    with pytest.raises(MediaError, match="host 'example.com'"):
        load_image("file://example.com/etc/passwd")


@pytest.mark.parametrize("array", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8),
                                   np.zeros(4, np.uint8)])
def test_numpy_arrays_must_be_uint8_images(array):
    with pytest.raises(MediaError, match="uint8 of shape"):
        load_image(array)


def test_unsupported_source_type():
    with pytest.raises(MediaError, match="unsupported image source of type int"):
        load_image(42)


@pytest.mark.parametrize("settings", [{"max_bytes": 0}, {"timeout_s": -1}, {"max_redirects": -1},
                                      {"allow_private_urls": "yes"}, {"max_pixels": True}])
def test_invalid_limits_are_config_errors(settings):
    with pytest.raises(ConfigError, match=f"MediaLimits.{next(iter(settings))}"):
        MediaLimits(**settings)


def test_allowed_dirs_are_resolved_paths(tmp_path):
    limits = MediaLimits(allowed_dirs=(str(tmp_path / "x" / ".."),))
    assert limits.allowed_dirs == (Path(tmp_path).resolve(),)
