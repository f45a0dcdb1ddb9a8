"""The Redis backends against a real redis-server: races, leases, sweeps, locks, the bus, failures."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest

from systemx.protocol import link
from systemx.state.ports import PENDING, Claimed, InUse, Registration, RosterMember
from systemx.state.redis import scripts
from systemx.state.redis.adapter import Later, PendingDirectory, PendingRoster
from systemx.state.redis.bus import RedisBus
from systemx.state.redis.conn import RedisConnection, RedisUnavailable, ReplyError
from systemx.state.redis.directory import RedisDirectory
from systemx.state.redis.keys import Keys
from systemx.state.redis.profiles import RedisProfileStore
from systemx.state.redis.roster import RedisPartyRoster
from tests.redis.conftest import Connections
from tests.redisproc import RedisProcess
from tests.wsclient import TIMEOUT, scaled

KEYS = Keys()


def reg(address: str, session_id: str, node: str) -> Registration:
    return Registration(address=address, key=address, node=node, session_id=session_id)


async def until(check: object, timeout: float = TIMEOUT) -> None:
    """Wait for ``check()`` (sync or async) to be true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def evalsha_calls(conn: RedisConnection) -> int:
    stats = (await conn.execute("INFO", "commandstats")).decode()
    for line in stats.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


# --------------------------------------------------------------------------
# Directory


async def test_twenty_nodes_race_for_one_address_and_exactly_one_wins(connect: Connections) -> None:
    nodes = []
    for i in range(20):
        directory = RedisDirectory(await connect(f"n{i}"), f"n{i}")
        await directory.start()
        nodes.append(directory)
    answers = await asyncio.gather(
        *(d.claim(reg("agent@example.com", f"s{i}", d.node)) for i, d in enumerate(nodes))
    )
    won = [a for a in answers if isinstance(a, Claimed)]
    assert len(won) == 1
    winner = won[0].registration
    assert all(isinstance(a, InUse) and a.holder == winner for a in answers if a is not won[0])
    assert await nodes[7].lookup("agent@example.com") == winner
    for d in nodes:
        await d.stop()


async def test_release_by_a_non_owner_does_nothing(connect: Connections) -> None:
    one = RedisDirectory(await connect("n1"), "n1")
    two = RedisDirectory(await connect("n2"), "n2")
    await one.start()
    await two.start()
    held = await one.claim(reg("agent@example.com", "s1", "n1"))
    assert isinstance(held, Claimed)
    assert await two.release("agent@example.com", "s1") is False, "same session id, other node"
    assert await one.release("agent@example.com", "s2") is False, "same node, other session"
    assert await one.lookup("agent@example.com") == held.registration
    assert await one.release("agent@example.com", "s1") is True
    assert await one.lookup("agent@example.com") is None


async def test_a_claim_of_a_dead_node_is_taken_over_and_of_a_live_one_is_not(connect: Connections) -> None:
    conn = await connect()
    one, two = RedisDirectory(conn, "n1"), RedisDirectory(conn, "n2")
    await one.start()
    await two.start()
    assert isinstance(await one.claim(reg("a@example.com", "s1", "n1")), Claimed)
    assert isinstance(await two.claim(reg("a@example.com", "s2", "n2")), InUse), "n1 is alive"
    await conn.execute("DEL", KEYS.node("n1"))  # n1's lease is gone: n1 is dead
    taken = await two.claim(reg("a@example.com", "s2", "n2"))
    assert isinstance(taken, Claimed)
    assert (await two.lookup("a@example.com")) == taken.registration
    assert await one.release("a@example.com", "s1") is False, "the dead holder's late release is a no-op"
    assert (await two.lookup("a@example.com")) == taken.registration


async def test_a_restarted_node_frees_its_claims_of_the_earlier_run(connect: Connections) -> None:
    conn = await connect()
    first = RedisDirectory(conn, "n1")
    await first.start()
    await first.claim(reg("a@example.com", "s1", "n1"))
    again = RedisDirectory(conn, "n1")  # the same node id, a new process (first crashed)
    assert await again.start() > first.epoch
    assert await again.lookup("a@example.com") is None
    assert isinstance(await again.claim(reg("a@example.com", "s9", "n1")), Claimed)


