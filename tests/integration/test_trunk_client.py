"""The outbound trunk against a real WebSocket parent in the test process (and a real exchange).

:class:`Parent` is a small picows server playing the parent exchange: it
records every frame, answers REGISTER_PBX (or refuses it) and HEARTBEAT (or
stays silent), can drop its connections, and can stop and start again on the
same port.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

from systemx.federation import PeerConfig
from systemx.server.trunk_client import Backoff, TrunkClient, TrunkState
from tests.conftest import ServerFactory
from tests.wsclient import TIMEOUT

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.encode


class _ParentSide(WSListener):
    def __init__(self, parent: Parent) -> None:
        self.parent = parent
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.parent.connections.append(transport)
        self.parent.events.put_nowait(("connected", None))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            payload = frame.get_payload_as_bytes()
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.parent.events.put_nowait(("close", (code, payload[2:].decode())))
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        msg = _decode(frame.get_payload_as_bytes())
        self.parent.frames.append(msg)
        self.parent.events.put_nowait(("frame", msg))
        kind = msg.get("type")
        if kind == "REGISTER_PBX":
            if self.parent.refuse is not None:
                reply = {"type": "REGISTER_FAILED", "address": "", "reason": self.parent.refuse}
            else:
                reply = {"type": "REGISTERED_PBX", "domain": msg["domain"]}
            transport.send(WSMsgType.TEXT, _encode(reply))
        elif kind == "HEARTBEAT" and self.parent.ack:
            transport.send(WSMsgType.TEXT, _encode({"type": "HEARTBEAT_ACK", "timestamp": 1}))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if transport in self.parent.connections:
            self.parent.connections.remove(transport)
        self.parent.events.put_nowait(("disconnected", None))


class Parent:
    """A parent exchange as far as the trunk can tell."""

    def __init__(self) -> None:
        self.refuse: str | None = None
        self.ack = True
        self.frames: list[dict[str, Any]] = []
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.connections: list[WSTransport] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        def factory(_request: WSUpgradeRequest) -> WSListener:
            return _ParentSide(self)

        self._server = await ws_create_server(factory, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        assert self._server is not None
        self._server.close()
        self.drop()
        await self._server.wait_closed()
        self._server = None

    def drop(self) -> None:
        for transport in list(self.connections):
            transport.disconnect(graceful=False)

    def push(self, msg: dict[str, Any]) -> None:
        (transport,) = self.connections
        transport.send(WSMsgType.TEXT, _encode(msg))

    async def next(self, kind: str, type_: str | None = None, timeout: float = TIMEOUT) -> Any:
        """The next event of ``kind`` (for frames, of ``type_``), skipping others."""

        async def wait() -> Any:
            while True:
                got, data = await self.events.get()
                if got == kind and (type_ is None or data.get("type") == type_):
                    return data

        return await asyncio.wait_for(wait(), timeout)


class Recorder:
    """The trunk's callbacks, as events to wait on."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def on_frame(self, data: bytes) -> None:
        msg = _decode(data)
        self.frames.append(msg)
        self.events.put_nowait(("frame", msg))

    def on_up(self) -> None:
        self.events.put_nowait(("up", None))

    def on_down(self, reason: str) -> None:
        self.events.put_nowait(("down", reason))

    async def next(self, timeout: float = TIMEOUT) -> tuple[str, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)


