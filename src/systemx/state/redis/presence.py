"""Presence over a cluster: each node mirrors its entries into Redis, a query reads every node's.

:class:`RedisPresence` is the :class:`~systemx.state.presence.PresenceIndex`
the registry of a cluster node writes. It keeps the node's own entries in
memory and mirrors them into Redis, in two keys per node N:

* ``sx:p:{N}`` (HASH): the node's entries. ``m:<key>`` is msgpack ``[address,
  domain, capabilities, lat, lon, metadata, t]``, ``s:<key>`` the status;
  ``g`` is the hash's *generation*, a token written when the node starts or
  writes the hash anew, and ``n`` the number of the last change written;
* ``sx:pc:{N}`` (STREAM, ``MAXLEN ~ 10000``): the node's changes, one entry per
  flush (per 100 keys of a larger flush), numbered from 1 in each generation
  (change n has the id ``1-n``, so a reader can tell whether it missed one),
  whose fields are those the flush wrote (``m:``, ``s:``) and ``d:<key>`` for
  an entry removed.

``t`` is the entry's registration time (µs since the epoch, strictly
increasing on one node), which orders entries across nodes as the sequence
number orders them in one index: a re-put keeps it, a remove then a put takes a
new one. The status has a field of its own because it changes four times per
call (both parties go ``busy`` and back), and rewriting the metadata each time
would cost the bytes of the metadata.

**Writes are coalesced per loop pass.** ``put``, ``set_status`` and ``remove``
update the node's entries in memory at once and mark the key dirty (nothing is
indexed on this path: the replica indexes at its next read); the first mark of
a pass schedules one flush (``call_soon``) that sends at most one ``HDEL``, one
``HSET`` (with ``n``) and one ``XADD`` per 100 keys, carrying every field that
changed, corked with whatever else the pass sends on the connection. Nothing here runs per MSG. A
write Redis did not confirm marks the mirror *lost*;
:meth:`RedisPresence.republish` (run by the cluster when Redis answers again,
when its data was lost, and after a lost write) writes hash and stream anew
under a new generation, ``HSET`` in batches of 1000 entries, the generation last.

**Queries read what changed.** :meth:`RedisPresence.gather` takes a ticket and
answers it later through ``deliver(tickets, index)``. A read is one ``ZRANGE``
of the node set, then one ``presence_read.lua`` call per other node, pipelined:
a node without a lease is left out (it is dead; its keys await the sweep); for a
live one the script returns the changes after the last one this node applied
(``XRANGE``), or tells a reader that is new, has missed a change (trimmed, or
never written), or faces another generation to start over: it then reads the
whole hash (``HGETALL``, pipelined for all such nodes). The reader
applies them to its *replica*: every node's entries, and one
:class:`MemoryPresenceIndex` over them kept in the cluster's registration
order (``(t, node)``), so a cluster query filters, orders and limits exactly as
one process does. Entries arrive in that order nearly always (they are newer
than everything read before); one that does not (it was flushed a pass late)
makes the replica rebuild its index once with :func:`merge`. A read decodes and
indexes in steps of 2000 entries with a pass of the loop between them, so a
large one (a new node reads every whole hash) does not hold up this node's
calls.

Tickets that arrive while a read is under way wait for the next read, which
starts when it ends and serves them all: a node never has more than one read in
flight, however many queries its clients send, and every read starts after the
queries it serves arrived. With Redis out of reach the answer is ``None``
within 500 ms (the caller answers ``ERROR unavailable``): the ``ZRANGE`` has
that bound; the scripts after it, which may carry whole hashes, fail when the
connection has received nothing for 500 ms.

**Dead nodes.** :meth:`RedisPresence.drop_node` deletes a node's keys if its
lease is gone (``presence_drop.lua``, so a node that restarted meanwhile keeps
its new ones); the cluster calls it for every dead node it sweeps. A node
deletes its own keys when it starts (an earlier run's) and when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib.resources import files
from operator import itemgetter
from typing import Any

import msgspec

from systemx.state.presence import MemoryPresenceIndex, PresenceIndex, PresenceRow
from systemx.state.redis.adapter import Later
from systemx.state.redis.conn import RedisConnection, RedisError, RedisUnavailable, ReplyError, Script
from systemx.state.redis.keys import Keys

__all__ = ["Held", "Merged", "RedisPresence", "RemoteEntry", "Replica", "merge"]

log = logging.getLogger("systemx.state.redis")

# Entries per HSET when the hash is written anew: bounds one command's size and Redis time.
REPUBLISH_BATCH = 1000
# The documented bound on a query's wait for Redis.
READ_TIMEOUT = 0.5
# Changes kept per node (approximately): a reader further behind reads the whole hash.
STREAM_MAXLEN = 10_000
# Keys per change: a flush of more (a burst of registrations) is several changes, since
# Redis walks a stream entry's fields to skip it, and a reader's XRANGE may start in one.
CHANGE_KEYS = 100
# More changes than this since a reader's last read: the whole hash is cheaper to send.
MOST_CHANGES = 5_000
# Entries a read decodes or indexes between two passes of the loop: a large first read
# (every node's whole hash) does not hold up the calls of this node.
STEP = 2_000


def _script(name: str) -> Script:
    return Script(name, files("systemx.state.redis.scripts").joinpath(f"{name}.lua").read_text("utf-8"))


READ = _script("presence_read")
DROP = _script("presence_drop")


class RemoteEntry(msgspec.Struct, array_like=True, frozen=True):
    """One entry as a node's hash holds it (its ``m:`` field); the status is apart."""

    address: str
    domain: str
    capabilities: tuple[str, ...]
    lat: float | None
    lon: float | None
    metadata: dict[str, Any]
    t: int


