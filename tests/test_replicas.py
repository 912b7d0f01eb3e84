"""A real `phi4mm serve --replicas 2` on the tiny checkpoint: a local Ray instance, Serve's HTTP
proxy, the gateway and two engine replicas. Conversations stay on their replica and reuse its
KV prefix, a session header keeps its replica, streaming and /metrics work through the proxy, a
replica killed mid-load loses no request and is replaced, and SIGTERM leaves no process behind.
The tests share one server and run in file order (the last two change it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from phi4mm.cluster.affinity import REPLICA_HEADER, affinity_key, preference

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_server import LONG_PROMPT, _free_port  # noqa: E402

pytestmark = [pytest.mark.slow]
pytest.importorskip("ray")

START_TIMEOUT_S = 180


class Replicas:
    def __init__(self, proc: subprocess.Popen, base: str, log: Path):
        self.proc, self.base, self.log = proc, base, log

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.base}/health", timeout=30)

    def replica_ids(self) -> list[str]:
        return sorted(self.health().json()["replica_health"])

    def chat(self, body: dict, headers: dict | None = None, timeout: float = 120) -> httpx.Response:
        return httpx.post(f"{self.base}/v1/chat/completions", json=body, headers=headers or {}, timeout=timeout)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, tiny_q4: Path):
    tmp = tmp_path_factory.mktemp("replicas")
    port, log = _free_port(), tmp / "serve.log"
    cmd = [sys.executable, "-m", "phi4mm.cli", "serve", "--model", str(tiny_q4), "--port", str(port),
           "--replicas", "2", "--threads", "1", "--parallel", "4", "--n-ctx", "2048", "--media-workers", "0"]
    env = {k: v for k, v in os.environ.items() if k != "PHI4MM_API_KEY"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = Replicas(proc, f"http://127.0.0.1:{port}", log)
    started: dict[int, str] = {}
    try:
        _wait_for(lambda: _healthy(server) == 2, START_TIMEOUT_S, server)
        started.update(_descendants(proc.pid))
        yield server
    finally:
        if proc.poll() is None:  # a failed test: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid, start in started.items():
            if _start_time(pid) == start:
                os.kill(pid, signal.SIGKILL)


def _healthy(server: Replicas) -> int:
    try:
        reply = server.health()
    except httpx.TransportError:
        return -1
    return reply.json()["replicas"]["healthy"] if reply.status_code == 200 else -1


def _wait_for(condition, timeout_s: float, server: Replicas) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if condition():
            return time.monotonic() - started
        assert server.proc.poll() is None, server.log.read_text()[-4000:]
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s} s:\n{server.log.read_text()[-4000:]}")


def _conversation(i: int) -> list[dict]:
    return [{"role": "system", "content": f"You are assistant number {i}."},
            {"role": "user", "content": f"Conversation {i}: describe the colour of the sea."}]


def _owner(body: dict, ids: list[str], headers: dict | None = None) -> str:
    return preference(affinity_key(headers or {}, body), ids)[0]


def test_conversations_stay_on_their_replica_and_reuse_its_prefix(replicas: Replicas):
    """8 conversations x 3 turns, 4 at a time: each stays where its first turn went (placed by the
    hash and the load), and its later turns reuse that replica's KV of the whole earlier prompt."""
    ids = replicas.replica_ids()
    assert len(ids) == 2

    def run(i: int) -> list[tuple[str, dict]]:
        messages, turns = _conversation(i), []
        for turn in range(3):
            reply = replicas.chat({"messages": messages, "max_tokens": 6, "temperature": 0})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            turns.append((reply.headers[REPLICA_HEADER], body["usage"]))
            messages = [*messages, {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                        {"role": "user", "content": f"And turn {turn + 2}?"}]
        return turns

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(8)))
    assert {rid for turns in results for rid, _ in turns} == set(ids)  # both replicas served
    for turns in results:
        assert len({rid for rid, _ in turns}) == 1, turns  # every turn on the first turn's replica
        first, *later = [usage for _, usage in turns]
        assert first["prompt_tokens_details"]["cached_tokens"] < first["prompt_tokens"] // 2
        for previous, usage in zip([first, *later], later, strict=False):
            # the whole previous prompt came from the replica's cache
            assert usage["prompt_tokens_details"]["cached_tokens"] >= previous["prompt_tokens"] - 1, turns


def test_a_session_header_keeps_its_replica(replicas: Replicas):
    """Each question is picked so that, without the header, it would go to the other replica."""
    ids = replicas.replica_ids()
    for session in ("alpha", "beta", "gamma"):
        owner = preference(f"session:{session}", ids)[0]
        questions = [q for q in (f"question {n} of {session}" for n in range(100))
                     if _owner({"messages": [{"role": "user", "content": q}]}, ids) != owner][:3]
        for question in questions:
            reply = replicas.chat({"messages": [{"role": "user", "content": question}], "max_tokens": 2},
                                  headers={"x-session-id": session})
            assert reply.status_code == 200 and reply.headers[REPLICA_HEADER] == owner


