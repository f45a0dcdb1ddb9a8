"""Options shared by every scenario, and the helpers to run one shard of load.

A scenario's traffic runs in one or more *shards*: an ``async`` function that
opens its connections, calls :meth:`Gate.ready` (which returns the window's
start and end on the shared monotonic clock), drives traffic and returns a
:class:`ShardResult`. With ``--procs 1`` the shard runs in this process and its
window reads the server's CPU clock itself; with ``--procs N`` each shard is a
forked process and the parent reads the server's CPU clock at the agreed
instants (see :func:`run_shards`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from systemx.bench.procstat import ProcessMeter, host_busy_seconds, pin_to_cpus
from systemx.bench.stats import Window

__all__ = [
    "Gate",
    "Options",
    "ShardResult",
    "ShardWorker",
    "combine_shards",
    "generator_cpus",
    "run_loop",
    "run_shards",
    "run_tag",
]


@dataclass
class Options:
    """Every knob of every scenario (each scenario reads the ones it needs)."""

    duration: float = 10.0
    warmup: float = 2.0
    runs: int = 1
    procs: int = 1
    size: int = 100
    pairs: int = 50
    inflight: int = 4
    samples: int = 20_000
    warm_samples: int = 2_000
    calls: int = 0
    ringing: bool = False
    conns: int = 5_000
    settle: float = 1.0
    participants: int = 200
    registrations: int = 20_000
    limit: int = 100
    core_entries: int = 100_000
    profile: str | None = None
    wait_idle: float = 0.0
    cork: bool = False
    concurrency: int = 64
    bare: bool = True
    bun: bool = False
    ref: str | None = None
    pin: bool = True
    url: str | None = None
    server_pid: int | None = None
    log_level: str = "warn"
    quiet: bool = False
    server_env: dict[str, str] = field(default_factory=dict)

    @property
    def keepalive(self) -> bool:
        """An external server keeps its heartbeat timeout, so idle connections need HEARTBEATs."""
        return self.url is not None


def run_tag() -> str:
    """A short random tag that keeps each run's addresses unique on a shared server."""
    return secrets.token_hex(3)


