"""Calls: the state machine (one transition table) and :class:`CallBook`, their one owner.

A call is *waiting* while its callee is asleep (being woken), being looked up,
or occupied by an earlier queued call, *ringing* once the callee has been sent
RING, *connected* after ANSWER, and *ended* after any of the ways a call can
end. Every state change goes through :func:`transition`, including a broadcast
session's, and ``docs/architecture.md``'s diagram is generated from
:data:`TRANSITIONS` by :func:`mermaid` (a test keeps the two in step).

:class:`CallBook` is the only writer of the call index (``by_id``), of each
session's ``calls``, of broadcast listeners, of the queues of waiting calls and
of ring timers. :meth:`CallBook._add` and :meth:`CallBook._end` are the only
code that adds a call to or removes it from the indexes, and ``_end`` always
cancels the call's ring timer and tells the :class:`~systemx.core.records.Recorder`.
The facade reads ``by_id`` for the MSG relay, and nothing else writes it.

A party behind a trunk (:mod:`systemx.core.trunks`) is an ordinary session
here with ``trunk`` set: the few frames whose trunk form differs (RING to a
caller behind a trunk instead of RINGING, ANSWER instead of CONNECTED) are
sent by :attr:`CallBook.trunks`, and :meth:`CallBook.add`, :meth:`CallBook.end`
and :meth:`CallBook.leave` are what the trunks use to keep their call legs.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from systemx.core.actions import Actions
from systemx.core.records import CallRecord, Disposition, EndedBy, Recorder
from systemx.core.registry import Registry
from systemx.core.session import Sender, Session, warn
from systemx.core.timerkeys import RingTimer
from systemx.protocol import messages as m
from systemx.protocol.codes import BusyReason, HangupReason
from systemx.quicklog import get_logger

if TYPE_CHECKING:
    from systemx.core.trunks import Trunks

__all__ = [
    "INITIAL",
    "TRANSITIONS",
    "Call",
    "CallBook",
    "CallEvent",
    "CallState",
    "InvalidTransition",
    "mermaid",
    "transition",
]

log = get_logger("systemx.exchange")


class CallState(enum.Enum):
    WAITING = "waiting"
    RINGING = "ringing"
    CONNECTED = "connected"
    ENDED = "ended"

    # Members are singletons: identity hashing is correct and runs in C, where
    # Enum's own __hash__ is a Python call on every transition lookup.
    __hash__ = object.__hash__


class CallEvent(enum.Enum):
    RING = "ring"  # the callee is present and free: RING sent
    ANSWER = "answer"  # the callee answered
    HANGUP = "hangup"  # either party hung up (a caller's hangup while waiting cancels)
    TIMEOUT = "timeout"  # ring timeout or wake timeout
    WAKE_FAILED = "wake_failed"  # the wake handler failed
    UNREACHABLE = "unreachable"  # the directory knows no holder of the address
    DISCONNECT = "disconnect"  # a party's session ended (closed, expired, slept, renamed)
    SHUTDOWN = "shutdown"  # the exchange is stopping

    __hash__ = object.__hash__


S, E = CallState, CallEvent

#: state -> event -> next state. Anything not listed is an illegal move.
TRANSITIONS: dict[CallState, dict[CallEvent, CallState]] = {
    S.WAITING: {
        E.RING: S.RINGING,
        E.HANGUP: S.ENDED,
        E.TIMEOUT: S.ENDED,
        E.WAKE_FAILED: S.ENDED,
        E.UNREACHABLE: S.ENDED,
        E.DISCONNECT: S.ENDED,
        E.SHUTDOWN: S.ENDED,
    },
    S.RINGING: {
        E.ANSWER: S.CONNECTED,
        E.HANGUP: S.ENDED,
        E.TIMEOUT: S.ENDED,
        E.DISCONNECT: S.ENDED,
        E.SHUTDOWN: S.ENDED,
    },
    S.CONNECTED: {
        E.HANGUP: S.ENDED,
        E.DISCONNECT: S.ENDED,
        E.SHUTDOWN: S.ENDED,
    },
    S.ENDED: {},
}

#: How a call starts: the state it is created in, and when.
INITIAL: dict[CallState, str] = {
    S.WAITING: "DIAL (callee asleep or elsewhere)",
    S.RINGING: "DIAL",
}


class InvalidTransition(RuntimeError):
    """An event that the table does not allow in the call's current state."""

    def __init__(self, state: CallState, event: CallEvent) -> None:
        super().__init__(f"call is {state.value}: cannot {event.value}")
        self.state = state
        self.event = event


