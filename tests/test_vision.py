"""phi4mm.vision (+ phi4mm.weights) against transformers' Phi4MultimodalImageEmbedding, stage by
stage, on the tiny checkpoint converted to GGUF (model-spec.md §6; reference-notes.md §5-6).

Tolerances (the tiny tower: hidden 64, 2 layers run, activations of scale ~5), as max |error|
over max |reference| of the compared stage, with f32 weights: 2e-5 for every stage (observed:
SigLIP features 3.0e-6, pooled 1.5e-6, HD rows 1.5e-6, projected rows 1.6e-6). f16 weights (the
default shipped encoder type) against f32 weights: 1e-3 (observed 6.4e-7: bf16 values are exact
in f16 except the few that are f16-subnormal).
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phi4mm import arrays, nn
from phi4mm.errors import ConfigError
from phi4mm.vision import encoder as vision
from phi4mm.vision.preprocess import ImageCrops
from phi4mm.weights import read_gguf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from namespaces import NAMESPACES, host, on  # noqa: E402

F32_TOL = 2e-5   # max |ours - reference| / max |reference|, f32 weights
F16_TOL = 1e-3   # max |f16 weights - f32 weights| / max |f32 weights|
# (gh, gw, padded patch rows, padded patch columns): a 1-crop fully valid image; a 2x3 grid with
# 27 and 23 valid rows/columns in its last crop row/column (odd, so 2x2 pooling averages one
# padded patch row/column into the kept cells); a 2x1 grid padded by a whole even 16 rows.
CASES = {"1x1-valid": (1, 1, 0, 0), "2x3-odd-pad": (2, 3, 5, 9), "2x1-even-pad": (2, 1, 16, 0)}


def make_crops(gh: int, gw: int, pad_rows: int, pad_cols: int, seed: int = 0) -> ImageCrops:
    """Random pixels in [-1, 1] and masks built as model-spec.md §5.1 steps 5, 8-10 say."""
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(-1, 1, (1 + gh * gw, 3, 448, 448)).astype(np.float32)
    canvas = np.ones((32 * gh, 32 * gw), dtype=bool)
    canvas[32 * gh - pad_rows:] = False
    canvas[:, 32 * gw - pad_cols:] = False
    sub = canvas.reshape(gh, 32, gw, 32).transpose(0, 2, 1, 3).reshape(gh * gw, 32, 32)
    mask = np.concatenate([np.ones((1, 32, 32), dtype=bool), sub])
    uh, uw = math.ceil((32 * gh - pad_rows) / 2), math.ceil((32 * gw - pad_cols) / 2)
    return ImageCrops(pixels, mask, (gh, gw), uh * uw + uh + 273)


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-vision")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_checkpoint.py"), str(root / "ckpt"),
                    "--size", "tiny"], check=True, capture_output=True)
    from phi4mm.converter.convert import convert
    for encoder_type in ("f32", "f16"):
        convert(root / "ckpt", root / encoder_type, quant="f32", encoder_type=encoder_type)
    return root


def load(tiny_dir: Path, encoder_type: str) -> vision.VisionWeights:
    """As the runtime loads it: an f16 file's layer matrices stay float16 in memory."""
    gguf = read_gguf(tiny_dir / encoder_type / f"phi4mm-vision-{encoder_type}.gguf", "phi4mm-vision",
                     keep_f16=True)
    return vision.load_weights(gguf.metadata, gguf.tensors)


@pytest.fixture(scope="session")
def weights(tiny_dir) -> vision.VisionWeights:
    return load(tiny_dir, "f32")


@pytest.fixture(scope="session")
def image_embed(tiny_dir):
    sys.path.insert(0, str(ROOT / "tests"))
    from reference_model import Reference
    return Reference(tiny_dir / "ckpt").model(None).model.embed_tokens_extend.image_embed


@pytest.fixture(scope="session")
def reference_outputs(image_embed):
    """Per case: SigLIP hidden_states[-2], pooled features, HD rows before and after projection."""
    import torch
    outputs, projector_inputs = {}, []
    hook = image_embed.img_projection_up.register_forward_hook(
        lambda module, args, out: projector_inputs.append(args[0][0].numpy().copy()))
    hidden = image_embed.config.hidden_size
    for name, case in CASES.items():
        crops = make_crops(*case)
        pixels, mask = torch.from_numpy(crops.pixels_nchw), torch.from_numpy(crops.patch_mask)
        with torch.no_grad():
            tower = image_embed.img_processor(pixels, patch_attention_mask=mask, output_hidden_states=True)
            pooled = image_embed.get_img_features(pixels, mask)
            spliced = image_embed(torch.full((1, crops.n_tokens), 200010),
                                  torch.zeros(1, crops.n_tokens, hidden), pixels[None],
                                  torch.tensor([[448 * case[0], 448 * case[1]]]), mask[None].float())
        outputs[name] = {"siglip": tower.hidden_states[-2].numpy(), "pooled": pooled.numpy(),
                         "rows": projector_inputs[-1], "projected": spliced[0].numpy()}
    hook.remove()
    return outputs


