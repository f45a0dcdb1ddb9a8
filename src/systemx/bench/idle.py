"""Memory per idle registered connection (``idle``).

After a small warm-up group (so the server's first-connection allocations are
not counted), the server's RSS is read; then ``conns`` connections open and
REGISTER a distinct address each (``concurrency`` at a time), every one
answers a HEARTBEAT (all sessions alive), the connections sit idle for
``settle`` seconds and the RSS is read again. The figure is the RSS growth per
connection, in bytes: what the server keeps for a registered connection that
does nothing. Nothing else is sent while the connections idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from systemx.bench.common import Options, run_loop, run_tag
from systemx.bench.servers import Target
from systemx.bench.wire import Conn, Failures, Violation, close_all, open_conns, register, wait_closed

__all__ = ["run_idle"]


async def _heartbeat_all(conns: list[Conn], failures: Failures, concurrency: int) -> None:
    sem = asyncio.Semaphore(concurrency * 4)

    async def one(conn: Conn) -> None:
        async with sem:
            conn.send(b'{"type":"HEARTBEAT"}')
            ack = await conn.expect("HEARTBEAT_ACK")
            if not isinstance(ack.get("timestamp"), int):
                raise Violation(f"{conn.name}: HEARTBEAT_ACK without an integer timestamp: {ack!r}")

    await failures.guard(asyncio.gather(*(one(c) for c in conns)), 120.0, "HEARTBEAT_ACKs")


async def _idle(target: Target, opts: Options) -> dict[str, Any]:
    failures = Failures()
    tag = run_tag()
    meter = target.meter
    warm_n = min(100, max(1, opts.conns // 10))

    def hello(prefix: str) -> Callable[[Conn, int], Awaitable[None]]:
        async def on_open(conn: Conn, i: int) -> None:
            await register(conn, f"{prefix}{i}.{tag}@idle.bench.local")

        return on_open

    warm = await open_conns(
        target.url, failures, warm_n, f"warm-{tag}-", concurrency=opts.concurrency, on_open=hello("w")
    )
    conns: list[Conn] = []
    try:
        await asyncio.sleep(opts.settle)
        rss0 = meter.rss_kb() if meter else None
        conns = await open_conns(
            target.url,
            failures,
            opts.conns,
            f"idle-{tag}-",
            concurrency=opts.concurrency,
            on_open=hello("i"),
        )
        await _heartbeat_all(conns, failures, opts.concurrency)
        # Idle: nothing is sent; the server's deferred work (if any) runs now.
        await asyncio.sleep(opts.settle)
        rss1 = meter.rss_kb() if meter else None
        target.check()
        failures.check()
    finally:
        close_all(warm)
        close_all(conns)
    await wait_closed(warm + conns)
    n = opts.conns
    per_conn = (rss1 - rss0) * 1024 / n if rss0 is not None and rss1 is not None and n else None
    return {
        "idle_conns": n,
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "bytes_per_idle_conn": per_conn,
    }


def run_idle(target: Target, opts: Options) -> dict[str, Any]:
    """One ``idle`` run (single generator process)."""
    result: dict[str, Any] = run_loop(_idle(target, opts))
    return result
