"""PRESENCE over a cluster: every node's entries, with a single process's filters, order and bounds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from systemx.state.redis.conn import RedisConnection
from tests.cluster.conftest import NODE_TTL_MS, Cluster
from tests.conftest import ServerFactory
from tests.wsclient import TIMEOUT, WSClient, scaled

# Tests poll PRESENCE until an update shows; the rate limit is not what they test.
UNLIMITED = {"SYSTEMX_PRESENCE_MAX_QUERIES": "0"}

LEEDS = {"lat": 53.80, "lon": -1.55}

# (address, REGISTER metadata): domains in mixed case, shared capabilities, places
# with a distance tie (ann and fay stand on the same spot), statuses set at REGISTER.
ENTRIES: list[tuple[str, dict[str, Any]]] = [
    ("ann@a.test", {"capabilities": ["chat", "code"], "location": LEEDS}),
    ("bob@b.test", {"capabilities": ["chat"], "location": {"lat": 53.48, "lon": -2.24}}),
    ("cat@a.test", {"capabilities": ["code"], "status": "away"}),
    ("dan@A.Test", {"capabilities": ["chat"], "location": {"lat": 51.50, "lon": -0.12}, "status": "dnd"}),
    ("eve@b.test", {}),
    ("fay@a.test", {"capabilities": ["code", "chat"], "location": LEEDS}),
    ("gus@c.test", {"location": {"lat": 53.96, "lon": -1.08}, "tags": {"team": "north"}}),
    ("hal@a.test", {"capabilities": ["code"], "location": {"lat": 55.95, "lon": -3.19}}),
    ("ivy@b.test", {"capabilities": ["chat", "voice"], "location": {"lat": 53.81, "lon": -1.56}}),
]

QUERIES: list[dict[str, Any]] = [
    {},
    {"query": {"domain": "a.test"}},
    {"query": {"domain": "A.TEST"}},
    {"query": {"capabilities": ["chat"]}},
    {"query": {"capabilities": ["chat", "code"]}},
    {"query": {"near": {**LEEDS, "radius_km": 100}}},
    {"query": {"near": {**LEEDS, "radius_km": 400}, "capabilities": ["chat"]}},
    {"query": {"near": {**LEEDS, "radius_km": 0}}},
    {"query": {"status": "available"}},
    {"query": {"status": "away"}},
    {"query": {"domain": "b.test", "status": "available"}},
    {"query": {"domain": "nowhere.test"}},
    {"limit": 3},
    {"query": {"near": {**LEEDS, "radius_km": 1000}}, "limit": 4},
]


async def presence(ws: WSClient, **fields: Any) -> dict[str, Any]:
    ws.send_json({"type": "PRESENCE", **fields})
    return await ws.expect("PRESENCE_RESULT")


def addresses(result: dict[str, Any]) -> list[str]:
    return [entry["address"] for entry in result["addresses"]]


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {entry["address"]: entry["status"] for entry in result["addresses"]}


async def until(
    ws: WSClient, check: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT, **fields: Any
) -> dict[str, Any]:
    """Ask PRESENCE until ``check`` holds for the answer (a write on another node lands in a loop pass)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await presence(ws, **fields)
        if check(result):
            return result
        assert time.monotonic() < deadline, f"never seen; last answer: {result}"
        await asyncio.sleep(0.02)


async def test_entries_on_three_nodes_are_found_from_any_node(cluster: Cluster) -> None:
    nodes = await cluster.start(3, UNLIMITED)
    clients = [await cluster.client(node, f"agent{i}@example.com") for i, node in enumerate(nodes)]
    everyone = {f"agent{i}@example.com" for i in range(3)}
    for i, ws in enumerate(clients):
        result = await until(ws, lambda r: len(r["addresses"]) == 2)
        assert set(addresses(result)) == everyone - {f"agent{i}@example.com"}, "the asker is excluded"
        assert "truncated" not in result
    # Registration order across nodes, the asker left out.
    assert addresses(await presence(clients[1])) == ["agent0@example.com", "agent2@example.com"]


