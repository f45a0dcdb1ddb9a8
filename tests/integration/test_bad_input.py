"""Bad input at the door, over real sockets: every frame gets its documented answer.

No frame may close a socket with 1011 or put a traceback in the log, and what one
session sends never reaches another: a malformed frame gets ``ERROR invalid_payload``
(or ``REGISTER_FAILED`` for a REGISTER) and the socket stays usable; values the
exchange keeps (metadata, wake payloads) are bounded in depth and size, so whatever
it accepts it can always send on.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import ClientSession

from tests.conftest import ServerFactory, SystemXProcess
from tests.wsclient import WSClient


@pytest.fixture
async def server(systemx_server: ServerFactory) -> SystemXProcess:
    return await systemx_server(env={"SYSTEMX_DIAL_MAX_ATTEMPTS": "0"})


def nested(depth: int, leaf: str = "1") -> str:
    """A JSON array nested ``depth`` levels deep."""
    return "[" * depth + leaf + "]" * depth


def nested_object(depth: int) -> dict[str, Any]:
    """An object nested ``depth`` levels deep (the outer object is level 1)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


async def registered(server: SystemXProcess, address: str, **extra: Any) -> WSClient:
    client = await server.connect()
    await client.register(address, **extra)
    return client


async def health(server: SystemXProcess) -> dict[str, Any]:
    async with ClientSession() as http, http.get(server.http_url + "/healthz") as response:
        body: dict[str, Any] = await response.json()
    return body


def assert_clean_log(server: SystemXProcess) -> None:
    # picows logs "Initiate disconnect" when a listener raises, before it closes the socket 1011.
    bad = [line for line in server.logs if "Traceback" in line or "Initiate disconnect" in line]
    assert not bad, server.logs


# ---------------------------------------------------------------- malformed frames

MALFORMED: list[tuple[str, bytes]] = [
    ("truncated object", b'{"type":"HEARTBEAT"'),
    ("truncated array", b"[1,2"),
    ("bare word", b"{oops"),
    ("trailing garbage after a number", b"5abc"),
    ("trailing garbage after an object", b'{"type":"HEARTBEAT"} x'),
    ("two objects", b'{"type":"HEARTBEAT"}{"type":"HEARTBEAT"}'),
    ("empty", b""),
    ("whitespace", b"   "),
    ("NaN literal", b'{"type":"HEARTBEAT","x":NaN}'),
    ("Infinity literal", b"Infinity"),
    ("single quotes", b"{'type':'HEARTBEAT'}"),
    ("trailing comma", b'{"type":"HEARTBEAT",}'),
    ("trailing comma in data", b'{"type":"MSG","call_id":"c","data":[1,]}'),
    ("lone surrogate escape", b'{"type":"DIAL","to":"\\ud800@b.c"}'),
    ("bad escape", b'{"type":"DIAL","to":"\\x41@b.c"}'),
    ("control character in a string", b'{"type":"DIAL","to":"a\x01@b.c"}'),
    ("number out of range", b"1e999"),
    ("number out of range in a field", b'{"type":"PRESENCE","limit":1e999}'),
    ("number out of range in metadata", b'{"type":"DIAL","to":"b@b.c","metadata":{"x":-1e999}}'),
    ("huge integer for a positive int", b'{"type":"PRESENCE","limit":-' + b"9" * 400 + b"}"),
    ("top-level array", b"[]"),
    ("top-level string", b'"HEARTBEAT"'),
    ("top-level null", b"null"),
    ("top-level number", b"42"),
    ("no type", b'{"to":"b@b.c"}'),
    ("unknown type", b'{"type":"NOPE"}'),
    ("non-string type", b'{"type":["HEARTBEAT"]}'),
    ("exchange-only type", b'{"type":"RING","call_id":"c","from":"a@b.c"}'),
    ("repeated type key", b'{"type":"HEARTBEAT","type":"DIAL"}'),
    ("deep top-level array", nested(100_000).encode()),
    ("deep unknown field", b'{"type":"HEARTBEAT","x":' + nested(5_000).encode() + b"}"),
    ("deep MSG data", b'{"type":"MSG","call_id":"c","data":' + nested(5_000).encode() + b"}"),
    ("deep truncated", b'{"type":"MSG","call_id":"c","data":' + b"[" * 5_000),
    ("deep object", (b'{"a":' * 3_000) + b"1" + b"}" * 3_000),
]


