"""Presence over several nodes: the merge of their entries, and the core's continuation."""

from __future__ import annotations

import random
import re
from typing import Any

from systemx.core.acl import Grants, Rule
from systemx.state.presence import MemoryPresenceIndex
from systemx.state.redis.presence import Held, Merged, RemoteEntry, Replica, merge
from tests.unit.harness import Harness

DOMAINS = ["a.test", "b.test", "c.test"]
CAPS = ["chat", "code", "voice"]
STATUSES = ["available", "busy", "dnd", "away", "asleep"]


def _random_entries(rng: random.Random, n: int) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for i in range(n):
        located = rng.random() < 0.7
        out.append(
            (
                f"u{i}@{rng.choice(DOMAINS)}",
                {
                    "domain": rng.choice(DOMAINS),
                    "capabilities": tuple(rng.sample(CAPS, rng.randint(0, 3))),
                    # A few entries share a spot: distance ties resolve by registration order.
                    "lat": round(rng.uniform(50, 52), 1) if located else None,
                    "lon": round(rng.uniform(-1, 1), 1) if located else None,
                    "status": rng.choice(STATUSES),
                    "metadata": {"i": i},
                },
            )
        )
    return out


def _queries(rng: random.Random) -> list[dict[str, Any]]:
    queries: list[dict[str, Any]] = [{"limit": 1000}, {"limit": 3}, {"limit": 0}]
    for _ in range(60):
        q: dict[str, Any] = {"limit": rng.choice([1, 5, 20, 1000])}
        if rng.random() < 0.4:
            q["domain"] = rng.choice(DOMAINS)
        if rng.random() < 0.4:
            q["capabilities"] = rng.sample(CAPS, rng.randint(1, 2))
        if rng.random() < 0.4:
            q["near"] = (rng.uniform(50, 52), rng.uniform(-1, 1), rng.choice([0.0, 10.0, 50.0, 500.0]))
        if rng.random() < 0.3:
            q["status"] = rng.choice(STATUSES)
        if rng.random() < 0.3:
            q["exclude"] = f"u{rng.randrange(40)}@{rng.choice(DOMAINS)}"
        queries.append(q)
    return queries


def test_merged_nodes_answer_as_one_index() -> None:
    rng = random.Random(7)
    entries = _random_entries(rng, 300)
    one = MemoryPresenceIndex()
    spread: list[Merged] = []
    nodes = ["n0", "n1", "n2"]
    for t, (key, e) in enumerate(entries):
        one.put(key, **e)
        node = rng.choice(nodes)
        remote = RemoteEntry(key, e["domain"], e["capabilities"], e["lat"], e["lon"], e["metadata"], t)
        spread.append((t, node, key, remote, e["status"]))
    rng.shuffle(spread)  # nodes answer in any order
    merged = merge(spread)
    assert len(merged) == len(one)
    for q in _queries(rng):
        assert merged.query(**q) == one.query(**q), q


def test_equal_times_on_two_nodes_order_by_node_and_a_key_on_two_nodes_keeps_the_later() -> None:
    def entry(address: str, t: int) -> RemoteEntry:
        return RemoteEntry(address, "x.test", (), None, None, {}, t)

    merged = merge(
        [
            (5, "n1", "b@x.test", entry("b@x.test", 5), "available"),
            (5, "n0", "a@x.test", entry("a@x.test", 5), "available"),
            (1, "n0", "moved@x.test", entry("moved@x.test", 1), "available"),
            (9, "n2", "moved@x.test", entry("moved@x.test", 9), "busy"),
        ]
    )
    rows = merged.query(limit=10)
    assert [r[0] for r in rows] == ["a@x.test", "b@x.test", "moved@x.test"]
    assert rows[-1][1] == "busy"


class Gather:
    """A :class:`~systemx.state.presence.PresenceGather` whose tickets the test answers."""

    def __init__(self) -> None:
        self.tickets: list[int] = []

    def gather(self, ticket: int) -> None:
        self.tickets.append(ticket)


def _cluster_index(*addresses: str) -> MemoryPresenceIndex:
    index = MemoryPresenceIndex()
    for address in addresses:
        index.put(
            address,
            domain=address.split("@")[1],
            capabilities=(),
            lat=None,
            lon=None,
            status="available",
            metadata={},
        )
    return index


