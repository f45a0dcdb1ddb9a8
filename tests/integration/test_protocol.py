"""The wire protocol end to end with a raw WebSocket client against ``systemx serve``.

These tests speak JSON frames directly (no client library) so that they pin the
exact messages a third-party endpoint, such as the reference SDK, sees.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.conftest import ServerFactory, SystemXProcess
from tests.wsclient import WSClient


@pytest.fixture
async def server(systemx_server: ServerFactory) -> SystemXProcess:
    return await systemx_server(
        env={
            "SYSTEMX_CALL_TIMEOUT": "400",
            "SYSTEMX_HEARTBEAT_INTERVAL": "100",
            "SYSTEMX_HEARTBEAT_TIMEOUT": "600",
            "SYSTEMX_DIAL_MAX_ATTEMPTS": "5",
            "SYSTEMX_PARTY_MAX_PARTICIPANTS": "3",
        }
    )


async def registered(server: SystemXProcess, address: str, **extra: Any) -> WSClient:
    client = await server.connect()
    reply = await client.register(address, **extra)
    uuid.UUID(reply["session_id"])
    return client


async def connected_pair(server: SystemXProcess, caller: str, callee: str) -> tuple[WSClient, WSClient, str]:
    """Register ``caller`` and ``callee``, dial, answer; both ends and the call id once CONNECTED."""
    a = await registered(server, caller)
    b = await registered(server, callee)
    a.send_json({"type": "DIAL", "to": callee, "ringing": True})
    ring = await b.expect("RING")
    b.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await a.expect("CONNECTED", skip=("RINGING",))
    return a, b, str(ring["call_id"])


async def test_register_twice_on_one_socket_like_the_reference_sdk(server: SystemXProcess) -> None:
    alice = await server.connect()
    first = await alice.register("alice@example.com")
    second = await alice.register("alice@example.com")
    assert first == second


async def test_a_plain_dial_hears_no_ringing_as_with_the_reference(server: SystemXProcess) -> None:
    # No "ringing" in the DIAL: RING to the callee, and the caller's first frame is CONNECTED.
    alice = await registered(server, "alice@example.com")
    bob = await registered(server, "bob@example.com")
    alice.send_json({"type": "DIAL", "to": "bob@example.com"})
    ring = await bob.expect("RING", from_="alice@example.com")
    bob.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    connected = await alice.recv()
    assert connected == {"type": "CONNECTED", "call_id": ring["call_id"], "to": "bob@example.com"}
    # A caller that did not ask can still hang up by the id CONNECTED gave it.
    alice.send_json({"type": "HANGUP", "call_id": ring["call_id"]})
    await bob.expect("HANGUP", call_id=ring["call_id"], reason="normal")
    # Asked with anything but a boolean: a clear ERROR, and the socket stays open.
    alice.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": "yes"})
    await alice.expect("ERROR", reason="invalid_payload", context="DIAL")
    alice.send_json({"type": "HEARTBEAT"})
    await alice.expect("HEARTBEAT_ACK")


async def test_call_flow_on_the_wire(server: SystemXProcess) -> None:
    alice = await registered(server, "alice@example.com")
    bob = await registered(server, "bob@example.com")
    alice.send_json(
        {
            "type": "DIAL",
            "to": "bob@example.com",
            "metadata": {"subject": "hi", "priority": "high"},
            "ringing": True,
        }
    )
    ringing = await alice.expect("RINGING", to="bob@example.com")
    ring = await bob.expect(
        "RING", call_id=ringing["call_id"], metadata={"subject": "hi", "priority": "high"}
    )
    assert ring["from"] == "alice@example.com"
    bob.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    assert await alice.recv() == {"type": "CONNECTED", "call_id": ring["call_id"], "to": "bob@example.com"}
    alice.send_json({"type": "MSG", "call_id": ring["call_id"], "data": "hello", "from": "eve@example.com"})
    assert await bob.recv() == {
        "type": "MSG",
        "call_id": ring["call_id"],
        "from": "alice@example.com",
        "data": "hello",
        "content_type": "text",
    }
    bob.send_json({"type": "MSG", "call_id": ring["call_id"], "data": '{"a": 1}', "content_type": "json"})
    assert (await alice.expect("MSG"))["content_type"] == "json"
    alice.send_json({"type": "HANGUP", "call_id": ring["call_id"]})
    assert await bob.recv() == {"type": "HANGUP", "call_id": ring["call_id"], "reason": "normal"}
    await server.wait_for_log(
        r"\[INFO\] Call ended: alice@example.com → bob@example.com \(call: "
        + ring["call_id"]
        + r", answered, duration [0-9.]+s, reason normal, ended by caller\)"
    )
    assert not [line for line in server.logs if "Call initiated" in line]


async def test_ring_timeout_on_the_wire(server: SystemXProcess) -> None:
    alice = await registered(server, "alice@example.com")
    bob = await registered(server, "bob@example.com")
    alice.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
    ring = await bob.expect("RING")
    await alice.expect("BUSY", skip=("RINGING",), to="bob@example.com", reason="timeout")
    await bob.expect("HANGUP", call_id=ring["call_id"], reason="timeout")


async def test_heartbeat_expiry_closes_and_frees(server: SystemXProcess) -> None:
    quiet = await registered(server, "quiet@example.com")
    assert await quiet.expect_close() == (4000, "timeout")
    await server.wait_for_log(r"\[WARN(ING)?\] Heartbeat timeout: quiet@example\.com")
    again = await registered(server, "quiet@example.com")
    await again.roundtrip()


async def test_heartbeats_keep_a_session(server: SystemXProcess) -> None:
    alive = await registered(server, "alive@example.com")
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.2  # two heartbeat timeouts
    while loop.time() < end:
        alive.send_json({"type": "HEARTBEAT"})
        ack = await alive.expect("HEARTBEAT_ACK")
        assert isinstance(ack["timestamp"], int)
    await alive.roundtrip()


async def test_disconnect_mid_call_gives_peer_disconnected(server: SystemXProcess) -> None:
    alice, bob, call_id = await connected_pair(server, "alice@example.com", "bob@example.com")
    await alice.close()
    await bob.expect("HANGUP", call_id=call_id, reason="peer_disconnected")


async def test_foreign_call_ids_are_ignored(server: SystemXProcess) -> None:
    alice, bob, call_id = await connected_pair(server, "alice@example.com", "bob@example.com")
    eve = await registered(server, "eve@example.com")
    for frame in ("MSG", "HANGUP", "ANSWER"):
        eve.send_json({"type": frame, "call_id": call_id, "data": "x"})
    eve.send_json({"type": "MSG", "call_id": str(uuid.uuid4()), "data": "x"})
    await eve.roundtrip()
    alice.send_json({"type": "MSG", "call_id": call_id, "data": "still here"})
    assert (await bob.recv())["data"] == "still here"  # nothing from eve came first
    await server.wait_for_log(r"\[WARN(ING)?\] MSG ignored")


async def test_busy_statuses_and_rate_limit(server: SystemXProcess) -> None:
    alice = await registered(server, "alice@example.com")
    bob = await registered(server, "bob@example.com", metadata={"status": "dnd"})
    alice.send_json({"type": "DIAL", "to": "bob@example.com"})
    await alice.expect("BUSY", to="bob@example.com", reason="dnd")
    bob.send_json({"type": "STATUS", "status": "away"})
    await bob.roundtrip()
    alice.send_json({"type": "DIAL", "to": "bob@example.com"})
    await alice.expect("BUSY", reason="away")
    alice.send_json({"type": "DIAL", "to": "nobody@example.com"})
    await alice.expect("BUSY", reason="no_such_address")
    alice.send_json({"type": "DIAL", "to": "alice@example.com"})
    await alice.expect("BUSY", reason="already_in_call")
    alice.send_json({"type": "DIAL", "to": "bob@example.com"})
    await alice.expect("BUSY", reason="away")
    alice.send_json({"type": "DIAL", "to": "bob@example.com"})
    await alice.expect("ERROR", reason="rate_limited", context="DIAL", detail="Too many dial attempts")


@pytest.mark.parametrize(
    ("frame", "context"),
    [
        (b"[]", "UNKNOWN"),
        (b"null", "UNKNOWN"),
        (b"{}", "UNKNOWN"),
        (b'{"type":"NOPE"}', "UNKNOWN"),
        (b'{"type":"DIAL","to":42}', "DIAL"),
        (b'{"type":"HANGUP"}', "HANGUP"),
        (b'{"type":"STATUS","status":"asleep"}', "STATUS"),
    ],
)
async def test_bad_frames_get_error_and_socket_stays(
    server: SystemXProcess, frame: bytes, context: str
) -> None:
    client = await registered(server, "alice@example.com")
    client.send_raw(frame)
    error = await client.expect("ERROR", reason="invalid_payload", context=context)
    assert error["detail"]
    await client.roundtrip()


async def test_binary_frames_carry_json(server: SystemXProcess) -> None:
    client = await server.connect()
    client.send_raw(b'{"type":"REGISTER","address":"bin@example.com"}', binary=True)
    await client.expect("REGISTERED", address="bin@example.com")


async def test_unregister_closes_and_frees(server: SystemXProcess) -> None:
    alice = await registered(server, "alice@example.com")
    alice.send_json({"type": "UNREGISTER"})
    assert await alice.expect_close() == (4000, "client_requested")
    await registered(server, "alice@example.com")


async def test_parallel_and_broadcast_modes(server: SystemXProcess) -> None:
    svc = await registered(server, "svc@example.com", concurrency="parallel", max_sessions=1)
    radio = await registered(server, "radio@example.com", concurrency="broadcast", max_listeners=1)
    a = await registered(server, "a@example.com")
    b = await registered(server, "b@example.com")
    a.send_json({"type": "DIAL", "to": "svc@example.com"})
    await svc.expect("RING")
    b.send_json({"type": "DIAL", "to": "svc@example.com"})
    await b.expect("BUSY", reason="max_sessions_reached")
    b.send_json({"type": "DIAL", "to": "radio@example.com"})
    connected = await b.expect("CONNECTED", to="radio@example.com")
    await radio.expect("RING", call_id=connected["call_id"], from_="b@example.com")
    radio.send_json({"type": "MSG", "call_id": connected["call_id"], "data": "on air"})
    assert (await b.expect("MSG"))["from"] == "radio@example.com"


async def test_party_line_on_the_wire(server: SystemXProcess) -> None:
    a, b, c, d = [await registered(server, f"{n}@example.com") for n in "abcd"]
    a.send_json({"type": "JOIN", "party": "room@party.example.com"})
    await a.expect("JOIN_FAILED", party="room@party.example.com", reason="no_such_party")
    a.send_json({"type": "JOIN", "party": "room@party.example.com", "create_if_missing": True})
    await a.expect("JOINED", participants=["a@example.com"])
    b.send_json({"type": "JOIN", "party": "room@party.example.com"})
    await b.expect("JOINED", participants=["a@example.com", "b@example.com"])
    await a.expect("PARTY_JOINED", address="b@example.com")
    c.send_json({"type": "JOIN", "party": "room@party.example.com"})
    await c.expect("JOINED")
    await b.expect("PARTY_JOINED", address="c@example.com")
    d.send_json({"type": "JOIN", "party": "room@party.example.com"})
    await d.expect("JOIN_FAILED", reason="party_full")
    d.send_json({"type": "PARTY_MSG", "party": "room@party.example.com", "data": "let me in"})
    await d.expect("ERROR", reason="not_in_party", context="PARTY_MSG")
    b.send_json({"type": "PARTY_MSG", "party": "room@party.example.com", "data": {"n": 1}})
    expected = {
        "type": "PARTY_MSG",
        "party": "room@party.example.com",
        "from": "b@example.com",
        "data": {"n": 1},
    }
    assert await a.expect("PARTY_MSG", skip=("PARTY_JOINED",)) == expected
    assert await c.expect("PARTY_MSG") == expected
    await b.roundtrip()  # no echo: the next frame b sees is its HEARTBEAT_ACK
    assert [m for m in b.skipped if m["type"] == "PARTY_MSG"] == []
    await b.close()
    assert (await a.expect("PARTY_LEFT"))["reason"] == "disconnected"
    c.send_json({"type": "LEAVE", "party": "room@party.example.com"})
    await c.expect("LEFT", skip=("PARTY_LEFT",), party="room@party.example.com")
    await a.expect("PARTY_LEFT", address="c@example.com", reason="left")


async def test_presence_on_the_wire(server: SystemXProcess) -> None:
    await registered(
        server,
        "coder@leeds.example.org",
        metadata={"capabilities": ["chat", "code"], "location": {"lat": 53.8, "lon": -1.55}},
    )
    await registered(
        server,
        "chatter@york.example.org",
        metadata={"capabilities": ["chat"], "location": {"lat": 53.96, "lon": -1.08}},
    )
    asker = await registered(server, "asker@example.com")
    asker.send_json(
        {
            "type": "PRESENCE",
            "query": {"capabilities": ["chat"], "near": {"lat": 53.7, "lon": -1.8, "radius_km": 60}},
        }
    )
    result = await asker.expect("PRESENCE_RESULT")
    assert [e["address"] for e in result["addresses"]] == [
        "coder@leeds.example.org",
        "chatter@york.example.org",
    ]
    assert result["addresses"][0] == {
        "address": "coder@leeds.example.org",
        "status": "available",
        "metadata": {"capabilities": ["chat", "code"], "location": {"lat": 53.8, "lon": -1.55}},
    }
    asker.send_json({"type": "PRESENCE", "query": {"domain": "york.example.org"}})
    assert [e["address"] for e in (await asker.expect("PRESENCE_RESULT"))["addresses"]] == [
        "chatter@york.example.org"
    ]
    bad = await server.connect()
    bad.send_json(
        {"type": "REGISTER", "address": "bad@example.com", "metadata": {"location": {"lat": "x", "lon": 0}}}
    )
    await bad.expect("REGISTER_FAILED", reason="invalid_payload", address="bad@example.com")


async def test_bad_input_leaves_nothing_behind(server: SystemXProcess) -> None:

    bystander, peer, call_id = await connected_pair(server, "bystander@example.com", "peer@example.com")
    bad_frames = [b"{oops", b'{"type":"MSG","data":"\xff"}', b"[1,2]", b'{"type":"DIAL","to":{}}', b"null"]
    for round_ in range(40):
        client = await registered(server, f"noisy{round_}@example.com")
        client.send_json(
            {"type": "JOIN", "party": f"room{round_ % 3}@x.example.com", "create_if_missing": True}
        )
        client.send_json({"type": "DIAL", "to": "peer@example.com"})
        client.send_raw(bad_frames[round_ % len(bad_frames)])
        if round_ % len(bad_frames) == 0:  # not JSON: the exchange closes
            code, _ = await client.expect_close()
            assert code == 1003
        elif round_ % len(bad_frames) == 1:  # invalid UTF-8: the exchange closes
            assert (await client.expect_close())[0] == 1007
        else:
            await client.expect(
                "ERROR", skip=("JOINED", "PARTY_JOINED", "RINGING", "BUSY"), reason="invalid_payload"
            )
            await client.close()
    bystander.send_json({"type": "MSG", "call_id": call_id, "data": "unharmed"})
    assert (await peer.expect("MSG"))["data"] == "unharmed"
    await bystander.close()
    await peer.close()
    await server.wait_health(sessions=0, registered=0, calls=0, parties=0)
