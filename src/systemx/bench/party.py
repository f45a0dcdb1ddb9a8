"""Party-line fan-out (``party``).

``participants`` connections REGISTER and JOIN one party line (the first
creates it); JOINED must name the party and list the joiner, and the
PARTY_JOINED notices that follow are checked for the party name. Participant 0
then sends PARTY_MSGs, keeping ``inflight`` of them outstanding: a message is
complete when every other participant has received it. Each receiver checks
``party``, ``from`` (the sender), ``content_type`` when present, intact data
and its own sequence (no loss, duplicate or reordering). If the exchange
echoes a PARTY_MSG to its sender, the echo is checked the same way and
counted as a delivery. Figures: deliveries/s and server CPU per delivery.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from picows import WSMsgType

from systemx.bench.common import Options, run_loop, run_tag
from systemx.bench.servers import Target
from systemx.bench.stats import Window, summarize_latency
from systemx.bench.wire import (
    Conn,
    Corker,
    Failures,
    Violation,
    close_all,
    decode_frame,
    encode,
    open_conns,
    register,
)
from systemx.bench.wire import keepalive as start_keepalive

__all__ = ["run_party"]

_NOTICES = frozenset({"PARTY_JOINED", "PARTY_LEFT", "HEARTBEAT_ACK"})


class _Fanout:
    """The sender's window and the receivers' checks for one party line."""

    def __init__(
        self,
        window: Window,
        sender: Conn,
        party: str,
        receivers: int,
        size: int,
        inflight: int,
        corker: Corker | None = None,
    ) -> None:
        self.corker = corker
        self.window = window
        self.sender = sender
        self.party = party
        self.receivers = receivers
        self.inflight = inflight
        pad = ("abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1))[: max(0, size - 10)]
        self.pad = pad
        self.prefix = b'{"type":"PARTY_MSG","party":' + encode(party) + b',"content_type":"text","data":"'
        self.tail = pad.encode() + b'"}'
        self.sent = 0
        self.completed = 0
        self.remaining: collections.deque[int] = collections.deque()
        self.sent_at: collections.deque[int] = collections.deque()
        self.stopping = False
        self.lat: list[int] = []
        self.echoes = 0
        self.drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.echoed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def send_one(self) -> None:
        seq = self.sent
        self.sent = seq + 1
        self.remaining.append(self.receivers)
        self.sent_at.append(time.perf_counter_ns())
        frame = self.prefix + b"%010d" % seq + self.tail
        if self.corker is not None:
            self.corker.send(self.sender, frame)
            return
        transport = self.sender.transport
        assert transport is not None
        transport.send(WSMsgType.TEXT, frame)

    def stop(self) -> None:
        self.stopping = True
        if self.completed == self.sent and not self.drained.done():
            self.drained.set_result(None)
        self._check_echoed()

    def _check_echoed(self) -> None:
        if self.stopping and self.echoes == self.sent and not self.echoed.done():
            self.echoed.set_result(None)

    def receiver(self, conn: Conn) -> None:
        expected = 0
        sender = self.sender.address
        party = self.party
        pad = self.pad
        is_sender = conn is self.sender

        def on_frame(payload: bytes) -> None:
            nonlocal expected
            m = decode_frame(payload)
            if m.type != "PARTY_MSG":
                if m.type in _NOTICES and (m.party is None or m.party == party):
                    return
                raise Violation(f"unexpected frame during fan-out: {payload[:300]!r}")
            if m.party != party:
                raise Violation(f"PARTY_MSG for {m.party!r}, expected {party!r}")
            if m.from_ != sender:
                raise Violation(f"PARTY_MSG from {m.from_!r}, expected {sender!r}")
            if m.content_type is not None and m.content_type != "text":
                raise Violation(f"content_type {m.content_type!r}, sent 'text'")
            data = m.data
            if data is None or data[10:] != pad:
                raise Violation(f"data altered: {payload[:200]!r}")
            seq = int(data[:10])
            if seq != expected:
                kind = "duplicate or reordered" if seq < expected else "lost"
                raise Violation(f"sequence {seq}, expected {expected} ({kind} PARTY_MSG)")
            expected = seq + 1
            w = self.window
            if w.measuring:
                w.count += 1
            if is_sender:
                self.echoes += 1
                self._check_echoed()
                return
            self._delivered(seq)

        conn.on_frame = on_frame

    def _delivered(self, seq: int) -> None:
        index = seq - self.completed
        left = self.remaining[index] - 1
        self.remaining[index] = left
        if left or index:
            return
        # The oldest message reached everyone (messages complete in order).
        while self.remaining and self.remaining[0] == 0:
            self.remaining.popleft()
            sent_at = self.sent_at.popleft()
            self.completed += 1
            if self.window.measuring:
                self.lat.append(time.perf_counter_ns() - sent_at)
            if not self.stopping:
                self.send_one()
        if self.stopping and self.completed == self.sent and not self.drained.done():
            self.drained.set_result(None)


async def _party(target: Target, opts: Options) -> dict[str, Any]:
    failures = Failures()
    tag = run_tag()
    party = f"room.{tag}@party.bench.local"
    n = max(2, opts.participants)

    async def join(conn: Conn, i: int) -> None:
        address = f"p{i}.{tag}@party.bench.local"
        await register(conn, address)
        conn.send_obj({"type": "JOIN", "party": party, "create_if_missing": True})
        joined = await conn.expect("JOINED", 30.0, skip=_NOTICES)
        if joined.get("party") != party or address not in (joined.get("participants") or ()):
            raise Violation(f"{conn.name}: bad JOINED {str(joined)[:300]}")

    # The first JOIN creates the line before the others join concurrently.
    first = await open_conns(target.url, failures, 1, f"party-{tag}-", on_open=join)
    rest = await open_conns(
        target.url,
        failures,
        n - 1,
        f"party-{tag}-x",
        concurrency=opts.concurrency,
        on_open=lambda c, i: join(c, i + 1),
    )
    conns = first + rest
    ticker = start_keepalive(conns, 15.0) if opts.keepalive else None
    try:
        # Notices queued during set-up must be about this party.
        for conn in conns:
            for raw in conn.drain():
                m = decode_frame(raw)
                if m.type not in _NOTICES or (m.party is not None and m.party != party):
                    raise Violation(f"{conn.name}: unexpected frame after JOIN: {raw[:300]!r}")
        window = Window(target.meter)
        corker = Corker() if opts.cork else None
        fan = _Fanout(window, conns[0], party, n - 1, opts.size, opts.inflight, corker)
        for conn in conns:
            fan.receiver(conn)
        window.schedule(opts.warmup, opts.duration)
        for _ in range(opts.inflight):
            fan.send_one()
        await failures.guard(window.closed, 3600.0, "the measurement window")
        fan.stop()
        await failures.guard(fan.drained, 30.0, f"{fan.sent - fan.completed} PARTY_MSGs to reach everyone")
        if fan.echoes:
            # An exchange that echoes to the sender must echo every message.
            await failures.guard(fan.echoed, 30.0, f"{fan.sent - fan.echoes} echoes to the sender")
        failures.check()
        target.check()
    finally:
        if ticker is not None:
            ticker.cancel()
        close_all(conns)
    elapsed = window.elapsed
    deliveries = window.count
    msgs = len(fan.lat)
    out: dict[str, Any] = {
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / elapsed,
        "party_msgs_per_s": msgs / elapsed,
        "server_cpu_us_per_delivery": window.per_unit_us(),
        "server_cpu_us_per_party_msg": window.per_unit_us(msgs) if msgs else None,
        **window.load(),
        "sender_echo": fan.echoes > 0,
        "rss_kb": target.meter.rss_kb() if target.meter else None,
    }
    out.update(summarize_latency(fan.lat))
    return out


def run_party(target: Target, opts: Options) -> dict[str, Any]:
    """One ``party`` run (single generator process)."""
    result: dict[str, Any] = run_loop(_party(target, opts))
    return result
