"""``systemx tail`` against the admin listener of a real ``systemx serve``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from systemx.client import BusyError, Client
from tests.conftest import LoggedProcess, ServerFactory, SystemXProcess
from tests.integration.test_admin import start_admin
from tests.wsclient import TIMEOUT


class TailProcess(LoggedProcess):
    """``python -m systemx tail ...``; its stdout and stderr lines, in order, in ``logs``."""

    output = "systemx tail output"

    async def start(self, *args: str, env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMX_")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "systemx",
            "tail",
            *args,
            env={**clean, **(env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(self.proc.stdout))

    async def interrupt(self) -> int:
        """Ctrl-C: SIGINT, and the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.proc.wait(), TIMEOUT)
        assert self._reader is not None
        await self._reader
        return code


StartTail = Callable[..., Awaitable[TailProcess]]


@pytest.fixture
async def tail() -> AsyncIterator[StartTail]:
    started: list[TailProcess] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> TailProcess:
        process = TailProcess()
        started.append(process)
        await process.start(*args, env=env)
        return process

    yield start
    for process in started:
        await process.kill()


async def _one_call(url: str, caller: str = "alice@example.com", callee: str = "bob@example.com") -> str:
    """Place, answer and hang up one call with the client library; its call id."""
    async with await Client.connect(url, caller) as alice, await Client.connect(url, callee) as bob:
        dialling = asyncio.create_task(alice.dial(callee, timeout=TIMEOUT))
        incoming = await bob.next_call(TIMEOUT)
        await incoming.answer()
        call = await dialling
        await call.hangup()
        return call.call_id


async def test_tail_prints_a_call_as_it_happens(systemx_server: ServerFactory, tail: StartTail) -> None:
    server, admin = await start_admin(systemx_server, env={"SYSTEMX_ADMIN_TOKEN": "s3cret"})
    follower = await tail("--url", admin, env={"SYSTEMX_ADMIN_TOKEN": "s3cret"})
    await follower.wait_for_log(f"^systemx: following {admin}$")

    call_id = await _one_call(server.url)

    started = await follower.wait_for_log(r"call started +alice@example.com → bob@example.com")
    answered = await follower.wait_for_log(r"call answered +alice@example.com → bob@example.com")
    ended = await follower.wait_for_log(r"call ended +alice@example.com → bob@example.com")
    assert all(call_id in line for line in (started, answered, ended))
    assert "answered, normal" in ended and "ended by caller" in ended
    await follower.wait_for_log(r"registered +bob@example.com \(session ")
    await follower.wait_for_log(r"unregistered +alice@example.com \(session .*, disconnected\)")
    assert follower.logs.index(started) < follower.logs.index(answered) < follower.logs.index(ended)

    # Ctrl-C ends it quietly, with status 0.
    assert await follower.interrupt() == 0
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in follower.logs)


async def test_tail_json_lines_and_filters(systemx_server: ServerFactory, tail: StartTail) -> None:
    server, admin = await start_admin(systemx_server)
    ended_only = await tail("--url", admin, "--json", "--kind", "call_ended", "--address", "BOB@example.com")
    refusals = await tail("--url", admin, "--kind", "refused")
    for follower in (ended_only, refusals):
        await follower.wait_for_log("^systemx: following ")

    await _one_call(server.url, "carol@example.com", "dave@example.com")  # not bob's: filtered out
    call_id = await _one_call(server.url)
    async with await Client.connect(server.url, "erin@example.com") as erin:
        with pytest.raises(BusyError):
            await erin.dial("nobody@example.com", timeout=TIMEOUT)

    line = await ended_only.wait_for_log(r'^\{"event":"call_ended"')
    event = json.loads(line)
    assert event["call_id"] == call_id
    assert event["caller"] == "alice@example.com" and event["callee"] == "bob@example.com"
    assert event["disposition"] == "answered" and event["reason"] == "normal"
    assert event["ended_by"] == "caller" and event["duration_s"] >= 0
    refused = await refusals.wait_for_log(
        r"refused +DIAL nobody@example.com by erin@example.com: no_such_address"
    )
    assert refused
    # Only the events asked for: one call_ended line (bob's), and no call lines among the refusals.
    await ended_only.interrupt()
    await refusals.interrupt()
    assert [json.loads(x)["call_id"] for x in ended_only.logs if x.startswith("{")] == [call_id]
    assert not any("call " in x for x in refusals.logs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_tail_reconnects_when_the_stream_drops(systemx_server: ServerFactory, tail: StartTail) -> None:
    port = _free_port()
    server: SystemXProcess = await systemx_server(
        env={"SYSTEMX_ADMIN": "on", "SYSTEMX_ADMIN_PORT": str(port)}
    )
    admin = f"http://127.0.0.1:{port}"
    # The URL from SYSTEMX_ADMIN_HOST and SYSTEMX_ADMIN_PORT, as the server reads them.
    follower = await tail(env={"SYSTEMX_ADMIN_HOST": "127.0.0.1", "SYSTEMX_ADMIN_PORT": str(port)})
    await follower.wait_for_log(f"^systemx: following {admin}$")

    await server.restart()
    await follower.wait_for_log("reconnecting$")
    await follower.wait_for_log(f"^systemx: following again {admin}$")
    call_id = await _one_call(server.url)
    await follower.wait_for_log(f"call ended .*{call_id}")
    assert await follower.interrupt() == 0


async def test_tail_reports_an_unreachable_listener_and_a_bad_token(
    systemx_server: ServerFactory, tail: StartTail
) -> None:
    follower = await tail("--url", f"http://127.0.0.1:{_free_port()}")
    assert await asyncio.wait_for(follower.proc.wait(), TIMEOUT) == 4  # type: ignore[union-attr]
    await follower.wait_for_log("^systemx: cannot reach the admin listener at http://127.0.0.1:")

    _, admin = await start_admin(systemx_server, env={"SYSTEMX_ADMIN_TOKEN": "s3cret"})
    refused = await tail("--url", admin, "--token", "wrong")
    assert await asyncio.wait_for(refused.proc.wait(), TIMEOUT) == 4  # type: ignore[union-attr]
    await refused.wait_for_log("^systemx: /events: HTTP 401: a valid admin token is required")
