"""The public Python API on the tiny converted checkpoint: completions, streaming, stops, limits,
typed input errors, quantized conversions."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REUSE_TOLERANCE

from phi4mm import ContextOverflowError, InputError, Phi4MM

HELLO = [{"role": "user", "content": "Hello world, this is a test."}]


def test_completion_shape_and_usage(model_f32):
    out = model_f32.create_chat_completion(HELLO, max_tokens=8, temperature=1.0, seed=1)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = out["usage"]
    assert usage["completion_tokens"] == 8
    assert usage["prompt_tokens"] == len(model_f32.tokenize("<|user|>Hello world, this is a test.<|end|><|assistant|>"))
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert usage["completion_tokens_per_second"] > 0 and usage["completion_seconds"] > 0


def test_streaming_matches_non_streaming(model_f32):
    kwargs = dict(max_tokens=12, temperature=1.0, seed=7)
    whole = model_f32.create_chat_completion(HELLO, **kwargs)["choices"][0]["message"]["content"]
    chunks = list(model_f32.create_chat_completion(HELLO, stream=True, **kwargs))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 12


def test_same_seed_same_text_other_seed_other_text(model_f32):
    def text(seed):
        return model_f32.create_chat_completion(HELLO, max_tokens=10, temperature=1.0, seed=seed)[
            "choices"][0]["message"]["content"]
    assert text(3) == text(3)
    assert len({text(3), text(4), text(5)}) > 1


def test_stop_string_is_not_emitted(model_f32):
    full = model_f32.create_chat_completion(HELLO, max_tokens=20, temperature=1.0, seed=2)
    content = full["choices"][0]["message"]["content"]
    stop = content[5:8]
    cut = model_f32.create_chat_completion(HELLO, max_tokens=20, temperature=1.0, seed=2, stop=[stop])
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["message"]["content"] == content[:content.index(stop)]


def test_end_of_turn_stops_with_reason_stop(model_f32):
    # the tiny model rarely ends a turn by itself: force it by banning everything else via a grammar
    out = model_f32.create_chat_completion(HELLO, max_tokens=5, temperature=0,
                                           response_format={"type": "json_schema", "json_schema": {
                                               "schema": {"type": "object", "properties": {}, "required": []}}})
    assert out["choices"][0]["finish_reason"] in ("stop", "length")
    assert out["choices"][0]["message"]["content"].startswith("{")


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ([{"role": "robot", "content": "x"}], "role is 'robot'"),
    ([{"role": "user"}], "string or a list"),
])
def test_bad_messages(model_f32, messages, match):
    with pytest.raises(InputError, match=match):
        model_f32.create_chat_completion(messages)


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 5}, "temperature"), ({"max_tokens": -1}, "max_tokens"),
    ({"top_p": "high"}, "top_p"), ({"stop": 3}, "stop"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
])
def test_bad_parameters(model_f32, kwargs, param):
    with pytest.raises(InputError) as info:
        model_f32.create_chat_completion(HELLO, **kwargs)
    assert info.value.param == param


def test_prompt_longer_than_the_context(model_f32):
    long = [{"role": "user", "content": "word " * 3000}]
    with pytest.raises(ContextOverflowError, match=r"takes \d+ tokens .* at most 1023") as info:
        model_f32.create_chat_completion(long)
    assert info.value.n_ctx == 1023 and info.value.n_prompt_tokens > 1024


def test_errors_raise_before_streaming_starts(model_f32):
    with pytest.raises(InputError):
        model_f32.create_chat_completion([{"role": "x", "content": "y"}], stream=True)


def test_generation_crossing_the_longrope_boundary(model_f32):
    """A sequence that grows past original_max_position_embeddings (256) during generation is
    re-decoded with the long factors and keeps going."""
    from conftest import TINY_N_ORIG

    prompt = [{"role": "user", "content": "a b c d " * 30}]
    n_prompt = len(model_f32.tokenize("<|user|>" + "a b c d " * 30 + "<|end|><|assistant|>"))
    assert n_prompt < TINY_N_ORIG
    out = model_f32.create_chat_completion(prompt, max_tokens=TINY_N_ORIG - n_prompt + 20,
                                           temperature=1.0, seed=0)
    assert out["usage"]["total_tokens"] > TINY_N_ORIG
    assert {kind for kind, _ in model_f32.engine.contexts.slots} == {"short", "long"}


@pytest.mark.parametrize("fixture", ["tiny_q4"])
def test_quantized_conversions_load_and_generate(request, fixture):
    directory = request.getfixturevalue(fixture)
    with Phi4MM.from_pretrained(directory, n_ctx=512, n_threads=2) as model:
        out = model.create_chat_completion(HELLO, max_tokens=6, temperature=1.0, seed=0)
        assert out["usage"]["completion_tokens"] == 6 and out["choices"][0]["message"]["content"]


def test_q8_0_conversion_loads_and_generates(tmp_path, tiny_ckpt):
    from phi4mm.converter.convert import convert

    convert(tiny_ckpt, tmp_path, quant="q8_0")
    with Phi4MM.from_pretrained(tmp_path, n_ctx=512, n_threads=2) as model:
        out = model.create_chat_completion(HELLO, max_tokens=6, temperature=1.0, seed=0)
        assert out["usage"]["completion_tokens"] == 6


def test_hub_layout_directory_is_converted_once_into_the_cache(tmp_path, tiny_ckpt):
    cache = tmp_path / "cache"
    with Phi4MM.from_pretrained(tiny_ckpt, quant="q8_0", cache_dir=cache, n_ctx=256) as model:
        first = model.files.root
    manifests = list(cache.rglob("manifest.json"))
    assert len(manifests) == 1 and first == manifests[0].parent
    stamp = manifests[0].stat().st_mtime_ns
    with Phi4MM.from_pretrained(tiny_ckpt, quant="q8_0", cache_dir=cache, n_ctx=256) as model:
        assert model.files.root == first
    assert manifests[0].stat().st_mtime_ns == stamp  # reused, not converted again


def test_converted_directory_with_another_quant_is_an_error(tiny_f32):
    with pytest.raises(InputError, match="holds a f32 conversion but quant='q4_k_m'"):
        Phi4MM.from_pretrained(tiny_f32, quant="q4_k_m")


def test_should_stop_cancels_prefill_and_generation_and_leaves_the_cache_sound(model_f32):
    from phi4mm import Cancelled

    msgs = [{"role": "user", "content": "count with me " * 20}]
    before = model_f32.prompt_logits(msgs)
    elsewhere = model_f32.prompt_logits(HELLO)  # move the KV elsewhere
    calls = iter(range(1000))
    gen = model_f32.create_chat_completion(msgs, max_tokens=50, stream=True, temperature=1.0, seed=0,
                                           should_stop=lambda: next(calls) >= 3)
    with pytest.raises(Cancelled):
        list(gen)
    after = model_f32.prompt_logits(msgs)
    assert np.abs(before - after).max() <= REUSE_TOLERANCE * np.abs(before).max()  # measured, conftest.py
    assert np.abs(before - elsewhere).max() > 10 * REUSE_TOLERANCE * np.abs(before).max()  # told apart


def test_should_stop_before_any_work(model_f32):
    from phi4mm import Cancelled

    with pytest.raises(Cancelled):
        list(model_f32.create_chat_completion(HELLO, stream=True, should_stop=lambda: True))


def test_extra_buffer_types_are_off_in_a_build_with_amx():
    """llama.cpp's AMX matmul crashes on a Q4_K_M decoder (the quantized test above, on a Xeon with
    AMX-INT8); its extra buffer types are turned off in such a build, kept elsewhere."""
    from phi4mm.engine import llama

    assert not llama.use_extra_buffers("CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 | ")
    assert llama.use_extra_buffers("CPU : AVX2 = 1 | AVX512 = 1 | REPACK = 1 | ")


def test_gpu_layers_on_this_build(tiny_q4):
    """n_gpu_layers=10: without a GPU backend, an OffloadWarning that says so and where to get one,
    then the CPU; with one, the tiny model's 3 layers (2 blocks + output) on the GPU. Either way
    it generates, and placement() (what /health reports) says where everything is."""
    from phi4mm import OffloadWarning
    from phi4mm.engine import llama

    if llama.gpu_offload_supported():
        with Phi4MM.from_pretrained(tiny_q4, n_ctx=512, n_threads=2, n_gpu_layers=10) as model:
            assert (model.offload.n_gpu_layers, model.offload.n_layers) == (3, 3)
            _generates(model)
            placed = model.placement()
            assert placed["text_decoder"]["layers_on_gpu"] == 3 and placed["text_decoder"]["kv_on_gpu"] is True
            assert placed["gpu"]["offload_supported"] is True and placed["gpu"]["devices"]
        return
    with pytest.warns(OffloadWarning) as caught:
        model = Phi4MM.from_pretrained(tiny_q4, n_ctx=512, n_threads=2, n_gpu_layers=10)
    with model:
        (warning,) = caught
        text = str(warning.message)
        assert "GPU offload was asked for (10 decoder layers)" in text
        assert "the installed llama-cpp-python has no GPU backend" in text and "runs on the CPU" in text
        assert 'README, section "GPU"' in text and "-DGGML_CUDA=on" in text
        assert model.offload.describe() == "decoder: on the CPU (this llama.cpp build has no GPU backend)"
        _generates(model)
        assert model.placement() == {
            "text_decoder": {"layers_on_gpu": 0, "layers": 3, "devices": [], "kv_on_gpu": False,
                             "lora": {"loaded": [], "on_gpu": False}},
            "gpu": {"offload_supported": False, "devices": []},
            "encoders": {"device": "cpu", "weight_bytes": {}},  # loaded on the first image / clip
        }


def _generates(model: Phi4MM) -> None:
    out = model.create_chat_completion(HELLO, max_tokens=4, temperature=0)
    assert out["usage"]["completion_tokens"] == 4 and out["choices"][0]["message"]["content"]


def test_bad_device_settings_are_input_errors(tiny_q4):
    for kwargs, param in (({"encoder_device": "tpu"}, "encoder_device"), ({"n_gpu_layers": -2}, "n_gpu_layers"),
                          ({"main_gpu": -1}, "main_gpu")):
        with pytest.raises(InputError) as caught:
            Phi4MM.from_pretrained(tiny_q4, n_ctx=512, n_threads=2, **kwargs)
        assert caught.value.param == param
