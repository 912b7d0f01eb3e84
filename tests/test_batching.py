"""Continuous batching in the Python API (phi4mm/engine/scheduler.py): a request's logits and greedy output
are the same alone and batched with others of mixed modality and length; several streams interleave
on one thread or many; a closed, dropped or abandoned stream frees its sequence; cached prefixes
are reused only under the same adapter set; the LongRoPE crossing works under batching.

Tolerance: the parity tolerance (max|Δlogit| / max|logit| <= 5e-3) with the same argmax; the
negative control shows two different requests are far apart on that measure. Measured with
scripts/measure_drift.py (tiny f32, Xeon with AVX-512 and AMX): a request batched with three others
of mixed modality gives bitwise the same logits as alone; the largest drift of any batch-shape
change seen is 8.1e-5 (KV prefix reuse, conftest.REUSE_TOLERANCE), 60x under 5e-3. Greedy text
is compared exactly: it stays the same while every step's gap between the best and second-best
logit exceeds the drift; along these requests' 12-token greedy paths the smallest gap is 4.7e-4 of
max|logit| (the text request), 6x the largest drift seen.
"""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
from PIL import Image

from phi4mm import Phi4MM
from phi4mm.errors import Cancelled

TOLERANCE = 5e-3
N_TOKENS = 12


def _picture(seed: int, size=(96, 64)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _clip(seconds: float, seed: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32), 16000


def _user(*parts) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


REQUESTS = {
    "text": lambda: [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}],
    "image": lambda: _user({"type": "image", "image": _picture(1)}, _text("What is in the picture?")),
    "audio": lambda: _user({"type": "audio", "audio": _clip(1.5, 2)}, _text("Transcribe the audio clip into text.")),
    "long": lambda: _user(_text("a b c d e f g h " * 40 + "Summarise.")),
    "image+audio": lambda: _user({"type": "image", "image": _picture(3, (64, 96))},
                                 {"type": "audio", "audio": _clip(1.0, 4)}, _text("Answer the question.")),
}


def _model(tiny_f32, n_parallel: int, **kwargs) -> Phi4MM:
    return Phi4MM.from_pretrained(tiny_f32, n_ctx=1024, n_threads=2, n_parallel=n_parallel, **kwargs)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _greedy(model: Phi4MM, messages) -> str:
    out = model.create_chat_completion(messages, max_tokens=N_TOKENS, temperature=0)
    return out["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def alone(tiny_f32):
    """Each request's logits and greedy text, each in a fresh model of one slot."""
    results = {}
    for name, make in REQUESTS.items():
        with _model(tiny_f32, 1) as model:
            results[name] = (model.prompt_logits(make()), _greedy(model, make()))
    return results


def _run_together(fn, names) -> dict:
    """fn(name) in one thread per name, started together; their results by name."""
    results: dict = {}
    barrier = threading.Barrier(len(names))

    def work(name):
        barrier.wait()
        try:
            results[name] = fn(name)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a batched request hung"
    return results


@pytest.mark.parametrize("batch", [("text", "image", "audio", "long"), ("image+audio", "text", "long", "audio")])
def test_logits_and_greedy_output_same_alone_and_batched(tiny_f32, alone, batch):
    with _model(tiny_f32, 4) as model:
        logits = _run_together(lambda n: model.prompt_logits(REQUESTS[n]()), batch)
        steps_before = model.engine.scheduler.stats.steps
        texts = _run_together(lambda n: _greedy(model, REQUESTS[n]()), batch)
    for name in batch:
        solo_logits, solo_text = alone[name]
        assert not isinstance(logits[name], BaseException), logits[name]
        err = _rel(logits[name], solo_logits)
        assert err <= TOLERANCE and logits[name].argmax() == solo_logits.argmax(), (name, err)
        assert texts[name] == solo_text, (name, texts[name], solo_text)
    assert steps_before > 0
    # the negative control: different requests are told apart by the same measure
    assert _rel(alone["text"][0], alone["long"][0]) > TOLERANCE


def test_batched_steps_hold_several_sequences(tiny_f32):
    """Four text streams (one adapter set) are decoded together: the steps that generate tokens
    generate several each (one each if the streams were served one after another)."""
    prompts = [[{"role": "user", "content": f"story {i}"}] for i in range(4)]
    with _model(tiny_f32, 4) as model:
        _run_together(lambda i: model.create_chat_completion(prompts[i], max_tokens=40, temperature=1.0, seed=i),
                      list(range(4)))
        stats = model.engine.scheduler.stats
        generating = [n for _, n in stats.recent if n > 0]  # the run takes well under its 10 s window
        assert stats.completion_tokens >= 60 and sum(generating) == stats.completion_tokens
        assert stats.completion_tokens / len(generating) >= 2.0, (len(generating), stats.completion_tokens)


def _texts(stream) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in stream)


