"""The synchronous contract suites of tests/contract/, run against the Redis backends.

The suites are imported, not copied: each test function below is the suite's
own, and the fixtures here give it a Redis backend behind a blocking wrapper
(``tests/redis/blocking.py``). Tests of another backend's specifics (SQLite)
are left out.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from systemx.state.redis.conn import RedisConnection
from systemx.state.redis.directory import RedisDirectory
from systemx.state.redis.profiles import RedisProfileStore
from systemx.state.redis.records import RedisRecordStore
from systemx.state.redis.roster import RedisPartyRoster
from tests.redis.blocking import BlockingDirectory, BlockingProfileStore, BlockingRecordStore, BlockingRoster
from tests.redisproc import RedisProcess

_SUITES = {
    "directory": "tests.contract.test_directory",
    "roster": "tests.contract.test_party_roster",
    "profiles": "tests.contract.test_profile_store",
    "records": "tests.contract.test_record_store",
}

for _suite, _module in _SUITES.items():
    for _name, _test in vars(importlib.import_module(_module)).items():
        if _name.startswith("test_") and "sqlite" not in _name and callable(_test):
            if _name == "test_pending_is_one_value_that_cannot_pass_for_an_answer":
                continue  # not about a backend
            globals()[f"test_{_suite}__{_name[5:]}"] = _test


@pytest.fixture
def conn(redis: RedisProcess, sync_loop: asyncio.AbstractEventLoop) -> Iterator[RedisConnection]:
    async def open_() -> RedisConnection:
        c = RedisConnection(redis.host, redis.port, name="contract")
        await c.connect()
        return c

    c = sync_loop.run_until_complete(open_())
    yield c
    sync_loop.run_until_complete(c.close())


def _new(loop: asyncio.AbstractEventLoop, make: Callable[[], Any]) -> Any:
    async def build() -> Any:
        return make()

    return loop.run_until_complete(build())


@pytest.fixture
def backend(
    request: pytest.FixtureRequest, conn: RedisConnection, sync_loop: asyncio.AbstractEventLoop
) -> Iterator[Any]:
    suite = request.node.name.split("__")[0].removeprefix("test_")
    if suite == "directory":
        directory = RedisDirectory(conn, "node-1")
        sync_loop.run_until_complete(directory.start())
        yield BlockingDirectory(sync_loop, directory)
        sync_loop.run_until_complete(directory.stop())
    elif suite == "roster":
        yield BlockingRoster(sync_loop, RedisPartyRoster(conn))
    elif suite == "records":
        yield request.getfixturevalue("factory")()
    else:
        raise AssertionError(f"no backend fixture for {suite}")


@pytest.fixture
def store(conn: RedisConnection, sync_loop: asyncio.AbstractEventLoop) -> BlockingProfileStore:
    return BlockingProfileStore(sync_loop, RedisProfileStore(conn))


@pytest.fixture
def opener(conn: RedisConnection, sync_loop: asyncio.AbstractEventLoop) -> Callable[[], BlockingProfileStore]:
    # A fresh store on the same Redis: what one store put, the next one finds.
    return lambda: BlockingProfileStore(sync_loop, RedisProfileStore(conn))


@pytest.fixture
def factory(
    conn: RedisConnection, sync_loop: asyncio.AbstractEventLoop
) -> Callable[..., BlockingRecordStore]:
    def make(max_records: int | None = None, max_age: float | None = None) -> BlockingRecordStore:
        kept = 100_000 if max_records is None else max_records
        store = _new(sync_loop, lambda: RedisRecordStore(conn, max_records=kept, max_age=max_age))
        return BlockingRecordStore(sync_loop, store)

    return make