def test_a_presence_waits_for_the_gathered_entries_and_excludes_the_asker() -> None:
    gather = Gather()
    h = Harness(presence_gather=gather)
    h.register("A", "a@example.com")
    h.send("A", {"type": "PRESENCE", "query": {"domain": "example.com"}, "limit": 2})
    assert h.frames("A") == []
    assert gather.tickets == [1]
    index = _cluster_index(
        "far@example.com", "a@example.com", "b@example.com", "c@example.com", "z@other.test"
    )
    h.x.on_presence_gathered(1, index, h.now)
    (result,) = h.frames("A")
    assert result == {
        "type": "PRESENCE_RESULT",
        "addresses": [
            {"address": "far@example.com", "status": "available", "metadata": {}},
            {"address": "b@example.com", "status": "available", "metadata": {}},
        ],
    }
    h.x.on_presence_gathered(1, index, h.now)  # answered once
    assert h.frames("A") == []
    assert len(h.x.presence) == 0


def test_unreadable_entries_answer_unavailable_and_a_gone_asker_nothing() -> None:
    gather = Gather()
    h = Harness(presence_gather=gather)
    h.register("A", "a@example.com")
    h.register("B", "b@example.com")
    h.send("A", {"type": "PRESENCE"})
    h.send("B", {"type": "PRESENCE"})
    assert gather.tickets == [1, 2]
    h.x.on_presence_gathered(1, None, h.now)
    (error,) = h.frames("A")
    assert error["type"] == "ERROR" and error["reason"] == "unavailable" and error["context"] == "PRESENCE"
    h.close("B")
    h.x.on_presence_gathered(2, _cluster_index("c@example.com"), h.now)
    assert h.frames("B") == []
    assert len(h.x.presence) == 0


def test_visibility_applies_to_the_gathered_entries_and_a_forbidden_domain_is_refused_at_once() -> None:
    gather = Gather()
    h = Harness(presence_gather=gather)
    h.register("A", "a@example.com")
    h.sessions["A"].grants = Grants([{"presence": Rule(allow=re.compile(r"example\.com\Z"), deny=None)}])
    h.send("A", {"type": "PRESENCE", "query": {"domain": "other.test"}})
    (error,) = h.frames("A")
    assert error["reason"] == "forbidden" and error["context"] == "PRESENCE"
    assert gather.tickets == []
    h.send("A", {"type": "PRESENCE", "limit": 2})
    (ticket,) = gather.tickets
    index = _cluster_index("x@other.test", "b@example.com", "y@other.test", "z@other.test", "c@example.com")
    h.x.on_presence_gathered(ticket, index, h.now)
    (result,) = h.frames("A")
    assert [e["address"] for e in result["addresses"]] == ["b@example.com", "c@example.com"]


def test_a_replica_kept_up_by_changes_answers_as_a_merge_of_everything() -> None:
    rng = random.Random(11)
    replica = Replica()
    nodes = ["n0", "n1", "n2"]
    pool = _random_entries(rng, 120)
    t = 0
    for step in range(40):
        for _ in range(rng.randint(1, 15)):
            node = rng.choice(nodes)
            held = replica.held(node)
            key, e = rng.choice(pool)
            roll = rng.random()
            if roll < 0.5 or key not in held:
                t += 1
                # Now and then an entry arrives after a newer one was applied (flushed late).
                when = t - rng.randint(1, 30) if rng.random() < 0.05 else t
                fields = (e["domain"], e["capabilities"], e["lat"], e["lon"], e["metadata"])
                held[key] = Held(RemoteEntry(key, *fields, when), e["status"])
            elif roll < 0.8:
                held[key].status = rng.choice(STATUSES)
            else:
                del held[key]
            replica.touch(key)
        if step == 30:
            replica.forget("n2")
            nodes.remove("n2")
        replica.sync()
        everything = merge(
            (h.entry.t, node, key, h.entry, h.status)
            for node, entries in replica.nodes.items()
            for key, h in entries.items()
        )
        for q in _queries(rng)[:20]:
            assert replica.index.query(**q) == everything.query(**q), (step, q)
    assert replica.rebuilds > 0
