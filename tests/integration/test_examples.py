"""The examples run end to end against a real exchange, as a user would run them."""

from __future__ import annotations

import asyncio
import os
import sys
import sysconfig
from pathlib import Path

from tests.conftest import TIMEOUT, ServerFactory, run_command

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


async def test_examples_run_from_a_checkout_without_installing() -> None:
    # -S: no site-packages, so no installed systemx; the dependencies come from PYTHONPATH.
    site = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": site}
    example = str(EXAMPLES / "simple_client.py")
    code, _out, err = await run_command(
        sys.executable, "-S", example, "--url", "ws://127.0.0.1:9", env=env, timeout=10.0
    )
    # It got as far as connecting: systemx was found in ../src.
    assert code == 2, err
    assert "cannot connect to ws://127.0.0.1:9" in err and "make serve" in err


async def test_examples_without_the_dependencies_say_how_to_install_them() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    example = str(EXAMPLES / "party_line.py")
    code, _out, err = await run_command(sys.executable, "-S", example, env=env, timeout=10.0)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("party_line.py: cannot import ")
    assert "make .venv/.installed" in err and ".venv/bin/python examples/party_line.py" in err