def transition(state: CallState, event: CallEvent) -> CallState:
    """The state after ``event``; raises :class:`InvalidTransition` if illegal."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise InvalidTransition(state, event) from None


def mermaid() -> str:
    """The state diagram of :data:`TRANSITIONS` as a Mermaid ``stateDiagram``."""
    lines = ["stateDiagram-v2"]
    lines += [f"    [*] --> {state.value}: {why}" for state, why in INITIAL.items()]
    for state, moves in TRANSITIONS.items():
        targets: dict[CallState, list[str]] = {}
        for event, nxt in moves.items():
            targets.setdefault(nxt, []).append(event.value)
        for nxt, events in targets.items():
            lines.append(f"    {state.value} --> {nxt.value}: {', '.join(events)}")
    lines.append("    ended --> [*]")
    return "\n".join(lines) + "\n"


WAITING, RINGING, CONNECTED, ENDED = S.WAITING, S.RINGING, S.CONNECTED, S.ENDED

#: Seconds the callee's side of a call from a trunk lets it ring past the ring
#: timeout, which the caller's side runs, before ending it itself.
TRUNK_RING_BACKSTOP = 5.0

_encode = m.encode
_join = b"".join
_new = object.__new__
#: Where a party's MSGs go: the peer's connection, the MSG prefix naming the sender,
#: and the call's ``[MSGs, bytes]`` tally of that direction.
Route = tuple[Any, bytes, list[int]]

CT_SUFFIX: dict[str | None, bytes] = {
    "text": b',"content_type":"text"}',
    "json": b',"content_type":"json"}',
    "binary": b',"content_type":"binary"}',
    None: b',"content_type":"text"}',
}

# Who ended a call, by event, when no party did.
_EXCHANGE_EVENTS = {E.TIMEOUT, E.WAKE_FAILED, E.UNREACHABLE, E.SHUTDOWN}

# Enum members as module constants: an enum attribute lookup costs several dict
# lookups, and call setup and teardown use these on every call.
_EV_RING, _EV_ANSWER, _EV_HANGUP, _EV_TIMEOUT = E.RING, E.ANSWER, E.HANGUP, E.TIMEOUT
_EV_UNREACHABLE, _EV_DISCONNECT, _EV_SHUTDOWN = E.UNREACHABLE, E.DISCONNECT, E.SHUTDOWN
_ANSWERED, _NO_ANSWER, _BUSY = Disposition.ANSWERED, Disposition.NO_ANSWER, Disposition.BUSY
_CANCELLED, _FAILED = Disposition.CANCELLED, Disposition.FAILED
_BY_CALLER, _BY_CALLEE, _BY_EXCHANGE = EndedBy.CALLER, EndedBy.CALLEE, EndedBy.EXCHANGE
_NORMAL = HangupReason.NORMAL


class Call:
    """A call between a caller and a callee, or a broadcast session.

    ``routes`` maps each party of a connected point-to-point call to the
    ``(peer conn, MSG prefix, tally)`` its MSGs go to (``tally`` is the call's
    ``up`` or ``down`` count of that party's MSGs); it is ``None`` until CONNECTED,
    so a MSG while ringing finds no route and is ignored. A broadcast call has
    ``listeners`` instead and ``callee`` is the broadcaster.
    """

    __slots__ = (
        "aliases",
        "call_id",
        "callee",
        "callee_key",
        "caller",
        "connected_at",
        "created",
        "down",
        "listeners",
        "metadata",
        "quiet",
        "rang_at",
        "relayed_broadcast",
        "ring_timer",
        "ringing",
        "routes",
        "state",
        "to",
        "up",
        "via",
        "woken",
    )

    def __init__(
        self,
        call_id: str,
        caller: Session | None,
        callee: Session | None,
        to: str,
        callee_key: str,
        metadata: dict[str, Any] | None,
        now: float,
        state: CallState,
    ) -> None:
        self.call_id = call_id
        self.caller = caller
        self.callee = callee
        self.to = to
        self.callee_key = callee_key
        self.metadata = metadata
        self.created = now
        self.rang_at: float | None = None
        self.connected_at: float | None = None
        self.state = state
        self.routes: dict[Session, Route] | None = None
        # [MSGs, bytes of their data] from the caller (up) and from the callee (down).
        self.up = [0, 0]
        self.down = [0, 0]
        self.listeners: dict[Session, None] | None = None
        # RingTimer(call_id) without the __init__ frame: call setup is a measured path.
        self.ring_timer = timer = _new(RingTimer)
        timer.call_id = call_id
        self.woken = False
        # (hops, via) of a DIAL_FORWARD that waits for a directory answer (sent on later).
        self.via: tuple[int, list[str]] | None = None
        # A broadcast with listeners on other nodes: the call id each listener's node
        # knows -> that listener (a party behind the node link).
        self.aliases: dict[str, Session] | None = None
        # This call's callee is a broadcast on another node (its listener's HANGUP is echoed).
        self.relayed_broadcast = False
        # Waiting without RINGING yet: the cluster is asked whether its callee is asleep.
        self.quiet = False
        # The caller hears RINGING when the callee rings: it asked in its DIAL, or it
        # heard RINGING already while the call waited (a wake, a directory lookup).
        self.ringing = False

    def parties(self) -> list[Session]:
        out = [p for p in (self.caller, self.callee) if p is not None]
        if self.listeners:
            out.extend(self.listeners)
        return out


def msg_prefix(call_id: str, sender: Session) -> bytes:
    return b'{"type":"MSG","call_id":' + _encode(call_id) + b',"from":' + sender.addr_json + b',"data":'


class CallBook(Sender):
    """Every call of the exchange, and the only code that changes one. See the module docstring."""

    def __init__(
        self,
        actions: Actions,
        registry: Registry,
        recorder: Recorder,
        new_id: Callable[[], str],
        call_timeout: float,
    ) -> None:
        super().__init__(actions.send)
        self._actions = actions
        self._registry = registry
        self._recorder = recorder
        self._new_id = new_id
        self._call_timeout = call_timeout
        #: call id -> call. Read by the MSG relay; written here only.
        self.by_id: dict[str, Call] = {}
        # callee key -> calls waiting for it (asleep, looked up, or busy with an earlier queued call)
        self._queues: dict[str, deque[Call]] = {}
        #: Whether calls wait for an address key (C-level: asked at every REGISTER).
        self.has_waiting: Callable[[str], bool] = self._queues.__contains__
        #: The exchange's trunks (set once by the facade): the trunk forms of RING and ANSWER.
        self.trunks: Trunks | None = None
        #: This node's id in a cluster (call records name the nodes); None in a single process.
        self.node_id: str | None = None

    @property
    def call_timeout(self) -> float:
        return self._call_timeout

    # ------------------------------------------------------------- accessors

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, call_id: str) -> Call | None:
        return self.by_id.get(call_id)

    @property
    def calls(self) -> Iterable[Call]:
        return self.by_id.values()

    def waiting(self, key: str) -> tuple[Call, ...]:
        """The calls waiting for ``key``, oldest first."""
        return tuple(self._queues.get(key, ()))

    def waiting_keys(self) -> list[str]:
        return list(self._queues)

    # ---------------------------------------------------------- index owners

    def _add(self, call: Call) -> None:
        self.by_id[call.call_id] = call
        if call.caller is not None:
            call.caller.calls[call.call_id] = call
        if call.callee is not None:
            call.callee.calls[call.call_id] = call

    def add(self, call: Call) -> None:
        """A call placed by the trunks (a dial forwarded down a trunk)."""
        self._add(call)

    def end(self, call: Call, event: CallEvent, reason: str, now: float) -> None:
        """End ``call`` for the trunks (its trunk is lost or the far side refused it)."""
        self._end(call, event, reason, now)

    def leave(self, s: Session, call: Call, reason: str, now: float) -> None:
        """``s``, a party behind a trunk, leaves ``call`` (HANGUP from the far side, trunk lost)."""
        self._leave(s, call, reason, now)

    def _end(self, call: Call, event: CallEvent, reason: str, now: float, by: Session | None = None) -> None:
        """Remove ``call`` from every index and record it. Notifications are the caller's job."""
        state = call.state
        call.state = transition(state, event)
        call_id = call.call_id
        self.by_id.pop(call_id, None)
        if state is not CONNECTED:
            # A connected call's ring timer was cancelled at ANSWER (a broadcast has none).
            self._actions.cancel_timer(call.ring_timer)
        caller = call.caller
        callee = call.callee
        if call.listeners is None and caller is not None and callee is not None:
            parties = [caller, callee]
        else:
            parties = call.parties()
        for p in parties:
            p.calls.pop(call_id, None)
        if call.aliases:
            for x, q in call.aliases.items():
                q.calls.pop(x, None)
        call.routes = None
        key = call.callee_key
        queue = self._queues.get(key)
        if queue is not None:
            if call in queue:
                queue.remove(call)
            if not queue:
                del self._queues[key]
        self._registry.touch(*parties)
        # The call record, built here once (inline: this runs for every call).
        answered = call.connected_at
        if answered is not None:
            disposition = _ANSWERED
        elif event is _EV_TIMEOUT:
            disposition = _NO_ANSWER
        elif event is _EV_UNREACHABLE:
            disposition = _BUSY
        elif event is _EV_HANGUP or (event is _EV_DISCONNECT and by is not None):
            disposition = _CANCELLED
        else:
            disposition = _FAILED
        if by is None or event in _EXCHANGE_EVENTS:
            ended_by = _BY_EXCHANGE
        else:
            ended_by = _BY_CALLER if by is caller else _BY_CALLEE
        rang = call.rang_at
        # Where the parties are: a node of the cluster, a trunk (None in a single process).
        caller_node = callee_node = trunk_label = None
        for party in (caller, callee):
            link = party.trunk if party is not None else None
            if link is not None:
                if link.node is None:
                    trunk_label = link.label
                elif party is caller:
                    caller_node = link.node
                else:
                    callee_node = link.node
        if self.node_id is not None:
            caller_node = caller_node or self.node_id
            callee_node = callee_node or self.node_id
        self._recorder.call_ended(
            CallRecord(
                call_id=call_id,
                caller=(caller.address or "") if caller is not None else "",
                callee=call.to,
                dialled_at=call.created,
                ended_at=now,
                disposition=disposition,
                reason=reason,
                ended_by=ended_by,
                rang_at=rang,
                answered_at=answered,
                ring_seconds=0.0
                if rang is None
                else max((now if answered is None else answered) - rang, 0.0),
                talk_seconds=0.0 if answered is None else max(now - answered, 0.0),
                woken=call.woken,
                wake_seconds=(rang - call.created) if call.woken and rang is not None else None,
                caller_node=caller_node,
                callee_node=callee_node,
                trunk=trunk_label,
                msgs_up=call.up[0],
                bytes_up=call.up[1],
                msgs_down=call.down[0],
                bytes_down=call.down[1],
            )
        )
        if callee is not None and not callee.closed and key in self._queues:
            self.ring_waiting(key, now)
        for p in parties:
            if p.remote and not p.calls and not p.closed:
                self._registry.forget_remote(p)

    # ------------------------------------------------------------------ dial

    def dial(
        self,
        s: Session,
        callee: Session,
        to: str,
        key: str,
        metadata: dict[str, Any] | None,
        now: float,
        call_id: str | None = None,
        ringing: bool = False,
    ) -> None:
        """``s`` dials ``callee``, registered here: RING, or BUSY with the reason.

        ``call_id`` is given when ``s`` is a caller behind a trunk (its
        DIAL_FORWARD's id, kept on this side). ``ringing``: the caller asked
        for RINGING.
        """
        status = callee.status
        if status == "dnd" or status == "away":
            self._refuse_dial(s, to, status, now, call_id)
            return
        if callee.concurrency == "broadcast":
            if s.trunk is not None and (s.trunk.node is None or call_id is None):
                # Across a federation trunk a broadcast is not offered (the far side may
                # not be SystemX); across a cluster node link it is.
                self._refuse_dial(s, to, BusyReason.UNSUPPORTED, now, call_id)
                return
            self._dial_broadcast(s, callee, to, metadata, now, call_id if s.trunk is not None else None)
            return
        if status == "busy" and not callee.calls:
            self._refuse_dial(s, to, BusyReason.BUSY, now, call_id)
            return
        reason = self._occupied(callee)
        if reason is not None:
            self._refuse_dial(s, to, reason, now, call_id)
            return
        call = Call(call_id or self._new_id(), s, callee, to, key, metadata, now, RINGING)
        call.ringing = ringing
        self._add(call)
        self._ring(call, now)
        self._recorder.call_started(call.call_id, s.address or "", to, now)

    def wait(
        self,
        s: Session,
        to: str,
        key: str,
        metadata: dict[str, Any] | None,
        now: float,
        *,
        waking: bool,
        call_id: str | None = None,
        via: tuple[int, list[str]] | None = None,
        quiet: bool = False,
    ) -> Call:
        """A call from ``s`` waiting for ``key`` (asleep: ``waking``; else being looked up).

        ``via`` is the ``(hops, via)`` of a caller's DIAL_FORWARD, kept to send it on.
        ``quiet``: the caller hears RINGING only at :meth:`announce_waiting` (a cluster
        first asks whether the sleeper is awake on another node).
        """
        call = Call(call_id or self._new_id(), s, None, to, key, metadata, now, WAITING)
        call.ringing = True
        call.woken = waking
        call.via = via
        call.quiet = quiet
        self._add(call)
        self._queues.setdefault(key, deque()).append(call)
        if s.trunk is None and not quiet:  # a caller behind a trunk hears RING once its callee rings
            self._send_msg(s, m.Ringing(call_id=call.call_id, to=to, waking=waking))
        if not waking:
            # A lookup counts towards the ring time; a wake has its own timeout.
            self._actions.start_timer(call.ring_timer, self._call_timeout)
        self._recorder.call_started(call.call_id, s.address or "", to, now)
        return call

    def announce_waiting(self, key: str, waking: bool) -> None:
        """The quiet calls waiting for ``key`` are told RINGING: ``waking`` (its wake starts or
        is under way), or not (it is awake elsewhere: their ring time starts now)."""
        for call in self._queues.get(key, ()):
            if not call.quiet:
                continue
            call.quiet = False
            call.woken = waking
            caller = call.caller
            if caller is not None and caller.trunk is None:
                self._send_msg(caller, m.Ringing(call_id=call.call_id, to=call.to, waking=waking))
            if not waking:
                self._actions.start_timer(call.ring_timer, self._call_timeout)

    def first_waiting(self, key: str) -> Call | None:
        queue = self._queues.get(key)
        return queue[0] if queue else None

    def take_waiting(self, key: str) -> list[Call]:
        """The calls waiting for ``key``, taken out of its queue (to be sent to another node)."""
        queue = self._queues.pop(key, None)
        return list(queue) if queue else []

    def attach(self, call: Call, callee: Session) -> None:
        """Waiting ``call`` now rings ``callee``, a party behind a link (its node was found)."""
        call.state = transition(call.state, _EV_RING)
        call.callee = callee
        callee.calls[call.call_id] = call

    def arm_waiting(self, key: str) -> None:
        """The agent woken for ``key`` registered: its waiting calls start their ring time."""
        start = self._actions.start_timer
        for call in self._queues.get(key, ()):
            start(call.ring_timer, self._call_timeout)

    def ring_waiting(self, key: str, now: float) -> None:
        """Ring the calls waiting for ``key`` while its holder's concurrency allows."""
        queue = self._queues.get(key)
        callee = self._registry.holder(key)
        if not queue or callee is None:
            return
        while queue:
            call = queue[0]
            if callee.concurrency == "broadcast":
                # A waiting call re-placed on a broadcast: it never existed as a call.
                queue.popleft()
                self._forget(call)
                caller = call.caller
                assert caller is not None
                link = caller.trunk
                if link is not None and link.node is None:
                    self._refuse_dial(caller, call.to, BusyReason.UNSUPPORTED, now, call.call_id)
                    continue
                remote_id = call.call_id if link is not None else None
                self._dial_broadcast(caller, callee, call.to, call.metadata, now, remote_id)
                continue
            if self._occupied(callee) is not None:
                break
            queue.popleft()
            call.state = transition(call.state, _EV_RING)
            call.callee = callee
            callee.calls[call.call_id] = call
            self._ring(call, now)
        if not queue:
            self._queues.pop(key, None)

    def fail_waiting(
        self, key: str, reason: str, event: CallEvent, now: float, *, unless_bound: bool = False
    ) -> None:
        """Every call waiting for ``key`` ends, its caller hearing BUSY ``reason``.

        ``unless_bound``: stop as soon as ``key`` is bound here (a holder registered).
        """
        for call in list(self._queues.get(key, ())):
            if unless_bound and key in self._registry:
                break
            if call.caller is not None:
                self._busy(call.caller, call.to, reason, call.call_id)
            self._end(call, event, reason, now)

    def _forget(self, call: Call) -> None:
        self.by_id.pop(call.call_id, None)
        self._actions.cancel_timer(call.ring_timer)
        if call.caller is not None:
            call.caller.calls.pop(call.call_id, None)

    def _occupied(self, callee: Session) -> str | None:
        """Why ``callee`` cannot take another point-to-point call now, if it cannot."""
        if callee.concurrency == "parallel":
            limit = callee.max_sessions
            if limit is not None:
                inbound = sum(1 for c in callee.calls.values() if c.callee is callee)
                if inbound >= limit:
                    return BusyReason.MAX_SESSIONS_REACHED
            return None
        return BusyReason.ALREADY_IN_CALL if callee.calls else None

    def _ring(self, call: Call, now: float) -> None:
        caller, callee = call.caller, call.callee
        assert caller is not None and callee is not None
        send = self._send
        send(
            callee.conn,
            _encode(m.Ring(from_=caller.address or "", call_id=call.call_id, metadata=call.metadata)),
        )
        timeout = self._call_timeout
        if caller.trunk is None:
            if call.ringing:
                send(caller.conn, _encode(m.Ringing(call_id=call.call_id, to=call.to)))
        else:
            # The far side hears RING; the caller's side runs the ring timeout, this one is a backstop.
            assert self.trunks is not None
            self.trunks.rang(call)
            timeout += TRUNK_RING_BACKSTOP
        call.rang_at = now
        self._actions.start_timer(call.ring_timer, timeout)
        self._registry.touch(caller, callee)

    def on_ring_timer(self, key: RingTimer, now: float) -> None:
        call = self.by_id.get(key.call_id)
        if call is None or call.state not in (RINGING, WAITING):
            return
        call_id = call.call_id
        caller = call.caller
        if caller is not None:
            # The id only to a caller that knows it (told RINGING; a trunk always knows).
            told = call.ringing or caller.trunk is not None
            self._busy(caller, call.to, BusyReason.TIMEOUT, call_id if told else None)
        if call.state is RINGING and call.callee is not None:
            self._send_msg(call.callee, m.Hangup(call_id=call_id, reason=HangupReason.TIMEOUT))
        self._end(call, _EV_TIMEOUT, HangupReason.TIMEOUT, now)

    # ------------------------------------------------------- answer, hangup

    def on_answer(self, s: Session, msg: m.Answer, now: float) -> None:
        call = self.by_id.get(msg.call_id)
        if call is None or call.callee is not s:
            warn(s, now, "ANSWER ignored: call %s is not ringing %s", msg.call_id, s.address)
            return
        s.last_activity = now
        if call.listeners is not None:
            return  # a broadcaster's ANSWER is optional and changes nothing
        if call.state is not RINGING:
            # Answered already: the call and the caller's view of it stay as they are.
            warn(s, now, "ANSWER ignored: call %s is already %s", msg.call_id, call.state.value)
            return
        caller = call.caller
        assert caller is not None
        call.state = transition(call.state, _EV_ANSWER)
        call.connected_at = now
        call_id = call.call_id
        self._actions.cancel_timer(call.ring_timer)
        if caller.trunk is not None or s.trunk is not None:
            assert self.trunks is not None
            self.trunks.answered(call, s)
            self._recorder.call_answered(call_id, now)
            return
        # msg_prefix, inline for both parties: the call id is encoded once.
        head = b'{"type":"MSG","call_id":' + _encode(call_id) + b',"from":'
        call.routes = {
            caller: (s.conn, head + caller.addr_json + b',"data":', call.up),
            s: (caller.conn, head + s.addr_json + b',"data":', call.down),
        }
        if self._debug:
            log.debug("Call connected: %s ↔ %s (call: %s)", caller.address, s.address, call_id)
        self._send_msg(caller, m.Connected(call_id=call_id, to=call.to))
        self._recorder.call_answered(call_id, now)

    def on_hangup(self, s: Session, msg: m.Hangup, now: float) -> None:
        call = self.by_id.get(msg.call_id)
        if call is None or (
            s is not call.caller and s is not call.callee and not (call.listeners and s in call.listeners)
        ):
            warn(s, now, "HANGUP ignored: call %s is not a call of %s", msg.call_id, s.address)
            return
        s.last_activity = now
        reason = msg.reason or _NORMAL
        if (call.listeners is not None and s is not call.callee) or (
            call.relayed_broadcast and s is call.caller
        ):
            # A broadcast listener's HANGUP is echoed (here, or for a broadcast on another node).
            self._send_msg(s, m.Hangup(call_id=call.call_id, reason=reason))
        self._leave(s, call, reason, now)

    def drop_session(self, s: Session, reason: str, now: float) -> None:
        """``s`` is going (closed, expired, slept, renamed): it leaves every call it is in."""
        for call in list(s.calls.values()):
            self._leave(s, call, reason, now)

    def _leave(self, s: Session, call: Call, reason: str, now: float) -> None:
        """``s`` leaves ``call`` (hangup or gone); tell whoever remains."""
        event = _EV_DISCONNECT if s.closed else _EV_HANGUP
        if call.listeners is not None:
            aliases = call.aliases
            if s is call.callee:
                frame = _encode(m.Hangup(call_id=call.call_id, reason=reason))
                remote = {q: x for x, q in aliases.items()} if aliases else {}
                for listener in call.listeners:
                    if not listener.closed:
                        x = remote.get(listener)
                        if x is None:
                            self._send(listener.conn, frame)
                        else:
                            self._send_msg(listener, m.Hangup(call_id=x, reason=reason))
                self._end(call, event, reason, now, s)
                return
            call.listeners.pop(s, None)
            s.calls.pop(call.call_id, None)
            if aliases:
                for x, q in list(aliases.items()):
                    if q is s:
                        del aliases[x]
                        s.calls.pop(x, None)
            broadcaster = call.callee
            assert broadcaster is not None
            self._send_msg(broadcaster, m.Hangup(call_id=call.call_id, reason=reason, from_=s.address))
            if not call.listeners:
                self._end(call, event, reason, now, s)
            else:
                self._registry.touch(s)
            return
        if call.state is WAITING:
            self._end(call, event, reason, now, s)
            return
        other = call.callee if s is call.caller else call.caller
        if other is not None:
            self._send_msg(other, m.Hangup(call_id=call.call_id, reason=reason))
        self._end(call, event, reason, now, s)

    def shutdown(self, now: float) -> None:
        """HANGUP (or BUSY, for a waiting call) every call with reason ``shutdown``, and end it."""
        for call in list(self.by_id.values()):
            if call.state is WAITING:
                if call.caller is not None:
                    self._busy(call.caller, call.to, BusyReason.SHUTDOWN, call.call_id)
            else:
                for party in call.parties():
                    self._send_msg(party, m.Hangup(call_id=call.call_id, reason=HangupReason.SHUTDOWN))
            self._end(call, _EV_SHUTDOWN, HangupReason.SHUTDOWN, now)

    # ------------------------------------------------------------- broadcast

    def _dial_broadcast(
        self,
        s: Session,
        caster: Session,
        to: str,
        metadata: dict[str, Any] | None,
        now: float,
        remote_id: str | None = None,
    ) -> None:
        """``s`` joins ``caster``'s broadcast. ``remote_id``: ``s`` is a listener on another
        node, whose node knows its call by that id (frames to it name that id)."""
        call = next(
            (c for c in caster.calls.values() if c.listeners is not None and c.callee is caster), None
        )
        if call is not None and s in (call.listeners or ()):
            self._send_msg(s, m.Connected(call_id=call.call_id, to=to))
            return
        if call is None:
            call = Call(self._new_id(), None, caster, to, caster.key or "", metadata, now, RINGING)
            call.rang_at = now
            call.state = transition(call.state, _EV_ANSWER)
            call.connected_at = now
            call.listeners = {}
            self._add(call)
            log.info("Broadcast started: %s (call: %s)", caster.address, call.call_id)
        listeners = call.listeners
        assert listeners is not None
        if caster.max_listeners is not None and len(listeners) >= caster.max_listeners:
            self._refuse_dial(s, to, BusyReason.MAX_LISTENERS_REACHED, now, remote_id)
            return
        listeners[s] = None
        if remote_id is not None:
            # Its node's call id: the link's calls and the frames to it use that one.
            if call.aliases is None:
                call.aliases = {}
            call.aliases[remote_id] = s
            s.calls[remote_id] = call
            self._send_msg(s, m.Connected(call_id=remote_id, to=to))
        else:
            s.calls[call.call_id] = call
            self._send_msg(s, m.Connected(call_id=call.call_id, to=to))
        self._send_msg(caster, m.Ring(from_=s.address or "", call_id=call.call_id, metadata=metadata))
        self._registry.touch(s, caster)
        log.info("Broadcast listener joined: %s → %s (call: %s)", s.address, caster.address, call.call_id)

    def broadcast_msg(self, s: Session, call: Call, msg: m.Msg) -> None:
        listeners = call.listeners
        assert listeners is not None
        suffix = CT_SUFFIX[msg.content_type]
        if s is call.callee:
            tally = call.down
            tally[0] += 1
            tally[1] += len(msg.data)
            frame = _join((msg_prefix(call.call_id, s), msg.data, suffix))
            send = self._send
            aliases = call.aliases
            if aliases:
                remote = {q: x for x, q in aliases.items()}
                for listener in listeners:
                    x = remote.get(listener)
                    if x is None:
                        send(listener.conn, frame)
                    else:
                        send(listener.conn, _join((msg_prefix(x, s), msg.data, suffix)))
            else:
                for listener in listeners:
                    send(listener.conn, frame)
        elif s in listeners:
            caster = call.callee
            assert caster is not None
            tally = call.up
            tally[0] += 1
            tally[1] += len(msg.data)
            self._send(caster.conn, _join((msg_prefix(call.call_id, s), msg.data, suffix)))
        elif s.trunk is not None and call.aliases and (q := call.aliases.get(msg.call_id)) is not None:
            # A listener on another node, its MSG arriving on the node link.
            caster = call.callee
            assert caster is not None
            tally = call.up
            tally[0] += 1
            tally[1] += len(msg.data)
            self._send(caster.conn, _join((msg_prefix(call.call_id, q), msg.data, suffix)))
