"""Every call record store behaves the same; run against each backend."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from systemx.core.records import CallRecord, Disposition, EndedBy, call_record
from systemx.state.memory import MemoryRecordStore
from systemx.state.ports import RecordFilter, RecordStore
from systemx.state.records_process import ProcessRecordStore
from systemx.state.records_sqlite import SCHEMA_VERSION, RecordStoreError, SqliteRecordStore, key_hash

# (path, max_records, max_age) -> store
Factory = Callable[[Path, int | None, float | None], RecordStore]


def _memory(path: Path, max_records: int | None, max_age: float | None) -> RecordStore:
    return MemoryRecordStore(max_records=max_records or 10_000, max_age=max_age)


def _sqlite(path: Path, max_records: int | None, max_age: float | None) -> RecordStore:
    return SqliteRecordStore(path, max_records=max_records, max_age=max_age)


def _process(path: Path, max_records: int | None, max_age: float | None) -> RecordStore:
    return ProcessRecordStore(path, max_records=max_records, max_age=max_age)


BACKENDS: dict[str, Factory] = {"memory": _memory, "sqlite": _sqlite, "process": _process}


@pytest.fixture(params=list(BACKENDS))
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., RecordStore]]:
    opened: list[RecordStore] = []

    def make(max_records: int | None = None, max_age: float | None = None) -> RecordStore:
        store = BACKENDS[request.param](tmp_path / "nested" / "records.db", max_records, max_age)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def backend(factory: Callable[..., RecordStore]) -> RecordStore:
    return factory()


def rec(
    call_id: str,
    ended_at: float,
    *,
    caller: str = "a@x.com",
    callee: str = "b@y.com",
    disposition: Disposition = Disposition.ANSWERED,
    reason: str = "normal",
) -> CallRecord:
    answered = disposition is Disposition.ANSWERED
    return call_record(
        call_id=call_id,
        caller=caller,
        callee=callee,
        dialled_at=ended_at - 10.0,
        rang_at=ended_at - 9.5,
        answered_at=ended_at - 8.0 if answered else None,
        ended_at=ended_at,
        disposition=disposition,
        reason=reason,
        ended_by=EndedBy.CALLER if answered else EndedBy.EXCHANGE,
        msgs_up=2,
        bytes_down=17,
        caller_node="n1",
        woken=call_id.endswith("w"),
        wake_seconds=1.5 if call_id.endswith("w") else None,
    )


def ids(records: list[CallRecord]) -> list[str]:
    return [r.call_id for r in records]


def test_starts_empty(backend: RecordStore) -> None:
    assert backend.query() == []


def test_records_come_back_whole_and_newest_first(backend: RecordStore) -> None:
    first, second, third = rec("c1", 100.0), rec("c2w", 200.0, caller="é@x.com"), rec("c3", 300.0)
    backend.append(first)
    backend.append_many([second, third])
    backend.append_many([])
    assert backend.query() == [third, second, first]


def test_order_is_by_end_time_then_newest_appended(backend: RecordStore) -> None:
    # Write-behind batches from several nodes need not arrive in end order.
    backend.append_many([rec("late", 300.0), rec("early", 100.0), rec("tie-1", 200.0), rec("tie-2", 200.0)])
    assert ids(backend.query()) == ["late", "tie-2", "tie-1", "early"]


def test_limit_and_offset_page_through(backend: RecordStore) -> None:
    backend.append_many([rec(f"c{i}", float(i)) for i in range(10)])
    assert ids(backend.query(limit=3)) == ["c9", "c8", "c7"]
    assert ids(backend.query(limit=3, offset=3)) == ["c6", "c5", "c4"]
    assert ids(backend.query(limit=3, offset=9)) == ["c0"]
    assert backend.query(limit=3, offset=10) == []
    assert backend.query(limit=0) == []
    assert len(backend.query(limit=100)) == 10
    with pytest.raises(ValueError, match="offset"):
        backend.query(offset=-1)


def test_filter_by_address_matches_either_party_in_any_domain_case(backend: RecordStore) -> None:
    backend.append_many(
        [
            rec("out", 1.0, caller="alice@Example.com", callee="bob@y.com"),
            rec("in", 2.0, caller="carol@y.com", callee="alice@example.COM"),
            rec("other", 3.0, caller="carol@y.com", callee="bob@y.com"),
            rec("case", 4.0, caller="Alice@example.com", callee="bob@y.com"),
        ]
    )
    assert ids(backend.query(RecordFilter(address="alice@EXAMPLE.com"))) == ["in", "out"]
    assert ids(backend.query(RecordFilter(address="bob@y.com"))) == ["case", "other", "out"]
    assert backend.query(RecordFilter(address="nobody@y.com")) == []


def test_filter_by_disposition(backend: RecordStore) -> None:
    backend.append_many(
        [
            rec("a", 1.0),
            rec("b", 2.0, disposition=Disposition.BUSY, reason="dnd"),
            rec("n", 3.0, disposition=Disposition.NO_ANSWER, reason="timeout"),
            rec("b2", 4.0, disposition=Disposition.BUSY, reason="already_in_call"),
        ]
    )
    assert ids(backend.query(RecordFilter(disposition=Disposition.BUSY))) == ["b2", "b"]
    assert ids(backend.query(RecordFilter(disposition=Disposition.CANCELLED))) == []


def test_filter_by_time_window(backend: RecordStore) -> None:
    backend.append_many([rec(f"c{i}", float(i * 10)) for i in range(6)])  # ends at 0, 10, ... 50
    assert ids(backend.query(RecordFilter(since=20.0))) == ["c5", "c4", "c3", "c2"]
    assert ids(backend.query(RecordFilter(until=20.0))) == ["c1", "c0"]
    assert ids(backend.query(RecordFilter(since=10.0, until=40.0))) == ["c3", "c2", "c1"]
    assert backend.query(RecordFilter(since=30.0, until=30.0)) == []


def test_filters_combine(backend: RecordStore) -> None:
    backend.append_many(
        [
            rec("hit", 15.0, caller="z@q.com"),
            rec("wrong-party", 16.0),
            rec("wrong-kind", 17.0, caller="z@q.com", disposition=Disposition.FAILED, reason="wake_failed"),
            rec("too-late", 30.0, caller="z@q.com"),
            rec("hit2", 20.0, callee="z@Q.com"),
        ]
    )
    filters = RecordFilter(address="z@q.com", disposition=Disposition.ANSWERED, since=10.0, until=25.0)
    assert ids(backend.query(filters, limit=10)) == ["hit2", "hit"]
    assert ids(backend.query(filters, limit=1, offset=1)) == ["hit"]


def test_retention_by_count_keeps_the_latest_appended(factory: Callable[..., RecordStore]) -> None:
    store = factory(max_records=3)
    store.append_many([rec("c0", 0.0), rec("c1", 1.0)])
    for i in range(2, 6):
        store.append(rec(f"c{i}", float(i)))
    assert ids(store.query()) == ["c5", "c4", "c3"]
    store.append_many([rec(f"d{i}", 100.0 + i) for i in range(5)])
    assert ids(store.query()) == ["d4", "d3", "d2"]


def test_retention_by_age(factory: Callable[..., RecordStore]) -> None:
    store = factory(max_age=60.0)
    store.append_many([rec("old", 1000.0), rec("edge", 1040.0), rec("new", 1090.0)])
    assert store.prune(now=1050.0) == 0
    assert store.prune(now=1100.0) == 1  # drops ended_at < 1040
    assert ids(store.query()) == ["new", "edge"]
    assert store.prune(now=1100.0) == 0
    assert store.prune(now=1200.0) == 2
    assert store.query() == []


def test_prune_without_an_age_bound_keeps_everything(backend: RecordStore) -> None:
    backend.append(rec("c1", 1.0))
    assert backend.prune(now=1e12) == 0
    assert ids(backend.query()) == ["c1"]


def test_bad_retention_bounds_are_refused(factory: Callable[..., RecordStore]) -> None:
    with pytest.raises(ValueError, match="max_records"):
        factory(max_records=-1)
    with pytest.raises(ValueError, match="max_age"):
        factory(max_age=0.0)
    with pytest.raises(ValueError, match="max_age"):
        factory(max_age=float("nan"))


def test_close_twice_is_harmless(backend: RecordStore) -> None:
    backend.close()
    backend.close()


# --------------------------------------------------------------------------
# SQLite specifics


def test_sqlite_records_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    first = SqliteRecordStore(path)
    first.append_many([rec("c1", 1.0), rec("c2w", 2.0)])
    first.close()
    second = SqliteRecordStore(path, max_records=1)
    try:
        assert ids(second.query()) == ["c2w", "c1"], "a bound applies from the next append"
        second.append(rec("c3", 3.0))
        assert ids(second.query()) == ["c3"]
    finally:
        second.close()


def test_sqlite_file_is_private_and_readable_with_sql(tmp_path: Path) -> None:
    old_umask = os.umask(0o000)
    try:
        path = tmp_path / "a" / "b" / "records.db"
        store = SqliteRecordStore(path)
        store.append(rec("c1", 5.0, caller="Alice@Example.com", disposition=Disposition.BUSY, reason="dnd"))
        store.close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM records_schema_version").fetchall() == [(SCHEMA_VERSION,)]
        row = db.execute("SELECT call_id, ended_at, caller_key, callee_key, disposition FROM call_records")
        assert row.fetchall() == [("c1", 5.0, "Alice@example.com", "b@y.com", "busy")]
    finally:
        db.close()


def test_sqlite_upgrades_a_version_1_file_and_finds_its_records_by_address(tmp_path: Path) -> None:
    # A file as the first schema left it: address indexes on the text keys.
    path = tmp_path / "records.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE call_records (
            id INTEGER PRIMARY KEY AUTOINCREMENT, call_id TEXT NOT NULL, ended_at REAL NOT NULL,
            caller_key TEXT NOT NULL, callee_key TEXT NOT NULL, disposition TEXT NOT NULL,
            record TEXT NOT NULL);
        CREATE INDEX call_records_ended ON call_records (ended_at, id);
        CREATE INDEX call_records_caller ON call_records (caller_key, ended_at);
        CREATE INDEX call_records_callee ON call_records (callee_key, ended_at);
        CREATE TABLE records_schema_version (version INTEGER NOT NULL);
        INSERT INTO records_schema_version VALUES (1);
        """
    )
    old = rec("old", 1.0, caller="Alice@Example.com", callee="bob@y.com")
    db.execute(
        "INSERT INTO call_records (call_id, ended_at, caller_key, callee_key, disposition, record) "
        "VALUES ('old', 1.0, 'Alice@example.com', 'bob@y.com', 'answered', ?)",
        (msgspec.json.encode(old).decode(),),
    )
    db.commit()
    db.close()
    store = SqliteRecordStore(path)
    try:
        store.append(rec("new", 2.0, caller="carol@y.com", callee="Alice@EXAMPLE.com"))
        assert ids(store.query(RecordFilter(address="Alice@example.com"))) == ["new", "old"]
        assert store.query(RecordFilter(address="bob@y.com")) == [old]
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT version FROM records_schema_version").fetchall() == [(SCHEMA_VERSION,)]
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "call_records_caller" not in indexes and "call_records_caller_h" in indexes
    finally:
        db.close()


