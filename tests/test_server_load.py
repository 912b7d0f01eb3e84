"""Load and faults against a real `phi4mm serve --parallel 4` on loopback (tiny Q4_K_M model):
16 concurrent clients mixing text, image and streaming; the overflow answered 429 with the OpenAI
body and no request lost; RSS bounded; clients that disconnect mid-prompt and mid-stream freed
(as /metrics shows); SIGTERM under load lets the streams in flight finish and exits 0."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from test_server import LONG_PROMPT, Server, _env, _start, _stop, raw_post, read_frames

pytestmark = pytest.mark.slow
N_CLIENTS, REQUESTS_PER_CLIENT = 16, 3
RSS_BOUND_KB = 64 << 10   # the load may not grow the server by more than 64 MiB after its warm-up
FLAGS = ["--parallel", "4", "--max-queue", "4", "--prefill-chunk", "4", "--n-ctx", "4096"]


def _image_url(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _body(kind: str, i: int) -> dict:
    content: object = f"Request {i}: tell me a story."
    if "image" in kind:
        content = [{"type": "image_url", "image_url": {"url": _image_url(i % 3)}},
                   {"type": "text", "text": "Describe it."}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 120, "temperature": 0.7,
            "seed": i, "stream": "stream" in kind}


KINDS = ("text", "image", "text-stream", "image-stream")


def metrics(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def _check_reply(kind: str, reply: httpx.Response) -> str:
    """'ok' or 'overflow'; anything else fails the test."""
    if reply.status_code == 429:
        error = reply.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full", error
        return "overflow"
    assert reply.status_code == 200, (reply.status_code, reply.text[:500])
    if "stream" not in kind:
        body = reply.json()
        choice = body["choices"][0]
        assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")
        assert body["usage"]["completion_tokens"] >= 1
        return "ok"
    frames = [line[len("data: "):] for line in reply.text.splitlines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]", frames[-3:]
    chunks = [json.loads(f) for f in frames[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    return "ok"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_q4: Path):
    server = _start(tmp_path_factory.mktemp("load-server"), tiny_q4, FLAGS, _env(), "unused")
    yield server
    _stop(server)


def test_sixteen_clients_mixing_modalities(server: Server):
    for i, kind in enumerate(KINDS):  # warm-up: every kind once, media caches filled
        assert _check_reply(kind, httpx.post(f"{server.base}/v1/chat/completions", json=_body(kind, i),
                                             timeout=120)) == "ok"
    rss_warm = server.rss_kb()
    outcomes: list[str] = []
    barrier = threading.Barrier(N_CLIENTS)

    def client(c: int) -> None:
        with httpx.Client(timeout=120) as http:
            barrier.wait()
            for r in range(REQUESTS_PER_CLIENT):
                kind = KINDS[(c + r) % len(KINDS)]
                reply = http.post(f"{server.base}/v1/chat/completions", json=_body(kind, c * 10 + r))
                outcomes.append(_check_reply(kind, reply))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == N_CLIENTS * REQUESTS_PER_CLIENT  # every request answered, none lost
    assert outcomes.count("ok") >= 8 and outcomes.count("overflow") >= 1, outcomes
    m = metrics(server)
    assert m["phi4mm_requests_rejected_total"] == outcomes.count("overflow")
    assert m["phi4mm_sequences_finished_total"] == outcomes.count("ok") + len(KINDS) + 1  # + warm-up decode
    assert m["phi4mm_sequences_running"] == 0 and m["phi4mm_requests_running"] == 0
    growth_kb = server.rss_kb() - rss_warm
    print(f"RSS after warm-up {rss_warm} kB, grew by {growth_kb} kB; outcomes {outcomes.count('ok')} ok, "
          f"{outcomes.count('overflow')} answered 429")
    assert growth_kb < RSS_BOUND_KB, growth_kb


def _wait_metrics(server: Server, timeout_s: float = 10, **expected: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while any((m := metrics(server))[k] != v for k, v in expected.items()):
        assert time.monotonic() < deadline, {k: m[k] for k in expected}
        time.sleep(0.02)  # polling interval
    return m


def test_disconnects_mid_prompt_and_mid_stream_free_their_sequences(server: Server):
    before = _wait_metrics(server, phi4mm_sequences_running=0)
    streaming = raw_post(server, {"messages": [{"role": "user", "content": LONG_PROMPT}],  # hundreds of tokens
                                     "stream": True, "max_tokens": 100000, "temperature": 0})
    read_frames(streaming, 3)  # decoding: from now on prompts are fed 4 rows per step
    rows_before = metrics(server)["phi4mm_prompt_rows_total"]
    long_prompt = "one two three four five six seven eight " * 60  # ~1700 rows
    prompting = raw_post(server, {"messages": [{"role": "user", "content": long_prompt}], "stream": True,
                                     "max_tokens": 5})
    read_frames(prompting, 1)   # the role chunk comes at once; the prompt is still being decoded
    prompting.close()
    m = _wait_metrics(server, phi4mm_sequences_running=1,
                      phi4mm_sequences_cancelled_total=before["phi4mm_sequences_cancelled_total"] + 1)
    rows_decoded = m["phi4mm_prompt_rows_total"] - rows_before
    streaming.close()
    _wait_metrics(server, phi4mm_sequences_running=0, phi4mm_kv_slots_busy=0,
                  phi4mm_sequences_cancelled_total=before["phi4mm_sequences_cancelled_total"] + 2)
    reply = httpx.post(f"{server.base}/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 1})
    assert _check_reply("text", reply) == "ok"
    n_prompt = reply.json()["usage"]["prompt_tokens"]
    assert rows_decoded < n_prompt / 2, f"the prompt was not cut short: {rows_decoded} of {n_prompt} rows"


def test_metrics_exposition(server: Server):
    reply = httpx.get(f"{server.base}/metrics", timeout=10)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    m = metrics(server)
    for name in ("phi4mm_requests_running", "phi4mm_requests_queued", "phi4mm_tokens_per_second",
                 "phi4mm_queue_wait_seconds_count", "phi4mm_kv_cells_used", "phi4mm_prefix_cache_hits_total",
                 "phi4mm_media_cache_hits_total", "phi4mm_completion_tokens_total"):
        assert name in m, name
    assert m["phi4mm_kv_slots"] == 4 and m["phi4mm_completion_tokens_total"] > 0
    assert 1 <= m["phi4mm_kv_contexts"] and 0 < m["phi4mm_kv_cells_allocated"] <= m["phi4mm_kv_budget_cells"]


def test_sigterm_under_load_finishes_streams_and_exits_0(tmp_path: Path, tiny_q4: Path):
    server = _start(tmp_path, tiny_q4, FLAGS, _env(), "unused")
    results: dict[int, list[str]] = {}
    started = threading.Barrier(5)

    def stream(i: int) -> None:
        body = _body("text-stream", i) | {"max_tokens": 150}
        with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, timeout=60) as reply:
            lines = reply.iter_lines()
            first = next(lines)
            started.wait()
            results[i] = [first, *lines]

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    started.wait(30)
    server.proc.terminate()
    time.sleep(0.5)
    with pytest.raises(httpx.TransportError):  # new requests are refused once shutdown starts
        httpx.post(f"{server.base}/v1/chat/completions", json=_body("text", 9), timeout=5)
    for t in threads:
        t.join(60)
    assert server.proc.wait(timeout=60) == 0, server.log.read_text()[-3000:]
    for i in range(4):
        frames = [line for line in results[i] if line.startswith("data: ")]
        assert frames[-1] == "data: [DONE]", frames[-3:]
        assert json.loads(frames[-2][len("data: "):])["choices"][0]["finish_reason"] in ("stop", "length")
