"""The cluster directory in Redis: who holds each address, and which nodes are alive.

**Claims.** A claim is one ``claim.lua`` call: the address hash
``sx:a:{D}:L`` holds the holder's node, node epoch, session id, the whole
:class:`~systemx.state.ports.Registration` (msgpack) and the claim epoch. Of
two nodes claiming one free address at once exactly one wins (the script is
atomic); the other gets :class:`~systemx.state.ports.InUse` with the winner.
A claim held by another session is taken over only when the holder is dead:
its node has no lease, or a lease of another epoch (the node restarted, so the
session is gone). The claimer learns that with one ``HGET`` of the holder's
lease and retries once with the holder as the expected one (compare-and-set),
so a holder that changed meanwhile is never overwritten. The claim epoch comes
from a counter per domain, so every claim of a key gets a larger epoch.

**Release** deletes the claim only if it is still (this node, this node's
epoch, that session): a late release of a replaced session is a no-op.

**Node lease.** :meth:`RedisDirectory.start` takes a fresh epoch
(``INCR sx:epoch``), frees what this node held in an earlier run, writes the
lease ``sx:node:{N}`` with ``PX`` = ``ttl_ms`` (default 10 s) and renews it
every ``ttl_ms / 4``. A node whose lease expired is dead; any node may then
free its addresses with :meth:`RedisDirectory.sweep_dead`, which takes the
janitor lock (``SET NX PX``), so one node sweeps at a time, and frees them in
batches of ``sweep_batch`` (500) per script call, so Redis never blocks on
one long call: freeing 100k addresses is 200 calls of ~5 ms each. If renewing
finds the lease gone (this node stalled past its TTL, or Redis restarted), the
lease is written again and ``on_lease_lost`` is called: the owner should then
re-claim its sessions, and close those whose address another node took.

**Data loss.** :meth:`start` writes a sentinel key once per Redis data set; when
the connection reaches another Redis process (``run_id`` changed) the
directory checks the sentinel, and if it is gone (a restart without
persistence) calls ``on_data_lost``: every claim is gone and the owner must
re-claim all its sessions.

**Costs** (this machine): a claim is one EVALSHA, ~20 µs Redis CPU and
~83 µs client CPU awaited one at a time (a coroutine and a loop pass each);
a lookup is one ``HMGET``; a release one EVALSHA, which
:meth:`release_nowait` sends without waiting. None of it is on the MSG path.

**Presented to the core** through :class:`systemx.state.redis.adapter.PendingDirectory`:
``claim`` and ``lookup`` answer :data:`~systemx.state.ports.PENDING` and the
answer arrives later as a callback on the loop; ``release`` is fire-and-forget
and in order with the claims and lookups issued after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

import msgspec

from systemx.state.ports import Claimed, InUse, Registration
from systemx.state.redis import scripts
from systemx.state.redis.conn import RedisConnection, RedisError, RedisUnavailable
from systemx.state.redis.keys import Keys, split_address

__all__ = ["RedisDirectory"]

log = logging.getLogger("systemx.state.redis")

_encode_reg = msgspec.msgpack.Encoder().encode
_decode_reg = msgspec.msgpack.Decoder(Registration).decode


class RedisDirectory:
    """The :class:`~systemx.state.ports.Directory` of node ``node``, async, on ``conn``.

    ``conn`` must be connected. Registrations claimed through this directory
    should name ``node`` as their node: the release is fenced by it.
    """

    def __init__(
        self,
        conn: RedisConnection,
        node: str,
        *,
        keys: Keys | None = None,
        ttl_ms: int = 10_000,
        sweep_batch: int = 500,
        log_maxlen: int = 200_000,
        janitor_ttl_ms: int = 5_000,
        on_lease_lost: Callable[[], None] | None = None,
        on_data_lost: Callable[[], None] | None = None,
    ) -> None:
        if ttl_ms < 100:
            raise ValueError(f"ttl_ms must be at least 100, got {ttl_ms!r}")
        if sweep_batch < 1:
            raise ValueError(f"sweep_batch must be at least 1, got {sweep_batch!r}")
        if not node or any(c in node for c in "{}\n"):
            raise ValueError(f"a node id must be non-empty, without braces or newlines, got {node!r}")
        self.conn = conn
        self.node = node
        self.keys = keys or Keys()
        self.ttl_ms = ttl_ms
        self.sweep_batch = sweep_batch
        self.log_maxlen = log_maxlen
        self.janitor_ttl_ms = janitor_ttl_ms
        self.on_lease_lost = on_lease_lost
        self.on_data_lost = on_data_lost
        #: This node's fencing epoch; 0 until :meth:`start`.
        self.epoch = 0
        #: ``loop.time()`` of the last successful lease write.
        self.lease_renewed_at: float | None = None
        self._sentinel: bytes | None = None
        self._renewer: asyncio.Task[None] | None = None
        conn.register(*scripts.ALL)
        conn.on_restart(self._redis_restarted)

    # ------------------------------------------------------------------
    # Node lease

    async def start(self) -> int:
        """Take an epoch, free this node's claims of earlier runs, write the lease; the epoch."""
        conn, keys = self.conn, self.keys
        self.epoch = int(await conn.execute("INCR", keys.epoch))
        await self._sweep_batches(self.node, below=self.epoch)
        await self._write_lease()
        token = secrets.token_hex(8).encode()
        conn.execute("SET", keys.sentinel, token, "NX")
        self._sentinel = await conn.execute("GET", keys.sentinel)
        self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())
        log.info("Node %s joined the cluster with epoch %d", self.node, self.epoch)
        return self.epoch

    async def stop(self) -> None:
        """Stop renewing, drop the lease and free every claim of this node. Harmless twice."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self.epoch:
            try:
                await self.conn.execute("DEL", self.keys.node(self.node))
                await self._sweep_batches(self.node, below=self.epoch + 1)
            except RedisError as exc:
                log.warning(
                    "Node %s could not free its claims on stop (%s); its lease will expire", self.node, exc
                )

    async def _write_lease(self) -> None:
        conn, keys = self.conn, self.keys
        lease = keys.node(self.node)
        conn.send_nowait(
            "HSET",
            lease,
            "epoch",
            self.epoch,
            "pid",
            os.getpid(),
            "host",
            socket.gethostname(),
            "started",
            int(time.time() * 1000),
        )
        conn.send_nowait("PEXPIRE", lease, self.ttl_ms)
        await conn.execute("ZADD", keys.nodes, int(time.time() * 1000), self.node)
        self.lease_renewed_at = asyncio.get_running_loop().time()

    async def renew(self) -> bool:
        """Extend the lease once; ``False`` (and ``on_lease_lost``) when it had expired and was rewritten."""
        conn, keys = self.conn, self.keys
        lease = keys.node(self.node)
        kept = conn.execute("PEXPIRE", lease, self.ttl_ms)
        epoch = conn.execute("HGET", lease, "epoch")
        await conn.execute("ZADD", keys.nodes, int(time.time() * 1000), self.node)
        if await kept and await epoch == str(self.epoch).encode():
            self.lease_renewed_at = asyncio.get_running_loop().time()
            return True
        log.warning("Node %s lost its lease (expired or taken); writing it again", self.node)
        await self._write_lease()
        if self.on_lease_lost is not None:
            self.on_lease_lost()
        return False

    async def _renew_loop(self) -> None:
        interval = self.ttl_ms / 4000
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
            except RedisError as exc:
                if self.conn.closed:
                    return
                log.warning("Node %s could not renew its lease: %s", self.node, exc)

    def _redis_restarted(self, old: str | None, new: str) -> None:
        if self._sentinel is not None:
            asyncio.get_running_loop().create_task(self._check_data())

    async def _check_data(self) -> None:
        try:
            lost = await self.data_lost()
        except RedisError as exc:
            log.warning("Could not check whether Redis lost its data: %s", exc)
            return
        if lost:
            log.error("Redis lost its data (restart without persistence?); claims must be made again")
            token = self._sentinel
            assert token is not None
            self.conn.send_nowait("SET", self.keys.sentinel, token, "NX")
            with contextlib.suppress(RedisError):
                await self.renew()
            if self.on_data_lost is not None:
                self.on_data_lost()

    async def data_lost(self) -> bool:
        """Whether the sentinel written at :meth:`start` is gone (another data set answers)."""
        return bool(await self.conn.execute("GET", self.keys.sentinel) != self._sentinel)

    async def live_nodes(self) -> dict[str, int]:
        """Nodes holding a lease now, with their epochs."""
        conn = self.conn
        names = [n.decode() for n in await conn.execute("ZRANGE", self.keys.nodes, 0, -1)]
        epochs = [conn.execute("HGET", self.keys.node(n), "epoch") for n in names]
        alive: dict[str, int] = {}
        for name, fut in zip(names, epochs, strict=True):
            epoch = await fut
            if epoch is not None:
                alive[name] = int(epoch)
        return alive

    async def dead_nodes(self) -> list[str]:
        """Nodes known to the cluster whose lease expired and whose addresses were not all swept yet."""
        conn = self.conn
        names = [n.decode() for n in await conn.execute("ZRANGE", self.keys.nodes, 0, -1)]
        exists = [conn.execute("EXISTS", self.keys.node(n)) for n in names]
        return [name for name, fut in zip(names, exists, strict=True) if not await fut]

    async def sweep_dead(self, node: str) -> int | None:
        """Free the addresses of the dead ``node``, in batches, under the janitor lock.

        Returns the number freed, or ``None`` when another node holds the
        janitor lock. Frees nothing if ``node`` holds a lease (it is alive).
        """
        token = f"{self.node}:{self.epoch}"
        if await self.conn.execute("SET", self.keys.janitor, token, "NX", "PX", self.janitor_ttl_ms) is None:
            return None
        try:
            return await self._sweep_batches(node, below=None)
        finally:
            await scripts.unlock(self.conn, self.keys.janitor, token)

    async def _sweep_batches(self, node: str, *, below: int | None) -> int:
        keys, freed = self.keys, 0
        while True:
            reply = await self.conn.evalsha(
                scripts.SWEEP,
                (keys.node_addresses(node), keys.node(node), keys.dir, keys.nodes),
                (node, "" if below is None else below, self.sweep_batch, self.log_maxlen),
            )
            if reply[0] < 0:
                return freed
            freed += int(reply[0])
            if reply[1] == 0:
                if freed:
                    log.info("Freed %d addresses of node %s", freed, node)
                return freed

    # ------------------------------------------------------------------
    # Claims

    async def claim(self, reg: Registration) -> Claimed | InUse:
        """Bind ``reg.key`` to ``reg.session_id``; taken over only from a dead holder (see module doc)."""
        answer, nepoch = await self._claim(reg, None)
        if isinstance(answer, InUse) and await self._is_dead(answer.holder.node, nepoch):
            answer, _ = await self._claim(reg, (answer.holder.node, nepoch, answer.holder.session_id))
        return answer

    async def _claim(
        self, reg: Registration, expect: tuple[str, str, str] | None
    ) -> tuple[Claimed | InUse, str]:
        """One claim.lua call: the answer, and the holder's node epoch when it is :class:`InUse`."""
        keys = self.keys
        local, domain = split_address(reg.key)
        reply = await self.conn.evalsha(
            scripts.CLAIM,
            (
                keys.address(reg.key),
                keys.domain(domain),
                keys.claim_seq(domain),
                keys.node_addresses(reg.node),
                keys.dir,
            ),
            (
                reg.node,
                self.epoch,
                reg.session_id,
                _encode_reg(msgspec.structs.replace(reg, epoch=0)),
                local,
                int(time.time() * 1000),
                self.log_maxlen,
                *(expect or ("", "", "")),
            ),
        )
        if reply[0] == 1:
            return Claimed(msgspec.structs.replace(reg, epoch=int(reply[1]))), ""
        _, node, nepoch, sid, blob, epoch = reply
        return InUse(_holder(blob, epoch, node, sid)), nepoch.decode()

    async def _is_dead(self, node: str, nepoch: str) -> bool:
        """``node`` holds no lease, or a lease of another epoch than ``nepoch`` (it restarted)."""
        lease_epoch = await self.conn.execute("HGET", self.keys.node(node), "epoch")
        return lease_epoch is None or lease_epoch.decode() != nepoch

    async def release(self, key: str, session_id: str) -> bool:
        """Unbind ``key`` if this node's session ``session_id`` holds it; whether it did."""
        local, domain = split_address(key)
        keys = self.keys
        return bool(
            await self.conn.evalsha(
                scripts.RELEASE,
                (keys.address(key), keys.domain(domain), keys.node_addresses(self.node), keys.dir),
                (self.node, self.epoch, session_id, local, self.log_maxlen),
            )
        )

    def release_nowait(self, key: str, session_id: str) -> None:
        """:meth:`release` without waiting: sent in order with what follows; a failure is logged."""
        task = asyncio.get_running_loop().create_task(self.release(key, session_id))
        task.add_done_callback(_log_failure)

    async def lookup(self, key: str) -> Registration | None:
        """The registration holding ``key``, or ``None``."""
        blob, epoch, node, sid = await self.conn.execute(
            "HMGET", self.keys.address(key), "reg", "epoch", "node", "sid"
        )
        if blob is None:
            return None
        return _holder(blob, epoch, node, sid)


def _holder(blob: bytes, epoch: bytes, node: bytes, sid: bytes) -> Registration:
    try:
        reg = _decode_reg(blob)
    except msgspec.DecodeError as exc:
        raise RedisError(f"unreadable registration in Redis: {exc}") from exc
    return msgspec.structs.replace(reg, epoch=int(epoch), node=node.decode(), session_id=sid.decode())


def _log_failure(task: asyncio.Task[bool]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if isinstance(exc, RedisUnavailable):
        log.warning("A release was not confirmed: %s", exc)
    elif exc is not None:
        log.error("A release failed: %r", exc)
