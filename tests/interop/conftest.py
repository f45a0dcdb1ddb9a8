"""Interop fixtures: the Bun reference router next to ``systemx serve``.

The reference is not part of this repository. These tests use a checkout of
it named by ``$SYSTEMX_REFERENCE_DIR`` (``make reference`` prepares one in
``.bench/reference``: the public repository with its ``trimphone`` submodule
and its dependencies installed) and ``bun`` as the benchmarks find it
(:func:`benchmarks.servers.find_bun`: ``$SYSTEMX_BENCH_BUN``, ``bun`` on PATH,
or ``.bench/node_modules/.bin/bun`` from ``make bench-bun-install``). When
either is missing, every test here is skipped with a message saying which
and how to get it.

``reference_server`` is a factory fixture like ``systemx_server``:
``await reference_server(env={...})`` starts ``bun run src/server.ts`` on a
free port of 127.0.0.1 in a scratch directory (so no ``.env`` is read), waits
until a WebSocket connects, and stops it at the end of the test.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest

from benchmarks.servers import bun_missing, find_bun
from tests.conftest import TIMEOUT
from tests.wsclient import WSClient

__all__ = ["REFERENCE_ENV", "ReferenceFactory", "ReferenceProcess", "free_port"]

#: The environment variable naming a checkout of the reference router.
REFERENCE_ENV = "SYSTEMX_REFERENCE_DIR"
_PREPARE = "run `make reference` and set SYSTEMX_REFERENCE_DIR=.bench/reference"
_STRIPPED_ENV = ("SYSTEMX_", "TLS_", "FEDERATION_")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def reference_problem(path: str | None) -> str | None:
    """Why ``path`` is not a usable reference checkout, or None."""
    if not path:
        return f"${REFERENCE_ENV} is not set; {_PREPARE}"
    root = Path(path)
    needed = {
        "src/server.ts": "not a checkout of the reference router",
        "trimphone/src/transport.ts": "its trimphone submodule is missing (git submodule update --init)",
        "node_modules/zod/package.json": "its dependencies are not installed (bun install)",
    }
    for relative, why in needed.items():
        if not (root / relative).is_file():
            return f"${REFERENCE_ENV}={path}: {why}; {_PREPARE}"
    return None


@pytest.fixture
def reference_dir() -> Path:
    """The reference checkout (skips the test when there is none)."""
    path = os.environ.get(REFERENCE_ENV)
    problem = reference_problem(path)
    if problem is not None:
        pytest.skip(problem)
    assert path is not None
    return Path(path).resolve()


@pytest.fixture
def bun() -> str:
    """The ``bun`` executable (skips the test when there is none)."""
    found = find_bun()
    if found is None:
        pytest.skip(bun_missing())
    return found


class ReferenceProcess:
    """One reference router (``bun run src/server.ts``) on 127.0.0.1."""

    def __init__(
        self, bun: str, reference_dir: Path, workdir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.bun = bun
        self.reference_dir = reference_dir
        self.workdir = workdir
        self.env = dict(env or {})
        self.port = 0
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.logs: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._waiters: list[tuple[re.Pattern[str], asyncio.Future[str]]] = []

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV)}
        env.update(
            {
                "SYSTEMX_PORT": str(self.port),
                "SYSTEMX_HOST": "127.0.0.1",
                "SYSTEMX_LOG_LEVEL": "info",
            }
        )
        env.update(self.env)
        return env

    async def start(self, timeout: float = TIMEOUT * 2) -> None:
        """Spawn the router and wait until a WebSocket connects to it."""
        assert self.proc is None or self.proc.returncode is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.proc = await asyncio.create_subprocess_exec(
            self.bun,
            "run",
            str(self.reference_dir / "src" / "server.ts"),
            cwd=self.workdir,
            env=self._environment(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc.returncode is not None or self._reader.done():
                await self.kill()
                raise RuntimeError("the reference router exited:\n" + "\n".join(self.logs))
            try:
                client = await WSClient.connect(self.url)
            except OSError:
                if loop.time() > deadline:
                    await self.kill()
                    raise RuntimeError(
                        "the reference router did not start:\n" + "\n".join(self.logs)
                    ) from None
                # Not listening yet: try again shortly (bounded by the deadline above).
                await asyncio.sleep(0.05)
                continue
            client.transport.disconnect()
            return

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while raw := await proc.stdout.readline():
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.logs.append(line)
            for pattern, future in list(self._waiters):
                if not future.done() and pattern.search(line):
                    future.set_result(line)
        for _pattern, future in self._waiters:
            if not future.done():
                future.set_exception(EOFError("reference output ended"))

    async def wait_for_log(self, pattern: str, timeout: float = TIMEOUT, *, since: int = 0) -> str:
        """The first log line from ``logs[since]`` on (seen or still to come) matching ``pattern``."""
        regex = re.compile(pattern)
        for line in self.logs[since:]:
            if regex.search(line):
                return line
        if self._reader is None or self._reader.done():
            raise EOFError("reference output ended")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        entry = (regex, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiters.remove(entry)

    async def stop(self, timeout: float = TIMEOUT) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                await self.kill()
        if self._reader is not None:
            await self._reader

    async def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await self._reader

    async def connect(self) -> WSClient:
        return await WSClient.connect(self.url)


ReferenceFactory = Callable[..., Awaitable[ReferenceProcess]]


@pytest.fixture
async def reference_server(bun: str, reference_dir: Path, tmp_path: Path) -> AsyncIterator[ReferenceFactory]:
    """``await reference_server(env={...})`` -> a running :class:`ReferenceProcess`."""
    started: list[ReferenceProcess] = []

    async def start(env: Mapping[str, str] | None = None) -> ReferenceProcess:
        server = ReferenceProcess(bun, reference_dir, tmp_path / f"reference{len(started)}", env)
        started.append(server)
        await server.start()
        return server

    yield start
    for server in started:
        await server.stop()
