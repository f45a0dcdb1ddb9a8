"""The events port: what happened, told once, to whoever keeps account of it.

The core calls a :class:`Recorder` at the moments it logs today: a call placed
("Call initiated"), answered, ended ("Call ended"), an address bound
("Connection registered", and "Woken" for a woken agent), unbound ("Connection
unregistered", "Asleep"), and a request refused. Call records, metrics
counters, the live feed and the log all hang off this one port, so the core has
one line per event instead of one per consumer; :class:`FanoutRecorder` feeds
several, and :class:`LogRecorder` writes today's log lines from it.

Costs, because the core calls this on its call path:

* no event per MSG. Message and byte counts for :class:`CallRecord` are kept on
  the call itself (integer adds) or counted at the transport, and read once;
* a :class:`CallRecord` is built once, when the call ends, from what the call
  already holds; an event method takes plain arguments, never an allocated
  event object;
* :class:`NullRecorder`'s methods do nothing, so an exchange without consumers
  pays one bound-method call per event.

A recorder must not raise into the core. :class:`FanoutRecorder` logs a failing
recorder's exception and goes on with the others, so a broken sink cannot end
calls or starve the other sinks.

Directions: "up" is caller to callee, "down" callee to caller. All times are the
core's ``now``, epoch seconds.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from systemx.quicklog import get_logger

__all__ = [
    "CallRecord",
    "Disposition",
    "EndedBy",
    "FanoutRecorder",
    "LogRecorder",
    "NullRecorder",
    "Recorder",
    "RecordingRecorder",
    "call_record",
]

log = logging.getLogger("systemx.records")


class Disposition(enum.StrEnum):
    """How a call ended, from the caller's point of view."""

    # The callee answered, however the call ended later.
    ANSWERED = "answered"
    # The caller heard BUSY for the callee's state or absence: occupied, dnd, away,
    # no_such_address, max_sessions_reached, max_listeners_reached.
    BUSY = "busy"
    # It rang, or waited for a wake, until the timeout.
    NO_ANSWER = "no_answer"
    # A party hung up or left before the answer; ``ended_by`` says which.
    CANCELLED = "cancelled"
    # The exchange could not complete it: the wake failed, a link or trunk went
    # down, the exchange shut down.
    FAILED = "failed"


class EndedBy(enum.StrEnum):
    """Whose action ended the call."""

    CALLER = "caller"
    CALLEE = "callee"
    EXCHANGE = "exchange"  # a timeout, a wake failure, a shutdown, a link going down


class CallRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One call, written once when it ends.

    ``callee`` is the address as dialled. ``caller_node``/``callee_node`` name
    the cluster nodes holding each party and ``trunk`` the trunk the call
    crossed, when it did. ``rang_at`` is when RING was sent (``None`` if the
    call never rang), ``answered_at`` when it was answered. ``ring_seconds``
    runs from ``rang_at`` to the answer or the end, ``talk_seconds`` from the
    answer to the end. ``reason`` is the BUSY reason or the hangup reason.
    ``woken``: the callee was woken for this call, ``wake_seconds`` after the
    dial. Build one with :func:`call_record`, which derives the durations.
    """

    call_id: str
    caller: str
    callee: str
    dialled_at: float
    ended_at: float
    disposition: Disposition
    reason: str
    ended_by: EndedBy
    rang_at: float | None = None
    answered_at: float | None = None
    ring_seconds: float = 0.0
    talk_seconds: float = 0.0
    caller_node: str | None = None
    callee_node: str | None = None
    trunk: str | None = None
    msgs_up: int = 0
    msgs_down: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    woken: bool = False
    wake_seconds: float | None = None


def call_record(
    *,
    call_id: str,
    caller: str,
    callee: str,
    dialled_at: float,
    ended_at: float,
    disposition: Disposition,
    reason: str,
    ended_by: EndedBy,
    rang_at: float | None = None,
    answered_at: float | None = None,
    caller_node: str | None = None,
    callee_node: str | None = None,
    trunk: str | None = None,
    msgs_up: int = 0,
    msgs_down: int = 0,
    bytes_up: int = 0,
    bytes_down: int = 0,
    woken: bool = False,
    wake_seconds: float | None = None,
) -> CallRecord:
    """A :class:`CallRecord` with ``ring_seconds`` and ``talk_seconds`` derived from the times."""
    ring_seconds = 0.0
    if rang_at is not None:
        ring_seconds = max((answered_at if answered_at is not None else ended_at) - rang_at, 0.0)
    talk_seconds = max(ended_at - answered_at, 0.0) if answered_at is not None else 0.0
    return CallRecord(
        call_id=call_id,
        caller=caller,
        callee=callee,
        dialled_at=dialled_at,
        ended_at=ended_at,
        disposition=disposition,
        reason=reason,
        ended_by=ended_by,
        rang_at=rang_at,
        answered_at=answered_at,
        ring_seconds=ring_seconds,
        talk_seconds=talk_seconds,
        caller_node=caller_node,
        callee_node=callee_node,
        trunk=trunk,
        msgs_up=msgs_up,
        msgs_down=msgs_down,
        bytes_up=bytes_up,
        bytes_down=bytes_down,
        woken=woken,
        wake_seconds=wake_seconds,
    )


class Recorder(Protocol):
    def call_started(self, call_id: str, caller: str, to: str, now: float) -> None:
        """``caller`` dialled ``to``; the call has an id (it rings, waits for a wake or a lookup)."""

    def call_answered(self, call_id: str, now: float) -> None:
        """The callee answered ``call_id``."""

    def call_ended(self, record: CallRecord) -> None:
        """``record.call_id`` is over; called once per call that :meth:`call_started` announced."""

    def bound(self, address: str, session_id: str, now: float, *, woken: bool = False) -> None:
        """``session_id`` now holds ``address``; ``woken``: it was being woken for a call."""

    def unbound(
        self, address: str, session_id: str, reason: str, now: float, *, asleep: bool = False
    ) -> None:
        """``session_id`` gave up ``address`` because of ``reason`` (a hangup reason or
        ``disconnected``); ``asleep``: the address stays dialable, to be woken."""

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
        """A request of type ``kind`` (``REGISTER``, ``DIAL``, ``JOIN``, ...) was refused
        with the wire reason ``reason``; ``address`` is the one asked for, if any.
        ``session`` is the asking session's id and ``by`` its address, once registered."""


class NullRecorder:
    """A :class:`Recorder` that does nothing."""

    __slots__ = ()

    def call_started(self, call_id: str, caller: str, to: str, now: float) -> None:
        pass

    def call_answered(self, call_id: str, now: float) -> None:
        pass

    def call_ended(self, record: CallRecord) -> None:
        pass

    def bound(self, address: str, session_id: str, now: float, *, woken: bool = False) -> None:
        pass

    def unbound(
        self, address: str, session_id: str, reason: str, now: float, *, asleep: bool = False
    ) -> None:
        pass

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
        pass


@dataclass
class RecordingRecorder:
    """A :class:`Recorder` that keeps every event as a tuple, for tests and tools.

    ``events`` holds ``(name, args...)`` in order; ``records`` the ended calls.
    """

    events: list[tuple[Any, ...]] = field(default_factory=list)
    records: list[CallRecord] = field(default_factory=list)

    def names(self) -> list[str]:
        return [event[0] for event in self.events]

    def call_started(self, call_id: str, caller: str, to: str, now: float) -> None:
        self.events.append(("call_started", call_id, caller, to, now))

    def call_answered(self, call_id: str, now: float) -> None:
        self.events.append(("call_answered", call_id, now))

    def call_ended(self, record: CallRecord) -> None:
        self.events.append(("call_ended", record.call_id, record.ended_at))
        self.records.append(record)

    def bound(self, address: str, session_id: str, now: float, *, woken: bool = False) -> None:
        self.events.append(("bound", address, session_id, now, woken))

    def unbound(
        self, address: str, session_id: str, reason: str, now: float, *, asleep: bool = False
    ) -> None:
        self.events.append(("unbound", address, session_id, reason, now, asleep))

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
        self.events.append(("refused", kind, reason, address, now, session, by))