async def test_lease_expiry_lets_another_node_sweep_in_batches(connect: Connections) -> None:
    conn = await connect()
    dying = RedisDirectory(conn, "dying", ttl_ms=300)
    survivor = RedisDirectory(conn, "survivor", sweep_batch=7)
    await dying.start()
    await survivor.start()
    for i in range(50):
        assert isinstance(await dying.claim(reg(f"a{i}@example.com", f"s{i}", "dying")), Claimed)
    assert await survivor.sweep_dead("dying") == 0, "a node with a lease is not swept"
    assert dying._renewer is not None
    dying._renewer.cancel()  # the node stops renewing, as a crashed one does

    async def dead() -> bool:
        return "dying" in await survivor.dead_nodes()

    await until(dead)
    assert "dying" not in await survivor.live_nodes()
    before = await evalsha_calls(conn)
    assert await survivor.sweep_dead("dying") == 50
    # ceil(50 / 7) = 8 sweep calls and one unlock of the janitor lock.
    assert await evalsha_calls(conn) - before == 8 + 1
    assert all([await survivor.lookup(f"a{i}@example.com") is None for i in range(50)])
    assert await conn.execute("EXISTS", KEYS.node_addresses("dying")) == 0
    assert "dying" not in await survivor.dead_nodes()
    assert isinstance(await survivor.claim(reg("a3@example.com", "x", "survivor")), Claimed)


async def test_one_janitor_at_a_time(connect: Connections) -> None:
    conn = await connect()
    one = RedisDirectory(conn, "n1")
    await one.start()
    await conn.execute("SET", KEYS.janitor, "someone-else", "PX", 5000)
    assert await one.sweep_dead("ghost") is None
    assert await conn.execute("GET", KEYS.janitor) == b"someone-else", "another's lock is left alone"


async def test_renew_notices_a_lost_lease_and_writes_it_again(connect: Connections) -> None:
    conn = await connect()
    lost: list[bool] = []
    one = RedisDirectory(conn, "n1", on_lease_lost=lambda: lost.append(True))
    await one.start()
    assert await one.renew() is True
    await conn.execute("DEL", KEYS.node("n1"))
    assert await one.renew() is False
    assert lost == [True]
    assert await one.live_nodes() == {"n1": one.epoch}


# --------------------------------------------------------------------------
# Wake lock, bucket, roster


async def test_wake_lock_has_a_single_winner(connect: Connections) -> None:
    stores = [RedisProfileStore(await connect(f"n{i}")) for i in range(10)]
    assert (await stores[0].wake("agent@example.com", "c0@n0", 5000)).won is False
    await stores[0].put("agent@example.com", {"handler": {"type": "webhook"}})
    answers = await asyncio.gather(
        *(s.wake("agent@example.com", f"c1@n{i}", 5000) for i, s in enumerate(stores))
    )
    winners = [i for i, a in enumerate(answers) if a.won]
    assert len(winners) == 1
    assert answers[winners[0]].profile == b'{"handler":{"type":"webhook"}}'
    token = f"c1@n{winners[0]}".encode()
    assert all(a.holder == token for a in answers if not a.won)
    assert await stores[1].wake_done("agent@example.com", "not-mine") is False
    assert await stores[1].wake_done("agent@example.com", token.decode()) is True
    assert (await stores[2].wake("agent@example.com", "c2@n2", 5000)).won is True


async def test_wake_lock_is_not_taken_for_a_claimed_address(connect: Connections) -> None:
    conn = await connect("n0")
    store = RedisProfileStore(conn)
    await store.put("agent@example.com", {"handler": {"type": "webhook"}})
    await conn.execute("HSET", KEYS.address("agent@example.com"), "node", "n2", "nepoch", "7")
    answer = await store.wake("agent@example.com", "c1@n0", 5000, unless_claimed=True)
    assert (answer.won, answer.node, answer.nepoch) == (False, b"n2", b"7")
    assert await conn.execute("EXISTS", KEYS.wake_lock("agent@example.com")) == 0
    assert (await store.wake("agent@example.com", "c1@n0", 5000)).won is True, "without the claim check"
    await conn.execute("DEL", KEYS.address("agent@example.com"), KEYS.wake_lock("agent@example.com"))
    assert (await store.wake("agent@example.com", "c2@n0", 5000, unless_claimed=True)).won is True


