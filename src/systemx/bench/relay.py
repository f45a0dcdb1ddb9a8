"""MSG relay throughput (``relay``, ``bare``) and one-way latency (``latency``).

Each pair is two connections in one call (or, against the bare relay or the
Bun relay, one PAIR handshake). Each direction of a pair is a closed loop that
keeps ``inflight`` MSGs outstanding: a MSG is sent whenever the peer receives one.
``data`` is a JSON string of ``size`` characters starting with a ten-digit
per-direction sequence number, so every received frame is checked for the
right ``call_id``, ``from`` (the peer's address), ``content_type``, intact data
and sequence (no loss, no duplicate, no reordering). After the window closes
no new MSG is sent and every outstanding one must still arrive.

``latency`` is one pair with a single MSG in flight, bounced back and forth;
every leg is a one-way latency sample taken on the generator's clock.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from picows import WSMsgType

from systemx.bench.common import (
    Gate,
    Options,
    ShardResult,
    combine_shards,
    generator_cpus,
    run_shards,
    run_tag,
)
from systemx.bench.servers import PAIR_KINDS, Target
from systemx.bench.stats import Window
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

__all__ = [
    "Direction",
    "RelayState",
    "latency_shard",
    "relay_shard",
    "run_latency",
    "run_relay",
    "setup_pairs",
]

_CONTENT_TYPES = ("text", "json", "binary")
_LAT_CAP = 400_000


class RelayState:
    """What every direction of one shard shares: the window, the stop flag, the drain."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.stopping = False
        self.outstanding = 0
        self.lat: list[int] = []
        self.lat_every = 1
        self.drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def stop(self) -> None:
        self.stopping = True
        if self.outstanding == 0 and not self.drained.done():
            self.drained.set_result(None)