class FanoutRecorder:
    """Feeds every event to each recorder in turn; one that raises is logged and skipped."""

    __slots__ = ("recorders",)

    def __init__(self, *recorders: Recorder) -> None:
        self.recorders = recorders

    def _failed(self, recorder: Recorder, event: str) -> None:
        log.exception("Recorder %r failed on %s", recorder, event)

    def call_started(self, call_id: str, caller: str, to: str, now: float) -> None:
        for r in self.recorders:
            try:
                r.call_started(call_id, caller, to, now)
            except Exception:
                self._failed(r, "call_started")

    def call_answered(self, call_id: str, now: float) -> None:
        for r in self.recorders:
            try:
                r.call_answered(call_id, now)
            except Exception:
                self._failed(r, "call_answered")

    def call_ended(self, record: CallRecord) -> None:
        for r in self.recorders:
            try:
                r.call_ended(record)
            except Exception:
                self._failed(r, "call_ended")

    def bound(self, address: str, session_id: str, now: float, *, woken: bool = False) -> None:
        for r in self.recorders:
            try:
                r.bound(address, session_id, now, woken=woken)
            except Exception:
                self._failed(r, "bound")

    def unbound(
        self, address: str, session_id: str, reason: str, now: float, *, asleep: bool = False
    ) -> None:
        for r in self.recorders:
            try:
                r.unbound(address, session_id, reason, now, asleep=asleep)
            except Exception:
                self._failed(r, "unbound")

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
        for r in self.recorders:
            try:
                r.refused(kind, reason, address, now, session=session, by=by)
            except Exception:
                self._failed(r, "refused")


# Refusals the core already tells at WARN (bad input, rate limits, authentication,
# policy) or at INFO (a trunk that is down): not told twice.
_TOLD_ELSEWHERE = frozenset(
    {
        ("REGISTER", "invalid_address"),
        ("REGISTER", "invalid_payload"),
        ("REGISTER", "auth_failed"),
        ("REGISTER", "forbidden"),
        ("REGISTER", "rate_limited"),
        ("REGISTER", "wake_handler_not_allowed"),
        ("REGISTER", "wake_profile_limit"),
        ("DIAL", "forbidden"),
        ("DIAL", "unavailable"),
        ("DIAL", "rate_limited"),
    }
)
_REFUSAL_WINDOW = 1.0
_REFUSAL_TABLE_MAX = 4096


