"""Cluster costs side by side in one run: one process, a call local to a cluster node, a cross-node call.

Starts a ``redis-server`` (free port, no persistence), one exchange without Redis
(``single``) and two cluster nodes ``A`` and ``B`` sharing the Redis, then per
round measures, in turn:

* ``single``: caller and callee on the single process;
* ``local``: caller and callee on node A (a cluster node, a call that stays on it);
* ``cross``: caller on A, callee on B (two legs joined over Redis).

For each: ``--calls`` sequential DIAL → CONNECTED → HANGUP set-ups, ``--msgs``
MSGs relayed with ``--window`` in flight (the callee echoes each), and ``--trips``
sequential MSG round trips. CPU is the sum of the exchange processes involved
and Redis (their CPU clocks; for ``local``, node A and Redis), per call and per
MSG; latency is the median and p99 of the round trips. Ratios per round cancel the machine's noise:
local/single (target: within 1.1x) and cross/local per MSG (target: at most 3x).

    .venv/bin/python -m benchmarks.cluster --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from benchmarks.calls import echo_calls, free_port, p99, wait_port
from systemx.bench.procstat import ProcessMeter
from systemx.client import Client, connect


def _cpu(meters: list[ProcessMeter]) -> float:
    return sum(meter.cpu_seconds() for meter in meters)


@dataclass
class Figures:
    call_cpu_us: float
    msg_cpu_us: float
    rtt_p50_ms: float
    rtt_p99_ms: float


async def _measure(
    name: str,
    caller_url: str,
    callee_url: str,
    meters: list[ProcessMeter],
    calls: int,
    msgs: int,
    window: int,
    trips: int,
    parallel: int = 1,
) -> Figures:
    echoes: list[asyncio.Task[None]] = []
    tag = os.urandom(3).hex()
    caller = await connect(caller_url, f"caller-{tag}@bench.test")
    answering = await connect(callee_url, f"callee-{tag}@bench.test")
    echo = asyncio.create_task(echo_calls(answering))
    target = answering.address or ""
    # ``parallel`` pairs place calls at once (the default 1: one call at a time).
    pairs = [(caller, target)]
    extra: list[Client] = []
    for i in range(1, parallel):
        a = await connect(caller_url, f"caller-{tag}-{i}@bench.test")
        b = await connect(callee_url, f"callee-{tag}-{i}@bench.test")
        extra += (a, b)
        echoes.append(asyncio.create_task(echo_calls(b)))
        pairs.append((a, b.address or ""))

    async def place(client: Client, to: str, n: int) -> None:
        for _ in range(n):
            call = await client.dial(to)
            await call.hangup()

    cpu0 = _cpu(meters)
    await asyncio.gather(*(place(c, t, calls // len(pairs)) for c, t in pairs))
    call_cpu = (_cpu(meters) - cpu0) / (calls // len(pairs) * len(pairs))
    for task in echoes:
        task.cancel()
    for client in extra:
        await client.close()
    call = await caller.dial(target)
    cpu0 = _cpu(meters)
    sent = received = 0
    while received < msgs:
        while sent < msgs and sent - received < window:
            await call.send("x" * 100)
            sent += 1
        await call.recv()
        received += 1
    msg_cpu = (_cpu(meters) - cpu0) / (2 * msgs)  # each MSG is relayed twice (there and echoed back)
    rtts: list[float] = []
    for i in range(trips):
        started = time.perf_counter()
        await call.send(f"m{i}")
        await call.recv()
        rtts.append(time.perf_counter() - started)
    await call.hangup()
    echo.cancel()
    await caller.close()
    await answering.close()
    figures = Figures(call_cpu * 1e6, msg_cpu * 1e6, statistics.median(rtts) * 1e3, p99(rtts) * 1e3)
    print(
        f"{name:>6}: CPU {figures.call_cpu_us:7.0f} µs/call, {figures.msg_cpu_us:6.1f} µs/MSG;"
        f" MSG round trip p50 {figures.rtt_p50_ms:.3f} ms, p99 {figures.rtt_p99_ms:.3f} ms"
    )
    return figures


async def _run(args: argparse.Namespace) -> None:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not on PATH")
    scratch = tempfile.mkdtemp(prefix="systemx-cluster-bench-")
    redis_port, single_port, a_port, b_port = (free_port() for _ in range(4))
    quiet = subprocess.DEVNULL
    redis = subprocess.Popen(
        [redis_server, "--port", str(redis_port), "--save", "", "--appendonly", "no", "--dir", scratch],
        stdout=quiet,
        stderr=quiet,
    )
    env = dict(
        os.environ,
        SYSTEMX_LOG_LEVEL=args.log_level,
        SYSTEMX_ADMIN="off",
        SYSTEMX_RECORDS="off",
        SYSTEMX_LOG_STREAM="off",
        SYSTEMX_DIAL_MAX_ATTEMPTS="0",
    )
    url = f"redis://127.0.0.1:{redis_port}/0"
    cluster_env = dict(env)
    if args.status_delay_ms is not None:
        cluster_env["SYSTEMX_PRESENCE_STATUS_DELAY_MS"] = str(args.status_delay_ms)
    command = [sys.executable, "-m", "systemx", "serve", "--port"]
    procs = {
        "single": subprocess.Popen(
            [*command, str(single_port)],
            env=dict(env, SYSTEMX_DATA_DIR=os.path.join(scratch, "s")),
            stdout=quiet,
            stderr=quiet,
        )
    }
    try:
        await wait_port(redis_port)
        for name, port in (("A", a_port), ("B", b_port)):
            procs[name] = subprocess.Popen(
                [*command, str(port)],
                env=dict(
                    cluster_env,
                    SYSTEMX_DATA_DIR=os.path.join(scratch, name),
                    SYSTEMX_REDIS_URL=url,
                    SYSTEMX_NODE_ID=name,
                ),
                stdout=quiet,
                stderr=quiet,
            )
        for port in (single_port, a_port, b_port):
            await wait_port(port)
        urls = {n: f"ws://127.0.0.1:{p}" for n, p in (("single", single_port), ("A", a_port), ("B", b_port))}
        meter = {n: ProcessMeter(p.pid) for n, p in procs.items()}
        rm = ProcessMeter(redis.pid)
        rows: list[tuple[Figures, Figures, Figures]] = []
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}")
            m = (args.calls, args.msgs, args.window, args.trips, args.parallel)
            single = await _measure("single", urls["single"], urls["single"], [meter["single"]], *m)
            # Node B takes no part in a call local to A: A and Redis are what the call costs.
            local = await _measure("local", urls["A"], urls["A"], [meter["A"], rm], *m)
            cross = await _measure("cross", urls["A"], urls["B"], [meter["A"], meter["B"], rm], *m)
            rows.append((single, local, cross))
        call_ratio = [b.call_cpu_us / a.call_cpu_us for a, b, _ in rows]
        msg_local = [b.msg_cpu_us / a.msg_cpu_us for a, b, _ in rows]
        msg_cross = [c.msg_cpu_us / b.msg_cpu_us for _, b, c in rows]
        call_cross = [c.call_cpu_us / b.call_cpu_us for _, b, c in rows]
        print("ratios per round (medians last):")
        print(f"  local/single CPU per call: {_fmt(call_ratio)}")
        print(f"  local/single CPU per MSG:  {_fmt(msg_local)}")
        print(f"  cross/local CPU per MSG:   {_fmt(msg_cross)}")
        print(f"  cross/local CPU per call:  {_fmt(call_cross)}")
        print(f"  cross MSG round trip p50:  {statistics.median(c.rtt_p50_ms for _, _, c in rows):.3f} ms")
    finally:
        for process in procs.values():
            process.terminate()
            process.wait(10)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) + f"  (median {statistics.median(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--msgs", type=int, default=5000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--trips", type=int, default=300)
    parser.add_argument("--log-level", default="warn")
    parser.add_argument(
        "--status-delay-ms",
        type=int,
        default=None,
        help="SYSTEMX_PRESENCE_STATUS_DELAY_MS of the nodes (default: theirs)",
    )
    parser.add_argument(
        "--parallel", type=int, default=1, help="caller/callee pairs placing calls at once (set-up figures)"
    )
    args = parser.parse_args(argv)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
