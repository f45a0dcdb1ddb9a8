"""A session: one local endpoint connection, its state, and what it may send in each state.

:class:`Session` is the socket-side state of one connection: its endpoint
(``conn``), the address it holds once registered, heartbeat and activity times,
its per-session budgets and its own views of its calls and party lines. Each
field has one writer: the address fields are the registry's
(:class:`systemx.core.registry.Registry`), ``calls`` the call book's,
``parties`` the party lines', the auto-sleep fields the wake component's, the
rate-limit windows the policy's.

:class:`SessionState` is derived, never stored: a closed session is
``CLOSED``, one holding an address ``REGISTERED``, any other ``OPEN``.
:data:`ALLOWED` says which messages each state accepts; a message outside its
state's set is answered ``ERROR not_registered`` (:data:`NEEDS_REGISTRATION`
names them for the answer), and a closed session's frames are ignored.

:func:`warn` is the per-session flood control of WARN lines about a session's
input: a client repeating a bad frame must not be able to flood the log.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final

from systemx.core.records import NullRecorder, Recorder
from systemx.protocol import messages as m
from systemx.quicklog import get_logger

if TYPE_CHECKING:
    from systemx.core.acl import Grants
    from systemx.core.calls import Call
    from systemx.core.parties import PartyLine
    from systemx.core.security import Window
    from systemx.core.timerkeys import AuthTimer, IdleTimer, SleepTimer
    from systemx.core.trunks import Trunk

__all__ = [
    "ALLOWED",
    "NEEDS_REGISTRATION",
    "Sender",
    "Session",
    "SessionState",
    "endpoint_label",
    "warn",
    "who",
]

log = get_logger("systemx.exchange")


class SessionState(enum.Enum):
    OPEN = "open"  # connected, no address yet
    REGISTERED = "registered"  # holds an address
    CLOSED = "closed"  # gone, or going: its frames are ignored

    __hash__ = object.__hash__


#: Messages only a registered session may send, with the name used in the answer.
NEEDS_REGISTRATION: Final[dict[type, str]] = {m.Dial: "DIAL", m.Join: "JOIN", m.Presence: "PRESENCE"}

_EVERY: Final = frozenset(
    {
        m.Register,
        m.Unregister,
        m.Status,
        m.Heartbeat,
        m.Dial,
        m.Answer,
        m.Hangup,
        m.Msg,
        m.Join,
        m.PartyMsg,
        m.Leave,
        m.Presence,
        m.SleepAck,
        m.RegisterPbx,
        m.DialForward,
    }
)

#: state -> the message types a session in that state may send.
ALLOWED: Final[dict[SessionState, frozenset[type]]] = {
    SessionState.OPEN: _EVERY - frozenset(NEEDS_REGISTRATION),
    SessionState.REGISTERED: _EVERY,
    SessionState.CLOSED: frozenset(),
}


class Session:
    """One endpoint connection and, once registered, the address it holds."""

    __slots__ = (
        "addr_json",
        "address",
        "auth_expires",
        "auth_timer",
        "auth_warned",
        "auto_sleep",
        "calls",
        "closed",
        "concurrency",
        "conn",
        "dial_count",
        "dial_window_start",
        "grants",
        "idle_timer",
        "join_window",
        "key",
        "last_activity",
        "last_heartbeat",
        "max_listeners",
        "max_sessions",
        "metadata",
        "parties",
        "presence_count",
        "presence_window_start",
        "register_count",
        "register_window_start",
        "remote",
        "session_id",
        "sleep_pending_at",
        "sleep_timer",
        "status",
        "subject",
        "trunk",
        "wake_profiles_created",
        "warned_at",
        "warnings_dropped",
    )

    def __init__(self, conn: Any, session_id: str, now: float) -> None:
        self.conn = conn
        self.session_id = session_id
        self.address: str | None = None
        self.key: str | None = None
        self.addr_json = b"null"
        self.status = "available"
        self.metadata: dict[str, Any] = {}
        self.concurrency = "single"
        self.max_sessions: int | None = None
        self.max_listeners: int | None = None
        self.calls: dict[str, Call] = {}
        self.parties: dict[str, PartyLine] = {}
        self.last_heartbeat = now
        self.last_activity = now
        self.dial_window_start = 0.0
        self.dial_count = 0
        self.presence_window_start = 0.0
        self.presence_count = 0
        self.auto_sleep: float | None = None
        self.sleep_pending_at: float | None = None
        # Made the first time auto-sleep is switched on (most sessions never do).
        self.idle_timer: IdleTimer | None = None
        self.sleep_timer: SleepTimer | None = None
        self.closed = False
        # An endpoint held by another router process or behind a trunk: its
        # liveness is that node's business, never this one's heartbeat sweep.
        self.remote = False
        # The trunk this session is (a trunk session) or is reached through (a
        # party behind a trunk); None for a local endpoint. See core/trunks.py.
        self.trunk: Trunk | None = None
        self.warned_at = -1.0
        self.warnings_dropped = 0
        # Wake profiles this session created (renames count; updates do not).
        self.wake_profiles_created = 0
        # Set by the policy at REGISTER (systemx.core.security): who registered (None
        # without authentication), what it may do (None: anything), until when.
        self.subject: str | None = None
        self.grants: Grants | None = None
        self.auth_expires: float | None = None
        self.auth_warned = False
        self.auth_timer: AuthTimer | None = None
        # The REGISTER-rename window, as counters (every session counts its first REGISTER).
        self.register_window_start = 0.0
        self.register_count = 0
        self.join_window: Window | None = None

    def __repr__(self) -> str:
        return f"<Session {self.session_id} {self.address or '(unregistered)'}>"

    @property
    def state(self) -> SessionState:
        if self.closed:
            return SessionState.CLOSED
        return SessionState.OPEN if self.key is None else SessionState.REGISTERED


def who(s: Session) -> str:
    """``ADDRESS (session: ID)``, or ``(unregistered) (session: ID)``, for DEBUG lines."""
    return f"{s.address or '(unregistered)'} (session: {s.session_id})"


def endpoint_label(conn: Any) -> str:
    """Who an endpoint reaches, for DEBUG lines: its session when it carries one
    (``session`` or ``_session``), else the endpoint's type."""
    s = getattr(conn, "session", None) or getattr(conn, "_session", None)
    if isinstance(s, Session):
        return who(s)
    return f"({type(conn).__name__})"


