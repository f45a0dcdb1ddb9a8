"""logs@system.local: the exchange's log as a broadcast, against a real ``systemx serve``."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import ServerFactory, SystemXProcess
from tests.integration import test_tools
from tests.integration.test_tools import RunTool
from tests.wsclient import WSClient

tool = test_tools.tool  # the fixture that runs a terminal tool
ON = {"SYSTEMX_LOG_STREAM": "on"}


@pytest.fixture
async def server(systemx_server: ServerFactory) -> SystemXProcess:
    """An exchange with its log stream (the harness turns it off elsewhere)."""
    return await systemx_server(env=ON)


LOGS = "logs@system.local"


async def lines_until(client: WSClient, needle: str) -> list[str]:
    """MSG lines received until one contains ``needle`` (asserting each is a MSG of the stream)."""
    seen: list[str] = []
    while True:
        msg: dict[str, Any] = await client.expect("MSG", from_=LOGS)
        seen.append(msg["data"])
        if needle in msg["data"]:
            return seen


async def test_a_caller_hears_the_backlog_then_live_lines(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env=ON)
    reader = await server.connect()
    await reader.register("reader@example.com")
    reader.send_json({"type": "DIAL", "to": LOGS})
    connected = await reader.expect("CONNECTED", to=LOGS)
    call_id = connected["call_id"]
    welcome = await lines_until(reader, "--- Live log stream ---")
    assert "SystemX log stream" in welcome[0]
    assert any("listening on" in line for line in welcome)
    assert any("Connection registered: reader@example.com" in line for line in welcome)

    other = await server.connect()
    await other.register("x@example.com")
    live = await lines_until(reader, "Connection registered: x@example.com")
    assert live[-1].split(" ", 3)[2] == "INFO"
    # The line as logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s") writes it.
    assert re.match(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO systemx\.exchange: "
        r"Connection registered: x@example\.com \(session: [0-9a-f-]+\)$",
        live[-1],
    ), live[-1]

    other.send_json({"type": "PRESENCE"})
    listed = await other.expect("PRESENCE_RESULT")
    entry = next(e for e in listed["addresses"] if e["address"] == LOGS)
    assert entry["metadata"]["service"] == "log_stream"

    reader.send_json({"type": "HANGUP", "call_id": call_id})
    await reader.expect("HANGUP", call_id=call_id, skip=("MSG",))
    await reader.roundtrip()
    # Hung up: a later line reaches the reader no more.
    await other.close()
    await server.wait_for_log("Connection unregistered: x@example.com")
    await reader.roundtrip()  # a MSG first would fail here
    await reader.close()


async def test_off_when_disabled(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_LOG_STREAM": "off"})
    client = await server.connect()
    await client.register("reader@example.com")
    client.send_json({"type": "DIAL", "to": LOGS})
    await client.expect("BUSY", to=LOGS, reason="no_such_address")
    await client.close()


async def test_dial_tool_prints_the_log(server: SystemXProcess, tool: RunTool) -> None:
    dial = await tool("dial", LOGS, "--as", "me@example.com")
    await dial.status_line("connected to logs@system.local")
    lines = [await dial.line() for _ in range(3)]
    assert "SystemX log stream" in lines[0]
    while "--- Live log stream ---" not in lines[-1]:
        lines.append(await dial.line())
    assert any("Connection registered: me@example.com" in line for line in lines)
    client = await server.connect()
    await client.register("x@example.com")
    while "Connection registered: x@example.com" not in await dial.line():
        pass
    dial.close_stdin()  # end of input hangs up
    assert await dial.exit_status() == 0
    await client.close()


async def test_healthz_counts_clients_not_the_log_stream(server: SystemXProcess) -> None:
    from aiohttp import ClientSession

    async def counts() -> tuple[int, int]:
        async with ClientSession() as http, http.get(server.http_url + "/healthz") as response:
            body: dict[str, Any] = await response.json()
        return body["sessions"], body["registered"]

    assert await counts() == (0, 0)
    client = await server.connect()
    await client.register("alice@example.com")
    assert await counts() == (1, 1)
