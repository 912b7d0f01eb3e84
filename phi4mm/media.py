"""Image sources (path, file/http(s)/data URL, base64, bytes, PIL, numpy) -> decoded RGB PIL
images within `MediaLimits`. The only module that reads files or the network for media; decoding
follows the reference: `.convert('RGB')`, alpha dropped, not composited (model-spec.md §5.1)."""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import os
import re
import socket
import ssl
import stat
import time
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit
from urllib.request import url2pathname

import numpy as np
from PIL import Image, UnidentifiedImageError

from phi4mm.errors import ConfigError, MediaError

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=_\-\s]+")
_MIN_BARE_BASE64_CHARS = 64  # shorter strings are read as paths
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_CHUNK_BYTES = 1 << 16
# address kinds refused unless allow_private_urls (checked on the address actually connected to)
_REFUSED_KINDS = ("loopback", "private", "link_local", "multicast", "reserved", "unspecified")


@dataclass(frozen=True)
class MediaLimits:
    """Every limit of media loading, as a setting; the server exposes them as CLI flags."""

    max_bytes: int = 20 << 20          # encoded size, bytes
    max_pixels: int = 50_000_000       # width*height from the header, checked before decoding
    timeout_s: float = 10.0            # whole download, redirects included
    max_redirects: int = 5
    allow_remote_urls: bool = True
    allow_private_urls: bool = False   # loopback, private, link-local, multicast, reserved, 0.0.0.0
    allow_local_files: bool = True
    allowed_dirs: tuple[Path, ...] = ()  # when non-empty, local files must resolve inside one

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"MediaLimits.{field.name} must be a bool, received {value!r}",
                                  key=field.name)
        for name in ("max_bytes", "max_pixels", "max_redirects", "timeout_s"):
            value, least = getattr(self, name), (0 if name == "max_redirects" else 1e-9)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < least:
                expected = ">= 0" if name == "max_redirects" else "> 0"
                raise ConfigError(f"MediaLimits.{name} must be a number {expected}, received "
                                  f"{value!r}", key=name)
        dirs = self.allowed_dirs
        dirs = (dirs,) if isinstance(dirs, (str, Path)) else dirs
        object.__setattr__(self, "allowed_dirs", tuple(Path(d).resolve() for d in dirs))


