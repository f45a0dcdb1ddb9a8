"""Process lifecycle of ``systemx serve``: SIGTERM/SIGINT shutdown, its bound, restart, startup errors."""

from __future__ import annotations

import asyncio
import re
import resource
import signal
import sys
import time
from pathlib import Path

import pytest

import systemx
from tests.conftest import ServerFactory, SystemXProcess
from tests.wsclient import TIMEOUT, WSClient, scaled


async def _call(server: SystemXProcess) -> tuple[WSClient, WSClient, str]:
    caller, callee = await server.connect(), await server.connect()
    await caller.register("caller@example.com")
    await callee.register("callee@example.com")
    caller.send_json({"type": "DIAL", "to": "callee@example.com", "ringing": True})
    ring = await callee.expect("RING")
    callee.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await caller.expect("CONNECTED", call_id=ring["call_id"], skip=("RINGING",))
    return caller, callee, ring["call_id"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_hangs_up_calls_and_closes_1001(systemx_server: ServerFactory, sig: int) -> None:
    server = await systemx_server(env={"SYSTEMX_SHUTDOWN_TIMEOUT": "3000"})
    caller, callee, call_id = await _call(server)
    idle = await server.connect()

    started = time.monotonic()
    assert server.proc is not None
    server.proc.send_signal(sig)

    for client in (caller, callee):
        await client.expect("HANGUP", call_id=call_id, reason="shutdown")
        assert await client.expect_close() == (1001, "shutdown")
    assert await idle.expect_close() == (1001, "shutdown")
    assert await server.stop(timeout=scaled(3.0) + TIMEOUT) == 0
    # Every client answered its CLOSE, so nothing waited for the bound.
    assert time.monotonic() - started < scaled(3.0)
    assert any("SystemX stopped" in line for line in server.logs)


async def test_shutdown_wait_is_bounded(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_SHUTDOWN_TIMEOUT": "500"})
    deaf = await server.connect()
    await deaf.register("deaf@example.com")
    deaf.pause_reading()  # never reads, so never answers the server's CLOSE

    started = time.monotonic()
    assert await server.stop(timeout=TIMEOUT) == 0
    assert time.monotonic() - started >= 0.5
    assert any("aborting 1 connection" in line for line in server.logs)


async def test_restart_keeps_data_dir_and_port(systemx_server: ServerFactory) -> None:
    server = await systemx_server()
    url, data_dir = server.url, server.data_dir
    await server.restart()
    assert (server.url, server.data_dir) == (url, data_dir)
    client = await server.connect()
    await client.register("again@example.com")


async def test_config_error_exits_2(tmp_path: Path) -> None:
    server = SystemXProcess(tmp_path, env={"SYSTEMX_HEARTBEAT_TIMEOUT": "soon"})
    with pytest.raises(RuntimeError, match="systemx: SYSTEMX_HEARTBEAT_TIMEOUT: not a duration"):
        await server.start()
    assert server.proc is not None and server.proc.returncode == 2


async def test_port_in_use_exits_1(systemx_server: ServerFactory, tmp_path: Path) -> None:
    first = await systemx_server()
    second = SystemXProcess(tmp_path / "second", args=["--port", str(first.port)])
    with pytest.raises(RuntimeError, match="cannot listen on"):
        await second.start()
    assert second.proc is not None and second.proc.returncode == 1


async def test_flags_override_environment(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_LOG_FORMAT": "json"}, args=["--log-format", "text"])
    line = await server.wait_for_log("listening on")
    assert " [INFO] SystemX listening on ws://127.0.0.1:" in line


async def test_version(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "systemx", "--version", cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    out, _err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0
    assert out.decode().strip() == f"systemx {systemx.__version__}"


def _lower_open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, soft), hard))


def _open_files_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="needs /proc")
async def test_serve_raises_its_open_file_limit(tmp_path: Path) -> None:
    # Every connection is a file descriptor: a soft limit of a few hundred would cap
    # the exchange at a few hundred connections while the hard limit allows more.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard open-file limit is too low to raise")
    server = SystemXProcess(tmp_path / "server", preexec=_lower_open_files)
    await server.start()
    try:
        assert server.proc is not None
        soft, new_hard = _open_files_limits(server.proc.pid)
        assert soft > 256
        assert new_hard == hard or hard == resource.RLIM_INFINITY
        assert any(f"Open files: limit raised from 256 to {soft}" in line for line in server.logs)
        client = await server.connect()
        assert (await client.register("many@example.com"))["address"] == "many@example.com"
        await client.close()
    finally:
        await server.stop()


def _open_files_64() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
async def test_nearing_the_open_file_limit_is_a_warning_once_per_approach(tmp_path: Path) -> None:
    # Past the limit the event loop refuses connections without a word; the operator
    # hears about it before that, once each time the count climbs back up.
    # The call-record store's three files would take the sockets this test counts on.
    server = SystemXProcess(tmp_path / "server", {"SYSTEMX_RECORDS": "off"}, preexec=_open_files_64)
    await server.start()
    warning = r"\[WARN\] \d+ connections: close to the open-files limit"
    try:
        for approach in range(2):
            since = len(server.logs)
            clients = [await server.connect() for _ in range(45)]
            line = await server.wait_for_log(warning, since=since)
            assert int(line.split("[WARN] ")[1].split()[0]) <= 45
            # Still serving (the limit itself is a few sockets further on).
            assert (await clients[-1].register(f"last{approach}@example.com"))["type"] == "REGISTERED"
            for client in clients:
                await client.close()
            assert sum(1 for line in server.logs[since:] if re.search(warning, line)) == 1
            # The server has seen every close once a later connection's round trip is done.
            probe = await server.connect()
            await probe.roundtrip()
            await probe.close()
    finally:
        await server.stop()
