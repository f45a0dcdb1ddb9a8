"""Fixtures for the Redis backends: a real redis-server, connections, and blocking wrappers.

One redis-server per test module (flushed before each test); a test that kills
or restarts Redis asks for ``own_redis``, a server of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from systemx.state.redis.conn import RedisConnection
from tests.redisproc import REDIS_SERVER, RedisProcess


def _need_redis() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH; install Redis to run the Redis backend tests")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisProcess]:
    _need_redis()
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.stop()


def _flush(proc: RedisProcess) -> None:
    import socket

    with socket.create_connection((proc.host, proc.port), timeout=2) as s:
        s.sendall(b"FLUSHALL\r\n")
        assert s.recv(64).startswith(b"+OK")


@pytest.fixture
def redis(redis_server: RedisProcess) -> RedisProcess:
    """The module's redis-server, emptied."""
    _flush(redis_server)
    return redis_server


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test's own, free to kill and restart."""
    _need_redis()
    proc = RedisProcess()
    proc.start()
    yield proc
    proc.stop()


class Connections:
    """Opens connections to one server and closes them all at the end."""

    def __init__(self, proc: RedisProcess) -> None:
        self.proc = proc
        self.opened: list[RedisConnection] = []

    async def __call__(self, name: str = "test", *, timeout: float = 0.5) -> RedisConnection:
        conn = RedisConnection(self.proc.host, self.proc.port, name=name, timeout=timeout)
        await conn.connect()
        self.opened.append(conn)
        return conn

    async def close(self) -> None:
        for conn in self.opened:
            await conn.close()


@pytest.fixture
async def connect(redis: RedisProcess) -> AsyncIterator[Connections]:
    conns = Connections(redis)
    yield conns
    await conns.close()


@pytest.fixture
def sync_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop for the blocking wrappers of the sync contract suites."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
