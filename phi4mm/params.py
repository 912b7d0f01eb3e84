"""Generation parameters: validated once into a frozen dataclass, with typed errors that name the
value received and the range expected. Defaults are llama.cpp's sampling defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from phi4mm.errors import InputError

MAX_STOP_STRINGS = 16


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int | None = None       # None: until end of turn or the context is full
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    dynamic_hd: int | None = None       # None: the model's setting
    grammar: str | None = None          # GBNF constraining the output


def _number(name: str, value: Any, lo: float, hi: float, integer: bool = False) -> Any:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise InputError(f"{name} must be {kind} in [{lo}, {hi}], got {value!r}", param=name)
    if not lo <= value <= hi:
        raise InputError(f"{name} is {value}, expected a value in [{lo}, {hi}]", param=name)
    return value if integer else float(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = (value,) if isinstance(value, str) else value
    if not isinstance(stops, (list, tuple)) or not all(isinstance(s, str) and s for s in stops):
        raise InputError(f"stop must be a non-empty string or a list of them, got {value!r}", param="stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise InputError(f"stop has {len(stops)} strings, expected at most {MAX_STOP_STRINGS}", param="stop")
    return tuple(stops)


def make_params(max_tokens: Any = None, temperature: Any = None, top_p: Any = None, top_k: Any = None,
                min_p: Any = None, frequency_penalty: Any = None, presence_penalty: Any = None,
                repeat_penalty: Any = None, stop: Any = None, seed: Any = None,
                dynamic_hd: Any = None, grammar: str | None = None) -> GenerationParams:
    """Validate caller values (None = default) into GenerationParams."""
    d = GenerationParams()
    return GenerationParams(
        max_tokens=None if max_tokens is None else _number("max_tokens", max_tokens, 1, 1 << 30, True),
        temperature=d.temperature if temperature is None else _number("temperature", temperature, 0.0, 2.0),
        top_p=d.top_p if top_p is None else _number("top_p", top_p, 0.0, 1.0),
        top_k=d.top_k if top_k is None else _number("top_k", top_k, 0, 1 << 30, True),
        min_p=d.min_p if min_p is None else _number("min_p", min_p, 0.0, 1.0),
        frequency_penalty=0.0 if frequency_penalty is None else _number(
            "frequency_penalty", frequency_penalty, -2.0, 2.0),
        presence_penalty=0.0 if presence_penalty is None else _number("presence_penalty", presence_penalty, -2.0, 2.0),
        repeat_penalty=1.0 if repeat_penalty is None else _number("repeat_penalty", repeat_penalty, 0.01, 10.0),
        stop=_stop(stop),
        seed=None if seed is None else _number("seed", seed, -(1 << 63), (1 << 64) - 1, True),
        dynamic_hd=None if dynamic_hd is None else _number("dynamic_hd", dynamic_hd, 1, 1024, True),
        grammar=grammar,
    )
