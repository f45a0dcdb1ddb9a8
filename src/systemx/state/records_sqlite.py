"""Call records in one SQLite file: the durable :class:`~systemx.state.ports.RecordStore`.

Each record is one row: the columns a query filters or sorts on (``ended_at``,
the caller's and callee's address keys, ``disposition``) beside the whole
record as JSON, so a new record field needs no migration and an operator can
still read the table with the ``sqlite3`` shell. The address indexes hold a
CRC-32 of each key (``caller_h``, ``callee_h``), not the key: an index of
40-byte text keys cost more than the rest of the row. A query by address
finds the rows by hash and keeps those whose key matches. The schema grows by an ordered
migrations tuple, as the profile store's does, and a newer schema than this
code knows is refused (:class:`RecordStoreError`). A row whose JSON cannot be
read is logged and skipped; it does not fail the query.

The file is created readable by its owner only (0600), since records name who
called whom; SQLite gives its ``-wal`` and ``-shm`` files the database file's
mode. WAL with ``synchronous=NORMAL``: a power loss may lose the last
transactions, never corrupt the file.

The store does blocking I/O, so the driver batches records and calls
:meth:`SqliteRecordStore.append_many` off the event loop; one transaction per
batch keeps a busy exchange at one fsync per batch, not per call. Retention:
``max_records`` is enforced on every append (the oldest appended go first),
``max_age`` by :meth:`SqliteRecordStore.prune`, which the driver calls now and
then. Used from one thread at a time.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any
from zlib import crc32

import msgspec

from systemx.core.records import CallRecord
from systemx.protocol.address import address_key
from systemx.state.memory import check_retention
from systemx.state.ports import RecordFilter
from systemx.state.sqlite import migrate, open_private

__all__ = ["SCHEMA_VERSION", "RecordStoreError", "SqliteRecordStore"]

log = logging.getLogger("systemx.state.records")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(CallRecord).decode


class _Indexed(msgspec.Struct):
    """The fields of an encoded :class:`CallRecord` that get columns of their own."""

    call_id: str
    ended_at: float
    caller: str
    callee: str
    disposition: str


_decode_indexed = msgspec.json.Decoder(_Indexed).decode


def key_hash(key: str) -> int:
    """The indexed stand-in for an address key: its CRC-32 (stable across processes)."""
    return crc32(key.encode())


_INSERT = (
    "INSERT INTO call_records "
    "(call_id, ended_at, caller_key, callee_key, caller_h, callee_h, disposition, record) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


class RecordStoreError(RuntimeError):
    """The store cannot be used as it is (closed, or a newer schema)."""


# Each entry upgrades the schema from the version before it; index 0 creates version 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE call_records (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            call_id     TEXT NOT NULL,
            ended_at    REAL NOT NULL,
            caller_key  TEXT NOT NULL,
            callee_key  TEXT NOT NULL,
            disposition TEXT NOT NULL,
            record      TEXT NOT NULL
        )
        """,
        "CREATE INDEX call_records_ended ON call_records (ended_at, id)",
        "CREATE INDEX call_records_caller ON call_records (caller_key, ended_at)",
        "CREATE INDEX call_records_callee ON call_records (callee_key, ended_at)",
    ),
    # Version 2: the address indexes hold a 32-bit hash of the key, not the key. A
    # text key (about 40 bytes) in two indexes was most of the cost of a row
    # (about 13 µs of CPU a record against 7); the key column still settles a
    # query, so a hash shared by two addresses only costs a row read.
    (
        "ALTER TABLE call_records ADD COLUMN caller_h INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE call_records ADD COLUMN callee_h INTEGER NOT NULL DEFAULT 0",
        "UPDATE call_records SET caller_h = sx_key_hash(caller_key), callee_h = sx_key_hash(callee_key)",
        "DROP INDEX call_records_caller",
        "DROP INDEX call_records_callee",
        "CREATE INDEX call_records_caller_h ON call_records (caller_h)",
        "CREATE INDEX call_records_callee_h ON call_records (callee_h)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class SqliteRecordStore:
    """Call records in one SQLite database file, created (with its directory) if missing.

    ``max_records`` and ``max_age`` (seconds) bound what is kept; ``None`` does
    not bound.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_records: int | None = None,
        max_age: float | None = None,
    ) -> None:
        check_retention(max_records, max_age)
        self.path = str(path)
        self.max_records = max_records
        self.max_age = max_age
        self._db: sqlite3.Connection | None = open_private(self.path, self._migrate, narrow_existing=False)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.create_function("sx_key_hash", 1, key_hash, deterministic=True)
        # Big transactions of small rows: checkpoint the WAL less often (16 MB, not
        # 4 MB) and keep the index pages in memory (up to 16 MB).
        db.execute("PRAGMA wal_autocheckpoint=4000")
        db.execute("PRAGMA cache_size=-16384")
        migrate(
            db,
            _MIGRATIONS,
            version_table="records_schema_version",
            what="call record",
            store="Record store",
            path=self.path,
            error=RecordStoreError,
            log=log,
        )

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RecordStoreError(f"record store {self.path} is closed")
        return self._db

    def append(self, record: CallRecord) -> None:
        self.append_many((record,))

    def append_many(self, records: Iterable[CallRecord]) -> None:
        row = self._row
        self._insert(
            [row(r.call_id, r.ended_at, r.caller, r.callee, r.disposition, _encode(r)) for r in records]
        )

    def append_encoded(self, lines: Sequence[bytes]) -> int:
        """Append records already encoded as JSON (as :class:`CallRecord` encodes), one transaction.

        Each is stored as it is, after reading only the fields that get columns.
        Returns how many were appended; one that cannot be read is skipped and
        logged, so it does not fail the others.
        """
        rows = []
        for line in lines:
            try:
                f = _decode_indexed(line)
            except msgspec.DecodeError as exc:
                log.error("Skipping unreadable call record %r: %s", line[:80], exc)
                continue
            rows.append(self._row(f.call_id, f.ended_at, f.caller, f.callee, f.disposition, line))
        self._insert(rows)
        return len(rows)

    @staticmethod
    def _row(
        call_id: str, ended_at: float, caller: str, callee: str, disposition: str, record: bytes
    ) -> tuple[Any, ...]:
        caller_key = address_key(caller)
        callee_key = address_key(callee)
        return (
            call_id,
            ended_at,
            caller_key,
            callee_key,
            crc32(caller_key.encode()),
            crc32(callee_key.encode()),
            str(disposition),
            record.decode(),
        )

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_INSERT, rows)
            if self.max_records is not None:
                db.execute(
                    "DELETE FROM call_records WHERE id <= (SELECT MAX(id) FROM call_records) - ?",
                    (self.max_records,),
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def query(
        self, filters: RecordFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[CallRecord]:
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset!r}")
        if limit <= 0:
            return []
        where: list[str] = []
        args: list[Any] = []
        if filters is not None:
            if filters.address is not None:
                key = address_key(filters.address)
                h = key_hash(key)
                where.append("((caller_h = ? AND caller_key = ?) OR (callee_h = ? AND callee_key = ?))")
                args += (h, key, h, key)
            if filters.disposition is not None:
                where.append("disposition = ?")
                args.append(str(filters.disposition))
            if filters.since is not None:
                where.append("ended_at >= ?")
                args.append(filters.since)
            if filters.until is not None:
                where.append("ended_at < ?")
                args.append(filters.until)
        sql = "SELECT id, record FROM call_records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ended_at DESC, id DESC LIMIT ? OFFSET ?"
        out: list[CallRecord] = []
        for row_id, text in self._conn.execute(sql, (*args, limit, offset)):
            try:
                out.append(_decode(text))
            except msgspec.DecodeError as exc:
                # One damaged row must not hide the others.
                log.error("Skipping unreadable call record %d in %s: %s", row_id, self.path, exc)
        return out

    def prune(self, now: float) -> int:
        if self.max_age is None:
            return 0
        cursor = self._conn.execute("DELETE FROM call_records WHERE ended_at < ?", (now - self.max_age,))
        return cursor.rowcount

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
