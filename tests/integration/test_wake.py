"""Wake-on-ring and auto-sleep over real WebSockets against ``systemx serve``.

Webhooks land on a real local aiohttp server; spawn handlers run a real Python
process (``examples/sleepy_agent.py``) that connects back, registers and answers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import TIMEOUT, ServerFactory
from tests.wsclient import WSClient

SLEEPY = Path(__file__).resolve().parents[2] / "examples" / "sleepy_agent.py"


class Hooks:
    """A real HTTP server recording wake webhooks; answers with ``status``."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.status = 200
        self.url = ""
        self.port = 0

    @property
    def env(self) -> dict[str, str]:
        """Settings that let an exchange POST to this receiver (it listens on loopback)."""
        return {"SYSTEMX_WEBHOOK_ALLOW": f"http://127.0.0.1:{self.port}/wake/"}

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["_content_type"] = request.content_type
        self.calls.put_nowait(body)
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
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hooks.port = port
    hooks.url = f"http://127.0.0.1:{port}/wake"
    yield hooks
    await runner.cleanup()


async def sleep_agent(server: Any, address: str, handler: dict[str, Any]) -> None:
    agent: WSClient = await server.connect()
    await agent.register(address, mode="wake_on_ring", wake_handler=handler)
    agent.send_json({"type": "SLEEP_ACK"})
    assert await agent.expect_close() == (4000, "sleep")


async def test_webhook_wake_then_held_ring(systemx_server: ServerFactory, hooks: Hooks) -> None:
    server = await systemx_server(env=hooks.env)
    handler = {"type": "webhook", "url": hooks.url + "/agent", "timeout_seconds": 10, "payload": {"k": 1}}
    await sleep_agent(server, "agent@example.com", handler)
    caller = await server.connect()
    await caller.register("caller@example.com")
    caller.send_json({"type": "PRESENCE", "query": {"domain": "example.com"}})
    result = await caller.expect("PRESENCE_RESULT")
    assert [(e["address"], e["status"]) for e in result["addresses"]] == [("agent@example.com", "asleep")]
    caller.send_json({"type": "DIAL", "to": "agent@example.com", "metadata": {"subject": "hi"}})
    ringing = await caller.expect("RINGING", to="agent@example.com", waking=True)
    body = await asyncio.wait_for(hooks.calls.get(), TIMEOUT)
    assert body == {
        "address": "agent@example.com",
        "call_id": ringing["call_id"],
        "from": "caller@example.com",
        "handler": {**handler, "timeout_seconds": 10.0},
        "payload": {"k": 1},
        "_content_type": "application/json",
    }
    # The test plays the woken agent.
    agent = await server.connect()
    await agent.register("agent@example.com")
    ring = await agent.expect("RING", call_id=ringing["call_id"], metadata={"subject": "hi"})
    assert ring["from"] == "caller@example.com"
    agent.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await caller.expect("CONNECTED", skip=("RINGING",), call_id=ring["call_id"], to="agent@example.com")
    health = await server_health(server)
    assert health["asleep"] == 0 and health["calls"] == 1


async def server_health(server: Any) -> dict[str, Any]:
    from aiohttp import ClientSession

    async with ClientSession() as http, http.get(server.http_url + "/healthz") as response:
        result: dict[str, Any] = await response.json()
        return result


async def test_webhook_failure_is_busy_wake_failed(systemx_server: ServerFactory, hooks: Hooks) -> None:
    server = await systemx_server(env=hooks.env)
    hooks.status = 500
    await sleep_agent(
        server, "agent@example.com", {"type": "webhook", "url": hooks.url + "/x", "timeout_seconds": 10}
    )
    caller = await server.connect()
    await caller.register("caller@example.com")
    caller.send_json({"type": "DIAL", "to": "agent@example.com"})
    ringing = await caller.expect("RINGING", waking=True)
    await caller.expect("BUSY", to="agent@example.com", reason="wake_failed", call_id=ringing["call_id"])


async def test_wake_timeout_is_busy_timeout(systemx_server: ServerFactory, hooks: Hooks) -> None:
    server = await systemx_server(env=hooks.env)
    await sleep_agent(
        server, "agent@example.com", {"type": "webhook", "url": hooks.url + "/x", "timeout_seconds": 0.3}
    )
    caller = await server.connect()
    await caller.register("caller@example.com")
    caller.send_json({"type": "DIAL", "to": "agent@example.com"})
    await caller.expect("RINGING", waking=True)
    await caller.expect("BUSY", to="agent@example.com", reason="timeout")


async def test_two_callers_one_wake_rings_in_order(systemx_server: ServerFactory, hooks: Hooks) -> None:
    server = await systemx_server(env=hooks.env)
    await sleep_agent(
        server, "agent@example.com", {"type": "webhook", "url": hooks.url + "/x", "timeout_seconds": 10}
    )
    first, second = await server.connect(), await server.connect()
    await first.register("first@example.com")
    await second.register("second@example.com")
    first.send_json({"type": "DIAL", "to": "agent@example.com"})
    one = await first.expect("RINGING", waking=True)
    second.send_json({"type": "DIAL", "to": "agent@example.com"})
    two = await second.expect("RINGING", waking=True)
    await asyncio.wait_for(hooks.calls.get(), TIMEOUT)
    agent = await server.connect()
    await agent.register("agent@example.com")
    ring = await agent.expect("RING", call_id=one["call_id"], from_="first@example.com")
    agent.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await first.expect("CONNECTED", skip=("RINGING",))
    agent.send_json({"type": "HANGUP", "call_id": ring["call_id"]})
    await agent.expect("RING", call_id=two["call_id"], from_="second@example.com")
    assert hooks.calls.empty()  # one wake for both callers


