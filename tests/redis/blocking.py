"""Blocking faces of the async Redis backends, for the synchronous contract suites.

Each call runs the loop until its answer is there, so the suites written for
backends that answer at once (``tests/contract/``) hold for Redis unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from systemx.core.records import CallRecord
from systemx.state.ports import Claimed, InUse, RecordFilter, Registration, RosterMember
from systemx.state.redis.directory import RedisDirectory
from systemx.state.redis.profiles import RedisProfileStore
from systemx.state.redis.records import RedisRecordStore
from systemx.state.redis.roster import RedisPartyRoster

T = TypeVar("T")


class _Blocking:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 5.0))


class BlockingDirectory(_Blocking):
    def __init__(self, loop: asyncio.AbstractEventLoop, directory: RedisDirectory) -> None:
        super().__init__(loop)
        self.directory = directory

    def claim(self, reg: Registration) -> Claimed | InUse:
        return self.run(self.directory.claim(reg))

    def release(self, key: str, session_id: str) -> None:
        self.run(self.directory.release(key, session_id))

    def lookup(self, key: str) -> Registration | None:
        return self.run(self.directory.lookup(key))


class BlockingRoster(_Blocking):
    def __init__(self, loop: asyncio.AbstractEventLoop, roster: RedisPartyRoster) -> None:
        super().__init__(loop)
        self.roster = roster

    def join(self, party_key: str, member_id: str, node: str) -> None:
        self.run(self.roster.join(party_key, member_id, node))

    def leave(self, party_key: str, member_id: str) -> None:
        self.run(self.roster.leave(party_key, member_id))

    def members(self, party_key: str) -> list[RosterMember]:
        return self.run(self.roster.members(party_key))

    def drop_node(self, node: str) -> None:
        self.run(self.roster.drop_node(node))


class BlockingProfileStore(_Blocking):
    def __init__(self, loop: asyncio.AbstractEventLoop, store: RedisProfileStore) -> None:
        super().__init__(loop)
        self.store = store

    def load_all(self) -> dict[str, dict[str, Any]]:
        return self.run(self.store.load_all())

    def put(self, address: str, profile: dict[str, Any]) -> None:
        self.run(self.store.put(address, profile))

    def delete(self, address: str) -> None:
        self.run(self.store.delete(address))

    def close(self) -> None:
        self.run(self.store.close())


class BlockingRecordStore(_Blocking):
    def __init__(self, loop: asyncio.AbstractEventLoop, store: RedisRecordStore) -> None:
        super().__init__(loop)
        self.store = store

    def append(self, record: CallRecord) -> None:
        self.run(self.store.append(record))

    def append_many(self, records: Iterable[CallRecord]) -> None:
        self.run(self.store.append_many(list(records)))

    def query(
        self, filters: RecordFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[CallRecord]:
        return self.run(self.store.query(filters, limit=limit, offset=offset))

    def prune(self, now: float) -> int:
        return self.run(self.store.prune(now))

    def close(self) -> None:
        self.run(self.store.close())