async def _until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` each loop pass until it holds; fail after ``timeout``.

    For states the client reaches with no callback (a failed connect, a refusal by a
    subprocess); everything with a callback or a frame waits on that instead.
    """

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def parent() -> AsyncIterator[Parent]:
    server = Parent()
    await server.start()
    yield server
    if server._server is not None:
        await server.stop()


TrunkFactory = Callable[..., tuple[TrunkClient, Recorder]]


@pytest.fixture
async def trunk(parent: Parent) -> AsyncIterator[TrunkFactory]:
    """``trunk(**peer_changes, **client_options)`` -> a started client of ``parent`` and its recorder."""
    clients: list[TrunkClient] = []

    def make(
        *,
        heartbeat_ms: int = 60_000,
        reconnect_delay_ms: int = 10,
        auth: str | None = "s3cret",
        **options: Any,
    ) -> tuple[TrunkClient, Recorder]:
        peer = PeerConfig(
            id="hq",
            url=parent.url,
            routes=("*@example.com",),
            announce_routes=("*@branch.example.com", "*.bot@branch.example.com"),
            auth=auth,
            domain="branch.example.com",
            reconnect_delay_ms=reconnect_delay_ms,
            heartbeat_ms=heartbeat_ms,
        )
        recorder = Recorder()
        options.setdefault("max_backoff_ms", 50)
        client = TrunkClient(peer, recorder.on_frame, recorder.on_up, recorder.on_down, **options)
        client.start()
        clients.append(client)
        return client, recorder

    yield make
    for client in clients:
        await client.close()


async def test_registers_on_connect_and_relays_frames_both_ways(parent: Parent, trunk: TrunkFactory) -> None:
    client, recorder = trunk()
    register = await parent.next("frame", "REGISTER_PBX")
    assert register == {
        "type": "REGISTER_PBX",
        "domain": "branch.example.com",
        "routes": ["*@branch.example.com", "*.bot@branch.example.com"],
        "endpoint": "internal",
        "auth": "s3cret",
    }
    assert await recorder.next() == ("up", None)
    assert client.is_up and client.state is TrunkState.UP

    assert client.send(b'{"type":"RING","from":"a@example.com","call_id":"c1"}')
    assert await parent.next("frame") == {"type": "RING", "from": "a@example.com", "call_id": "c1"}

    # A HEARTBEAT_ACK is consumed by the trunk; the frame after it is relayed.
    parent.push({"type": "HEARTBEAT_ACK", "timestamp": 5})
    parent.push(
        {"type": "DIAL_FORWARD", "from": "x@example.com", "to": "b@branch.example.com", "call_id": "c2"}
    )
    assert await recorder.next() == (
        "frame",
        {"type": "DIAL_FORWARD", "from": "x@example.com", "to": "b@branch.example.com", "call_id": "c2"},
    )
    assert [f["type"] for f in recorder.frames] == ["DIAL_FORWARD"]


async def test_auth_is_left_out_when_none_is_configured(parent: Parent, trunk: TrunkFactory) -> None:
    trunk(auth=None)
    register = await parent.next("frame", "REGISTER_PBX")
    assert "auth" not in register


async def test_nothing_is_sent_before_the_registration_is_answered(
    parent: Parent, trunk: TrunkFactory
) -> None:
    parent.refuse = "auth_failed"
    client, _recorder = trunk(max_backoff_ms=60_000)
    await parent.next("frame", "REGISTER_PBX")
    await parent.next("disconnected")
    assert not client.is_up
    assert not client.send(b'{"type":"MSG"}')


async def test_heartbeats_arrive_every_interval(parent: Parent, trunk: TrunkFactory) -> None:
    trunk(heartbeat_ms=40)
    await parent.next("frame", "REGISTER_PBX")
    for _ in range(3):
        await parent.next("frame", "HEARTBEAT")


async def test_reconnects_and_registers_again_after_the_parent_drops_it(
    parent: Parent, trunk: TrunkFactory
) -> None:
    client, recorder = trunk()
    await parent.next("frame", "REGISTER_PBX")
    assert await recorder.next() == ("up", None)
    parent.drop()
    assert await recorder.next() == ("down", "closed")
    assert not client.send(b'{"type":"MSG"}')
    await parent.next("frame", "REGISTER_PBX")
    assert await recorder.next() == ("up", None)
    assert client.send(b'{"type":"HEARTBEAT"}')


async def test_reconnects_after_the_parent_restarts_on_the_same_port(
    parent: Parent, trunk: TrunkFactory
) -> None:
    _client, recorder = trunk()
    await parent.next("frame", "REGISTER_PBX")
    assert await recorder.next() == ("up", None)
    await parent.stop()
    assert await recorder.next() == ("down", "closed")
    # Nothing listens now: attempts fail and back off; then the parent is back.
    await parent.start()
    await parent.next("frame", "REGISTER_PBX")
    assert await recorder.next() == ("up", None)


async def test_a_silent_parent_is_taken_for_dead_after_two_intervals(
    parent: Parent, trunk: TrunkFactory
) -> None:
    parent.ack = False
    client, recorder = trunk(heartbeat_ms=40)
    await parent.next("frame", "REGISTER_PBX")
    assert await recorder.next() == ("up", None)
    assert await recorder.next() == ("down", "timeout")
    heartbeats = sum(1 for f in parent.frames if f["type"] == "HEARTBEAT")
    assert 1 <= heartbeats <= 3
    # It reconnects, and with acks it stays up.
    parent.ack = True
    await parent.next("frame", "REGISTER_PBX")
    assert await recorder.next() == ("up", None)
    for _ in range(4):
        await parent.next("frame", "HEARTBEAT")
    assert client.is_up


async def test_a_refused_registration_is_reported_logged_once_and_retried_slowly(
    parent: Parent, trunk: TrunkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    parent.refuse = "auth_failed"
    loop = asyncio.get_running_loop()
    client, recorder = trunk(max_backoff_ms=200)
    with caplog.at_level(logging.DEBUG, logger="systemx.federation"):
        await parent.next("frame", "REGISTER_PBX")
        first = loop.time()
        await parent.next("close")
        assert client.refusal == "auth_failed"
        assert not client.is_up
        await parent.next("frame", "REGISTER_PBX")
        # Refused: the next attempt waits at least half the cap (0.1 s), not the 10 ms base.
        assert loop.time() - first >= 0.1
        await parent.next("close")
        # Accepted again: the refusal is forgotten.
        parent.refuse = None
        await parent.next("frame", "REGISTER_PBX")
        assert await recorder.next() == ("up", None)
    assert client.refusal is None
    refusals = [r for r in caplog.records if "refused the registration" in r.getMessage()]
    assert [r.levelno for r in refusals[:2]] == [logging.ERROR, logging.DEBUG]


async def test_close_says_shutdown_and_stops_reconnecting(parent: Parent, trunk: TrunkFactory) -> None:
    client, recorder = trunk()
    await parent.next("frame", "REGISTER_PBX")
    assert await recorder.next() == ("up", None)
    await client.close()
    assert await recorder.next() == ("down", "shutdown")
    assert await parent.next("close") == (1000, "shutdown")
    assert client.state is TrunkState.CLOSED
    assert not client.running
    assert not client.send(b'{"type":"MSG"}')
    await client.close()  # harmless


async def test_close_while_waiting_to_reconnect_stops_the_loop(parent: Parent, trunk: TrunkFactory) -> None:
    await parent.stop()
    client, recorder = trunk(reconnect_delay_ms=60_000, max_backoff_ms=60_000)
    await _until(lambda: client.state is TrunkState.WAITING)
    await client.close()
    assert not client.running
    assert recorder.events.empty()


async def test_an_exchange_with_trunk_tokens_refuses_a_trunk_without_one(
    systemx_server: ServerFactory,
) -> None:
    server = await systemx_server(env={"SYSTEMX_PBX_TOKENS": "s3cret"})
    peer = PeerConfig(
        id="hq",
        url=server.url,
        routes=("*@example.com",),
        announce_routes=("*@branch.example.com",),
        auth=None,
        domain="branch.example.com",
        reconnect_delay_ms=10,
        heartbeat_ms=60_000,
    )
    recorder = Recorder()
    client = TrunkClient(peer, recorder.on_frame, recorder.on_up, recorder.on_down, max_backoff_ms=60_000)
    client.start()
    try:
        await _until(lambda: client.refusal is not None)
        assert client.refusal == "auth_failed"
        assert not client.is_up
    finally:
        await client.close()
    assert recorder.events.empty()


# ------------------------------------------------------------------ backoff


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    backoff = Backoff(100, 1_000, random.Random(7))
    for attempt, ceiling in enumerate([100, 200, 400, 800, 1000, 1000]):
        assert backoff.attempts == attempt
        assert backoff.ceiling_ms() == ceiling
        draws: list[float] = []
        for _ in range(400):
            backoff.attempts = attempt
            draws.append(backoff.next_delay())
        assert all(0.0 <= d <= ceiling / 1000 for d in draws)
        # Full jitter: the draws cover the window, not just its top.
        assert min(draws) < 0.1 * ceiling / 1000 and max(draws) > 0.9 * ceiling / 1000
    backoff.reset()
    assert backoff.attempts == 0 and backoff.ceiling_ms() == 100
    backoff.attempts = 10_000  # a long outage does not overflow
    assert backoff.ceiling_ms() == 1000


def test_after_a_refusal_the_wait_is_between_half_the_cap_and_the_cap() -> None:
    backoff = Backoff(100, 1_000, random.Random(3))
    draws = [backoff.refused_delay() for _ in range(400)]
    assert all(0.5 <= d <= 1.0 for d in draws)
    assert backoff.attempts == 0


def test_the_cap_is_never_below_the_first_delay() -> None:
    assert Backoff(60_000, 30_000).ceiling_ms() == 60_000
    with pytest.raises(ValueError):
        Backoff(0)
