"""The admin listener of a real ``systemx serve``: health, metrics, the JSON API, the token."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout

from systemx.core.records import Disposition, EndedBy, call_record
from systemx.state.records_sqlite import SqliteRecordStore
from tests.conftest import ServerFactory, SystemXProcess, run_command
from tests.wsclient import TIMEOUT, WSClient

_ADMIN = re.compile(r"Admin listening on (http://[^\s]+)")


async def start_admin(
    systemx_server: ServerFactory, env: Mapping[str, str] | None = None
) -> tuple[SystemXProcess, str]:
    """A server with its admin listener on a free port: the server and the listener's URL."""
    server = await systemx_server(env={"SYSTEMX_ADMIN": "on", "SYSTEMX_ADMIN_PORT": "0", **(env or {})})
    line = await server.wait_for_log(_ADMIN)
    match = _ADMIN.search(line)
    assert match is not None
    return server, match.group(1)


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    async with ClientSession() as session:
        yield session


async def get(http: ClientSession, url: str, status: int = 200, **kwargs: Any) -> Any:
    async with http.get(url, timeout=ClientTimeout(total=TIMEOUT), **kwargs) as response:
        assert response.status == status, (url, response.status, await response.text())
        if response.content_type == "application/json":
            return await response.json()
        return await response.text()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


async def test_health_and_metrics_follow_the_traffic(
    systemx_server: ServerFactory, http: ClientSession
) -> None:
    server, admin = await start_admin(systemx_server)
    assert await get(http, admin + "/healthz") == {"status": "ok"}
    assert await get(http, admin + "/readyz") == {"status": "ok"}
    before = await get(http, admin + "/metrics")
    assert metric(before, "systemx_connections") == 0
    client = await server.connect()
    await client.register("alice@example.com")
    for _ in range(3):
        await client.roundtrip()
    after = await get(http, admin + "/metrics")
    assert metric(after, "systemx_connections") == 1
    assert metric(after, "systemx_connections_opened_total") == 1
    assert metric(after, "systemx_registrations") == 1
    # REGISTER and three HEARTBEATs; their answers were sent.
    assert metric(after, "systemx_messages_received_total") == 4
    assert metric(after, "systemx_message_bytes_received_total") > 4 * 10
    assert metric(after, "systemx_frames_sent_total") >= 4
    assert "systemx_event_loop_lag_seconds_bucket" in after
    assert "alice" not in after
    await client.close()
    await server.stop()


async def test_sessions_calls_and_parties(systemx_server: ServerFactory, http: ClientSession) -> None:
    server, admin = await start_admin(systemx_server)
    alice: WSClient = await server.connect()
    bob: WSClient = await server.connect()
    carol: WSClient = await server.connect()
    await alice.register("alice@one.test")
    await bob.register("bob@two.test")
    await carol.register("carol@two.test")
    anonymous = await server.connect()
    await anonymous.roundtrip()

    page = await get(http, admin + "/api/sessions")
    assert page["total"] == 4
    row = next(r for r in page["items"] if r["address"] == "alice@one.test")
    assert row["remote_ip"] == "127.0.0.1"
    assert abs(row["connected_since"] - time.time()) < 60
    assert row["last_heartbeat"] >= row["connected_since"] - 1
    assert row["queued_bytes"] == 0 and row["rtt"] is None and row["session_id"]
    assert row["last_activity"] >= row["last_heartbeat"]

    only = await get(http, admin + "/api/sessions?address=ALI")
    assert [r["address"] for r in only["items"]] == ["alice@one.test"]
    two = await get(http, admin + "/api/sessions?domain=two.test&sort=-address")
    assert [r["address"] for r in two["items"]] == ["carol@two.test", "bob@two.test"]
    paged = await get(http, admin + "/api/sessions?domain=two.test&sort=address&limit=1&offset=1")
    assert paged["total"] == 2 and [r["address"] for r in paged["items"]] == ["carol@two.test"]
    bad = await get(http, admin + "/api/sessions?sort=password", status=400)
    assert "sort must be one of" in bad["error"]
    bad = await get(http, admin + "/api/sessions?limit=100000", status=400)
    assert "limit must be 0-1000" in bad["error"]

    alice.send_json({"type": "DIAL", "to": "bob@two.test", "ringing": True})
    ringing = await alice.expect("RINGING")
    await bob.expect("RING")
    calls = await get(http, admin + "/api/calls")
    assert calls["items"] == [
        {
            "call_id": ringing["call_id"],
            "caller": "alice@one.test",
            "callee": "bob@two.test",
            "state": "ringing",
            "since": calls["items"][0]["since"],
            "connected_at": None,
            "listeners": 0,
        }
    ]
    bob.send_json({"type": "ANSWER", "call_id": ringing["call_id"]})
    await alice.expect("CONNECTED")
    calls = await get(http, admin + "/api/calls?state=connected")
    assert [c["call_id"] for c in calls["items"]] == [ringing["call_id"]]
    assert calls["items"][0]["connected_at"] is not None

    carol.send_json({"type": "JOIN", "party": "ops@two.test", "create_if_missing": True})
    await carol.expect("JOINED")
    parties = await get(http, admin + "/api/parties")
    assert parties["items"] == [{"name": "ops@two.test", "members": 1, "addresses": ["carol@two.test"]}]
    summary = await get(http, admin + "/api/summary")
    assert summary["calls"] == {"waiting": 0, "ringing": 0, "connected": 1}
    assert summary["sessions"] == 4 and summary["registered"] == 3 and summary["parties"] == 1

    alice.send_json({"type": "HANGUP", "call_id": ringing["call_id"]})
    await bob.expect("HANGUP")
    assert (await get(http, admin + "/api/calls"))["items"] == []
    await server.stop()


