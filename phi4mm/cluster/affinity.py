"""Conversation affinity, pure: the key a request is routed by, and the replica that key goes to.

The key (first that applies):
1. the `x-session-id` header;
2. the OpenAI `user` field, else `prompt_cache_key`;
3. a digest of the conversation's first system turn and first user turn, each media part (image,
   audio) replaced by the digest of its JSON, so every later turn of the same chat maps to the
   same key while the growing tail does not change it.
A request with none of these (an audio upload, a body that is not a chat) has no key and goes to
the least-loaded replica.

The replica of a key seen for the first time: rendezvous (highest-random-weight) hashing over the
live replica ids, so a replica joining or leaving moves only the keys it wins or held, with a
bounded load (Mirrokni, Thorup and Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2017):
the owner takes the request unless that puts it over its share, `ceil(load_factor * (total + 1) /
n)` ongoing requests (or `min_share`, when larger); over it, the request goes to the least-loaded
replica. Where a key went is remembered (`Placements`), and
its later requests go to the same replica for as long as that replica lives, whatever the load
(the gateway remembers, and passes the replica to the router as `prefer`):
moving a conversation costs a whole re-prefill (tens of seconds for an image on a CPU), so the
load is balanced when conversations start, not by moving them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

SESSION_HEADER = "x-session-id"
REPLICA_HEADER = "x-phi4mm-replica"
BODY_KEYS = ("user", "prompt_cache_key")
# 1: new conversations are spread evenly (nothing of theirs is cached anywhere, so an even spread
# costs nothing); the hash only breaks ties. An uneven spread leaves more conversations on a replica
# than it has slots, and they evict each other's prefixes.
DEFAULT_LOAD_FACTOR = 1.0
REMEMBERED_KEYS = 100_000


def affinity_key(headers: Mapping[str, str], body: Any) -> str | None:
    """The routing key of a request: `headers` with lower-case names, `body` its parsed JSON (or
    None when it is not JSON)."""
    session = headers.get(SESSION_HEADER, "").strip()
    if session:
        return f"session:{session}"
    if not isinstance(body, dict):
        return None
    for name in BODY_KEYS:
        value = body.get(name)
        if isinstance(value, str) and value:
            return f"{name}:{value}"
    digest = conversation_digest(body.get("messages"))
    return None if digest is None else f"conversation:{digest}"


def conversation_digest(messages: Any) -> str | None:
    """sha256 of the first system and first user message (media parts by their own digests); None
    when there is no user message."""
    if not isinstance(messages, list):
        return None
    first: dict[str, Any] = {}
    for message in messages:
        if isinstance(message, dict) and message.get("role") in ("system", "user"):
            first.setdefault(message["role"], _canonical_content(message.get("content")))
        if "user" in first:
            break
    if "user" not in first:
        return None
    return _sha256(json.dumps([first.get("system"), first["user"]], sort_keys=True, separators=(",", ":")))


def _canonical_content(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    return [part.get("text") if isinstance(part, dict) and part.get("type") == "text"
            else {"media": _sha256(json.dumps(part, sort_keys=True, separators=(",", ":")))}
            for part in content]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def preference(key: str, replica_ids: Sequence[str]) -> list[str]:
    """`replica_ids` in the key's order of preference (rendezvous hashing): the same for every
    caller that sees the same ids, and removing one id leaves the others' order unchanged."""
    return sorted(replica_ids, key=lambda rid: _sha256(f"{key}\x00{rid}"), reverse=True)


def choose(key: str | None, loads: Mapping[str, int], load_factor: float = DEFAULT_LOAD_FACTOR,
           min_share: int = 1) -> list[str]:
    """Replica ids ranked for one request, best first. `loads` maps each live replica id to its
    ongoing requests. With a key: its owner first, unless the owner is over its share; without
    one, or past it: least loaded first (ties in the key's order of preference)."""
    if not loads:
        return []
    ids = list(loads)
    order = preference(key or "", ids)
    by_load = sorted(order, key=lambda rid: loads[rid])  # stable: ties keep the preference order
    if key is None:
        return by_load
    owner = order[0]
    share = max(math.ceil(load_factor * (sum(loads.values()) + 1) / len(ids)), min_share)
    if loads[owner] + 1 <= share:
        return [owner, *[rid for rid in by_load if rid != owner]]
    return by_load


def rank(key: str | None, prefer: str | None, loads: Mapping[str, int], load_factor: float = DEFAULT_LOAD_FACTOR,
         min_share: int = 1) -> list[str]:
    """Replica ids ranked for one request: `prefer` (where the key went before) first while it is
    live, then the others, least loaded first; otherwise as `choose`."""
    if prefer is not None and prefer in loads:
        return [prefer, *[rid for rid in sorted(loads, key=lambda r: loads[r]) if rid != prefer]]
    return choose(key, loads, load_factor, min_share)


class Placements:
    """The replica each recent key was last served by, for the `capacity` most recently used keys."""

    def __init__(self, capacity: int = REMEMBERED_KEYS):
        self.capacity = capacity
        self._replica: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str | None) -> str | None:
        if key is None or key not in self._replica:
            return None
        self._replica.move_to_end(key)
        return self._replica[key]

    def remember(self, key: str | None, replica_id: str) -> None:
        if key is None:
            return
        self._replica[key] = replica_id
        self._replica.move_to_end(key)
        while len(self._replica) > self.capacity:
            self._replica.popitem(last=False)

    def __len__(self) -> int:
        return len(self._replica)
