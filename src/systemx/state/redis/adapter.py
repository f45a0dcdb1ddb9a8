"""How the sans-I/O core uses the async Redis backends: answers now, or later as a callback.

The core's ports (:mod:`systemx.state.ports`) are synchronous: a query answers
at once or returns :data:`~systemx.state.ports.PENDING`, and a pending answer
reaches the core later as an event. The Redis backends are async. This module
joins the two:

* :class:`Later` runs one coroutine per request as a task and calls a
  ``deliver`` callback on the loop with its result, or with the
  :class:`~systemx.state.redis.conn.RedisError` it raised (a
  :class:`~systemx.state.redis.conn.RedisUnavailable` after at most the
  command timeout, 500 ms by default). Every request gets exactly one answer,
  so the core's continuation always runs: an unexpected exception is logged
  and delivered as a ``RedisError`` too.
* :class:`PendingDirectory` and :class:`PendingRoster` present the Redis
  directory and roster as the ports: queries return ``PENDING`` and the answer
  arrives through the callbacks given at construction (the server wires them
  to the core's events, e.g. ``Exchange.on_claimed``); writes are
  fire-and-forget.

**Order.** Tasks start in the order they are created, and each one issues its
first Redis command in its first step, on one connection; Redis runs one
connection's commands in order. So a write followed by a query of the same
key is seen by the query, as the ports promise.

Cost: a task per request (~5 µs of client CPU with the callback), on REGISTER,
DIAL to a remote address, JOIN and LEAVE; never per MSG.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from systemx.state.ports import PENDING, Claimed, InUse, Pending, Registration, RosterMember
from systemx.state.redis.conn import RedisError
from systemx.state.redis.directory import RedisDirectory
from systemx.state.redis.roster import RedisPartyRoster

__all__ = ["Later", "PendingDirectory", "PendingRoster"]

log = logging.getLogger("systemx.state.redis")

T = TypeVar("T")


class Later:
    """Runs coroutines and delivers each result (or its :class:`RedisError`) to a callback."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        """Requests still waiting for their answer."""
        return len(self._tasks)

    def call(self, coro: Coroutine[Any, Any, T], deliver: Callable[[T | RedisError], None]) -> None:
        """Run ``coro``; call ``deliver`` with its result or error, once, on the loop."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)

        def done(task: asyncio.Task[T]) -> None:
            self._tasks.discard(task)
            if task.cancelled():
                return
            exc = task.exception()
            answer: T | RedisError
            if exc is None:
                answer = task.result()
            elif isinstance(exc, RedisError):
                answer = exc
            else:
                log.error("Redis request failed unexpectedly", exc_info=exc)
                answer = RedisError(f"internal error: {exc!r}")
            try:
                deliver(answer)
            except Exception:
                log.exception("Delivering a Redis answer failed")

        task.add_done_callback(done)

    def fire(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` for its effect; a failure is logged."""
        self.call(coro, _log_error)

    async def drain(self) -> None:
        """Wait until every request issued so far is answered."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))


def _log_error(answer: object) -> None:
    if isinstance(answer, RedisError):
        log.warning("A Redis write was not confirmed: %s", answer)


class PendingDirectory:
    """:class:`RedisDirectory` as the :class:`~systemx.state.ports.Directory` port.

    ``on_claimed(reg, answer)`` and ``on_looked_up(key, answer)`` get the
    answers, ``answer`` being the port's answer or a :class:`RedisError`.
    """

    def __init__(
        self,
        directory: RedisDirectory,
        later: Later,
        on_claimed: Callable[[Registration, Claimed | InUse | RedisError], None],
        on_looked_up: Callable[[str, Registration | RedisError | None], None],
    ) -> None:
        self.directory = directory
        self.later = later
        self.on_claimed = on_claimed
        self.on_looked_up = on_looked_up

    def claim(self, reg: Registration) -> Claimed | InUse | Pending:
        self.later.call(self.directory.claim(reg), lambda answer: self.on_claimed(reg, answer))
        return PENDING

    def release(self, key: str, session_id: str) -> None:
        self.later.fire(self.directory.release(key, session_id))

    def lookup(self, key: str) -> Registration | Pending | None:
        self.later.call(self.directory.lookup(key), lambda answer: self.on_looked_up(key, answer))
        return PENDING


class PendingRoster:
    """:class:`RedisPartyRoster` as the :class:`~systemx.state.ports.PartyRoster` port.

    ``on_members(party_key, answer)`` gets the members or a :class:`RedisError`.
    """

    def __init__(
        self,
        roster: RedisPartyRoster,
        later: Later,
        on_members: Callable[[str, list[RosterMember] | RedisError], None],
    ) -> None:
        self.roster = roster
        self.later = later
        self.on_members = on_members

    def join(self, party_key: str, member_id: str, node: str) -> None:
        self.later.fire(self.roster.join(party_key, member_id, node))

    def leave(self, party_key: str, member_id: str) -> None:
        self.later.fire(self.roster.leave(party_key, member_id))

    def members(self, party_key: str) -> list[RosterMember] | Pending:
        self.later.call(self.roster.members(party_key), lambda answer: self.on_members(party_key, answer))
        return PENDING

    def drop_node(self, node: str) -> None:
        self.later.fire(self.roster.drop_node(node))
