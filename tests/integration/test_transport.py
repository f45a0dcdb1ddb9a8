"""The WebSocket transport of ``systemx serve``: HTTP, frames, limits, closes, backpressure, logs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import msgspec
import pytest
from picows import WSMsgType

from tests.conftest import ServerFactory, SystemXProcess
from tests.integration.conftest import ClientFactory
from tests.wsclient import TIMEOUT, WSClient


async def _http_get(url: str) -> tuple[int, dict[str, str], bytes]:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as response:
        return response.status, dict(response.headers), await response.read()


async def _connected_pair(
    connect: ClientFactory, a: str, b: str, callee_buffer: int | None = None
) -> tuple[WSClient, WSClient, str]:
    caller, callee = await connect(), await connect(receive_buffer=callee_buffer)
    await caller.register(a)
    await callee.register(b)
    caller.send_json({"type": "DIAL", "to": b, "ringing": True})
    ring = await callee.expect("RING")
    assert ring["from"] == a
    callee.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await caller.expect("CONNECTED", call_id=ring["call_id"], skip=("RINGING",))
    return caller, callee, ring["call_id"]


# -- HTTP ----------------------------------------------------------------------


async def test_healthz_returns_json(server: SystemXProcess, connect: ClientFactory) -> None:
    client = await connect()
    await client.register("health@example.com")

    status, headers, body = await _http_get(server.http_url + "/healthz")

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["sessions"] == 1
    assert health["registered"] == 1
    assert health["calls"] == 0


async def test_plain_http_gets_426(server: SystemXProcess) -> None:
    for path in ("/", "/ws", "/healthz/extra"):
        status, headers, _body = await _http_get(server.http_url + path)
        assert status == 426, path
        assert headers["Upgrade"].lower() == "websocket"


async def test_any_path_upgrades(connect: ClientFactory) -> None:
    for path in ("/", "/ws", "/some/deep/path?token=x", "/healthz"):
        client = await connect(path)
        await client.roundtrip()


async def test_unfinished_handshakes_are_dropped_after_the_handshake_timeout(
    systemx_server: ServerFactory,
) -> None:
    # A socket that never finishes its upgrade request (or never sends one) must not
    # hold a descriptor forever; finished upgrades are unaffected by the timer.
    server = await systemx_server(env={"SYSTEMX_HANDSHAKE_TIMEOUT_MS": "300"})
    silent = await asyncio.open_connection("127.0.0.1", server.port)
    partial = await asyncio.open_connection("127.0.0.1", server.port)
    partial[1].write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    client = await server.connect()
    started = asyncio.get_running_loop().time()
    for reader, writer in (silent, partial):
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # closed by the exchange
        writer.close()
    assert asyncio.get_running_loop().time() - started >= 0.2
    await client.roundtrip()  # upgraded long before the timeout: still open
    await client.close()


# -- frames --------------------------------------------------------------------


async def test_invalid_json_closes_1003(connect: ClientFactory) -> None:
    client = await connect()
    client.send_raw(b'{"type": "HEARTBEAT"')
    assert await client.expect_close() == (1003, "Invalid JSON")


async def test_invalid_utf8_closes_1007(connect: ClientFactory) -> None:
    client = await connect()
    client.send_raw(b'{"type": "HEARTBEAT", "x": "\xff\xfe"}')
    code, _reason = await client.expect_close()
    assert code == 1007


async def test_binary_frame_is_a_message(connect: ClientFactory) -> None:
    client = await connect()
    client.send_raw(b'{"type": "HEARTBEAT"}', binary=True)
    await client.expect("HEARTBEAT_ACK")


async def test_fragmented_register_is_reassembled(connect: ClientFactory) -> None:
    client = await connect()
    message = b'{"type": "REGISTER", "address": "frag@example.com", "metadata": {"note": "three frames"}}'
    client.send_fragmented(message, 3)
    registered = await client.expect("REGISTERED", address="frag@example.com")
    assert registered["session_id"]
    # Control frames may sit between fragments.
    client.send_frame(WSMsgType.TEXT, b'{"type": ', fin=False)
    client.send_frame(WSMsgType.PING, b"between")
    client.send_frame(WSMsgType.CONTINUATION, b'"HEARTBEAT"}', fin=True)
    await client.expect("HEARTBEAT_ACK")


async def test_unexpected_continuation_is_a_protocol_error(connect: ClientFactory) -> None:
    client = await connect()
    client.send_frame(WSMsgType.CONTINUATION, b'{"type": "HEARTBEAT"}', fin=True)
    code, _reason = await client.expect_close()
    assert code == 1002


async def test_client_close_is_answered(connect: ClientFactory, server: SystemXProcess) -> None:
    client = await connect()
    await client.register("leaving@example.com")
    await client.close(code=1000)
    assert client._listener.disconnected.is_set()
    # The address is free again once the socket is gone.
    again = await connect()
    await again.register("leaving@example.com")


async def test_router_close_code_and_reason(connect: ClientFactory) -> None:
    client = await connect()
    await client.register("bye@example.com")
    client.send_json({"type": "UNREGISTER"})
    assert await client.expect_close() == (4000, "client_requested")


async def test_oversized_messages_close_1009(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_MAX_MESSAGE_BYTES": "1024"})
    padding = "x" * 2000

    single = await server.connect()
    single.send_json({"type": "HEARTBEAT", "padding": padding})
    code, _reason = await single.expect_close()
    assert code == 1009

    fragmented = await server.connect()
    fragmented.send_fragmented(b'{"type": "HEARTBEAT", "padding": "%s"}' % padding.encode(), 4)
    assert await fragmented.expect_close() == (1009, "Message too big")

    fits = await server.connect()
    fits.send_fragmented(b'{"type": "HEARTBEAT", "padding": "%s"}' % (b"y" * 900), 3)
    await fits.expect("HEARTBEAT_ACK")


async def _nothing_relayed_to(callee: WSClient, call_id: str) -> None:
    """The callee hears its call end (HANGUP) and nothing else before a HEARTBEAT barrier."""
    hangup = await callee.recv()
    assert (hangup["type"], hangup.get("call_id"), hangup.get("reason")) == (
        "HANGUP",
        call_id,
        "peer_disconnected",
    ), hangup["type"]
    callee.send_json({"type": "HEARTBEAT"})
    assert (await callee.recv())["type"] == "HEARTBEAT_ACK"


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragmented"])
async def test_oversized_message_is_never_relayed(systemx_server: ServerFactory, fragmented: bool) -> None:
    server = await systemx_server(env={"SYSTEMX_MAX_MESSAGE_BYTES": "1024"})
    caller, callee, call_id = await _connected_pair(server.connect, "big@example.com", "peer@example.com")
    message = msgspec.json.encode({"type": "MSG", "call_id": call_id, "data": "x" * 2000})
    if fragmented:
        caller.send_fragmented(message, 4)
    else:
        caller.send_raw(message)

    code, reason = await caller.expect_close()
    assert code == 1009
    if fragmented:
        assert reason == "Message too big"
    await caller.wait_disconnected()  # the exchange has read all it ever will from the caller
    await _nothing_relayed_to(callee, call_id)
    line = await server.wait_for_log(r"\[WARN\] Message too big \(1009\)")
    assert "address: big@example.com" in line
    assert "session: " in line


async def test_message_over_the_default_limit_is_refused_unread(server: SystemXProcess) -> None:
    # 1.5 MiB against the default 1 MiB: refused from the frame header, before the payload is in.
    caller, callee, call_id = await _connected_pair(server.connect, "huge@example.com", "peer@example.com")
    caller.send_json({"type": "MSG", "call_id": call_id, "data": "x" * (3 * 1024 * 1024 // 2)})
    code, _reason = await caller.expect_close()
    assert code == 1009
    await caller.wait_disconnected()
    await _nothing_relayed_to(callee, call_id)
    line = await server.wait_for_log(r"Message too big \(1009\)")
    assert "address: huge@example.com" in line


# -- slow consumers ------------------------------------------------------------


async def test_slow_consumer_is_closed_1008_others_unaffected(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_MAX_BUFFERED_BYTES": "262144"})
    clients: list[WSClient] = []

    async def connect(path: str = "/", *, receive_buffer: int | None = None) -> WSClient:
        client = await server.connect(path, receive_buffer=receive_buffer)
        clients.append(client)
        return client

    flooder, slow, call_id = await _connected_pair(connect, "flood@example.com", "slow@example.com")
    bystander_a, bystander_b, other_call = await _connected_pair(connect, "a@example.com", "b@example.com")

    slow.pause_reading()
    chunk = "z" * 16384
    hangup = None
    for _ in range(2000):
        for _ in range(16):
            flooder.send_json({"type": "MSG", "call_id": call_id, "data": chunk})
        flooder.send_json({"type": "HEARTBEAT"})
        while True:
            message = await flooder.recv()
            if message["type"] == "HEARTBEAT_ACK":
                break
            assert message["type"] == "HANGUP", message
            hangup = message
        if hangup is not None:
            break
    assert hangup is not None, "the slow consumer was never dropped"
    assert hangup["call_id"] == call_id

    await server.wait_for_log(r"\[WARN\] Slow consumer closed \(1008\)")

    # The flooder and an unrelated call keep working.
    await flooder.roundtrip()
    bystander_a.send_json({"type": "MSG", "call_id": other_call, "data": "still here"})
    message = await bystander_b.expect("MSG", call_id=other_call, data="still here")
    assert message["from"] == "a@example.com"

    # Once the slow reader drains its backlog it finds the 1008 close behind it.
    slow.resume_reading()
    assert await slow.expect_close(TIMEOUT * 2) == (1008, "slow_consumer")


def _memory_kb(server: SystemXProcess, field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (resident at the peak) of the server, in KiB."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for the server")


_MIB = 1024 * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_slow_consumer_is_cut_at_the_bound(systemx_server: ServerFactory) -> None:
    # The bound holds as frames are queued, not after a pass of writes: the exchange's
    # peak memory grows by about the bound, not by what a fast sender pushes in a pass.
    bound = 2 * _MIB
    server = await systemx_server(env={"SYSTEMX_MAX_BUFFERED_BYTES": str(bound)})
    flooder, slow, call_id = await _connected_pair(
        server.connect, "flood@example.com", "slow@example.com", 4096
    )
    slow.pause_reading()
    await flooder.roundtrip()
    before = _memory_kb(server, "VmHWM")

    chunk = "z" * 65536
    hangup = None
    for _ in range(200):
        # 8 MiB per pass: a bound checked only after a pass of writes lets it all queue.
        for _ in range(128):
            flooder.send_json({"type": "MSG", "call_id": call_id, "data": chunk})
        flooder.send_json({"type": "HEARTBEAT"})
        while hangup is None:
            message = await flooder.recv()
            if message["type"] == "HEARTBEAT_ACK":
                break
            assert message["type"] == "HANGUP", message["type"]
            hangup = message
        if hangup is not None:
            break
    assert hangup is not None, "the slow consumer was never dropped"
    assert (hangup["call_id"], hangup["reason"]) == (call_id, "peer_disconnected")
    grown = (_memory_kb(server, "VmHWM") - before) * 1024
    # Queued bytes never pass the bound: the frame that would is refused, not queued.
    # The margin (one more bound) covers read buffers and allocator slack, and is
    # still far below the 8 MiB a pass would add if the bound were checked late.
    assert grown < 2 * bound, f"peak memory grew by {grown / _MIB:.1f} MiB"
    await server.wait_for_log(r"\[WARN\] Slow consumer closed \(1008\).*address: slow@example.com")
    await flooder.roundtrip()
    slow.resume_reading()
    assert await slow.expect_close(TIMEOUT * 2) == (1008, "slow_consumer")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_presence_results_count_against_the_slow_consumer_bound(systemx_server: ServerFactory) -> None:
    # An asker that never reads its PRESENCE_RESULTs is cut like any slow consumer.
    bound = 256 * 1024
    server = await systemx_server(
        env={"SYSTEMX_MAX_BUFFERED_BYTES": str(bound), "SYSTEMX_PRESENCE_MAX_QUERIES": "0"}
    )
    for i in range(40):
        listed = await server.connect()
        await listed.register(f"listed{i:02d}@example.com", metadata={"note": "n" * 2000})
    asker = await server.connect(receive_buffer=4096)
    await asker.register("asker@example.com")
    asker.send_json({"type": "PRESENCE", "limit": 1000})
    result = await asker.expect("PRESENCE_RESULT")
    size = len(msgspec.json.encode(result))
    assert size > 80_000
    asker.pause_reading()
    before = _memory_kb(server, "VmHWM")

    for _ in range(30 * _MIB // size):  # far more than the kernel's socket buffers hold
        asker.send_json({"type": "PRESENCE", "limit": 1000})
    await server.wait_for_log(
        r"\[WARN\] Slow consumer closed \(1008\).*address: asker@example\.com", TIMEOUT * 2
    )

    grown = (_memory_kb(server, "VmHWM") - before) * 1024
    assert grown < bound + 2 * size + _MIB, f"peak memory grew by {grown / _MIB:.1f} MiB"
    asker.resume_reading()
    await asker.wait_disconnected(TIMEOUT * 2)


def _client_text_frame(payload: bytes) -> bytes:
    """A final, masked TEXT frame as a client sends it (an all-zero mask key leaves the payload as is)."""
    n = len(payload)
    if n < 126:
        length = bytes((0x80 | n,))
    elif n < 65536:
        length = bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    else:
        length = bytes((0x80 | 127,)) + n.to_bytes(8, "big")
    return b"\x81" + length + b"\0\0\0\0" + payload


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
async def test_a_burst_of_small_frames_leaves_no_large_read_buffer(systemx_server: ServerFactory) -> None:
    # Each sender writes 2 MB of 100-byte MSGs in one go, far faster than the exchange
    # reads them. Read buffers that grew with the burst (doubling on every full read)
    # would keep about a megabyte or more per sender once it is over; they stay at
    # their initial size, so the exchange's resident memory barely moves.
    server = await systemx_server()
    pairs = [
        await _connected_pair(server.connect, f"burst{i}@example.com", f"sink{i}@example.com")
        for i in range(8)
    ]
    for caller, callee, _ in pairs:
        await caller.roundtrip()
        await callee.roundtrip()
    before = _memory_kb(server, "VmRSS")

    count = 20_000
    for caller, _, call_id in pairs:
        envelope = {"type": "MSG", "call_id": call_id, "data": ""}
        envelope["data"] = "x" * (100 - len(msgspec.json.encode(envelope)))
        message = msgspec.json.encode(envelope)
        caller.transport.underlying_transport.write(_client_text_frame(message) * count)

    async def relayed(callee: WSClient) -> None:
        for _ in range(count):
            assert (await callee.recv(TIMEOUT * 4))["type"] == "MSG"

    await asyncio.gather(*(relayed(callee) for _, callee, _ in pairs))
    for caller, callee, _ in pairs:
        await caller.roundtrip()
        await callee.roundtrip()
    grown = (_memory_kb(server, "VmRSS") - before) / len(pairs)
    assert grown < 256, f"resident memory grew by {grown:.0f} KiB per sender"


# -- logs ----------------------------------------------------------------------


async def test_json_log_format(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_LOG_FORMAT": "json"})
    client = await server.connect()
    await client.register("logger@example.com")
    await server.wait_for_log("logger@example.com")
    await client.close()
    assert await server.stop() == 0

    records = [json.loads(line) for line in server.logs if line.strip()]
    assert records
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= record.keys(), record
        assert record["logger"].startswith(("systemx", "picows")), record
        assert record["ts"].endswith("Z")
    assert any(r["msg"].startswith("SystemX listening on ws://127.0.0.1:") for r in records)
    assert any(r["level"] == "INFO" and "logger@example.com" in r["msg"] for r in records)


async def test_text_log_format(server: SystemXProcess, connect: ClientFactory) -> None:
    client = await connect()
    await client.register("texty@example.com")
    line = await server.wait_for_log("texty@example.com")
    assert " [INFO] " in line
    assert line[:4].isdigit() and line.split(" ", 1)[0].endswith("Z")


async def test_large_messages_survive_backpressure(connect: ClientFactory) -> None:
    caller, callee, call_id = await _connected_pair(connect, "big@example.com", "reader@example.com", 4096)
    callee.pause_reading()
    # Large frames (over 8 KB) queued behind a full socket, each followed by a small one.
    payloads = [f"{i:04d}" + chr(ord("a") + i % 26) * (9_000 + 997 * i if i % 2 else 10) for i in range(120)]
    for data in payloads:
        caller.send_json({"type": "MSG", "call_id": call_id, "data": data})
    await caller.roundtrip()
    callee.resume_reading()
    for data in payloads:
        message = await callee.expect("MSG", call_id=call_id)
        assert message["data"] == data


async def test_large_party_messages_survive_backpressure_at_every_listener(connect: ClientFactory) -> None:
    # One payload goes to every listener; large ones are written without a copy per
    # listener, so each listener's queued bytes must still be its own, intact, in order.
    party = "big@party.example.com"
    sender = await connect()
    await sender.register("sender@example.com")
    sender.send_json({"type": "JOIN", "party": party, "create_if_missing": True})
    await sender.expect("JOINED")
    listeners = []
    for i in range(3):
        listener = await connect(receive_buffer=4096)
        await listener.register(f"listener{i}@example.com")
        listener.send_json({"type": "JOIN", "party": party})
        await listener.expect("JOINED")
        listeners.append(listener)
        await sender.expect("PARTY_JOINED", address=f"listener{i}@example.com")
    for listener in listeners:
        listener.pause_reading()
    payloads = [f"{i:04d}" + chr(ord("a") + i % 26) * (40_000 + 1_001 * i if i % 3 else 7) for i in range(60)]
    for data in payloads:
        sender.send_json({"type": "PARTY_MSG", "party": party, "data": data})
    await sender.roundtrip()
    for listener in listeners:
        listener.resume_reading()
    for listener in listeners:
        for data in payloads:
            message = await listener.expect("PARTY_MSG", skip=("PARTY_JOINED",), party=party)
            assert message["from"] == "sender@example.com"
            assert message["data"] == data