def test_sqlite_an_address_sharing_a_key_hash_is_not_matched(tmp_path: Path) -> None:
    # Two keys with one CRC-32: the index finds both rows, the key column settles it.
    first, second = "plumless@x.com", "buckeroo@x.com"
    assert key_hash(first) == key_hash(second)
    store = SqliteRecordStore(tmp_path / "records.db")
    try:
        store.append_many([rec("mine", 1.0, caller=first), rec("theirs", 2.0, callee=second)])
        assert ids(store.query(RecordFilter(address=first))) == ["mine"]
        assert ids(store.query(RecordFilter(address=second))) == ["theirs"]
    finally:
        store.close()


def test_sqlite_encoded_records_are_stored_as_sent_and_a_bad_one_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    store = SqliteRecordStore(path)
    good = rec("good", 1.0, caller="Dee@Q.com")
    line = msgspec.json.encode(good)
    try:
        assert store.append_encoded([b"{not json", line, b'{"call_id": "x"}']) == 1
        assert store.query(RecordFilter(address="Dee@q.COM")) == [good]
    finally:
        store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT record FROM call_records").fetchall() == [(line.decode(),)]
    finally:
        db.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    SqliteRecordStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE records_schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(RecordStoreError, match="schema version 99"):
        SqliteRecordStore(path)


