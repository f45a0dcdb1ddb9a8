"""The call state machine: one transition table, everything else derives from it.

A call is *waiting* while its callee is asleep (being woken) or occupied by an
earlier queued call, *ringing* once the callee has been sent RING, *connected*
after ANSWER, and *ended* after any of the ways a call can end. Every state
change in :mod:`systemx.core.exchange` goes through :func:`transition`, and
``docs/architecture.md``'s diagram is generated from :data:`TRANSITIONS` by
:func:`mermaid` (a test keeps the two in step).
"""

from __future__ import annotations

import enum

__all__ = ["TRANSITIONS", "CallEvent", "CallState", "InvalidTransition", "mermaid", "transition"]


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
    lines = [
        "stateDiagram-v2",
        "    [*] --> waiting: DIAL (callee asleep or elsewhere)",
        "    [*] --> ringing: DIAL",
    ]
    for state, moves in TRANSITIONS.items():
        targets: dict[CallState, list[str]] = {}
        for event, nxt in moves.items():
            targets.setdefault(nxt, []).append(event.value)
        for nxt, events in targets.items():
            lines.append(f"    {state.value} --> {nxt.value}: {', '.join(events)}")
    lines.append("    ended --> [*]")
    return "\n".join(lines) + "\n"