async def test_sleepers_are_listed_and_forgotten(systemx_server: ServerFactory, http: ClientSession) -> None:
    hook = "https://hooks.example.com/"
    server, admin = await start_admin(systemx_server, {"SYSTEMX_WEBHOOK_ALLOW": hook})
    agent = await server.connect()
    handler = {"type": "webhook", "url": hook + "wake"}
    await agent.register("agent@example.com", mode="wake_on_ring", wake_handler=handler)
    # Connected: not a sleeper, and not forgotten behind its back.
    assert (await get(http, admin + "/api/sleepers"))["items"] == []
    async with http.delete(admin + "/api/sleepers/agent@example.com") as response:
        assert response.status == 409
    await agent.close()
    await server.wait_health(asleep=1)
    sleepers = await get(http, admin + "/api/sleepers")
    assert sleepers["items"] == [{"address": "agent@example.com", "handler": "webhook", "calls_waiting": 0}]

    async with http.delete(admin + "/api/sleepers/nobody@example.com") as response:
        assert response.status == 404
    async with http.delete(admin + "/api/sleepers/not an address") as response:
        assert response.status == 400
    async with http.delete(admin + "/api/sleepers/agent@Example.COM") as response:
        assert response.status == 200, await response.text()
    assert (await get(http, admin + "/api/sleepers"))["items"] == []
    # Gone from the exchange: a DIAL now finds no one.
    caller = await server.connect()
    await caller.register("caller@example.com")
    caller.send_json({"type": "DIAL", "to": "agent@example.com"})
    await caller.expect("BUSY", reason="no_such_address")
    # And from the profile store: it does not come back after a restart.
    await server.restart()
    line = await server.wait_for_log(_ADMIN, since=len(server.logs) - 5)
    match = _ADMIN.search(line)
    assert match is not None
    assert (await get(http, match.group(1) + "/api/sleepers"))["items"] == []
    await server.stop()