_encode = msgspec.msgpack.Encoder().encode
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
    for _ in _merge_into(index, sorted(entries, key=_ORDER)):
        pass
    return index


def _merge_into(index: MemoryPresenceIndex, ordered: list[Merged]) -> Iterator[None]:
    """Put ``ordered`` into ``index``, pausing (yielding) every :data:`STEP` entries."""
    for i, (_, _, key, e, status) in enumerate(ordered):
        if key in index:
            index.remove(key)
        _put(index, key, e, status)
        if i % STEP == STEP - 1:
            yield


def _put(index: MemoryPresenceIndex, key: str, e: RemoteEntry, status: str) -> None:
    index.put(
        key,
        address=e.address,
        domain=e.domain,
        capabilities=e.capabilities,
        lat=e.lat,
        lon=e.lon,
        status=status,
        metadata=e.metadata,
    )


class Held:
    """One node's entry: its ``m:`` field (bytes and decoded) and its status."""

    __slots__ = ("blob", "entry", "status")

    def __init__(self, entry: RemoteEntry, status: str, blob: bytes | None = None) -> None:
        self.entry = entry
        self.blob = _encode(entry) if blob is None else blob
        self.status = status


class Replica:
    """Every node's entries, and one index over them in the cluster's registration order.

    A node's entries change through :meth:`held` (the node's dict of ``Held``,
    written by the caller) and are noted with :meth:`touch`; :meth:`sync`
    brings the index up to date with every key touched since the last sync.
    """

    def __init__(self) -> None:
        self.index = MemoryPresenceIndex()
        self.nodes: dict[str, dict[str, Held]] = {}
        # Key -> (node, t, entry) of what the index shows for it.
        self._shown: dict[str, tuple[str, int, RemoteEntry]] = {}
        self._touched: set[str] = set()
        self._newest = (-1, "")
        #: Times the index was rebuilt because an entry arrived out of order.
        self.rebuilds = 0

    def held(self, node: str) -> dict[str, Held]:
        entries = self.nodes.get(node)
        if entries is None:
            entries = self.nodes[node] = {}
        return entries

    def touch(self, key: str) -> None:
        self._touched.add(key)

    def forget(self, node: str) -> None:
        """``node`` is gone: its entries leave the index at the next sync."""
        entries = self.nodes.pop(node, None)
        if entries:
            self._touched.update(entries)

    def sync(self) -> None:
        """Bring the index up to date at once."""
        for _ in self.steps():
            pass

    def steps(self) -> Iterator[None]:
        """Bring the index up to date, pausing (yielding) every :data:`STEP` keys.

        Between two steps the caller may run the loop: keys touched meanwhile
        wait for the next sync, and the index is read only once this one is done.
        """
        touched, self._touched = self._touched, set()
        if not touched:
            return
        index, shown, nodes = self.index, self._shown, self.nodes
        fresh: list[Merged] = []
        for n, key in enumerate(touched):
            if n % STEP == STEP - 1:
                yield
            best: tuple[int, str] | None = None
            held: Held | None = None
            for node, entries in nodes.items():
                h = entries.get(key)
                if h is not None and (best is None or (h.entry.t, node) > best):
                    best, held = (h.entry.t, node), h
            was = shown.get(key)
            if held is None or best is None:
                if was is not None:
                    index.remove(key)
                    del shown[key]
                continue
            t, node = best
            if was is not None and was[0] == node and was[1] == t:
                if was[2] is held.entry:
                    index.set_status(key, held.status)
                else:
                    _put(index, key, held.entry, held.status)  # in place: same registration
                    shown[key] = (node, t, held.entry)
                continue
            if was is not None:
                index.remove(key)
                del shown[key]
            fresh.append((t, node, key, held.entry, held.status))
        if not fresh:
            return
        fresh.sort(key=_ORDER)
        if _ORDER(fresh[0]) < self._newest:
            yield from self._rebuild()
            return
        for i, (t, node, key, entry, status) in enumerate(fresh):
            _put(index, key, entry, status)
            shown[key] = (node, t, entry)
            if i % STEP == STEP - 1:
                yield
        self._newest = _ORDER(fresh[-1])

    def _rebuild(self) -> Iterator[None]:
        self.rebuilds += 1
        everything = sorted(
            (
                (h.entry.t, node, key, h.entry, h.status)
                for node, entries in self.nodes.items()
                for key, h in entries.items()
            ),
            key=_ORDER,
        )
        index = MemoryPresenceIndex()
        yield from _merge_into(index, everything)
        # The later registration of a key on two nodes wins, as in the index.
        self._shown = {key: (node, t, entry) for t, node, key, entry, _ in everything}
        self._newest = _ORDER(everything[-1]) if everything else (-1, "")
        self.index = index
        # Keys touched while it was rebuilt are done by the next sync.


