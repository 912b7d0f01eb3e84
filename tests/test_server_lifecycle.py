"""The server's process life and its settings: what start-up and /health say about the GPU,
SIGTERM while a stream is in flight, and flags that only reach the settings (split from
test_server.py, which keeps the served API)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_server import LONG_PROMPT, _env, _start, _stop  # noqa: E402


def test_health_and_start_up_say_what_sits_on_the_gpu(tmp_path: Path, tiny_q4: Path):
    """The tiny decoder's 3 layers (2 blocks + output): none on the GPU in a CPU-only build, all of
    them in a GPU build (the default); the encoders' device; the start-up line in the log."""
    from phi4mm.engine import llama

    open_server = _start(tmp_path, tiny_q4, [], _env(), "unused")
    try:
        _check_placement(open_server, llama)
    finally:
        _stop(open_server)


def _check_placement(open_server, llama) -> None:
    health = open_server.health()
    decoder, gpu = health["text_decoder"], health["gpu"]
    assert health["encoders"]["device"] == "cpu" and set(health["encoders"]["weight_bytes"]) <= {"vision", "audio"}
    assert decoder["layers"] == 3 and set(decoder["lora"]) == {"loaded", "on_gpu"}
    log = open_server.log.read_text()
    if llama.gpu_offload_supported():
        assert decoder["layers_on_gpu"] == 3 and decoder["kv_on_gpu"] is True and decoder["devices"]
        assert gpu["offload_supported"] is True and gpu["devices"]
        assert all(d["memory_total_bytes"] >= d["memory_free_bytes"] > 0 for d in gpu["devices"])
        assert f"phi4mm: decoder: 3/3 layers on {decoder['devices'][0]}" in log
        return
    assert decoder["layers_on_gpu"] == 0 and decoder["devices"] == [] and decoder["kv_on_gpu"] is False
    assert decoder["lora"]["on_gpu"] is False
    assert gpu == {"offload_supported": False, "devices": []}
    assert "phi4mm: decoder: on the CPU (this llama.cpp build has no GPU backend)" in log
    assert "warning" not in log  # nothing was asked of the GPU


def test_sigterm_lets_the_stream_in_flight_finish(tmp_path: Path, tiny_q4: Path):
    server = _start(tmp_path, tiny_q4, [], _env(), "unused")
    body = {"messages": [{"role": "user", "content": LONG_PROMPT}], "stream": True,
            "temperature": 0, "max_tokens": 300}
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, timeout=60) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith("data: ")
        server.proc.terminate()  # uvicorn stops accepting and waits for this response
        frames = [line for line in lines if line.startswith("data: ")]
    assert frames[-1] == "data: [DONE]"
    assert json.loads(frames[-2][len("data: "):])["choices"][0]["finish_reason"] in ("stop", "length")
    _stop(server)


def test_kv_budget_flag_reaches_the_settings():
    """--kv-budget-mb sets ServerSettings.kv_budget_mb (passed to from_pretrained); none by default;
    a budget below 1 MB is a ConfigError naming it."""
    import pytest as _pytest

    from phi4mm.cli import build_parser
    from phi4mm.errors import ConfigError
    from phi4mm.server.settings import settings_from_args

    assert settings_from_args(build_parser().parse_args(["serve"])).kv_budget_mb is None
    assert settings_from_args(build_parser().parse_args(["serve", "--kv-budget-mb", "1024"])).kv_budget_mb == 1024
    with _pytest.raises(ConfigError, match="kv_budget_mb is 0"):
        settings_from_args(build_parser().parse_args(["serve", "--kv-budget-mb", "0"]))
