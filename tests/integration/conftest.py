"""Integration fixtures: a running exchange and clients connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.conftest import ServerFactory, SystemXProcess
from tests.wsclient import WSClient


@pytest.fixture
async def server(systemx_server: ServerFactory) -> SystemXProcess:
    """An exchange with default settings."""
    return await systemx_server()


ClientFactory = Callable[..., Awaitable[WSClient]]


@pytest.fixture
async def connect(server: SystemXProcess) -> AsyncIterator[ClientFactory]:
    """``await connect()`` -> a client of ``server`` (closed at the end of the test)."""
    clients: list[WSClient] = []

    async def open_client(path: str = "/", *, receive_buffer: int | None = None) -> WSClient:
        client = await server.connect(path, receive_buffer=receive_buffer)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.transport.disconnect()