def test_sqlite_skips_an_unreadable_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "records.db"
    store = SqliteRecordStore(path)
    store.append(rec("good", 1.0))
    store.close()
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO call_records (call_id, ended_at, caller_key, callee_key, disposition, record) "
        "VALUES ('bad', 2.0, 'a@x.com', 'b@y.com', 'answered', '{not json')"
    )
    db.commit()
    db.close()
    store = SqliteRecordStore(path)
    try:
        assert ids(store.query()) == ["good"]
        assert any("unreadable call record" in r.getMessage() for r in caplog.records)
    finally:
        store.close()


def test_sqlite_closed_store_says_so(tmp_path: Path) -> None:
    store = SqliteRecordStore(tmp_path / "records.db")
    store.close()
    with pytest.raises(RecordStoreError, match="closed"):
        store.append(rec("c1", 1.0))
    with pytest.raises(RecordStoreError, match="closed"):
        store.query()


def test_sqlite_a_batch_is_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "records.db"
    store = SqliteRecordStore(path)
    try:
        store.append(rec("kept", 1.0))
        db = sqlite3.connect(path)
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON call_records WHEN NEW.call_id = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        db.commit()
        db.close()
        with pytest.raises(sqlite3.IntegrityError, match="refused"):
            store.append_many(rec(call_id, 2.0 + i) for i, call_id in enumerate(["c2", "bad", "c4"]))
        assert ids(store.query()) == ["kept"]
        store.append_many(iter([rec("c5", 5.0)]))
        assert ids(store.query()) == ["c5", "kept"]
    finally:
        store.close()


