"""Wake handlers cannot be turned against the exchange's host, network or disk.

Real ``systemx serve`` processes, real WebSockets, a real local HTTP receiver and
real spawned processes.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import ServerFactory, SystemXProcess
from tests.wsclient import WSClient

RECORDER = r"""
import json, os, sys
with open(os.environ["RECORD_TO"], "w") as out:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "mode": os.environ.get("AGENT_MODE")}, out)
sys.exit(7)
"""


class Receiver:
    """A real HTTP server on loopback that records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "0.0.0.0", 0)
    await site.start()
    receiver.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield receiver
    await runner.cleanup()


async def register_wake(client: WSClient, address: str, handler: dict[str, Any]) -> dict[str, Any]:
    client.send_json(
        {"type": "REGISTER", "address": address, "mode": "wake_on_ring", "wake_handler": handler}
    )
    reply = await client.recv()
    assert reply["type"] in ("REGISTERED", "REGISTER_FAILED", "ERROR"), reply
    return reply


async def sleep_then_dial(
    server: SystemXProcess, address: str, handler: dict[str, Any], caller: str
) -> WSClient:
    agent = await server.connect()
    reply = await register_wake(agent, address, handler)
    assert reply["type"] == "REGISTERED", reply
    agent.send_json({"type": "SLEEP_ACK"})
    assert await agent.expect_close() == (4000, "sleep")
    dialler = await server.connect()
    await dialler.register(caller)
    dialler.send_json({"type": "DIAL", "to": address})
    await dialler.expect("RINGING", waking=True)
    return dialler


# --------------------------------------------------------------------------
# Spawn: the operator decides what runs