@pytest.mark.reference
@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("case", CASES)
def test_stages_match_reference(case, namespace, weights, reference_outputs):
    """Every stage, in NumPy and under array-api-strict (the GPU path's portability proof)."""
    crops, ref, w = make_crops(*CASES[case]), reference_outputs[case], on(namespace, weights)
    features = vision.siglip_features(crops.pixels_nchw, crops.patch_mask, w)
    assert host(features, namespace).shape == ref["siglip"].shape
    assert rel_err(host(features, namespace), ref["siglip"]) < F32_TOL
    pooled = vision.pool_2x2(features)
    assert rel_err(host(pooled, namespace), ref["pooled"]) < F32_TOL
    rows = vision.hd_layout(pooled, crops.patch_mask, crops.grid, w.sub_sep, w.glb_sep)
    assert rows.shape == (crops.n_tokens, weights.config.hidden_size)
    assert rel_err(host(rows, namespace), ref["rows"]) < F32_TOL
    assert rel_err(host(vision.project(rows, w), namespace), ref["projected"]) < F32_TOL


@pytest.mark.reference
@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("case", CASES)
def test_encode_image_matches_reference(case, namespace, weights, reference_outputs):
    """The whole path, which runs only the patches that reach the output."""
    crops = make_crops(*CASES[case])
    rows = host(vision.encode_image(crops, on(namespace, weights), crops_per_batch=2,
                                    n_workers=2 if namespace == "numpy" else 1), namespace)
    assert rows.shape == (crops.n_tokens, weights.config.text_hidden_size)
    assert rel_err(rows, reference_outputs[case]["projected"]) < F32_TOL


@pytest.mark.reference
def test_f16_weights_under_array_api_strict(tiny_dir, reference_outputs):
    """A float16 file's layers on a namespace without float16 (the standard has none): moved as
    float32 and still scaled at use; leaving q unscaled (the negative control) is caught."""
    f16 = on("array_api_strict", load(tiny_dir, "f16"))
    crops, expected = make_crops(*CASES["2x3-odd-pad"]), reference_outputs["2x3-odd-pad"]["projected"]
    assert rel_err(host(vision.encode_image(crops, f16), "array_api_strict"), expected) < F16_TOL
    unscaled = dataclasses.replace(f16, layers=tuple(dataclasses.replace(w, q_scale=1.0) for w in f16.layers))
    assert rel_err(arrays.to_host(vision.encode_image(crops, unscaled)), expected) > 100 * F16_TOL


@pytest.mark.reference
def test_without_key_mask_the_comparison_fails(weights, reference_outputs):
    """Negative control: attending to padded patches (vLLM's §9.4 behaviour) is caught."""
    crops = make_crops(*CASES["2x3-odd-pad"])
    features = vision.siglip_features(crops.pixels_nchw, crops.patch_mask, weights, use_key_mask=False)
    assert rel_err(features, reference_outputs["2x3-odd-pad"]["siglip"]) > 100 * F32_TOL