async def test_filters_and_order_match_a_single_process(
    cluster: Cluster, systemx_server: ServerFactory
) -> None:
    nodes = await cluster.start(3, UNLIMITED)
    single = await systemx_server(env=UNLIMITED)
    askers = [f"me{i}@a.test" for i in range(3)]
    on_cluster = [await cluster.client(nodes[i], askers[i]) for i in range(3)]
    alone = []
    for address in askers:
        ws = await single.connect()
        cluster.clients.append(ws)
        await ws.register(address)
        alone.append(ws)
    for i, (address, meta) in enumerate(ENTRIES):
        await cluster.client(nodes[i % 3], None)
        ws = cluster.clients[-1]
        await ws.register(address, metadata=meta)
        ws = await single.connect()
        cluster.clients.append(ws)
        await ws.register(address, metadata=meta)
    total = len(ENTRIES) + len(askers) - 1
    await until(on_cluster[0], lambda r: len(r["addresses"]) == total)
    for query in QUERIES:
        for i in range(3):
            expected = await presence(alone[i], **query)
            got = await presence(on_cluster[i], **query)
            assert got == expected, f"query {query} asked on node {i}"


async def test_status_changes_are_seen_from_another_node(cluster: Cluster) -> None:
    n0, n1, n2 = await cluster.start(3, UNLIMITED)
    watcher = await cluster.client(n2, "watcher@example.com")
    alice = await cluster.client(n0, "alice@example.com")
    bob = await cluster.client(n1, "bob@example.com")
    both = {"alice@example.com", "bob@example.com"}

    def everyone_is(status: str) -> Callable[[dict[str, Any]], bool]:
        return lambda r: {statuses(r).get(a) for a in both} == {status}

    await until(watcher, everyone_is("available"))

    bob.send_json({"type": "STATUS", "status": "dnd"})
    await until(watcher, lambda r: statuses(r).get("bob@example.com") == "dnd")
    found = await presence(watcher, query={"status": "dnd"})
    assert addresses(found) == ["bob@example.com"]
    bob.send_json({"type": "STATUS", "status": "available"})
    await until(watcher, everyone_is("available"))

    # A call across n0 and n1: both parties are busy while it lasts, seen from n2.
    alice.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
    call_id = (await alice.expect("RINGING"))["call_id"]
    await bob.expect("RING", call_id=call_id)
    bob.send_json({"type": "ANSWER", "call_id": call_id})
    await alice.expect("CONNECTED", call_id=call_id)
    await until(watcher, everyone_is("busy"))
    assert addresses(await presence(watcher, query={"status": "available"})) == []
    alice.send_json({"type": "HANGUP", "call_id": call_id})
    await bob.expect("HANGUP", call_id=call_id)
    await until(watcher, everyone_is("available"))


async def test_an_unregistered_or_closed_session_leaves_presence(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2, UNLIMITED)
    watcher = await cluster.client(n0, "watcher@example.com")
    leaver = await cluster.client(n1, "leaver@example.com")
    closer = await cluster.client(n1, "closer@example.com")
    await until(watcher, lambda r: len(r["addresses"]) == 2)
    leaver.send_json({"type": "UNREGISTER"})
    await until(watcher, lambda r: addresses(r) == ["closer@example.com"])
    await closer.close()
    await until(watcher, lambda r: addresses(r) == [])


async def test_a_killed_nodes_entries_disappear_within_the_node_ttl(cluster: Cluster) -> None:
    n0, n1, n2 = await cluster.start(3, UNLIMITED)
    watcher = await cluster.client(n0, "watcher@example.com")
    await cluster.client(n1, "stays@example.com")
    for i in range(3):
        await cluster.client(n2, f"doomed{i}@example.com")
    await until(watcher, lambda r: len(r["addresses"]) == 4)
    killed_at = time.monotonic()
    await n2.kill()
    await until(
        watcher,
        lambda r: addresses(r) == ["stays@example.com"],
        timeout=scaled(NODE_TTL_MS / 1000 + 1.0) + 1.0,
    )
    assert time.monotonic() - killed_at <= scaled(NODE_TTL_MS / 1000 + 1.0)
    # The sweep deletes the dead node's hash.
    redis = RedisConnection("127.0.0.1", cluster.redis.port)
    await redis.connect()
    try:
        deadline = time.monotonic() + TIMEOUT
        while await redis.execute("EXISTS", "sx:p:{n2}"):
            assert time.monotonic() < deadline, "the dead node's presence hash is still there"
            await asyncio.sleep(0.05)
        assert await redis.execute("EXISTS", "sx:p:{n1}") == 1
    finally:
        await redis.close()


