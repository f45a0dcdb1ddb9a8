"""Call set-up and tear-down rate (``callsetup``).

``pairs`` caller/callee pairs run in parallel; each pair loops
DIAL → RING → ANSWER → CONNECTED → HANGUP → (callee gets HANGUP) → next DIAL.
Every frame is checked: RING comes from the caller with a fresh call id,
RINGING (required with ``--ringing``, where each DIAL asks for it; else
allowed) and CONNECTED carry that id and the callee's address, the callee's
HANGUP carries it with reason ``normal``; BUSY, ERROR or anything else fails
the run. A call counts when the callee receives the HANGUP; the latency
figures are DIAL sent → CONNECTED received.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from systemx.bench.common import (
    Gate,
    Options,
    ShardResult,
    combine_shards,
    generator_cpus,
    run_shards,
    run_tag,
)
from systemx.bench.servers import Target
from systemx.bench.stats import Window
from systemx.bench.wire import (
    Conn,
    Failures,
    Violation,
    close_all,
    decode_frame,
    encode,
    open_conns,
    register,
)
from systemx.bench.wire import keepalive as start_keepalive

__all__ = ["CallLoop", "run_callsetup"]

_IDLE, _DIALLED, _ANSWERED, _HUNG_UP = range(4)


class _Shared:
    def __init__(self, window: Window, ringing: bool) -> None:
        self.window = window
        # Each DIAL asks for RINGING, which then must come (before CONNECTED).
        self.ringing = ringing
        self.stopping = False
        self.active = 0
        self.lat: list[int] = []
        self.idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def stop(self) -> None:
        self.stopping = True
        if self.active == 0 and not self.idle.done():
            self.idle.set_result(None)


class CallLoop:
    """One caller/callee pair placing calls back to back."""

    def __init__(self, shared: _Shared, caller: Conn, callee: Conn) -> None:
        self.shared = shared
        self.caller = caller
        self.callee = callee
        self.phase = _IDLE
        self.call_id = ""
        self.ringing_id = ""
        self.last_id = ""
        self.dialled_at = 0
        self.calls = 0
        dial: dict[str, Any] = {"type": "DIAL", "to": callee.address}
        if shared.ringing:
            dial["ringing"] = True
        self.dial_frame = encode(dial)
        caller.on_frame = self.on_caller_frame
        callee.on_frame = self.on_callee_frame

    def dial(self) -> None:
        self.phase = _DIALLED
        self.call_id = ""
        self.ringing_id = ""
        self.shared.active += 1
        self.dialled_at = time.perf_counter_ns()
        self.caller.send(self.dial_frame)

    def _violation(self, what: str, payload: bytes) -> Violation:
        return Violation(f"{what} (phase {self.phase}, call {self.call_id!r}): {payload[:300]!r}")

    def on_callee_frame(self, payload: bytes) -> None:
        m = decode_frame(payload)
        kind = m.type
        if kind == "RING":
            if self.phase != _DIALLED or self.call_id:
                raise self._violation("unexpected RING", payload)
            if m.from_ != self.caller.address:
                raise self._violation(f"RING not from {self.caller.address}", payload)
            if not m.call_id or m.call_id == self.last_id:
                raise self._violation("RING without a fresh call_id", payload)
            if self.ringing_id and self.ringing_id != m.call_id:
                raise self._violation(f"RING id differs from RINGING id {self.ringing_id}", payload)
            self.call_id = m.call_id
            self.phase = _ANSWERED
            self.callee.send(b'{"type":"ANSWER","call_id":' + encode(m.call_id) + b"}")
        elif kind == "HANGUP":
            if self.phase != _HUNG_UP or m.call_id != self.call_id:
                raise self._violation("unexpected HANGUP", payload)
            if m.reason != "normal":
                raise self._violation("HANGUP reason is not normal", payload)
            self._completed()
        elif kind != "HEARTBEAT_ACK":
            raise self._violation("callee got an unexpected frame", payload)

    def on_caller_frame(self, payload: bytes) -> None:
        m = decode_frame(payload)
        kind = m.type
        if kind == "CONNECTED":
            if self.phase != _ANSWERED or m.call_id != self.call_id:
                raise self._violation("unexpected CONNECTED", payload)
            if m.to != self.callee.address:
                raise self._violation(f"CONNECTED not to {self.callee.address}", payload)
            if self.shared.ringing and self.ringing_id != m.call_id:
                raise self._violation("CONNECTED without the RINGING the DIAL asked for", payload)
            w = self.shared.window
            if w.measuring:
                self.shared.lat.append(time.perf_counter_ns() - self.dialled_at)
            self.phase = _HUNG_UP
            self.caller.send(b'{"type":"HANGUP","call_id":' + encode(m.call_id) + b"}")
        elif kind == "RINGING":
            if self.phase not in (_DIALLED, _ANSWERED) or self.ringing_id:
                raise self._violation("unexpected RINGING", payload)
            if m.to != self.callee.address or not m.call_id:
                raise self._violation("bad RINGING", payload)
            if self.call_id and m.call_id != self.call_id:
                raise self._violation("RINGING id differs from RING id", payload)
            self.ringing_id = m.call_id
        elif kind == "HANGUP":
            # Some exchanges confirm the hanger-up's own HANGUP; it must name the call.
            if m.call_id not in (self.call_id, self.last_id):
                raise self._violation("caller got a HANGUP for another call", payload)
        elif kind != "HEARTBEAT_ACK":
            raise self._violation("caller got an unexpected frame", payload)

    def _completed(self) -> None:
        shared = self.shared
        shared.active -= 1
        self.calls += 1
        self.last_id = self.call_id
        self.phase = _IDLE
        w = shared.window
        if w.measuring:
            w.count += 1
            if w.count == w.target:
                w.end()
                shared.stop()
        if not shared.stopping:
            self.dial()
        elif shared.active == 0 and not shared.idle.done():
            shared.idle.set_result(None)


def _shard_worker(url: str, opts: Options) -> Any:
    async def worker(index: int, count: int, gate: Gate) -> ShardResult:
        failures = Failures()
        pairs = opts.pairs // count + (1 if index < opts.pairs % count else 0)
        tag = f"{run_tag()}{index}"

        async def hello(conn: Conn, i: int) -> None:
            role = "caller" if i % 2 == 0 else "callee"
            await register(conn, f"{role}{i // 2}.{tag}@calls.bench.local")

        conns = await open_conns(
            url, failures, 2 * pairs, f"call-{tag}-", concurrency=opts.concurrency, on_open=hello
        )
        ticker = start_keepalive(conns, 15.0) if opts.keepalive else None
        try:
            start, end = await gate.ready()
            calls_target = opts.calls if opts.calls > 0 and count == 1 else -1
            window = Window(gate.meter, target=calls_target)
            shared = _Shared(window, opts.ringing)
            loops = [CallLoop(shared, conns[2 * i], conns[2 * i + 1]) for i in range(pairs)]
            window.schedule_at(start, end if calls_target < 0 else start + 3600.0)
            for loop in loops:
                loop.dial()
            await failures.guard(window.closed, 3600.0, "the measurement window")
            shared.stop()
            await failures.guard(shared.idle, 15.0, f"{shared.active} calls to finish")
            failures.check()
        finally:
            if ticker is not None:
                ticker.cancel()
            close_all(conns)
        return ShardResult.of_window(window, shared.lat, {"total_calls": sum(lp.calls for lp in loops)})

    return worker


def run_callsetup(target: Target, opts: Options) -> dict[str, Any]:
    """One ``callsetup`` run."""
    shards = run_shards(
        _shard_worker(target.url, opts),
        opts.procs,
        target.meter,
        opts.warmup,
        opts.duration,
        generator_cpus(opts.pin),
    )
    target.check()
    out = combine_shards(shards, "call")
    out["rss_kb"] = target.meter.rss_kb() if target.meter else None
    return out