async def test_token_bucket_is_shared_by_every_node(connect: Connections) -> None:
    a, b = await connect("a"), await connect("b")
    key = KEYS.bucket("dial:tenant-1")
    now = 1_000_000
    got = [await scripts.bucket(c, key, rate=10, burst=5, now_ms=now) for c in (a, b, a, b, a)]
    assert [g.allowed for g in got] == [True] * 5
    assert got[-1].tokens == 0
    denied = await scripts.bucket(b, key, rate=10, burst=5, now_ms=now)
    assert denied == scripts.BucketAnswer(False, 0, 100)
    assert (await scripts.bucket(a, key, rate=10, burst=5, now_ms=now + 100)).allowed is True
    assert (await scripts.bucket(a, key, rate=10, burst=5, now_ms=now + 100)).allowed is False
    assert (await scripts.bucket(a, KEYS.bucket("other"), rate=1, burst=1)).allowed is True, "server clock"
    with pytest.raises(ValueError, match="cost"):
        await scripts.bucket(a, key, rate=10, burst=5, cost=6)


async def test_roster_names_the_nodes_interested_in_a_line(connect: Connections) -> None:
    roster = RedisPartyRoster(await connect())
    await roster.join("room@x.com", "a@x.com", "n1")
    await roster.join("room@x.com", "b@x.com", "n2")
    await roster.join("room@x.com", "c@x.com", "n1")
    assert await roster.nodes("room@x.com") == {"n1", "n2"}
    await roster.leave("room@x.com", "b@x.com")
    assert await roster.nodes("room@x.com") == {"n1"}
    await roster.join("room@x.com", "a@x.com", "n3")
    assert await roster.nodes("room@x.com") == {"n1", "n3"}
    assert await roster.drop_node("n1") == 1
    assert await roster.members("room@x.com") == [RosterMember("a@x.com", "n3")]


# --------------------------------------------------------------------------
# Adapter: the core's view


async def test_roster_enter_checks_numbers_and_lists_every_node(connect: Connections) -> None:
    conn = await connect()
    roster = RedisPartyRoster(conn)
    room = "room@x.com"
    nobody = await roster.enter(room, "Room@X.com", "s1", "n1", 7, "a@x.com", create=False, max_members=2)
    assert nobody.status == "no_such_party"
    await conn.execute("SET", "sx:a:{x.com}:taken", "1")
    claim = ("sx:a:{x.com}:taken",)
    taken = await roster.enter(
        "taken@x.com", "taken@x.com", "s", "n1", 7, "a@x.com", create=True, max_members=2, taken=claim
    )
    assert taken.status == "address_in_use"
    first = await roster.enter(room, "Room@X.com", "s1", "n1", 7, "a@x.com", create=True, max_members=2)
    second = await roster.enter(room, "room@x.com", "s2", "n2", 9, "b@x.com", create=False, max_members=2)
    assert first.status == second.status == "joined"
    assert second.seq > first.seq
    assert second.name == "Room@X.com", "the creator's spelling"
    assert [(e.member_id, e.node, e.epoch, e.address) for e in second.members] == [
        ("s1", "n1", 7, "a@x.com"),
        ("s2", "n2", 9, "b@x.com"),
    ]
    again = await roster.enter(room, "room@x.com", "s1", "n1", 7, "a@x.com", create=False, max_members=2)
    assert (again.status, again.seq, len(again.members)) == ("again", first.seq, 2)
    full = await roster.enter(room, "room@x.com", "s3", "n3", 1, "c@x.com", create=False, max_members=2)
    assert full.status == "party_full"
    quit = await roster.quit(room, "s1")
    assert quit.left and quit.seq > second.seq and quit.nodes == ("n2",)
    assert not (await roster.quit(room, "s1")).left
    assert await roster.drop_node("n2") == 1
    gone = await roster.enter(room, "room@x.com", "s3", "n3", 1, "c@x.com", create=False, max_members=2)
    assert gone.status == "no_such_party", "an emptied line is gone"
    assert await conn.execute("KEYS", "sx:pl:{room@x.com}*") == []


