"""How many engine replicas, where Ray runs, and how requests are routed: the `phi4mm serve
--replicas` flags as one frozen dataclass. No ray here, so the CLI builds its parser without the
extra installed."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from phi4mm.cluster.affinity import DEFAULT_LOAD_FACTOR
from phi4mm.errors import ConfigError

AUTO = "auto"


@dataclass(frozen=True)
class Scaling:
    replicas: int | None = 1            # None: autoscaling between min_replicas and max_replicas
    min_replicas: int = 1
    max_replicas: int = 4
    ray_address: str | None = None      # None: start a local Ray instance (and stop it on exit)
    object_store_mb: int = 256          # the local instance's object store
    affinity: bool = True               # False: Serve's default router (power of two choices)
    load_factor: float = DEFAULT_LOAD_FACTOR

    def __post_init__(self):
        if self.replicas is not None and self.replicas < 1:
            raise ConfigError(f"--replicas is {self.replicas}, expected >= 1 or '{AUTO}'", key="replicas")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise ConfigError(f"--min-replicas {self.min_replicas} / --max-replicas {self.max_replicas}: "
                              "expected 0 <= min <= max and max >= 1", key="min_replicas")
        if self.object_store_mb < 75:
            raise ConfigError(f"--ray-object-store-mb is {self.object_store_mb}, Ray needs >= 75",
                              key="object_store_mb")
        if self.load_factor < 1:
            raise ConfigError(f"--affinity-load-factor is {self.load_factor}, expected >= 1", key="load_factor")

    @property
    def most_replicas(self) -> int:
        return self.replicas if self.replicas is not None else self.max_replicas

    def threads_per_replica(self, threads: int, cores: int | None = None) -> int:
        """`--threads` when given, else the machine's cores shared out over the replicas."""
        if threads > 0:
            return threads
        return max(1, (cores or os.cpu_count() or 1) // self.most_replicas)


def replicas_arg(text: str) -> int | str:
    if text == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of replicas or '{AUTO}', got {text!r}") from None


def add_replica_arguments(parser: argparse.ArgumentParser) -> None:
    """The `phi4mm serve` flags that put the engine on Ray Serve (README: Many machines)."""
    group = parser.add_argument_group("replicas on Ray Serve (needs phi4mm[ray]; README: Many machines)")
    add = group.add_argument
    add("--replicas", type=replicas_arg, default=None, metavar="N|auto",
        help="serve through Ray Serve with N engine replicas, or 'auto' to scale between --min-replicas "
             "and --max-replicas on ongoing requests (default: one process, no Ray)")
    add("--min-replicas", type=int, default=1, help="fewest replicas with --replicas auto (default 1)")
    add("--max-replicas", type=int, default=4, help="most replicas with --replicas auto (default 4)")
    add("--ray-address", default=None, help="join this Ray cluster (e.g. ray://head:10001 or auto) instead "
        "of starting a local Ray instance")
    add("--ray-object-store-mb", type=int, default=256, help="object store of the local Ray instance "
        "(default 256)")
    add("--no-affinity", dest="affinity", action="store_false", help="route with Serve's default router "
        "instead of by conversation (x-session-id, user, prompt_cache_key, or the first turns)")
    add("--affinity-load-factor", type=float, default=DEFAULT_LOAD_FACTOR,
        help=f"a new conversation goes to the replica its key hashes to unless that would put the replica "
             f"over this many times its share of the ongoing requests; then to the least loaded one "
             f"(default {DEFAULT_LOAD_FACTOR}); its later turns follow it")


def scaling_from_args(args: argparse.Namespace) -> Scaling:
    auto = args.replicas == AUTO
    return Scaling(replicas=None if auto else args.replicas, min_replicas=args.min_replicas,
                   max_replicas=args.max_replicas, ray_address=args.ray_address,
                   object_store_mb=args.ray_object_store_mb, affinity=args.affinity,
                   load_factor=args.affinity_load_factor)
