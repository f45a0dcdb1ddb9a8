"""Cluster presence against a real redis-server: mirrors, change streams, replicas, generations."""

from __future__ import annotations

import asyncio
from typing import Any

# systemx.state.ports imports the core's records: the core first, as the server loads them.
import systemx.core  # noqa: F401
from systemx.state.presence import MemoryPresenceIndex, PresenceIndex, PresenceRow
from systemx.state.redis.adapter import Later
from systemx.state.redis.keys import Keys
from systemx.state.redis.presence import RedisPresence
from tests.redis.conftest import Connections
from tests.wsclient import TIMEOUT

KEYS = Keys()


class Node:
    """One node's presence, with a lease, and the answers its reads gave."""

    def __init__(self, presence: RedisPresence, answers: asyncio.Queue[PresenceIndex | None]) -> None:
        self.presence = presence
        self.answers = answers
        self.tickets = 0

    async def read(self) -> list[PresenceRow]:
        self.tickets += 1
        self.presence.gather(self.tickets)
        index = await asyncio.wait_for(self.answers.get(), TIMEOUT)
        assert index is not None
        return index.query(limit=100_000)

    async def written(self) -> None:
        """Every change made so far is in Redis (its flush ran and was answered)."""
        await asyncio.sleep(0)
        await self.presence.conn.execute("PING")


async def node(connect: Connections, name: str) -> Node:
    conn = await connect(name)
    await conn.execute("HSET", KEYS.node(name), "epoch", 1)
    await conn.execute("ZADD", KEYS.nodes, 1, name)
    answers: asyncio.Queue[PresenceIndex | None] = asyncio.Queue()

    def deliver(tickets: list[int], index: PresenceIndex | None) -> None:
        for _ in tickets:
            answers.put_nowait(index)

    presence = RedisPresence(conn, name, Later(), deliver)
    await presence.clear()
    return Node(presence, answers)


def put(target: RedisPresence | MemoryPresenceIndex, i: int, status: str = "available") -> None:
    target.put(
        f"u{i}@d{i % 3}.test",
        domain=f"d{i % 3}.test",
        capabilities=[f"c{i % 4}"],
        lat=50.0 + i / 1000 if i % 2 else None,
        lon=1.0 if i % 2 else None,
        status=status,
        metadata={"i": i},
    )


async def test_a_reader_follows_a_burst_then_status_changes_removals_and_new_entries(
    connect: Connections,
) -> None:
    a, b = await node(connect, "A"), await node(connect, "B")
    same = MemoryPresenceIndex()  # what one process would hold after the same calls
    for i in range(250):  # one flush of 250 keys: three changes in the stream
        put(a.presence, i)
        put(same, i)
    await a.written()
    assert await b.read() == same.query(limit=1000)
    assert b.presence.full_reads == 1
    for i in range(0, 40, 4):
        a.presence.set_status(f"u{i}@d{i % 3}.test", "busy")
        same.set_status(f"u{i}@d{i % 3}.test", "busy")
    for i in range(100, 105):
        a.presence.remove(f"u{i}@d{i % 3}.test")
        same.remove(f"u{i}@d{i % 3}.test")
    await a.written()
    for i in range(300, 303):
        put(a.presence, i, "dnd")
        put(same, i, "dnd")
    put(a.presence, 7, "away")  # updated in place: keeps its place in the order
    put(same, 7, "away")
    await a.written()
    assert await b.read() == same.query(limit=1000)
    assert b.presence.full_reads == 1, "changes only, after the first read"
    assert b.presence.replica.rebuilds == 0


async def test_a_reader_that_missed_changes_or_meets_a_new_generation_reads_the_whole_hash(
    connect: Connections,
) -> None:
    a, b = await node(connect, "A"), await node(connect, "B")
    for i in range(20):
        put(a.presence, i)
    await a.written()
    await b.read()
    # The stream lost what B has not read (trimmed): B reads the whole hash again.
    for i in range(20, 30):
        put(a.presence, i)
    await a.written()
    await a.presence.conn.execute("XTRIM", KEYS.presence_changes("A"), "MAXLEN", 0)
    put(a.presence, 30)
    await a.written()
    rows = await b.read()
    assert [r[0] for r in rows] == [f"u{i}@d{i % 3}.test" for i in range(31)]
    assert b.presence.full_reads == 2
    # A writes its hash anew (Redis lost it): another generation, read whole.
    await a.presence.conn.execute("DEL", KEYS.presence("A"), KEYS.presence_changes("A"))
    await a.presence.republish()
    assert len(await b.read()) == 31
    assert b.presence.full_reads == 3
    assert len(await b.read()) == 31
    assert b.presence.full_reads == 3


async def test_a_node_without_a_lease_is_left_out_and_its_keys_are_dropped(connect: Connections) -> None:
    a, b = await node(connect, "A"), await node(connect, "B")
    put(a.presence, 1)
    put(b.presence, 2)
    await a.written()
    assert [r[0] for r in await b.read()] == ["u1@d1.test", "u2@d2.test"]
    # Without a read, a node's own query knows its own entries and those it read last.
    assert [r[0] for r in a.presence.query(limit=10)] == ["u1@d1.test"]
    assert [r[0] for r in b.presence.query(limit=10)] == ["u1@d1.test", "u2@d2.test"]
    assert not await b.presence.drop_node("A"), "A holds a lease"
    await b.presence.conn.execute("DEL", KEYS.node("A"))
    assert [r[0] for r in await b.read()] == ["u2@d2.test"]
    assert await b.presence.drop_node("A")
    assert await b.presence.conn.execute("EXISTS", KEYS.presence("A"), KEYS.presence_changes("A")) == 0


async def test_redis_away_answers_none_within_the_bound(connect: Connections) -> None:
    a = await node(connect, "A")
    await a.presence.conn.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    a.presence.gather(1)
    answer: Any = await asyncio.wait_for(a.answers.get(), TIMEOUT)
    assert answer is None
    assert loop.time() - started < 0.6
