"""The exchange's events as they happen, for ``GET /events?feed=events``: :class:`EventFeed`.

:class:`EventFeed` is a :class:`~systemx.core.records.Recorder`: the core tells
it of every call started, answered and ended, every address registered and
unregistered, every request refused. While nobody watches, each event costs
one method call and one test. While viewers are connected, each event is made
into one Server-Sent Event (``event: <name>`` and ``data: <JSON>``) once, and
queued for every viewer; each viewer's writer sends what has queued in one
write. A viewer that falls :data:`MAX_QUEUED` events behind loses the oldest
and is told how many with a ``dropped`` event, so a slow viewer never holds
memory or the exchange back.

The JSON of each event has ``event`` (its name) and ``time`` (epoch seconds),
and:

* ``call_started``: ``call_id``, ``caller``, ``callee`` (as dialled);
* ``call_answered``: ``call_id``, ``caller``, ``callee`` (null for a call that
  started before the viewer came);
* ``call_ended``: ``call_id``, ``caller``, ``callee``, ``disposition``,
  ``reason``, ``ended_by``, ``duration_s`` (talk time if answered, else since
  the dial), ``ring_seconds``, ``talk_seconds``, ``msgs_up``, ``msgs_down``;
* ``registered``: ``address``, ``session``, ``woken``;
* ``unregistered``: ``address``, ``session``, ``reason``, ``asleep``;
* ``refused``: ``kind`` (REGISTER, DIAL, JOIN, PRESENCE, ...), ``reason``,
  ``address`` (the one asked for), ``session``, ``by`` (the asker's address);
* ``dropped``: ``count``, events this viewer lost for being slow.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import msgspec

from systemx.core.records import CallRecord

__all__ = ["EVENT_NAMES", "KEEPALIVE", "MAX_QUEUED", "EventFeed", "Viewer"]

EVENT_NAMES = (
    "call_started",
    "call_answered",
    "call_ended",
    "registered",
    "unregistered",
    "refused",
    "dropped",
)
MAX_QUEUED = 10_000
"""Events one viewer may fall behind before the oldest are dropped."""
KEEPALIVE = 15.0
"""Seconds of silence after which a viewer is sent an SSE comment (a dead peer shows up)."""

_encode = msgspec.json.Encoder().encode


class Viewer:
    """One connected viewer's queue of encoded events."""

    __slots__ = ("dropped", "queue", "ready")

    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self.ready = asyncio.Event()
        self.dropped = 0

    def take(self) -> bytes:
        """Everything queued, as one chunk to write (with a ``dropped`` event first if any were)."""
        parts = list(self.queue)
        self.queue.clear()
        self.ready.clear()
        if self.dropped:
            parts.insert(0, _sse("dropped", {"event": "dropped", "count": self.dropped}))
            self.dropped = 0
        return b"".join(parts)


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


class EventFeed:
    """A :class:`~systemx.core.records.Recorder` that streams events to its viewers."""

    def __init__(self) -> None:
        self.viewers: list[Viewer] = []
        # The parties of calls started while someone watches (for call_answered).
        self._parties: dict[str, tuple[str, str]] = {}

    def subscribe(self) -> Viewer:
        viewer = Viewer()
        self.viewers.append(viewer)
        return viewer

    def unsubscribe(self, viewer: Viewer) -> None:
        try:
            self.viewers.remove(viewer)
        except ValueError:
            pass
        if not self.viewers:
            self._parties.clear()

    def _publish(self, name: str, data: dict[str, Any]) -> None:
        chunk = _sse(name, data)
        for viewer in self.viewers:
            queue = viewer.queue
            if len(queue) >= MAX_QUEUED:
                queue.popleft()
                viewer.dropped += 1
            queue.append(chunk)
            viewer.ready.set()

    # -- Recorder ------------------------------------------------------------

    def call_started(self, call_id: str, caller: str, to: str, now: float) -> None:
        if not self.viewers:
            return
        self._parties[call_id] = (caller, to)
        self._publish(
            "call_started",
            {"event": "call_started", "time": now, "call_id": call_id, "caller": caller, "callee": to},
        )

    def call_answered(self, call_id: str, now: float) -> None:
        if not self.viewers:
            return
        caller, callee = self._parties.get(call_id, (None, None))
        self._publish(
            "call_answered",
            {"event": "call_answered", "time": now, "call_id": call_id, "caller": caller, "callee": callee},
        )

    def call_ended(self, record: CallRecord) -> None:
        if not self.viewers:
            return
        self._parties.pop(record.call_id, None)
        start = record.answered_at if record.answered_at is not None else record.dialled_at
        self._publish(
            "call_ended",
            {
                "event": "call_ended",
                "time": record.ended_at,
                "call_id": record.call_id,
                "caller": record.caller,
                "callee": record.callee,
                "disposition": record.disposition.value,
                "reason": record.reason,
                "ended_by": record.ended_by.value,
                "duration_s": round(max(record.ended_at - start, 0.0), 3),
                "ring_seconds": round(record.ring_seconds, 3),
                "talk_seconds": round(record.talk_seconds, 3),
                "msgs_up": record.msgs_up,
                "msgs_down": record.msgs_down,
            },
        )

    def bound(self, address: str, session_id: str, now: float, *, woken: bool = False) -> None:
        if not self.viewers:
            return
        self._publish(
            "registered",
            {"event": "registered", "time": now, "address": address, "session": session_id, "woken": woken},
        )

    def unbound(
        self, address: str, session_id: str, reason: str, now: float, *, asleep: bool = False
    ) -> None:
        if not self.viewers:
            return
        self._publish(
            "unregistered",
            {
                "event": "unregistered",
                "time": now,
                "address": address,
                "session": session_id,
                "reason": reason,
                "asleep": asleep,
            },
        )

    def refused(
        self,
        kind: str,
        reason: str,
        address: str | None,
        now: float,
        *,
        session: str = "",
        by: str | None = None,
    ) -> None:
        if not self.viewers:
            return
        self._publish(
            "refused",
            {
                "event": "refused",
                "time": now,
                "kind": kind,
                "reason": reason,
                "address": address,
                "session": session or None,
                "by": by,
            },
        )
