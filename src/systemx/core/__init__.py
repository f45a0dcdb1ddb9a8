"""The sans-I/O exchange: events in, actions out. No asyncio, no sockets, no clock."""

from systemx.core.actions import Actions, RecordingActions, WakeRequest
from systemx.core.calls import TRANSITIONS, CallEvent, CallState, InvalidTransition, transition
from systemx.core.exchange import Call, Exchange, PartyLine, Session

__all__ = [
    "TRANSITIONS",
    "Actions",
    "Call",
    "CallEvent",
    "CallState",
    "Exchange",
    "InvalidTransition",
    "PartyLine",
    "RecordingActions",
    "Session",
    "WakeRequest",
    "transition",
]