async def test_limit_and_truncated_across_nodes(cluster: Cluster) -> None:
    env = {**UNLIMITED, "SYSTEMX_PRESENCE_MAX_RESULT_BYTES": "1024"}
    nodes = await cluster.start(3, env)
    asker = await cluster.client(nodes[0], "asker@example.com")
    names = [f"big{i}@example.com" for i in range(6)]
    for i, name in enumerate(names):
        ws = await cluster.client(nodes[i % 3])
        await ws.register(name, metadata={"note": "x" * 300})
    result = await until(asker, lambda r: len(r["addresses"]) >= 2, limit=2)
    assert addresses(result) == names[:2]
    assert "truncated" not in result
    result = await presence(asker, limit=10)
    assert addresses(result) == names[:2]
    assert result["truncated"] is True
    assert len(addresses(await presence(asker, limit=1))) == 1


async def test_redis_out_of_reach_answers_unavailable_then_presence_comes_back(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2, UNLIMITED)
    watcher = await cluster.client(n0, "watcher@example.com")
    await cluster.client(n1, "far@example.com")
    await until(watcher, lambda r: addresses(r) == ["far@example.com"])

    cluster.redis.kill()
    asked = time.monotonic()
    watcher.send_json({"type": "PRESENCE"})
    error = await watcher.expect("ERROR", reason="unavailable", context="PRESENCE")
    assert time.monotonic() - asked < scaled(0.5) + 0.4, "answered within the 500 ms bound"
    assert "try again" in error["detail"]

    # Redis comes back empty: every node writes its entries again.
    cluster.redis.start()
    deadline = time.monotonic() + scaled(15.0)
    while True:
        watcher.send_json({"type": "PRESENCE"})
        answer = await watcher.recv()
        if answer["type"] == "PRESENCE_RESULT" and addresses(answer) == ["far@example.com"]:
            break
        # Until the nodes are back: unavailable, or an empty list before n1 wrote its entries.
        assert answer["type"] == "PRESENCE_RESULT" or answer["reason"] == "unavailable", answer
        assert time.monotonic() < deadline, f"presence did not come back: {answer}"
        await asyncio.sleep(0.05)


async def test_visibility_rules_apply_to_every_nodes_entries(cluster: Cluster, tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"domains": {"example.com": {"presence": ["{domain}"]}}}))
    n0, n1, n2 = await cluster.start(3, {**UNLIMITED, "SYSTEMX_POLICY_FILE": str(policy)})
    alice = await cluster.client(n0, "alice@example.com")
    await cluster.client(n1, "guest@example.org")
    await cluster.client(n2, "ceo@example.com")
    guest_view = await until(alice, lambda r: len(r["addresses"]) >= 1)
    assert addresses(guest_view) == ["ceo@example.com"]
    alice.send_json({"type": "PRESENCE", "query": {"domain": "example.org"}})
    await alice.expect("ERROR", reason="forbidden", context="PRESENCE")
    other = await cluster.client(n2, "other@example.org")
    seen = await until(other, lambda r: len(r["addresses"]) == 3)
    assert addresses(seen) == ["alice@example.com", "guest@example.org", "ceo@example.com"]


async def test_a_status_delay_holds_back_call_status_but_not_status_or_registrations(
    cluster: Cluster,
) -> None:
    n0, n1 = await cluster.start(
        2, env={"SYSTEMX_PRESENCE_STATUS_DELAY_MS": "1500", "SYSTEMX_PRESENCE_MAX_QUERIES": "0"}
    )
    agent = await cluster.client(n0, "agent@example.com")
    peer = await cluster.client(n0, "peer@example.com")
    watcher = await cluster.client(n1, "watcher@example.com")

    async def shown() -> str | None:
        watcher.send_json({"type": "PRESENCE", "query": {"domain": "example.com"}})
        rows = (await watcher.expect("PRESENCE_RESULT"))["addresses"]
        return next((r["status"] for r in rows if r["address"] == "agent@example.com"), None)

    # A registration is written at once, and so is a STATUS the client sends.
    assert await shown() == "available"
    agent.send_json({"type": "STATUS", "status": "away"})
    await agent.roundtrip()
    assert await shown() == "away"
    agent.send_json({"type": "STATUS", "status": "available"})
    await agent.roundtrip()
    assert await shown() == "available"
    # The busy a call makes waits for the delay: the other node shows it later...
    peer.send_json({"type": "DIAL", "to": "agent@example.com", "ringing": True})
    call_id = (await agent.expect("RING"))["call_id"]
    changed = time.monotonic()
    agent.send_json({"type": "ANSWER", "call_id": call_id})
    await peer.expect("CONNECTED", skip=("RINGING",), call_id=call_id)
    assert await shown() == "available"
    # ...once the delay is over.
    while (status := await shown()) != "busy":
        assert time.monotonic() - changed < scaled(6), status
    assert time.monotonic() - changed >= 1.0