NOT_JSON = {
    "truncated object",
    "truncated array",
    "bare word",
    "trailing garbage after a number",
    "trailing garbage after an object",
    "two objects",
    "empty",
    "whitespace",
    "NaN literal",
    "Infinity literal",
    "single quotes",
    "trailing comma",
    "trailing comma in data",
    "lone surrogate escape",
    "bad escape",
    "control character in a string",
    "number out of range",
}
NOT_A_MESSAGE = [(name, frame) for name, frame in MALFORMED if name not in NOT_JSON]
UNPARSABLE = [(name, frame) for name, frame in MALFORMED if name in NOT_JSON]


@pytest.mark.parametrize("frame", [f for _, f in NOT_A_MESSAGE], ids=[name for name, _ in NOT_A_MESSAGE])
async def test_json_that_is_no_message_gets_error_and_the_socket_stays(
    server: SystemXProcess, frame: bytes
) -> None:
    client = await registered(server, "alice@example.com")
    client.send_raw(frame)
    error = await client.expect("ERROR", reason="invalid_payload")
    assert error["context"] in ("UNKNOWN", "HEARTBEAT", "MSG", "DIAL", "PRESENCE"), error
    assert error["detail"]
    await client.roundtrip()
    assert_clean_log(server)


@pytest.mark.parametrize("frame", [f for _, f in UNPARSABLE], ids=[name for name, _ in UNPARSABLE])
async def test_text_that_is_not_json_closes_1003_and_touches_no_one_else(
    server: SystemXProcess, frame: bytes
) -> None:
    # As the specification and the reference router: malformed JSON closes the socket.
    alice = await registered(server, "alice@example.com")
    bob = await registered(server, "bob@example.com")
    alice.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
    ring = await bob.expect("RING")
    bob.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await alice.expect("CONNECTED", skip=("RINGING",))
    alice.send_raw(frame)
    assert await alice.expect_close() == (1003, "Invalid JSON")
    await bob.expect("HANGUP", call_id=ring["call_id"], reason="peer_disconnected")
    await bob.roundtrip()
    assert_clean_log(server)


async def test_every_unparsable_frame_gets_the_same_answer(server: SystemXProcess) -> None:
    for frame in (b"{oops", b"5abc", b"[1,2", b"1e999", b'{"type":"HEARTBEAT"} x'):
        client = await server.connect()
        client.send_raw(frame)
        assert await client.expect_close() == (1003, "Invalid JSON"), frame
    client = await server.connect()
    client.send_raw(b'{"type":"HEARTBEAT","x":' + nested(100_000).encode() + b"}")
    await client.expect("ERROR", reason="invalid_payload", detail="JSON nested too deep")
    await client.roundtrip()


async def test_invalid_utf8_closes_1007(server: SystemXProcess) -> None:
    client = await server.connect()
    client.send_raw(b'{"type":"HEARTBEAT","x":"\xff"}')
    assert await client.expect_close() == (1007, "Invalid UTF-8")


async def test_duplicate_keys_the_last_one_counts(server: SystemXProcess) -> None:
    client = await server.connect()
    client.send_raw(b'{"type":"REGISTER","address":"first@example.com","address":"last@example.com"}')
    await client.expect("REGISTERED", address="last@example.com")


async def test_garbage_flood_is_answered_and_logged_sparingly(server: SystemXProcess) -> None:
    client = await server.connect()
    before = len(server.logs)
    for _ in range(200):
        client.send_raw(b'{"type":"NOPE"}')
    for _ in range(200):
        await client.expect("ERROR", reason="invalid_payload")
    await client.roundtrip()
    warnings = [line for line in server.logs[before:] if "Invalid" in line]
    assert 1 <= len(warnings) <= 10, warnings


# ---------------------------------------------------------------- nesting and size of kept values


async def test_deep_register_metadata_is_refused_and_presence_keeps_working(server: SystemXProcess) -> None:
    asker = await registered(server, "asker@example.com", metadata={"capabilities": ["chat"]})
    deep = await server.connect()
    for depth in (33, 500, 985, 5_000):
        deep.send_raw(
            b'{"type":"REGISTER","address":"deep@example.com","metadata":{"capabilities":["chat"],"x":'
            + nested(depth - 1).encode()
            + b"}}"
        )
        failed = await deep.expect("REGISTER_FAILED", reason="invalid_payload")
        assert "nested" in failed["detail"], failed
    await deep.register("deep@example.com", metadata={"capabilities": ["chat"], **nested_object(31)})
    asker.send_json({"type": "PRESENCE", "query": {"capabilities": ["chat"]}})
    result = await asker.expect("PRESENCE_RESULT")
    assert [e["address"] for e in result["addresses"]] == ["deep@example.com"]
    await asker.roundtrip()
    assert_clean_log(server)