async def test_the_adapter_answers_pending_then_calls_back(connect: Connections) -> None:
    conn = await connect()
    directory = RedisDirectory(conn, "n1")
    await directory.start()
    later = Later()
    claimed: list[object] = []
    looked: list[object] = []
    members: list[object] = []
    port = PendingDirectory(directory, later, lambda r, a: claimed.append(a), lambda k, a: looked.append(a))
    assert port.claim(reg("a@example.com", "s1", "n1")) is PENDING
    assert port.lookup("a@example.com") is PENDING, "issued after the claim, so it sees it"
    port.release("a@example.com", "s1")
    assert port.lookup("a@example.com") is PENDING
    roster = PendingRoster(RedisPartyRoster(conn), later, lambda k, a: members.append(a))
    roster.join("room@x.com", "a@example.com", "n1")
    assert roster.members("room@x.com") is PENDING
    await asyncio.wait_for(later.drain(), TIMEOUT)
    assert isinstance(claimed[0], Claimed)
    assert looked == [claimed[0].registration, None]
    assert members == [[RosterMember("a@example.com", "n1")]]


async def test_the_adapter_delivers_redis_failures_as_answers(own_redis: RedisProcess) -> None:
    conn = RedisConnection(own_redis.host, own_redis.port)
    await conn.connect()
    directory = RedisDirectory(conn, "n1")
    await directory.start()
    answers: list[object] = []
    port = PendingDirectory(
        directory, Later(), lambda r, a: answers.append(a), lambda k, a: answers.append(a)
    )
    own_redis.kill()
    assert port.lookup("a@example.com") is PENDING
    await until(lambda: answers, scaled(2.0))
    assert isinstance(answers[0], RedisUnavailable)
    await directory.stop()
    await conn.close()


# --------------------------------------------------------------------------
# Connection


async def test_noscript_loads_the_script_and_retries(connect: Connections) -> None:
    conn = await connect()
    await conn.execute("SCRIPT", "FLUSH")
    assert await scripts.unlock(conn, "no-such-lock", "t") is False
    assert await conn.execute("SCRIPT", "EXISTS", scripts.UNLOCK.sha) == [1]


async def test_error_replies_fail_only_their_command(connect: Connections) -> None:
    conn = await connect()
    bad = conn.execute("NOSUCHCOMMAND")
    good = conn.execute("PING")
    with pytest.raises(ReplyError, match="unknown command"):
        await bad
    assert await good == b"PONG"


async def test_redis_killed_means_unavailable_within_the_timeout(own_redis: RedisProcess) -> None:
    conn = RedisConnection(own_redis.host, own_redis.port, timeout=0.5)
    await conn.connect()
    directory = RedisDirectory(conn, "n1")
    await directory.start()
    own_redis.kill()
    loop = asyncio.get_running_loop()
    for attempt in (conn.execute("PING"), directory.claim(reg("a@example.com", "s1", "n1"))):
        started = loop.time()
        with pytest.raises(RedisUnavailable):
            await attempt
        assert loop.time() - started < 0.5 + scaled(0.1)
    await directory.stop()
    await conn.close()


async def test_a_hung_redis_fails_commands_at_the_timeout_and_recovers(connect: Connections) -> None:
    conn = await connect("victim", timeout=0.3)
    other = await connect("pauser")
    await other.execute("CLIENT", "PAUSE", 800, "ALL")  # every client, for 0.8 s
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RedisUnavailable, match="no reply within 300 ms"):
        await conn.execute("PING")
    assert loop.time() - started < 0.3 + scaled(0.1)
    assert await conn.wait_connected(scaled(3.0))
    assert await conn.execute("PING") == b"PONG"


async def test_restart_is_detected_and_data_loss_reported(own_redis: RedisProcess) -> None:
    conn = RedisConnection(own_redis.host, own_redis.port)
    await conn.connect()
    lost: list[bool] = []
    restarts: list[tuple[str | None, str]] = []
    conn.on_restart(lambda old, new: restarts.append((old, new)))
    directory = RedisDirectory(conn, "n1", on_data_lost=lambda: lost.append(True))
    await directory.start()
    first_run = conn.run_id
    assert await directory.data_lost() is False
    own_redis.restart()
    await until(lambda: lost, scaled(5.0))
    assert restarts == [(first_run, conn.run_id)] and conn.run_id != first_run
    assert await directory.data_lost() is False, "the sentinel is written again"
    assert "n1" in await directory.live_nodes(), "the lease is written again"
    await directory.stop()
    await conn.close()


# --------------------------------------------------------------------------
# Bus


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def __call__(self, batch: list[bytes]) -> None:
        self.messages.extend(batch)


