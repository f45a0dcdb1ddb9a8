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

**Redis away.** Every request carries the connection's 500 ms timeout: a
REGISTER then gets ``REGISTER_FAILED unavailable`` and a DIAL of an address not
held here ``BUSY unavailable``; calls between sessions of this node go on.
When Redis is back (or this node's lease was lost, or Redis came back empty),
every session still connected here is claimed again; one whose address another
session took meanwhile is closed (4000 ``address_in_use``).

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
from time import time as _now
from typing import TYPE_CHECKING, Any

from systemx.protocol.address import address_key
from systemx.state.ports import Claimed, InUse, Registration
from systemx.state.redis.adapter import Later, PendingDirectory
from systemx.state.redis.bus import RedisBus
from systemx.state.redis.conn import RedisConnection, RedisError, RedisUnavailable
from systemx.state.redis.directory import RedisDirectory
from systemx.state.redis.presence import RedisPresence
from systemx.state.redis.url import parse_redis_url

if TYPE_CHECKING:
    from systemx.config import Settings
    from systemx.core.exchange import Exchange
    from systemx.core.session import Session
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
    """The far end of a node link: frames sent to it go to that node's inbox."""

    __slots__ = ("_bus", "_head", "node")

    def __init__(self, bus: RedisBus, node: str, head: bytes) -> None:
        self._bus = bus
        self.node = node
        self._head = head

    def __repr__(self) -> str:
        return f"<node link {self.node}>"

    def send(self, data: bytes) -> None:
        self._bus.send(self.node, self._head + data)

    def close(self, code: int, reason: str) -> None:
        # A node link ends when the node's lease does, never by a close from the core.
        log.debug("Close of the link to %s ignored (%d %s)", self.node, code, reason)


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
        await self.bus.start()
        self.later = Later()
        self.claims = PendingDirectory(self.directory, self.later, self._claimed, self._looked_up)
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
        }

    # ------------------------------------------------------------ directory

    def _claimed(self, reg: Registration, answer: Claimed | InUse | RedisError) -> None:
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
        alive = await self.directory.live_nodes()
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
            await self._presence_drop(node)
            freed = await self.directory.sweep_dead(node)
            if freed:
                log.info("Freed %d address(es) of dead node %s", freed, node)

    # ------------------------------------------------------------ re-claiming

    def _reclaim_soon(self) -> None:
        if self._stopped or self._exchange is None:
            return
        if self._reclaiming is None or self._reclaiming.done():
            self._reclaiming = asyncio.get_running_loop().create_task(self._reclaim())

    async def _reclaim(self) -> None:
        """Claim every address bound here again (Redis lost them, or this node's lease lapsed)."""
        exchange = self.exchange
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

    # ------------------------------------------------------------ presence

    async def _presence_start(self) -> None:
        assert self.later is not None
        self.presence = RedisPresence(self.cmd, self.node_id, self.later, self._presence_gathered)
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
