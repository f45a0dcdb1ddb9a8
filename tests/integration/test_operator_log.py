"""The exchange's operator log lines on a real ``systemx serve``: text, JSON fields, DEBUG frames."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import ServerFactory, SystemXProcess
from tests.wsclient import WSClient


async def registered(server: SystemXProcess, address: str) -> WSClient:
    client = await server.connect()
    await client.register(address)
    return client


async def call(server: SystemXProcess, caller: WSClient, callee: WSClient, to: str) -> str:
    caller.send_json({"type": "DIAL", "to": to, "ringing": True})
    ring = await callee.expect("RING")
    callee.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await caller.expect("CONNECTED", skip=("RINGING",))
    caller.send_json({"type": "HANGUP", "call_id": ring["call_id"]})
    await callee.expect("HANGUP")
    return str(ring["call_id"])


async def test_info_lines_tell_calls_and_refusals(systemx_server: ServerFactory) -> None:
    server = await systemx_server()
    alice = await registered(server, "alice@example.com")
    bob = await registered(server, "bob@example.com")
    call_id = await call(server, alice, bob, "bob@example.com")
    await server.wait_for_log(
        rf"\[INFO\] Call answered: alice@example.com → bob@example.com \(call: {call_id}\)"
    )
    ended = await server.wait_for_log(rf"\[INFO\] Call ended: .*{call_id}")
    assert "alice@example.com → bob@example.com" in ended
    assert ", answered, duration " in ended and "reason normal, ended by caller)" in ended
    # A call's start is a DEBUG line: at INFO, an answered call is told twice, not three times.
    assert not [line for line in server.logs if "Call initiated" in line]

    # A refused REGISTER: the address and the reason.
    intruder = await server.connect()
    intruder.send_json({"type": "REGISTER", "address": "bob@example.com"})
    await intruder.expect("REGISTER_FAILED", reason="address_in_use")
    await server.wait_for_log(
        r"\[INFO\] Registration refused: bob@example.com \(session: [0-9a-f-]+, address_in_use\)"
    )

    # Refused calls: caller → callee and the BUSY reason, once a second per session.
    carol = await registered(server, "carol@example.com")
    since = len(server.logs)
    for _ in range(5):
        carol.send_json({"type": "DIAL", "to": "nobody@example.com"})
        await carol.expect("BUSY", reason="no_such_address")
    bob.send_json({"type": "STATUS", "status": "dnd"})
    await bob.roundtrip()
    alice.send_json({"type": "DIAL", "to": "bob@example.com"})  # another session: told on its own
    busy = await alice.expect("BUSY")
    reason = busy["reason"]
    await server.wait_for_log(
        rf"\[INFO\] Call refused: alice@example.com → bob@example.com \(session: [0-9a-f-]+, {reason}\)",
        since=since,
    )
    refused = [line for line in server.logs[since:] if "Call refused: carol@example.com" in line]
    # Five within a second or so: one line (two on a machine slow enough to take over a second).
    assert 1 <= len(refused) <= 2, refused
    assert "nobody@example.com" in refused[0] and "no_such_address" in refused[0]
    assert not any("Traceback" in line for line in server.logs)


def _entries(server: SystemXProcess, since: int = 0) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.logs[since:] if line.startswith("{")]


async def test_json_lines_carry_the_facts_as_fields(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_LOG_FORMAT": "json"})
    alice = await registered(server, "alice@example.com")
    bob = await registered(server, "bob@example.com")
    call_id = await call(server, alice, bob, "bob@example.com")
    alice.send_json({"type": "DIAL", "to": "nobody@example.com"})
    await alice.expect("BUSY")
    await server.wait_for_log(r'"event":"call_refused"')
    await server.wait_for_log(r'"event":"call_ended"')
    entries = {e.get("event"): e for e in _entries(server) if "event" in e}

    registered_line = entries["registered"]
    assert registered_line["msg"].startswith("Connection registered: ")
    assert registered_line["address"] in ("alice@example.com", "bob@example.com")
    assert registered_line["session"] and registered_line["level"] == "INFO"
    assert "call_started" not in entries  # a DEBUG line
    for name in ("call_answered", "call_ended"):
        entry = entries[name]
        assert entry["call_id"] == call_id, entry
        assert (entry["address"], entry["to"]) == ("alice@example.com", "bob@example.com"), entry
    ended = entries["call_ended"]
    assert ended["disposition"] == "answered" and ended["reason"] == "normal"
    assert ended["ended_by"] == "caller" and isinstance(ended["duration_s"], float)
    refused = entries["call_refused"]
    assert (refused["address"], refused["to"], refused["reason"]) == (
        "alice@example.com",
        "nobody@example.com",
        "no_such_address",
    )


async def test_debug_lines_name_session_address_and_remote_ip(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_LOG_LEVEL": "debug", "SYSTEMX_LOG_STREAM": "off"})
    alice = await registered(server, "alice@example.com")
    session = (await server.wait_for_log(r"Connection registered: alice@example.com")).split("session: ")[1][
        :-1
    ]
    await server.wait_for_log(rf"\[DEBUG\] Connection opened: 127\.0\.0\.1 \(session: {session}\)")
    alice.send_json({"type": "HEARTBEAT"})
    await alice.expect("HEARTBEAT_ACK")
    await server.wait_for_log(
        rf'\[DEBUG\] <- alice@example.com \(session: {session}\) {{"type":"HEARTBEAT"}}'
    )
    await server.wait_for_log(
        rf'\[DEBUG\] -> alice@example.com \(session: {session}\) {{"type":"HEARTBEAT_ACK"'
    )
    alice.transport.disconnect()
    await server.wait_for_log(
        rf"\[DEBUG\] Connection closed: 127\.0\.0\.1 \(session: {session}, address: alice@example.com\)"
    )
    assert not any("object at 0x" in line or "<Session" in line for line in server.logs)