async def _bus(
    conns: Connections | None, node: str, inbox: Inbox, proc: RedisProcess | None = None
) -> RedisBus:
    if conns is not None:
        writer, reader = await conns(f"{node}-w"), await conns(f"{node}-r", timeout=2.0)
    else:
        assert proc is not None
        writer = RedisConnection(proc.host, proc.port, name=f"{node}-w")
        reader = RedisConnection(proc.host, proc.port, name=f"{node}-r", timeout=2.0)
        await writer.connect()
        await reader.connect()
    bus = RedisBus(writer, reader, node, inbox, block_ms=500)
    await bus.start()
    return bus


def deliver(call: str, seq: int) -> bytes:
    return link.encode(link.Deliver(f"s-{call}", msgspec.Raw(b'{"type":"MSG","seq":%d}' % seq)))


async def test_bus_keeps_order_and_loses_nothing_over_10k_messages(connect: Connections) -> None:
    got = Inbox()
    receiver = await _bus(connect, "n2", got)
    one = await _bus(connect, "n1", Inbox())
    three = await _bus(connect, "n3", Inbox())
    n = 10_000
    for i in range(n):
        one.send("n2", deliver("c1" if i % 2 else "c2", i))
        if i % 4 == 0:
            three.send("n2", deliver("c3", i))
        if i % 500 == 0:
            await asyncio.sleep(0)  # several loop passes, several batches
    await until(lambda: len(got.messages) >= n + n // 4, scaled(20.0))
    decoded = [link.decode(m) for m in got.messages]
    assert len(decoded) == n + n // 4
    for call in ("c1", "c2", "c3"):
        seqs = [
            int(bytes(m.frame).split(b":")[-1][:-1])
            for m in decoded
            if isinstance(m, link.Deliver) and m.session == f"s-{call}"
        ]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    assert got.messages[0] == deliver("c2", 0)
    for bus in (receiver, one, three):
        await bus.stop()


async def test_bus_reader_resumes_after_its_connection_is_killed(connect: Connections) -> None:
    got = Inbox()
    receiver = await _bus(connect, "n2", got)
    sender = await _bus(connect, "n1", Inbox())
    admin = await connect("admin")
    for i in range(2000):
        sender.send("n2", deliver("c1", i))
    await until(lambda: len(got.messages) >= 500)
    killed = await admin.execute(
        "CLIENT", "KILL", "ADDR", _addr_of(await admin.execute("CLIENT", "LIST"), "n2-r")
    )
    assert killed == 1
    for i in range(2000, 4000):
        sender.send("n2", deliver("c1", i))
    await until(lambda: len(got.messages) >= 4000, scaled(10.0))
    assert got.messages == [deliver("c1", i) for i in range(4000)], "every message once, in order"
    assert receiver.reader.reconnects >= 1
    await receiver.stop()
    await sender.stop()


def _addr_of(client_list: bytes, name: str) -> str:
    for line in client_list.decode().splitlines():
        fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
        if fields.get("name") == name:
            return fields["addr"]
    raise AssertionError(f"no client named {name}")


async def test_bus_works_again_after_redis_restarts(own_redis: RedisProcess) -> None:
    got = Inbox()
    restarted: list[bool] = []
    receiver = await _bus(None, "n2", got, own_redis)
    receiver.on_restart = lambda: restarted.append(True)
    sender = await _bus(None, "n1", Inbox(), own_redis)
    sender.send("n2", deliver("c1", 0))
    await until(lambda: len(got.messages) == 1)
    own_redis.restart()
    await until(lambda: restarted and sender.writer.connected, scaled(5.0))
    for i in range(1, 101):
        sender.send("n2", deliver("c1", i))
    await until(lambda: len(got.messages) >= 101, scaled(5.0))
    assert got.messages == [deliver("c1", i) for i in range(101)]
    for bus in (receiver, sender):
        await bus.stop()
        await bus.writer.close()
        await bus.reader.close()


def test_the_bus_refuses_a_shared_reader_connection() -> None:
    async def check() -> None:
        conn = RedisConnection("127.0.0.1", 1, timeout=2.0)
        with pytest.raises(ValueError, match="own"):
            RedisBus(conn, conn, "n1", Inbox())
        short = RedisConnection("127.0.0.1", 1, timeout=0.5)
        with pytest.raises(ValueError, match="exceed"):
            RedisBus(conn, short, "n1", Inbox(), block_ms=1000)

    asyncio.run(check())
