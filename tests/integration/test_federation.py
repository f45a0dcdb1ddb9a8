"""Federation between real exchanges: a parent and its child over a real trunk.

The parent (``hq.test``) runs with default settings; the child
(``branch.test``) dials it with the reference's ``FEDERATION_*`` settings and
sends addresses matching ``*@hq.test`` up the trunk. A few tests play the
trunk themselves with a raw socket sending ``REGISTER_PBX``.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Mapping
from typing import Any

import msgspec
import pytest
from aiohttp import ClientSession

from systemx.client import BusyError, connect
from tests.conftest import ServerFactory, SystemXProcess
from tests.wsclient import TIMEOUT, WSClient, scaled

pytestmark = pytest.mark.slow

_UP = re.compile(r"Trunk \S+ up")


def child_env(parent: SystemXProcess, **extra: str) -> dict[str, str]:
    return {
        "FEDERATION_ENABLED": "true",
        "FEDERATION_PEER_URL": parent.url,
        "FEDERATION_ROUTES": "*@hq.test",
        "FEDERATION_DOMAIN": "branch.test",
        "FEDERATION_PEER_ID": "hq",
        "FEDERATION_RECONNECT_DELAY_MS": "100",
        **extra,
    }


async def start_pair(
    systemx_server: ServerFactory,
    parent_env: Mapping[str, str] | None = None,
    **child_extra: str,
) -> tuple[SystemXProcess, SystemXProcess]:
    parent = await systemx_server(env=parent_env)
    child = await systemx_server(env=child_env(parent, **child_extra))
    await child.wait_for_log(_UP)
    return parent, child


async def health(server: SystemXProcess) -> dict[str, Any]:
    async with ClientSession() as http, http.get(server.http_url + "/healthz") as response:
        body = await response.read()
    decoded = msgspec.json.decode(body)
    assert isinstance(decoded, dict)
    return decoded


async def client(server: SystemXProcess, address: str, clients: list[WSClient], **extra: Any) -> WSClient:
    c = await server.connect()
    clients.append(c)
    await c.register(address, **extra)
    return c


@pytest.fixture
async def clients() -> Any:
    opened: list[WSClient] = []
    yield opened
    for c in opened:
        c.transport.disconnect()


async def call(caller: WSClient, callee: WSClient, to: str, caller_address: str) -> str:
    """``caller`` dials ``to`` (held by ``callee`` across the trunk) and ``callee`` answers."""
    caller.send_json({"type": "DIAL", "to": to, "ringing": True})
    ring = await callee.expect("RING", from_=caller_address)
    call_id = ring["call_id"]
    await caller.expect("RINGING", call_id=call_id, to=to)
    callee.send_json({"type": "ANSWER", "call_id": call_id})
    await caller.expect("CONNECTED", call_id=call_id, to=to)
    return str(call_id)


async def test_call_from_child_to_parent(systemx_server: ServerFactory, clients: list[WSClient]) -> None:
    parent, child = await start_pair(systemx_server)
    # No SYSTEMX_PBX_TOKENS: any trunk is accepted, and the exchange says so at start.
    assert any("SYSTEMX_PBX_TOKENS is not set" in line for line in parent.logs)
    assert (await health(parent))["trunks"] == 1
    assert (await health(child))["trunks"] == 1
    bob = await client(parent, "bob@hq.test", clients)
    alice = await client(child, "alice@branch.test", clients)
    call_id = await call(alice, bob, "bob@hq.test", "alice@branch.test")
    # MSG both ways; "from" is set by the exchange, whatever the sender wrote.
    alice.send_json({"type": "MSG", "call_id": call_id, "data": "hi bob", "from": "mallory@hq.test"})
    await bob.expect("MSG", call_id=call_id, from_="alice@branch.test", data="hi bob")
    bob.send_json({"type": "MSG", "call_id": call_id, "data": {"n": 1}, "content_type": "json"})
    await alice.expect("MSG", call_id=call_id, from_="bob@hq.test", data={"n": 1}, content_type="json")
    bob.send_json({"type": "HANGUP", "call_id": call_id})
    await alice.expect("HANGUP", call_id=call_id, reason="normal")
    assert (await health(parent))["calls"] == 0
    assert (await health(child))["calls"] == 0


async def test_call_from_parent_to_child(systemx_server: ServerFactory, clients: list[WSClient]) -> None:
    parent, child = await start_pair(systemx_server)
    bob = await client(parent, "bob@hq.test", clients)
    alice = await client(child, "alice@branch.test", clients)
    call_id = await call(bob, alice, "alice@branch.test", "bob@hq.test")
    bob.send_json({"type": "MSG", "call_id": call_id, "data": "hello"})
    await alice.expect("MSG", call_id=call_id, from_="bob@hq.test", data="hello")
    alice.send_json({"type": "MSG", "call_id": call_id, "data": "hey"})
    await bob.expect("MSG", call_id=call_id, from_="alice@branch.test", data="hey")
    alice.send_json({"type": "HANGUP", "call_id": call_id, "reason": "done"})
    await bob.expect("HANGUP", call_id=call_id, reason="done")


async def test_busy_reasons_cross_the_trunk(systemx_server: ServerFactory, clients: list[WSClient]) -> None:
    parent, child = await start_pair(systemx_server)
    bob = await client(parent, "bob@hq.test", clients)
    carol = await client(child, "carol@branch.test", clients)
    dave = await client(child, "dave@branch.test", clients, metadata={"status": "dnd"})
    erin = await client(child, "erin@branch.test", clients)
    await call(carol, erin, "erin@branch.test", "carol@branch.test")
    for to, reason in (
        ("nobody@branch.test", "no_such_address"),
        ("carol@branch.test", "already_in_call"),
        ("dave@branch.test", "dnd"),
    ):
        bob.send_json({"type": "DIAL", "to": to, "ringing": True})
        ringing = await bob.expect("RINGING", to=to)
        await bob.expect("BUSY", to=to, reason=reason, call_id=ringing["call_id"])
    await dave.roundtrip()
    # And from the child up: the parent's local answers come down.
    carol_free = await client(child, "frank@branch.test", clients)
    carol_free.send_json({"type": "DIAL", "to": "nobody@hq.test", "ringing": True})
    await carol_free.expect("BUSY", to="nobody@hq.test", reason="no_such_address", skip=("RINGING",))
    assert (await health(parent))["calls"] == 0


async def test_ring_timeout_runs_on_the_caller_side(
    systemx_server: ServerFactory, clients: list[WSClient]
) -> None:
    parent, child = await start_pair(systemx_server, {"SYSTEMX_CALL_TIMEOUT": "60000"})
    child.env["SYSTEMX_CALL_TIMEOUT"] = "700"
    await child.restart()
    await child.wait_for_log(_UP, since=len(child.logs) - 1)
    bob = await client(parent, "bob@hq.test", clients)
    alice = await client(child, "alice@branch.test", clients)
    alice.send_json({"type": "DIAL", "to": "bob@hq.test", "ringing": True})
    ring = await bob.expect("RING", from_="alice@branch.test")
    await alice.expect("RINGING", call_id=ring["call_id"])
    await alice.expect("BUSY", to="bob@hq.test", reason="timeout", call_id=ring["call_id"])
    await bob.expect("HANGUP", call_id=ring["call_id"], reason="timeout")


async def test_caller_cancel_crosses(systemx_server: ServerFactory, clients: list[WSClient]) -> None:
    parent, child = await start_pair(systemx_server)
    bob = await client(parent, "bob@hq.test", clients)
    alice = await client(child, "alice@branch.test", clients)
    bob.send_json({"type": "DIAL", "to": "alice@branch.test", "ringing": True})
    ring = await alice.expect("RING", from_="bob@hq.test")
    await bob.expect("RINGING", call_id=ring["call_id"], to="alice@branch.test")
    bob.send_json({"type": "HANGUP", "call_id": ring["call_id"]})
    await alice.expect("HANGUP", call_id=ring["call_id"], reason="normal")
    assert (await health(child))["calls"] == 0


async def test_trunk_drop_mid_call_ends_after_the_grace(
    systemx_server: ServerFactory, clients: list[WSClient]
) -> None:
    grace = 0.4
    parent, child = await start_pair(systemx_server, {"SYSTEMX_TRUNK_GRACE_MS": str(int(grace * 1000))})
    bob = await client(parent, "bob@hq.test", clients)
    alice = await client(child, "alice@branch.test", clients)
    call_id = await call(alice, bob, "bob@hq.test", "alice@branch.test")
    start = time.monotonic()
    await child.stop(signal.SIGKILL)
    await bob.expect("HANGUP", call_id=call_id, reason="peer_disconnected", timeout=TIMEOUT + grace)
    assert time.monotonic() - start >= grace * 0.9
    assert (await health(parent))["trunks"] == 0


async def test_parent_restart_child_registers_again(
    systemx_server: ServerFactory, clients: list[WSClient]
) -> None:
    parent, child = await start_pair(systemx_server)
    alice = await client(child, "alice@branch.test", clients)
    mark = len(child.logs)
    await parent.stop()
    await child.wait_for_log("connection to the parent lost", since=mark)
    # The trunk is down: a DIAL for its routes is answered at once, local calls go on.
    alice.send_json({"type": "DIAL", "to": "bob@hq.test"})
    await alice.expect("BUSY", to="bob@hq.test", reason="unavailable")
    mark = len(child.logs)
    await parent.start()
    await child.wait_for_log(_UP, timeout=scaled(35), since=mark)
    bob = await client(parent, "bob@hq.test", clients)
    call_id = await call(alice, bob, "bob@hq.test", "alice@branch.test")
    bob.send_json({"type": "MSG", "call_id": call_id, "data": "back"})
    await alice.expect("MSG", call_id=call_id, from_="bob@hq.test", data="back")


async def test_wrong_trunk_token_is_refused(systemx_server: ServerFactory, clients: list[WSClient]) -> None:
    parent = await systemx_server(env={"SYSTEMX_PBX_TOKENS": "s3cret=*@branch.test"})
    child = await systemx_server(env=child_env(parent, FEDERATION_AUTH="wrong"))
    await child.wait_for_log("refused the registration: auth_failed")
    await parent.wait_for_log("Trunk refused: domain branch.test")
    assert (await health(parent))["trunks"] == 0
    # What the trunk sees on the wire.
    raw = await parent.connect()
    clients.append(raw)
    raw.send_json({"type": "REGISTER_PBX", "domain": "x.test", "routes": ["*@x.test"], "auth": "nope"})
    await raw.expect("REGISTER_FAILED", reason="auth_failed")
    assert (await raw.expect_close())[0] == 1008
    # The right token, but routes outside what it allows.
    raw = await parent.connect()
    clients.append(raw)
    raw.send_json({"type": "REGISTER_PBX", "domain": "x.test", "routes": ["*@hq.test"], "auth": "s3cret"})
    await raw.expect("REGISTER_FAILED", reason="route_not_allowed")
    # The right token and routes.
    raw = await parent.connect()
    clients.append(raw)
    raw.send_json(
        {"type": "REGISTER_PBX", "domain": "branch.test", "routes": ["*@branch.test"], "auth": "s3cret"}
    )
    await raw.expect("REGISTERED_PBX", domain="branch.test")


async def test_no_loop_between_two_exchanges(systemx_server: ServerFactory, clients: list[WSClient]) -> None:
    # a and b are each the other's child, and each sends *@x.test to the other.
    a = await systemx_server()
    b = await systemx_server(
        env={
            "FEDERATION_ENABLED": "true",
            "FEDERATION_PEER_URL": a.url,
            "FEDERATION_ROUTES": "*@x.test",
            "FEDERATION_ANNOUNCE_ROUTES": "*@x.test,*@b.test",
            "FEDERATION_DOMAIN": "b.test",
            "FEDERATION_RECONNECT_DELAY_MS": "100",
        }
    )
    await b.wait_for_log(_UP)
    a.env.update(
        {
            "FEDERATION_ENABLED": "true",
            "FEDERATION_PEER_URL": b.url,
            "FEDERATION_ROUTES": "*@x.test",
            "FEDERATION_ANNOUNCE_ROUTES": "*@x.test,*@a.test",
            "FEDERATION_DOMAIN": "a.test",
            "FEDERATION_RECONNECT_DELAY_MS": "100",
        }
    )
    mark_a, mark_b = len(a.logs), len(b.logs)
    await a.restart()
    await a.wait_for_log(_UP, since=mark_a)
    await b.wait_for_log(_UP, timeout=scaled(35), since=mark_b)
    caller = await client(a, "caller@a.test", clients)
    start = time.monotonic()
    caller.send_json({"type": "DIAL", "to": "ghost@x.test", "ringing": True})
    await caller.expect("BUSY", to="ghost@x.test", reason="no_such_address", skip=("RINGING",))
    assert time.monotonic() - start < scaled(2)
    await caller.roundtrip()
    # The dial went a -> b -> a once and was refused there: no ping-pong.
    forwarded = [line for line in a.logs[mark_a:] + b.logs if "Call forwarded" in line and "ghost" in line]
    assert len(forwarded) == 2, forwarded
    assert any("routing loop" in line for line in a.logs[mark_a:])


async def test_a_trunk_never_captures_a_local_address(
    server: SystemXProcess, clients: list[WSClient]
) -> None:
    trunk = await server.connect()
    clients.append(trunk)
    trunk.send_json({"type": "REGISTER_PBX", "domain": "grab.test", "routes": ["bob@example.com", "*"]})
    await trunk.expect("REGISTERED_PBX")
    bob = await client(server, "bob@example.com", clients)
    alice = await client(server, "alice@example.com", clients)
    alice.send_json({"type": "DIAL", "to": "bob@example.com"})
    await bob.expect("RING", from_="alice@example.com")
    await trunk.roundtrip()  # the trunk got no DIAL_FORWARD
    assert not trunk.skipped


async def test_the_most_specific_route_wins(server: SystemXProcess, clients: list[WSClient]) -> None:
    wide = await server.connect()
    narrow = await server.connect()
    clients += [wide, narrow]
    wide.send_json({"type": "REGISTER_PBX", "domain": "wide.test", "routes": ["*@sub.test"]})
    await wide.expect("REGISTERED_PBX")
    narrow.send_json({"type": "REGISTER_PBX", "domain": "narrow.test", "routes": ["*.vip@sub.test"]})
    await narrow.expect("REGISTERED_PBX")
    alice = await client(server, "alice@example.com", clients)
    alice.send_json({"type": "DIAL", "to": "ann.vip@sub.test", "ringing": True})
    fwd = await narrow.expect("DIAL_FORWARD", to="ann.vip@sub.test", from_="alice@example.com")
    await wide.roundtrip()
    narrow.send_json({"type": "BUSY", "call_id": fwd["call_id"], "to": "ann.vip@sub.test", "reason": "dnd"})
    await alice.expect("RINGING", to="ann.vip@sub.test", call_id=fwd["call_id"])
    await alice.expect("BUSY", to="ann.vip@sub.test", reason="dnd", call_id=fwd["call_id"])
    alice.send_json({"type": "DIAL", "to": "joe@sub.test"})
    await wide.expect("DIAL_FORWARD", to="joe@sub.test")
    await narrow.roundtrip()


async def test_client_library_dial_across_a_trunk(systemx_server: ServerFactory) -> None:
    parent, child = await start_pair(systemx_server)
    async with (
        connect(parent.url, "bob@hq.test") as bob,
        connect(child.url, "alice@branch.test") as alice,
    ):
        dialling = asyncio.ensure_future(alice.dial("bob@hq.test", timeout=TIMEOUT))
        incoming = await bob.next_call(TIMEOUT)
        assert incoming.from_ == "alice@branch.test"
        bob_call = await incoming.answer()
        alice_call = await dialling
        assert alice_call.peer == "bob@hq.test"
        await alice_call.send("over the trunk")
        message = await asyncio.wait_for(bob_call.recv(), TIMEOUT)
        assert message.from_ == "alice@branch.test" and message.data == "over the trunk"
        await bob_call.hangup()
        assert await asyncio.wait_for(alice_call.ended, TIMEOUT) == "normal"
    with pytest.raises(BusyError):
        async with connect(child.url, "carl@branch.test") as carl:
            await carl.dial("nobody@hq.test", timeout=TIMEOUT)


async def test_a_trunk_back_within_the_grace_keeps_its_calls(
    systemx_server: ServerFactory, clients: list[WSClient]
) -> None:
    server = await systemx_server(env={"SYSTEMX_TRUNK_GRACE_MS": "10000"})
    register = {"type": "REGISTER_PBX", "domain": "t.test", "routes": ["*@t.test"]}
    trunk = await server.connect()
    trunk.send_json(register)
    await trunk.expect("REGISTERED_PBX", domain="t.test")
    bob = await client(server, "bob@example.com", clients)
    bob.send_json({"type": "DIAL", "to": "tina@t.test", "ringing": True})
    fwd = await trunk.expect("DIAL_FORWARD", to="tina@t.test", from_="bob@example.com")
    call_id = fwd["call_id"]
    trunk.send_json({"type": "RING", "call_id": call_id, "from": "tina@t.test"})
    trunk.send_json({"type": "ANSWER", "call_id": call_id, "from": "tina@t.test"})
    await bob.expect("RINGING", call_id=call_id)
    await bob.expect("CONNECTED", call_id=call_id, to="tina@t.test")
    trunk.transport.disconnect()
    await server.wait_for_log("Trunk t.test down")
    again = await server.connect()
    clients.append(again)
    again.send_json(register)
    await again.expect("REGISTERED_PBX", domain="t.test")
    bob.send_json({"type": "MSG", "call_id": call_id, "data": "still there?"})
    await again.expect("MSG", call_id=call_id, from_="bob@example.com", data="still there?")
    again.send_json({"type": "MSG", "call_id": call_id, "data": "yes"})
    await bob.expect("MSG", call_id=call_id, from_="tina@t.test", data="yes")
    again.send_json({"type": "HANGUP", "call_id": call_id})
    await bob.expect("HANGUP", call_id=call_id, reason="normal")