async def test_records_are_read_from_the_store(
    systemx_server: ServerFactory, http: ClientSession, tmp_path: Path
) -> None:
    data = tmp_path / "server0" / "data"
    store = SqliteRecordStore(data / "records.db")
    now = time.time()
    for n, (caller, disposition) in enumerate(
        [("a@example.com", Disposition.ANSWERED), ("b@example.com", Disposition.BUSY)]
    ):
        store.append(
            call_record(
                call_id=f"call-{n}",
                caller=caller,
                callee="c@example.com",
                dialled_at=now - 10 + n,
                ended_at=now - 5 + n,
                disposition=disposition,
                reason="normal" if disposition is Disposition.ANSWERED else "busy",
                ended_by=EndedBy.CALLER,
            )
        )
    store.close()
    server, admin = await start_admin(systemx_server)
    everything = await get(http, admin + "/api/records")
    assert [r["call_id"] for r in everything["items"]] == ["call-1", "call-0"]
    assert everything["items"][1]["disposition"] == "answered"
    busy = await get(http, admin + "/api/records?disposition=busy")
    assert [r["call_id"] for r in busy["items"]] == ["call-1"]
    by_a = await get(http, admin + "/api/records?address=a@EXAMPLE.COM")
    assert [r["call_id"] for r in by_a["items"]] == ["call-0"]
    recent = await get(http, admin + f"/api/records?since={now - 4.5}")
    assert [r["call_id"] for r in recent["items"]] == ["call-1"]
    bad = await get(http, admin + "/api/records?disposition=lost", status=400)
    assert "disposition must be one of" in bad["error"]
    bad = await get(http, admin + "/api/records?since=yesterday", status=400)
    assert "since must be a number" in bad["error"]
    await server.stop()


async def test_records_off(systemx_server: ServerFactory, http: ClientSession) -> None:
    server, admin = await start_admin(systemx_server, {"SYSTEMX_RECORDS": "off"})
    answer = await get(http, admin + "/api/records", status=404)
    assert "SYSTEMX_RECORDS=off" in answer["error"]
    assert not (server.data_dir / "records.db").exists()
    await server.stop()


async def test_a_token_guards_everything_but_health(
    systemx_server: ServerFactory, http: ClientSession
) -> None:
    server, admin = await start_admin(systemx_server, {"SYSTEMX_ADMIN_TOKEN": "s3cret"})
    assert await get(http, admin + "/healthz") == {"status": "ok"}
    for path in ("/metrics", "/api/sessions", "/", "/events"):
        denied = await get(http, admin + path, status=401)
        assert "token" in denied["error"]
    await get(http, admin + "/api/sessions", status=401, headers={"Authorization": "Bearer wrong"})
    await get(http, admin + "/api/sessions", headers={"Authorization": "Bearer s3cret"})
    assert "<title>SystemX switchboard</title>" in await get(http, admin + "/?token=s3cret")
    await server.stop()


async def test_refuses_to_start_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    process = SystemXProcess(
        tmp_path, {"SYSTEMX_ADMIN": "on", "SYSTEMX_ADMIN_HOST": "0.0.0.0", "SYSTEMX_ADMIN_PORT": "0"}
    )
    code, _out, err = await run_command(
        *process._command(), timeout=TIMEOUT * 2, cwd=tmp_path, env=process._environment()
    )
    assert code != 0
    assert "SYSTEMX_ADMIN_TOKEN: required" in err
    assert "Traceback" not in err


async def test_an_admin_port_in_use_leaves_the_exchange_running(systemx_server: ServerFactory) -> None:
    # Two exchanges on one machine with the default admin port: the second still serves.
    _first, admin = await start_admin(systemx_server)
    port = admin.rsplit(":", 1)[1]
    second = await systemx_server(env={"SYSTEMX_ADMIN": "on", "SYSTEMX_ADMIN_PORT": port})
    await second.wait_for_log(rf"\[WARN\] Admin listener not started: .*cannot listen on 127.0.0.1:{port}")
    client = await second.connect()
    await client.register("alice@example.com")
    assert not [line for line in second.logs if "Traceback" in line]


async def next_snapshot(response: Any) -> dict[str, Any]:
    """The next ``snapshot`` event of a Server-Sent Events stream."""
    event = ""
    while True:
        line = (await asyncio.wait_for(response.content.readline(), TIMEOUT)).decode()
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: ") and event == "snapshot":
            decoded: dict[str, Any] = json.loads(line[6:])
            return decoded


async def test_the_page_feed_pushes_a_change_to_every_viewer(
    systemx_server: ServerFactory, http: ClientSession
) -> None:
    server, admin = await start_admin(systemx_server)
    async with http.get(admin + "/events") as first, http.get(admin + "/events") as second:
        assert first.headers["Content-Type"] == "text/event-stream"
        snap = await next_snapshot(first)
        assert snap["sessions"] == [] and snap["calls"] == [] and "msgs_per_s" in snap["rates"]
        client = await server.connect()
        await client.register("viewer@example.com")
        for viewer in (first, second):
            while not (snap := await next_snapshot(viewer))["sessions"]:
                pass
            assert [s["address"] for s in snap["sessions"]] == ["viewer@example.com"]
            assert snap["summary"]["registered"] == 1
    await server.stop()


