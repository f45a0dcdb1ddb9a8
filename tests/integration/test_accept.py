"""The lean accept path (systemx.server.accept) against a real in-process server and real sockets."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from systemx.config import Settings
from systemx.server.accept import AcceptedTransport, _SocketFacts
from systemx.server.app import Server
from systemx.server.transport import Connection
from tests.wsclient import WSClient


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    settings = dataclasses.replace(
        Settings(), host="127.0.0.1", port=0, data_dir=str(tmp_path), admin_enabled=False
    )
    srv = Server(settings)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.shutdown()


async def test_installed_picows_takes_the_lean_accept_path(server: Server) -> None:
    # Fails when a picows release changes the protocol constructor we build on:
    # the server would still work (through ws_create_server) but slower.
    assert server.lean_accept is True


async def test_accepted_connection_works_and_answers_real_socket_facts(server: Server) -> None:
    client = await WSClient.connect(server.url)
    try:
        registered = await client.register("lean@example.com")
        assert registered["address"] == "lean@example.com"
        (conn,) = [c for c in server.hub.conns if isinstance(c, Connection)]
        assert conn.transport is not None
        view = conn.transport.underlying_transport
        assert isinstance(view, AcceptedTransport)
        # Writes go to the event loop's transport itself, never through the view.
        assert conn.raw is view.transport
        # Once set up, every query is answered by the real transport.
        client_sock = client.transport.underlying_transport.get_extra_info("sockname")
        assert view.get_extra_info("peername") == client_sock
        assert view.get_extra_info("sockname")[1] == server.port
        assert not view.is_closing()
        client.send_json({"type": "HEARTBEAT"})
        ack = await client.expect("HEARTBEAT_ACK")
        assert isinstance(ack["timestamp"], int)
    finally:
        await client.close()


async def test_many_connections_each_get_their_own_session(server: Server) -> None:
    clients = [await WSClient.connect(server.url) for _ in range(20)]
    try:
        for i, client in enumerate(clients):
            registered = await client.register(f"user{i}@example.com")
            assert registered["address"] == f"user{i}@example.com"
        ids = {(await _session_id(c)) for c in clients}
        assert len(ids) == 20
    finally:
        for client in clients:
            await client.close()


def _listen_queue_limit(port: int) -> int:
    """The accept queue limit of the socket listening on ``port``, as ``ss`` reports it (Send-Q)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[2])


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
@pytest.mark.parametrize("backlog", [None, 321])
async def test_listen_backlog_is_the_setting_capped_by_somaxconn(tmp_path: Path, backlog: int | None) -> None:
    # asyncio's default of 100 overflows when thousands of clients connect at once:
    # the kernel drops their handshakes and they retry after a second or more.
    settings = dataclasses.replace(
        Settings(), host="127.0.0.1", port=0, data_dir=str(tmp_path), admin_enabled=False
    )
    if backlog is not None:
        settings = dataclasses.replace(settings, listen_backlog=backlog)
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    srv = Server(settings)
    await srv.start()
    try:
        assert _listen_queue_limit(srv.port) == min(backlog or 4096, somaxconn)
    finally:
        await srv.shutdown()


async def _session_id(client: WSClient) -> str:
    client.send_json({"type": "REGISTER", "address": f"again{id(client)}@example.com"})
    answer = await client.expect("REGISTERED")
    return str(answer["session_id"])


def test_socket_facts_skip_only_redundant_tcp_options() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        facts = _SocketFacts(sock)
        assert facts.fileno() == sock.fileno()
        # A real option is set on the real socket.
        facts.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        # Turning TCP_NODELAY off is not redundant: it reaches the socket.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        facts.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        # Turning it on is what uvloop already did for an accepted socket: skipped.
        facts.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        # Reads return the socket's values; only the logged defaults are cached.
        assert facts.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        assert facts.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        facts.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        assert facts.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        raw = facts.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)
        assert isinstance(raw, bytes) and len(raw) == 8


def test_switching_protocols_bytes_match_picows_generic_response() -> None:
    from picows import WSUpgradeResponse

    from systemx.server.accept import SwitchingProtocols

    ours = SwitchingProtocols()
    ours.headers["Sec-WebSocket-Accept"] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    generic = WSUpgradeResponse.create_101_response()
    generic.headers["Sec-WebSocket-Accept"] = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert ours.to_bytes() == generic.to_bytes()
    assert ours.status == 101
    # Any other header (picows adds "Connection: close" to refusals) takes the generic path.
    ours.headers["X-Extra"] = "1"
    assert b"X-Extra: 1\r\n" in ours.to_bytes()
