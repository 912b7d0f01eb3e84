"""`phi4mm serve --replicas 2` on this machine, measured (README: Many machines).

    python scripts/bench_replicas.py OUT [--conversations 8] [--turns 4] [--skip-throughput]

OUT is a converted directory (the full-size random checkpoint for real figures). In one run:
1. 2 replicas with conversation affinity: start-up until /health says 2 healthy, the RSS of every
   process it started (engine replicas apart from Ray's own), then `conversations` chats of `turns`
   turns (`concurrency` at a time, a random pause before each later turn), each with its own image
   in the first turn; per turn the replica, TTFT, prompt rows and cached rows.
2. The same with Serve's default router (--no-affinity).
3. Aggregate decode throughput, 8 text requests 4 at a time: the single process (all cores) against
   2 replicas (a core each), and the start-up and RSS of the single process for comparison.
Prints one JSON object per phase and a summary table."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPLICA_HEADER = "x-phi4mm-replica"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, model: Path, flags: list[str], log: Path, healthy: int | None):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "phi4mm.cli", "serve", "--model", str(model), "--port", str(self.port),
               "--n-ctx", "4096", *flags]
        started = time.perf_counter()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.log = log
        while True:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            try:
                reply = httpx.get(f"{self.base}/health", timeout=10)
                body = reply.json() if reply.status_code == 200 else {}
                if reply.status_code == 200 and (healthy is None or body.get("replicas", {}).get("healthy") == healthy):
                    break
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.5)
        self.startup_s = time.perf_counter() - started

    def rss_mib(self) -> dict[str, float]:
        """MiB resident per kind of process under this server (the driver included)."""
        totals: dict[str, float] = {}
        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                              if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                continue
            kind = _kind(name, pid == self.proc.pid)
            totals[kind] = totals.get(kind, 0.0) + rss_kb / 1024
        return totals

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        time.sleep(2)


def _kind(name: str, is_driver: bool) -> str:
    if is_driver:
        return "phi4mm serve (driver)"
    if "EngineReplica" in name:
        return "engine replicas"
    if "decoder_process" in name:
        return "media decoders"
    return "Ray and Serve (GCS, raylet, agents, controller, proxy, gateway)"


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _image_url(seed: int) -> str:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, 448)[None, :, None] * rng.uniform(0.3, 1.0, (1, 1, 3))
    pixels = np.clip(gradient + rng.normal(0, 25, (448, 448, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _turn(server: Server, messages: list, max_tokens: int) -> dict:
    """One streamed turn: its replica, TTFT (first content token), usage and reply."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    started, ttft, text, usage = time.perf_counter(), None, [], None
    with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body, timeout=900) as reply:
        assert reply.status_code == 200, reply.read()
        replica = reply.headers.get(REPLICA_HEADER, "single")
        for line in reply.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    ttft = ttft if ttft is not None else time.perf_counter() - started
                    text.append(choice["delta"]["content"])
    return {"replica": replica, "ttft_s": ttft, "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"], "reply": "".join(text)}


def conversations(server: Server, count: int, turns: int, max_tokens: int, concurrency: int,
                  think_s: float) -> dict:
    def run(i: int) -> list[dict]:
        pause = random.Random(i)  # the same think times in every phase
        messages = [{"role": "system", "content": f"You are assistant number {i}."},
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _image_url(i)}},
                                                 {"type": "text", "text": "What is in this picture?"}]}]
        out = []
        for n in range(turns):
            if n:
                time.sleep(pause.uniform(0, 2 * think_s))  # the user reads, then types the next turn
            result = _turn(server, messages, max_tokens)
            out.append(result)
            messages = [*messages, {"role": "assistant", "content": result["reply"]},
                        {"role": "user", "content": f"Tell me more, part {n + 2}."}]
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        runs = list(pool.map(run, range(count)))
    wall_s = time.perf_counter() - started
    later = [t for run_ in runs for t in run_[1:]]
    full_hits = sum(t["cached_tokens"] >= prev["prompt_tokens"] - 1
                    for run_ in runs for prev, t in zip(run_, run_[1:], strict=False))
    return {"wall_s": round(wall_s, 1),
            "first_turn_prompt_tokens": statistics.median(r[0]["prompt_tokens"] for r in runs),
            "first_turn_ttft_s_median": round(statistics.median(r[0]["ttft_s"] for r in runs), 2),
            "later_turns": len(later),
            "later_turns_full_prefix_hits": full_hits,
            "later_rows_cached_fraction": round(sum(t["cached_tokens"] for t in later)
                                                / sum(t["prompt_tokens"] for t in later), 3),
            "later_ttft_s_median": round(statistics.median(t["ttft_s"] for t in later), 2),
            "later_ttft_s_p90": round(float(np.percentile([t["ttft_s"] for t in later], 90)), 2),
            "conversations_on_one_replica": sum(len({t["replica"] for t in run_}) == 1 for run_ in runs),
            "replica_changes": sum(a["replica"] != b["replica"] for run_ in runs for a, b in zip(run_, run_[1:],
                                                                                                  strict=False)),
            "replicas_used": sorted({t["replica"] for run_ in runs for t in run_})}


