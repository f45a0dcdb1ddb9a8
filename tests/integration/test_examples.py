"""The examples run end to end against a real exchange, as a user would run them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.conftest import TIMEOUT, ServerFactory

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def run_example(name: str, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT * 6)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_sleepy_agent_demo(systemx_server: ServerFactory) -> None:
    # The configuration the README's "Try it in one command" uses.
    server = await systemx_server(env={"SYSTEMX_SPAWN_HANDLERS": str(EXAMPLES / "spawn_handlers.toml")})
    code, out = await run_example("sleepy_agent.py", "--demo", "--url", server.url)
    assert code == 0, out
    assert "asleep (exchange closed the socket: 4000 sleep)" in out
    assert "I was asleep until you rang" in out
    assert out.rstrip().endswith("sleepy@agents.example.com is asleep again")
    await server.wait_for_log(r"\[sleepy@agents\.example\.com\] stdout: \[agent\] woken for call")


async def test_party_line_example(systemx_server: ServerFactory) -> None:
    server = await systemx_server()
    code, out = await run_example("party_line.py", "--url", server.url)
    assert code == 0, out
    assert "planner found: ada@agents.example.com (available), brian@agents.example.com (available)" in out
    assert out.count("hears planner@example.com: 'Morning! What are you working on?'") == 2
    assert "cleo" not in out  # London is not within 50 km of Leeds


async def test_examples_report_an_unreachable_exchange() -> None:
    for name in ("sleepy_agent.py", "party_line.py"):
        code, out = await run_example(name, "--url", "ws://127.0.0.1:9")
        assert code == 2 and "cannot reach the exchange" in out