@pytest.mark.parametrize("n_parallel", [1, 2])
def test_two_streams_read_alternately_in_one_thread(tiny_f32, alone, n_parallel):
    """The old lock held across yield hung here; with one slot the second waits its turn."""
    with _model(tiny_f32, n_parallel) as model:
        first = model.create_chat_completion(REQUESTS["text"](), max_tokens=N_TOKENS, temperature=0, stream=True)
        second = model.create_chat_completion(REQUESTS["image"](), max_tokens=N_TOKENS, temperature=0, stream=True)
        parts = {"first": [], "second": []}
        live = {"first": first, "second": second}
        deadline = time.monotonic() + 60
        while live:
            assert time.monotonic() < deadline, "alternate reading hung"
            for name, stream in list(live.items()):
                chunk = next(stream, None)
                if chunk is None:
                    del live[name]
                else:
                    parts[name].append(chunk["choices"][0]["delta"].get("content", ""))
        assert "".join(parts["first"]) == alone["text"][1]
        assert "".join(parts["second"]) == alone["image"][1]


def _idle(model: Phi4MM, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while model.engine.scheduler.running or model.engine.scheduler.waiting:
        assert time.monotonic() < deadline, "a sequence was not freed"
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["close", "drop", "drop-unstarted"])
def test_an_unfinished_stream_frees_its_sequence(tiny_f32, alone, how):
    with _model(tiny_f32, 1) as model:
        stream = model.create_chat_completion(REQUESTS["long"](), max_tokens=100000, temperature=1.0, stream=True)
        if how != "drop-unstarted":
            next(stream)
            next(stream)
        if how == "close":
            stream.close()
        del stream
        gc.collect()
        _idle(model)
        assert model.engine.scheduler.stats.cancelled == 1
        assert _greedy(model, REQUESTS["text"]()) == alone["text"][1]  # the next call runs, and right


def test_an_abandoned_stream_does_not_block_others(tiny_f32, alone):
    """A stream kept but never read again runs on to its end in the background."""
    with _model(tiny_f32, 1) as model:
        kept = model.create_chat_completion(REQUESTS["long"](), max_tokens=50, temperature=1.0, stream=True)
        next(kept)
        assert _greedy(model, REQUESTS["text"]()) == alone["text"][1]
        assert sum(1 for _ in kept) >= 1


def test_should_stop_cancels_mid_prompt(tiny_f32):
    with _model(tiny_f32, 1, n_batch=16) as model:
        flag = threading.Event()
        stream = model.create_chat_completion(REQUESTS["long"](), max_tokens=10, temperature=0, stream=True,
                                              should_stop=flag.is_set)
        flag.set()
        with pytest.raises(Cancelled):
            list(stream)
        _idle(model)


def test_many_threads_many_requests(tiny_f32, alone):
    names = ["text", "image", "audio", "long"] * 2
    with _model(tiny_f32, 3) as model:
        results = _run_together(lambda i: _greedy(model, REQUESTS[names[i]]()), list(range(len(names))))
    for i, name in enumerate(names):
        assert results[i] == alone[name][1], (name, results[i])


