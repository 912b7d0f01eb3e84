"""Media I/O: fetch encoded bytes from any source (fetch), decode images (image) and audio (audio),
within `MediaLimits` (limits), in this process or in decoder processes (isolation). The only part
of the package that reads files or the network."""

from phi4mm.media.audio import AudioSource, Waveform, decode_audio, load_audio
from phi4mm.media.fetch import EncodedSource, read_source
from phi4mm.media.image import ImageSource, decode_image, load_image
from phi4mm.media.isolation import DecoderPool, InProcess, PoolSettings, media_loader
from phi4mm.media.limits import MediaLimits

__all__ = [
    "AudioSource",
    "DecoderPool",
    "EncodedSource",
    "ImageSource",
    "InProcess",
    "MediaLimits",
    "PoolSettings",
    "Waveform",
    "decode_audio",
    "decode_image",
    "load_audio",
    "load_image",
    "media_loader",
    "read_source",
]