async def test_large_register_metadata_is_refused(server: SystemXProcess) -> None:
    client = await server.connect()
    client.send_json({"type": "REGISTER", "address": "big@example.com", "metadata": {"blob": "x" * 20_000}})
    failed = await client.expect("REGISTER_FAILED", reason="invalid_payload", address="big@example.com")
    assert "16384 bytes" in failed["detail"], failed
    await client.register("big@example.com", metadata={"blob": "x" * 16_000})


async def test_deep_dial_metadata_is_refused_before_anything_rings(server: SystemXProcess) -> None:
    caller = await registered(server, "caller@example.com")
    callee = await registered(server, "callee@example.com")
    for depth in (33, 985):
        caller.send_raw(
            b'{"type":"DIAL","to":"callee@example.com","metadata":{"x":' + nested(depth - 1).encode() + b"}}"
        )
        error = await caller.expect("ERROR", reason="invalid_payload", context="DIAL")
        assert "nested" in error["detail"], error
    caller.send_json({"type": "DIAL", "to": "callee@example.com", "metadata": {"x": "y" * 20_000}})
    await caller.expect("ERROR", reason="invalid_payload", context="DIAL")
    await callee.roundtrip()  # the callee heard nothing: no RING, no HANGUP
    caller.send_json({"type": "DIAL", "to": "callee@example.com", "metadata": nested_object(32)})
    ring = await callee.expect("RING")
    assert ring["metadata"] == nested_object(32)
    assert_clean_log(server)


async def test_deep_wake_payload_is_refused_and_nothing_is_stored(server: SystemXProcess) -> None:
    handler = {"type": "webhook", "url": "http://127.0.0.1:9/wake", "payload": json.loads(nested(40))}
    client = await server.connect()
    client.send_json(
        {"type": "REGISTER", "address": "sleepy@example.com", "mode": "wake_on_ring", "wake_handler": handler}
    )
    failed = await client.expect("REGISTER_FAILED", reason="invalid_payload")
    assert failed["detail"] == "wake_handler.payload is nested deeper than 32 levels"
    assert (await health(server))["registered"] == 0
    handler["payload"] = "z" * 20_000
    client.send_json(
        {"type": "REGISTER", "address": "sleepy@example.com", "mode": "wake_on_ring", "wake_handler": handler}
    )
    await client.expect("REGISTER_FAILED", reason="invalid_payload")
    await client.close()
    caller = await registered(server, "caller@example.com")
    caller.send_json({"type": "DIAL", "to": "sleepy@example.com"})
    await caller.expect("BUSY", reason="no_such_address")


