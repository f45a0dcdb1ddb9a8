"""Node-to-node delivery through Redis: one inbox stream per node.

Node N's inbox is the stream ``sx:nq:{N}``. Any node sends N a link message
(:mod:`systemx.protocol.link`, already encoded) with one
``XADD sx:nq:{N} MAXLEN ~ maxlen * m <bytes>``; N reads its own inbox only,
with ``XREAD COUNT count BLOCK block_ms`` on a connection of its own, and
hands each batch, in stream order, to one callback. So nobody reads another
node's traffic, and a message waits in the stream while its reader is away.

**Order.** Every send of a node goes through one writer connection, and Redis
runs one connection's commands in the order they were sent, so the messages a
node sends to one inbox are in that inbox in the order they were sent: per
(call, direction) order holds without sequence numbers. (A connection pool
would break this; do not share the bus over one.)

**No loss while nodes and Redis are up.** The reader remembers the id of the
last entry it delivered and asks for what follows it; when its connection
drops it reconnects (jittered backoff, 50 ms to 2 s) and resumes from there,
so a dropped reader connection loses nothing and delivers nothing twice. The
reader starts after the newest entry present at :meth:`RedisBus.start`:
messages to an earlier run of the node are not delivered to this one. Losses
the bus cannot prevent, and reports: a send whose connection dropped before
Redis answered (``on_send_lost``; the message may or may not be in the
inbox), a Redis restart without persistence (``on_restart``: what was in the
streams is gone), and a reader more than ``maxlen`` entries behind (Redis
trimmed what it had not read).

**Batches.** :meth:`RedisBus.send_many` puts several messages in one entry
(fields ``m``, ``m``, ...), in order: a node sends each loop pass's frames to
one node as one XADD, so a burst costs Redis one command and the reader one
entry, not one per frame.

**Costs** (``python -m benchmarks.redis_conn``, this machine): a send is one
corked XADD, ~2.3 µs client CPU on this loaded machine (its prefix is built once per target node,
the message spliced in unchanged); Redis spends ~2 µs per XADD; the reader
pays one XREAD (~40 µs Redis CPU) per batch of up to ``count`` messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from systemx.state.redis.conn import BACKOFF_MAX, RedisConnection, RedisError, RedisUnavailable, pack
from systemx.state.redis.keys import Keys

__all__ = ["RedisBus"]

log = logging.getLogger("systemx.state.redis")


class RedisBus:
    """Node ``node``'s side of the bus: sends through ``writer``, reads its inbox on ``reader``.

    ``deliver`` gets each batch of messages (a list of bytes, stream order); it
    runs on the loop and must not block. ``reader`` is used for nothing else,
    and its timeout must exceed ``block_ms``.
    """

    def __init__(
        self,
        writer: RedisConnection,
        reader: RedisConnection,
        node: str,
        deliver: Callable[[list[bytes]], None],
        *,
        keys: Keys | None = None,
        maxlen: int = 100_000,
        count: int = 512,
        block_ms: int = 1000,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        if reader is writer:
            raise ValueError("the bus reader needs a connection of its own (XREAD BLOCK holds it)")
        if reader.timeout * 1000 <= block_ms:
            raise ValueError(
                f"the reader's timeout ({reader.timeout} s) must exceed block_ms ({block_ms} ms)"
            )
        self.writer = writer
        self.reader = reader
        self.node = node
        self.deliver = deliver
        self.keys = keys or Keys()
        self.maxlen = maxlen
        self.count = count
        self.block_ms = block_ms
        self.on_restart = on_restart
        #: Id of the last inbox entry handed to ``deliver``.
        self.last_id = b"0-0"
        self.delivered = 0
        self._prefixes: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self._inbox = self.keys.inbox(node)
        reader.on_restart(self._restarted)

    def _prefix(self, node: str) -> bytes:
        # "*7 XADD key MAXLEN ~ n * m" and the message's own "$len" follows.
        args = ("XADD", self.keys.inbox(node), "MAXLEN", "~", self.maxlen, "*", "m", b"")
        prefix = pack(args)[: -len(b"$0\r\n\r\n")]
        self._prefixes[node] = prefix
        return prefix

    def send(self, node: str, message: bytes) -> None:
        """Append ``message`` to ``node``'s inbox (corked; written with this loop pass's others)."""
        prefix = self._prefixes.get(node) or self._prefix(node)
        self.writer.send_packed(b"%s$%d\r\n%s\r\n" % (prefix, len(message), message))

    def send_many(self, node: str, messages: list[bytes]) -> None:
        """Append ``messages``, in order, to ``node``'s inbox as one entry (one XADD)."""
        args: list[bytes | str | int] = ["XADD", self.keys.inbox(node), "MAXLEN", "~", self.maxlen, "*"]
        for message in messages:
            args += ("m", message)
        self.writer.send_packed(pack(tuple(args)))

    async def start(self) -> None:
        """Start reading this node's inbox after its newest entry."""
        newest = await self.reader.execute("XREVRANGE", self._inbox, "+", "-", "COUNT", 1)
        self.last_id = newest[0][0] if newest else b"0-0"
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def stop(self) -> None:
        """Stop reading. Harmless twice."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _read_loop(self) -> None:
        reader = self.reader
        while True:
            try:
                reply = await reader.execute(
                    "XREAD", "COUNT", self.count, "BLOCK", self.block_ms, "STREAMS", self._inbox, self.last_id
                )
            except RedisUnavailable as exc:
                if reader.closed:
                    return
                log.warning("Bus reader of %s: %s; resuming after %s", self.node, exc, self.last_id.decode())
                await reader.wait_connected(BACKOFF_MAX)
                continue
            except RedisError as exc:
                log.error("Bus reader of %s: %s", self.node, exc)
                await asyncio.sleep(BACKOFF_MAX)
                continue
            if not reply:
                continue
            entries = reply[0][1]
            self.last_id = entries[-1][0]
            # An entry holds one message, or several sent in one pass (``send_many``).
            batch = [value for _, fields in entries for value in fields[1::2]]
            self.delivered += len(batch)
            try:
                self.deliver(batch)
            except Exception:
                log.exception("Bus delivery of %d messages to %s failed", len(batch), self.node)

    def _restarted(self, old: str | None, new: str) -> None:
        if self.on_restart is not None:
            self.on_restart()
