"""The Serve application: a Gateway in front of N engine replicas routed by conversation.

`application(settings, scaling)` builds it from parsed settings (what `phi4mm serve --replicas`
deploys). `build(args)` is the importable builder for `serve run` / `serve deploy`: its `args` are
the `phi4mm serve` flags as a mapping (`{"model": "/models/phi4mm", "replicas": 2}`), and it
locates (converting once, if needed) the model before any replica starts."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, RequestRouterConfig
from ray.serve.deployment import Application

from phi4mm import store
from phi4mm.cluster.deployments import EngineReplica, Gateway
from phi4mm.cluster.scaling import Scaling, add_replica_arguments, scaling_from_args
from phi4mm.progress import ProgressPrinter
from phi4mm.server.settings import ServerSettings, add_serve_arguments, settings_from_args

ROUTER = "phi4mm.cluster.router:AffinityRouter"
GATEWAY_MAX_ONGOING = 10_000     # the gateway only forwards; each engine replica admits for itself


def application(settings: ServerSettings, scaling: Scaling) -> Application:
    """`settings.n_threads` is per replica; it should already be set (Scaling.threads_per_replica)."""
    threads = settings.n_threads or 1
    engine_options: dict[str, Any] = {
        # One more than the worker admits (parallel running + max_queue waiting), so a full replica
        # answers 429 itself (and the gateway tries the others) instead of Serve queueing silently.
        "max_ongoing_requests": settings.parallel + settings.max_queue + 1,
        "ray_actor_options": {"num_cpus": threads},
        "graceful_shutdown_timeout_s": settings.shutdown_timeout_s,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 30.0,
    }
    if scaling.replicas is None:
        engine_options["autoscaling_config"] = AutoscalingConfig(
            min_replicas=scaling.min_replicas, max_replicas=scaling.max_replicas,
            initial_replicas=max(scaling.min_replicas, 1), target_ongoing_requests=settings.parallel)
    else:
        engine_options["num_replicas"] = scaling.replicas
    if scaling.affinity:
        engine_options["request_router_config"] = RequestRouterConfig(
            request_router_class=ROUTER,
            request_router_kwargs={"load_factor": scaling.load_factor})
    engines = serve.deployment(EngineReplica).options(**engine_options).bind(settings)
    gateway = serve.deployment(Gateway).options(max_ongoing_requests=GATEWAY_MAX_ONGOING,
                                                ray_actor_options={"num_cpus": 0})
    return gateway.bind(engines, settings, scaling.replicas, scaling.affinity)


def parser() -> argparse.ArgumentParser:
    parsed = argparse.ArgumentParser(prog="phi4mm serve")
    add_serve_arguments(parsed)
    add_replica_arguments(parsed)
    return parsed


def settings_and_scaling(args: argparse.Namespace) -> tuple[ServerSettings, Scaling]:
    """Locate (download, convert) the model once, here, and give each replica its thread count."""
    scaling = scaling_from_args(args) if args.replicas is not None else Scaling(replicas=1)
    files = store.locate(args.model, args.quant, progress=ProgressPrinter(), n_threads=args.threads)
    settings = settings_from_args(args, model_dir=files.root)
    return replace(settings, n_threads=scaling.threads_per_replica(args.threads)), scaling


def build(args: Mapping[str, Any]) -> Application:
    """For `serve run phi4mm.cluster.app:build model=DIR replicas=2` and Serve config files."""
    return application(*settings_and_scaling(parser().parse_args(as_flags(args))))


def as_flags(args: Mapping[str, Any]) -> list[str]:
    """{"model": "x", "replicas": 2, "no_ui": true, "allowed_media_dir": ["a", "b"]} ->
    ["--model", "x", "--replicas", "2", "--no-ui", "--allowed-media-dir", "a", "--allowed-media-dir", "b"]"""
    flags: list[str] = []
    for name, value in args.items():
        flag = "--" + str(name).replace("_", "-")
        if isinstance(value, str) and value.lower() in ("true", "false"):  # `serve run ... no_ui=true`
            value = value.lower() == "true"
        if isinstance(value, bool) or value is None:
            flags += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            for item in value:
                flags += [flag, str(item)]
        else:
            flags += [flag, str(value)]
    return flags