def test_streaming_and_metrics_work_through_the_proxy(replicas: Replicas):
    body = {"messages": [{"role": "user", "content": "stream, please"}], "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{replicas.base}/v1/chat/completions", json=body, timeout=60) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        assert reply.headers[REPLICA_HEADER] in replicas.replica_ids()
        frames = [line[len("data: "):] for line in reply.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(frame) for frame in frames[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == 8
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])

    metrics = httpx.get(f"{replicas.base}/metrics", timeout=30)
    assert metrics.status_code == 200
    tokens = {s.labels["replica"]: s.value for f in text_string_to_metric_families(metrics.text)
              for s in f.samples if s.name == "phi4mm_completion_tokens_total"}
    assert set(tokens) == set(replicas.replica_ids()) and all(v > 0 for v in tokens.values())
    health = replicas.health().json()
    assert health["replicas"] == {"target": 2, "healthy": 2}


def test_a_killed_replica_loses_no_request_and_is_replaced(replicas: Replicas):
    """12 requests run (and a long stream on the victim) when one replica is SIGKILLed: every
    request is answered 200, the stream under way ends with an error event, and Serve starts a
    replacement."""
    ids = replicas.replica_ids()
    victim = replicas.health().json()["replica_health"][ids[0]]["pid"]
    session = next(s for s in (f"s{n}" for n in range(100)) if preference(f"session:{s}", ids)[0] == ids[0])
    body = {"messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 400, "temperature": 0}

    def one(i: int) -> httpx.Response:
        return replicas.chat({**body, "messages": [{"role": "user", "content": f"{i}: {LONG_PROMPT}"}]})

    # the tiny model may end a turn at any token: stream the greedy prompt that runs longest on the victim
    probes = {p: replicas.chat({"messages": [{"role": "user", "content": p}], "max_tokens": 1500, "temperature": 0},
                               headers={"x-session-id": session}).json()["usage"]["completion_tokens"]
              for p in ("go on", "tell me a long story", "keep talking", "and then?")}
    prompt = max(probes, key=probes.get)
    assert probes[prompt] >= 200, probes
    stream_body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 1500, "temperature": 0,
                   "stream": True}
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        time.sleep(0.3)
        running = replicas.health().json()["in_flight"]
        with httpx.stream("POST", f"{replicas.base}/v1/chat/completions", json=stream_body, timeout=120,
                          headers={"x-session-id": session}) as stream:
            assert stream.headers[REPLICA_HEADER] == ids[0]
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")
            os.kill(victim, signal.SIGKILL)  # the stream has just started; some of the 12 are still running
            frames = [line[len("data: "):] for line in lines if line.startswith("data: ")]
        results = [f.result() for f in futures]
    assert running > 1  # the kill came while requests were being served
    assert [r.status_code for r in results] == [200] * 12, [r.text for r in results if r.status_code != 200]
    assert all(r.json()["choices"][0]["finish_reason"] in ("stop", "length") for r in results)
    cut = json.loads(frames[-2]).get("error", {})  # the stream under way ends with an error event
    assert frames[-1] == "[DONE]" and cut.get("code") == "unavailable", (len(frames), frames[-3:])
    took_s = _wait_for(lambda: _healthy(replicas) == 2 and ids[0] not in replicas.replica_ids(), 120, replicas)
    print(f"replaced in {took_s:.1f} s")


def test_sigterm_drains_then_exits_zero_and_leaves_no_process(replicas: Replicas):
    started = _descendants(replicas.proc.pid)
    assert len(started) >= 5  # GCS, raylet, Serve's controller and proxy, the replicas
    body = {"messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 300, "temperature": 0,
            "stream": True}
    with httpx.stream("POST", f"{replicas.base}/v1/chat/completions", json=body, timeout=60) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith("data: ")
        replicas.proc.send_signal(signal.SIGTERM)  # while this stream is under way
        frames = [line for line in lines if line.startswith("data: ")]
    assert frames[-1] == "data: [DONE]"
    assert json.loads(frames[-2][len("data: "):])["choices"][0]["finish_reason"] in ("stop", "length")
    assert len(frames) > 10
    assert replicas.proc.wait(timeout=90) == 0, replicas.log.read_text()[-4000:]
    time.sleep(1)
    alive = [pid for pid, start in started.items() if _start_time(pid) == start]
    assert not alive, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in alive]


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every living process under `root`."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if (start := _start_time(child)) is not None:
                found[child] = start
                todo.append(child)
    return found


def _start_time(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]
