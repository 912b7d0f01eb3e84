"""Media I/O: fetch encoded bytes from any source (fetch), decode images (image) and audio (audio),
within `MediaLimits` (limits). The only part of the package that reads files or the network."""

from phi4mm.media.audio import AudioSource, Waveform, decode_audio, load_audio
from phi4mm.media.fetch import EncodedSource, read_source
from phi4mm.media.image import ImageSource, decode_image, load_image
from phi4mm.media.limits import MediaLimits

__all__ = [
    "AudioSource",
    "EncodedSource",
    "ImageSource",
    "MediaLimits",
    "Waveform",
    "decode_audio",
    "decode_image",
    "load_audio",
    "load_image",
    "read_source",
]
