"""Presence over a cluster: each node mirrors its entries into Redis, a query reads every node's.

:class:`RedisPresence` is the :class:`~systemx.state.presence.PresenceIndex`
the registry of a cluster node writes. It keeps the node's own entries in a
:class:`~systemx.state.presence.MemoryPresenceIndex`, as a single process does,
and mirrors them into one Redis hash per node, ``sx:p:{N}``:

=================  ==========================================================
field              value
=================  ==========================================================
``m:<key>``        msgpack ``[address, domain, capabilities, lat, lon,
                   metadata, t]``: what the entry shows and filters on
``s:<key>``        its status
=================  ==========================================================

``t`` is the entry's registration time (µs since the epoch, strictly
increasing on one node), which orders entries across nodes as the sequence
number orders them in one index: a re-put keeps it, a remove then a put takes a
new one. The status has a field of its own because it changes four times per
call (both parties go ``busy`` and back), and rewriting the metadata each time
would cost the bytes of the metadata.

**Writes are coalesced per loop pass.** ``put``, ``set_status`` and ``remove``
update the memory index at once and mark the key dirty; the first mark of a pass
schedules one flush (``call_soon``) that sends at most one ``HDEL`` and one
``HSET`` carrying every field that changed, corked with whatever else the pass
sends on the connection. Each key's fields change in one command, so a reader
never sees an entry half written. Nothing here runs per MSG. A flush Redis did
not confirm marks the mirror *lost*; :meth:`RedisPresence.republish` (run by the
cluster when Redis answers again, when its data was lost, and after a lost
flush) rewrites the whole hash: ``DEL`` and ``HSET`` in batches of 1000 entries.

**Queries read every live node.** :meth:`RedisPresence.gather` takes a ticket
and answers it later through ``deliver(tickets, index)``: one ``ZRANGE`` of the
node set, then, in one pipeline, ``EXISTS`` of each other node's lease and
``HGETALL`` of its hash; a node without a lease is left out (it is dead and its
hash awaits the sweep). This node's entries come from memory. The entries are
merged in ``(t, node)`` order into a fresh :class:`MemoryPresenceIndex`, so a
cluster query filters, orders and limits exactly as one process does. Tickets
that arrive while a read is under way wait for the next read, which starts when
it ends and serves them all: a node never has more than one read in flight,
however many queries its clients send, and every read starts after the queries
it serves arrived. With Redis out of reach the answer is ``None`` within
500 ms (the caller answers ``ERROR unavailable``).

**Decoding** is cached per node by the bytes of each ``m:`` field: an entry
whose fields did not change since the last read is not decoded again.

**Dead nodes.** :meth:`RedisPresence.drop_node` deletes a node's hash if its
lease is gone (one script call, so a node that restarted meanwhile keeps its
new hash); the cluster calls it for every dead node it sweeps. A node deletes
its own hash when it starts (entries of an earlier run) and when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from operator import itemgetter
from typing import Any

import msgspec

from systemx.state.presence import MemoryPresenceIndex, PresenceIndex, PresenceRow
from systemx.state.redis.adapter import Later
from systemx.state.redis.conn import RedisConnection, RedisError, RedisUnavailable, Script
from systemx.state.redis.keys import Keys

__all__ = ["Merged", "RedisPresence", "RemoteEntry", "merge"]

log = logging.getLogger("systemx.state.redis")

_encode = msgspec.msgpack.Encoder().encode

# Entries per HSET of a full rewrite: bounds one command's size and Redis time.
REPUBLISH_BATCH = 1000
# The documented bound on a query's wait for Redis.
READ_TIMEOUT = 0.5

# KEYS[1] a node's lease, KEYS[2] its presence hash (one slot: the {node} tag).
# Deletes the hash only while the node holds no lease.
DROP = Script(
    "presence_drop",
    "if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('DEL', KEYS[2]) end\nreturn -1\n",
)


class RemoteEntry(msgspec.Struct, array_like=True, frozen=True):
    """One entry as a node's hash holds it (its ``m:`` field); the status is apart."""

    address: str
    domain: str
    capabilities: tuple[str, ...]
    lat: float | None
    lon: float | None
    metadata: dict[str, Any]
    t: int


_decode_entry = msgspec.msgpack.Decoder(RemoteEntry).decode

Merged = tuple[int, str, str, RemoteEntry, str]
"""One entry to merge: ``(t, node, key, entry, status)``."""

_ORDER = itemgetter(0, 1)