def run_loop(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` on a fresh uvloop (asyncio's loop where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


@dataclass
class ShardResult:
    """What one shard counted inside its window."""

    count: int
    elapsed: float
    gen_cpu: float
    server_cpu: float | None
    host_busy: float | None = None
    lat_ns: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_window(cls, window: Window, lat_ns: list[int], extra: dict[str, Any] | None = None) -> ShardResult:
        """What ``window`` counted, with the latencies the shard recorded."""
        return cls(
            count=window.count,
            elapsed=window.elapsed,
            gen_cpu=window.gen_cpu,
            server_cpu=window.server_cpu,
            host_busy=window.host_busy,
            lat_ns=lat_ns,
            extra=extra or {},
        )


class Gate:
    """Where a shard learns when its measurement window opens and closes."""

    def __init__(self, meter: ProcessMeter | None, warmup: float, duration: float) -> None:
        self.meter = meter
        self.warmup = warmup
        self.duration = duration

    async def ready(self) -> tuple[float, float]:
        """Connections are set up: return (start, end) on ``time.monotonic()``."""
        start = time.monotonic() + self.warmup
        return start, start + self.duration


class _ChildGate(Gate):
    def __init__(self, pipe: Connection) -> None:
        super().__init__(None, 0.0, 0.0)
        self.pipe = pipe

    async def ready(self) -> tuple[float, float]:
        self.pipe.send(("ready",))
        loop = asyncio.get_running_loop()
        msg = await loop.run_in_executor(None, self.pipe.recv)
        if msg[0] != "go":
            raise RuntimeError("shard aborted by the coordinator")
        return float(msg[1]), float(msg[2])


ShardWorker = Callable[[int, int, Gate], Awaitable[ShardResult]]


def _child_main(worker: ShardWorker, index: int, count: int, pipe: Connection, cpu: int | None) -> None:
    if cpu is not None:
        pin_to_cpus(0, {cpu})
    try:
        result = run_loop(worker(index, count, _ChildGate(pipe)))
        pipe.send(("done", result))
    except BaseException as exc:
        pipe.send(("error", f"shard {index}: {exc}\n{traceback.format_exc(limit=3)}"))
    finally:
        pipe.close()


def run_shards(
    worker: ShardWorker,
    procs: int,
    meter: ProcessMeter | None,
    warmup: float,
    duration: float,
    gen_cpus: list[int] | None,
    setup_timeout: float = 180.0,
) -> list[ShardResult]:
    """Run ``worker`` as ``procs`` shards; every result carries the shared window's server CPU."""
    if procs <= 1:
        result: ShardResult = run_loop(worker(0, 1, Gate(meter, warmup, duration)))
        return [result]
    ctx = multiprocessing.get_context("fork")
    children = []
    for i in range(procs):
        parent_end, child_end = ctx.Pipe()
        cpu = gen_cpus[i % len(gen_cpus)] if gen_cpus else None
        proc = ctx.Process(target=_child_main, args=(worker, i, procs, child_end, cpu), daemon=True)
        proc.start()
        child_end.close()
        children.append((proc, parent_end))
    try:
        for i, (_, pipe) in enumerate(children):
            if not pipe.poll(setup_timeout):
                raise RuntimeError(f"shard {i} not ready after {setup_timeout:.0f} s")
            msg = pipe.recv()
            if msg[0] == "error":
                raise RuntimeError(msg[1])
        start = time.monotonic() + 0.2 + warmup
        end = start + duration
        for _, pipe in children:
            pipe.send(("go", start, end))
        time.sleep(max(0.0, start - time.monotonic()))
        cpu0 = meter.cpu_seconds() if meter else 0.0
        host0 = host_busy_seconds()
        time.sleep(max(0.0, end - time.monotonic()))
        cpu1 = meter.cpu_seconds() if meter else 0.0
        host1 = host_busy_seconds()
        results: list[ShardResult] = []
        errors: list[str] = []
        for i, (_, pipe) in enumerate(children):
            if not pipe.poll(setup_timeout):
                errors.append(f"shard {i} did not finish")
                continue
            msg = pipe.recv()
            if msg[0] == "done":
                results.append(msg[1])
            else:
                errors.append(msg[1])
        if errors:
            raise RuntimeError("; ".join(errors))
        server_cpu = (cpu1 - cpu0) if meter else None
        for r in results:
            r.server_cpu = server_cpu
            r.host_busy = host1 - host0 if host0 is not None and host1 is not None else None
        return results
    finally:
        for proc, pipe in children:
            pipe.close()
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()


def generator_cpus(pin: bool) -> list[int] | None:
    """CPUs for the load generator: all but CPU 0 (the server's) when there are two or more."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None
    others = [c for c in range(os.cpu_count() or 1) if c != 0]
    return others or None


def combine_shards(results: list[ShardResult], unit: str) -> dict[str, Any]:
    """Merge shard results into the figures of one run, per ``unit`` of work."""
    from systemx.bench.stats import load_figures, summarize_latency

    count = sum(r.count for r in results)
    elapsed = max(max(r.elapsed for r in results), 1e-9)
    server_cpu = results[0].server_cpu
    lat: list[int] = []
    for r in results:
        lat.extend(r.lat_ns)
    out: dict[str, Any] = {
        f"{unit}s": count,
        f"{unit}s_per_s": count / elapsed,
        f"server_cpu_us_per_{unit}": (server_cpu / count * 1e6) if server_cpu is not None and count else None,
    }
    out.update(load_figures(elapsed, server_cpu, sum(r.gen_cpu for r in results), results[0].host_busy))
    out.update(summarize_latency(lat))
    for r in results:
        for key, value in r.extra.items():
            if isinstance(value, int | float) and key in out:
                out[key] += value
            else:
                out.setdefault(key, value)
    return out
