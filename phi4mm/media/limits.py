"""`MediaLimits`: every limit of media fetching and decoding (images and audio), as a setting."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from phi4mm.errors import ConfigError

_POSITIVE = ("max_bytes", "max_pixels", "timeout_s", "max_audio_bytes", "max_audio_s")
_NON_NEGATIVE = ("max_redirects",)


@dataclass(frozen=True)
class MediaLimits:
    """Every limit of media loading, as a setting; the server exposes them as CLI flags."""

    max_bytes: int = 20 << 20          # encoded image size, bytes
    max_pixels: int = 50_000_000       # width*height from the header, checked before decoding
    timeout_s: float = 10.0            # whole download, redirects included
    max_redirects: int = 5
    allow_remote_urls: bool = True
    allow_private_urls: bool = False   # loopback, private, link-local, multicast, reserved, 0.0.0.0
    allow_local_files: bool = True
    allowed_dirs: tuple[Path, ...] = ()  # when non-empty, local files must resolve inside one
    max_audio_bytes: int = 50 << 20    # encoded audio size, bytes
    max_audio_s: float = 1800.0        # from the header before decoding, and again while decoding

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "bool" and not isinstance(value, bool):
                raise ConfigError(f"MediaLimits.{field.name} must be a bool, received {value!r}",
                                  key=field.name)
        for name in (*_POSITIVE, *_NON_NEGATIVE):
            value, least = getattr(self, name), (0 if name in _NON_NEGATIVE else 1e-9)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < least:
                expected = ">= 0" if name in _NON_NEGATIVE else "> 0"
                raise ConfigError(f"MediaLimits.{name} must be a number {expected}, received "
                                  f"{value!r}", key=name)
        dirs = self.allowed_dirs
        dirs = (dirs,) if isinstance(dirs, (str, Path)) else dirs
        object.__setattr__(self, "allowed_dirs", tuple(Path(d).resolve() for d in dirs))


DEFAULT_LIMITS = MediaLimits()
