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
    request with another key.

    Loads are this router's own count of the requests it sent that have not completed (Serve's
    queue-length cache is only filled by probes of the replicas it offers, so a burst of new
    conversations would all see the other replicas as empty)."""

    def initialize_state(self, load_factor: float = DEFAULT_LOAD_FACTOR, min_share: int = 1, **kwargs) -> None:
        self.load_factor = load_factor
        self.min_share = min_share
        self.sent: dict[str, tuple[str, PendingRequest]] = {}  # internal request id -> (replica id, request)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        kwargs = pending_request.kwargs if pending_request is not None else {}
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        excluded = set(kwargs.get("exclude") or ())
        allowed = {rid: replica for rid, replica in by_id.items() if rid not in excluded} or by_id
        ranked = rank(kwargs.get("affinity_key"), kwargs.get("prefer"), self.loads(allowed), self.load_factor,
                      self.min_share)
        if pending_request is not None and ranked:  # Serve sends it to the first rank unless that one is full
            self.sent[pending_request.metadata.internal_request_id] = (ranked[0], pending_request)
        return [[allowed[rid]] for rid in ranked]

    def loads(self, replica_ids) -> dict[str, int]:
        """Requests sent to each replica and not completed (requests cancelled while being routed
        are dropped here; Serve never reports them completed)."""
        for request_id in [r for r, (_, pending) in self.sent.items() if pending.future.cancelled()]:
            self.sent.pop(request_id)
        loads = dict.fromkeys(replica_ids, 0)
        for rid, _ in self.sent.values():
            if rid in loads:
                loads[rid] += 1
        return loads

    def on_request_completed(self, replica_id, internal_request_id: str) -> None:
        self.sent.pop(internal_request_id, None)
