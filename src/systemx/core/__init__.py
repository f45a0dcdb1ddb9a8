"""The sans-I/O exchange: events in, actions out. No asyncio, no sockets, no clock."""

from systemx.core.actions import Actions, RecordingActions, WakeRequest
from systemx.core.calls import (
    TRANSITIONS,
    Call,
    CallBook,
    CallEvent,
    CallState,
    InvalidTransition,
    transition,
)
from systemx.core.config import CoreConfig
from systemx.core.exchange import Exchange
from systemx.core.parties import PartyLine, PartyLines
from systemx.core.session import Session, SessionState
from systemx.core.timerkeys import SWEEP, IdleTimer, RingTimer, SleepTimer, Sweep, WakeTimer

__all__ = [
    "SWEEP",
    "TRANSITIONS",
    "Actions",
    "Call",
    "CallBook",
    "CallEvent",
    "CallState",
    "CoreConfig",
    "Exchange",
    "IdleTimer",
    "InvalidTransition",
    "PartyLine",
    "PartyLines",
    "RecordingActions",
    "RingTimer",
    "Session",
    "SessionState",
    "SleepTimer",
    "Sweep",
    "WakeRequest",
    "WakeTimer",
    "transition",
]