def load_image(source: ImageSource, limits: MediaLimits = MediaLimits()) -> Image.Image:
    """Any supported source -> RGB PIL image (alpha dropped); MediaError if refused or undecodable.

    A str is a data URL, an http(s):// or file:// URL, bare base64 (only base64 characters and at
    least 64 of them), or else a local path; pass a pathlib.Path to force a path.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, limits, "the PIL image")
        return _to_rgb(source, "the PIL image")
    if isinstance(source, np.ndarray):
        return _from_array(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image(bytes(source), limits, "the image bytes")
    if isinstance(source, Path):
        return decode_image(_read_local_file(source, limits), limits, str(source))
    if isinstance(source, str):
        return decode_image(_read_source_text(source, limits), limits, _describe(source))
    raise MediaError(f"unsupported image source of type {type(source).__name__}; expected a path, "
                     f"a URL, base64 text, bytes, a PIL image or a uint8 numpy array")


def decode_image(data: bytes, limits: MediaLimits = MediaLimits(),
                 origin: str = "the image bytes") -> Image.Image:
    """Encoded image bytes -> RGB PIL image, checking the byte and pixel limits before decoding."""
    _check_bytes(len(data), limits, origin)
    try:
        opened = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{origin} declares more pixels than max_pixels={limits.max_pixels} "
                         f"allows ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise MediaError(f"{origin} is not an image ({len(data)} bytes starting {data[:12]!r}); "
                         f"expected JPEG, PNG, WebP, GIF, BMP or TIFF") from exc
    except Exception as exc:  # a corrupt header: Pillow's plugins raise many types
        raise MediaError(f"{origin} has a corrupt image header: {exc}") from exc
    with opened:
        _check_pixels(opened.size, limits, origin)
        return _to_rgb(opened, origin)


def _to_rgb(image: Image.Image, origin: str) -> Image.Image:
    """Decode fully (truncated data is an error) and convert to RGB like the reference."""
    try:
        image.load()
        return image.convert("RGB")
    except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, ValueError, ...
        raise MediaError(f"{origin} is truncated or corrupt and could not be decoded: {exc}")\
            from exc


def _from_array(array: np.ndarray, limits: MediaLimits) -> Image.Image:
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if array.dtype != np.uint8 or not shape_ok:
        raise MediaError(f"a numpy image must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4), "
                         f"received {array.dtype} of shape {array.shape}")
    _check_pixels((array.shape[1], array.shape[0]), limits, "the numpy image")
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _check_bytes(n_bytes: int, limits: MediaLimits, origin: str) -> None:
    if n_bytes > limits.max_bytes:
        raise MediaError(f"{origin} is {n_bytes} bytes or more, over max_bytes={limits.max_bytes}")


def _check_pixels(size_wh: tuple[int, int], limits: MediaLimits, origin: str) -> None:
    width, height = size_wh
    if width * height > limits.max_pixels:
        raise MediaError(f"{origin} is {width}x{height} = {width * height} pixels, over "
                         f"max_pixels={limits.max_pixels}")


def _describe(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:60] + "...")


def _read_source_text(text: str, limits: MediaLimits) -> bytes:
    """A str source -> the encoded bytes it names or holds."""
    match = _URL_SCHEME.match(text)
    scheme = match.group(1).lower() if match else ""
    if scheme == "data":
        return _data_url_bytes(text, limits)
    if scheme in ("http", "https"):
        return _fetch(text, limits)
    if scheme == "file":
        return _read_local_file(_file_url_path(text), limits)
    if len(scheme) > 1 and text[len(scheme):].startswith("://"):
        raise MediaError(f"unsupported URL scheme {scheme!r} in {_describe(text)}; expected "
                         f"http, https, file or data")
    if len(text) >= _MIN_BARE_BASE64_CHARS and _BASE64_TEXT.fullmatch(text):
        return _b64decode(text, limits, "the base64 image")
    return _read_local_file(Path(text), limits)


def _b64decode(text: str, limits: MediaLimits, origin: str) -> bytes:
    """Standard or URL-safe base64, whitespace ignored, padding optional -> bytes."""
    compact = "".join(text.split()).translate(str.maketrans("-_", "+/"))
    _check_bytes(len(compact) * 3 // 4, limits, origin)  # before decoding
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"{origin} is not valid base64 ({exc}); received {len(compact)} "
                         f"characters starting {compact[:16]!r}") from exc


def _data_url_bytes(url: str, limits: MediaLimits) -> bytes:
    header, comma, payload = url[len("data:"):].partition(",")
    if not comma:
        raise MediaError(f"a data URL needs a ',' before its payload, received {_describe(url)}; "
                         f"expected data:image/png;base64,...")
    if header.split(";")[-1].strip().lower() == "base64":
        return _b64decode(payload, limits, "the data URL")
    data = unquote_to_bytes(payload)
    _check_bytes(len(data), limits, "the data URL")
    return data


def _file_url_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise MediaError(f"a file:// URL must name a local file (host '' or 'localhost'), "
                         f"received host {parts.netloc!r}")
    return Path(url2pathname(unquote(parts.path)))


def _read_local_file(path: Path, limits: MediaLimits) -> bytes:
    """A local path -> its bytes, if local files are allowed and it resolves inside allowed_dirs."""
    if not limits.allow_local_files:
        raise MediaError(f"refused to read local file {str(path)!r}: local files are disabled; "
                         f"set allow_local_files=True (server: --allowed-media-dir DIR)")
    resolved = path.resolve()  # symlinks followed, '..' collapsed
    if limits.allowed_dirs and not any(resolved.is_relative_to(d) for d in limits.allowed_dirs):
        dirs = ", ".join(str(d) for d in limits.allowed_dirs)
        raise MediaError(f"refused to read {str(path)!r}: it resolves to {str(resolved)!r}, "
                         f"outside allowed_dirs ({dirs}); add its directory to allowed_dirs "
                         f"(server: --allowed-media-dir)")
    try:
        info = os.stat(resolved)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(f"{str(path)!r} is not a regular file")
        _check_bytes(info.st_size, limits, repr(str(path)))
        nofollow = getattr(os, "O_NOFOLLOW", 0)  # the resolved path has no links: keep it so
        with open(resolved, "rb", opener=lambda p, flags: os.open(p, flags | nofollow)) as file:
            data = file.read(limits.max_bytes + 1)
    except OSError as exc:
        raise MediaError(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from exc
    _check_bytes(len(data), limits, repr(str(path)))
    return data


def _fetch(url: str, limits: MediaLimits) -> bytes:
    """GET an http(s) URL, following at most max_redirects redirects, each target re-checked."""
    if not limits.allow_remote_urls:
        raise MediaError(f"refused to fetch {_describe(url)}: remote URLs are disabled; set "
                         f"allow_remote_urls=True")
    deadline = time.monotonic() + limits.timeout_s
    try:
        for _ in range(limits.max_redirects + 1):
            conn, sock, response = _request(url, limits, deadline)
            try:
                if response.status not in _REDIRECT_STATUSES:
                    return _read_body(url, sock, response, limits, deadline)
                url = _redirect_target(url, response.getheader("Location"))
            finally:
                conn.close()
    except TimeoutError as exc:
        raise MediaError(f"fetching {_describe(url)} took longer than "
                         f"timeout_s={limits.timeout_s}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise MediaError(f"cannot fetch {_describe(url)}: {exc}") from exc
    raise MediaError(f"fetching the image took more than max_redirects={limits.max_redirects} "
                     f"redirects; last target {_describe(url)}")


def _redirect_target(url: str, location: str | None) -> str:
    if not location:
        raise MediaError(f"{_describe(url)} answered with a redirect but no Location header")
    target = urljoin(url, location)
    if urlsplit(target).scheme.lower() not in ("http", "https"):
        raise MediaError(f"refused redirect from {_describe(url)} to {_describe(target)}: only "
                         f"http and https redirect targets are followed")
    return target


def _request(url: str, limits: MediaLimits, deadline: float):
    """Open a checked connection, send the GET, read the headers -> (connection, its socket, the
    response); the socket is kept because http.client drops conn.sock once a response will close."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise MediaError(f"URL {_describe(url)} has no host")
    conn = _connection(parts.scheme.lower(), parts.hostname, parts.port,
                       _remaining_s(deadline), limits.allow_private_urls)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", target, headers={"User-Agent": "phi4mm", "Accept": "image/*",
                                             "Accept-Encoding": "identity"})
        sock = conn.sock  # TLS-wrapped for https
        return conn, sock, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _read_body(url: str, sock: socket.socket, response: http.client.HTTPResponse,
               limits: MediaLimits, deadline: float) -> bytes:
    """The body of a 200 response, within max_bytes and the whole download's deadline."""
    if response.status != 200:
        raise MediaError(f"fetching {_describe(url)} returned HTTP {response.status} "
                         f"{response.reason}; expected 200")
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit():
        _check_bytes(int(declared), limits, _describe(url))
    chunks, n_bytes = [], 0
    while not response.isclosed():  # it closes itself after the last byte or at EOF
        sock.settimeout(_remaining_s(deadline))
        chunk = response.read1(_CHUNK_BYTES)  # one recv at most: the deadline is rechecked
        if not chunk:
            break
        n_bytes += len(chunk)
        _check_bytes(n_bytes, limits, _describe(url))
        chunks.append(chunk)
    return b"".join(chunks)


def _remaining_s(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("download deadline passed")
    return remaining


def _connection(scheme: str, host: str, port: int | None, timeout_s: float, allow_private: bool):
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=_tls_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    # http.client opens its socket through this hook (HTTPS wraps it afterwards), so the address
    # is checked before a byte is sent, and on the address actually connected to.
    conn._create_connection = lambda address, timeout, source_address: _connect_checked(
        address, timeout, source_address, allow_private)
    return conn


def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # system CAs, hostname checked


def _connect_checked(address, timeout_s, source_address, allow_private: bool) -> socket.socket:
    """Resolve once, skip refused addresses, connect, then verify the peer address itself."""
    host, port = address
    refusals, failures = [], []
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        reason = None if allow_private else _address_refusal(sockaddr[0])
        if reason:
            refusals.append(f"{sockaddr[0]} is {reason}")
            continue
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout_s)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            _check_peer(sock, allow_private, host)
            return sock
        except OSError as exc:  # try the next address, as socket.create_connection does
            sock.close()
            failures.append(exc)
        except BaseException:
            sock.close()
            raise
    if failures:
        raise failures[-1]
    raise MediaError(f"refused to connect to {host!r}: {'; '.join(refusals) or 'no address'}; "
                     f"set allow_private_urls=True (server: --allow-private-urls) to allow it")


def _check_peer(sock: socket.socket, allow_private: bool, host: str) -> None:
    peer = sock.getpeername()[0]
    reason = None if allow_private else _address_refusal(peer)
    if reason:
        raise MediaError(f"refused to fetch from {host!r}: connected to {peer}, {reason}; set "
                         f"allow_private_urls=True (server: --allow-private-urls) to allow it")


def _address_refusal(address: str) -> str | None:
    """Why an IP address is not public (e.g. 'a loopback address'), or None when it is."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and (ip.ipv4_mapped or ip.sixtofour):
        ip = ip.ipv4_mapped or ip.sixtofour
    for kind in _REFUSED_KINDS:
        if getattr(ip, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    return None if ip.is_global else "not a globally routable address"