async def test_a_real_call_is_recorded_and_counted(
    systemx_server: ServerFactory, http: ClientSession
) -> None:
    server, admin = await start_admin(systemx_server)
    answered = 'systemx_calls_total{disposition="answered"}'
    before = await get(http, admin + "/metrics")
    assert answered not in before or metric(before, answered) == 0
    alice = await server.connect()
    bob = await server.connect()
    await alice.register("alice@example.com")
    await bob.register("bob@example.com")
    alice.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
    ring = await bob.expect("RING", from_="alice@example.com")
    call_id = ring["call_id"]
    await alice.expect("RINGING", call_id=call_id)
    bob.send_json({"type": "ANSWER", "call_id": call_id})
    await alice.expect("CONNECTED", call_id=call_id)
    # Three MSGs up (caller to callee), two down; the bytes are the data's JSON text.
    for data in ("hi", {"n": 1}, [1, 2, 3]):
        alice.send_json({"type": "MSG", "call_id": call_id, "data": data})
        await bob.expect("MSG", call_id=call_id, data=data)
    for data in ("hello", "x" * 100):
        bob.send_json({"type": "MSG", "call_id": call_id, "data": data})
        await alice.expect("MSG", call_id=call_id, data=data)
    alice.send_json({"type": "HANGUP", "call_id": call_id})
    await bob.expect("HANGUP", call_id=call_id)
    # The metrics count the call when it ends, before HANGUP reaches the peer.
    text = await get(http, admin + "/metrics")
    assert metric(text, answered) == 1
    assert metric(text, 'systemx_call_messages_total{direction="up"}') == 3
    assert metric(text, 'systemx_call_messages_total{direction="down"}') == 2
    assert metric(text, 'systemx_call_message_bytes_total{direction="down"}') == 7 + 102

    async def recorded() -> list[dict[str, Any]]:
        # Records are written in batches behind the calls (within a second).
        while True:
            items: list[dict[str, Any]] = (await get(http, admin + "/api/records"))["items"]
            if items:
                return items
            await asyncio.sleep(0.05)

    (record,) = await asyncio.wait_for(recorded(), TIMEOUT)
    assert record["call_id"] == call_id
    assert (record["caller"], record["callee"]) == ("alice@example.com", "bob@example.com")
    assert (record["disposition"], record["ended_by"]) == ("answered", "caller")
    up_bytes = len(b'"hi"') + len(b'{"n":1}') + len(b"[1,2,3]")
    assert (record["msgs_up"], record["bytes_up"]) == (3, up_bytes)
    assert (record["msgs_down"], record["bytes_down"]) == (2, 7 + 102)
    await alice.close()
    await bob.close()
    await server.stop()


async def test_head_healthz_and_the_event_feed_answer(
    systemx_server: ServerFactory, http: ClientSession
) -> None:
    server, admin = await start_admin(systemx_server, {"SYSTEMX_ADMIN_TOKEN": "s3cret"})
    # HEAD /healthz (load balancers, container checks): 200, no token, no body.
    async with http.head(admin + "/healthz", timeout=ClientTimeout(total=TIMEOUT)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert await response.read() == b""
    token = {"Authorization": "Bearer s3cret"}
    bad = await get(http, admin + "/events?feed=everything", status=400, headers=token)
    assert "feed must be one of snapshots, events" in bad["error"]
    # The raw event stream: a comment once open, then one SSE event per exchange event.
    async with http.get(admin + "/events", params={"feed": "events"}, headers=token) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        assert await stream.content.readline() == b": events of this exchange\n"
        client = await server.connect()
        await client.register("viewer@example.com")
        lines = []
        while not (line := (await asyncio.wait_for(stream.content.readline(), TIMEOUT)).strip()).startswith(
            b"data:"
        ):
            lines.append(line)
        assert lines[-1] == b"event: registered"
        event = json.loads(line[5:])
        assert event["event"] == "registered" and event["address"] == "viewer@example.com"
        assert event["session"] and event["woken"] is False and event["time"] > 0
    await server.stop()
