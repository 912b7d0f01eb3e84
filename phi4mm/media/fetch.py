"""Encoded media bytes from any source: a path, a file://, http(s) or data: URL, bare base64 or
bytes, within `MediaLimits`. The only module that reads files or the network for media; an SSRF
guard checks every address connected to. Decoding is elsewhere (image.py, audio.py)."""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import os
import re
import socket
import ssl
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit
from urllib.request import url2pathname

from phi4mm.errors import MediaError
from phi4mm.media.limits import MediaLimits

EncodedSource = str | Path | bytes | bytearray | memoryview

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=_\-\s]+")
_MIN_BARE_BASE64_CHARS = 64  # shorter strings are read as paths
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_CHUNK_BYTES = 1 << 16
# address kinds refused unless allow_private_urls (checked on the address actually connected to)
_REFUSED_KINDS = ("loopback", "private", "link_local", "multicast", "reserved", "unspecified")


@dataclass(frozen=True)
class _Kind:
    """What differs between fetching an image and fetching audio."""

    limit: str             # the MediaLimits field bounding the encoded size
    accept: str            # the HTTP Accept header
    data_url_example: str  # shown when a data URL is malformed


_KINDS = {
    "image": _Kind("max_bytes", "image/*", "data:image/png;base64,..."),
    "audio": _Kind("max_audio_bytes", "audio/*", "data:audio/wav;base64,..."),
}