async def test_a_client_cannot_choose_the_command(systemx_server: ServerFactory, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    fake_echo = tmp_path / "bin" / "echo"
    fake_echo.parent.mkdir()
    fake_echo.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake_echo.chmod(0o755)
    handlers = {"echo": {"argv": ["/bin/echo", "woken"], "addresses": ["*@agents.example.com"]}}
    server = await systemx_server(env={"SYSTEMX_SPAWN_HANDLERS": json.dumps(handlers)})
    client = await server.connect()
    for command in (["/bin/sh", "-c", f"touch {marker}"], [str(fake_echo), "woken"], ["echo", "woken"]):
        reply = await register_wake(
            client, "bot@agents.example.com", {"type": "spawn", "command": command, "timeout_seconds": 5}
        )
        assert reply["type"] == "REGISTER_FAILED", (command, reply)
        assert reply["reason"] == "wake_handler_not_allowed"
        assert "matches no spawn handler" in reply["detail"]
    reply = await register_wake(client, "bot@agents.example.com", {"type": "spawn", "handler": "sh"})
    assert reply == {
        "type": "REGISTER_FAILED",
        "reason": "wake_handler_not_allowed",
        "address": "bot@agents.example.com",
        "detail": "no spawn handler named 'sh' is defined on this exchange",
    }
    # Outside the handler's address patterns, even its own name is refused.
    reply = await register_wake(client, "bot@example.com", {"type": "spawn", "handler": "echo"})
    assert reply["type"] == "REGISTER_FAILED"
    assert reply["detail"] == "spawn handler 'echo' is not available to 'bot@example.com'"
    await client.register("bot@example.com")  # the socket is still usable
    assert not marker.exists()


async def test_spawn_is_refused_when_no_handler_is_defined(systemx_server: ServerFactory) -> None:
    server = await systemx_server()
    client = await server.connect()
    reply = await register_wake(client, "bot@agents.example.com", {"type": "spawn", "handler": "sleepy"})
    assert reply["reason"] == "wake_handler_not_allowed"
    assert "SYSTEMX_SPAWN_HANDLERS" in reply["detail"]


async def test_a_named_handler_runs_the_operators_argv_with_whole_placeholders(
    systemx_server: ServerFactory, tmp_path: Path
) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    record = tmp_path / "record.json"
    workdir = tmp_path / "work"
    workdir.mkdir()
    handlers = {
        "recorder": {
            "argv": [sys.executable, str(script), "--to", "{address}", "{call_id}", "{caller}", "{caller}"],
            "cwd": str(workdir),
            "env": {"AGENT_MODE": "test", "RECORD_TO": str(record)},
            "timeout_seconds": 10,
        }
    }
    server = await systemx_server(env={"SYSTEMX_SPAWN_HANDLERS": json.dumps(handlers)})
    caller = "$(touch${IFS}pwned);x@example.com"
    dialler = await sleep_then_dial(
        server, "bot@agents.example.com", {"type": "spawn", "handler": "recorder"}, caller
    )
    busy = await dialler.expect("BUSY", reason="wake_failed")
    recorded = json.loads(record.read_text())
    assert recorded == {
        "argv": ["--to", "bot@agents.example.com", busy["call_id"], caller, caller],
        "cwd": str(workdir),
        "mode": "test",
    }
    assert not (workdir / "pwned").exists()


async def test_the_reference_command_form_must_match_a_defined_argv(
    systemx_server: ServerFactory, tmp_path: Path
) -> None:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    record = tmp_path / "record.json"
    argv = [sys.executable, str(script), "from-config"]
    handlers = {"rec": {"argv": argv, "env": {"RECORD_TO": str(record)}}}
    server = await systemx_server(env={"SYSTEMX_SPAWN_HANDLERS": json.dumps(handlers)})
    dialler = await sleep_then_dial(
        server,
        "bot@agents.example.com",
        {"type": "spawn", "command": argv, "timeout_seconds": 10},
        "c@example.com",
    )
    await dialler.expect("BUSY", reason="wake_failed")
    assert json.loads(record.read_text())["argv"] == ["from-config"]


@pytest.mark.parametrize("var", ["SYSTEMX_SPAWN_ALLOW_ADDRESSES", "SYSTEMX_SPAWN_ALLOW_COMMANDS"])
async def test_an_old_spawn_setting_stops_the_start(systemx_server: ServerFactory, var: str) -> None:
    with pytest.raises(RuntimeError) as failed:
        await systemx_server(env={var: "*@agents.example.com"})
    assert f"{var}: no longer supported" in str(failed.value)
    assert "SYSTEMX_SPAWN_HANDLERS" in str(failed.value)


# --------------------------------------------------------------------------
# Webhooks: no requests to internal hosts or to the exchange itself


async def test_non_public_webhook_targets_are_refused_at_register(
    systemx_server: ServerFactory, receiver: Receiver
) -> None:
    server = await systemx_server()
    client = await server.connect()
    own = server.port
    refused = {
        f"http://127.0.0.1:{receiver.port}/wake": "non-public address",
        f"http://0x7f000001:{receiver.port}/wake": "non-public address",
        f"http://2130706433:{receiver.port}/wake": "non-public address",
        f"http://[::ffff:127.0.0.1]:{receiver.port}/wake": "non-public address",
        "http://169.254.169.254/latest/meta-data": "non-public address",
        "http://10.0.0.1/internal": "non-public address",
        f"http://localhost:{receiver.port}/wake": "targets this host",
        f"http://0x7f000001:{own}/healthz": "the exchange's own endpoints",
        f"http://2130706433:{own}/": "the exchange's own endpoints",
        f"http://127.1:{own}/": "the exchange's own endpoints",
        f"http://[::ffff:127.0.0.1]:{own}/": "the exchange's own endpoints",
    }
    for url, fragment in refused.items():
        reply = await register_wake(client, "a@example.com", {"type": "webhook", "url": url})
        assert reply["type"] == "REGISTER_FAILED", (url, reply)
        assert reply["reason"] == "wake_handler_not_allowed" and fragment in reply["detail"], (url, reply)
    for url in (
        f"http://127.0.0.1:{receiver.port}@evil.example/",
        f"http://127.0.0.1:{receiver.port}.evil.com/",
    ):
        reply = await register_wake(client, "a@example.com", {"type": "webhook", "url": url})
        assert reply["type"] == "REGISTER_FAILED" and reply["reason"] == "invalid_payload", (url, reply)
    await client.register("a@example.com")
    assert receiver.requests == []


async def test_allow_prefixes_compare_normalised_urls(
    systemx_server: ServerFactory, receiver: Receiver
) -> None:
    server = await systemx_server(env={"SYSTEMX_WEBHOOK_ALLOW": f"http://127.0.0.1:{receiver.port}/wake/"})
    client = await server.connect()
    for url in (
        f"http://127.0.0.1:{receiver.port}/wake/a",
        f"http://0x7f000001:{receiver.port}/wake/a",
        f"HTTP://127.1:{receiver.port}/wake/a",
    ):
        assert (await register_wake(client, "a@example.com", {"type": "webhook", "url": url}))["type"] == (
            "REGISTERED"
        )
    for url in (
        f"http://127.0.0.1:{receiver.port}/other",
        f"http://127.0.0.1:{receiver.port + 1}/wake/a",
        "http://10.0.0.1/wake/",
    ):
        reply = await register_wake(client, "a@example.com", {"type": "webhook", "url": url})
        assert reply["type"] == "REGISTER_FAILED" and "SYSTEMX_WEBHOOK_ALLOW" in reply["detail"], (url, reply)


def _name_for_this_host() -> str:
    """A host name (not ``localhost``) that resolves to an address of this machine."""
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        pytest.skip(f"the host name {name!r} does not resolve")
    if ipaddress.ip_address(address).is_global:
        pytest.skip(f"the host name {name!r} resolves to a public address")
    return name


async def test_a_name_resolving_to_an_internal_address_is_refused_when_the_wake_connects(
    systemx_server: ServerFactory, receiver: Receiver
) -> None:
    name = _name_for_this_host()
    server = await systemx_server()
    url = f"http://{name}:{receiver.port}/wake/x"
    dialler = await sleep_then_dial(
        server, "agent@example.com", {"type": "webhook", "url": url}, "c@example.com"
    )
    await dialler.expect("BUSY", reason="wake_failed")
    await server.wait_for_log(r"Wake failed for agent@example\.com: .*refused: .*not a public address")
    assert receiver.requests == []


async def test_the_exchange_itself_is_refused_by_name_even_when_allow_listed(
    systemx_server: ServerFactory, receiver: Receiver
) -> None:
    name = _name_for_this_host()
    server = await systemx_server()
    # Restart on the same port, now allowing URLs on the exchange's own port under that name.
    await server.stop()
    server.env["SYSTEMX_WEBHOOK_ALLOW"] = f"http://{name}:{server.port}/"
    await server.start()
    url = f"http://{name}:{server.port}/healthz"
    dialler = await sleep_then_dial(
        server, "agent@example.com", {"type": "webhook", "url": url}, "c@example.com"
    )
    await dialler.expect("BUSY", reason="wake_failed")
    await server.wait_for_log(r"Wake failed for agent@example\.com: .*refused: .* is the exchange itself")


# --------------------------------------------------------------------------
# Profiles: bounded, and private on disk


async def test_one_session_creates_a_bounded_number_of_profiles(
    systemx_server: ServerFactory, receiver: Receiver
) -> None:
    server = await systemx_server(env={"SYSTEMX_WEBHOOK_ALLOW": f"http://127.0.0.1:{receiver.port}/"})
    client = await server.connect()
    handler = {"type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/wake"}
    replies = [await register_wake(client, f"agent{n}@example.com", handler) for n in range(12)]
    assert [r["type"] for r in replies] == ["REGISTERED"] * 8 + ["REGISTER_FAILED"] * 4
    assert replies[8]["reason"] == "wake_profile_limit"
    assert "SYSTEMX_WAKE_MAX_PROFILES_PER_SESSION" in replies[8]["detail"]
    # Registering without a wake handler still works; the refused addresses left nothing behind.
    await client.register("plain@example.com")
    watcher = await server.connect()
    await watcher.register("watcher@example.com")
    watcher.send_json({"type": "PRESENCE", "query": {"status": "asleep"}})
    result = await watcher.expect("PRESENCE_RESULT")
    assert sorted(e["address"] for e in result["addresses"]) == sorted(
        f"agent{n}@example.com" for n in range(8)
    )


async def test_the_exchange_stores_a_bounded_number_of_profiles(
    systemx_server: ServerFactory, receiver: Receiver
) -> None:
    server = await systemx_server(
        env={"SYSTEMX_WEBHOOK_ALLOW": f"http://127.0.0.1:{receiver.port}/", "SYSTEMX_WAKE_MAX_PROFILES": "3"}
    )
    handler = {"type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/wake"}
    for n in range(3):
        client = await server.connect()
        assert (await register_wake(client, f"agent{n}@example.com", handler))["type"] == "REGISTERED"
    await server.restart()  # the count includes the profiles kept on disk
    client = await server.connect()
    reply = await register_wake(client, "late@example.com", handler)
    assert reply["type"] == "REGISTER_FAILED" and reply["reason"] == "wake_profile_limit"
    assert "SYSTEMX_WAKE_MAX_PROFILES" in reply["detail"]
    # A stored profile can still be taken over and updated.
    assert (await register_wake(client, "agent0@example.com", handler))["type"] == "REGISTERED"


async def test_the_profile_database_is_private(systemx_server: ServerFactory, receiver: Receiver) -> None:
    server = await systemx_server(env={"SYSTEMX_WEBHOOK_ALLOW": f"http://127.0.0.1:{receiver.port}/"})
    client = await server.connect()
    handler = {
        "type": "webhook",
        "url": f"http://127.0.0.1:{receiver.port}/wake",
        "payload": {"token": "s3cret"},
    }
    # The profile is written before REGISTERED is sent.
    assert (await register_wake(client, "agent@example.com", handler))["type"] == "REGISTERED"
    db = server.data_dir / "systemx.db"
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    assert b"s3cret" in Path(f"{db}-wal").read_bytes()
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
