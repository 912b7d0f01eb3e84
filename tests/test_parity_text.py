"""Reference parity of the text decoder: `prompt_logits` of the f32 conversion against transformers'
Phi4MultimodalForCausalLM on the same tiny checkpoint, on both sides of the LongRoPE switch.

Tolerance (issue: converter and text decoder): max|Δlogit| / max|logit| <= 5e-3 with default
engine settings (F16 KV cache), and the same argmax.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REUSE_TOLERANCE, TINY_N_ORIG
from reference_model import Reference

from phi4mm.prompt import build_prompt

pytestmark = pytest.mark.reference
TOLERANCE = 5e-3
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "images", "of",
         "mountains", "and", "charts", "appear"]


def messages_of_length(model, n_tokens: int) -> list[dict]:
    """A user message whose full prompt is exactly n_tokens long."""
    def as_messages(words: list[str]) -> list[dict]:
        return [{"role": "user", "content": " ".join(words)}]

    def count(words: list[str]) -> int:
        return len(model.tokenize(build_prompt(as_messages(words)).text))

    words: list[str] = []
    while count(words) < n_tokens:
        for w in (WORDS[len(words) % len(WORDS)], "a", "x", "1", "!"):
            if count(words + [w]) <= n_tokens:
                words.append(w)
                break
        else:
            raise AssertionError(f"no filler reaches exactly {n_tokens} tokens")
    return as_messages(words)


def relative_error(ours: np.ndarray, ref: torch.Tensor) -> float:
    ref_np = ref.numpy()
    return float(np.abs(ours - ref_np).max() / np.abs(ref_np).max())


def compare(model, reference: Reference, messages: list[dict]) -> tuple[float, bool, int]:
    prompt = build_prompt(messages).text
    ids = model.tokenize(prompt)
    assert ids == reference.encode(prompt), "llama.cpp and HF tokenizers disagree"
    ours = model.prompt_logits(messages)
    ref = reference.next_logits(ids)
    return relative_error(ours, ref), int(ours.argmax()) == int(ref.argmax()), len(ids)


CHATS = {
    "one turn": [{"role": "user", "content": "Hello world, this is a test."}],
    "system and history": [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "Describe a mountain."},
        {"role": "assistant", "content": "A mountain with snow on it."},
        {"role": "user", "content": "And the chart?"},
    ],
    "code and digits": [{"role": "user", "content": "def f(x):\n    return x * 12345 # ok?"}],
}


@pytest.mark.parametrize("name", sorted(CHATS))
def test_short_prompts_match_reference(model_f32, reference, name):
    err, same_argmax, _ = compare(model_f32, reference, CHATS[name])
    assert err <= TOLERANCE and same_argmax, (name, err)


@pytest.mark.parametrize("n_tokens", [TINY_N_ORIG - 1, TINY_N_ORIG, TINY_N_ORIG + 1, TINY_N_ORIG + 60])
def test_both_sides_of_the_longrope_switch(model_f32, reference, n_tokens):
    msgs = messages_of_length(model_f32, n_tokens)
    err, same_argmax, n = compare(model_f32, reference, msgs)
    assert n == n_tokens
    assert err <= TOLERANCE and same_argmax, (n_tokens, err)


def test_prefix_reuse_gives_the_same_logits(model_f32):
    base = CHATS["system and history"]
    first = model_f32.prompt_logits(base)
    model_f32.prompt_logits(CHATS["one turn"])          # evict the prefix
    shared = model_f32.prompt_logits(base[:2] + [{"role": "user", "content": "x"}])  # share a prefix
    again = model_f32.prompt_logits(base)
    rel = np.abs(first - again).max() / np.abs(first).max()
    assert rel <= REUSE_TOLERANCE  # measured, conftest.py
    # negative control: the prompt that shares the prefix is told apart by the same check
    assert np.abs(first - shared).max() / np.abs(first).max() > 10 * REUSE_TOLERANCE


def _swap_factors(cfg: dict, state: dict) -> None:
    rope = cfg["rope_scaling"]
    rope["short_factor"], rope["long_factor"] = rope["long_factor"], rope["short_factor"]


def _swap_gate_up(cfg: dict, state: dict) -> None:
    for key in [k for k in state if k.endswith("mlp.gate_up_proj.base_layer.weight")]:
        gate, up = state[key].chunk(2, dim=0)
        state[key] = torch.cat([up, gate], dim=0).contiguous()


@pytest.mark.parametrize("mutate, n_tokens", [
    (_swap_factors, 40), (_swap_factors, TINY_N_ORIG + 60), (_swap_gate_up, 40),
])
def test_negative_controls_exceed_the_tolerance(model_f32, tiny_ckpt, mutate, n_tokens):
    """The parity check is sensitive: a reference with swapped LongRoPE factors or swapped
    gate/up halves disagrees with the engine far beyond the tolerance."""
    broken = Reference(tiny_ckpt, mutate=mutate)
    err, _, _ = compare(model_f32, broken, messages_of_length(model_f32, n_tokens))
    assert err > 10 * TOLERANCE, err
