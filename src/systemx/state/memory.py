"""In-process implementations of the directory, party roster and record ports.

They answer every query at once (never :data:`~systemx.state.ports.PENDING`),
so a single-node exchange takes the direct path. They hold references, not
copies: a :class:`~systemx.state.ports.Registration` and a
:class:`~systemx.core.records.CallRecord` are frozen, and their metadata must
not be mutated by anyone. Used from one thread.

The presence index and the profile store have their memory implementations
beside their ports (:mod:`systemx.state.presence`,
:mod:`systemx.state.profiles`).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator

import msgspec

from systemx.core.records import CallRecord
from systemx.protocol.address import address_key
from systemx.state.ports import Claimed, InUse, RecordFilter, Registration, RosterMember

__all__ = ["MemoryDirectory", "MemoryPartyRoster", "MemoryRecordStore", "check_retention", "matches"]


class MemoryDirectory:
    """Address keys to registrations in a dict; epochs from one counter."""

    def __init__(self) -> None:
        self._held: dict[str, Registration] = {}
        self._epochs = itertools.count(1)

    def __len__(self) -> int:
        return len(self._held)

    def claim(self, reg: Registration) -> Claimed | InUse:
        holder = self._held.get(reg.key)
        if holder is not None and holder.session_id != reg.session_id:
            return InUse(holder)
        stored = msgspec.structs.replace(reg, epoch=next(self._epochs))
        self._held[reg.key] = stored
        return Claimed(stored)

    def release(self, key: str, session_id: str) -> None:
        holder = self._held.get(key)
        if holder is not None and holder.session_id == session_id:
            del self._held[key]

    def lookup(self, key: str) -> Registration | None:
        return self._held.get(key)


class MemoryPartyRoster:
    """Party lines to members in insertion-ordered dicts, with a per-node index for ``drop_node``."""

    def __init__(self) -> None:
        self._lines: dict[str, dict[str, str]] = {}
        self._by_node: dict[str, set[tuple[str, str]]] = {}

    def join(self, party_key: str, member_id: str, node: str) -> None:
        members = self._lines.setdefault(party_key, {})
        old = members.get(member_id)
        if old is not None and old != node:
            self._unindex(old, party_key, member_id)
        members[member_id] = node
        self._by_node.setdefault(node, set()).add((party_key, member_id))

    def leave(self, party_key: str, member_id: str) -> None:
        members = self._lines.get(party_key)
        if members is None or member_id not in members:
            return
        node = members.pop(member_id)
        if not members:
            del self._lines[party_key]
        self._unindex(node, party_key, member_id)

    def members(self, party_key: str) -> list[RosterMember]:
        members = self._lines.get(party_key)
        if members is None:
            return []
        return [RosterMember(member_id, node) for member_id, node in members.items()]

    def drop_node(self, node: str) -> None:
        for party_key, member_id in self._by_node.pop(node, ()):
            members = self._lines[party_key]
            del members[member_id]
            if not members:
                del self._lines[party_key]

    def _unindex(self, node: str, party_key: str, member_id: str) -> None:
        entries = self._by_node[node]
        entries.discard((party_key, member_id))
        if not entries:
            del self._by_node[node]


def check_retention(max_records: int | None, max_age: float | None) -> None:
    """Raise ``ValueError`` for a retention bound that is not positive."""
    if max_records is not None and max_records < 1:
        raise ValueError(f"max_records must be at least 1, got {max_records!r}")
    if max_age is not None and not max_age > 0:
        raise ValueError(f"max_age must be a positive number of seconds, got {max_age!r}")


def matches(record: CallRecord, filters: RecordFilter, key: str | None) -> bool:
    """``record`` passes ``filters``; ``key`` is ``address_key(filters.address)``, computed once."""
    if key is not None and address_key(record.caller) != key and address_key(record.callee) != key:
        return False
    if filters.disposition is not None and record.disposition != filters.disposition:
        return False
    if filters.since is not None and record.ended_at < filters.since:
        return False
    return filters.until is None or record.ended_at < filters.until


class MemoryRecordStore:
    """The latest ``max_records`` call records in a ring; gone when the process ends.

    A query sorts the matching records, so it costs O(n log n) in the ring's
    size; the ring is bounded, and queries are an operator's, not the call path's.
    """

    def __init__(self, *, max_records: int = 10_000, max_age: float | None = None) -> None:
        check_retention(max_records, max_age)
        self.max_records = max_records
        self.max_age = max_age
        # (record, sequence): the sequence breaks ended_at ties, newest appended first.
        self._ring: deque[tuple[CallRecord, int]] = deque(maxlen=max_records)
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._ring)

    def append(self, record: CallRecord) -> None:
        self._ring.append((record, next(self._seq)))

    def append_many(self, records: Iterable[CallRecord]) -> None:
        for record in records:
            self.append(record)

    def query(
        self, filters: RecordFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[CallRecord]:
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset!r}")
        if limit <= 0:
            return []
        found: Iterator[tuple[CallRecord, int]] = iter(self._ring)
        if filters is not None:
            key = address_key(filters.address) if filters.address is not None else None
            found = (entry for entry in found if matches(entry[0], filters, key))
        ordered = sorted(found, key=lambda entry: (entry[0].ended_at, entry[1]), reverse=True)
        return [record for record, _ in ordered[offset : offset + limit]]

    def prune(self, now: float) -> int:
        if self.max_age is None:
            return 0
        cutoff = now - self.max_age
        kept = [entry for entry in self._ring if entry[0].ended_at >= cutoff]
        dropped = len(self._ring) - len(kept)
        if dropped:
            self._ring = deque(kept, maxlen=self.max_records)
        return dropped

    def close(self) -> None:
        pass