class _Cursor:
    """How far this node has read another node's changes."""

    __slots__ = ("generation", "last")

    def __init__(self) -> None:
        self.generation = b""
        self.last = 0


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
        status_delay: float = 0.0,
    ) -> None:
        self.conn = conn
        self.node = node
        # Status-only changes may wait this long (seconds) to be written with later ones.
        self.status_delay = status_delay
        self._delayed = False
        self.keys = keys or Keys()
        self.hash = self._hash(node)
        self.stream = self._stream(node)
        self._later = later
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self.replica = Replica()
        # This node's entries: the replica's own dict for this node.
        self._mine = self.replica.held(node)
        # Keys changed since the last flush: True = every field, False = the status only.
        self._dirty: dict[str, bool] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._last_t = 0
        # The number of the last change written in this generation (its stream id is 1-n).
        self._seq = 0
        # Tickets waiting for the next read; whether a read is in flight.
        self._waiting: list[int] = []
        self._reading = False
        self._cursors: dict[str, _Cursor] = {}
        #: A write was not confirmed: Redis may hold stale entries until :meth:`republish`.
        self.lost = False
        #: Reads of the cluster, and of them those that took a whole hash (for tests and tuning).
        self.reads = 0
        self.full_reads = 0
        conn.register(READ, DROP)

    def _hash(self, node: str) -> str:
        return self.keys.presence(node)

    def _stream(self, node: str) -> str:
        return self.keys.presence_changes(node)

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
        if (lat is None) != (lon is None):
            raise ValueError("lat and lon must both be given or both be None")
        if lat is not None and lon is not None and not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise ValueError(f"need -90 <= lat <= 90 and -180 <= lon <= 180, got lat={lat!r} lon={lon!r}")
        caps = tuple(capabilities)
        old = self._mine.get(key)
        if old is not None:
            t = old.entry.t
        else:
            t = max(time.time_ns() // 1000, self._last_t + 1)
            self._last_t = t
        entry = RemoteEntry(address or key, domain.lower(), caps, lat, lon, metadata, t)
        self._mine[key] = Held(entry, status)
        self._mark(key, True)

    def set_status(self, key: str, status: str) -> None:
        mine = self._mine.get(key)
        if mine is not None and mine.status != status:
            mine.status = status
            self._mark(key, False)

    def remove(self, key: str) -> None:
        if self._mine.pop(key, None) is not None:
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
        """This node's entries now and the other nodes' as last read, without asking Redis.

        A cluster-wide answer as of now goes through :meth:`gather`. While a read
        is under way the index is answered as the last read left it.
        """
        if not self._reading:
            self.replica.sync()
        return self.replica.index.query(
            domain=domain, capabilities=capabilities, near=near, status=status, exclude=exclude, limit=limit
        )

    def __len__(self) -> int:
        """This node's entries."""
        return len(self._mine)

    # ------------------------------------------------------------------ writes

    def _mark(self, key: str, full: bool) -> None:
        self.replica.touch(key)
        dirty = self._dirty
        dirty[key] = full or dirty.get(key, False)
        handle = self._flush_handle
        if full or not self.status_delay:
            if handle is None or self._delayed:
                if handle is not None:
                    handle.cancel()
                self._delayed = False
                self._flush_handle = self._loop.call_soon(self._flush)
        elif handle is None:
            # A status change alone (a call began or ended): written with the others of the delay.
            self._delayed = True
            self._flush_handle = self._loop.call_later(self.status_delay, self._flush)

    def flush_now(self) -> None:
        """Write what waits now (a status a client set), not after the status delay."""
        handle = self._flush_handle
        if handle is not None and self._delayed:
            handle.cancel()
            self._delayed = False
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._delayed = False
        dirty, self._dirty = self._dirty, {}
        mine = self._mine
        gone: list[str] = []
        fields: list[str | bytes] = []
        # The stream's changes, at most CHANGE_KEYS keys each.
        changes: list[list[str | bytes]] = [[]]
        for key, full in dirty.items():
            change = changes[-1]
            if len(change) >= 4 * CHANGE_KEYS:
                change = []
                changes.append(change)
            held = mine.get(key)
            if held is None:
                gone += ("m:" + key, "s:" + key)
                change += ("d:" + key, "")
            elif full:
                written = ("m:" + key, held.blob, "s:" + key, held.status)
                fields += written
                change += written
            else:
                fields += ("s:" + key, held.status)
                change += ("s:" + key, held.status)
        conn = self.conn
        first = self._seq + 1
        self._seq = last = self._seq + len(changes)
        if gone:
            conn.execute("HDEL", self.hash, *gone).add_done_callback(self._confirmed)
        conn.execute("HSET", self.hash, *fields, "n", last).add_done_callback(self._confirmed)
        for seq, change in enumerate(changes, first):
            xadd = conn.execute("XADD", self.stream, "MAXLEN", "~", STREAM_MAXLEN, f"1-{seq}", *change)
            xadd.add_done_callback(self._confirmed)

    def _confirmed(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            if not self.lost:
                log.warning("Presence of node %s not written to Redis; rewritten when it answers", self.node)
            self.lost = True

    async def republish(self) -> None:
        """Write this node's hash and stream anew from memory, under a new generation."""
        self.lost = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._dirty.clear()
        self._seq = 0
        conn = self.conn
        conn.execute("DEL", self.hash, self.stream).add_done_callback(self._confirmed)
        items = list(self._mine.items())
        for i in range(0, len(items), REPUBLISH_BATCH):
            fields: list[str | bytes] = []
            for key, held in items[i : i + REPUBLISH_BATCH]:
                fields += ("m:" + key, held.blob, "s:" + key, held.status)
            conn.execute("HSET", self.hash, *fields).add_done_callback(self._confirmed)
        # The generation last: a reader that saw the hash half written reads it whole again.
        try:
            await conn.execute("HSET", self.hash, "g", secrets.token_hex(8), "n", 0)
        except RedisError:
            self.lost = True
            raise
        log.info("Presence of node %s written anew: %d entries", self.node, len(items))

    async def clear(self) -> None:
        """Delete this node's keys, then write an empty hash of a new generation (it starts)."""
        self._seq = 0
        await self.conn.execute("DEL", self.hash, self.stream)
        await self.conn.execute("HSET", self.hash, "g", secrets.token_hex(8), "n", 0)

    async def leave(self) -> None:
        """Delete this node's keys (it leaves the cluster)."""
        await self.conn.execute("DEL", self.hash, self.stream)

    async def drop_node(self, node: str) -> bool:
        """Delete the keys of ``node`` if it holds no lease; whether they were deleted."""
        keys = (self.keys.node(node), self._hash(node), self._stream(node))
        reply = await self.conn.evalsha(DROP, keys, ())
        return bool(reply is not None and reply > 0)

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
        replies = await self._fetch()
        replica = self.replica
        pause = asyncio.sleep
        for node, reply in replies:
            for _ in self._apply(node, reply):
                await pause(0)
        for _ in replica.steps():
            await pause(0)
        self.reads += 1
        return replica.index

    async def _fetch(self) -> list[tuple[str, Any]]:
        conn, keys = self.conn, self.keys
        # Bounded here: Redis out of reach answers a query within 500 ms. The scripts
        # that follow may send much (a whole hash) and are bounded by the connection,
        # which fails a command only when nothing arrived for 500 ms.
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                nodes = await conn.execute("ZRANGE", keys.nodes, 0, -1)
        except TimeoutError:
            raise RedisUnavailable(f"no answer within {READ_TIMEOUT * 1000:.0f} ms") from None
        names = [n.decode() for n in nodes]
        others = [n for n in names if n != self.node]
        cursors = self._cursors
        asked: list[tuple[str, tuple[str, str, str], tuple[bytes, int, int], asyncio.Future[Any]]] = []
        for node in others:
            cursor = cursors.get(node)
            if cursor is None:
                cursor = cursors[node] = _Cursor()
            script_keys = (keys.node(node), self._hash(node), self._stream(node))
            args = (cursor.generation, cursor.last, MOST_CHANGES)
            # EVALSHA itself, not conn.evalsha (a coroutine): every node's call goes in one pipeline.
            asked.append((node, script_keys, args, conn.execute("EVALSHA", READ.sha, 3, *script_keys, *args)))
        # Awaited in order; every one is awaited, so none is left with an unread error.
        replies: list[tuple[str, Any]] = []
        failed: RedisError | None = None
        for node, script_keys, args, pending in asked:
            try:
                reply = await pending
            except ReplyError as exc:
                if not str(exc).startswith("NOSCRIPT") or failed is not None:
                    failed = failed or exc
                    continue
                reply = await conn.evalsha(READ, script_keys, args)  # scripts were flushed
            except RedisError as exc:
                failed = failed or exc
                continue
            replies.append((node, reply))
        if failed is not None:
            raise failed
        # Readers that start over read the whole hash, in one more pipelined round trip.
        whole = [
            (reply, conn.execute("HGETALL", self._hash(node))) for node, reply in replies if reply[0] == 2
        ]
        for reply, pending in whole:
            try:
                reply.append(await pending)
            except RedisError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        return replies

    def _apply(self, node: str, reply: list[Any]) -> Iterator[None]:
        """One node's answer to ``presence_read.lua``, applied to the replica (in steps)."""
        replica = self.replica
        cursors = self._cursors
        if reply[0] == 0:  # no lease: the node is dead
            cursors.pop(node, None)
            replica.forget(node)
            return
        _, generation, last, payload = reply
        cursor = cursors[node]
        if reply[0] == 2:
            self.full_reads += 1
            yield from self._replace(node, payload)
        else:
            entries = replica.held(node)
            for _, fields in payload:
                if len(fields) > STEP:
                    yield
                for i in range(0, len(fields), 2):
                    field = fields[i]
                    kind, key = field[:2], field[2:].decode()
                    if kind == b"s:":
                        held = entries.get(key)
                        if held is not None:
                            held.status = fields[i + 1].decode()
                            replica.touch(key)
                    elif kind == b"m:":
                        # Its status follows in the same change.
                        old = entries.get(key)
                        self._held(node, entries, key, fields[i + 1], old.status if old else "")
                    elif kind == b"d:" and entries.pop(key, None) is not None:
                        replica.touch(key)
        cursor.generation = generation
        cursor.last = last

    def _replace(self, node: str, fields: list[bytes]) -> Iterator[None]:
        """A whole hash of ``node``: its entries now (those unchanged are not decoded again)."""
        replica = self.replica
        before = replica.nodes.get(node, {})
        statuses: dict[bytes, bytes] = {}
        blobs: list[tuple[bytes, bytes]] = []
        for i in range(0, len(fields), 2):
            field = fields[i]
            if field[:2] == b"s:":
                statuses[field[2:]] = fields[i + 1]
            elif field[:2] == b"m:":
                blobs.append((field[2:], fields[i + 1]))
        now: dict[str, Held] = {}
        for n, (raw, blob) in enumerate(blobs):
            if n % STEP == STEP - 1:
                yield
            status = statuses.get(raw)
            if status is None:
                continue  # cannot happen: an entry's fields are written by one HSET
            key = raw.decode()
            old = before.get(key)
            if old is not None and old.blob == blob:
                old.status = status.decode()
                now[key] = old
            else:
                try:
                    now[key] = Held(_decode_entry(blob), status.decode(), blob)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("Presence entry %r of node %s unreadable: %s", key, node, exc)
        replica.nodes[node] = now
        for key in before.keys() | now.keys():
            replica.touch(key)

    def _held(self, node: str, entries: dict[str, Held], key: str, blob: bytes, status: str) -> None:
        old = entries.get(key)
        if old is not None and old.blob == blob:
            old.status = status
        else:
            try:
                entries[key] = Held(_decode_entry(blob), status, blob)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("Presence entry %r of node %s unreadable: %s", key, node, exc)
                return
        self.replica.touch(key)
