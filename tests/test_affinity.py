"""Conversation affinity, without Ray: the routing key of a request, rendezvous hashing, the bounded
load, and the Serve request router that applies them (driven with stand-in replicas)."""

from __future__ import annotations

import asyncio
import collections
import random
from types import SimpleNamespace

import pytest

from phi4mm.cluster.affinity import Placements, affinity_key, choose, conversation_digest, preference, rank

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
OTHER_IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,BBBB"}}


def _chat(*turns, system="Be brief.", **extra):
    messages = [{"role": "system", "content": system}] if system else []
    for i, content in enumerate(turns):
        messages.append({"role": "user", "content": content})
        if i < len(turns) - 1:
            messages.append({"role": "assistant", "content": f"answer {i}"})
    return {"messages": messages, **extra}


def test_the_key_prefers_the_session_header_then_user_then_prompt_cache_key_then_the_first_turns():
    body = _chat("hi", user="ann", prompt_cache_key="pc")
    assert affinity_key({"x-session-id": "s1"}, body) == "session:s1"
    assert affinity_key({}, body) == "user:ann"
    assert affinity_key({}, _chat("hi", prompt_cache_key="pc")) == "prompt_cache_key:pc"
    assert affinity_key({}, _chat("hi")) == "conversation:" + conversation_digest(_chat("hi")["messages"])
    assert affinity_key({"x-session-id": "  "}, _chat("hi", user="")) == affinity_key({}, _chat("hi"))


def test_every_turn_of_a_conversation_has_its_first_turn_s_key_and_other_conversations_differ():
    first = _chat([{"type": "text", "text": "what is this?"}, IMAGE])
    later = _chat([{"type": "text", "text": "what is this?"}, IMAGE], "and the colour?", "thanks")
    assert affinity_key({}, first) == affinity_key({}, later)
    # negative controls: another image, another question, another system prompt
    assert affinity_key({}, first) != affinity_key({}, _chat([{"type": "text", "text": "what is this?"}, OTHER_IMAGE]))
    assert affinity_key({}, first) != affinity_key({}, _chat([{"type": "text", "text": "what's this?"}, IMAGE]))
    assert affinity_key({}, first) != affinity_key({}, _chat([{"type": "text", "text": "what is this?"}, IMAGE],
                                                             system="Be long."))


def test_requests_without_a_conversation_have_no_key():
    assert affinity_key({}, None) is None                       # not JSON (an audio upload)
    assert affinity_key({}, {"messages": "hi"}) is None
    assert affinity_key({}, {"messages": [{"role": "system", "content": "x"}]}) is None
    assert affinity_key({}, [1, 2]) is None


def test_rendezvous_hashing_moves_only_the_keys_of_a_replica_that_leaves():
    ids = [f"r{i}" for i in range(5)]
    keys = [f"conversation:{i}" for i in range(400)]
    owners = {key: preference(key, ids)[0] for key in keys}
    assert set(collections.Counter(owners.values())) == set(ids)  # every replica owns some keys
    assert max(collections.Counter(owners.values()).values()) < 400 * 0.4
    without = [rid for rid in ids if rid != "r2"]
    for key in keys:
        new_owner = preference(key, without)[0]
        assert new_owner == owners[key] if owners[key] != "r2" else new_owner == preference(key, ids)[1]
    assert preference("k", list(reversed(ids))) == preference("k", ids)  # independent of the listing order


def test_the_owner_keeps_its_keys_until_it_is_over_its_share():
    key = "conversation:abc"
    owner, second = preference(key, ["a", "b"])
    loads = {owner: 0, second: 0}
    assert choose(key, loads)[0] == owner
    # load factor 2 over 2 replicas: the share is the total, so the owner is never over it
    assert choose(key, {owner: 9, second: 0}, load_factor=2.0)[0] == owner
    # load factor 1.25: share = ceil(1.25 * (total + 1) / 2)
    assert choose(key, {owner: 2, second: 1}, load_factor=1.25)[0] == owner   # 3 <= ceil(1.25*4/2) = 3
    assert choose(key, {owner: 3, second: 0}, load_factor=1.25)[0] == second  # 4 > ceil(1.25*4/2) = 3
    # never over its share while it has a free slot
    assert choose(key, {owner: 3, second: 0}, load_factor=1.25, min_share=4)[0] == owner
    assert choose(key, {owner: 3, second: 0}, load_factor=1.0, min_share=4)[0] == owner


def test_over_its_share_or_without_a_key_a_request_goes_to_the_least_loaded_replica():
    loads = {"a": 5, "b": 1, "c": 3}
    assert choose(None, loads) == ["b", "c", "a"]
    key = next(k for k in (f"k{i}" for i in range(100)) if preference(k, list(loads))[0] == "a")
    assert choose(key, loads, load_factor=1.0) == ["b", "c", "a"]
    assert choose(key, loads, load_factor=3.0) == ["a", "b", "c"]
    assert choose("k", {}) == []


