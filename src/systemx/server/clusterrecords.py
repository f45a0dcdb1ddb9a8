"""Call records of a cluster node, kept in Redis: :class:`RedisRecordsRecorder`.

In a cluster (``SYSTEMX_REDIS_URL``) every node appends its call records to one
Redis stream (:class:`~systemx.state.redis.records.RedisRecordStore`), so the
history a node's admin API and ``systemx calls`` show is the whole cluster's.
It behaves as the SQLite recorder does (:mod:`systemx.server.callrecords`):

* ``call_ended`` only queues the record; a writer task appends a batch (one
  pipeline) when ``batch_size`` are queued or ``flush_interval`` after the
  first, so the call path never waits for Redis;
* while Redis is unreachable the queue keeps up to ``max_queue`` records and
  tries again each interval; records past that are dropped and counted;
* a call across nodes is recorded once, by the caller's node (the record names
  both nodes); the callee's node skips its leg's record;
* the stream is capped at ``max_records`` entries (``XADD MAXLEN ~``) and
  records older than the retention are deleted every ``prune_interval``;
* :meth:`close` writes what is queued (bounded by the command timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from time import time as _now

from systemx.core.records import CallRecord, NullRecorder
from systemx.state.ports import RecordFilter
from systemx.state.redis.conn import RedisConnection, RedisError
from systemx.state.redis.records import RedisRecordStore

__all__ = ["CLUSTER_RECORDS_MAX", "RedisRecordsRecorder"]

log = logging.getLogger("systemx.records")

#: The most records a cluster keeps in Redis (a query reads them, newest first).
CLUSTER_RECORDS_MAX = 100_000


class RedisRecordsRecorder(NullRecorder):
    """Queues each ended call's record and appends them to Redis in batches."""

    def __init__(
        self,
        conn: RedisConnection,
        *,
        max_records: int = CLUSTER_RECORDS_MAX,
        max_age: float | None = None,
        flush_interval: float = 1.0,
        batch_size: int = 500,
        max_queue: int = 100_000,
        prune_interval: float = 3600.0,
        node_id: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.store = RedisRecordStore(conn, max_records=max_records, max_age=max_age)
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.prune_interval = prune_interval
        self._queue: deque[CallRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written = 0
        self.dropped = 0
        self.failed = 0
        self.pruned = 0
        self._pruned_at = 0.0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._writer(), name="systemx-records-redis")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError):
            while self._queue:
                await self._flush()

    async def query(
        self, filters: RecordFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[CallRecord]:
        """The cluster's records, newest first; raises RedisError when Redis cannot answer."""
        return await self.store.query(filters, limit=limit, offset=offset)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._queue) < self.batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.sleep(self.flush_interval)
            self._wake.clear()
            try:
                while self._queue:
                    await self._flush()
                if _now() - self._pruned_at >= self.prune_interval:
                    self._pruned_at = _now()
                    self.pruned += await self.store.prune(self._pruned_at)
            except RedisError as exc:
                self.failed += 1
                log.warning("Call records not written to Redis (%d queued): %s", len(self._queue), exc)
                await asyncio.sleep(self.flush_interval)
                self._wake.set()

    async def _flush(self) -> None:
        batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
        await self.store.append_many(batch)
        for _ in batch:
            self._queue.popleft()
        self.written += len(batch)

    def call_ended(self, record: CallRecord) -> None:
        if record.caller_node is not None and record.caller_node != self.node_id:
            # The callee's leg of a call across nodes: the caller's node records the call.
            return
        if len(self._queue) >= self.max_queue or self._closed:
            self.dropped += 1
            return
        self._queue.append(record)
        self._wake.set()
