"""Call records in one Redis stream, shared by every node.

Each record is one stream entry (``sx:cdr``, field ``r`` = the record as
JSON), appended with ``XADD MAXLEN ~ max_records``: Redis trims whole blocks,
so it may keep somewhat more than ``max_records``, and a query reads only the
newest ``max_records`` entries, so what a query sees is bounded exactly.

A query reads the newest entries in batches (``XREVRANGE``, ``read_batch`` =
1000 per round trip), filters and sorts them by ``ended_at`` (ties: newest
appended first), so it costs O(n) in the records kept: an operator's query,
never the call path's. ``prune`` deletes the records that ended before
``now - max_age`` the same way (``XDEL`` in batches). A stream entry that is
not a readable record is logged and skipped.

Appends are written behind: :meth:`RedisRecordStore.append_nowait` corks the
``XADD`` and returns; the reply is read and dropped (an error is counted on
the connection and logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgspec

from systemx.core.records import CallRecord
from systemx.protocol.address import address_key
from systemx.state.memory import check_retention, matches
from systemx.state.ports import RecordFilter
from systemx.state.redis.conn import RedisConnection
from systemx.state.redis.keys import Keys

__all__ = ["RedisRecordStore"]

log = logging.getLogger("systemx.state.redis")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(CallRecord).decode


def _stream_id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


class RedisRecordStore:
    """The :class:`~systemx.state.ports.RecordStore`, async, on ``conn``."""

    def __init__(
        self,
        conn: RedisConnection,
        *,
        keys: Keys | None = None,
        max_records: int = 100_000,
        max_age: float | None = None,
        read_batch: int = 1000,
    ) -> None:
        check_retention(max_records, max_age)
        self.conn = conn
        self.keys = keys or Keys()
        self.max_records = max_records
        self.max_age = max_age
        self.read_batch = read_batch

    def append_nowait(self, record: CallRecord) -> None:
        """Append ``record`` without waiting for Redis (write-behind)."""
        self.conn.send_nowait(
            "XADD", self.keys.cdr, "MAXLEN", "~", self.max_records, "*", "r", _encode(record)
        )

    async def append(self, record: CallRecord) -> None:
        """Append one record and wait until Redis has it."""
        await self.append_many((record,))

    async def append_many(self, records: Iterable[CallRecord]) -> None:
        """Append ``records`` in order (one pipeline) and wait until Redis has them all."""
        conn, key, cap = self.conn, self.keys.cdr, self.max_records
        last = None
        for record in records:
            last = conn.execute("XADD", key, "MAXLEN", "~", cap, "*", "r", _encode(record))
        if last is not None:
            await last  # replies come in order: the last one answers for all

    async def _entries(self) -> list[tuple[bytes, CallRecord]]:
        """The newest ``max_records`` readable entries, newest appended first."""
        out: list[tuple[bytes, CallRecord]] = []
        start: bytes | str = "+"
        seen = 0
        while seen < self.max_records:
            count = min(self.read_batch, self.max_records - seen)
            batch: list[Any] = await self.conn.execute("XREVRANGE", self.keys.cdr, start, "-", "COUNT", count)
            for entry_id, fields in batch:
                seen += 1
                doc = dict(zip(fields[::2], fields[1::2], strict=True)).get(b"r")
                try:
                    out.append((entry_id, _decode(doc if doc is not None else b"")))
                except msgspec.DecodeError as exc:
                    log.error("Skipping unreadable call record %s in Redis: %s", entry_id.decode(), exc)
            if len(batch) < count:
                break
            start = b"(" + batch[-1][0]
        return out

    async def query(
        self, filters: RecordFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[CallRecord]:
        """Matching records, newest first by ``ended_at``, skipping ``offset``, at most ``limit``."""
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset!r}")
        if limit <= 0:
            return []
        entries = await self._entries()
        if filters is not None:
            key = address_key(filters.address) if filters.address is not None else None
            entries = [e for e in entries if matches(e[1], filters, key)]
        entries.sort(key=lambda e: (e[1].ended_at, _stream_id(e[0])), reverse=True)
        return [record for _, record in entries[offset : offset + limit]]

    async def prune(self, now: float) -> int:
        """Delete the records that ended before ``now - max_age``; the number deleted."""
        if self.max_age is None:
            return 0
        cutoff = now - self.max_age
        old = [entry_id for entry_id, record in await self._entries() if record.ended_at < cutoff]
        for i in range(0, len(old), self.read_batch):
            await self.conn.execute("XDEL", self.keys.cdr, *old[i : i + self.read_batch])
        return len(old)

    async def close(self) -> None:
        """Nothing to release: the connection belongs to its owner. Harmless twice."""
