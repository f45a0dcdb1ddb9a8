"""The core's timers on the event loop: one loop timer per delay, not one per key.

Every call that rings starts a ring timer and cancels it when answered or
ended. Through ``loop.call_later`` that is a ``TimerHandle`` and a libuv timer
started and stopped per call (1.3 us measured on uvloop). Timers that share a
delay expire in the order they were started (the loop's clock is monotonic),
so :class:`Timers` keeps, per delay, an insertion-ordered ``key -> deadline``
dict and one loop timer armed for its oldest deadline: starting, restarting
and cancelling a timer are dict operations. A delay's loop timer is cancelled
when its last key is, and re-armed for the next deadline when it fires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

__all__ = ["Timers"]

# uvloop rounds timers to the millisecond: a timer may run up to this much
# before its deadline reads as reached on loop.time().
_EARLY = 0.001


class _Delay:
    """The running timers with one delay, oldest deadline first."""

    __slots__ = ("delay", "entries", "handle")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.entries: dict[Hashable, float] = {}
        self.handle: asyncio.TimerHandle | None = None


class Timers:
    """Keyed one-shot timers; ``fire(key)`` runs when a timer expires.

    Starting a key that is running restarts it (the old deadline is forgotten).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[Hashable], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._time = loop.time
        self._by_key: dict[Hashable, _Delay] = {}
        self._delays: dict[float, _Delay] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._by_key

    def start(self, key: Hashable, delay: float) -> None:
        old = self._by_key.get(key)
        if old is not None:
            del old.entries[key]
        queue = self._delays.get(delay)
        if queue is None:
            queue = self._delays[delay] = _Delay(delay)
        deadline = self._time() + delay
        queue.entries[key] = deadline
        self._by_key[key] = queue
        if queue.handle is None:
            queue.handle = self._loop.call_at(deadline, self._expire, queue)
        if old is not None and old is not queue and not old.entries:
            self._drop(old)

    def cancel(self, key: Hashable) -> None:
        queue = self._by_key.pop(key, None)
        if queue is not None:
            del queue.entries[key]
            if not queue.entries:
                self._drop(queue)

    def clear(self) -> None:
        for queue in self._delays.values():
            if queue.handle is not None:
                queue.handle.cancel()
        self._delays.clear()
        self._by_key.clear()

    def _drop(self, queue: _Delay) -> None:
        if queue.handle is not None:
            queue.handle.cancel()
            queue.handle = None
        if self._delays.get(queue.delay) is queue:
            del self._delays[queue.delay]

    def _expire(self, queue: _Delay) -> None:
        queue.handle = None
        entries = queue.entries
        by_key = self._by_key
        try:
            while entries:
                key, deadline = next(iter(entries.items()))
                if deadline > self._time() + _EARLY:
                    break
                del entries[key]
                del by_key[key]
                # May start or cancel timers, this queue's included: read it afresh each time.
                self._fire(key)
        finally:
            # Also after fire() raised: the timers still due or pending must not be stranded.
            if queue.handle is None:  # (a timer started by fire() may have armed it)
                if entries:
                    deadline = next(iter(entries.values()))
                    queue.handle = self._loop.call_at(deadline, self._expire, queue)
                else:
                    self._drop(queue)
