"""The call-record writer: batches, retention, a stalled store, and the flush at shutdown.

Every test writes to a real SQLite store in a temporary directory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from systemx.core.records import CallRecord, Disposition, EndedBy, call_record
from systemx.server.callrecords import RecordsRecorder
from systemx.state.records_sqlite import SqliteRecordStore
from tests.wsclient import TIMEOUT


def _record(n: int, ended_at: float | None = None) -> CallRecord:
    end = ended_at if ended_at is not None else time.time()
    return call_record(
        call_id=f"call-{n}",
        caller="a@example.com",
        callee="b@example.com",
        dialled_at=end - 2,
        ended_at=end,
        disposition=Disposition.ANSWERED,
        reason="normal",
        ended_by=EndedBy.CALLER,
        rang_at=end - 1.9,
        answered_at=end - 1.5,
    )


class BatchLog(SqliteRecordStore):
    """The SQLite store, noting the size of each batch it is given."""

    def __init__(self, path: Path, **kwargs: float | int | None) -> None:
        super().__init__(path, **kwargs)  # type: ignore[arg-type]
        self.batches: list[int] = []

    def append_many(self, records: Iterable[CallRecord]) -> None:
        batch = list(records)
        self.batches.append(len(batch))
        super().append_many(batch)


async def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def _stored(path: Path) -> list[str]:
    store = SqliteRecordStore(path)
    try:
        return sorted(r.call_id for r in store.query(limit=1000))
    finally:
        store.close()


async def test_a_full_batch_is_written_at_once(tmp_path: Path) -> None:
    stores: list[BatchLog] = []

    def factory() -> BatchLog:
        stores.append(BatchLog(tmp_path / "records.db"))
        return stores[0]

    recorder = RecordsRecorder(factory, batch_size=3, flush_interval=3600)
    await recorder.start()
    for n in range(3):
        recorder.call_ended(_record(n))
    # flush_interval is an hour: only the full batch can have triggered the write.
    await _until(lambda: recorder.written == 3, "the batch")
    assert stores[0].batches == [3]
    await recorder.close()
    assert _stored(tmp_path / "records.db") == ["call-0", "call-1", "call-2"]


async def test_a_partial_batch_is_written_after_the_interval(tmp_path: Path) -> None:
    stores: list[BatchLog] = []

    def factory() -> BatchLog:
        stores.append(BatchLog(tmp_path / "records.db"))
        return stores[0]

    recorder = RecordsRecorder(factory, batch_size=100, flush_interval=0.05)
    await recorder.start()
    recorder.call_ended(_record(1))
    recorder.call_ended(_record(2))
    await _until(lambda: recorder.written == 2, "the interval flush")
    # Both records went in one transaction, not one each.
    assert stores[0].batches == [2]
    await recorder.close()


async def test_shutdown_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    recorder = RecordsRecorder(lambda: SqliteRecordStore(path), batch_size=100, flush_interval=3600)
    await recorder.start()
    for n in range(5):
        recorder.call_ended(_record(n))
    assert recorder.written == 0
    await recorder.close()
    assert recorder.written == 5 and recorder.queued == 0
    assert _stored(path) == [f"call-{n}" for n in range(5)]
    # A record after close is counted as dropped, never raised into the core.
    recorder.call_ended(_record(9))
    assert recorder.dropped == 1


async def test_a_busy_second_of_calls_is_one_batch(tmp_path: Path) -> None:
    # The default batch holds more than a second of calls on a busy exchange, so
    # SQLite writes the pages they touch once, not once per few hundred records.
    stores: list[BatchLog] = []

    def factory() -> BatchLog:
        stores.append(BatchLog(tmp_path / "records.db"))
        return stores[0]

    recorder = RecordsRecorder(factory, flush_interval=3600)
    await recorder.start()
    for n in range(3000):
        recorder.call_ended(_record(n))
    await recorder.close()
    assert stores[0].batches == [3000]
    assert recorder.written == 3000 and recorder.dropped == 0
    assert len(_stored(tmp_path / "records.db")) == 1000  # _stored reads the newest 1000


async def test_max_records_keeps_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    recorder = RecordsRecorder(
        lambda: SqliteRecordStore(path, max_records=4), batch_size=3, flush_interval=0.05
    )
    await recorder.start()
    for n in range(10):
        recorder.call_ended(_record(n))
    await recorder.close()
    assert _stored(path) == ["call-6", "call-7", "call-8", "call-9"]


async def test_retention_prunes_old_records_at_start(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    day = 86_400.0
    seed = SqliteRecordStore(path)
    seed.append_many([_record(1, time.time() - 3 * day), _record(2, time.time() - 0.5 * day)])
    seed.close()
    recorder = RecordsRecorder(lambda: SqliteRecordStore(path, max_age=day), flush_interval=0.05)
    await recorder.start()
    assert recorder.pruned == 1
    await recorder.close()
    assert _stored(path) == ["call-2"]


class Stalling(SqliteRecordStore):
    """The SQLite store whose writes wait until ``gate`` is opened."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def append_many(self, records: Iterable[CallRecord]) -> None:
        self.entered.set()
        if not self.gate.wait(TIMEOUT):
            raise RuntimeError("gate never opened")
        super().append_many(records)


async def test_a_stalled_store_drops_and_counts_what_does_not_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stores: list[Stalling] = []

    def factory() -> Stalling:
        stores.append(Stalling(tmp_path / "records.db"))
        return stores[0]

    recorder = RecordsRecorder(factory, batch_size=2, max_queue=4, flush_interval=0.01)
    await recorder.start()
    store = stores[0]
    recorder.call_ended(_record(0))
    recorder.call_ended(_record(1))
    # The writer has taken the first batch and is stuck in the store.
    await asyncio.wait_for(asyncio.to_thread(store.entered.wait, TIMEOUT), TIMEOUT)
    started = time.perf_counter()
    for n in range(2, 9):
        recorder.call_ended(_record(n))
    # The caller (the core) never waits for the store.
    assert time.perf_counter() - started < 0.05
    assert recorder.queued == 4 and recorder.dropped == 3
    with caplog.at_level(logging.WARNING, logger="systemx.records"):
        store.gate.set()
        await recorder.close()
    assert recorder.written == 6
    assert _stored(tmp_path / "records.db") == [f"call-{n}" for n in range(6)]
    assert any("3 record(s) dropped" in r.getMessage() for r in caplog.records)


class Failing(SqliteRecordStore):
    """The SQLite store refusing its first batch, as a full disk would."""

    failures = 1

    def append_many(self, records: Iterable[CallRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        super().append_many(records)


async def test_a_refused_batch_is_counted_and_the_next_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "records.db"
    recorder = RecordsRecorder(lambda: Failing(path), batch_size=2, flush_interval=3600)
    await recorder.start()
    with caplog.at_level(logging.ERROR, logger="systemx.records"):
        recorder.call_ended(_record(0))
        recorder.call_ended(_record(1))
        await _until(lambda: recorder.failed == 2, "the refused batch")
    recorder.call_ended(_record(2))
    recorder.call_ended(_record(3))
    await _until(lambda: recorder.written == 2, "the next batch")
    await recorder.close()
    assert _stored(path) == ["call-2", "call-3"]
    assert any("disk full" in r.getMessage() for r in caplog.records)