def test_prefix_reuse_only_under_the_same_adapter_set(tiny_f32):
    system = {"role": "system", "content": "You are a careful assistant. " * 8}
    with _model(tiny_f32, 2) as model:
        first = model.create_chat_completion([system, {"role": "user", "content": "one"}], max_tokens=2)
        second = model.create_chat_completion([system, {"role": "user", "content": "two"}], max_tokens=2)
        with_image = model.create_chat_completion(
            [system, {"role": "user", "content": [{"type": "image", "image": _picture(5)}, _text("two")]}],
            max_tokens=2)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 40  # the system prompt's rows
    assert with_image["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # vision LoRA: not reused


def test_batched_sequences_cross_the_longrope_boundary(tiny_f32):
    """Two sequences grow past n_orig together; each equals its own run alone."""
    from conftest import TINY_N_ORIG

    prompts = {n: [{"role": "user", "content": f"{n} " + "a b c d " * 30}] for n in ("x", "y")}

    def run(model, name):
        out = model.create_chat_completion(prompts[name], max_tokens=TINY_N_ORIG, temperature=1.0, seed=7)
        assert out["usage"]["total_tokens"] > TINY_N_ORIG
        return out["choices"][0]["message"]["content"]

    solo = {}
    for name in prompts:
        with _model(tiny_f32, 1) as model:
            solo[name] = run(model, name)
    with _model(tiny_f32, 2) as model:
        together = _run_together(lambda n: run(model, n), list(prompts))
        assert set(model.engine.contexts.contexts) == {("short", None), ("long", None)}
    assert together == solo


class _Recorder:
    """Wraps llama.Context.set_adapters and Contexts.acquire: adapter-set calls per context, and
    the most contexts busy at once and KV cells allocated at once."""

    def __init__(self, monkeypatch):
        from phi4mm.engine import contexts, llama

        self.calls: dict[int, list] = {}
        self.most_busy_contexts = 0
        self.most_cells = 0
        set_adapters, acquire = llama.Context.set_adapters, contexts.Contexts.acquire
        recorder = self

        def counted(ctx, adapters):
            recorder.calls.setdefault(id(ctx), []).append(tuple(a.path for a, _ in adapters))
            return set_adapters(ctx, adapters)

        def watched(pool, kind, keys, lora):
            got = acquire(pool, kind, keys, lora)
            busy = sum(any(s.busy for s in slots) for slots in pool.slots.values())
            recorder.most_busy_contexts = max(recorder.most_busy_contexts, busy)
            recorder.most_cells = max(recorder.most_cells, pool.cells_allocated())
            return got

        monkeypatch.setattr(llama.Context, "set_adapters", counted)
        monkeypatch.setattr(contexts.Contexts, "acquire", watched)


def test_three_adapter_sets_in_flight_keep_their_adapters_and_equal_solo(tiny_f32, alone, monkeypatch):
    """Text, image and audio requests run at once, each in the context of its adapter set (one
    slot each): no step changes a context's adapters (each context is given its set once, when it
    is created), all three contexts are busy together, and every output equals its solo run.
    (The tiny model's image prompt is past n_orig, so its context is a long one: a 2 MiB budget
    holds the three contexts at once.)"""
    recorder = _Recorder(monkeypatch)
    batch = ("text", "image", "audio")
    with _model(tiny_f32, 1, kv_budget_mb=2) as model:
        texts = _run_together(lambda n: _greedy(model, REQUESTS[n]()), batch)
        texts_again = _run_together(lambda n: _greedy(model, REQUESTS[n]()), batch)
        loras = {lora for _, lora in model.engine.contexts.contexts}
    assert loras == {None, "vision", "speech"}
    assert recorder.calls and all(len(calls) == 1 for calls in recorder.calls.values()), recorder.calls
    assert recorder.most_busy_contexts == 3
    for name in batch:
        assert texts[name] == texts_again[name] == alone[name][1], (name, texts[name], alone[name][1])


def test_kv_budget_is_honoured_requests_wait_and_the_next_is_fine(tiny_f32, alone, monkeypatch):
    """A budget of one long context (1 MiB: 1024 cells of 1 KiB in the tiny model): the long
    request's context fits only once the others' contexts are idle and closed; every request
    waits for it rather than failing, gives its solo output, and the budget is never exceeded."""
    recorder = _Recorder(monkeypatch)
    batch = ("text", "image", "audio", "long")
    with _model(tiny_f32, 1, kv_budget_mb=1) as model:
        contexts = model.engine.contexts
        assert model.engine.model.kv_bytes_per_cell == 1024 and contexts.budget_cells == 1024
        texts = _run_together(lambda n: _greedy(model, REQUESTS[n]()), batch)
        assert contexts.context_stats.closed_for_room >= 1
        assert _greedy(model, REQUESTS["image"]()) == alone["image"][1]
    assert recorder.most_cells <= 1024
    for name in batch:
        assert texts[name] == alone[name][1], (name, texts[name])


def test_kv_budget_below_one_long_context_is_refused(tiny_f32):
    from phi4mm.errors import InputError

    with pytest.raises(InputError, match="kv_budget_mb is 1, expected at least 2"):
        _model(tiny_f32, 2, kv_budget_mb=1)


def test_idle_contexts_are_released_and_come_back(tiny_f32, alone):
    """Contexts unused for context_idle_s are closed (memory follows the mix of modalities); the
    next request of that mode gets a new context and the same output."""
    with _model(tiny_f32, 1) as model:
        contexts = model.engine.contexts
        assert _greedy(model, REQUESTS["audio"]()) == alone["audio"][1]
        assert ("short", "speech") in contexts.contexts
        n_open = len(contexts.contexts)
        assert contexts.release_idle(time.monotonic() + contexts.idle_release_s) == n_open
        assert not contexts.contexts and contexts.context_stats.closed_idle >= 2
        assert _greedy(model, REQUESTS["audio"]()) == alone["audio"][1]
        assert set(contexts.contexts) == {("short", "speech")}


def test_a_new_conversation_does_not_take_the_slot_of_another_for_a_shared_system_prompt(tiny_f32):
    """Two slots; A's first turn fills one. B shares only the short system prompt with it, so B
    takes the empty slot, and A's second turn finds its whole first prompt still cached. (Taking
    the slot with the longest shared prefix, as before, left A only the system prompt's rows.)"""
    system = {"role": "system", "content": "Be brief."}
    a = [system, {"role": "user", "content": "Conversation A: " + "tell me about the sea. " * 6}]
    b = [system, {"role": "user", "content": "Conversation B: " + "tell me about the hills. " * 6}]
    with _model(tiny_f32, 2) as model:
        a1 = model.create_chat_completion(a, max_tokens=2, temperature=0)
        b1 = model.create_chat_completion(b, max_tokens=2, temperature=0)
        a2 = model.create_chat_completion([*a, a1["choices"][0]["message"], {"role": "user", "content": "more"}],
                                          max_tokens=2, temperature=0)
    assert b1["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert a2["usage"]["prompt_tokens_details"]["cached_tokens"] >= a1["usage"]["prompt_tokens"] - 1
