"""Wake-on-ring across the nodes of a cluster.

Webhooks land on a real local aiohttp server; the test plays the woken agent,
which may come back on any node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from systemx.state.redis.conn import RedisConnection
from systemx.state.redis.profiles import RedisProfileStore
from tests.cluster.conftest import NODE_TTL_MS, Cluster
from tests.conftest import SystemXProcess
from tests.wsclient import TIMEOUT, WSClient, scaled

AGENT = "agent@example.com"


class Hooks:
    """A real HTTP server recording wake webhooks; answers with ``status``."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.status = 200
        self.port = 0

    @property
    def env(self) -> dict[str, str]:
        """Settings that let a node POST here; PRESENCE unlimited, for the tests that watch it."""
        return {
            "SYSTEMX_WEBHOOK_ALLOW": f"http://127.0.0.1:{self.port}/wake/",
            "SYSTEMX_PRESENCE_MAX_QUERIES": "0",
        }

    def handler(self, timeout: float = 10) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/wake/agent"
        return {"type": "webhook", "url": url, "timeout_seconds": timeout}

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.put_nowait(await request.json())
        return web.Response(status=self.status, text="ok")


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    hooks = Hooks()
    app = web.Application()
    app.router.add_post("/wake/{name}", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hooks.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield hooks
    await runner.cleanup()


async def _sleep(cluster: Cluster, node: SystemXProcess, handler: dict[str, Any]) -> None:
    """The agent registers wake_on_ring on ``node`` and goes to sleep."""
    agent = await cluster.client(node)
    await agent.register(AGENT, mode="wake_on_ring", wake_handler=handler)
    agent.send_json({"type": "SLEEP_ACK"})
    assert await agent.expect_close() == (4000, "sleep")


async def _presence(client: WSClient) -> dict[str, str]:
    client.send_json({"type": "PRESENCE", "query": {"domain": "example.com"}})
    result = await client.expect("PRESENCE_RESULT")
    return {e["address"]: e["status"] for e in result["addresses"]}


async def _until_shown(client: WSClient, status: str | None) -> None:
    """PRESENCE on ``client``'s node shows the agent with ``status`` (None: not at all)."""
    deadline = time.monotonic() + TIMEOUT
    while (await _presence(client)).get(AGENT) != status:
        assert time.monotonic() < deadline, f"{AGENT} never shown as {status}"


async def test_one_wake_for_dials_on_two_nodes_and_both_ring_where_the_agent_returns(
    cluster: Cluster, hooks: Hooks
) -> None:
    n0, n1, n2 = await cluster.start(3, hooks.env)
    await _sleep(cluster, n0, hooks.handler())
    c1 = await cluster.client(n1, "c1@example.com")
    c2 = await cluster.client(n2, "c2@example.com")
    await _until_shown(c1, "asleep")
    await _until_shown(c2, "asleep")

    c1.send_json({"type": "DIAL", "to": AGENT, "metadata": {"n": 1}})
    c2.send_json({"type": "DIAL", "to": AGENT, "metadata": {"n": 2}})
    call1 = (await c1.expect("RINGING", to=AGENT, waking=True))["call_id"]
    call2 = (await c2.expect("RINGING", to=AGENT, waking=True))["call_id"]
    body = await asyncio.wait_for(hooks.calls.get(), TIMEOUT)
    assert body["address"] == AGENT and body["call_id"] in (call1, call2)

    # The agent comes back on the third node it ever saw.
    agent = await cluster.client(n2)
    await agent.register(AGENT, mode="wake_on_ring", concurrency="parallel")
    rings = {(r := await agent.expect("RING"))["call_id"]: r for _ in range(2)}
    assert set(rings) == {call1, call2}
    assert rings[call1]["from"] == "c1@example.com" and rings[call1]["metadata"] == {"n": 1}
    assert rings[call2]["from"] == "c2@example.com" and rings[call2]["metadata"] == {"n": 2}
    for call_id in (call1, call2):
        agent.send_json({"type": "ANSWER", "call_id": call_id})
    await c1.expect("CONNECTED", skip=("RINGING",), call_id=call1, to=AGENT)
    await c2.expect("CONNECTED", skip=("RINGING",), call_id=call2, to=AGENT)
    for caller, call_id in ((c1, call1), (c2, call2)):
        caller.send_json({"type": "MSG", "call_id": call_id, "data": {"hello": call_id}})
        await agent.expect("MSG", call_id=call_id, data={"hello": call_id})
        agent.send_json({"type": "MSG", "call_id": call_id, "data": "hi"})
        await caller.expect("MSG", call_id=call_id, from_=AGENT, data="hi")
    assert hooks.calls.empty(), "a second wake ran"
    # Awake on n2: every node shows it once, in its calls (no longer asleep anywhere).
    await _until_shown(c1, "busy")
    c1.send_json({"type": "PRESENCE", "query": {"domain": "example.com"}})
    entries = (await c1.expect("PRESENCE_RESULT"))["addresses"]
    assert [e["status"] for e in entries if e["address"] == AGENT] == ["busy"]
    assert (await _presence(c2))[AGENT] == "busy"


async def test_a_failed_wake_is_the_same_busy_on_every_node(cluster: Cluster, hooks: Hooks) -> None:
    hooks.status = 500
    n0, n1, n2 = await cluster.start(3, hooks.env)
    await _sleep(cluster, n0, hooks.handler())
    callers = [await cluster.client(n, f"c{i}@example.com") for i, n in enumerate((n0, n1, n2))]
    for caller in callers:
        await _until_shown(caller, "asleep")
    for caller in callers:
        caller.send_json({"type": "DIAL", "to": AGENT})
    for caller in callers:
        call_id = (await caller.expect("RINGING", to=AGENT, waking=True))["call_id"]
        busy = await caller.expect("BUSY", call_id=call_id)
        assert busy["reason"] == "wake_failed"
    await asyncio.wait_for(hooks.calls.get(), TIMEOUT)
    assert hooks.calls.empty(), "a second wake ran"
    # The lock was released: the next dial wakes again.
    callers[1].send_json({"type": "DIAL", "to": AGENT, "ringing": True})
    await callers[1].expect("BUSY", skip=("RINGING",), reason="wake_failed")
    await asyncio.wait_for(hooks.calls.get(), TIMEOUT)


async def test_a_wake_timeout_is_busy_timeout_on_each_node(cluster: Cluster, hooks: Hooks) -> None:
    n0, n1 = await cluster.start(2, hooks.env)
    await _sleep(cluster, n0, hooks.handler(timeout=1))
    c0 = await cluster.client(n0, "c0@example.com")
    c1 = await cluster.client(n1, "c1@example.com")
    await _until_shown(c1, "asleep")
    for caller in (c0, c1):
        caller.send_json({"type": "DIAL", "to": AGENT})
    for caller in (c0, c1):
        await caller.expect("RINGING", waking=True)
        busy = await caller.expect("BUSY", scaled(5))
        assert busy["reason"] == "timeout"
    await asyncio.wait_for(hooks.calls.get(), TIMEOUT)
    assert hooks.calls.empty()


async def test_a_sleeper_awake_on_another_node_rings_there_without_a_wake(
    cluster: Cluster, hooks: Hooks
) -> None:
    n0, n1 = await cluster.start(2, hooks.env)
    await _sleep(cluster, n0, hooks.handler())
    caller = await cluster.client(n1, "caller@example.com")
    await _until_shown(caller, "asleep")
    agent = await cluster.client(n0)
    await agent.register(AGENT, mode="wake_on_ring")
    # Awake on n0: every node shows it available (the cluster's presence), not asleep.
    await _until_shown(caller, "available")
    caller.send_json({"type": "DIAL", "to": AGENT, "ringing": True})
    ringing = await caller.expect("RINGING", to=AGENT)
    assert not ringing.get("waking")
    await agent.expect("RING", call_id=ringing["call_id"], from_="caller@example.com")
    assert hooks.calls.empty()
    # It sleeps again: shown asleep on the other node too.
    agent.send_json({"type": "HANGUP", "call_id": ringing["call_id"]})
    await caller.expect("HANGUP", call_id=ringing["call_id"])
    agent.send_json({"type": "SLEEP_ACK"})
    await agent.expect_close()
    await _until_shown(caller, "asleep")


async def test_profiles_are_put_back_when_redis_comes_back_empty(cluster: Cluster, hooks: Hooks) -> None:
    n0, n1 = await cluster.start(2, hooks.env)
    await _sleep(cluster, n0, hooks.handler())
    caller = await cluster.client(n1, "caller@example.com")
    await _until_shown(caller, "asleep")

    cluster.redis.kill()
    cluster.redis.start()
    restarted = time.monotonic()
    await n0.wait_for_log(r"Put 1 wake profile\(s\) back in Redis", scaled(10))
    assert time.monotonic() - restarted < scaled(5)
    await n1.wait_for_log(r"Claimed 1 address\(es\) again", scaled(10))
    caller.send_json({"type": "DIAL", "to": AGENT})
    call_id = (await caller.expect("RINGING", to=AGENT, waking=True))["call_id"]
    body = await asyncio.wait_for(hooks.calls.get(), TIMEOUT)
    assert body["call_id"] == call_id
    agent = await cluster.client(n0)
    await agent.register(AGENT)
    await agent.expect("RING", call_id=call_id)


async def test_a_node_that_never_heard_of_a_sleeper_finds_it_in_redis(cluster: Cluster, hooks: Hooks) -> None:
    n0, n1 = await cluster.start(2, hooks.env)
    # A node started after the agent went to sleep reads it at start...
    n2 = await cluster.add(hooks.env)
    await _sleep(cluster, n0, hooks.handler())
    late = await cluster.add(hooks.env)
    watcher = await cluster.client(late, "watcher@example.com")
    assert (await _presence(watcher))[AGENT] == "asleep"
    # ... and one that missed its profile (written straight to Redis here) finds it on a dial.
    conn = RedisConnection("127.0.0.1", cluster.redis.port)
    await conn.connect()
    try:
        profile = {"address": "other@example.com", "handler": hooks.handler()}
        await RedisProfileStore(conn).put("other@example.com", profile)
    finally:
        await conn.close()
    caller = await cluster.client(n1, "caller@example.com")
    caller.send_json({"type": "DIAL", "to": "other@example.com", "ringing": True})
    call_id = (await caller.expect("RINGING", to="other@example.com"))["call_id"]
    body = await asyncio.wait_for(hooks.calls.get(), TIMEOUT)
    assert (body["address"], body["call_id"]) == ("other@example.com", call_id)
    other = await cluster.client(n2)
    await other.register("other@example.com")
    await other.expect("RING", call_id=call_id, from_="caller@example.com")


async def test_an_agent_on_a_killed_node_sleeps_and_is_woken_from_another(
    cluster: Cluster, hooks: Hooks
) -> None:
    n0, n1 = await cluster.start(2, hooks.env)
    agent = await cluster.client(n0)
    await agent.register(AGENT, mode="wake_on_ring", wake_handler=hooks.handler())
    caller = await cluster.client(n1, "caller@example.com")
    # n1 heard it registered on n0 (the first message from n0 links the nodes): shown available.
    await n1.wait_for_log(r"Linked to cluster node n0")
    assert (await _presence(caller)).get(AGENT) == "available"
    await n0.kill()
    # Shown asleep once the node's lease is gone, and woken from the surviving node.
    await n1.wait_for_log(r"Cluster node n0 is gone", scaled(NODE_TTL_MS / 1000 + 5))
    assert (await _presence(caller))[AGENT] == "asleep"
    caller.send_json({"type": "DIAL", "to": AGENT})
    call_id = (await caller.expect("RINGING", to=AGENT, waking=True))["call_id"]
    body = await asyncio.wait_for(hooks.calls.get(), TIMEOUT)
    assert body["call_id"] == call_id
    back = await cluster.client(n1)
    await back.register(AGENT)
    await back.expect("RING", call_id=call_id)
