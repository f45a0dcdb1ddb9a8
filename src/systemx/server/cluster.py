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

**Redis away.** Every request carries the connection's 500 ms timeout: a
REGISTER then gets ``REGISTER_FAILED unavailable`` and a DIAL of an address not
held here ``BUSY unavailable``; calls between sessions of this node go on.
When Redis is back (or this node's lease was lost, or Redis came back empty),
every session still connected here is claimed again; one whose address another
session took meanwhile is closed (4000 ``address_in_use``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from time import time as _now
from typing import TYPE_CHECKING, Any, NamedTuple

from systemx.protocol.address import address_key
from systemx.protocol.codes import RegisterFailedReason
from systemx.state.ports import PENDING, Claimed, InUse, Pending, Registration
from systemx.state.redis import scripts
from systemx.state.redis.adapter import Later, PendingDirectory
from systemx.state.redis.bus import RedisBus
from systemx.state.redis.conn import RedisConnection, RedisError, RedisUnavailable
from systemx.state.redis.directory import RedisDirectory
from systemx.state.redis.roster import RedisPartyRoster
from systemx.state.redis.url import parse_redis_url

if TYPE_CHECKING:
    from systemx.config import Settings
    from systemx.core.exchange import Exchange
    from systemx.core.session import Session
    from systemx.server.partylinks import PartyLinks

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
        self._head = b""
        self.later: Later | None = None
        self.claims: PendingDirectory | None = None

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
        for task in (self._watcher, self._reclaiming):
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
        self.later.call(self._locate(address_key(address)), lambda answer: self._located(address, answer))

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

    def _located(self, address: str, answer: tuple[str, int] | RedisError | None) -> None:
        exchange = self.exchange
        now = _now()
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
            if frame.startswith(b'{"op"'):
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
        try:
            node, epoch = head.decode().rsplit(" ", 1)
            return self._link(node, int(epoch))
        except (UnicodeDecodeError, ValueError):
            log.warning("Bus message with an unreadable head ignored: %r", head[:100])
            return None

    # ------------------------------------------------------------ liveness

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self._check_nodes()
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

    def _envelope(self, head: bytes, payload: bytes) -> None:
        """A link envelope on the bus (party lines): to :class:`PartyLinks`."""
        if self.parties is None:
            return
        try:
            node, epoch = head.decode().rsplit(" ", 1)
            number = int(epoch)
        except (UnicodeDecodeError, ValueError):
            log.warning("Bus message with an unreadable head ignored: %r", head[:100])
            return
        self.parties.on_envelope(node, number, payload)

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