async def test_spawned_agent_connects_back_and_answers(systemx_server: ServerFactory) -> None:
    handlers = {"sleepy": {"argv": [sys.executable, str(SLEEPY)], "timeout_seconds": 20}}
    server = await systemx_server(env={"SYSTEMX_SPAWN_HANDLERS": json.dumps(handlers)})
    handler = {"type": "spawn", "handler": "sleepy"}
    await sleep_agent(server, "sleepy@agents.example.com", handler)
    caller = await server.connect()
    await caller.register("caller@example.com")
    caller.send_json({"type": "DIAL", "to": "sleepy@agents.example.com"})
    ringing = await caller.expect("RINGING", waking=True)
    connected = await caller.expect("CONNECTED", 20, skip=("RINGING",), call_id=ringing["call_id"])
    caller.send_json({"type": "MSG", "call_id": connected["call_id"], "data": "Are you awake?"})
    reply = await caller.expect("MSG", call_id=connected["call_id"])
    assert reply["from"] == "sleepy@agents.example.com" and "asleep until you rang" in reply["data"]
    await caller.expect("HANGUP", call_id=connected["call_id"], reason="normal")
    await server.wait_health(asleep=1, sessions=1)


async def test_profiles_survive_restart(systemx_server: ServerFactory, hooks: Hooks) -> None:
    server = await systemx_server(env=hooks.env)
    await sleep_agent(
        server, "agent@example.com", {"type": "webhook", "url": hooks.url + "/r", "timeout_seconds": 10}
    )
    await server.restart()
    caller = await server.connect()
    await caller.register("caller@example.com")
    caller.send_json({"type": "DIAL", "to": "agent@example.com"})
    ringing = await caller.expect("RINGING", waking=True)
    body = await asyncio.wait_for(hooks.calls.get(), TIMEOUT)
    assert body["call_id"] == ringing["call_id"] and body["address"] == "agent@example.com"


async def test_disallowed_handlers_are_refused(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_WEBHOOK_ALLOW": "https://hooks.example.com/"})
    client = await server.connect()
    client.send_json(
        {
            "type": "REGISTER",
            "address": "a@example.com",
            "mode": "wake_on_ring",
            "wake_handler": {"type": "spawn", "command": ["/bin/sh", "-c", "echo pwned"]},
        }
    )
    refused = await client.expect("REGISTER_FAILED", reason="wake_handler_not_allowed")
    assert "spawn" in refused["detail"]
    client.send_json(
        {
            "type": "REGISTER",
            "address": "a@example.com",
            "mode": "wake_on_ring",
            "wake_handler": {"type": "webhook", "url": "http://10.0.0.1/internal"},
        }
    )
    await client.expect("REGISTER_FAILED", reason="wake_handler_not_allowed")
    client.send_json(
        {
            "type": "REGISTER",
            "address": "a@example.com",
            "mode": "wake_on_ring",
            "wake_handler": {"type": "webhook", "url": f"http://127.0.0.1:{server.port}/healthz"},
        }
    )
    await client.expect("REGISTER_FAILED", reason="wake_handler_not_allowed")
    client.send_json({"type": "REGISTER", "address": "a@example.com", "mode": "wake_on_ring"})
    await client.expect("REGISTER_FAILED", reason="invalid_payload")
    await client.register("a@example.com")  # the socket is still usable


async def test_auto_sleep_pending_cancel_and_sleep(systemx_server: ServerFactory, hooks: Hooks) -> None:
    server = await systemx_server(env=hooks.env)
    agent = await server.connect()
    handler = {"type": "webhook", "url": hooks.url + "/a", "timeout_seconds": 10}
    await agent.register("agent@example.com", mode="wake_on_ring", wake_handler=handler)
    agent.send_json({"type": "STATUS", "auto_sleep": {"idle_timeout_seconds": 0.3, "wake_on_ring": True}})
    pending = await agent.expect("SLEEP_PENDING", reason="idle_timeout")
    assert pending["seconds_until_sleep"] == 0  # floor of the 0.3 s grace
    agent.send_json({"type": "HEARTBEAT"})  # activity cancels the pending sleep
    await agent.expect("HEARTBEAT_ACK")
    await agent.expect("SLEEP_PENDING", reason="idle_timeout")  # idle again: warned again
    assert await agent.expect_close() == (4000, "sleep")
    assert (await server_health(server))["asleep"] == 1


async def test_sleep_ack_mid_call_hangs_up_peer(systemx_server: ServerFactory, hooks: Hooks) -> None:
    server = await systemx_server(env=hooks.env)
    agent, caller = await server.connect(), await server.connect()
    handler = {"type": "webhook", "url": hooks.url + "/a", "timeout_seconds": 10}
    await agent.register("agent@example.com", mode="wake_on_ring", wake_handler=handler)
    await caller.register("caller@example.com")
    caller.send_json({"type": "DIAL", "to": "agent@example.com", "ringing": True})
    ring = await agent.expect("RING")
    agent.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await caller.expect("CONNECTED", skip=("RINGING",))
    agent.send_json({"type": "SLEEP_ACK"})
    assert await agent.expect_close() == (4000, "sleep")
    await caller.expect("HANGUP", call_id=ring["call_id"], reason="sleep")
