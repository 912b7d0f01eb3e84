"""Typed exceptions of the package. No HTTP knowledge here: the server maps them in one place.

Every message states the value received and the value expected.
"""

from __future__ import annotations


class Phi4MMError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(Phi4MMError):
    """A checkpoint config, GGUF metadata key or manifest entry is missing or invalid."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class ConversionError(Phi4MMError):
    """The checkpoint cannot be converted (unknown key, wrong shape, quantizer failure)."""


class ModelNotFoundError(Phi4MMError):
    """No converted model, hub-layout directory or reachable hub repo under the given name."""


class InputError(Phi4MMError, ValueError):
    """A request is invalid: the caller can fix it. `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class MediaError(InputError):
    """An image (or audio clip) could not be fetched, decoded or accepted within the limits."""


class AudioError(MediaError):
    """An audio clip could not be fetched, decoded or accepted within the limits."""


class ContextOverflowError(InputError):
    """The prompt (text plus media rows) does not fit in the context window."""

    def __init__(self, n_prompt_tokens: int, n_ctx: int):
        super().__init__(
            f"the prompt takes {n_prompt_tokens} tokens (image rows included) but the context "
            f"holds at most {n_ctx}; shorten the conversation, send fewer or smaller images "
            f"(lower dynamic_hd), or load the model with a larger n_ctx",
            param="messages",
        )
        self.n_prompt_tokens = n_prompt_tokens
        self.n_ctx = n_ctx


class OverloadedError(Phi4MMError):
    """The request queue is full; retry later."""


class Cancelled(Phi4MMError):
    """The caller's `should_stop` asked for the request to stop (e.g. the client disconnected)."""


class EngineError(Phi4MMError):
    """llama.cpp reported a failure that is not the caller's fault."""


class OffloadWarning(UserWarning):
    """GPU offload was asked for but cannot happen (the installed llama.cpp has no GPU backend);
    the model runs on the CPU instead."""
