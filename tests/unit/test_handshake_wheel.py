"""The handshake deadlines of every connection being set up, kept on one timer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from systemx.server.accept import HandshakeWheel


@dataclass
class _Transport:
    request: object | None = None
    is_disconnected: bool = False


@dataclass(eq=False)
class _Setup:
    """What the wheel reads of a connection being set up (picows' protocol)."""

    transport: _Transport = field(default_factory=_Transport)
    timed_out: asyncio.Event = field(default_factory=asyncio.Event)

    def _handshake_timeout_callback(self) -> None:
        self.timed_out.set()
        self.transport.is_disconnected = True


async def test_only_the_unfinished_handshakes_are_dropped_once_their_deadline_passes() -> None:
    loop = asyncio.get_running_loop()
    wheel = HandshakeWheel(loop, 0.2)
    silent, upgraded, gone, closed = _Setup(), _Setup(), _Setup(), _Setup()
    started = loop.time()
    slots = {conn: wheel.add(conn) for conn in (silent, upgraded, gone, closed)}
    upgraded.transport.request = object()
    gone.transport.is_disconnected = True
    wheel.discard(closed, slots[closed])
    assert len(wheel) == 3
    await asyncio.wait_for(silent.timed_out.wait(), 5.0)
    elapsed = loop.time() - started
    assert elapsed >= 0.2
    assert not upgraded.timed_out.is_set() and not gone.timed_out.is_set()
    assert not closed.timed_out.is_set()
    # Every bucket has expired and the timer is off until the next connection.
    assert len(wheel) == 0
    assert wheel._handle is None
    wheel.close()


async def test_one_timer_serves_every_connection() -> None:
    loop = asyncio.get_running_loop()
    wheel = HandshakeWheel(loop, 5.0)
    for _ in range(1000):
        wheel.add(_Setup())
    handle = wheel._handle
    assert handle is not None
    wheel.add(_Setup())
    assert wheel._handle is handle  # not re-armed per connection
    assert len(wheel) == 1001
    wheel.close()
    assert len(wheel) == 0
