"""`phi4mm serve --replicas N`: locate the model once, start a local Ray instance (or join one),
deploy the application with Serve's HTTP proxy on --host/--port, and serve until SIGTERM or
Ctrl-C. Then the gateway drains the requests in flight (ServerSettings.shutdown_timeout_s, as the
single process does), Serve shuts down, and the Ray instance this command started is stopped, so no
Ray process is left behind."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from phi4mm.cluster.app import application, settings_and_scaling
from phi4mm.cluster.scaling import Scaling
from phi4mm.engine import llama
from phi4mm.server.settings import ServerSettings

APP_NAME = "phi4mm"


class _Interrupted(Exception):
    """SIGTERM or Ctrl-C before the application was up."""


def serve_replicas(args: argparse.Namespace) -> int:
    settings, scaling = settings_and_scaling(args)
    llama.plan_offload(settings.gpu_layers, settings.main_gpu)  # InputError for a --main-gpu llama.cpp lacks
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")       # no usage report from this process's cluster
    import ray
    from ray import serve

    started = time.perf_counter()
    stop = threading.Event()
    ready = threading.Event()

    def on_signal(signum, frame):
        stop.set()
        if not ready.is_set():
            raise _Interrupted(signal.Signals(signum).name)

    own_ray = scaling.ray_address is None
    _say(f"starting {'a local Ray instance' if own_ray else 'on the Ray cluster at ' + scaling.ray_address} ...")
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(**_ray_options(settings, scaling))
        # After ray.init: its core worker installs a SIGTERM handler that aborts the process.
        for sig in previous:
            signal.signal(sig, on_signal)
        serve.start(http_options={"host": settings.host, "port": settings.port},
                    logging_config={"log_level": "WARNING"})
        serve.run(application(settings, scaling), name=APP_NAME, route_prefix="/", blocking=False)
        ready.set()
        _say(f"ready in {time.perf_counter() - started:.1f} s: http://{settings.host}:{settings.port} "
             f"({_describe(scaling, settings)})")
        while not stop.wait(0.5):
            pass
        _say("stopping: draining the requests in flight ...")
        left = serve.get_app_handle(APP_NAME).drain.remote(settings.shutdown_timeout_s).result(
            timeout_s=settings.shutdown_timeout_s + 30)
        if left:
            _say(f"{left} requests were still running after {settings.shutdown_timeout_s:g} s: cancelled")
    except (_Interrupted, KeyboardInterrupt) as exc:
        _say(f"{exc or 'SIGINT'} during start-up: stopping")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        _shut_down(own_ray)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _say("stopped")
    return 0


def _ray_options(settings: ServerSettings, scaling: Scaling) -> dict:
    if scaling.ray_address is not None:
        return {"address": scaling.ray_address, "log_to_driver": True}
    cores = os.cpu_count() or 1
    # Each replica asks Ray for as many CPUs as it runs threads; the local instance offers at least
    # the machine's cores and enough for the most replicas asked for.
    return {"include_dashboard": False, "object_store_memory": scaling.object_store_mb << 20,
            "num_cpus": max(cores, settings.n_threads * scaling.most_replicas), "log_to_driver": True,
            "logging_level": "WARNING"}


def _shut_down(own_ray: bool) -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            if own_ray:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)  # the cluster, and Serve on it, belong to someone else
        finally:
            ray.shutdown()


def _describe(scaling: Scaling, settings: ServerSettings) -> str:
    count = (f"{scaling.replicas} engine replicas" if scaling.replicas is not None
             else f"{scaling.min_replicas}-{scaling.max_replicas} engine replicas, autoscaled")
    routing = "conversation affinity" if scaling.affinity else "Serve's default router"
    return f"{count}, {settings.n_threads} threads each, {routing}"


def _say(message: str) -> None:
    print(f"phi4mm: {message}", file=sys.stderr, flush=True)
