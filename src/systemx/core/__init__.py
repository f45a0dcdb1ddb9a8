"""The sans-I/O exchange: events in, actions out. No asyncio, no sockets, no clock.

Names are imported from their modules when first used, so that importing one
module of the core (as :mod:`systemx.state.ports` does with its records) does
not import all of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULES = {
    "Actions": "actions",
    "RecordingActions": "actions",
    "WakeRequest": "actions",
    "TRANSITIONS": "calls",
    "Call": "calls",
    "CallBook": "calls",
    "CallEvent": "calls",
    "CallState": "calls",
    "InvalidTransition": "calls",
    "transition": "calls",
    "CoreConfig": "config",
    "Exchange": "exchange",
    "PartyLine": "parties",
    "PartyLines": "parties",
    "Session": "session",
    "SessionState": "session",
    "SWEEP": "timerkeys",
    "IdleTimer": "timerkeys",
    "RingTimer": "timerkeys",
    "SleepTimer": "timerkeys",
    "Sweep": "timerkeys",
    "WakeTimer": "timerkeys",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
