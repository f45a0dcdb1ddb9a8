"""A cluster for tests: a real ``redis-server`` on a free port and ``systemx serve`` nodes sharing it.

``await cluster.start(n)`` starts ``n`` nodes named ``n0``, ``n1``... with a short
node TTL (2 s), so that a killed node is noticed quickly; a test that kills or
restarts Redis has a Redis of its own (one per test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from tests.conftest import SystemXProcess
from tests.redisproc import REDIS_SERVER, RedisProcess
from tests.wsclient import WSClient

NODE_TTL_MS = 2000


class Cluster:
    def __init__(self, workdir: Path, redis: RedisProcess) -> None:
        self.workdir = workdir
        self.redis = redis
        self.nodes: list[SystemXProcess] = []
        self.clients: list[WSClient] = []

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    async def add(self, env: Mapping[str, str] | None = None, name: str | None = None) -> SystemXProcess:
        index = len(self.nodes)
        settings = {
            "SYSTEMX_REDIS_URL": self.redis_url,
            "SYSTEMX_NODE_ID": name or f"n{index}",
            "SYSTEMX_NODE_TTL_MS": str(NODE_TTL_MS),
            **(env or {}),
        }
        node = SystemXProcess(self.workdir / f"node{index}", settings)
        self.nodes.append(node)
        await node.start()
        return node

    async def start(self, n: int, env: Mapping[str, str] | None = None) -> list[SystemXProcess]:
        return [await self.add(env) for _ in range(n)]

    async def client(self, node: SystemXProcess, address: str | None = None) -> WSClient:
        ws = await node.connect()
        self.clients.append(ws)
        if address is not None:
            await ws.register(address)
        return ws

    async def close(self) -> None:
        for ws in self.clients:
            ws.transport.disconnect()
        for node in self.nodes:
            if node.proc is not None and node.proc.returncode is None:
                try:
                    await node.stop()
                except TimeoutError:
                    await node.kill()
            else:
                await node.kill()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH (the Debian package redis-server)")
    redis = RedisProcess()
    redis.start()
    c = Cluster(tmp_path, redis)
    try:
        yield c
    finally:
        await c.close()
        redis.stop()
