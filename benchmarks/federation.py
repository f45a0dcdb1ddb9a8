"""Call set-up and MSG round trip across a federation trunk, against a local call, in one run.

Starts a parent exchange (``hq.test``) and a child (``branch.test``) that dials it
(``FEDERATION_*``), then alternates: a local call (both parties on the parent) and a call
from the parent to the child, each measured as ``--calls`` sequential DIAL → CONNECTED →
HANGUP set-ups and ``--msgs`` sequential MSG round trips (the callee echoes). Prints the
medians and p99 of each, and the trunk/local ratio per round: the machine's noise cancels
out of the ratio.

    .venv/bin/python -m benchmarks.federation --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.calls import echo_calls, free_port, p99, wait_port
from systemx.client import connect


async def _measure(
    caller_url: str, callee_url: str, callee: str, calls: int, msgs: int
) -> tuple[float, float]:
    tag = os.urandom(3).hex()
    caller = await connect(caller_url, f"caller-{tag}@hq.test")
    answering = await connect(callee_url, callee.replace("@", f"-{tag}@"))
    echo = asyncio.create_task(echo_calls(answering))
    target = answering.address or ""
    setups: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        call = await caller.dial(target)
        setups.append(time.perf_counter() - started)
        await call.hangup()
    call = await caller.dial(target)
    trips: list[float] = []
    for i in range(msgs):
        started = time.perf_counter()
        await call.send(f"m{i}")
        await call.recv()
        trips.append(time.perf_counter() - started)
    await call.hangup()
    echo.cancel()
    await caller.close()
    await answering.close()
    where = "local" if caller_url == callee_url else "trunk"
    print(
        f"{where}: call set-up p50 {statistics.median(setups) * 1e3:.2f} ms, p99 {p99(setups) * 1e3:.2f} ms;"
        f" MSG round trip p50 {statistics.median(trips) * 1e3:.3f} ms, p99 {p99(trips) * 1e3:.3f} ms"
    )
    return statistics.median(setups), statistics.median(trips)


async def _run(rounds: int, calls: int, msgs: int) -> None:
    parent_port, child_port = free_port(), free_port()
    scratch = tempfile.mkdtemp(prefix="systemx-federation-")
    env = dict(
        os.environ,
        SYSTEMX_LOG_LEVEL="warn",
        SYSTEMX_ADMIN="off",
        SYSTEMX_RECORDS="off",
        SYSTEMX_DIAL_MAX_ATTEMPTS="0",
        SYSTEMX_DATA_DIR=os.path.join(scratch, "parent"),
    )
    child_env = dict(
        env,
        SYSTEMX_DATA_DIR=os.path.join(scratch, "child"),
        FEDERATION_ENABLED="true",
        FEDERATION_PEER_URL=f"ws://127.0.0.1:{parent_port}",
        FEDERATION_ROUTES="*@hq.test",
        FEDERATION_DOMAIN="branch.test",
    )
    command = [sys.executable, "-m", "systemx", "serve", "--port"]
    quiet = subprocess.DEVNULL
    parent = subprocess.Popen([*command, str(parent_port)], env=env, cwd=scratch, stdout=quiet, stderr=quiet)
    child = subprocess.Popen(
        [*command, str(child_port)], env=child_env, cwd=scratch, stdout=quiet, stderr=quiet
    )
    try:
        await wait_port(parent_port)
        await wait_port(child_port)
        parent_url, child_url = f"ws://127.0.0.1:{parent_port}", f"ws://127.0.0.1:{child_port}"
        # The trunk is up once a call through it connects.
        for _ in range(100):
            try:
                await _measure(parent_url, child_url, "warmup@branch.test", 1, 1)
                break
            except Exception:
                await asyncio.sleep(0.1)
        ratios: list[tuple[float, float]] = []
        for _ in range(rounds):
            local = await _measure(parent_url, parent_url, "callee@hq.test", calls, msgs)
            trunk = await _measure(parent_url, child_url, "callee@branch.test", calls, msgs)
            ratios.append((trunk[0] / local[0], trunk[1] / local[1]))
        print(
            "trunk/local per round (set-up, MSG round trip): "
            + ", ".join(f"({a:.2f}, {b:.2f})" for a, b in ratios)
        )
    finally:
        for process in (parent, child):
            process.terminate()
            process.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.federation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--msgs", type=int, default=500)
    args = parser.parse_args(argv)
    asyncio.run(_run(args.rounds, args.calls, args.msgs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
