"""The core's timer keys: one small type per kind of timer, naming what it times.

A key is what the core hands ``Actions.start_timer`` and gets back in
``Exchange.on_timer``; the facade dispatches on ``type(key)`` to the component
that owns the timer, and a key of any other type raises (a timer nobody owns is
a bug, not something to drop quietly).

Keys hash and compare by identity: each is made once by its owner and kept
(:class:`RingTimer` on its call, :class:`IdleTimer`, :class:`SleepTimer` and
:class:`AuthTimer` on their session, :class:`TrunkTimer` on its trunk,
:class:`WakeTimer` with the wake, :data:`SWEEP` once), so starting and
cancelling a timer costs a C-level hash and no allocation. Find one in a test by
its type and field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from systemx.core.session import Session

__all__ = ["SWEEP", "AuthTimer", "IdleTimer", "RingTimer", "SleepTimer", "Sweep", "TrunkTimer", "WakeTimer"]


class RingTimer:
    """The ring (or lookup) time of call ``call_id`` ran out."""

    __slots__ = ("call_id",)

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id

    def __repr__(self) -> str:
        return f"RingTimer({self.call_id!r})"


class WakeTimer:
    """The agent woken for the address key ``key`` did not REGISTER in time."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __repr__(self) -> str:
        return f"WakeTimer({self.key!r})"


class IdleTimer:
    """``session`` (with auto-sleep on) may have been idle long enough to sleep."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def __repr__(self) -> str:
        return f"IdleTimer({self.session!r})"


class SleepTimer:
    """The grace period after SLEEP_PENDING to ``session`` is over."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def __repr__(self) -> str:
        return f"SleepTimer({self.session!r})"


class Sweep:
    """The periodic heartbeat sweep; there is one, :data:`SWEEP`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Sweep()"


SWEEP: Final = Sweep()


class AuthTimer:
    """The credential of ``session`` is about to expire (AUTH_EXPIRING), or its grace is over."""

    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session

    def __repr__(self) -> str:
        return f"AuthTimer({self.session!r})"


class TrunkTimer:
    """The trunk ``trunk_id`` has been down for its whole grace."""

    __slots__ = ("trunk_id",)

    def __init__(self, trunk_id: str) -> None:
        self.trunk_id = trunk_id

    def __repr__(self) -> str:
        return f"TrunkTimer({self.trunk_id!r})"