class LogRecorder:
    """Writes the exchange's INFO lines from the events, one line per event.

    Every line carries its facts as ``extra`` fields too (``event``, ``address``,
    ``session``, ``call_id``, ``to``, ``reason``, ``disposition``, ``duration_s``,
    ...), which the JSON log format writes as fields of their own. The text is
    made only if a handler writes the line.

    A refused REGISTER or DIAL is one line, at most one a second per session
    (the next says how many were held back), unless the core already warned
    about it (:data:`_TOLD_ELSEWHERE`). Refusals of other requests (JOIN,
    PRESENCE, a request before REGISTER) are counted by the metrics, not logged.

    "Call answered" names both parties: the recorder keeps each started call's
    caller and callee until it ends (one small tuple per call in progress).

    A call's start is logged at DEBUG: an answered call costs two INFO lines
    (answered, ended), a call never answered one.
    """

    __slots__ = ("_calls", "_log", "_refusals")

    def __init__(self, logger: logging.Logger | None = None) -> None:
        # The exchange's own logger (a QuickLogger, whichever module creates it first).
        self._log = logger if logger is not None else get_logger("systemx.exchange")
        self._calls: dict[str, tuple[str, str]] = {}
        # session id -> [time of its last refusal line, refusals held back since]
        self._refusals: dict[str, list[Any]] = {}

    def call_started(self, call_id: str, caller: str, to: str, now: float) -> None:
        log = self._log
        if log.isEnabledFor(_INFO):
            # Kept to name both parties when the call is answered and when it ends.
            self._calls[call_id] = (caller, to)
        if log.isEnabledFor(logging.DEBUG):
            # DEBUG: a call's INFO lines are its answer and its end, both naming both parties.
            log.debug(
                "Call initiated: %s → %s (call: %s)",
                caller,
                to,
                call_id,
                extra={"event": "call_started", "call_id": call_id, "address": caller, "to": to},
            )

    def call_answered(self, call_id: str, now: float) -> None:
        log = self._log
        if log.isEnabledFor(_INFO):
            caller, to = self._calls.get(call_id, _UNKNOWN_PARTIES)
            log.info(
                "Call answered: %s → %s (call: %s)",
                caller,
                to,
                call_id,
                extra={"event": "call_answered", "call_id": call_id, "address": caller, "to": to},
            )

    def call_ended(self, record: CallRecord) -> None:
        self._calls.pop(record.call_id, None)
        log = self._log
        if not log.isEnabledFor(_INFO):
            return
        start = record.answered_at if record.answered_at is not None else record.dialled_at
        duration = round(max(record.ended_at - start, 0.0), 3)
        log.info(
            "Call ended: %s → %s (call: %s, %s, duration %.3fs, reason %s, ended by %s)",
            record.caller,
            record.callee,
            record.call_id,
            record.disposition.value,
            duration,
            record.reason,
            record.ended_by.value,
            extra={
                "event": "call_ended",
                "call_id": record.call_id,
                "address": record.caller,
                "to": record.callee,
                "disposition": record.disposition.value,
                "duration_s": duration,
                "reason": record.reason,
                "ended_by": record.ended_by.value,
            },
        )

    def bound(self, address: str, session_id: str, now: float, *, woken: bool = False) -> None:
        log = self._log
        if not log.isEnabledFor(_INFO):
            return
        log.info(
            "Connection registered: %s (session: %s)",
            address,
            session_id,
            extra={"event": "registered", "address": address, "session": session_id},
        )
        if woken:
            log.info(
                "Woken: %s", address, extra={"event": "woken", "address": address, "session": session_id}
            )

    def unbound(
        self, address: str, session_id: str, reason: str, now: float, *, asleep: bool = False
    ) -> None:
        log = self._log
        if not log.isEnabledFor(_INFO):
            return
        if asleep:
            log.info(
                "Asleep: %s (session: %s, %s)",
                address,
                session_id,
                reason,
                extra={"event": "asleep", "address": address, "session": session_id, "reason": reason},
            )
        else:
            log.info(
                "Connection unregistered: %s (session: %s, %s)",
                address,
                session_id,
                reason,
                extra={"event": "unregistered", "address": address, "session": session_id, "reason": reason},
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
        if (kind != "REGISTER" and kind != "DIAL") or (kind, reason) in _TOLD_ELSEWHERE:
            return
        log = self._log
        if not log.isEnabledFor(_INFO):
            return
        held = self._held_back(session, now)
        if held < 0:
            return
        suffix = f"; {held} similar line(s) held back" if held else ""
        if kind == "REGISTER":
            log.info(
                "Registration refused: %s (session: %s, %s%s)",
                address,
                session,
                reason,
                suffix,
                extra={"event": "register_refused", "address": address, "session": session, "reason": reason},
            )
        else:
            log.info(
                "Call refused: %s → %s (session: %s, %s%s)",
                by or "(unregistered)",
                address,
                session,
                reason,
                suffix,
                extra={
                    "event": "call_refused",
                    "address": by,
                    "to": address,
                    "session": session,
                    "reason": reason,
                },
            )

    def _held_back(self, session: str, now: float) -> int:
        """-1: hold this session's refusal line back; else how many were held back before it."""
        table = self._refusals
        entry = table.get(session)
        if entry is not None:
            if now - entry[0] < _REFUSAL_WINDOW:
                entry[1] += 1
                return -1
            held: int = entry[1]
            entry[0] = now
            entry[1] = 0
            return held
        if len(table) >= _REFUSAL_TABLE_MAX:
            # Only entries inside the window hold anything back; the rest can go.
            for key in [k for k, (at, _) in table.items() if now - at >= _REFUSAL_WINDOW]:
                del table[key]
            if len(table) >= _REFUSAL_TABLE_MAX:
                table.clear()  # a flood from that many sessions at once: start afresh
        table[session] = [now, 0]
        return 0


_INFO = logging.INFO
_UNKNOWN_PARTIES = ("?", "?")
