"""The exchange: registry, calls, party lines and presence as a sans-I/O machine.

:class:`Exchange` takes events — a session opened, a frame from a session, a
session closed, a timer fired, a wake failed — each with the current time
``now`` (epoch seconds), and answers with actions on its :class:`Actions` port
(send, close, start/cancel timer, wake, persist). It never reads a clock, never
touches a socket and never imports asyncio, so unit tests drive it directly.

Ownership rules:

* :meth:`Exchange._on_register` binds an address to a session and
  :meth:`Exchange._release` unbinds it; both keep the presence index in step.
* :meth:`Exchange._add_call` / :meth:`Exchange._end_call` are the only code that
  adds a call to or removes it from the call indexes; ``_end_call`` always
  cancels the call's timer. State changes go through
  :func:`systemx.core.calls.transition`.

The MSG relay is the hot path: one typed decode, one dict lookup of the call,
one dict lookup of the sender in the call's routes, one join of
a prefix built when the call connected with the sender's raw ``data``, and one
send. The endpoint's ``data`` is never re-serialised.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import msgspec

from systemx.config import Settings
from systemx.core.acl import Grants
from systemx.core.actions import Actions, WakeRequest
from systemx.core.calls import CallEvent, CallState, transition
from systemx.core.security import Admission, Security, Window
from systemx.core.trunks import TRUNK_RING_BACKSTOP, Trunk, Trunks
from systemx.core.wakepolicy import check_wake_handler, stored_handler, validate_wake_handler, wake_timeout
from systemx.protocol import messages as m
from systemx.protocol.address import address_key, domain_of, is_valid_address
from systemx.protocol.codes import (
    CLIENT_STATUSES,
    BusyReason,
    CloseCode,
    CloseReason,
    ErrorReason,
    HangupReason,
    JoinFailedReason,
    PartyLeftReason,
    RegisterFailedReason,
    SleepReason,
    Status,
)
from systemx.protocol.errors import NOT_JSON, describe_invalid
from systemx.quicklog import get_logger
from systemx.state.presence import MemoryPresenceIndex, PresenceIndex, PresenceRow

__all__ = ["Call", "Exchange", "PartyLine", "Session"]

log = get_logger("systemx.exchange")

_encode = m.encode
# Splices a frame from its parts with one copy of each (chained + copies the data each time).
_join = b"".join
_decode = m.decode_client
_DecodeError = msgspec.DecodeError
_ValidationError = msgspec.ValidationError

_CT_SUFFIX: dict[str | None, bytes] = {
    "text": b',"content_type":"text"}',
    "json": b',"content_type":"json"}',
    "binary": b',"content_type":"binary"}',
    None: b',"content_type":"text"}',
}
# PARTY_MSG carries content_type only when the sender gave one.
_PARTY_CT_SUFFIX: dict[str | None, bytes] = {**_CT_SUFFIX, None: b"}"}

# The AUTH_EXPIRING warning goes out this long before a session's credential expires.
AUTH_WARN_SECONDS = 60.0

WAITING, RINGING, CONNECTED, ENDED = (
    CallState.WAITING,
    CallState.RINGING,
    CallState.CONNECTED,
    CallState.ENDED,
)


class Session:
    """One endpoint connection and, once registered, the address it holds."""

    __slots__ = (
        "addr_json",
        "address",
        "auth_expires",
        "auth_warned",
        "auto_sleep",
        "calls",
        "closed",
        "concurrency",
        "conn",
        "dial_count",
        "dial_window_start",
        "grants",
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
        "register_window",
        "remote",
        "session_id",
        "sleep_pending_at",
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
        # Set by the security hook at REGISTER (systemx.core.security): who registered
        # (None without authentication), what it may do (None: anything), until when.
        self.subject: str | None = None
        self.grants: Grants | None = None
        self.auth_expires: float | None = None
        self.auth_warned = False
        self.register_window: Window | None = None
        self.join_window: Window | None = None

    def __repr__(self) -> str:
        return f"<Session {self.session_id} {self.address or '(unregistered)'}>"


class Call:
    """A call between a caller and a callee, or a broadcast session.

    ``routes`` maps each party of a connected point-to-point call to the
    ``(peer conn, MSG prefix)`` its MSGs go to; it is ``None`` until CONNECTED,
    so a MSG while ringing finds no route and is ignored. A broadcast call has
    ``listeners`` instead and ``callee`` is the broadcaster.
    """

    __slots__ = (
        "call_id",
        "callee",
        "callee_key",
        "caller",
        "connected_at",
        "created",
        "listeners",
        "metadata",
        "routes",
        "state",
        "to",
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
        self.connected_at: float | None = None
        self.state = state
        self.routes: dict[Session, tuple[Any, bytes]] | None = None
        self.listeners: dict[Session, None] | None = None

    def parties(self) -> list[Session]:
        out = [p for p in (self.caller, self.callee) if p is not None]
        if self.listeners:
            out.extend(self.listeners)
        return out


class PartyLine:
    """A group call: every PARTY_MSG goes to every other participant."""

    __slots__ = ("key", "members", "name", "name_json")

    def __init__(self, name: str, key: str) -> None:
        self.name = name
        self.key = key
        self.name_json = _encode(name)
        self.members: dict[Session, str] = {}


def _msg_prefix(call_id: str, sender: Session) -> bytes:
    return b'{"type":"MSG","call_id":' + _encode(call_id) + b',"from":' + sender.addr_json + b',"data":'


def _validate_metadata(meta: dict[str, Any]) -> str | None:
    caps = meta.get("capabilities")
    if caps is not None and (not isinstance(caps, list) or not all(isinstance(c, str) for c in caps)):
        return "metadata.capabilities must be a list of strings"
    loc = meta.get("location")
    if loc is not None:
        if not isinstance(loc, dict):
            return "metadata.location must be an object {lat, lon}"
        lat, lon = loc.get("lat"), loc.get("lon")
        for name, value, bound in (("lat", lat, 90.0), ("lon", lon, 180.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"metadata.location.{name} must be a number"
            # Compared as given: float() of a huge integer would raise.
            if not -bound <= value <= bound:
                return f"metadata.location.{name} must be between {-bound:g} and {bound:g}"
    status = meta.get("status")
    if status is not None and (not isinstance(status, str) or status not in CLIENT_STATUSES):
        return "metadata.status must be one of available, busy, dnd, away"
    return None


_RESULT_HEAD = b'{"type":"PRESENCE_RESULT","addresses":['
_RESULT_TAIL = b"]}"
_RESULT_TRUNCATED_TAIL = b'],"truncated":true}'


def _presence_result(rows: list[PresenceRow], max_bytes: int) -> bytes:
    """The PRESENCE_RESULT frame for ``rows``, at most ``max_bytes`` long.

    Entries are encoded one at a time, so a query matching much large metadata
    costs no more than the bound: the first entry that would not fit ends the list,
    and the frame says ``"truncated":true``.
    """
    parts: list[bytes] = []
    size = len(_RESULT_HEAD) + len(_RESULT_TAIL)
    for address, status, metadata in rows:
        part = _encode(m.PresenceEntry(address=address, status=status, metadata=metadata))
        size += len(part) + (1 if parts else 0)
        if size > max_bytes:
            break
        parts.append(part)
    else:
        return _join((_RESULT_HEAD, b",".join(parts), _RESULT_TAIL))
    room = max_bytes - len(_RESULT_HEAD) - len(_RESULT_TRUNCATED_TAIL)
    used = sum(map(len, parts)) + max(len(parts) - 1, 0)
    while parts and used > room:
        used -= len(parts.pop()) + (1 if parts else 0)
    return _join((_RESULT_HEAD, b",".join(parts), _RESULT_TRUNCATED_TAIL))
def _bound_value(value: Any, name: str, max_depth: int, max_bytes: int) -> str | None:
    """Why ``value`` (a decoded JSON value the exchange keeps) is refused, or None.

    Anything kept is sent or stored again later (RING, PRESENCE_RESULT, the wake
    profile, the webhook body), so it must stay encodable there: at most
    ``max_depth`` levels of objects and arrays and ``max_bytes`` bytes encoded.
    """
    too_deep = f"{name} is nested deeper than {max_depth} levels"
    try:
        encoded = _encode(value)
    except RecursionError:
        return too_deep
    if len(encoded) > max_bytes:
        return f"{name} is over {max_bytes} bytes encoded"
    # Depth is at most the number of brackets; walk only when that could be too many.
    if encoded.count(b"[") + encoded.count(b"{") > max_depth and _deeper_than(value, max_depth):
        return too_deep
    return None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` objects/arrays (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _location(meta: dict[str, Any]) -> tuple[float | None, float | None]:
    loc = meta.get("location")
    if isinstance(loc, dict):
        return float(loc["lat"]), float(loc["lon"])
    return None, None


class Exchange:
    """The whole exchange state and its rules. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        actions: Actions,
        *,
        profiles: dict[str, dict[str, Any]] | None = None,
        new_id: Callable[[], str] | None = None,
        presence: PresenceIndex | None = None,
        directory: bool = False,
        security: Security | None = None,
    ) -> None:
        self.settings = settings
        # SECURITY HOOK (to be re-homed into Policy): None when SYSTEMX_AUTH=none and no
        # SYSTEMX_POLICY_FILE, and then every check below is one ``is None`` test.
        self._security = security if security is not None else Security.from_settings(settings)
        self._actions = actions
        self._send = actions.send
        self._new_id = new_id or _uuid4
        self._sessions: dict[Session, None] = {}
        self._by_key: dict[str, Session] = {}
        self._calls: dict[str, Call] = {}
        self._parties: dict[str, PartyLine] = {}
        # key -> {"address", "handler", "metadata"}: addresses that sleep when absent
        self._profiles: dict[str, dict[str, Any]] = {}
        # key -> calls waiting for that callee (asleep, or busy with an earlier queued call)
        self._queues: dict[str, deque[Call]] = {}
        # key -> the address a running wake handler was asked to wake (as the profile wrote it)
        self._waking: dict[str, str] = {}
        # With a directory (cluster, federation), an address not held here is looked
        # up by an action and the answer returns as ``on_lookup_result``.
        self._directory = directory
        self._looking_up: set[str] = set()
        self._presence: PresenceIndex = presence if presence is not None else MemoryPresenceIndex()
        self._call_timeout = settings.call_timeout_ms / 1000.0
        self._hb_timeout = settings.heartbeat_timeout_ms / 1000.0
        self._hb_interval = settings.heartbeat_interval_ms / 1000.0
        self._dial_max = settings.dial_max_attempts
        self._dial_window = settings.dial_window_ms / 1000.0
        self._presence_max = settings.presence_max_queries
        self._presence_window = settings.presence_window_ms / 1000.0
        self._stopping = False
        #: Frames whose handler raised (answered ``ERROR internal_error``).
        self.internal_errors = 0
        self._handlers: dict[type, Callable[[Session, Any, float], None]] = {
            m.Register: self._on_register,
            m.Unregister: self._on_unregister,
            m.Status: self._on_status,
            m.Heartbeat: self._on_heartbeat,
            m.Dial: self._on_dial,
            m.Answer: self._on_answer,
            m.Hangup: self._on_hangup,
            m.Join: self._on_join,
            m.PartyMsg: self._on_party_msg,
            m.Leave: self._on_leave,
            m.Presence: self._on_presence,
            m.SleepAck: self._on_sleep_ack,
            m.RegisterPbx: self._on_register_pbx,
            m.DialForward: self._on_dial_forward,
        }
        # Checks of values the exchange keeps, run before the handler; False: refused and answered.
        self._door: dict[type, Callable[[Session, Any, float], bool]] = {
            m.Register: self._door_register,
            m.Dial: self._door_dial,
        }
        self._max_depth = settings.max_json_depth
        self._max_value_bytes = settings.max_value_bytes
        # Federation: every trunk, its routes and the legs that cross it.
        self._trunks = Trunks(self, _uuid4())
        self.refresh_log_level()
        for profile in (profiles or {}).values():
            self._load_profile(profile)

    # ------------------------------------------------------------------ events

    def refresh_log_level(self) -> None:
        """Re-read whether DEBUG traffic logging is on (it costs nothing when off)."""
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._send = self._send_logged if self._debug else self._actions.send

    def start(self, now: float) -> None:
        self._actions.start_timer(("sweep",), self._hb_interval)

    def on_open(self, conn: Any, now: float) -> Session:
        session = Session(conn, _uuid4(), now)
        self._sessions[session] = None
        if self._stopping:
            self._close(session, CloseCode.GOING_AWAY, CloseReason.SHUTDOWN)
        return session

    def on_data(self, s: Session, data: bytes, now: float) -> None:
        """One complete WebSocket message from ``s``."""
        if s.closed:
            return
        if not data.isascii() and not _is_utf8(data):
            # msgspec skips unknown fields and Raw values unchecked; every byte must be valid.
            self._close(s, CloseCode.INVALID_PAYLOAD, CloseReason.INVALID_UTF8)
            return
        try:
            msg = _decode(data)
        except (_ValidationError, _DecodeError, RecursionError) as exc:
            # Not JSON, nested deeper than the decoder follows, or not a valid message.
            if s.trunk is not None and type(exc) is _ValidationError:  # trunk hook: RING, BUSY...
                try:
                    self._trunks.on_raw(s, data, now)
                except Exception:
                    self._internal_error(s, None, now)
                return
            self._invalid(s, data, exc, now)
            return
        if self._debug:
            log.debug("<- %s %s", s.address or s.session_id, data[:512].decode("utf-8", "replace"))
        # The error boundary: a handler that raises costs its own frame an ERROR, nothing
        # more (a try block costs nothing on 3.11 until something raises).
        try:
            if type(msg) is m.Msg:
                # Hot path.
                s.last_activity = now
                call = self._calls.get(msg.call_id)
                if call is not None:
                    routes = call.routes
                    if routes is not None:
                        route = routes.get(s)
                        if route is not None:
                            self._send(route[0], _join((route[1], msg.data, _CT_SUFFIX[msg.content_type])))
                            return
                    elif call.listeners is not None and call.state is CONNECTED:
                        self._broadcast_msg(s, call, msg)
                        return
                self._warn(
                    s, now, "MSG ignored: call %s is not a connected call of %s", msg.call_id, s.address
                )
                return
            if s.trunk is not None:  # trunk hook: control frames from a trunk
                self._trunks.on_message(s, msg, now)
                return
            check = self._door.get(type(msg))
            if check is None or check(s, msg, now):
                self._handlers[type(msg)](s, msg, now)
        except Exception:
            self._internal_error(s, msg, now)

    def on_close(self, s: Session, now: float) -> None:
        """The session's socket is gone. Safe to call more than once."""
        if not s.closed:
            s.closed = True
            self._release(s, HangupReason.PEER_DISCONNECTED, now)
        self._sessions.pop(s, None)

    def on_timer(self, key: Hashable, now: float) -> None:
        assert isinstance(key, tuple)
        kind = key[0]
        if kind == "ring":
            self._ring_timeout(key[1], now)
        elif kind == "sweep":
            self._sweep(now)
        elif kind == "wake":
            self._wake_ended(key[1], BusyReason.TIMEOUT, now)
        elif kind == "idle":
            self._idle_expired(key[1], now)
        elif kind == "sleep":
            self._sleep_due(key[1], now)
        elif kind == "trunk":  # trunk hook: a dropped trunk's grace is over
            self._trunks.on_timer(key, now)
        elif kind == "auth":
            self._auth_due(key[1], now)

    def on_wake_failed(self, address: str, detail: str, now: float) -> None:
        key = address_key(address) if is_valid_address(address) else address
        if key in self._waking:
            log.warning("Wake failed: %s (%s)", address, detail)
            self._wake_ended(key, BusyReason.WAKE_FAILED, now)

    def reload_security(self) -> str:
        """Re-read the tokens and policy files (SIGHUP); says what happened, for the log."""
        if self._security is None:
            return "nothing to reload (SYSTEMX_AUTH=none, no SYSTEMX_POLICY_FILE)"
        return self._security.reload()

    def is_registered(self, address: str) -> bool:
        return is_valid_address(address) and address_key(address) in self._by_key

    def shutdown(self, now: float) -> None:
        """HANGUP every call with reason ``shutdown`` and close every session 1001."""
        self._stopping = True
        for call in list(self._calls.values()):
            if call.state is WAITING:
                if call.caller is not None:
                    self._busy(call.caller, call.to, BusyReason.SHUTDOWN, call.call_id)
            else:
                for party in call.parties():
                    self._send_msg(party, m.Hangup(call_id=call.call_id, reason=HangupReason.SHUTDOWN))
            self._end_call(call, CallEvent.SHUTDOWN, HangupReason.SHUTDOWN, now)
        for s in list(self._sessions):
            if not s.closed:
                self._close(s, CloseCode.GOING_AWAY, CloseReason.SHUTDOWN)
                s.closed = True
                self._release(s, HangupReason.SHUTDOWN, now)

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self._stopping else "ok",
            "sessions": len(self._sessions),
            "registered": len(self._by_key),
            "calls": len(self._calls),
            "asleep": sum(1 for k in self._profiles if k not in self._by_key),
            "waking": len(self._waking),
            "parties": len(self._parties),
            "internal_errors": self.internal_errors,
            "trunks": self._trunks.up(),
        }

    # ------------------------------------------------------------ introspection

    def session_for(self, address: str) -> Session | None:
        return self._by_key.get(address_key(address)) if is_valid_address(address) else None

    def call(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def party(self, name: str) -> PartyLine | None:
        return self._parties.get(address_key(name)) if is_valid_address(name) else None

    def profiles(self) -> dict[str, dict[str, Any]]:
        return dict(self._profiles)

    @property
    def sessions(self) -> Iterable[Session]:
        return self._sessions.keys()

    @property
    def calls(self) -> Iterable[Call]:
        return self._calls.values()

    @property
    def parties(self) -> Iterable[PartyLine]:
        return self._parties.values()

    # ----------------------------------------------------------------- helpers

    def _send_logged(self, conn: Any, data: bytes) -> None:
        log.debug("-> %r %s", conn, data[:512].decode("utf-8", "replace"))
        self._actions.send(conn, data)

    def _send_msg(self, s: Session, msg: Any) -> None:
        if not s.closed:
            self._send(s.conn, _encode(msg))

    def _error(self, s: Session, reason: str, context: str, detail: str) -> None:
        self._send_msg(s, m.Error(reason=reason, context=context, detail=detail))

    def _busy(self, s: Session, to: str, reason: str, call_id: str | None = None) -> None:
        self._send_msg(s, m.Busy(to=to, reason=reason, call_id=call_id))

    def _close(self, s: Session, code: int, reason: str) -> None:
        self._actions.close(s.conn, int(code), str(reason))

    def _warn(self, s: Session, now: float, msg: str, *args: Any) -> None:
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

    def _invalid(self, s: Session, data: bytes, exc: Exception, now: float) -> None:
        """Answer a frame that did not decode: ERROR, or REGISTER_FAILED for a REGISTER."""
        why = describe_invalid(data, exc)
        self._warn(s, now, "Invalid %s from %s: %s", why.context, s.address or s.session_id, why.detail)
        if why.detail.startswith(NOT_JSON):
            # Text that is not JSON at all closes the socket, as the specification and
            # the reference router do; JSON that is not a valid message is answered.
            self._close(s, CloseCode.UNSUPPORTED_DATA, CloseReason.INVALID_JSON)
            return
        if why.context == "REGISTER":
            # A client waiting for REGISTERED must get REGISTERED or REGISTER_FAILED.
            reason = (
                RegisterFailedReason.INVALID_ADDRESS
                if why.address_missing
                else RegisterFailedReason.INVALID_PAYLOAD
            )
            address = why.address[:300] if why.address is not None else None
            self._send_msg(s, m.RegisterFailed(reason=reason, address=address, detail=why.detail))
            return
        self._error(s, ErrorReason.INVALID_PAYLOAD, why.context, why.detail)

    def _door_register(self, s: Session, msg: m.Register, now: float) -> bool:
        problem = None
        if msg.metadata is not None:
            problem = _bound_value(msg.metadata, "metadata", self._max_depth, self._max_value_bytes)
        if problem is None and msg.wake_handler is not None and msg.wake_handler.payload is not None:
            problem = _bound_value(
                msg.wake_handler.payload, "wake_handler.payload", self._max_depth, self._max_value_bytes
            )
        if problem is None:
            return True
        self._warn(s, now, "Invalid REGISTER from %s: %s", s.address or s.session_id, problem)
        self._send_msg(
            s,
            m.RegisterFailed(
                reason=RegisterFailedReason.INVALID_PAYLOAD, address=msg.address[:300], detail=problem
            ),
        )
        return False

    def _door_dial(self, s: Session, msg: m.Dial, now: float) -> bool:
        if msg.metadata is None:
            return True
        problem = _bound_value(msg.metadata, "metadata", self._max_depth, self._max_value_bytes)
        if problem is None:
            return True
        self._warn(s, now, "Invalid DIAL from %s: %s", s.address or s.session_id, problem)
        self._error(s, ErrorReason.INVALID_PAYLOAD, "DIAL", problem)
        return False

    def _internal_error(self, s: Session, msg: Any, now: float) -> None:
        """A handler raised: count it, log it (with the traceback, flood-limited), answer ERROR.

        Called from the ``except`` block, so the exception is the one being handled.
        """
        self.internal_errors += 1
        context = type(msg).__struct_config__.tag if msg is not None else "UNKNOWN"
        if now - s.warned_at < 1.0:
            s.warnings_dropped += 1
        else:
            s.warned_at = now
            log.error(
                "Internal error handling %s from %s (session: %s)",
                context,
                s.address or "(unregistered)",
                s.session_id,
                exc_info=True,
            )
        self._error(s, ErrorReason.INTERNAL_ERROR, str(context), "internal error")

    def _effective_status(self, s: Session) -> str:
        if s.status in ("dnd", "away"):
            return s.status
        return "busy" if s.calls else s.status

    def _touch_presence(self, *sessions: Session | None) -> None:
        set_status = self._presence.set_status
        for s in sessions:
            if s is not None and s.key is not None and not s.closed and s.trunk is None:
                set_status(s.key, self._effective_status(s))

    # ------------------------------------------------------------ registration

    def _on_register(self, s: Session, msg: m.Register, now: float) -> None:
        address = msg.address
        if not is_valid_address(address):
            self._send_msg(
                s,
                m.RegisterFailed(
                    reason=RegisterFailedReason.INVALID_ADDRESS,
                    address=address[:300],
                    detail="an address is local@domain.tld: no spaces, one @, a dot in the domain, "
                    "at most 254 characters",
                ),
            )
            return
        key = address_key(address)
        renaming = key != s.key
        if renaming and self.settings.register_max_renames > 0 and self._register_limited(s, address, now):
            return
        # SECURITY HOOK (to be re-homed into Policy): authenticate, may-register, wake owner.
        admission: Admission | None = None
        if self._security is not None:
            verdict = self._security.admit(msg.auth, address, now)
            if not isinstance(verdict, Admission):
                self._warn(
                    s,
                    now,
                    "REGISTER refused (%s): %s (session: %s): %s",
                    verdict.reason,
                    address,
                    s.session_id,
                    verdict.why,
                )
                self._send_msg(s, m.RegisterFailed(reason=verdict.reason, address=address))
                return
            admission = verdict
        owner = self._profiles.get(key, {}).get("owner")
        if owner is not None and admission is not None and admission.subject not in (None, owner):
            # Only the identity that created a wake profile may take its address back
            # (without authentication there are no identities: nothing to enforce).
            self._warn(
                s,
                now,
                "REGISTER refused (forbidden): %s belongs to %s, not %s (session: %s)",
                address,
                owner,
                admission.subject,
                s.session_id,
            )
            self._send_msg(s, m.RegisterFailed(reason=RegisterFailedReason.FORBIDDEN, address=address))
            return
        concurrency = msg.concurrency or "single"
        problem: str | None = None
        if msg.max_listeners is not None and concurrency != "broadcast":
            problem = "max_listeners requires concurrency broadcast"
        elif msg.max_sessions is not None and concurrency != "parallel":
            problem = "max_sessions requires concurrency parallel"
        elif msg.metadata is not None:
            problem = _validate_metadata(msg.metadata)
        if problem is None and msg.wake_handler is not None and msg.mode != "wake_on_ring":
            problem = "wake_handler requires mode wake_on_ring"
        handler: dict[str, Any] | None = None
        if problem is None and msg.mode == "wake_on_ring":
            if msg.wake_handler is None:
                if key not in self._profiles:
                    problem = "mode wake_on_ring requires a wake_handler"
            else:
                problem = validate_wake_handler(msg.wake_handler)
                if problem is None:
                    refusal = check_wake_handler(msg.wake_handler, address, self.settings)
                    if refusal is not None:
                        log.warning("Wake handler refused for %s: %s", address, refusal)
                        self._send_msg(
                            s,
                            m.RegisterFailed(
                                reason=RegisterFailedReason.WAKE_HANDLER_NOT_ALLOWED,
                                address=address,
                                detail=refusal,
                            ),
                        )
                        return
                    handler = stored_handler(msg.wake_handler, address, self.settings)
        if problem is not None:
            reason = RegisterFailedReason.INVALID_PAYLOAD
            self._send_msg(s, m.RegisterFailed(reason=reason, address=address, detail=problem))
            return
        holder = self._by_key.get(key)
        if (holder is not None and holder is not s) or key in self._parties:
            self._send_msg(
                s,
                m.RegisterFailed(
                    reason=RegisterFailedReason.ADDRESS_IN_USE,
                    address=address,
                    detail="a party line has this address" if holder is None else None,
                ),
            )
            return
        if handler is not None and key not in self._profiles:
            refusal = self._profile_limit(s)
            if refusal is not None:
                log.warning("Wake profile refused for %s: %s", address, refusal)
                self._send_msg(
                    s,
                    m.RegisterFailed(
                        reason=RegisterFailedReason.WAKE_PROFILE_LIMIT, address=address, detail=refusal
                    ),
                )
                return
            s.wake_profiles_created += 1
        if s.key is not None and s.key != key:
            # A new address on the same socket: the old one is given up.
            self._release(s, HangupReason.RECONFIGURED, now)
        if admission is not None:
            # A REGISTER of the same address with a fresh credential keeps the session and
            # its calls and moves the expiry (see PROTOCOL.md, "Authentication").
            s.subject, s.grants = admission.subject, admission.grants
            if admission.expires_at != s.auth_expires:
                s.auth_expires = admission.expires_at
                self._arm_auth(s, now)
        meta = dict(msg.metadata) if msg.metadata is not None else {}
        s.metadata = meta
        s.status = meta.get("status", s.status if s.key == key else "available")
        s.concurrency = concurrency
        s.max_sessions = msg.max_sessions
        s.max_listeners = msg.max_listeners
        s.last_heartbeat = now
        s.last_activity = now
        fresh = s.key != key
        if fresh:
            s.key = key
            self._by_key[key] = s
        if s.address != address:
            # The same line re-registered with its domain in another case: shown as now written.
            s.address = address
            s.addr_json = _encode(address)
        if msg.mode == "normal":
            if self._profiles.pop(key, None) is not None:
                self._actions.persist_profile(key, None)
        else:
            old = self._profiles.get(key)
            profile: dict[str, Any] | None = None
            owner = s.subject
            if handler is not None:
                profile = {"address": address, "handler": handler, "metadata": meta}
            elif old is not None and msg.metadata is not None:
                profile = {"address": address, "handler": old["handler"], "metadata": meta}
            elif old is not None and (old["address"] != address or old.get("owner") != owner):
                # The line re-registered with its domain in another case, or by the identity
                # now owning it: wake it as now written.
                profile = {**old, "address": address}
            if profile is not None:
                # The identity that registered it; only it may register the address again.
                if owner is not None:
                    profile["owner"] = owner
                else:
                    profile.pop("owner", None)
            if profile is not None:
                self._profiles[key] = profile
                self._actions.persist_profile(key, profile)
        self._publish(key, address, meta, self._effective_status(s))
        self._send_msg(s, m.Registered(address=address, session_id=s.session_id))
        if fresh:
            log.info("Connection registered: %s (session: %s)", address, s.session_id)
        woken = self._waking.pop(key, None)
        if woken is not None:
            self._actions.cancel_timer(("wake", key))
            # The wake was started under the profile's spelling, which may differ in case.
            self._actions.cancel_wake(woken)
            log.info("Woken: %s", address)
            queue = self._queues.get(key)
            if queue:
                for call in queue:
                    self._actions.start_timer(("ring", call.call_id), self._call_timeout)
        self._pump(key, now)

    def _register_limited(self, s: Session, address: str, now: float) -> bool:
        """Count a REGISTER of a new address; past the limit, answer ``rate_limited``."""
        window = s.register_window
        if window is None:
            window = s.register_window = Window()
        limit = self.settings.register_max_renames
        retry_ms = window.hit(now, limit, self.settings.register_window_ms / 1000)
        if retry_ms is None:
            return False
        self._warn(s, now, "REGISTER rate limit: %s (session: %s)", s.address, s.session_id)
        detail = (
            f"Too many REGISTERs of a new address: at most {limit} per "
            f"{self.settings.register_window_ms} ms; retry in {retry_ms} ms"
        )
        failed = m.RegisterFailed(reason=RegisterFailedReason.RATE_LIMITED, address=address, detail=detail)
        self._send_msg(s, failed)
        return True

    def _arm_auth(self, s: Session, now: float) -> None:
        """(Re)start the credential timer: AUTH_EXPIRING before expiry, close after the grace."""
        self._actions.cancel_timer(("auth", s))
        s.auth_warned = False
        expires = s.auth_expires
        if expires is not None:
            due = max(expires - AUTH_WARN_SECONDS - now, 0.0)
            self._actions.start_timer(("auth", s), math.ceil(due * 10) / 10)

    def _auth_due(self, s: Session, now: float) -> None:
        expires = s.auth_expires
        if s.closed or expires is None:
            return
        if not s.auth_warned:
            s.auth_warned = True
            left = max(int(expires - now), 0)
            self._send_msg(s, m.AuthExpiring(expires_at=int(expires), seconds_left=left))
            grace = self.settings.auth_grace_ms / 1000
            self._actions.start_timer(("auth", s), math.ceil(max(expires + grace - now, 0.0) * 10) / 10)
            return
        log.warning("Credential expired: %s (session: %s)", s.address, s.session_id)
        s.closed = True
        self._release(s, HangupReason.AUTH_EXPIRED, now)
        self._close(s, CloseCode.AUTH_EXPIRED, CloseReason.AUTH_EXPIRED)

    def _profile_limit(self, s: Session) -> str | None:
        """Why ``s`` may not create another wake profile, or ``None``."""
        per_session = self.settings.wake_max_profiles_per_session
        if s.wake_profiles_created >= per_session:
            return (
                f"this session has already created {per_session} wake profiles "
                "(SYSTEMX_WAKE_MAX_PROFILES_PER_SESSION)"
            )
        if len(self._profiles) >= self.settings.wake_max_profiles:
            return (
                f"the exchange stores its maximum of {self.settings.wake_max_profiles} wake profiles "
                "(SYSTEMX_WAKE_MAX_PROFILES)"
            )
        return None

    def _on_unregister(self, s: Session, msg: m.Unregister, now: float) -> None:
        s.closed = True
        self._release(s, HangupReason.CLIENT_REQUESTED, now)
        self._close(s, CloseCode.ROUTER, CloseReason.CLIENT_REQUESTED)

    def _release(self, s: Session, reason: str, now: float) -> None:
        """End ``s``'s calls and party memberships and free its address."""
        if s.trunk is not None:  # trunk hook: trunk down ends (or holds) its calls
            self._trunks.session_closed(s, now)
        for call in list(s.calls.values()):
            self._drop_party_from_call(s, call, reason, now)
        for line in list(s.parties.values()):
            self._leave(
                s,
                line,
                PartyLeftReason.RECONFIGURED
                if reason == HangupReason.RECONFIGURED
                else PartyLeftReason.DISCONNECTED,
            )
        self._actions.cancel_timer(("idle", s))
        self._actions.cancel_timer(("sleep", s))
        if s.auth_expires is not None:
            self._actions.cancel_timer(("auth", s))
            s.auth_expires = None
        s.auto_sleep = None
        key = s.key
        if key is None:
            return
        address = s.address
        assert address is not None
        if self._by_key.get(key) is s:
            del self._by_key[key]
        s.key = None
        s.address = None
        profile = self._profiles.get(key)
        why = "disconnected" if reason == HangupReason.PEER_DISCONNECTED else reason
        if profile is not None and reason != HangupReason.RECONFIGURED:
            self._presence.set_status(key, Status.ASLEEP)
            log.info("Asleep: %s (session: %s, %s)", address, s.session_id, why)
        else:
            self._presence.remove(key)
            if profile is not None:
                self._load_profile(profile)
            log.info("Connection unregistered: %s (session: %s, %s)", address, s.session_id, why)
        queue = self._queues.get(key)
        if queue:
            if profile is not None:
                self._start_wake(key, queue[0], now)
            else:
                for call in list(queue):
                    if call.caller is not None:
                        self._busy(call.caller, call.to, BusyReason.TIMEOUT, call.call_id)
                    self._end_call(call, CallEvent.DISCONNECT, BusyReason.TIMEOUT, now)

    def _publish(self, key: str, address: str, meta: dict[str, Any], status: str) -> None:
        """Put ``address`` in the presence index under ``key`` with its (validated) metadata."""
        lat, lon = _location(meta)
        self._presence.put(
            key,
            address=address,
            domain=domain_of(address),
            capabilities=meta.get("capabilities") or (),
            lat=lat,
            lon=lon,
            status=status,
            metadata=meta,
        )

    def _load_profile(self, profile: dict[str, Any]) -> None:
        address = profile["address"]
        key = address_key(address)
        self._profiles[key] = profile
        if key not in self._by_key:
            self._publish(key, address, profile.get("metadata") or {}, Status.ASLEEP)

    # -------------------------------------------------------- status, liveness

    def _on_heartbeat(self, s: Session, msg: m.Heartbeat, now: float) -> None:
        s.last_heartbeat = now
        s.last_activity = now
        self._send(s.conn, b'{"type":"HEARTBEAT_ACK","timestamp":%d}' % int(now * 1000))

    def _on_status(self, s: Session, msg: m.Status, now: float) -> None:
        s.last_activity = now
        if msg.status is not None:
            s.status = msg.status
            self._touch_presence(s)
        if msg.auto_sleep is not None:
            idle = msg.auto_sleep.idle_timeout_seconds
            if idle <= 0:
                s.auto_sleep = None
                self._actions.cancel_timer(("idle", s))
                self._actions.cancel_timer(("sleep", s))
            else:
                s.auto_sleep = max(idle, 0.1)
                s.sleep_pending_at = None
                self._actions.cancel_timer(("sleep", s))
                self._actions.start_timer(("idle", s), s.auto_sleep)

    def _sweep(self, now: float) -> None:
        limit = now - self._hb_timeout
        for s in [s for s in self._sessions if s.last_heartbeat < limit and not s.closed and not s.remote]:
            log.warning("Heartbeat timeout: %s (session: %s)", s.address or "(unregistered)", s.session_id)
            s.closed = True
            self._release(s, HangupReason.TIMEOUT, now)
            self._close(s, CloseCode.ROUTER, CloseReason.TIMEOUT)
        self._actions.start_timer(("sweep",), self._hb_interval)

    def _idle_expired(self, s: Session, now: float) -> None:
        idle = s.auto_sleep
        if s.closed or idle is None:
            return
        remaining = s.last_activity + idle - now
        if s.calls or remaining > 0.001:
            self._actions.start_timer(("idle", s), max(remaining, 0.05) if not s.calls else idle)
            return
        grace = min(max(idle, 0.2), 5.0)
        s.sleep_pending_at = now
        self._send_msg(s, m.SleepPending(reason=SleepReason.IDLE_TIMEOUT, seconds_until_sleep=int(grace)))
        self._actions.start_timer(("sleep", s), grace)

    def _sleep_due(self, s: Session, now: float) -> None:
        pending = s.sleep_pending_at
        if s.closed or pending is None or s.auto_sleep is None:
            return
        s.sleep_pending_at = None
        if s.last_activity > pending or s.calls:
            self._actions.start_timer(("idle", s), s.auto_sleep)
            return
        self._sleep(s, now)

    def _on_sleep_ack(self, s: Session, msg: m.SleepAck, now: float) -> None:
        if s.key is None or s.key not in self._profiles:
            self._error(
                s,
                ErrorReason.NOT_WAKE_ON_RING,
                "SLEEP_ACK",
                "SLEEP_ACK needs a registration with mode wake_on_ring",
            )
            return
        self._sleep(s, now)

    def _sleep(self, s: Session, now: float) -> None:
        s.closed = True
        self._release(s, HangupReason.SLEEP, now)
        self._close(s, CloseCode.ROUTER, CloseReason.SLEEP)

    # ------------------------------------------------------------------- calls

    def _on_dial(self, s: Session, msg: m.Dial, now: float) -> None:
        if self._dial_max > 0:
            if s.dial_count == 0 or now - s.dial_window_start >= self._dial_window:
                s.dial_window_start = now
                s.dial_count = 1
            else:
                s.dial_count += 1
                if s.dial_count > self._dial_max:
                    self._warn(s, now, "Dial rate limit: %s (session: %s)", s.address, s.session_id)
                    self._error(s, ErrorReason.RATE_LIMITED, "DIAL", "Too many dial attempts")
                    return
        if s.key is None:
            self._error(s, ErrorReason.NOT_REGISTERED, "DIAL", "REGISTER an address before DIAL")
            return
        s.last_activity = now
        self._place(s, msg.to, msg.metadata, now)

    def _place(
        self,
        s: Session,
        to: str,
        metadata: dict[str, Any] | None,
        now: float,
        call_id: str | None = None,
        hops: int = 0,
        via: list[str] | None = None,
    ) -> None:
        """Place ``s``'s call to ``to``: local holder, then sleeping profile, then trunk route.

        ``call_id`` is given when ``s`` is a caller behind a trunk (its DIAL_FORWARD's
        id, kept on this side); ``hops`` and ``via`` then come from that DIAL_FORWARD.
        """
        if not is_valid_address(to):
            self._busy(s, to, BusyReason.NO_SUCH_ADDRESS, call_id)
            return
        grants = s.grants
        if grants is not None and not grants.permits("dial", to):
            # SECURITY HOOK (to be re-homed into Policy): may-dial.
            self._warn(s, now, "DIAL refused (forbidden): %s → %s", s.address, to)
            self._busy(s, to, BusyReason.FORBIDDEN, call_id)
            return
        key = address_key(to)
        if key == s.key:
            self._busy(s, to, BusyReason.ALREADY_IN_CALL, call_id)
            return
        callee = self._by_key.get(key)
        if callee is None:
            if key in self._profiles:
                call = self._queue_waiting(s, to, key, metadata, now, waking=True, call_id=call_id)
                if key not in self._waking:
                    self._start_wake(key, call, now)
                return
            # trunk hook: a trunk route, after local holders and sleeping profiles
            if self._trunks.dial_out(s, to, key, metadata, now, call_id, hops, via or []):
                return
            if self._directory:
                self._queue_waiting(s, to, key, metadata, now, waking=False, call_id=call_id)
                if key not in self._looking_up:
                    self._looking_up.add(key)
                    self._actions.lookup(to)
                return
            self._busy(s, to, BusyReason.NO_SUCH_ADDRESS, call_id)
            return
        status = callee.status
        if status == "dnd" or status == "away":
            self._busy(s, to, status, call_id)
            return
        if callee.concurrency == "broadcast":
            if s.trunk is not None:
                self._busy(s, to, BusyReason.UNSUPPORTED, call_id)
                return
            self._dial_broadcast(s, callee, to, metadata, now)
            return
        if status == "busy" and not callee.calls:
            self._busy(s, to, BusyReason.BUSY, call_id)
            return
        reason = self._occupied(callee)
        if reason is not None:
            self._busy(s, to, reason, call_id)
            return
        call = Call(call_id or self._new_id(), s, callee, to, key, metadata, now, RINGING)
        self._add_call(call)
        self._ring(call)

    def _queue_waiting(
        self,
        s: Session,
        to: str,
        key: str,
        metadata: dict[str, Any] | None,
        now: float,
        *,
        waking: bool,
        call_id: str | None = None,
    ) -> Call:
        call = Call(call_id or self._new_id(), s, None, to, key, metadata, now, WAITING)
        self._add_call(call)
        self._queues.setdefault(key, deque()).append(call)
        if s.trunk is None:  # a caller behind a trunk hears RING once its callee rings
            self._send_msg(s, m.Ringing(call_id=call.call_id, to=to, waking=waking))
        if not waking:
            # A lookup counts towards the ring time; a wake has its own timeout.
            self._actions.start_timer(("ring", call.call_id), self._call_timeout)
        log.info(
            "Call initiated: %s → %s (call: %s, %s)",
            s.address,
            to,
            call.call_id,
            "waking" if waking else "looking up",
        )
        return call

    def on_lookup_result(self, address: str, conn: Any, now: float) -> Session | None:
        """The directory's answer to ``Actions.lookup``: ``conn`` routes to the holder, or None.

        A found holder becomes a remote endpoint bound to the address, and the
        calls waiting for it ring; otherwise their callers hear BUSY no_such_address.
        The binding lasts only while it carries calls: when its last call ends the
        endpoint is forgotten (marked closed, so frames for it are ignored), and a
        later DIAL asks the directory again. None is returned, and nothing bound,
        when no call waits any more (they ended while the directory was asked).
        """
        key = address_key(address)
        if key not in self._looking_up:
            return None
        self._looking_up.discard(key)
        if conn is None or key in self._by_key:
            for call in list(self._queues.get(key, ())):
                if key in self._by_key:
                    break
                if call.caller is not None:
                    self._busy(call.caller, call.to, BusyReason.NO_SUCH_ADDRESS, call.call_id)
                self._end_call(call, CallEvent.UNREACHABLE, BusyReason.NO_SUCH_ADDRESS, now)
            self._pump(key, now)
            return None
        if not self._queues.get(key):
            return None
        endpoint = Session(conn, _uuid4(), now)
        endpoint.remote = True
        endpoint.address = address
        endpoint.key = key
        endpoint.addr_json = _encode(address)
        self._sessions[endpoint] = None
        self._by_key[key] = endpoint
        self._pump(key, now)
        return endpoint

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

    def _ring(self, call: Call) -> None:
        caller, callee = call.caller, call.callee
        assert caller is not None and callee is not None
        self._send(
            callee.conn,
            _encode(m.Ring(from_=caller.address or "", call_id=call.call_id, metadata=call.metadata)),
        )
        timeout = self._call_timeout
        if caller.trunk is not None:  # trunk hook: the far side hears RING
            self._trunks.rang(call)
            # The caller's side runs the ring timeout; this one is a backstop.
            timeout += TRUNK_RING_BACKSTOP
        else:
            self._send(caller.conn, _encode(m.Ringing(call_id=call.call_id, to=call.to)))
        self._actions.start_timer(("ring", call.call_id), timeout)
        self._touch_presence(caller, callee)
        log.info("Call initiated: %s → %s (call: %s)", caller.address, call.to, call.call_id)

    def _add_call(self, call: Call) -> None:
        self._calls[call.call_id] = call
        if call.caller is not None:
            call.caller.calls[call.call_id] = call
        if call.callee is not None:
            call.callee.calls[call.call_id] = call

    def _end_call(self, call: Call, event: CallEvent, reason: str, now: float) -> None:
        """Remove ``call`` from every index. Notifications are the caller's job."""
        call.state = transition(call.state, event)
        call_id = call.call_id
        self._calls.pop(call_id, None)
        self._actions.cancel_timer(("ring", call_id))
        parties = call.parties()
        for p in parties:
            p.calls.pop(call_id, None)
        call.routes = None
        queue = self._queues.get(call.callee_key)
        if queue is not None and call in queue:
            queue.remove(call)
        if queue is not None and not queue:
            del self._queues[call.callee_key]
        self._touch_presence(*parties)
        duration = now - (call.connected_at or call.created)
        log.info("Call ended: %s (duration %.3fs, reason %s)", call_id, duration, reason)
        callee = call.callee
        if callee is not None and not callee.closed and call.callee_key in self._queues:
            self._pump(call.callee_key, now)
        for p in parties:
            if p.remote and not p.calls and not p.closed:
                self._forget_remote(p)

    def _forget_remote(self, s: Session) -> None:
        """A remote holder's last call ended: it holds the address here no longer."""
        s.closed = True
        key = s.key
        if key is not None and self._by_key.get(key) is s:
            del self._by_key[key]
        s.key = None
        self._sessions.pop(s, None)
        log.info("Remote holder released: %s (session: %s)", s.address, s.session_id)

    def _pump(self, key: str, now: float) -> None:
        """Ring queued calls for ``key`` while its concurrency allows."""
        queue = self._queues.get(key)
        callee = self._by_key.get(key)
        if not queue or callee is None:
            return
        while queue:
            call = queue[0]
            if callee.concurrency == "broadcast":
                queue.popleft()
                self._end_call_quietly(call)
                caller = call.caller
                assert caller is not None
                self._dial_broadcast(caller, callee, call.to, call.metadata, now)
                continue
            if self._occupied(callee) is not None:
                break
            queue.popleft()
            call.state = transition(call.state, CallEvent.RING)
            call.callee = callee
            callee.calls[call.call_id] = call
            self._ring(call)
        if not queue:
            self._queues.pop(key, None)

    def _end_call_quietly(self, call: Call) -> None:
        # A waiting call re-placed on a broadcast: it never existed as a call.
        self._calls.pop(call.call_id, None)
        self._actions.cancel_timer(("ring", call.call_id))
        if call.caller is not None:
            call.caller.calls.pop(call.call_id, None)

    def _ring_timeout(self, call_id: str, now: float) -> None:
        call = self._calls.get(call_id)
        if call is None or call.state not in (RINGING, WAITING):
            return
        if call.caller is not None:
            self._busy(call.caller, call.to, BusyReason.TIMEOUT, call_id)
        if call.state is RINGING and call.callee is not None:
            self._send_msg(call.callee, m.Hangup(call_id=call_id, reason=HangupReason.TIMEOUT))
        self._end_call(call, CallEvent.TIMEOUT, HangupReason.TIMEOUT, now)

    def _on_answer(self, s: Session, msg: m.Answer, now: float) -> None:
        call = self._calls.get(msg.call_id)
        if call is None or call.callee is not s:
            self._warn(s, now, "ANSWER ignored: call %s is not ringing %s", msg.call_id, s.address)
            return
        s.last_activity = now
        if call.listeners is not None:
            return  # a broadcaster's ANSWER is optional and changes nothing
        if call.state is not RINGING:
            # Answered already: the call and the caller's view of it stay as they are.
            self._warn(s, now, "ANSWER ignored: call %s is already %s", msg.call_id, call.state.value)
            return
        caller = call.caller
        assert caller is not None
        call.state = transition(call.state, CallEvent.ANSWER)
        call.connected_at = now
        self._actions.cancel_timer(("ring", call.call_id))
        call.routes = {
            caller: (s.conn, _msg_prefix(call.call_id, caller)),
            s: (caller.conn, _msg_prefix(call.call_id, s)),
        }
        if self._debug:
            log.debug("Call connected: %s ↔ %s (call: %s)", caller.address, s.address, call.call_id)
        if caller.trunk is not None or s.trunk is not None:  # trunk hook
            self._trunks.answered(call, s)
            return
        self._send_msg(caller, m.Connected(call_id=call.call_id, to=call.to))

    def _on_hangup(self, s: Session, msg: m.Hangup, now: float) -> None:
        call = self._calls.get(msg.call_id)
        if call is None or (
            s is not call.caller and s is not call.callee and not (call.listeners and s in call.listeners)
        ):
            self._warn(s, now, "HANGUP ignored: call %s is not a call of %s", msg.call_id, s.address)
            return
        s.last_activity = now
        reason = msg.reason or HangupReason.NORMAL
        if call.listeners is not None and s is not call.callee:
            self._send_msg(s, m.Hangup(call_id=call.call_id, reason=reason))
        self._drop_party_from_call(s, call, reason, now)

    def _drop_party_from_call(self, s: Session, call: Call, reason: str, now: float) -> None:
        """``s`` leaves ``call`` (hangup or gone); tell whoever remains."""
        event = CallEvent.DISCONNECT if s.closed else CallEvent.HANGUP
        if call.listeners is not None:
            if s is call.callee:
                frame = _encode(m.Hangup(call_id=call.call_id, reason=reason))
                for listener in call.listeners:
                    if not listener.closed:
                        self._send(listener.conn, frame)
                self._end_call(call, event, reason, now)
                return
            call.listeners.pop(s, None)
            s.calls.pop(call.call_id, None)
            broadcaster = call.callee
            assert broadcaster is not None
            self._send_msg(broadcaster, m.Hangup(call_id=call.call_id, reason=reason, from_=s.address))
            if not call.listeners:
                self._end_call(call, event, reason, now)
            else:
                self._touch_presence(s)
            return
        if call.state is WAITING:
            self._end_call(call, event, reason, now)
            return
        other = call.callee if s is call.caller else call.caller
        if other is not None:
            self._send_msg(other, m.Hangup(call_id=call.call_id, reason=reason))
        self._end_call(call, event, reason, now)

    # --------------------------------------------------------------- broadcast

    def _dial_broadcast(
        self, s: Session, caster: Session, to: str, metadata: dict[str, Any] | None, now: float
    ) -> None:
        call = next(
            (c for c in caster.calls.values() if c.listeners is not None and c.callee is caster), None
        )
        if call is not None and s in (call.listeners or ()):
            self._send_msg(s, m.Connected(call_id=call.call_id, to=to))
            return
        if call is None:
            call = Call(self._new_id(), None, caster, to, caster.key or "", metadata, now, RINGING)
            call.state = CONNECTED
            call.connected_at = now
            call.listeners = {}
            self._add_call(call)
            log.info("Broadcast started: %s (call: %s)", caster.address, call.call_id)
        listeners = call.listeners
        assert listeners is not None
        if caster.max_listeners is not None and len(listeners) >= caster.max_listeners:
            self._busy(s, to, BusyReason.MAX_LISTENERS_REACHED)
            return
        listeners[s] = None
        s.calls[call.call_id] = call
        self._send_msg(s, m.Connected(call_id=call.call_id, to=to))
        self._send_msg(caster, m.Ring(from_=s.address or "", call_id=call.call_id, metadata=metadata))
        self._touch_presence(s, caster)
        log.info("Broadcast listener joined: %s → %s (call: %s)", s.address, caster.address, call.call_id)

    def _broadcast_msg(self, s: Session, call: Call, msg: m.Msg) -> None:
        listeners = call.listeners
        assert listeners is not None
        frame = _join((_msg_prefix(call.call_id, s), msg.data, _CT_SUFFIX[msg.content_type]))
        if s is call.callee:
            send = self._send
            for listener in listeners:
                send(listener.conn, frame)
        elif s in listeners:
            caster = call.callee
            assert caster is not None
            self._send(caster.conn, frame)

    # ------------------------------------------------------------ wake-on-ring

    def _start_wake(self, key: str, call: Call, now: float) -> None:
        profile = self._profiles[key]
        handler = profile["handler"]
        self._waking[key] = profile["address"]
        self._actions.start_timer(("wake", key), wake_timeout(handler, self.settings))
        caller = call.caller
        log.info(
            "Waking %s for %s (call: %s)", profile["address"], caller.address if caller else "?", call.call_id
        )
        self._actions.wake(
            WakeRequest(
                address=profile["address"],
                call_id=call.call_id,
                caller=(caller.address or "") if caller else "",
                handler=handler,
                payload=handler.get("payload"),
                metadata=call.metadata,
            )
        )

    def _wake_ended(self, key: str, reason: str, now: float) -> None:
        """The wake of ``key`` failed or timed out: every waiting caller hears BUSY."""
        address = self._waking.pop(key, None)
        if address is None:
            return
        self._actions.cancel_timer(("wake", key))
        if reason == BusyReason.TIMEOUT:
            self._actions.cancel_wake(address)
            log.warning("Wake timeout: %s", address)
        event = CallEvent.TIMEOUT if reason == BusyReason.TIMEOUT else CallEvent.WAKE_FAILED
        for call in list(self._queues.get(key, ())):
            if call.caller is not None:
                self._busy(call.caller, call.to, reason, call.call_id)
            self._end_call(call, event, reason, now)

    # ------------------------------------------------------------- party lines

    def _on_join(self, s: Session, msg: m.Join, now: float) -> None:
        if s.key is None:
            self._error(s, ErrorReason.NOT_REGISTERED, "JOIN", "REGISTER an address before JOIN")
            return
        if self.settings.join_max_attempts > 0:
            window = s.join_window
            if window is None:
                window = s.join_window = Window()
            limit = self.settings.join_max_attempts
            retry_ms = window.hit(now, limit, self.settings.join_window_ms / 1000)
            if retry_ms is not None:
                self._warn(s, now, "JOIN rate limit: %s (session: %s)", s.address, s.session_id)
                self._send_msg(
                    s,
                    m.Error(
                        reason=ErrorReason.RATE_LIMITED,
                        context="JOIN",
                        detail=f"Too many JOINs: at most {limit} per {self.settings.join_window_ms} ms; "
                        f"retry in {retry_ms} ms",
                        limit=limit,
                        retry_after_ms=retry_ms,
                    ),
                )
                return
        name = msg.party
        if not is_valid_address(name):
            self._send_msg(
                s,
                m.JoinFailed(
                    party=name[:300],
                    reason=JoinFailedReason.INVALID_ADDRESS,
                    detail="a party line's name follows the address grammar",
                ),
            )
            return
        grants = s.grants
        # SECURITY HOOK (to be re-homed into Policy): may-join, may-create.
        if grants is not None and not grants.permits("join", name):
            self._warn(s, now, "JOIN refused (forbidden): %s → %s", s.address, name)
            self._join_failed(s, name, JoinFailedReason.FORBIDDEN, "not permitted to join this party line")
            return
        key = address_key(name)
        line = self._parties.get(key)
        creating = line is None and msg.create_if_missing
        if creating and grants is not None and not grants.permits("create", name):
            self._warn(s, now, "JOIN refused (forbidden to create): %s → %s", s.address, name)
            self._join_failed(s, name, JoinFailedReason.FORBIDDEN, "not permitted to create this party line")
            return
        if line is None:
            if key in self._by_key or key in self._profiles:
                self._join_failed(
                    s, name, JoinFailedReason.ADDRESS_IN_USE, "a registered address has this name"
                )
                return
            if not msg.create_if_missing:
                self._join_failed(s, name, JoinFailedReason.NO_SUCH_PARTY, "no party line has this name")
                return
        elif s in line.members:
            self._send_msg(s, m.Joined(party=line.name, participants=list(line.members.values())))
            return
        if len(s.parties) >= self.settings.party_max_per_session:
            self._join_failed(
                s,
                name,
                JoinFailedReason.TOO_MANY_PARTIES,
                f"a session may be in at most {self.settings.party_max_per_session} party lines",
            )
            return
        if line is None:
            line = PartyLine(name, key)
            self._parties[key] = line
            log.info("Party line created: %s", name)
        elif len(line.members) >= self.settings.party_max_participants:
            self._join_failed(
                s,
                name,
                JoinFailedReason.PARTY_FULL,
                f"a party line has at most {self.settings.party_max_participants} participants",
            )
            return
        address = s.address or ""
        notice = _encode(m.PartyJoined(party=line.name, address=address))
        for member in line.members:
            self._send(member.conn, notice)
        line.members[s] = address
        s.parties[key] = line
        self._send_msg(s, m.Joined(party=line.name, participants=list(line.members.values())))
        log.info("Party joined: %s → %s (%d participants)", address, line.name, len(line.members))

    def _join_failed(self, s: Session, party: str, reason: str, detail: str) -> None:
        self._send_msg(s, m.JoinFailed(party=party, reason=reason, detail=detail))

    def _member_line(self, s: Session, name: str, context: str) -> PartyLine | None:
        line = self._parties.get(address_key(name)) if is_valid_address(name) else None
        if line is None or s not in line.members:
            self._error(s, ErrorReason.NOT_IN_PARTY, context, f"not a participant of {name[:300]}")
            return None
        return line

    def _on_party_msg(self, s: Session, msg: m.PartyMsg, now: float) -> None:
        line = self._member_line(s, msg.party, "PARTY_MSG")
        if line is None:
            return
        s.last_activity = now
        frame = _join(
            (
                b'{"type":"PARTY_MSG","party":',
                line.name_json,
                b',"from":',
                s.addr_json,
                b',"data":',
                msg.data,
                _PARTY_CT_SUFFIX[msg.content_type],
            )
        )
        send = self._send
        for member in line.members:
            if member is not s:
                send(member.conn, frame)

    def _on_leave(self, s: Session, msg: m.Leave, now: float) -> None:
        line = self._member_line(s, msg.party, "LEAVE")
        if line is not None:
            self._leave(s, line, PartyLeftReason.LEFT)
            self._send_msg(s, m.Left(party=line.name))

    def _leave(self, s: Session, line: PartyLine, reason: str) -> None:
        address = line.members.pop(s, None)
        s.parties.pop(line.key, None)
        if address is None:
            return
        if not line.members:
            del self._parties[line.key]
            log.info("Party line closed: %s", line.name)
            return
        notice = _encode(m.PartyLeft(party=line.name, address=address, reason=reason))
        for member in line.members:
            self._send(member.conn, notice)

    # ---------------------------------------------------------------- presence

    def _on_presence(self, s: Session, msg: m.Presence, now: float) -> None:
        if self._presence_max > 0 and self._presence_limited(s, now):
            return
        if s.key is None:
            self._error(s, ErrorReason.NOT_REGISTERED, "PRESENCE", "REGISTER an address before PRESENCE")
            return
        q = msg.query
        limit = min(msg.limit or self.settings.presence_default_limit, self.settings.presence_max_limit)
        near = (q.near.lat, q.near.lon, q.near.radius_km) if q.near is not None else None
        domain = q.domain.lower() if q.domain is not None else None
        grants = s.grants
        if grants is not None and grants.restricts("presence"):
            # SECURITY HOOK (to be re-homed into Policy): presence visibility.
            if domain is not None and not grants.permits("presence", domain):
                self._error(s, ErrorReason.FORBIDDEN, "PRESENCE", "not permitted to see this domain")
                return
            rows = self._visible_rows(grants, domain, q, near, s.key, limit)
        else:
            rows = self._presence.query(
                domain=domain,
                capabilities=q.capabilities,
                near=near,
                status=q.status,
                exclude=s.key,
                limit=limit,
            )
        self._send(s.conn, _presence_result(rows, self.settings.presence_max_result_bytes))

    def _visible_rows(
        self,
        grants: Grants,
        domain: str | None,
        q: m.PresenceQuery,
        near: tuple[float, float, float] | None,
        exclude: str,
        limit: int,
    ) -> list[PresenceRow]:
        """The first ``limit`` matches the asker may see, in the index's order.

        The index cannot filter by a pattern, so it is asked for more until enough
        visible rows came back or it has no more: never is an invisible row returned.
        """
        ask = limit
        while True:
            rows = self._presence.query(
                domain=domain,
                capabilities=q.capabilities,
                near=near,
                status=q.status,
                exclude=exclude,
                limit=ask,
            )
            visible = [row for row in rows if grants.permits("presence", domain_of(row[0]))]
            if len(visible) >= limit or len(rows) < ask:
                return visible[:limit]
            ask *= 4

    def _presence_limited(self, s: Session, now: float) -> bool:
        """Count one PRESENCE in ``s``'s fixed window; past the limit, answer ``rate_limited``."""
        if s.presence_count == 0 or now - s.presence_window_start >= self._presence_window:
            s.presence_window_start = now
            s.presence_count = 1
            return False
        s.presence_count += 1
        if s.presence_count <= self._presence_max:
            return False
        retry_ms = max(1, math.ceil((s.presence_window_start + self._presence_window - now) * 1000))
        self._warn(s, now, "Presence rate limit: %s (session: %s)", s.address, s.session_id)
        self._send_msg(
            s,
            m.Error(
                reason=ErrorReason.RATE_LIMITED,
                context="PRESENCE",
                detail=f"Too many PRESENCE queries: at most {self._presence_max} per "
                f"{self.settings.presence_window_ms} ms; retry in {retry_ms} ms",
                limit=self._presence_max,
                retry_after_ms=retry_ms,
            ),
        )
        return True

    # -------------------------------------------------------------- federation

    def _on_register_pbx(self, s: Session, msg: m.RegisterPbx, now: float) -> None:
        self._trunks.register(s, msg, now)

    def _on_dial_forward(self, s: Session, msg: m.DialForward, now: float) -> None:
        self._error(
            s,
            ErrorReason.INVALID_PAYLOAD,
            "DIAL_FORWARD",
            "DIAL_FORWARD is for trunks: send REGISTER_PBX on this connection first",
        )

    @property
    def trunks(self) -> Trunks:
        return self._trunks

    def add_trunk(self, trunk_id: str, label: str, routes: tuple[str, ...]) -> None:
        """An outbound trunk (this exchange's parent): its routes are routed from now on."""
        self._trunks.add_outbound(trunk_id, label, routes)

    def open_trunk(self, trunk_id: str, conn: Any, now: float) -> Session:
        """The outbound trunk ``trunk_id`` is up over ``conn``; its frames go to ``on_data`` of the result."""
        return self._trunks.open_outbound(trunk_id, conn, now)


class _UUIDs:
    """Random version-4 UUID strings, drawing entropy from the OS in blocks.

    ``uuid.uuid4()`` makes one ``os.urandom`` system call per id; call setup
    needs one id per call, so 256 are drawn at a time.
    """

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(16 * 256)
            at = 0
        self._at = at + 16
        h = self._pool[at : at + 16].hex()
        # Version nibble 4; variant bits 10xx (RFC 9562).
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_uuid4 = _UUIDs()


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
