"""Generation parameter validation: typed errors naming the value and the range."""

import pytest

from phi4mm.errors import InputError
from phi4mm.params import GenerationParams, make_params


def test_defaults():
    assert make_params() == GenerationParams()


def test_values_pass_through():
    p = make_params(max_tokens=5, temperature=0, top_p=0.5, top_k=3, stop="x", seed=7)
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k, p.stop, p.seed) == (5, 0.0, 0.5, 3, ("x",), 7)


@pytest.mark.parametrize("kwargs, match", [
    ({"max_tokens": 0}, r"max_tokens is 0, expected a value in \[1"),
    ({"max_tokens": 2.5}, "max_tokens must be an integer"),
    ({"temperature": -1}, r"temperature is -1, expected a value in \[0.0, 2.0\]"),
    ({"temperature": "hot"}, "temperature must be a number"),
    ({"temperature": float("nan")}, "temperature must be a number"),
    ({"top_p": 1.5}, "top_p is 1.5"),
    ({"top_k": True}, "top_k must be an integer"),
    ({"frequency_penalty": 3}, "frequency_penalty is 3"),
    ({"stop": [""]}, "stop must be a non-empty string"),
    ({"stop": ["a"] * 17}, "at most 16"),
    ({"seed": "x"}, "seed must be an integer"),
    ({"dynamic_hd": 0}, "dynamic_hd is 0"),
])
def test_bad_values(kwargs, match):
    with pytest.raises(InputError, match=match) as info:
        make_params(**kwargs)
    assert info.value.param == next(iter(kwargs))
