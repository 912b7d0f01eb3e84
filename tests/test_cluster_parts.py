"""The parts of `phi4mm serve --replicas` that run without a Ray instance: the in-process ASGI
bridge an engine replica serves through, the merged /metrics, the scaling flags, the Serve
application builder's flags, and the CLI's message when the extra is missing."""

from __future__ import annotations

import asyncio
import sys

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from phi4mm.cluster.bridge import HttpRequest, ResponseStart, call_app
from phi4mm.cluster.scaling import Scaling
from phi4mm.errors import ConfigError
from phi4mm.server.settings import ServerSettings


def _app(events: list):
    async def echo(request: Request):
        body = await request.json()
        return JSONResponse({"got": body, "state": request.state.service, "q": request.query_params.get("q"),
                             "session": request.headers.get("x-session-id")}, status_code=201)

    async def stream(request: Request):
        async def chunks():
            try:
                for i in range(1000):
                    yield f"data: {i}\n\n".encode()
                    await asyncio.sleep(0.001)
            finally:
                events.append("stream closed")
        return StreamingResponse(chunks(), media_type="text/event-stream")

    return Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/stream", stream)])


def test_the_bridge_runs_one_request_through_the_app_with_its_state_headers_and_query():
    request = HttpRequest("POST", "/echo", b"q=1", ((b"content-type", b"application/json"), (b"x-session-id", b"s")),
                          b'{"a": 2}')

    async def run():
        return [item async for item in call_app(_app([]), request, {"service": "the service"})]

    start, body = asyncio.run(run())
    assert isinstance(start, ResponseStart) and start.status == 201
    assert (b"content-type", b"application/json") in start.headers
    assert body == b'{"got":{"a":2},"state":"the service","q":"1","session":"s"}'
    assert request.header("X-Session-Id") == "s" and request.header("missing") is None


def test_the_bridge_streams_and_closing_it_early_ends_the_app_s_response():
    events: list = []

    async def run():
        chunks = call_app(_app(events), HttpRequest("GET", "/stream"), {})
        start = await anext(chunks)
        first_three = [await anext(chunks) for _ in range(3)]
        await chunks.aclose()  # the gateway's client went away
        await asyncio.sleep(0.05)
        return start, first_three

    start, first_three = asyncio.run(run())
    assert start.status == 200 and dict(start.headers)[b"content-type"].startswith(b"text/event-stream")
    assert first_three == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
    assert events == ["stream closed"]


def _exposition(count: float, with_gauge: bool) -> str:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    Counter("phi4mm_x", "Things", registry=registry).inc(count)
    Histogram("phi4mm_wait_seconds", "Waits", buckets=(1, 5), registry=registry).observe(count)
    if with_gauge:
        Gauge("phi4mm_y", "Level", registry=registry).set(1)
    return generate_latest(registry).decode()


def test_merged_metrics_label_every_replica_s_series():
    from prometheus_client.parser import text_string_to_metric_families

    from phi4mm.server.metrics import merge_expositions

    body, content_type = merge_expositions({"r1": _exposition(3, False), "r2": _exposition(5, True)})
    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["phi4mm_x"].type == "counter" and families["phi4mm_wait_seconds"].type == "histogram"
    samples = {(s.name, s.labels["replica"], s.labels.get("le")): s.value for f in families.values() for s in f.samples}
    assert samples[("phi4mm_x_total", "r1", None)] == 3 and samples[("phi4mm_x_total", "r2", None)] == 5
    assert samples[("phi4mm_y", "r2", None)] == 1 and ("phi4mm_y", "r1", None) not in samples
    assert samples[("phi4mm_wait_seconds_bucket", "r1", "5.0")] == 1
    assert samples[("phi4mm_wait_seconds_bucket", "r2", "5.0")] == 1
    assert samples[("phi4mm_wait_seconds_bucket", "r1", "1.0")] == 0
    assert body.decode().count("# TYPE phi4mm_x_total counter") == 1  # one family, both replicas in it