def throughput(server: Server, requests: int = 8, max_tokens: int = 32) -> dict:
    def one(i: int) -> int:
        body = {"messages": [{"role": "user", "content": f"Request {i}: write about rivers and hills."}],
                "max_tokens": max_tokens, "temperature": 1.0, "seed": i}
        reply = httpx.post(f"{server.base}/v1/chat/completions", json=body, timeout=900)
        assert reply.status_code == 200, reply.text
        return reply.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        tokens = sum(pool.map(one, range(requests)))
    wall_s = time.perf_counter() - started
    return {"completion_tokens": tokens, "wall_s": round(wall_s, 1), "tokens_per_s": round(tokens / wall_s, 2)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens generated per turn (default 8)")
    ap.add_argument("--concurrency", type=int, default=8, help="conversations under way at once (default 8)")
    ap.add_argument("--think-s", type=float, default=5.0, help="mean pause before each later turn, uniform "
                    "over [0, 2x] (default 5; with none, a closed loop of clients keeps each conversation where "
                    "it is: its replica is the one it just freed)")
    ap.add_argument("--parallel", type=int, default=4, help="slots per replica (default 4: the conversations "
                    "a replica owns fit its slots, so misses come from routing, not from eviction)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--logs", type=Path, default=Path("/tmp"))
    args = ap.parse_args(argv)
    print(f"load average before: {os.getloadavg()}", flush=True)
    results = {}
    slots = ["--parallel", str(args.parallel)]
    for name, flags in (("affinity", ["--replicas", "2"]), ("default_router", ["--replicas", "2", "--no-affinity"])):
        server = Server(args.model, flags + slots, args.logs / f"bench_replicas_{name}.log", healthy=2)
        try:
            phase = {"startup_s": round(server.startup_s, 1), "rss_mib_idle": _rounded(server.rss_mib())}
            phase["conversations"] = conversations(server, args.conversations, args.turns, args.max_tokens,
                                                   args.concurrency, args.think_s)
            if name == "affinity" and not args.skip_throughput:
                phase["throughput"] = throughput(server)
            phase["rss_mib_after"] = _rounded(server.rss_mib())
        finally:
            server.stop()
        results[name] = phase
        print(json.dumps({name: phase}), flush=True)
    if not args.skip_throughput:
        server = Server(args.model, slots, args.logs / "bench_replicas_single.log", healthy=None)
        try:
            phase = {"startup_s": round(server.startup_s, 1), "rss_mib_idle": _rounded(server.rss_mib()),
                     "throughput": throughput(server)}
        finally:
            server.stop()
        results["single_process"] = phase
        print(json.dumps({"single_process": phase}), flush=True)
    print(f"load average after: {os.getloadavg()}", flush=True)
    _table(results)


def _rounded(rss: dict[str, float]) -> dict[str, float]:
    return {k: round(v) for k, v in sorted(rss.items())}


def _table(results: dict) -> None:
    print("\n| | affinity | Serve's default router |\n|---|---|---|")
    a, d = results["affinity"]["conversations"], results["default_router"]["conversations"]
    for label, key in (("turns 2+ with the whole earlier prompt cached", "later_turns_full_prefix_hits"),
                       ("prompt rows of turns 2+ served from cache", "later_rows_cached_fraction"),
                       ("TTFT of turns 2+, median (s)", "later_ttft_s_median"),
                       ("TTFT of turns 2+, p90 (s)", "later_ttft_s_p90"),
                       ("conversations on one replica", "conversations_on_one_replica"),
                       ("turns that changed replica", "replica_changes"),
                       ("wall time (s)", "wall_s")):
        print(f"| {label} | {a[key]} | {d[key]} |")


if __name__ == "__main__":
    main()
