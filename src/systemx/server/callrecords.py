"""Call records written behind the calls: :class:`RecordsRecorder`.

A :class:`~systemx.core.records.Recorder` that keeps one
:class:`~systemx.core.records.CallRecord` per ended call in a
:class:`~systemx.state.ports.RecordStore` (by default the SQLite store at
``SYSTEMX_DATA_DIR/records.db``). The core's ``call_ended`` only appends the
record to an in-memory queue; the store's blocking writes run on one worker
thread, a batch at a time, so neither the event loop nor the call path waits
for the disk:

* a batch is written when ``batch_size`` records are queued, or
  ``flush_interval`` seconds after the first of them, whichever comes first.
  ``batch_size`` (4096) is above a busy exchange's calls per second, so under
  load a batch is about a second of calls: SQLite's cost per record falls with
  the batch (each transaction writes every page its rows touched to the WAL
  once, and the address indexes touch a page per active address), about half
  at 4096 of what it is at 256;
* the queue holds at most ``max_queue`` records. While the store stalls (a slow
  disk, a locked file) records past that are dropped, counted in
  :attr:`RecordsRecorder.dropped` and warned about once per batch written, not
  once per record;
* a batch the store refuses (an error) is logged and counted in
  :attr:`RecordsRecorder.failed`; the next batch is tried as usual;
* ``SYSTEMX_RECORDS_MAX`` is enforced by the store on every batch and
  ``SYSTEMX_RECORDS_RETENTION`` by a prune every ``prune_interval`` seconds
  (and once at start);
* :meth:`RecordsRecorder.close` writes what is queued before the store closes,
  so a clean shutdown loses nothing. A crash loses at most the queued records
  (up to ``flush_interval`` seconds of calls).

The store is opened, written, queried and closed on the worker thread only
(SQLite connections belong to the thread that made them).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from time import time as _now

from systemx.core.records import CallRecord, NullRecorder
from systemx.state.ports import RecordFilter, RecordStore

__all__ = ["RECORDS_DB", "RecordsRecorder"]

log = logging.getLogger("systemx.records")

RECORDS_DB = "records.db"
"""The record store's file name under ``SYSTEMX_DATA_DIR``."""


class RecordsRecorder(NullRecorder):
    """Queues each ended call's record and writes them in batches on a worker thread.

    Only ended calls matter to it; the other events do nothing.
    """

    def __init__(
        self,
        store_factory: Callable[[], RecordStore],
        *,
        flush_interval: float = 1.0,
        batch_size: int = 4096,
        max_queue: int = 10_000,
        prune_interval: float = 3600.0,
    ) -> None:
        if flush_interval <= 0 or batch_size <= 0 or max_queue < batch_size or prune_interval <= 0:
            raise ValueError("flush_interval, batch_size, prune_interval > 0 and max_queue >= batch_size")
        self._store_factory = store_factory
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.prune_interval = prune_interval
        self._queue: deque[CallRecord] = deque()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="systemx-records")
        self._store: RecordStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: Records written to the store.
        self.written = 0
        #: Records dropped because the queue was full (the store stalled).
        self.dropped = 0
        #: Records lost because the store refused their batch.
        self.failed = 0
        #: Records removed by the retention prune.
        self.pruned = 0
        self._dropped_unreported = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        """Open the store (on the worker thread) and start the writer."""
        loop = self._loop = asyncio.get_running_loop()
        self._store = await loop.run_in_executor(self._executor, self._store_factory)
        self._wake = asyncio.Event()
        await self._prune()
        self._task = loop.create_task(self._writer(), name="systemx-records-writer")

    async def close(self) -> None:
        """Write every queued record, then close the store and its thread."""
        if self._closed:
            return
        self._closed = True
        task = self._task
        if task is not None:
            # Not cancelled: a batch handed to the worker thread is awaited, never abandoned.
            assert self._wake is not None
            self._wake.set()
            await task
        loop = asyncio.get_running_loop()
        if self._store is not None:
            while self._queue:
                await self._flush(loop)
            self._report_drops()
            await loop.run_in_executor(self._executor, self._store.close)
            self._store = None
        self._executor.shutdown(wait=True)

    async def query(
        self, filters: RecordFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[CallRecord]:
        """The stored records, newest first (see :meth:`RecordStore.query`)."""
        store = self._store
        if store is None:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, lambda: store.query(filters, limit=limit, offset=offset)
        )

    # -- the writer ----------------------------------------------------------

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        next_prune = loop.time() + self.prune_interval
        while not self._closed:
            if len(self._queue) < self.batch_size:
                # Wait for the first record, then give the batch flush_interval to fill.
                if not self._queue:
                    wake.clear()
                    await wake.wait()
                if len(self._queue) < self.batch_size and not self._closed:
                    wake.clear()
                    try:
                        await asyncio.wait_for(wake.wait(), self.flush_interval)
                    except TimeoutError:
                        pass
            await self._flush(loop)
            self._report_drops()
            if loop.time() >= next_prune:
                next_prune = loop.time() + self.prune_interval
                await self._prune()

    async def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        store = self._store
        queue = self._queue
        if store is None or not queue:
            return
        batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
        try:
            await loop.run_in_executor(self._executor, store.append_many, batch)
        except Exception as exc:
            self.failed += len(batch)
            log.error("Call records: %d record(s) not written: %s", len(batch), exc)
        else:
            self.written += len(batch)

    async def _prune(self) -> None:
        store = self._store
        if store is None:
            return
        loop = asyncio.get_running_loop()
        try:
            removed = await loop.run_in_executor(self._executor, store.prune, _now())
        except Exception as exc:
            log.error("Call records: retention prune failed: %s", exc)
            return
        self.pruned += removed
        if removed:
            log.info("Call records: %d record(s) past retention removed", removed)

    def _report_drops(self) -> None:
        if self._dropped_unreported:
            log.warning(
                "Call records: %d record(s) dropped, the store is not keeping up (queue of %d full)",
                self._dropped_unreported,
                self.max_queue,
            )
            self._dropped_unreported = 0

    # -- Recorder ------------------------------------------------------------

    def call_ended(self, record: CallRecord) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue or self._closed:
            self.dropped += 1
            self._dropped_unreported += 1
            return
        queue.append(record)
        n = len(queue)
        if (n == 1 or n == self.batch_size) and self._wake is not None:
            self._wake.set()
