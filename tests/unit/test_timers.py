"""The server's keyed timers on a real event loop: order, restart, cancel, many delays."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from systemx.server.timers import Timers
from tests.conftest import scaled


class _Fired:
    def __init__(self) -> None:
        self.keys: list[Hashable] = []
        self.at: dict[Hashable, float] = {}
        self.changed = asyncio.Event()

    def __call__(self, key: Hashable) -> None:
        self.keys.append(key)
        self.at[key] = asyncio.get_running_loop().time()
        self.changed.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(scaled(5.0)):
            while len(self.keys) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def fired() -> _Fired:
    return _Fired()


@pytest.fixture
async def timers(fired: _Fired) -> Timers:
    return Timers(asyncio.get_running_loop(), fired)


async def test_timers_fire_once_each_in_deadline_order_not_early(timers: Timers, fired: _Fired) -> None:
    started = asyncio.get_running_loop().time()
    timers.start("b", 0.06)
    timers.start("a", 0.02)
    timers.start("c", 0.06)
    timers.start("d", 0.04)
    assert len(timers) == 4 and "a" in timers
    await fired.until(4)
    assert fired.keys == ["a", "d", "b", "c"]
    for key, delay in (("a", 0.02), ("d", 0.04), ("b", 0.06), ("c", 0.06)):
        assert fired.at[key] - started >= delay - 0.002
    assert len(timers) == 0 and "a" not in timers


async def test_restart_moves_the_deadline_and_cancel_forgets(timers: Timers, fired: _Fired) -> None:
    timers.start("restarted", 0.03)
    timers.start("cancelled", 0.03)
    timers.start("kept", 0.03)
    timers.start("restarted", 0.03)  # now after "kept"
    timers.cancel("cancelled")
    timers.cancel("never-started")
    timers.start("marker", 0.08)
    await fired.until(3)
    assert fired.keys == ["kept", "restarted", "marker"]


async def test_restart_with_another_delay(timers: Timers, fired: _Fired) -> None:
    timers.start("x", 5.0)
    timers.start("x", 0.01)
    timers.start("y", 0.03)
    await fired.until(2)
    assert fired.keys == ["x", "y"]
    assert len(timers) == 0


async def test_a_fired_timer_can_start_and_cancel_timers() -> None:
    loop = asyncio.get_running_loop()
    timers: Timers
    seen: list[Hashable] = []
    done = asyncio.Event()

    def fire(key: Hashable) -> None:
        seen.append(key)
        if key == "first":
            timers.start("again", 0.01)  # same delay, same queue, from inside its expiry
            timers.cancel("second")
        if key == "again":
            done.set()

    timers = Timers(loop, fire)
    timers.start("first", 0.01)
    timers.start("second", 0.01)
    async with asyncio.timeout(scaled(5.0)):
        await done.wait()
    assert seen == ["first", "again"]
    assert len(timers) == 0


async def test_clear_stops_everything(timers: Timers, fired: _Fired) -> None:
    for i in range(100):
        timers.start(("ring", i), 0.01 + (i % 7) / 1000)
    timers.clear()
    timers.start("after", 0.05)
    await fired.until(1)
    assert fired.keys == ["after"]


async def test_many_distinct_delays_leave_nothing_behind(timers: Timers, fired: _Fired) -> None:
    for i in range(200):
        timers.start(("idle", i), 0.001 * (i % 40) + 0.005)
    for i in range(0, 200, 2):
        timers.cancel(("idle", i))
    await fired.until(100)
    assert sorted(k[1] for k in fired.keys if isinstance(k, tuple)) == list(range(1, 200, 2))
    assert len(timers) == 0
    assert not timers._delays  # every per-delay queue was dropped with its last timer


async def test_a_failing_callback_does_not_strand_the_other_timers() -> None:
    loop = asyncio.get_running_loop()
    seen: list[Hashable] = []
    done = asyncio.Event()
    errors: list[BaseException] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))

    def fire(key: Hashable) -> None:
        seen.append(key)
        if key == "bad":
            raise RuntimeError("callback failed")
        if key == "later":
            done.set()

    timers = Timers(loop, fire)
    timers.start("bad", 0.01)
    timers.start("good", 0.01)
    timers.start("later", 0.01)
    try:
        async with asyncio.timeout(scaled(5.0)):
            await done.wait()
    finally:
        loop.set_exception_handler(None)
    assert seen == ["bad", "good", "later"]
    assert [str(e) for e in errors] == ["callback failed"]
    assert len(timers) == 0
