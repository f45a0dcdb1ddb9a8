"""Presence bounds, address identity and call answers over real WebSockets against ``systemx serve``."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tests.conftest import ServerFactory, SystemXProcess
from tests.wsclient import WSClient

# Never contacted: these tests register wake profiles but never dial them.
UNUSED_HOOK = {"type": "webhook", "url": "https://hooks.example.com/wake", "timeout_seconds": 5}


@pytest.fixture
async def server(systemx_server: ServerFactory) -> SystemXProcess:
    return await systemx_server()


async def registered(server: SystemXProcess, address: str, **extra: Any) -> WSClient:
    client = await server.connect()
    await client.register(address, **extra)
    return client


async def presence(client: WSClient, **message: Any) -> dict[str, Any]:
    client.send_json({"type": "PRESENCE", **message})
    return await client.expect("PRESENCE_RESULT")


def rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["address"], e["status"]) for e in result["addresses"]]


# ------------------------------------------------------------- presence bounds


async def test_presence_result_is_bounded_in_bytes_and_says_truncated(systemx_server: ServerFactory) -> None:
    big = {"blob": "x" * 40_000}
    server = await systemx_server(env={"SYSTEMX_MAX_VALUE_BYTES": "65536"})
    for n in range(10):
        await registered(server, f"big{n}@example.com", metadata=big)
    asker = await registered(server, "asker@example.com")
    result = await presence(asker, limit=1000)
    # The default bound, 256 KiB: six 40 KB entries fit, the other four are left out.
    assert len(msgspec.json.encode(result)) <= 262_144
    assert [e["address"] for e in result["addresses"]] == [f"big{n}@example.com" for n in range(6)]
    assert result["truncated"] is True
    small = await presence(asker, limit=2)
    assert [e["address"] for e in small["addresses"]] == ["big0@example.com", "big1@example.com"]
    assert "truncated" not in small


async def test_presence_is_rate_limited_per_session(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_PRESENCE_MAX_QUERIES": "10"})
    asker = await registered(server, "asker@example.com")
    other = await registered(server, "other@example.com")
    for _ in range(10):
        asker.send_json({"type": "PRESENCE"})
    for _ in range(10):
        await asker.expect("PRESENCE_RESULT")
    asker.send_json({"type": "PRESENCE"})
    error = await asker.expect("ERROR", reason="rate_limited", context="PRESENCE", limit=10)
    assert 0 < error["retry_after_ms"] <= 10_000
    assert error["detail"].startswith("Too many PRESENCE queries: at most 10 per 10000 ms; retry in ")
    # The refused session stays usable, and other sessions are not affected.
    await asker.roundtrip()
    assert rows(await presence(other)) == [("asker@example.com", "available")]


# ----------------------------------------------------------- address identity


async def test_wake_profile_re_registered_in_another_case_leaves_one_row(server: SystemXProcess) -> None:
    agent = await registered(server, "agent@example.com", mode="wake_on_ring", wake_handler=UNUSED_HOOK)
    agent.send_json({"type": "SLEEP_ACK"})
    assert await agent.expect_close() == (4000, "sleep")
    again = await registered(server, "agent@EXAMPLE.com", mode="wake_on_ring")
    asker = await registered(server, "asker@example.com")
    assert rows(await presence(asker)) == [("agent@EXAMPLE.com", "available")]
    await again.close()
    await server.wait_health(asleep=1, registered=1)
    assert rows(await presence(asker)) == [("agent@EXAMPLE.com", "asleep")]


async def test_re_register_in_another_case_then_disconnect_leaves_no_row(server: SystemXProcess) -> None:
    alice = await registered(server, "alice@example.com")
    await alice.register("alice@EXAMPLE.com")
    asker = await registered(server, "asker@example.com")
    assert rows(await presence(asker)) == [("alice@EXAMPLE.com", "available")]
    await alice.close()
    await server.wait_health(registered=1)
    assert rows(await presence(asker)) == []


async def test_status_and_calls_reach_the_row_registered_in_another_case(server: SystemXProcess) -> None:
    bob = await registered(server, "bob@example.com")
    await bob.register("bob@Example.COM")
    bob.send_json({"type": "STATUS", "status": "dnd"})
    await bob.roundtrip()
    asker = await registered(server, "asker@example.com")
    assert rows(await presence(asker)) == [("bob@Example.COM", "dnd")]
    bob.send_json({"type": "STATUS", "status": "available"})
    await bob.roundtrip()
    asker.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
    await bob.expect("RING")
    await asker.expect("RINGING")
    assert rows(await presence(asker)) == [("bob@Example.COM", "busy")]


async def test_asker_re_registered_in_another_case_is_still_excluded(server: SystemXProcess) -> None:
    await registered(server, "other@example.com")
    asker = await registered(server, "asker@example.com")
    await asker.register("asker@EXAMPLE.com")
    assert rows(await presence(asker)) == [("other@example.com", "available")]


# ---------------------------------------------------------------------- calls


async def test_second_answer_sends_no_second_connected(server: SystemXProcess) -> None:
    alice = await registered(server, "alice@example.com")
    bob = await registered(server, "bob@example.com")
    alice.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
    call_id = (await bob.expect("RING"))["call_id"]
    bob.send_json({"type": "ANSWER", "call_id": call_id})
    await alice.expect("CONNECTED", skip=("RINGING",), call_id=call_id)
    mark = len(server.logs)
    bob.send_json({"type": "ANSWER", "call_id": call_id})
    # Bob's second ANSWER has been handled once his HEARTBEAT is answered; then alice's
    # barrier: anything sent to her for it would arrive before her HEARTBEAT_ACK.
    await bob.roundtrip()
    await alice.roundtrip()
    await server.wait_for_log(rf"ANSWER ignored: call {call_id} is already connected", since=mark)
    # The call is still connected and unchanged.
    alice.send_json({"type": "MSG", "call_id": call_id, "data": "still here"})
    assert (await bob.expect("MSG"))["data"] == "still here"