def read_source(source: EncodedSource, limits: MediaLimits, kind: str) -> bytes:
    """A path, URL, base64 text or bytes -> the encoded bytes it names or holds, at most the byte
    limit of `kind` ("image": max_bytes, "audio": max_audio_bytes); MediaError if refused.

    A str is a data URL, an http(s):// or file:// URL, bare base64 (only base64 characters and at
    least 64 of them), or else a local path; pass a pathlib.Path to force a path.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, received {kind!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        check_bytes(len(data), limits, kind, describe(source, kind))
        return data
    if isinstance(source, Path):
        return _read_local_file(source, limits, kind)
    if isinstance(source, str):
        return _read_source_text(source, limits, kind)
    raise TypeError(f"read_source reads a str, Path or bytes, received {type(source).__name__}")


def describe(source: EncodedSource, kind: str) -> str:
    """How messages name a source: a Path as is, a str quoted (and cut at 60), bytes generically."""
    if isinstance(source, Path):
        return str(source)
    if isinstance(source, str):
        return _quote(source)
    return f"the {kind} bytes"


def _quote(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:60] + "...")


def check_bytes(n_bytes: int, limits: MediaLimits, kind: str, origin: str) -> None:
    """MediaError naming the size and the limit when `n_bytes` exceeds the limit of `kind`."""
    name = _KINDS[kind].limit
    if n_bytes > getattr(limits, name):
        raise MediaError(f"{origin} is {n_bytes} bytes or more, over {name}={getattr(limits, name)}")


def _read_source_text(text: str, limits: MediaLimits, kind: str) -> bytes:
    """A str source -> the encoded bytes it names or holds."""
    match = _URL_SCHEME.match(text)
    scheme = match.group(1).lower() if match else ""
    if scheme == "data":
        return _data_url_bytes(text, limits, kind)
    if scheme in ("http", "https"):
        return _fetch(text, limits, kind)
    if scheme == "file":
        return _read_local_file(_file_url_path(text), limits, kind)
    if len(scheme) > 1 and text[len(scheme):].startswith("://"):
        raise MediaError(f"unsupported URL scheme {scheme!r} in {_quote(text)}; expected "
                         f"http, https, file or data")
    if len(text) >= _MIN_BARE_BASE64_CHARS and _BASE64_TEXT.fullmatch(text):
        return _b64decode(text, limits, kind, f"the base64 {kind}")
    return _read_local_file(Path(text), limits, kind)


def _b64decode(text: str, limits: MediaLimits, kind: str, origin: str) -> bytes:
    """Standard or URL-safe base64, whitespace ignored, padding optional -> bytes."""
    compact = "".join(text.split()).translate(str.maketrans("-_", "+/"))
    check_bytes(len(compact) * 3 // 4, limits, kind, origin)  # before decoding
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MediaError(f"{origin} is not valid base64 ({exc}); received {len(compact)} "
                         f"characters starting {compact[:16]!r}") from exc


def _data_url_bytes(url: str, limits: MediaLimits, kind: str) -> bytes:
    header, comma, payload = url[len("data:"):].partition(",")
    if not comma:
        raise MediaError(f"a data URL needs a ',' before its payload, received "
                         f"{_quote(url)}; expected {_KINDS[kind].data_url_example}")
    if header.split(";")[-1].strip().lower() == "base64":
        return _b64decode(payload, limits, kind, "the data URL")
    data = unquote_to_bytes(payload)
    check_bytes(len(data), limits, kind, "the data URL")
    return data


def _file_url_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise MediaError(f"a file:// URL must name a local file (host '' or 'localhost'), "
                         f"received host {parts.netloc!r}")
    return Path(url2pathname(unquote(parts.path)))


def _read_local_file(path: Path, limits: MediaLimits, kind: str) -> bytes:
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
    max_bytes = getattr(limits, _KINDS[kind].limit)
    try:
        info = os.stat(resolved)
        if not stat.S_ISREG(info.st_mode):
            raise MediaError(f"{str(path)!r} is not a regular file")
        check_bytes(info.st_size, limits, kind, repr(str(path)))
        nofollow = getattr(os, "O_NOFOLLOW", 0)  # the resolved path has no links: keep it so
        with open(resolved, "rb", opener=lambda p, flags: os.open(p, flags | nofollow)) as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise MediaError(f"cannot read {kind} file {str(path)!r}: {exc.strerror or exc}") from exc
    check_bytes(len(data), limits, kind, repr(str(path)))
    return data


def _fetch(url: str, limits: MediaLimits, kind: str) -> bytes:
    """GET an http(s) URL, following at most max_redirects redirects, each target re-checked."""
    if not limits.allow_remote_urls:
        raise MediaError(f"refused to fetch {_quote(url)}: remote URLs are disabled; set "
                         f"allow_remote_urls=True")
    deadline = time.monotonic() + limits.timeout_s
    try:
        for _ in range(limits.max_redirects + 1):
            conn, sock, response = _request(url, limits, kind, deadline)
            try:
                if response.status not in _REDIRECT_STATUSES:
                    return _read_body(url, sock, response, limits, kind, deadline)
                url = _redirect_target(url, response.getheader("Location"))
            finally:
                conn.close()
    except TimeoutError as exc:
        raise MediaError(f"fetching {_quote(url)} took longer than "
                         f"timeout_s={limits.timeout_s}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise MediaError(f"cannot fetch {_quote(url)}: {exc}") from exc
    raise MediaError(f"fetching the {kind} took more than max_redirects={limits.max_redirects} "
                     f"redirects; last target {_quote(url)}")


def _redirect_target(url: str, location: str | None) -> str:
    if not location:
        raise MediaError(f"{_quote(url)} answered with a redirect but no Location header")
    target = urljoin(url, location)
    if urlsplit(target).scheme.lower() not in ("http", "https"):
        raise MediaError(f"refused redirect from {_quote(url)} to {_quote(target)}: "
                         f"only http and https redirect targets are followed")
    return target


def _request(url: str, limits: MediaLimits, kind: str, deadline: float):
    """Open a checked connection, send the GET, read the headers -> (connection, its socket, the
    response); the socket is kept because http.client drops conn.sock once a response will close."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise MediaError(f"URL {_quote(url)} has no host")
    conn = _connection(parts.scheme.lower(), parts.hostname, parts.port,
                       _remaining_s(deadline), limits.allow_private_urls)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", target, headers={"User-Agent": "phi4mm", "Accept": _KINDS[kind].accept,
                                             "Accept-Encoding": "identity"})
        sock = conn.sock  # TLS-wrapped for https
        return conn, sock, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _read_body(url: str, sock: socket.socket, response: http.client.HTTPResponse,
               limits: MediaLimits, kind: str, deadline: float) -> bytes:
    """The body of a 200 response, within the byte limit and the whole download's deadline."""
    if response.status != 200:
        raise MediaError(f"fetching {_quote(url)} returned HTTP {response.status} "
                         f"{response.reason}; expected 200")
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit():
        check_bytes(int(declared), limits, kind, _quote(url))
    chunks, n_bytes = [], 0
    while not response.isclosed():  # it closes itself after the last byte or at EOF
        sock.settimeout(_remaining_s(deadline))
        chunk = response.read1(_CHUNK_BYTES)  # one recv at most: the deadline is rechecked
        if not chunk:
            break
        n_bytes += len(chunk)
        check_bytes(n_bytes, limits, kind, _quote(url))
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
