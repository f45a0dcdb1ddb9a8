"""Shared test helpers: the scaled timeout unit and a real ``systemx serve`` subprocess.

``systemx_server`` is a factory fixture: ``await systemx_server(env={...})``
starts ``python -m systemx serve --host 127.0.0.1 --port 0`` in a scratch
directory (so no ``.env`` leaks in) with its own ``SYSTEMX_DATA_DIR``, reads
its stderr as it arrives and returns once the "listening on" line is logged.
Every process it started is stopped when the test ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Loaded before any test runs: hypothesis' pytest plugin imports it at the end of
# the session otherwise, and compiling it there (after the asyncio tests) trips
# CPython 3.11's "AST constructor recursion depth mismatch" when no test used it.
import hypothesis  # noqa: F401
import pytest

from tests.wsclient import TIMEOUT, TIMEOUT_SCALE, WSClient, scaled

__all__ = [
    "TIMEOUT",
    "TIMEOUT_SCALE",
    "LoggedProcess",
    "ServerFactory",
    "SystemXProcess",
    "run_command",
    "scaled",
]

_LISTENING = re.compile(r"listening on (wss?)://([^\s:]+|\[[^\]]+\]):(\d+)")
_STRIPPED_ENV = ("SYSTEMX_", "TLS_", "FEDERATION_")


async def run_command(
    *cmd: str, timeout: float, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> tuple[int, str, str]:
    """Run ``cmd`` to its end (killed after ``scaled(timeout)`` s): exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), scaled(timeout))
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class LoggedProcess:
    """A subprocess whose output lines are kept in ``logs`` as they arrive, and can be waited on.

    A subclass spawns ``proc``, then ``self._reader = asyncio.create_task(self._read(stream))``
    on the pipe that carries its log; ``output`` names that output in errors.
    """

    output = "process output"

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.logs: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._waiters: list[tuple[re.Pattern[str], asyncio.Future[str]]] = []

    async def _read(self, stream: asyncio.StreamReader | None) -> None:
        assert stream is not None
        while raw := await stream.readline():
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.logs.append(line)
            for pattern, future in list(self._waiters):
                if not future.done() and pattern.search(line):
                    future.set_result(line)
        for _pattern, future in self._waiters:
            if not future.done():
                future.set_exception(EOFError(f"{self.output} ended"))

    async def wait_for_log(
        self, pattern: str | re.Pattern[str], timeout: float = TIMEOUT, *, since: int = 0
    ) -> str:
        """The first log line from ``logs[since]`` on (seen or still to come) matching ``pattern``."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        for line in self.logs[since:]:
            if regex.search(line):
                return line
        if self._reader is None or self._reader.done():
            raise EOFError(f"{self.output} ended")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        entry = (regex, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiters.remove(entry)

    async def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await self._reader


class SystemXProcess(LoggedProcess):
    """One ``systemx serve`` subprocess, restartable on the same data directory and port."""

    output = "server output"

    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        preexec: Callable[[], object] | None = None,
    ) -> None:
        super().__init__()
        self.workdir = workdir
        # Run in the child between fork and exec (process limits, say).
        self.preexec = preexec
        self.data_dir = workdir / "data"
        self.env = dict(env or {})
        self.args = list(args)
        self.url = ""
        self.port = 0

    @property
    def http_url(self) -> str:
        return self.url.replace("ws", "http", 1)

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "systemx", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if "SYSTEMX_LOG_LEVEL" not in self.env:
            cmd += ["--log-level", "info"]
        return cmd + self.args

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV)}
        env["SYSTEMX_DATA_DIR"] = str(self.data_dir)
        env["PYTHONUNBUFFERED"] = "1"
        # Tests run many servers at once: the admin listener only where a test asks for it.
        env["SYSTEMX_ADMIN"] = "off"
        # Its internal session would count among every test's sessions: on where a test asks.
        env["SYSTEMX_LOG_STREAM"] = "off"
        env.update(self.env)
        return env

    async def start(self, timeout: float = TIMEOUT * 2) -> None:
        """Spawn the server and wait for its "listening on" line."""
        assert self.proc is None or self.proc.returncode is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        first_line = len(self.logs)
        self.proc = await asyncio.create_subprocess_exec(
            *self._command(),
            cwd=self.workdir,
            env=self._environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=self.preexec,
        )
        self._reader = asyncio.create_task(self._read(self.proc.stderr))
        try:
            line = await self.wait_for_log(_LISTENING, timeout, since=first_line)
        except EOFError:
            # It exited by itself. Signalling it now (kill) would let Popen reap it behind
            # asyncio's child watcher and lose the exit status.
            await asyncio.wait_for(self.proc.wait(), timeout)
            raise RuntimeError("systemx serve did not start:\n" + "\n".join(self.logs)) from None
        except TimeoutError:
            await self.kill()
            raise RuntimeError("systemx serve did not start:\n" + "\n".join(self.logs)) from None
        match = _LISTENING.search(line)
        assert match is not None
        scheme, host, port = match.groups()
        self.port = int(port)
        self.url = f"{scheme}://{host}:{self.port}"

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT) -> int:
        """Signal the server and wait for it to exit; its exit status."""
        proc = self.proc
        assert proc is not None
        if proc.returncode is None:
            proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                await self.kill()
                raise
        if self._reader is not None:
            await self._reader
        assert proc.returncode is not None
        return proc.returncode

    async def restart(self, timeout: float = TIMEOUT * 2) -> None:
        """Stop (SIGTERM) if running and start again on the same data directory and port."""
        if self.proc is not None and self.proc.returncode is None:
            await self.stop()
        await self.start(timeout)

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``: the exchange's counts."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            raw = await reader.read()
        finally:
            writer.close()
        body = raw.split(b"\r\n\r\n", 1)[1]
        decoded: dict[str, Any] = json.loads(body)
        return decoded

    async def wait_health(self, timeout: float = TIMEOUT, **expected: Any) -> dict[str, Any]:
        """Wait until ``/healthz`` shows every ``expected`` count (e.g. ``registered=0``)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            health = await self.health()
            if all(health.get(k) == v for k, v in expected.items()):
                return health
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"/healthz never showed {expected}: {health}")
            await asyncio.sleep(0.01)

    async def connect(
        self, path: str = "/", *, receive_buffer: int | None = None, source: str | None = None
    ) -> WSClient:
        return await WSClient.connect(self.url + path, receive_buffer=receive_buffer, source=source)


ServerFactory = Callable[..., Awaitable[SystemXProcess]]


@pytest.fixture
async def systemx_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """``await systemx_server(env={...}, args=[...])`` -> a running :class:`SystemXProcess`."""
    started: list[SystemXProcess] = []

    async def start(env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> SystemXProcess:
        server = SystemXProcess(tmp_path / f"server{len(started)}", env, args)
        started.append(server)
        await server.start()
        return server

    yield start
    for server in started:
        if server.proc is not None and server.proc.returncode is None:
            try:
                await server.stop()
            except TimeoutError:
                pass
        else:
            await server.kill()