def warn(s: Session, now: float, msg: str, *args: Any) -> None:
    """A WARN about one session's input, at most one a second per session.

    A client repeating a bad frame must not be able to flood the log (each line
    costs far more than the frame); the next line says how many were held back.
    """
    if now - s.warned_at < 1.0:
        s.warnings_dropped += 1
        return
    if s.warnings_dropped:
        msg += f" ({s.warnings_dropped} similar warnings suppressed)"
        s.warnings_dropped = 0
    s.warned_at = now
    log.warning(msg, *args)


class Sender:
    """What every component sends with: the facade sets ``_send`` (plain, or logging at DEBUG),
    and the recorder that hears of each refused request."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._debug = False
        self._recorder: Recorder = NullRecorder()

    def use_send(self, send: Any, debug: bool) -> None:
        self._send = send
        self._debug = debug

    def _send_msg(self, s: Session, msg: Any) -> None:
        if not s.closed:
            self._send(s.conn, m.encode(msg))

    def _error(self, s: Session, reason: str, context: str, detail: str) -> None:
        self._send_msg(s, m.Error(reason=reason, context=context, detail=detail))

    def _busy(self, s: Session, to: str, reason: str, call_id: str | None = None) -> None:
        """BUSY for a call that existed (it timed out, its wake failed, ...): its record tells."""
        self._send_msg(s, m.Busy(to=to, reason=reason, call_id=call_id))

    def _refuse_dial(self, s: Session, to: str, reason: str, now: float, call_id: str | None = None) -> None:
        """A DIAL refused before it became a call: BUSY, and the recorder hears of it.

        ``call_id`` names the call of a DIAL_FORWARD (its caller is behind a trunk).
        """
        self._send_msg(s, m.Busy(to=to, reason=reason, call_id=call_id))
        self._recorder.refused("DIAL", reason, to, now, session=s.session_id, by=s.address)

    def _register_failed(
        self, s: Session, reason: str, address: str | None, detail: str | None, now: float
    ) -> None:
        self._send_msg(s, m.RegisterFailed(reason=reason, address=address, detail=detail))
        self._recorder.refused("REGISTER", reason, address, now, session=s.session_id, by=s.address)

    def _refuse(self, s: Session, reason: str, context: str, detail: str, now: float) -> None:
        """ERROR for a refused request (rate limited, not registered): the recorder hears of it."""
        self._error(s, reason, context, detail)
        self._recorder.refused(context, reason, s.address, now, session=s.session_id, by=s.address)