def test_scaling_flags_and_threads_per_replica():
    from phi4mm.cli import build_parser
    from phi4mm.cluster.scaling import scaling_from_args

    args = build_parser().parse_args(["serve", "--replicas", "3", "--no-affinity"])
    scaling = scaling_from_args(args)
    assert (scaling.replicas, scaling.affinity) == (3, False)
    assert scaling.threads_per_replica(0, cores=8) == 2 and scaling.threads_per_replica(5, cores=8) == 5
    assert Scaling(replicas=4).threads_per_replica(0, cores=2) == 1
    auto = scaling_from_args(build_parser().parse_args(["serve", "--replicas", "auto", "--max-replicas", "2"]))
    assert auto.replicas is None and auto.most_replicas == 2 and auto.threads_per_replica(0, cores=16) == 8
    assert build_parser().parse_args(["serve"]).replicas is None  # no flag: the single process, no Ray
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--replicas", "many"])
    for bad, match in (({"replicas": 0}, "--replicas is 0"), ({"min_replicas": 3, "max_replicas": 2}, "--min-replicas"),
                       ({"object_store_mb": 10}, "Ray needs >= 75"), ({"load_factor": 0.5}, "load-factor")):
        with pytest.raises(ConfigError, match=match):
            Scaling(**bad)


def test_serve_application_args_become_the_serve_flags():
    pytest.importorskip("ray")
    from phi4mm.cluster.app import as_flags, parser

    flags = as_flags({"model": "/m", "replicas": 2, "no_ui": "true", "affinity_load_factor": 1.5,
                      "allowed_media_dir": ["/a", "/b"], "api_key": None})
    assert flags == ["--model", "/m", "--replicas", "2", "--no-ui", "--affinity-load-factor", "1.5",
                     "--allowed-media-dir", "/a", "--allowed-media-dir", "/b"]
    args = parser().parse_args(flags)
    assert (args.model, args.replicas, args.ui, args.allowed_media_dir) == ("/m", 2, False, ["/a", "/b"])


def test_replicas_without_the_ray_extra_is_a_clear_cli_error(monkeypatch, capsys):
    from phi4mm.cli import main

    for name in [m for m in sys.modules if m == "ray" or m.startswith(("ray.", "phi4mm.cluster.launch",
                                                                         "phi4mm.cluster.app",
                                                                         "phi4mm.cluster.deployments"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError(name="ray")
    assert main(["serve", "--replicas", "2", "--model", "/nonexistent"]) == 2
    assert "pip install 'phi4mm[ray]'" in capsys.readouterr().err


def test_the_application_maps_the_flags_to_serve_options():
    """Fixed replicas, autoscaling, the router, admission and CPUs, as deployed (no Ray started)."""
    pytest.importorskip("ray")
    from phi4mm.cluster.app import ROUTER, application

    settings = ServerSettings(n_threads=3, parallel=2, max_queue=5, shutdown_timeout_s=7.0)
    gateway = application(settings, Scaling(replicas=2, load_factor=1.5))._bound_deployment
    engines = gateway.init_args[0]._bound_deployment
    assert gateway.init_args[1:] == (settings, 2, True)
    assert engines.num_replicas == 2 and engines.max_ongoing_requests == 2 + 5 + 1
    assert engines.ray_actor_options["num_cpus"] == 3 and gateway.ray_actor_options["num_cpus"] == 0
    router = engines._deployment_config.request_router_config
    assert router.request_router_class == ROUTER
    assert router.request_router_kwargs == {"load_factor": 1.5}
    assert engines._deployment_config.graceful_shutdown_timeout_s == 7.0

    auto = application(settings, Scaling(replicas=None, min_replicas=1, max_replicas=3, affinity=False))
    engines = auto._bound_deployment.init_args[0]._bound_deployment
    scaling = engines._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 3, 2)
    assert "AffinityRouter" not in str(engines._deployment_config.request_router_config.request_router_class)
    assert auto._bound_deployment.init_args[2:] == (None, False)