async def test_depth_limit_is_a_setting(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_MAX_JSON_DEPTH": "4", "SYSTEMX_MAX_VALUE_BYTES": "100"})
    client = await server.connect()
    client.send_json({"type": "REGISTER", "address": "a@example.com", "metadata": nested_object(5)})
    failed = await client.expect("REGISTER_FAILED", reason="invalid_payload")
    assert failed["detail"] == "metadata is nested deeper than 4 levels"
    client.send_json({"type": "REGISTER", "address": "a@example.com", "metadata": {"x": "y" * 100}})
    failed = await client.expect("REGISTER_FAILED", reason="invalid_payload")
    assert failed["detail"] == "metadata is over 100 bytes encoded"
    await client.register("a@example.com", metadata=nested_object(4))


# ------------------------------------------ every REGISTER gets REGISTERED or REGISTER_FAILED


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, "invalid_address"),
        ({"address": 42}, "invalid_address"),
        ({"address": None}, "invalid_address"),
        ({"address": ["a@b.c"]}, "invalid_address"),
        ({"address": "a@example.com", "concurrency": "many"}, "invalid_payload"),
        ({"address": "a@example.com", "concurrency": 1}, "invalid_payload"),
        ({"address": "a@example.com", "max_sessions": 0}, "invalid_payload"),
        ({"address": "a@example.com", "max_sessions": "2"}, "invalid_payload"),
        ({"address": "a@example.com", "metadata": []}, "invalid_payload"),
        ({"address": "a@example.com", "metadata": {"status": ["busy"]}}, "invalid_payload"),
        ({"address": "a@example.com", "metadata": {"status": {"s": 1}}}, "invalid_payload"),
        (
            {"address": "a@example.com", "metadata": {"location": {"lat": 10**400, "lon": 0}}},
            "invalid_payload",
        ),
        ({"address": "a@example.com", "max_listeners": 3}, "invalid_payload"),
        ({"address": "a@example.com", "mode": "sometimes"}, "invalid_payload"),
        ({"address": "a@example.com", "mode": "wake_on_ring"}, "invalid_payload"),
        ({"address": "a@example.com", "wake_handler": {"type": "webhook"}}, "invalid_payload"),
    ],
)
async def test_register_always_gets_registered_or_register_failed(
    server: SystemXProcess, fields: dict[str, Any], reason: str
) -> None:
    bystander = await registered(server, "bystander@example.com")
    client = await server.connect()
    client.send_json({"type": "REGISTER", **fields})
    failed = await client.expect("REGISTER_FAILED", reason=reason)
    assert failed["detail"], failed
    await client.roundtrip()
    await client.register("a@example.com")
    await bystander.roundtrip()
    assert (await health(server))["internal_errors"] == 0
    assert_clean_log(server)


# ---------------------------------------------------------------- a client's `from` is ignored


@pytest.mark.parametrize("spoof", [42, None, {"x": 1}, ["a@b.c"], True, "mallory@example.com"])
async def test_client_from_of_any_type_is_ignored(server: SystemXProcess, spoof: Any) -> None:
    a = await registered(server, "alice@example.com")
    b = await registered(server, "bob@example.com")
    a.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
    ring = await b.expect("RING")
    b.send_json({"type": "ANSWER", "call_id": ring["call_id"], "from": spoof})
    await a.expect("CONNECTED", skip=("RINGING",))
    a.send_json({"type": "MSG", "call_id": ring["call_id"], "data": "hi", "from": spoof})
    message = await b.expect("MSG", data="hi")
    assert message["from"] == "alice@example.com"
    for member in (a, b):
        member.send_json({"type": "JOIN", "party": "room@example.com", "create_if_missing": True})
        await member.expect("JOINED")
    await a.expect("PARTY_JOINED")
    a.send_json({"type": "PARTY_MSG", "party": "room@example.com", "data": 1, "from": spoof})
    party_message = await b.expect("PARTY_MSG", data=1)
    assert party_message["from"] == "alice@example.com"
    b.send_json({"type": "HANGUP", "call_id": ring["call_id"], "from": spoof})
    await a.expect("HANGUP", reason="normal")


async def test_msg_data_nested_500_levels_is_relayed_byte_for_byte(server: SystemXProcess) -> None:
    a = await registered(server, "alice@example.com")
    b = await registered(server, "bob@example.com")
    a.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
    ring = await b.expect("RING")
    b.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await a.expect("CONNECTED", skip=("RINGING",))
    data = nested(500, '"deep"')
    a.send_raw(b'{"type":"MSG","call_id":"' + ring["call_id"].encode() + b'","data":' + data.encode() + b"}")
    message = await b.expect("MSG")
    assert json.dumps(message["data"], separators=(",", ":")) == data


async def test_a_trunk_sending_deep_or_odd_frames_is_not_cut(server: SystemXProcess) -> None:
    # Frames from a trunk that are no endpoint message (RING, BUSY, ERROR) take their own
    # decoding path; a frame nested too deep for it is ignored like any other bad one.
    trunk = await server.connect()
    trunk.send_json({"type": "REGISTER_PBX", "domain": "sub.example.com", "routes": ["*@sub.example.com"]})
    await trunk.expect("REGISTERED_PBX")
    deep_object = (b'{"a":' * 5_000) + b"1" + b"}" * 5_000
    trunk.send_raw(b'{"type":"RING","call_id":"c","from":"a@b.c","metadata":' + deep_object + b"}")
    trunk.send_raw(b'{"type":"ERROR","reason":1.5,"context":"y","detail":"z"}')
    await trunk.roundtrip()
    assert_clean_log(server)
    assert (await health(server))["internal_errors"] == 0
