"""Client CPU per Redis command: the corked connection against redis-py.

Run with ``python -m benchmarks.redis_conn [--port P] [--n N] [--rounds R]``.
Without ``--port`` it starts its own ``redis-server`` (no persistence) on a
free port and stops it at the end.

Each figure is the best of ``--rounds`` rounds of *this process's* CPU time
(``time.process_time``) per command, the Redis server's CPU excluded, with
commands issued 100 per event-loop pass and the last reply awaited:

* ``send_packed``: a pre-encoded ``XADD`` to a node inbox (the bus path);
* ``send_nowait``: ``XADD`` encoded per call, reply dropped;
* ``execute``: ``XADD`` with a future per command;
* ``evalsha claim``: one ``claim.lua`` through ``RedisDirectory.claim``, one at a time;
* redis-py (asyncio, hiredis parser): the same ``XADD`` in a pipeline of 100,
  and one command at a time (``await r.xadd(...)``).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable

__all__ = ["main"]

PAYLOAD = b'{"op":"deliver","session":"s-1","frame":{"type":"MSG","call_id":"c1","data":"hello"}}'
BATCH = 100


async def _best(label: str, n: int, rounds: int, run: Callable[[int], Awaitable[None]]) -> float:
    best = float("inf")
    for _ in range(rounds):
        c0 = time.process_time()
        await run(n)
        best = min(best, (time.process_time() - c0) / n)
    print(f"{label:<42} {best * 1e6:8.2f} µs/command")
    return best


async def _bench(port: int, n: int, rounds: int) -> None:
    import redis.asyncio as aredis

    from systemx.state.ports import Registration
    from systemx.state.redis.bus import RedisBus
    from systemx.state.redis.conn import RedisConnection
    from systemx.state.redis.directory import RedisDirectory

    conn = RedisConnection("127.0.0.1", port, name="bench")
    reader = RedisConnection("127.0.0.1", port, name="bench-reader", timeout=2.0)
    await conn.connect()
    await reader.connect()
    bus = RedisBus(conn, reader, "bench", lambda batch: None)
    key = "bench:nq"

    async def packed(n: int) -> None:
        for _ in range(0, n, BATCH):
            for _ in range(BATCH):
                bus.send("n2", PAYLOAD)
            await conn.execute("PING")

    async def nowait(n: int) -> None:
        for _ in range(0, n, BATCH):
            for _ in range(BATCH):
                conn.send_nowait("XADD", key, "MAXLEN", "~", 100000, "*", "m", PAYLOAD)
            await conn.execute("PING")

    async def execute(n: int) -> None:
        for _ in range(0, n, BATCH):
            last = None
            for _ in range(BATCH):
                last = conn.execute("XADD", key, "MAXLEN", "~", 100000, "*", "m", PAYLOAD)
            assert last is not None
            await last

    directory = RedisDirectory(conn, "bench-node")
    await directory.start()
    counter = iter(range(10**9))

    async def claims(n: int) -> None:
        for _ in range(n):
            i = next(counter)
            await directory.claim(
                Registration(
                    address=f"a{i}@bench.example",
                    key=f"a{i}@bench.example",
                    node="bench-node",
                    session_id=f"s{i}",
                )
            )

    r = aredis.Redis(host="127.0.0.1", port=port)

    async def rp_pipe(n: int) -> None:
        for _ in range(0, n, BATCH):
            async with r.pipeline(transaction=False) as pipe:
                for _ in range(BATCH):
                    pipe.xadd(key, {"m": PAYLOAD}, maxlen=100000, approximate=True)
                await pipe.execute()

    async def rp_seq(n: int) -> None:
        for _ in range(n):
            await r.xadd(key, {"m": PAYLOAD}, maxlen=100000, approximate=True)

    await _best("corked send_packed (bus XADD)", n, rounds, packed)
    await _best("corked send_nowait (XADD)", n, rounds, nowait)
    await _best("corked execute + future (XADD)", n, rounds, execute)
    await _best("RedisDirectory.claim (EVALSHA, sequential)", max(n // 20, 100), rounds, claims)
    await _best("redis-py pipeline x100 (XADD)", n, rounds, rp_pipe)
    await _best("redis-py await per command (XADD)", max(n // 20, 100), rounds, rp_seq)
    await directory.stop()
    await r.aclose()
    await conn.close()
    await reader.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port", type=int, default=None, help="an existing Redis on 127.0.0.1 (it is written to)"
    )
    parser.add_argument("--n", type=int, default=20_000, help="commands per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    proc = None
    tmp = None
    port = args.port
    if port is None:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server is not on PATH; pass --port of a running Redis")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tmp = tempfile.mkdtemp(prefix="systemx-bench-redis-")
        proc = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.02)
    try:
        try:
            import uvloop

            uvloop.run(_bench(port, args.n, args.rounds))
        except ImportError:
            asyncio.run(_bench(port, args.n, args.rounds))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