class Direction:
    """One direction of one pair: who sends, who receives, what must arrive next."""

    __slots__ = (
        "call_id",
        "content_type",
        "corker",
        "from_address",
        "next",
        "pad",
        "prefix",
        "received",
        "receiver",
        "sender",
        "sent",
        "state",
        "tail",
        "times",
    )

    def __init__(
        self,
        state: RelayState,
        sender: Conn,
        receiver: Conn,
        call_id: str,
        content_type: str,
        size: int,
        corker: Corker | None = None,
    ) -> None:
        if size < 10:
            raise ValueError("size must be at least 10 bytes (the sequence number)")
        self.state = state
        self.sender = sender
        self.receiver = receiver
        self.call_id = call_id
        self.content_type = content_type
        self.from_address = sender.address
        self.corker = corker
        pad = ("abcdefghijklmnopqrstuvwxyz0123456789" * (size // 36 + 1))[: size - 10]
        self.pad = pad
        self.prefix = (
            b'{"type":"MSG","call_id":'
            + encode(call_id)
            + b',"content_type":"'
            + content_type.encode()
            + b'","data":"'
        )
        self.tail = pad.encode() + b'"}'
        self.sent = 0
        self.received = 0
        self.times: collections.deque[int] = collections.deque()
        #: The direction that sends when this one receives (itself: closed loop per direction).
        self.next: Direction = self
        receiver.on_frame = self.on_frame

    def send_one(self) -> None:
        seq = self.sent
        self.sent = seq + 1
        self.state.outstanding += 1
        self.times.append(time.perf_counter_ns())
        frame = self.prefix + b"%010d" % seq + self.tail
        if self.corker is not None:
            self.corker.send(self.sender, frame)
            return
        transport = self.sender.transport
        assert transport is not None
        transport.send(WSMsgType.TEXT, frame)

    def on_frame(self, payload: bytes) -> None:
        now = time.perf_counter_ns()
        m = decode_frame(payload)
        if m.type != "MSG":
            if m.type == "HEARTBEAT_ACK":
                return
            raise Violation(f"unexpected frame during relay: {payload[:300]!r}")
        if m.call_id != self.call_id:
            raise Violation(f"MSG for call {m.call_id!r}, expected {self.call_id!r}")
        if m.from_ != self.from_address:
            raise Violation(f"MSG from {m.from_!r}, expected {self.from_address!r}")
        if m.content_type != self.content_type:
            raise Violation(f"content_type {m.content_type!r}, sent {self.content_type!r}")
        data = m.data
        if data is None or data[10:] != self.pad:
            raise Violation(f"data altered: {payload[:200]!r}")
        seq = int(data[:10])
        if seq != self.received:
            kind = "duplicate or reordered" if seq < self.received else "lost"
            raise Violation(f"sequence {seq}, expected {self.received} ({kind} MSG)")
        self.received = seq + 1
        if not self.times:
            raise Violation(f"MSG {seq} arrived but none is outstanding")
        sent_at = self.times.popleft()
        state = self.state
        state.outstanding -= 1
        w = state.window
        w.seen += 1
        if w.measuring:
            w.count += 1
            if w.count % state.lat_every == 0:
                state.lat.append(now - sent_at)
            if w.count == w.target:
                w.end()
                state.stop()
        elif w.seen == w.warm_count:
            w.start()
        if not state.stopping:
            self.next.send_one()
        elif state.outstanding == 0 and not state.drained.done():
            state.drained.set_result(None)


async def setup_pairs(
    url: str, kind: str, failures: Failures, pairs: int, tag: str, concurrency: int
) -> list[tuple[Conn, Conn, str]]:
    """Open ``pairs`` connected pairs; return (caller, callee, call_id) for each.

    Against the exchange: REGISTER both, DIAL, RING, ANSWER, CONNECTED. Against
    a baseline relay (bare or Bun): the PAIR handshake, with the pair key as call id.
    """

    async def hello(conn: Conn, i: int) -> None:
        role = "a" if i % 2 == 0 else "b"
        address = f"{role}{i // 2}.{tag}@relay.bench.local"
        if kind in PAIR_KINDS:
            conn.address = address
            conn.send_obj({"type": "PAIR", "pair": f"{tag}-{i // 2}", "address": address})
        else:
            await register(conn, address)

    conns = await open_conns(
        url, failures, pairs * 2, f"relay-{tag}-", concurrency=concurrency, on_open=hello
    )
    sem = asyncio.Semaphore(concurrency)

    async def connect(a: Conn, b: Conn, i: int) -> tuple[Conn, Conn, str]:
        async with sem:
            if kind in PAIR_KINDS:
                key = f"{tag}-{i}"
                for c in (a, b):
                    reply = await c.expect("PAIRED")
                    if reply.get("pair") != key:
                        raise Violation(f"{c.name}: PAIRED {reply!r}, expected pair {key}")
                return a, b, key
            return a, b, await dial(a, b)

    pairs_list = [connect(conns[2 * i], conns[2 * i + 1], i) for i in range(pairs)]
    return list(await failures.guard(asyncio.gather(*pairs_list), 120.0, "pairs to connect"))


async def dial(a: Conn, b: Conn) -> str:
    """A dials B, B answers; check RING and CONNECTED; return the call id."""
    a.send_obj({"type": "DIAL", "to": b.address})
    ring = await b.expect("RING")
    call_id = ring.get("call_id")
    if ring.get("from") != a.address or not isinstance(call_id, str) or not call_id:
        raise Violation(f"{b.name}: bad RING {ring!r} (caller {a.address})")
    b.send_obj({"type": "ANSWER", "call_id": call_id})
    connected = await a.expect("CONNECTED", skip=("RINGING",))
    if connected.get("call_id") != call_id or connected.get("to") != b.address:
        raise Violation(f"{a.name}: bad CONNECTED {connected!r} (call {call_id}, callee {b.address})")
    return call_id


async def _finish(
    state: RelayState, directions: list[Direction], conns: list[Conn], failures: Failures
) -> None:
    await failures.guard(state.window.closed, 3600.0, "the measurement window")
    state.stop()
    lost = sum(d.sent - d.received for d in directions)
    await failures.guard(state.drained, 15.0, f"{lost} outstanding MSGs after the window")
    for d in directions:
        if d.received != d.sent:
            raise Violation(f"{d.sender.name} -> {d.receiver.name}: sent {d.sent}, received {d.received}")
    failures.check()
    close_all(conns)


def _shard_pairs(total: int, index: int, count: int) -> int:
    return total // count + (1 if index < total % count else 0)


def relay_shard(url: str, kind: str, opts: Options) -> Any:
    """The shard worker for ``relay``/``bare``: ``pairs`` pairs, ``inflight`` per direction."""

    async def worker(index: int, count: int, gate: Gate) -> ShardResult:
        failures = Failures()
        pairs = _shard_pairs(opts.pairs, index, count)
        tag = f"{run_tag()}{index}"
        ends = await setup_pairs(url, kind, failures, pairs, tag, opts.concurrency)
        conns = [c for a, b, _ in ends for c in (a, b)]
        ticker = start_keepalive(conns, 15.0) if opts.keepalive and kind not in PAIR_KINDS else None
        start, end = await gate.ready()
        window = Window(gate.meter)
        state = RelayState(window)
        directions: list[Direction] = []
        corker = Corker() if opts.cork else None
        for i, (a, b, call_id) in enumerate(ends):
            ct = _CONTENT_TYPES[i % len(_CONTENT_TYPES)]
            directions.append(Direction(state, a, b, call_id, ct, opts.size, corker))
            directions.append(Direction(state, b, a, call_id, ct, opts.size, corker))
        window.schedule_at(start, end)
        for d in directions:
            for _ in range(opts.inflight):
                d.send_one()
        # Keep at most about _LAT_CAP samples, assuming a generous 200k MSG/s.
        expected = opts.duration * 200_000 / count
        state.lat_every = max(1, int(expected // _LAT_CAP))
        try:
            await _finish(state, directions, conns, failures)
        finally:
            if ticker is not None:
                ticker.cancel()
            close_all(conns)
        return ShardResult.of_window(window, state.lat)

    return worker


def latency_shard(url: str, kind: str, opts: Options) -> Any:
    """The shard worker for ``latency``: one pair, one MSG in flight, ``samples`` legs."""

    async def worker(index: int, count: int, gate: Gate) -> ShardResult:
        failures = Failures()
        ends = await setup_pairs(url, kind, failures, 1, run_tag(), 1)
        a, b, call_id = ends[0]
        conns = [a, b]
        await gate.ready()
        window = Window(gate.meter, warm_count=opts.warm_samples, target=opts.samples)
        if opts.warm_samples <= 0:
            window.start()
        window.schedule(0.0, opts.warmup + opts.duration)
        state = RelayState(window)
        ab = Direction(state, a, b, call_id, "text", opts.size)
        ba = Direction(state, b, a, call_id, "text", opts.size)
        ab.next, ba.next = ba, ab
        ab.send_one()
        try:
            await _finish(state, [ab, ba], conns, failures)
        finally:
            close_all(conns)
        return ShardResult.of_window(window, state.lat)

    return worker


def run_relay(target: Target, opts: Options) -> dict[str, Any]:
    """One ``relay`` run against ``target`` (the exchange, the bare relay or the Bun relay)."""
    shards = run_shards(
        relay_shard(target.url, target.kind, opts),
        opts.procs,
        target.meter,
        opts.warmup,
        opts.duration,
        generator_cpus(opts.pin),
    )
    target.check()
    out = combine_shards(shards, "msg")
    out["rss_kb"] = target.meter.rss_kb() if target.meter else None
    return out


def run_latency(target: Target, opts: Options) -> dict[str, Any]:
    """One ``latency`` run: one pair, one MSG in flight."""
    shards = run_shards(latency_shard(target.url, target.kind, opts), 1, target.meter, 0.0, 0.0, None)
    target.check()
    out = combine_shards(shards, "msg")
    out["samples"] = out.pop("msgs")
    return out
