"""Serve's request-router hook for the engine deployment: conversation affinity with bounded load
(the policy is phi4mm.cluster.affinity; this only adapts it to Serve's RequestRouter API).

The gateway calls the engine's `forward` with `affinity_key=` (None: no key), `prefer=` (the replica
the key went to before, as the gateway remembers it; None: not known) and `exclude=` (ids of
replicas that died under this request or refused it). Each routing pass returns one rank per replica, best
first; Serve sends the request to the first rank whose replica has room (under its
max_ongoing_requests), and waits with back-off when none has."""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from phi4mm.cluster.affinity import DEFAULT_LOAD_FACTOR, rank


class AffinityRouter(RequestRouter):
    """No FIFOMixin on purpose: with it a routing pass may hand its chosen replica to an older
    request with another key."""

    def initialize_state(self, load_factor: float = DEFAULT_LOAD_FACTOR, min_share: int = 1, **kwargs) -> None:
        self.load_factor = load_factor
        self.min_share = min_share

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        kwargs = pending_request.kwargs if pending_request is not None else {}
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        excluded = set(kwargs.get("exclude") or ())
        allowed = {rid: replica for rid, replica in by_id.items() if rid not in excluded} or by_id
        loads = {rid: self.replica_queue_len_cache.get(replica.replica_id) or 0 for rid, replica in allowed.items()}
        ranked = rank(kwargs.get("affinity_key"), kwargs.get("prefer"), loads, getattr(self, "load_factor",
                      DEFAULT_LOAD_FACTOR), getattr(self, "min_share", 1))
        return [[allowed[rid]] for rid in ranked]
