"""Cost of PRESENCE over a cluster: writes per status change, Redis and client time per query.

Run with ``python -m benchmarks.cluster_presence [--entries N ...] [--nodes K] [--port P]``.
Without ``--port`` it starts its own ``redis-server`` (no persistence) on a free
port and stops it at the end.

It plays ``--nodes`` nodes in one process, each a
:class:`~systemx.state.redis.presence.RedisPresence` on its own connection with
a lease in Redis, spreads ``--entries`` random entries (domain, two
capabilities, a location, ~80 bytes of metadata) over them, and measures:

* **put**: client CPU per registration, against a bare ``MemoryPresenceIndex``;
* **status change**: Redis CPU per ``HSET`` of one status field (from ``INFO
  commandstats``) when each loop pass changes one status, and per field when a
  pass changes 100;
* **query**: one :meth:`RedisPresence.gather` from node 0, awaited: wall time,
  this process's CPU (reading, decoding, applying to the replica) and Redis CPU
  (``ZRANGE``, the ``presence_read.lua`` calls, ``HGETALL``), each the least
  over ``--reads`` rounds: the first read (every
  node's whole hash), a read when nothing changed, and reads after 10, 100 and
  1000 status changes on each other node; then the query itself on the
  replica's index, as a single process answers it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

__all__ = ["main"]


def _commandstats(info: bytes) -> dict[str, tuple[int, int]]:
    """``cmdstat_x`` -> (calls, usec) from ``INFO commandstats``."""
    out: dict[str, tuple[int, int]] = {}
    for line in info.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            fields = dict(part.split("=") for part in rest.split(","))
            out[name[8:]] = (int(fields["calls"]), int(fields["usec"]))
    return out


async def _bench(port: int, sizes: list[int], nodes: int, reads: int) -> None:
    from systemx.state.redis.conn import RedisConnection

    admin = RedisConnection("127.0.0.1", port, name="bench-admin", timeout=10.0)
    await admin.connect()
    for size in sizes:
        await admin.execute("FLUSHALL")
        await _one_size(port, admin, size, nodes, reads)
    await admin.close()


def _world(size: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(size)
    rows: list[tuple[str, dict[str, Any]]] = []
    for i in range(size):
        domain = f"d{rng.randrange(200)}.example"
        rows.append(
            (
                f"agent{i}@{domain}",
                {
                    "domain": domain,
                    "capabilities": (f"cap{rng.randrange(50)}", f"cap{rng.randrange(50)}"),
                    "lat": rng.uniform(-60, 70),
                    "lon": rng.uniform(-180, 180),
                    "status": "available",
                    "metadata": {"capabilities": ["x"], "note": "n" * 40, "v": i},
                },
            )
        )
    return rows


def _best(results: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """The least of each figure over the rounds (this machine is shared: the rest is noise)."""
    walls, cpus, redis = zip(*results, strict=True)
    return min(walls), min(cpus), min(redis)


def _show(label: str, figures: tuple[float, float, float]) -> None:
    wall, cpu, redis = figures
    print(f"{label:<35}{wall * 1e3:8.2f} ms wall, {cpu * 1e3:.2f} ms client CPU, ", end="")
    print(f"{redis * 1e3:.3f} ms Redis CPU")


async def _one_size(port: int, admin: Any, size: int, nodes: int, reads: int) -> None:
    from systemx.state.presence import MemoryPresenceIndex, PresenceIndex
    from systemx.state.redis.adapter import Later
    from systemx.state.redis.conn import RedisConnection
    from systemx.state.redis.keys import Keys
    from systemx.state.redis.presence import RedisPresence

    keys = Keys()

    async def redis_usec(commands: tuple[str, ...]) -> int:
        stats = _commandstats(await admin.execute("INFO", "commandstats"))
        return sum(stats.get(c, (0, 0))[1] for c in commands)

    async def redis_calls(command: str) -> tuple[int, int]:
        return _commandstats(await admin.execute("INFO", "commandstats")).get(command, (0, 0))

    later = Later()
    answers: asyncio.Queue[PresenceIndex | None] = asyncio.Queue()

    def deliver(tickets: list[int], index: PresenceIndex | None) -> None:
        for _ in tickets:
            answers.put_nowait(index)

    members: list[RedisPresence] = []
    for i in range(nodes):
        name = f"bench{i}"
        conn = RedisConnection("127.0.0.1", port, name=name, timeout=10.0)
        await conn.connect()
        await conn.execute("HSET", keys.node(name), "epoch", 1)
        await conn.execute("ZADD", keys.nodes, 1, name)
        member = RedisPresence(conn, name, later, deliver)
        await member.clear()
        members.append(member)

    rows = _world(size)
    bare = MemoryPresenceIndex()
    c0 = time.process_time()
    for key, fields in rows:
        bare.put(key, **fields)
    bare_put = (time.process_time() - c0) / size
    c0 = time.process_time()
    for n, (key, fields) in enumerate(rows):
        members[n % nodes].put(key, **fields)
    mirrored_put = (time.process_time() - c0) / size
    await asyncio.sleep(0)
    for m in members:
        await m.conn.execute("PING")
    print(f"\n== {size} entries on {nodes} nodes ==")
    print(f"put, memory index only             {bare_put * 1e6:8.2f} µs client CPU")
    print(f"put, mirrored (flush excluded)     {mirrored_put * 1e6:8.2f} µs client CPU")

    # Status changes: one per loop pass, then 100 per pass.
    node0 = members[0]
    own = [key for n, (key, _) in enumerate(rows) if n % nodes == 0]
    changes = min(2000, len(own))
    write = ("hset", "xadd")
    before = [await redis_calls(c) for c in write]
    c0 = time.process_time()
    for i in range(changes):
        node0.set_status(own[i], "busy")
        await asyncio.sleep(0)
    await node0.conn.execute("PING")
    client = (time.process_time() - c0) / changes
    after = [await redis_calls(c) for c in write]
    usec = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    print(
        f"status change, 1 per pass          {usec / changes:8.2f} µs Redis (HSET + XADD), "
        f"{client * 1e6:.1f} µs client CPU incl. the pass"
    )
    before = after
    for start in range(0, changes, 100):
        for key in own[start : start + 100]:
            node0.set_status(key, "available")
        await asyncio.sleep(0)
    await node0.conn.execute("PING")
    after = [await redis_calls(c) for c in write]
    usec = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    print(f"status change, 100 per pass        {usec / changes:8.2f} µs Redis per change")

    # Queries from node 0: the first read takes every hash, later ones the changes.
    async def read() -> tuple[float, float, float]:
        usec_a = await redis_usec(("zrange", "evalsha", "hgetall"))
        w0, c0 = time.perf_counter(), time.process_time()
        node0.gather(1)
        index = await answers.get()
        w1, c1 = time.perf_counter(), time.process_time()
        usec_b = await redis_usec(("zrange", "evalsha", "hgetall"))
        assert index is not None and len(index) == size
        return w1 - w0, c1 - c0, (usec_b - usec_a) / 1e6

    _show("query, first read (every hash)", await read())
    _show("query, nothing changed", _best([await read() for _ in range(reads)]))
    others = [[key for n, (key, _) in enumerate(rows) if n % nodes == i] for i in range(1, nodes)]
    for churn in (10, 100, 1000):
        results = []
        for r in range(reads):
            status = "busy" if r % 2 == 0 else "available"
            for member, keys_of in zip(members[1:], others, strict=True):
                for key in keys_of[:churn]:
                    member.set_status(key, status)
            await asyncio.sleep(0)
            for member in members[1:]:
                await member.conn.execute("PING")
            results.append(await read())
        _show(f"query, {churn} status changes per node", _best(results))
    index = node0.replica.index
    c0 = time.process_time()
    for _ in range(100):
        index.query(capabilities=["cap7"], limit=20)
    cpu = (time.process_time() - c0) * 1e4
    print(f"the query on the replica's index   {cpu:8.2f} µs (a capability, limit 20)")
    for m in members:
        await m.conn.close()
    await later.drain()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port", type=int, default=None, help="an existing Redis on 127.0.0.1 (it is FLUSHALLed)"
    )
    parser.add_argument("--entries", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--reads", type=int, default=5)
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
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=tmp,
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

            uvloop.run(_bench(port, args.entries, args.nodes, args.reads))
        except ImportError:
            asyncio.run(_bench(port, args.entries, args.nodes, args.reads))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