def test_bounded_load_keeps_every_replica_near_its_share_under_skewed_keys():
    """20 % of the requests carry one hot key; with load factor 1.25 no replica ever holds more
    than ceil(1.25 * (total + 1) / n), and the other keys keep their owners."""
    rng = random.Random(0)
    ids = ["a", "b", "c", "d"]
    loads = dict.fromkeys(ids, 0)
    for _ in range(200):
        key = "hot" if rng.random() < 0.2 else f"k{rng.randrange(1000)}"
        chosen = choose(key, loads, load_factor=1.25)[0]
        share = -(-125 * (sum(loads.values()) + 1) // 400)
        assert loads[chosen] + 1 <= max(share, 1) or loads[chosen] == min(loads.values())
        loads[chosen] += 1
        if rng.random() < 0.5:  # requests finish
            busy = [rid for rid in ids if loads[rid]]
            loads[rng.choice(busy)] -= 1


def test_a_remembered_replica_keeps_its_keys_whatever_the_load_until_it_is_gone():
    loads = {"a": 9, "b": 0, "c": 1}
    assert rank("k", "a", loads, load_factor=1.0) == ["a", "b", "c"]      # sticks, however busy
    assert rank("k", "gone", loads, load_factor=1.0) == choose("k", loads, load_factor=1.0)  # died: by the hash
    assert rank("k", None, loads) == choose("k", loads)
    placements = Placements(capacity=2)
    placements.remember("k1", "a")
    placements.remember("k2", "b")
    assert placements.get("k1") == "a"           # k1 is now the most recently used
    placements.remember("k3", "c")               # so k2 is the one forgotten
    assert (placements.get("k2"), placements.get("k1"), placements.get("k3"), len(placements)) == (None, "a", "c", 2)
    placements.remember(None, "a")               # requests without a key are not remembered
    assert placements.get(None) is None and len(placements) == 2


def test_new_conversations_spread_by_load_and_then_stay():
    """Eight conversations start at once on two replicas with 2 slots each: the owner takes a new
    key until it is over its share, the rest go to the other replica; their later turns follow."""
    placements, loads = Placements(), {"a": 0, "b": 0}
    keys = [k for k in (f"c{i}" for i in range(100)) if preference(k, ["a", "b"])[0] == "a"][:8]  # all hash to a
    for key in keys:
        where = rank(key, placements.get(key), loads, load_factor=1.25, min_share=2)[0]
        placements.remember(key, where)
        loads[where] += 1
    assert loads == {"a": 5, "b": 3}  # a never above ceil(1.25 x 8 / 2) = 5
    assert all(rank(k, placements.get(k), {"a": 0, "b": 9})[0] == placements.get(k) for k in keys)


def _replica(unique_id: str):
    return SimpleNamespace(replica_id=SimpleNamespace(unique_id=unique_id), max_ongoing_requests=100)


def _router(sent: dict[str, int], **state):
    """A router that has `sent[rid]` requests in flight on each replica."""
    pytest.importorskip("ray")
    from phi4mm.cluster.router import AffinityRouter

    router = AffinityRouter.__new__(AffinityRouter)  # Serve builds it with a deployment id; not needed here
    router.initialize_state(**state)
    for rid, n in sent.items():
        for i in range(n):
            router.sent[f"{rid}{i}"] = (rid, SimpleNamespace(future=SimpleNamespace(cancelled=lambda: False)))
    return router


def _choose(router, replicas, request_id="r", **kwargs):
    pending = SimpleNamespace(args=[], kwargs=kwargs, metadata=SimpleNamespace(internal_request_id=request_id),
                              future=SimpleNamespace(cancelled=lambda: False))
    return [[r.replica_id.unique_id for r in rank] for rank in asyncio.run(router.choose_replicas(replicas, pending))]


def test_the_serve_router_ranks_the_owner_first_and_honours_exclusions():
    replicas = [_replica(rid) for rid in ("a", "b", "c")]
    router = _router({}, load_factor=2.0, min_share=2)
    key = "conversation:xyz"
    owner = preference(key, ["a", "b", "c"])[0]
    assert _choose(router, replicas, affinity_key=key)[0] == [owner]
    assert sorted(sum(_choose(router, replicas, affinity_key=key), [])) == ["a", "b", "c"]  # one rank each
    # a replica that died under the request or refused it is skipped...
    assert owner not in sum(_choose(router, replicas, affinity_key=key, exclude=(owner,)), [])
    # ...unless every replica is excluded (then all are offered again, and the gateway stops)
    assert sorted(sum(_choose(router, replicas, affinity_key=key, exclude=("a", "b", "c")), [])) == ["a", "b", "c"]
    # the replica the gateway remembers for the key comes first, even when another is the owner
    other = next(rid for rid in ("a", "b", "c") if rid != owner)
    assert _choose(router, replicas, affinity_key=key, prefer=other)[0] == [other]
    assert _choose(router, replicas, affinity_key=key, prefer=other, exclude=(other,))[0] == [owner]
    # without a key: least loaded first, loads being the requests this router sent and not completed
    busy = _router({"a": 4, "b": 0, "c": 2})
    assert _choose(busy, replicas, affinity_key=None) == [["b"], ["c"], ["a"]]
    assert busy.loads(["a", "b", "c"]) == {"a": 4, "b": 1, "c": 2}  # the request just routed counts
    busy.on_request_completed(None, "r")
    assert busy.loads(["a", "b", "c"]) == {"a": 4, "b": 0, "c": 2}


def test_a_burst_of_new_conversations_is_spread_by_the_router_s_own_count():
    """Eight keys that all hash to one replica, routed at once (none completed): 4 and 4."""
    replicas = [_replica(rid) for rid in ("a", "b")]
    router = _router({})
    keys = [k for k in (f"c{i}" for i in range(100)) if preference(k, ["a", "b"])[0] == "a"][:8]
    placed = [_choose(router, replicas, request_id=k, affinity_key=k)[0][0] for k in keys]
    assert sorted(placed) == ["a"] * 4 + ["b"] * 4
    # a request cancelled while being routed stops counting
    router.sent["c-gone"] = ("a", SimpleNamespace(future=SimpleNamespace(cancelled=lambda: True)))
    assert router.loads(["a", "b"]) == {"a": 4, "b": 4}
