"""A single-loop FIFO that can be closed with an exception.

The reader callback puts items without awaiting; consumers ``get`` them. Once
closed, queued items are still delivered and then ``get`` raises the close
exception, so nothing a peer sent before hanging up is lost.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    __slots__ = ("_closed", "_items", "_loop", "_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, maxlen: int | None = None) -> None:
        self._loop = loop
        self._items: deque[T] = deque(maxlen=maxlen)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def put(self, item: T) -> None:
        if self._closed is not None:
            return
        self._items.append(item)
        self._wake_one()

    def close(self, exc: BaseException) -> None:
        """Refuse new items; ``get`` raises ``exc`` once the queue is drained."""
        if self._closed is not None:
            return
        self._closed = exc
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def get_nowait(self) -> T | None:
        return self._items.popleft() if self._items else None

    async def get(self) -> T:
        items = self._items
        while not items:
            if self._closed is not None:
                raise self._closed.with_traceback(None)
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                # A put that woke this waiter must not be lost to a cancelled consumer.
                if items and not waiter.cancelled():
                    self._wake_one()
                raise
        return items.popleft()

    def _wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
