"""Connection and registration cost (``connect``).

After a small warm-up group, ``conns`` connections are opened (TCP accept and
WebSocket upgrade) with ``concurrency`` handshakes in flight, then every one
REGISTERs a distinct address and must get REGISTERED for exactly that address
with a session id. Server CPU is read around each phase, RSS before the first
phase and after the last REGISTERED, so the figures are CPU per handshake, per
REGISTER, per registration (both) and resident memory per registered
connection. Finally every connection sends HEARTBEAT and must get
HEARTBEAT_ACK with an integer timestamp: all sessions are still alive.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from systemx.bench.common import Options, run_loop, run_tag
from systemx.bench.procstat import host_busy_seconds
from systemx.bench.servers import Target
from systemx.bench.stats import load_figures, summarize_latency
from systemx.bench.wire import Conn, Failures, Violation, close_all, open_conns, register, wait_closed

__all__ = ["run_connect"]


async def _heartbeat_all(conns: list[Conn], failures: Failures, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency * 4)

    async def one(conn: Conn) -> None:
        async with sem:
            conn.send(b'{"type":"HEARTBEAT"}')
            ack = await conn.expect("HEARTBEAT_ACK")
            if not isinstance(ack.get("timestamp"), int):
                raise Violation(f"{conn.name}: HEARTBEAT_ACK without an integer timestamp: {ack!r}")

    await failures.guard(asyncio.gather(*(one(c) for c in conns)), 120.0, "HEARTBEAT_ACKs")


async def _connect(target: Target, opts: Options) -> dict[str, Any]:
    failures = Failures()
    tag = run_tag()
    meter = target.meter
    warm_n = min(100, max(1, opts.conns // 10))

    async def warm_hello(conn: Conn, i: int) -> None:
        await register(conn, f"warm{i}.{tag}@connect.bench.local")

    warm = await open_conns(
        target.url, failures, warm_n, f"warm-{tag}-", concurrency=opts.concurrency, on_open=warm_hello
    )
    conns: list[Conn] = []
    try:
        rss0 = meter.rss_kb() if meter else None
        host0 = host_busy_seconds()
        gen0 = time.process_time()
        cpu0 = meter.cpu_seconds() if meter else 0.0
        t0 = time.perf_counter()
        conns = await open_conns(
            target.url, failures, opts.conns, f"conn-{tag}-", concurrency=opts.concurrency
        )
        cpu1 = meter.cpu_seconds() if meter else 0.0
        t1 = time.perf_counter()
        lat: list[int] = []
        sem = asyncio.Semaphore(opts.concurrency)

        async def reg(conn: Conn, i: int) -> None:
            async with sem:
                started = time.perf_counter_ns()
                await register(conn, f"c{i}.{tag}@connect.bench.local")
                lat.append(time.perf_counter_ns() - started)

        await failures.guard(
            asyncio.gather(*(reg(c, i) for i, c in enumerate(conns))), 60.0 + opts.conns / 50, "REGISTERED"
        )
        cpu2 = meter.cpu_seconds() if meter else 0.0
        t2 = time.perf_counter()
        gen2 = time.process_time()
        host2 = host_busy_seconds()
        rss1 = meter.rss_kb() if meter else None
        target.check()
        await _heartbeat_all(conns, failures, opts.concurrency)
        failures.check()
    finally:
        close_all(warm)
        close_all(conns)
    await wait_closed(warm + conns)
    n = opts.conns

    def per(cpu: float) -> float | None:
        return cpu / n * 1e6 if meter and n else None

    out: dict[str, Any] = {
        "registrations": n,
        "registrations_per_s": n / max(t2 - t0, 1e-9),
        "server_cpu_us_per_registration": per(cpu2 - cpu0),
        "server_cpu_us_per_handshake": per(cpu1 - cpu0),
        "server_cpu_us_per_register": per(cpu2 - cpu1),
        "handshake_s": t1 - t0,
        "register_s": t2 - t1,
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "rss_kb_per_conn": ((rss1 - rss0) / n) if rss0 is not None and rss1 is not None and n else None,
    }
    host = host2 - host0 if host0 is not None and host2 is not None else None
    out.update(load_figures(t2 - t0, (cpu2 - cpu0) if meter else None, gen2 - gen0, host))
    out.update(summarize_latency(lat, "register_"))
    return out


def run_connect(target: Target, opts: Options) -> dict[str, Any]:
    """One ``connect`` run (single generator process)."""
    result: dict[str, Any] = run_loop(_connect(target, opts))
    return result