def test_sqlite_in_memory() -> None:
    store = SqliteRecordStore(":memory:", max_records=2)
    try:
        store.append_many([rec("c1", 1.0), rec("c2", 2.0), rec("c3", 3.0)])
        assert ids(store.query()) == ["c3", "c2"]
    finally:
        store.close()


# --------------------------------------------------------------------------
# The child-process writer


def test_process_writer_runs_in_its_own_process_and_restarts_when_killed(tmp_path: Path) -> None:
    import os
    import signal

    store = ProcessRecordStore(tmp_path / "records.db")
    try:
        child = store._child
        assert child is not None and child.pid != os.getpid()
        store.append(rec("c1", 1.0))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        # The next batch starts a new writer; nothing already written is lost.
        store.append_many([rec("c2", 2.0), rec("c3", 3.0)])
        assert store._child is not None and store._child.pid != child.pid
        assert ids(store.query()) == ["c3", "c2", "c1"]
    finally:
        store.close()


def test_process_writer_ignores_a_signal_to_the_process_group(tmp_path: Path) -> None:
    import os
    import signal

    store = ProcessRecordStore(tmp_path / "records.db")
    try:
        child = store._child
        assert child is not None
        os.kill(child.pid, signal.SIGTERM)
        os.kill(child.pid, signal.SIGINT)
        store.append(rec("c1", 1.0))  # the same writer took it
        assert store._child is child and child.poll() is None
        assert ids(store.query()) == ["c1"]
    finally:
        store.close()
    assert child.returncode == 0  # it ended when its stdin closed
