"""Phi-4-multimodal-instruct on llama.cpp: exact to the reference, fast on a CPU, from Python."""

from phi4mm.errors import (
    AudioError,
    Cancelled,
    ConfigError,
    ContextOverflowError,
    ConversionError,
    EngineError,
    InputError,
    MediaError,
    ModelNotFoundError,
    OffloadWarning,
    OverloadedError,
    Phi4MMError,
)

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "ConfigError",
    "ContextOverflowError",
    "ConversionError",
    "EngineError",
    "InputError",
    "AudioError",
    "MediaError",
    "ModelNotFoundError",
    "OffloadWarning",
    "OverloadedError",
    "Phi4MM",
    "Phi4MMError",
    "__version__",
]


def __getattr__(name: str):
    if name == "Phi4MM":  # lazy: importing the package must not load llama.cpp
        from phi4mm.api import Phi4MM

        return Phi4MM
    raise AttributeError(name)