@pytest.mark.reference
def test_causal_attention_would_be_caught(weights, reference_outputs, monkeypatch):
    """Negative control for reference-notes §5.1: a causal tower differs from the reference."""
    def causal(qkv, key_idx, heads, n_heads, out):
        T, D = out.shape
        hd = D // n_heads
        q, k, v = qkv.reshape(T, 3, n_heads, hd).transpose(1, 2, 0, 3)
        s = q @ k.transpose(0, 2, 1) + np.triu(np.full((T, T), -np.inf, np.float32), 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        o = ((p / p.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2)
        out.reshape(T, n_heads, hd)[:, heads] = o[:, heads]
    crops = make_crops(*CASES["1x1-valid"])
    monkeypatch.setattr(vision, "_attention", causal)
    features = vision.siglip_features(crops.pixels_nchw[:1], crops.patch_mask[:1], weights)
    assert rel_err(features, reference_outputs["1x1-valid"]["siglip"][:1]) > 100 * F32_TOL


@pytest.mark.reference
def test_position_ids_match_reference_bucketing(image_embed):
    """Every valid row count nh and column count nw in 1..32 (and masked patches -> 0) against
    the reference embeddings with a position table whose row i is i and a zero patch conv."""
    import torch
    embeddings = image_embed.img_processor.embeddings
    side = 32
    pairs = [(n, side + 1 - n) for n in range(1, side + 1)] + [(3, 3), (32, 32), (7, 25), (31, 1)]
    mask = np.zeros((len(pairs), side, side), dtype=bool)
    for c, (nh, nw) in enumerate(pairs):
        mask[c, :nh, :nw] = True
    with torch.no_grad():
        saved = {k: v.clone() for k, v in embeddings.state_dict().items()}
        embeddings.patch_embedding.weight.zero_()
        embeddings.patch_embedding.bias.zero_()
        embeddings.position_embedding.weight.copy_(torch.arange(side * side, dtype=torch.float32)[:, None])
        try:
            out = embeddings(torch.zeros(len(pairs), 3, 448, 448), torch.from_numpy(mask))
        finally:
            embeddings.load_state_dict(saved)
    expected = out[:, :, 0].numpy().astype(np.int64)
    np.testing.assert_array_equal(vision.position_ids(mask), expected)


def test_position_ids_identity_for_a_full_crop():
    ids = vision.position_ids(np.ones((1, 32, 32), dtype=bool))
    np.testing.assert_array_equal(ids[0], np.arange(1024))


def test_f16_weights_agree_with_f32(tiny_dir, weights):
    """f16 layer matrices kept in memory and upcast per use (q scaled then) give the f32 result;
    leaving q unscaled (the negative control) does not."""
    f16 = load(tiny_dir, "f16")
    assert f16.layers[0].qkv_w.dtype == np.float16 and weights.layers[0].qkv_w.dtype == np.float32
    crops = make_crops(*CASES["2x3-odd-pad"], seed=1)
    ours, exact = vision.encode_image(crops, f16), vision.encode_image(crops, weights)
    assert np.isfinite(ours).all()
    assert rel_err(ours, exact) < F16_TOL
    unscaled = dataclasses.replace(f16, layers=tuple(dataclasses.replace(w, q_scale=1.0) for w in f16.layers))
    assert rel_err(vision.encode_image(crops, unscaled), exact) > 100 * F16_TOL


def test_one_crop_and_padded_multi_crop_images(weights):
    for case in ("1x1-valid", "2x3-odd-pad"):
        crops = make_crops(*CASES[case], seed=2)
        rows = vision.encode_image(crops, weights)
        assert rows.shape == (crops.n_tokens, weights.config.text_hidden_size)
        assert rows.dtype == np.float32 and np.isfinite(rows).all()


@pytest.mark.parametrize("crops_per_batch, n_workers", [(5, 1), (2, 2), (1, 3)])
def test_encode_image_independent_of_batching_and_workers(weights, crops_per_batch, n_workers):
    crops = make_crops(2, 2, 3, 0, seed=3)
    one = vision.encode_image(crops, weights, crops_per_batch=1)
    got = vision.encode_image(crops, weights, crops_per_batch=crops_per_batch, n_workers=n_workers)
    np.testing.assert_allclose(got, one, rtol=0, atol=1e-5 * np.abs(one).max())


def test_erf_against_libm():
    z = np.concatenate([np.linspace(-12, 12, 48001), [0.0, 1e-8, -1e-8, -30.0, 30.0]])
    got = nn.one_plus_erf(z)
    want = np.array([math.erfc(-v) for v in z])
    inside = np.abs(z) <= 10
    assert np.all(np.abs(got - want)[inside] <= 2e-8 * want[inside])
    assert np.all(np.abs(got - want)[~inside] <= 1e-44)


@pytest.mark.reference
def test_gelu_erf_matches_torch():
    import torch
    x = np.linspace(-12, 12, 100001, dtype=np.float32)[None, :]
    want = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    got = x.copy()
    nn.gelu_erf_(got)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-7)


def test_missing_metadata_and_tensor_raise_config_error(tiny_dir):
    gguf = read_gguf(tiny_dir / "f32" / "phi4mm-vision-f32.gguf", "phi4mm-vision")
    metadata = {k: v for k, v in gguf.metadata.items() if k != "phi4mm.vision.n_heads"}
    with pytest.raises(ConfigError) as err:
        vision.load_weights(metadata, gguf.tensors)
    assert err.value.key == "phi4mm.vision.n_heads"
    tensors = {k: v for k, v in gguf.tensors.items() if k != "v.blk.1.ffn_up.bias"}
    with pytest.raises(ConfigError) as err:
        vision.load_weights(gguf.metadata, tensors)
    assert err.value.key == "v.blk.1.ffn_up.bias"
    with pytest.raises(ConfigError) as err:
        gguf.value("phi4mm.vision.nope")
    assert err.value.key == "phi4mm.vision.nope"


def test_read_gguf_checks_architecture(tiny_dir):
    path = tiny_dir / "f16" / "phi4mm-vision-f16.gguf"
    with pytest.raises(ConfigError) as err:
        read_gguf(path, "phi4mm-audio")
    assert err.value.key == "general.architecture"
    gguf = read_gguf(path)
    assert gguf.tensor("v.patch_embd.weight").dtype == np.float32
    assert gguf.tensor("v.patch_embd.weight").shape == (64, 3, 14, 14)
