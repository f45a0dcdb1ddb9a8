"""The terminal tools (``systemx dial``, ``answer``, ``presence``, ``party``) as a user runs them,
against a real exchange."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from systemx.client import Client, PartyEvent, PartyMessage
from tests.conftest import TIMEOUT, SystemXProcess, scaled


class Tool:
    """One ``python -m systemx TOOL ...`` process with piped stdin, stdout and stderr."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []
        self._stderr_lines: asyncio.Queue[str] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            line = raw.decode().rstrip("\n")
            self.stderr.append(line)
            self._stderr_lines.put_nowait(line)

    async def status_line(self, text: str) -> str:
        """Wait for a stderr line containing ``text``."""
        for line in self.stderr:
            if text in line:
                return line
        async with asyncio.timeout(scaled(TIMEOUT)):
            while True:
                line = await self._stderr_lines.get()
                if text in line:
                    return line

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), scaled(TIMEOUT))
        assert raw, f"stdout ended; stderr: {self.stderr}"
        return raw.decode().rstrip("\n")

    def write(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(f"{line}\n" for line in lines).encode())

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    async def exit_status(self) -> int:
        status = await asyncio.wait_for(self.proc.wait(), scaled(TIMEOUT) * 2)
        await self._reader
        return status

    async def rest_of_stdout(self) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.read(), scaled(TIMEOUT))).decode()


RunTool = Callable[..., Awaitable[Tool]]


@pytest.fixture
async def tool(server: SystemXProcess) -> AsyncIterator[RunTool]:
    started: list[Tool] = []

    async def run(*args: str, env: dict[str, str] | None = None) -> Tool:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "systemx",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "SYSTEMX_URL": server.url, **(env or {})},
        )
        started.append(Tool(proc))
        return started[-1]

    yield run
    for t in started:
        if t.proc.returncode is None:
            t.proc.kill()
            await t.proc.wait()


async def test_answer_exec_bridges_a_call_to_a_program(tool: RunTool) -> None:
    program = 'while read line; do echo "echo: $line"; [ "$line" = bye ] && exit 0; done'
    answer = await tool("answer", "--as", "echo@example.com", "--once", "--exec", program)
    await answer.status_line("echo@example.com waiting for calls")

    dial = await tool("dial", "echo@example.com", "--as", "alice@example.com", "--wait")
    await dial.status_line("connected to echo@example.com")
    dial.write("hello")
    assert await dial.line() == "echo: hello"
    dial.write("bye")
    assert await dial.line() == "echo: bye"
    # The program's exit hangs up: the dialler exits 0 with the reason.
    assert await dial.exit_status() == 0
    assert "systemx: call ended: normal" in dial.stderr
    assert await answer.exit_status() == 0
    assert any(line.endswith("ended: normal") for line in answer.stderr)


async def test_a_program_exiting_with_an_error_hangs_up_with_its_status(tool: RunTool) -> None:
    answer = await tool("answer", "--as", "fail@example.com", "--once", "--exec", "read q; echo no; exit 3")
    await answer.status_line("waiting for calls")
    dial = await tool("dial", "fail@example.com", "--as", "alice@example.com", "--wait")
    await dial.status_line("connected")
    dial.write("question")
    assert await dial.line() == "no"
    assert await dial.exit_status() == 1
    assert "systemx: call ended: exit status 3" in dial.stderr
    assert await answer.exit_status() == 1