def merge(entries: Iterable[Merged]) -> MemoryPresenceIndex:
    """An index of the entries of any number of nodes, in registration order.

    Entries are put in ``(t, node)`` order, so that the index's own order (and
    so its answers) is the cluster's registration order. A key present on two
    nodes (for a moment, while it moves) keeps the later registration.
    """
    index = MemoryPresenceIndex()
    put = index.put
    remove = index.remove
    for _, _, key, e, status in sorted(entries, key=_ORDER):
        if key in index:
            remove(key)
        put(
            key,
            address=e.address,
            domain=e.domain,
            capabilities=e.capabilities,
            lat=e.lat,
            lon=e.lon,
            status=status,
            metadata=e.metadata,
        )
    return index


class _Local:
    """This node's entry as mirrored: the hash's ``m:`` field, and the status."""

    __slots__ = ("blob", "entry", "status")

    def __init__(self, entry: RemoteEntry, status: str) -> None:
        self.entry = entry
        self.blob = _encode(entry)
        self.status = status


class RedisPresence:
    """Node ``node``'s presence index, mirrored on ``conn`` (see the module docstring).

    ``deliver(tickets, index)`` gets the answer of :meth:`gather` for every
    ticket of one read: an index of the whole cluster, or ``None`` when Redis
    did not answer.
    """

    def __init__(
        self,
        conn: RedisConnection,
        node: str,
        later: Later,
        deliver: Callable[[list[int], PresenceIndex | None], None],
        *,
        keys: Keys | None = None,
    ) -> None:
        self.conn = conn
        self.node = node
        self.keys = keys or Keys()
        self.hash = f"{self.keys.prefix}:p:{{{node}}}"
        self._later = later
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._index = MemoryPresenceIndex()
        self._mine: dict[str, _Local] = {}
        # Keys changed since the last flush: True = every field, False = the status only.
        self._dirty: dict[str, bool] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._last_t = 0
        # Tickets waiting for the next read; whether a read is in flight.
        self._waiting: list[int] = []
        self._reading = False
        # Per other node: m: field -> (its bytes, the decoded entry), for entries unchanged since.
        self._seen: dict[str, dict[bytes, tuple[bytes, RemoteEntry]]] = {}
        #: A flush was not confirmed: the hash may be stale until :meth:`republish`.
        self.lost = False
        #: Reads of the cluster done, and fields written (for tests and health).
        self.reads = 0
        self.flushes = 0
        conn.register(DROP)

    # ---------------------------------------------------------------- the port

    def put(
        self,
        key: str,
        *,
        address: str | None = None,
        domain: str,
        capabilities: Iterable[str],
        lat: float | None,
        lon: float | None,
        status: str,
        metadata: dict[str, Any],
    ) -> None:
        caps = tuple(capabilities)
        self._index.put(
            key,
            address=address,
            domain=domain,
            capabilities=caps,
            lat=lat,
            lon=lon,
            status=status,
            metadata=metadata,
        )
        old = self._mine.get(key)
        if old is not None:
            t = old.entry.t
        else:
            t = max(time.time_ns() // 1000, self._last_t + 1)
            self._last_t = t
        entry = RemoteEntry(address or key, domain.lower(), caps, lat, lon, metadata, t)
        self._mine[key] = _Local(entry, status)
        self._mark(key, True)

    def set_status(self, key: str, status: str) -> None:
        mine = self._mine.get(key)
        if mine is not None and mine.status != status:
            mine.status = status
            self._index.set_status(key, status)
            self._mark(key, False)

    def remove(self, key: str) -> None:
        if self._mine.pop(key, None) is not None:
            self._index.remove(key)
            self._mark(key, True)

    def query(
        self,
        *,
        domain: str | None = None,
        capabilities: Sequence[str] | None = None,
        near: tuple[float, float, float] | None = None,
        status: str | None = None,
        exclude: str | None = None,
        limit: int,
    ) -> list[PresenceRow]:
        """This node's entries only (a cluster-wide answer goes through :meth:`gather`)."""
        return self._index.query(
            domain=domain, capabilities=capabilities, near=near, status=status, exclude=exclude, limit=limit
        )

    def __len__(self) -> int:
        return len(self._index)

    # ------------------------------------------------------------------ writes

    def _mark(self, key: str, full: bool) -> None:
        dirty = self._dirty
        dirty[key] = full or dirty.get(key, False)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty, self._dirty = self._dirty, {}
        mine = self._mine
        gone: list[str] = []
        fields: list[str | bytes] = []
        for key, full in dirty.items():
            local = mine.get(key)
            if local is None:
                gone += ("m:" + key, "s:" + key)
            elif full:
                fields += ("m:" + key, local.blob, "s:" + key, local.status)
            else:
                fields += ("s:" + key, local.status)
        conn = self.conn
        if gone:
            conn.execute("HDEL", self.hash, *gone).add_done_callback(self._confirmed)
        if fields:
            conn.execute("HSET", self.hash, *fields).add_done_callback(self._confirmed)
        self.flushes += 1

    def _confirmed(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            if not self.lost:
                log.warning("Presence of node %s not written to Redis; rewritten when it answers", self.node)
            self.lost = True

    async def republish(self) -> None:
        """Write this node's hash again from memory (Redis lost it, or a flush failed)."""
        self.lost = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._dirty.clear()
        conn = self.conn
        last = conn.execute("DEL", self.hash)
        fields: list[str | bytes] = []
        items = list(self._mine.items())
        for i in range(0, len(items), REPUBLISH_BATCH):
            fields.clear()
            for key, local in items[i : i + REPUBLISH_BATCH]:
                fields += ("m:" + key, local.blob, "s:" + key, local.status)
            last.add_done_callback(self._confirmed)
            last = conn.execute("HSET", self.hash, *fields)
        try:
            await last
        except RedisError:
            self.lost = True
            raise
        log.info("Presence of node %s written again: %d entries", self.node, len(items))

    async def clear(self) -> None:
        """Delete this node's hash (it starts, or leaves the cluster)."""
        await self.conn.execute("DEL", self.hash)

    async def drop_node(self, node: str) -> bool:
        """Delete the hash of ``node`` if it holds no lease; whether it was deleted."""
        reply = await self.conn.evalsha(DROP, (self.keys.node(node), f"{self.keys.prefix}:p:{{{node}}}"), ())
        self._seen.pop(node, None)
        return bool(reply == 1)

    # ----------------------------------------------------------------- queries

    def gather(self, ticket: int) -> None:
        """Read the cluster's entries for ``ticket``; the answer goes to ``deliver``."""
        self._waiting.append(ticket)
        if not self._reading:
            self._read_next()

    def _read_next(self) -> None:
        tickets, self._waiting = self._waiting, []
        self._reading = True
        self._later.call(self._read(), lambda answer: self._answer(tickets, answer))

    def _answer(self, tickets: list[int], answer: MemoryPresenceIndex | RedisError) -> None:
        self._reading = False
        try:
            if isinstance(answer, RedisError):
                log.warning("PRESENCE: the cluster's presence could not be read: %s", answer)
                self._deliver(tickets, None)
            else:
                self._deliver(tickets, answer)
        finally:
            if self._waiting:
                self._read_next()

    async def _read(self) -> MemoryPresenceIndex:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                hashes = await self._fetch()
        except TimeoutError:
            raise RedisUnavailable(f"no answer within {READ_TIMEOUT * 1000:.0f} ms") from None
        self.reads += 1
        return merge(self._entries(hashes))

    async def _fetch(self) -> list[tuple[str, Any]]:
        conn, keys = self.conn, self.keys
        names = [n.decode() for n in await conn.execute("ZRANGE", keys.nodes, 0, -1)]
        others = [n for n in names if n != self.node]
        leases = [conn.execute("EXISTS", keys.node(n)) for n in others]
        hashes = [conn.execute("HGETALL", f"{keys.prefix}:p:{{{n}}}") for n in others]
        live: list[tuple[str, Any]] = []
        for node, lease, fields in zip(others, leases, hashes, strict=True):
            if await lease:
                live.append((node, await fields))
            else:
                await fields
        for node in list(self._seen):
            if node not in others:
                del self._seen[node]
        return live

    def _entries(self, hashes: list[tuple[str, Any]]) -> list[Merged]:
        node = self.node
        out = [(local.entry.t, node, key, local.entry, local.status) for key, local in self._mine.items()]
        for other, reply in hashes:
            self._decode_node(other, reply, out)
        return out

    def _decode_node(self, node: str, reply: Any, out: list[Merged]) -> None:
        pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
        statuses: dict[bytes, bytes] = {}
        blobs: list[tuple[bytes, bytes]] = []
        for field, value in pairs:
            if field[:2] == b"s:":
                statuses[field[2:]] = value
            elif field[:2] == b"m:":
                blobs.append((field[2:], value))
        seen = self._seen.get(node, {})
        fresh: dict[bytes, tuple[bytes, RemoteEntry]] = {}
        for key, blob in blobs:
            status = statuses.get(key)
            if status is None:
                continue  # not written whole (cannot happen: one HSET per key's fields)
            cached = seen.get(key)
            if cached is not None and cached[0] == blob:
                entry = cached[1]
            else:
                try:
                    entry = _decode_entry(blob)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("Presence entry %r of node %s unreadable: %s", key, node, exc)
                    continue
            fresh[key] = (blob, entry)
            out.append((entry.t, node, key.decode(), entry, status.decode()))
        self._seen[node] = fresh
