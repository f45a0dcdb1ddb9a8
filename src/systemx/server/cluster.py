"""This process as one node of a cluster: exchanges that share one address space through Redis.

With ``SYSTEMX_REDIS_URL`` set, :class:`Cluster` joins the node to the cluster
and gives the core three things:

* **the directory** (:class:`~systemx.state.redis.directory.RedisDirectory`
  behind the core's ``Directory`` port): a REGISTER is an atomic claim in
  Redis, fenced by this node's lease and per-boot epoch, so of any number of
  racing REGISTERs of one address on any nodes exactly one wins; the answer
  comes back later as ``Exchange.on_claimed_id``. Releasing deletes only the
  claim this node made.
* **lookups**: a DIAL of an address not held here asks the directory which
  node holds it (``Exchange.on_located``). A holder on a node whose lease is
  gone counts as nobody.
* **node links**: a call between parties on two nodes is two legs, one per
  node, joined by a link that carries the frames a federation trunk carries
  (DIAL_FORWARD, RING, ANSWER, MSG, HANGUP, BUSY) over the Redis bus
  (:class:`~systemx.state.redis.bus.RedisBus`: one inbox stream per node). Each
  message on the bus is ``"<node> <epoch>\\n"`` and the frame; the receiving
  node feeds the frame to the link's session as the trunk's frames are fed.
  Order holds per (call, direction): one writer connection per node, one
  stream per receiving node. A call whose parties share a node never touches
  Redis per MSG: its routes are the local sockets.

**Liveness.** Every ``min(1 s, ttl / 5)`` the node reads the live leases. A
linked node whose lease is gone, or came back with another epoch (it
restarted), is dead: its link closes, so every call with a party there ends
(HANGUP ``peer_disconnected`` to a connected party, BUSY ``unavailable`` to a
ringing caller), and its addresses are freed in bounded batches under the
janitor lock (one node sweeps at a time). A killed node's addresses are thus
free within ``SYSTEMX_NODE_TTL_MS`` plus one poll.

**Party lines** span nodes too (:mod:`systemx.server.partylinks`): the
roster of each line is in Redis, a JOIN is checked and answered from it, and a
PARTY_MSG goes once to each other node holding members, as a
:class:`~systemx.protocol.link.PartyDeliver` on the bus. A bus payload that
starts with ``{"op"`` is such a link envelope; anything else is a node link's
trunk frame. A dead node's members leave (``PARTY_LEFT disconnected``) with the
same poll that ends its calls.

**Wake-on-ring.** Wake profiles live in Redis
(:class:`~systemx.state.redis.profiles.RedisProfileStore`). Each node loads them
all at start and keeps them current from the ``profile`` link messages a node
sends every other node when it stores or deletes one, so any node can take a
DIAL for a sleeping address. Such a DIAL first asks the directory whether the
address is awake on some node (the caller hears RINGING once it is known:
``waking`` or not); if asleep, the node takes the address's wake lock
(``wake.lua``, which also refuses when the address is claimed): of any number
of nodes holding calls for it, the one that wins runs the wake handler, the
others only hold their calls. When the agent registers, on any node, that node
sends ``woken`` to every node, and each sends the calls it holds over its link
to that node, where they ring. A failed wake is sent as ``wakefail``, so every
node answers its callers the same BUSY; a wake timeout runs on each node as in
one process. The lock lives for the wake timeout and is released as soon as the
wake is over.

**Redis away.** Every request carries the connection's 500 ms timeout: a
REGISTER then gets ``REGISTER_FAILED unavailable`` and a DIAL of an address not
held here ``BUSY unavailable``; calls between sessions of this node go on.
When Redis is back (or this node's lease was lost, or Redis came back empty),
every session still connected here is claimed again; one whose address another
session took meanwhile is closed (4000 ``address_in_use``), and the wake profiles
this node knows are put back.

**Presence** (:class:`~systemx.state.redis.presence.RedisPresence`): the node's
registry writes its presence entries to memory and, coalesced once per loop
pass, to the node's hash ``sx:p:{N}`` and change stream ``sx:pc:{N}``; a
PRESENCE reads what changed on every live node since this node last read, and
is answered from this node's replica of the cluster's entries
(``Exchange.on_presence_gathered``). A dead node's keys are deleted when it is
swept; when Redis lost this node's entries (data lost, a write not confirmed)
the node writes them anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Callable
from time import time as _now
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec

from systemx.core.actions import WakeProfile, WakeRequest
from systemx.core.wakepolicy import wake_timeout
from systemx.protocol import link as envelopes
from systemx.protocol.address import address_key, is_valid_address
from systemx.protocol.codes import BusyReason, RegisterFailedReason
from systemx.state.ports import PENDING, Claimed, InUse, Pending, Registration
from systemx.state.redis import scripts
from systemx.state.redis.adapter import Later, PendingDirectory
from systemx.state.redis.bus import RedisBus
from systemx.state.redis.conn import RedisConnection, RedisError, RedisUnavailable
from systemx.state.redis.directory import RedisDirectory
from systemx.state.redis.presence import RedisPresence
from systemx.state.redis.profiles import RedisProfileStore
from systemx.state.redis.roster import RedisPartyRoster
from systemx.state.redis.url import parse_redis_url

if TYPE_CHECKING:
    from systemx.config import Settings
    from systemx.core.config import CoreConfig
    from systemx.core.exchange import Exchange
    from systemx.core.session import Session
    from systemx.server.partylinks import PartyLinks
    from systemx.state.presence import PresenceIndex

__all__ = ["Cluster", "NodeEndpoint", "default_node_id"]

log = logging.getLogger("systemx.cluster")

# Redis commands that stay unanswered this long fail (the documented 500 ms bound).
COMMAND_TIMEOUT = 0.5
# How long the bus reader blocks in XREAD before asking again.
BUS_BLOCK_MS = 1000
# How long a start waits for Redis before giving up.
START_TIMEOUT = 10.0


def default_node_id(port: int) -> str:
    """``host-port-random``: unique per process, readable in logs and ``CLIENT LIST``."""
    host = socket.gethostname().split(".")[0] or "node"
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in host)[:48]
    return f"{host}-{port}-{secrets.token_hex(3)}"


class NodeEndpoint:
    """The far end of a node link: frames sent to it go to that node's inbox.

    The frames of one loop pass go as one bus entry (one XADD), in order.
    """

    __slots__ = ("_bus", "_call_soon", "_head", "_pending", "node")

    def __init__(self, bus: RedisBus, node: str, head: bytes) -> None:
        self._bus = bus
        self.node = node
        self._head = head
        self._pending: list[bytes] = []
        self._call_soon = asyncio.get_running_loop().call_soon

    def __repr__(self) -> str:
        return f"<node link {self.node}>"

    def send(self, data: bytes) -> None:
        pending = self._pending
        if not pending:
            self._call_soon(self._flush)
        pending.append(self._head + data)

    def _flush(self) -> None:
        pending = self._pending
        self._pending = []
        if len(pending) == 1:
            self._bus.send(self.node, pending[0])
        elif pending:
            self._bus.send_many(self.node, pending)

    def close(self, code: int, reason: str) -> None:
        # A node link ends when the node's lease does, never by a close from the core.
        log.debug("Close of the link to %s ignored (%d %s)", self.node, code, reason)


class _Limited(NamedTuple):
    retry_after_ms: int
    limit: int


class _Link:
    __slots__ = ("epoch", "node", "session")

    def __init__(self, node: str, epoch: int, session: Session) -> None:
        self.node = node
        self.epoch = epoch
        self.session = session


class Cluster:
    """This node's membership of the cluster (see the module docstring)."""

    def __init__(self, settings: Settings, node_id: str) -> None:
        self.settings = settings
        self.node_id = node_id
        self.address = parse_redis_url(settings.redis_url)
        self.ttl_ms = settings.node_ttl_ms
        self.poll = min(1.0, self.ttl_ms / 5000)
        self.epoch = 0
        self._exchange: Exchange | None = None
        self._links: dict[str, _Link] = {}
        # "<node> <epoch>" -> the link's session: the per-frame lookup of the bus.
        self._by_head: dict[bytes, Session] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._reclaiming: asyncio.Task[None] | None = None
        self._stopped = False
        self._redis_down = False
        self._published_routes: tuple[str, ...] = ()
        self._cluster_routes: dict[str, tuple[str, ...]] = {}
        #: Frames from nodes the cluster knows to be gone (dropped).
        self.stale_frames = 0
        addr = self.address
        self.cmd = RedisConnection(
            addr.host,
            addr.port,
            name=f"systemx:{node_id}",
            db=addr.db,
            username=addr.username,
            password=addr.password,
            timeout=COMMAND_TIMEOUT,
        )
        self.reader = RedisConnection(
            addr.host,
            addr.port,
            name=f"systemx:{node_id}:bus",
            db=addr.db,
            username=addr.username,
            password=addr.password,
            timeout=BUS_BLOCK_MS / 1000 + COMMAND_TIMEOUT,
        )
        self.directory = RedisDirectory(
            self.cmd,
            node_id,
            ttl_ms=self.ttl_ms,
            on_lease_lost=self._reclaim_soon,
            on_data_lost=self._reclaim_soon,
        )
        self.bus = RedisBus(self.cmd, self.reader, node_id, self._deliver, block_ms=BUS_BLOCK_MS)
        self.roster = RedisPartyRoster(self.cmd, keys=self.directory.keys)
        #: The party lines' side of this node (made by :meth:`attach`).
        self.parties: PartyLinks | None = None
        #: Wake profiles, shared by every node.
        self.profiles = RedisProfileStore(self.cmd, keys=self.directory.keys)
        # address key -> the token of the wake lock this node holds (it runs that wake).
        self._wake_tokens: dict[str, str] = {}
        self._core_config: CoreConfig | None = None
        # Wake link messages to every other node, in order, and the task sending them.
        self._outbox: list[bytes] = []
        self._sending: asyncio.Task[None] | None = None
        #: Wakes this node ran (it won the lock) / left to another node (lost it).
        self.wakes_run = 0
        self.wakes_left = 0
        self._head = b""
        self.later: Later | None = None
        self.claims: PendingDirectory | None = None
        #: This node's presence index, mirrored in Redis; set by :meth:`start`.
        self.presence: RedisPresence | None = None

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Connect to Redis (waiting up to 10 s for it), take an epoch and a lease, open the inbox."""
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        for conn in (self.cmd, self.reader):
            while True:
                try:
                    await conn.connect()
                    break
                except RedisUnavailable as exc:
                    if asyncio.get_running_loop().time() >= deadline:
                        raise RedisUnavailable(
                            f"cannot reach Redis at {self.address} (SYSTEMX_REDIS_URL): {exc}"
                        ) from None
                    await asyncio.sleep(0.25)
        self.epoch = await self.directory.start()
        self._head = f"{self.node_id} {self.epoch}\n".encode()
        await self._parties_start()
        await self.bus.start()
        self.later = Later()
        self.claims = PendingDirectory(self.directory, self.later, self._claimed, self._looked_up)
        if self.settings.cluster_register_limit > 0:
            self.claims.claim = self._claim_limited  # type: ignore[method-assign]
        await self._presence_start()
        log.info(
            "Cluster node %s (epoch %d) on %s, node TTL %d ms",
            self.node_id,
            self.epoch,
            self.address,
            self.ttl_ms,
            extra={"node": self.node_id, "epoch": self.epoch},
        )

    def attach(self, exchange: Exchange) -> None:
        """Give the node its exchange and start watching the other nodes."""
        self._exchange = exchange
        exchange.book.node_id = self.node_id
        self._parties_attach(exchange)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Leave the cluster: stop watching, deliver what is queued, drop the lease and the claims."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._watcher, self._reclaiming, self._sending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.later is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.later.drain(), 1.0)
        with contextlib.suppress(RedisError):
            if self._published_routes:
                await self.cmd.execute("HDEL", self.directory.keys.prefix + ":routes", self.node_id)
            # Answered after every frame queued before it: the HANGUPs of the shutdown are out.
            await self.cmd.execute("PING")
        await self._presence_stop()
        await self.bus.stop()
        await self.directory.stop()
        await self.cmd.close()
        await self.reader.close()
        log.info("Cluster node %s left the cluster", self.node_id)

    @property
    def exchange(self) -> Exchange:
        if self._exchange is None:
            raise RuntimeError("cluster not attached")
        return self._exchange

    def health(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "epoch": self.epoch,
            "redis": "up" if self.cmd.connected else "down",
            "links": sorted(self._links),
            "stale_frames": self.stale_frames,
            **({"parties": self.parties.health()} if self.parties is not None else {}),
        }

    # ------------------------------------------------------------ directory

    def _claim_limited(self, reg: Registration) -> Pending:
        """A claim counted against the address's cluster-wide REGISTER limit first."""
        assert self.later is not None
        self.later.call(self._limit_then_claim(reg), lambda answer: self._claimed(reg, answer))
        return PENDING

    async def _limit_then_claim(self, reg: Registration) -> Claimed | InUse | _Limited:
        limit = self.settings.cluster_register_limit
        answer = await scripts.bucket(
            self.cmd, self.directory.keys.bucket("register:" + reg.key), rate=limit / 60.0, burst=limit
        )
        if not answer.allowed:
            return _Limited(answer.retry_after_ms, limit)
        return await self.directory.claim(reg)

    def _claimed(self, reg: Registration, answer: Claimed | InUse | _Limited | RedisError) -> None:
        if isinstance(answer, _Limited):
            log.warning(
                "REGISTER %s refused: more than %d a minute across the cluster", reg.address, answer.limit
            )
            self.exchange.on_claim_refused(
                reg.session_id,
                RegisterFailedReason.RATE_LIMITED,
                f"Too many REGISTERs of this address across the cluster: at most {answer.limit} "
                f"a minute; retry in {answer.retry_after_ms} ms",
                _now(),
            )
            return
        if isinstance(answer, RedisError):
            log.warning("REGISTER %s: the directory did not answer: %s", reg.address, answer)
            self.exchange.on_claimed_id(reg.session_id, None, _now())
            return
        self.exchange.on_claimed_id(reg.session_id, answer, _now())

    def _looked_up(self, key: str, answer: Registration | RedisError | None) -> None:
        # Unused: lookups go through :meth:`lookup`, which checks the holder's lease.
        pass

    def lookup(self, address: str) -> None:
        """Ask which node holds ``address``; the answer goes to ``Exchange.on_located``."""
        assert self.later is not None
        self.later.call(self._locate_any(address_key(address)), lambda answer: self._located(address, answer))

    async def _locate(self, key: str) -> tuple[str, int] | None:
        keys = self.directory.keys
        node, nepoch = await self.cmd.execute("HMGET", keys.address(key), "node", "nepoch")
        if node is None:
            return None
        name = node.decode()
        if name == self.node_id:
            return name, self.epoch
        lease = await self.cmd.execute("HGET", keys.node(name), "epoch")
        if lease is None or lease != nepoch:
            return None  # its node is gone: the claim waits for the sweep
        return name, int(lease)

    def _located(self, address: str, answer: tuple[str, int] | WakeProfile | RedisError | None) -> None:
        exchange = self.exchange
        now = _now()
        if isinstance(answer, WakeProfile):
            # A sleeper this node had not heard of (a message lost with Redis): known from
            # now on, told to the other nodes (which may lack it too), and woken.
            exchange.wake.load(answer)
            self._send_all(envelopes.ProfileSet(key=address_key(address), profile=answer.stored()))
            answer = None
        if isinstance(answer, RedisError):
            log.warning("DIAL %s: the directory did not answer: %s", address, answer)
            exchange.on_located(address, None, now, failed=True)
            return
        if answer is None:
            exchange.on_located(address, None, now)
            return
        node, epoch = answer
        if node != self.node_id:
            self._link(node, epoch)
        exchange.on_located(address, node, now)

    # ------------------------------------------------------------ node links

    def _link(self, node: str, epoch: int) -> Session | None:
        """The session of the link to ``node`` at ``epoch`` (opened now if new); None if stale."""
        link = self._links.get(node)
        if link is not None:
            if link.epoch == epoch:
                return link.session
            if epoch < link.epoch:
                return None
            log.warning("Cluster node %s restarted (epoch %d -> %d)", node, link.epoch, epoch)
            self._unlink(node)
        endpoint = NodeEndpoint(self.bus, node, self._head)
        session = self.exchange.open_node(node, endpoint, _now())
        self._links[node] = _Link(node, epoch, session)
        self._by_head[f"{node} {epoch}".encode()] = session
        log.info("Linked to cluster node %s (epoch %d)", node, epoch)
        return session

    def _unlink(self, node: str) -> None:
        link = self._links.pop(node, None)
        if link is None:
            return
        self._by_head.pop(f"{node} {link.epoch}".encode(), None)
        self.exchange.on_close(link.session, _now())
        self.exchange.wake.node_gone(node)  # its wake-on-ring agents sleep

    def _deliver(self, batch: list[bytes]) -> None:
        """Frames from other nodes, in inbox order: each to its link's session."""
        exchange = self._exchange
        if exchange is None:
            return
        now = _now()
        by_head = self._by_head
        on_data = exchange.on_data
        for message in batch:
            head, _, frame = message.partition(b"\n")
            if frame[:5] == b'{"op"':
                self._envelope(head, frame)
                continue
            session = by_head.get(head)
            if session is None:
                session = self._link_from(head)
                if session is None:
                    self.stale_frames += 1
                    continue
            on_data(session, frame, now)

    def _link_from(self, head: bytes) -> Session | None:
        sender = _sender(head)
        return None if sender is None else self._link(*sender)

    # ------------------------------------------------------------ liveness

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self._check_nodes()
                await self._presence_repair()
                if self._redis_down:
                    self._redis_down = False
                    log.warning("Redis is reachable again: claiming this node's addresses again")
                    self._reclaim_soon()
            except RedisError as exc:
                if not self._redis_down:
                    self._redis_down = True
                    log.error("Redis unreachable (%s): registrations and calls across nodes wait for it", exc)
            except Exception:
                log.exception("Cluster watch failed")

    async def _check_nodes(self) -> None:
        mark = self.parties.mark() if self.parties is not None else 0
        alive = await self.directory.live_nodes()
        await self._share_routes(alive)
        self._parties_check(alive, mark)
        for node, link in list(self._links.items()):
            epoch = alive.get(node)
            if epoch != link.epoch:
                log.warning(
                    "Cluster node %s is gone (lease %s)", node, "expired" if epoch is None else "renewed"
                )
                self._unlink(node)
        for node in await self.directory.dead_nodes():
            if node == self.node_id:
                continue
            await self._parties_sweep(node)
            await self._presence_drop(node)
            freed = await self.directory.sweep_dead(node)
            if freed:
                log.info("Freed %d address(es) of dead node %s", freed, node)

    # ------------------------------------------------------------ trunk routes

    async def _share_routes(self, alive: dict[str, int]) -> None:
        """Publish this node's trunk routes; learn the other live nodes'.

        A trunk held by one node serves DIALs from every node: a node whose own
        trunks do not route an address sends the dial to the node whose trunk
        does, which relays it (``Trunks.dial_cluster``). Routes reach the other
        nodes within one poll.
        """
        exchange = self.exchange
        key = self.directory.keys.prefix + ":routes"
        mine = exchange.trunks.local_routes()
        if mine != self._published_routes:
            if mine:
                await self.cmd.execute("HSET", key, self.node_id, "\n".join(mine))
            else:
                await self.cmd.execute("HDEL", key, self.node_id)
            self._published_routes = mine
        table: dict[str, tuple[str, ...]] = {}
        reply = await self.cmd.execute("HGETALL", key)
        for name, blob in zip(reply[::2], reply[1::2], strict=True):
            node = name.decode()
            if node == self.node_id or node not in alive:
                continue
            routes = tuple(r for r in blob.decode().split("\n") if r)
            if routes and self._link(node, alive[node]) is not None:
                table[node] = routes
        if table != self._cluster_routes:
            self._cluster_routes = table
            exchange.trunks.set_cluster_routes(table)
            shown = "; ".join(f"{n}: {', '.join(r)}" for n, r in sorted(table.items())) or "none"
            log.info("Trunk routes of other nodes: %s", shown)

    # ------------------------------------------------------------ party lines

    async def _parties_start(self) -> None:
        """Remove this node's party members of an earlier run (they went with it) from the roster."""
        removed = await self.roster.drop_node(self.node_id)
        if removed:
            log.info("Removed %d party member(s) of this node's earlier run", removed)

    def _parties_attach(self, exchange: Exchange) -> None:
        from systemx.server.partylinks import PartyLinks

        assert self.later is not None
        self.parties = PartyLinks(
            exchange.lines,
            self.roster,
            self.later,
            self.bus,
            self.directory.keys,
            self.node_id,
            self.epoch,
            self.settings.party_max_participants,
        )
        exchange.lines.links = self.parties

    def _party_envelope(self, head: bytes, payload: bytes) -> None:
        """A link envelope on the bus (party lines): to :class:`PartyLinks`."""
        if self.parties is None:
            return
        sender = _sender(head)
        if sender is not None:
            self.parties.on_envelope(*sender, payload)

    def _parties_check(self, alive: dict[str, int], mark: int) -> None:
        if self.parties is not None:
            self.parties.check(alive, mark)

    async def _parties_sweep(self, node: str) -> None:
        if self.parties is not None:
            await self.parties.drop_node(node)

    # ------------------------------------------------------------ re-claiming

    def _reclaim_soon(self) -> None:
        if self._stopped or self._exchange is None:
            return
        if self._reclaiming is None or self._reclaiming.done():
            self._reclaiming = asyncio.get_running_loop().create_task(self._reclaim())

    async def _reclaim(self) -> None:
        """Claim every address bound here again (Redis lost them, or this node's lease lapsed)."""
        exchange = self.exchange
        try:
            # The lease first: a claim of a node without one may be taken over by any node.
            await self.directory.renew()
        except RedisError as exc:
            log.warning("Re-claiming waits for Redis: %s", exc)
            self._redis_down = True
            return
        await self._presence_republish()
        regs = exchange.registry.registrations()
        lost = 0
        for s, reg in regs:
            try:
                answer = await self.directory.claim(reg)
            except RedisError as exc:
                log.warning("Re-claiming %s failed: %s; retried when Redis answers", reg.address, exc)
                self._redis_down = True
                return
            if isinstance(answer, InUse) and s.key == reg.key and not s.closed:
                lost += 1
                exchange.evict(s, _now())
        log.info("Claimed %d address(es) again; %d taken meanwhile by other sessions", len(regs) - lost, lost)
        await self._restore_profiles()

    # ------------------------------------------------------------ wake-on-ring

    async def load_profiles(self) -> dict[str, WakeProfile]:
        """Every wake profile of the cluster, by address key (read once, at start)."""
        profiles: dict[str, WakeProfile] = {}
        for key, doc in (await self.profiles.load_all()).items():
            try:
                profiles[key] = msgspec.convert(doc, WakeProfile)
            except msgspec.ValidationError as exc:
                log.error("Skipping unreadable wake profile of %s in Redis: %s", key, exc)
        if profiles:
            log.info("Loaded %d wake profile(s) from Redis", len(profiles))
        return profiles

    async def _locate_any(self, key: str) -> tuple[str, int] | WakeProfile | None:
        """:meth:`_locate`; with no holder, the sleeper's profile if Redis has one this node lacks."""
        found = await self._locate(key)
        if found is not None or self.exchange.wake.has_profile(key):
            return found
        doc = await self.cmd.execute("GET", self.directory.keys.sleeper(key))
        if doc is None:
            return None
        try:
            return msgspec.json.decode(doc, type=WakeProfile)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("Skipping unreadable wake profile of %s in Redis: %s", key, exc)
            return None

    def persist_profile(self, key: str, profile: WakeProfile | None) -> None:
        """Store (``None``: delete) ``key``'s profile in Redis and tell every other node."""
        assert self.later is not None
        doc = None if profile is None else profile.stored()
        self.later.call(self._persist(key, doc), lambda answer: self._persisted(key, answer))
        # Sent now, so that it goes before the ``woken`` of the REGISTER that set it.
        self._send_all(envelopes.ProfileSet(key=key, profile=doc))

    async def _persist(self, key: str, doc: dict[str, Any] | None) -> None:
        if doc is None:
            await self.profiles.delete(key)
        else:
            await self.profiles.put(key, doc)

    def _persisted(self, key: str, answer: RedisError | None) -> None:
        if isinstance(answer, RedisError):
            log.warning("Wake profile of %s not stored in Redis (%s): put back when it answers", key, answer)

    async def _restore_profiles(self) -> None:
        """Put every profile this node knows back in Redis (it lost them, or missed a write)."""
        profiles = self.exchange.profiles()
        if not profiles:
            return
        try:
            await asyncio.gather(*(self.profiles.put(key, p.stored()) for key, p in profiles.items()))
        except RedisError as exc:
            log.warning("Putting the wake profiles back failed: %s; retried when Redis answers", exc)
            self._redis_down = True
            return
        log.info("Put %d wake profile(s) back in Redis", len(profiles))

    def _send_all(self, message: envelopes.LinkMessage) -> None:
        """Send a link message to every other live node, after those sent before it."""
        self._outbox.append(envelopes.encode(message))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._drain_outbox())

    async def _drain_outbox(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox, []
            try:
                alive = await self.directory.live_nodes()
            except RedisError as exc:
                log.warning("%d wake message(s) to the other nodes not sent: %s", len(batch), exc)
                continue
            for node in alive:
                if node != self.node_id:
                    for data in batch:
                        self.bus.send(node, self._head + data)

    def wake(self, request: WakeRequest, run: Callable[[WakeRequest], None]) -> None:
        """Wake ``request.address`` if this node wins its wake lock (``run`` runs the handler).

        Lost: another node's wake is under way; the calls held here wait for its
        ``woken`` (or ``wakefail``), or their own wake timeout. Awake on a node
        after all: the calls go there.
        """
        assert self.later is not None
        key = address_key(request.address)
        token = f"{request.call_id}@{self.node_id}"
        if self._core_config is None:
            self._core_config = self.settings.core_config()
        ttl_ms = max(int(wake_timeout(request.handler, self._core_config) * 1000), 100)
        self.later.call(
            self._take_wake(key, token, ttl_ms),
            lambda answer: self._wake_taken(request, key, token, answer, run),
        )

    async def _take_wake(self, key: str, token: str, ttl_ms: int) -> tuple[str, str, int]:
        """``("won"|"held"|"awake"|"none", holder token or node, node epoch)``."""
        answer = await self.profiles.wake(key, token, ttl_ms, unless_claimed=True)
        if answer.node is not None:
            node = answer.node.decode()
            lease = await self.cmd.execute("HGET", self.directory.keys.node(node), "epoch")
            if lease is not None and lease == answer.nepoch:
                return "awake", node, int(lease)
            # Claimed by a node that is gone: the claim waits for the sweep; wake it.
            answer = await self.profiles.wake(key, token, ttl_ms)
        if answer.won:
            return "won", "", 0
        if answer.holder is not None:
            return "held", answer.holder.decode(errors="replace"), 0
        return "none", "", 0

    def _wake_taken(
        self,
        request: WakeRequest,
        key: str,
        token: str,
        answer: tuple[str, str, int] | RedisError,
        run: Callable[[WakeRequest], None],
    ) -> None:
        exchange = self.exchange
        address = request.address
        if isinstance(answer, RedisError):
            log.warning("Wake of %s: the cluster's wake lock did not answer: %s", address, answer)
            exchange.on_wake_failed(address, f"the cluster's wake lock cannot be taken: {answer}", _now())
            return
        what, who, epoch = answer
        if what == "won":
            if not exchange.wake.is_waking(key):
                # Over meanwhile (the agent registered, or the wake timed out).
                self._unlock(key, token)
                return
            self._wake_tokens[key] = token
            self.wakes_run += 1
            run(request)
        elif what == "held":
            self.wakes_left += 1
            log.info("Wake of %s already under way (%s): the calls here wait for it", address, who)
        elif what == "awake":
            if who != self.node_id and self._link(who, epoch) is not None:
                exchange.on_woken(address, who, _now())
            # Claimed here: the REGISTER completing now rings the calls.
        else:
            exchange.on_wake_failed(address, "the address has no wake profile in the cluster", _now())

    def _unlock(self, key: str, token: str) -> None:
        assert self.later is not None
        self.later.call(self.profiles.wake_done(key, token), lambda answer: None)

    def wake_over(self, address: str) -> None:
        """The wake of ``address`` ended here (registered, timed out, failed): release its lock."""
        if not is_valid_address(address):
            return
        key = address_key(address)
        token = self._wake_tokens.pop(key, None)
        if token is not None:
            self._unlock(key, token)

    def wake_failed(self, address: str, detail: str) -> None:
        """The wake this node ran failed: the other nodes fail the calls they hold for it too."""
        self.wake_over(address)
        if is_valid_address(address):
            ended = envelopes.WakeEnded(address=address, reason=BusyReason.WAKE_FAILED, detail=detail[:256])
            self._send_all(ended)

    def woke(self, address: str) -> None:
        """``address`` (with a wake profile) registered here: the other nodes send its held calls."""
        self._send_all(envelopes.Woken(address=address))

    def slept(self, address: str) -> None:
        """``address`` (with a wake profile) went to sleep here: the other nodes show it asleep."""
        self._send_all(envelopes.Slept(address=address))

    def _envelope(self, head: bytes, frame: bytes) -> None:
        """A link message from another node (not a frame of a node link): party lines or wakes."""
        if frame.startswith(b'{"op":"party'):
            self._party_envelope(head, frame)
        else:
            self._wake_envelope(head, frame)

    def _wake_envelope(self, head: bytes, frame: bytes) -> None:
        """A wake link message: a profile stored or deleted, an agent woken or asleep, a failed wake."""
        try:
            message = envelopes.decode(frame)
        except envelopes.InvalidLinkMessage as exc:
            log.warning("Unreadable link message from %r ignored: %s", head[:100], exc.detail)
            return
        exchange = self.exchange
        if type(message) is envelopes.ProfileSet:
            if message.profile is None:
                exchange.wake.forget(message.key)
                return
            try:
                profile = msgspec.convert(message.profile, WakeProfile)
            except msgspec.ValidationError as exc:
                log.warning("Unreadable wake profile of %s from %r ignored: %s", message.key, head[:100], exc)
                return
            exchange.wake.load(profile)
            holder = exchange.session_for(profile.address)
            if holder is not None and not holder.remote:
                # Registered here before this node heard of its profile: calls may wait for it.
                self.woke(profile.address)
        elif type(message) is envelopes.Woken:
            if not is_valid_address(message.address):
                return
            sender = _sender(head)
            if sender is not None and self._link(*sender) is not None:
                exchange.on_woken(message.address, sender[0], _now())
        elif type(message) is envelopes.Slept:
            if is_valid_address(message.address):
                exchange.wake.awake_elsewhere(address_key(message.address), None)
        elif type(message) is envelopes.WakeEnded:
            exchange.on_wake_failed(message.address, message.detail, _now())
        else:
            log.debug("Link message %s from %r ignored", type(message).__name__, head[:100])

    # ------------------------------------------------------------ presence

    async def _presence_start(self) -> None:
        assert self.later is not None
        self.presence = RedisPresence(
            self.cmd,
            self.node_id,
            self.later,
            self._presence_gathered,
            status_delay=self.settings.presence_status_delay_ms / 1000,
        )
        await self.presence.clear()  # entries of an earlier run of this node

    async def _presence_stop(self) -> None:
        if self.presence is not None:
            with contextlib.suppress(RedisError):
                await self.presence.leave()

    def _presence_gathered(self, tickets: list[int], index: PresenceIndex | None) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        now = _now()
        for ticket in tickets:
            exchange.on_presence_gathered(ticket, index, now)

    async def _presence_drop(self, node: str) -> None:
        """A dead node's presence goes with it (before its addresses are swept)."""
        if self.presence is not None and await self.presence.drop_node(node):
            log.info("Dropped the presence of dead node %s", node)

    async def _presence_repair(self) -> None:
        """A flush Redis did not confirm: write this node's presence again."""
        if self.presence is not None and self.presence.lost:
            await self.presence.republish()

    async def _presence_republish(self) -> None:
        if self.presence is None:
            return
        try:
            await self.presence.republish()
        except RedisError as exc:
            log.warning("Writing this node's presence again failed: %s; retried when Redis answers", exc)


def _sender(head: bytes) -> tuple[str, int] | None:
    """The ``(node, epoch)`` a bus message's head names; None (logged) if unreadable."""
    try:
        node, epoch = head.decode().rsplit(" ", 1)
        return node, int(epoch)
    except (UnicodeDecodeError, ValueError):
        log.warning("Bus message with an unreadable head ignored: %r", head[:100])
        return None