async def test_a_hangup_closes_the_programs_stdin_then_terminates_it(tool: RunTool, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # Ignores its closed stdin and would run for a minute: terminated after the grace.
    program = f"echo $$ > {pidfile}; echo ready; exec sleep 60"
    answer = await tool("answer", "--as", "slow@example.com", "--once", "--grace", "0.2", "--exec", program)
    await answer.status_line("waiting for calls")
    dial = await tool("dial", "slow@example.com", "--as", "alice@example.com", "--wait")
    assert await dial.line() == "ready"
    dial.close_stdin()  # without --wait this would hang up; with it, hang up by signal below
    dial.proc.send_signal(2)  # Ctrl-C: the dialler hangs up
    await dial.exit_status()
    assert await answer.exit_status() == 0
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_answer_without_exec_prints_messages_and_sends_stdin(tool: RunTool) -> None:
    answer = await tool("answer", "--as", "bob@example.com", "--once")
    await answer.status_line("waiting for calls")
    dial = await tool("dial", "bob@example.com", "--as", "alice@example.com", "--json")
    connected = json.loads(await dial.line())
    assert connected["type"] == "CONNECTED" and connected["to"] == "bob@example.com"
    dial.write("hi bob")
    assert await answer.line() == "hi bob"
    answer.write("hi alice")
    msg = json.loads(await dial.line())
    assert {k: msg[k] for k in ("type", "from", "data", "content_type")} == {
        "type": "MSG",
        "from": "bob@example.com",
        "data": "hi alice",
        "content_type": "text",
    }
    dial.close_stdin()  # end of input hangs up
    hangup = json.loads(await dial.line())
    assert (hangup["type"], hangup["reason"], hangup["call_id"]) == ("HANGUP", "normal", connected["call_id"])
    assert await dial.exit_status() == 0
    assert await answer.exit_status() == 0


async def test_dialling_nobody_names_the_reason_and_exits_3(tool: RunTool) -> None:
    dial = await tool("dial", "nobody@example.com", "--as", "alice@example.com")
    assert await dial.exit_status() == 3
    assert dial.stderr == [
        "systemx: nobody@example.com: no such address (nobody is registered there and it has no wake profile)"
    ]
    assert await dial.rest_of_stdout() == ""


async def test_an_unreachable_exchange_exits_4(tool: RunTool) -> None:
    dial = await tool("dial", "bob@example.com", "--as", "alice@example.com", "--url", "ws://127.0.0.1:9")
    assert await dial.exit_status() == 4
    assert len(dial.stderr) == 1 and dial.stderr[0].startswith("systemx: cannot connect to ws://127.0.0.1:9")


async def test_presence_prints_a_table_or_json(server: SystemXProcess, tool: RunTool) -> None:
    async with (
        await Client.connect(
            server.url,
            "ada@agents.example.com",
            metadata={"capabilities": ["code", "review"], "location": {"lat": 53.8, "lon": -1.55}},
        ),
        await Client.connect(server.url, "cleo@agents.example.com", metadata={"capabilities": ["chat"]}),
    ):
        table = await tool("presence", "--capability", "code")
        assert await table.exit_status() == 0
        lines = (await table.rest_of_stdout()).splitlines()
        assert lines[0].split() == ["ADDRESS", "STATUS", "CAPABILITIES", "LOCATION"]
        assert lines[1].split() == ["ada@agents.example.com", "available", "code,review", "53.8000,-1.5500"]
        assert lines[2] == "(1 entry)"

        as_json = await tool("presence", "--domain", "agents.example.com", "--json", "--as", "me@example.com")
        assert await as_json.exit_status() == 0
        entries = [json.loads(line) for line in (await as_json.rest_of_stdout()).splitlines()]
        assert sorted(e["address"] for e in entries) == ["ada@agents.example.com", "cleo@agents.example.com"]

        bad = await tool("presence", "--near", "53.8,-1.55")
        assert await bad.exit_status() == 2
        assert "expected LAT,LON,KM" in "\n".join(bad.stderr)


async def test_party_tool_joins_talks_and_leaves(server: SystemXProcess, tool: RunTool) -> None:
    party = await tool("party", "room@rooms.example.com", "--as", "ann@example.com", "--create")
    await party.status_line("joined room@rooms.example.com: ann@example.com")
    async with await Client.connect(server.url, "ben@example.com") as ben:
        room = await ben.join("room@rooms.example.com", create=False)
        assert await party.line() == "* ben@example.com joined"
        await room.send("hello ann")
        assert await party.line() == "<ben@example.com> hello ann"
        party.write("hello ben")
        message = await room.recv(TIMEOUT)
        assert isinstance(message, PartyMessage) and (message.from_, message.data) == (
            "ann@example.com",
            "hello ben",
        )
        party.close_stdin()  # end of input leaves the line
        left = await room.recv(TIMEOUT)
        assert isinstance(left, PartyEvent) and (left.kind, left.address) == ("left", "ann@example.com")
    assert await party.exit_status() == 0


async def test_party_tool_without_create_is_refused(tool: RunTool) -> None:
    party = await tool("party", "none@rooms.example.com", "--as", "ann@example.com")
    assert await party.exit_status() == 3
    assert "no_such_party" in party.stderr[-1]


async def test_the_token_is_sent_as_register_auth(
    systemx_server: Callable[..., Awaitable[SystemXProcess]],
) -> None:
    server = await systemx_server(env={"SYSTEMX_LOG_LEVEL": "debug"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "systemx",
        "presence",
        "--url",
        server.url,
        "--token",
        "s3cret-token",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(proc.wait(), scaled(TIMEOUT)) == 0
    line = await server.wait_for_log(r'"type":"REGISTER"')
    assert '"auth":"s3cret-token"' in line


async def test_answer_reconnects_when_the_exchange_restarts(server: SystemXProcess, tool: RunTool) -> None:
    answer = await tool("answer", "--as", "bob@example.com", "--exec", "read q; echo pong")
    await answer.status_line("waiting for calls")
    await server.restart()
    await answer.status_line("disconnected (1001 shutdown); reconnecting")
    await answer.status_line("reconnected after")
    dial = await tool("dial", "bob@example.com", "--as", "alice@example.com", "--wait")
    dial.write("ping")
    assert await dial.line() == "pong"
    assert await dial.exit_status() == 0
