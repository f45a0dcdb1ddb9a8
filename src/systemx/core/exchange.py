"""The exchange: a thin facade over single-owner components, as a sans-I/O machine.

:class:`Exchange` takes events — a session opened, a frame from a session, a
session closed, a timer fired, a wake failed, a directory answered — each with
the current time ``now`` (epoch seconds), and answers with actions on its
:class:`Actions` port (send, close, start/cancel timer, wake, persist, lookup).
It never reads a clock, never touches a socket and never imports asyncio, so
unit tests drive it directly.

The facade decodes a frame, relays MSG itself (the hot path), and dispatches
everything else through one table to the component that owns it:

* :class:`~systemx.core.registry.Registry`: sessions, the address index,
  presence entries;
* :class:`~systemx.core.calls.CallBook`: calls, their queues and ring timers;
* :class:`~systemx.core.wake.Wake`: wake profiles, wakes, auto-sleep;
* :class:`~systemx.core.parties.PartyLines`: party lines;
* :class:`~systemx.core.presence.PresenceService`: PRESENCE queries;
* :class:`~systemx.core.policy.Policy`: rate limits, value checks, and the
  security checks (credential, permissions, credential expiry);
* :class:`~systemx.core.trunks.Trunks`: trunks to other exchanges, their
  routes and the call legs that cross them.

Each component's indexes are its private attributes: another component asks
through its methods. Only three things are orchestrated here, because they
span components: REGISTER (:meth:`Exchange._on_register`), DIAL
(:meth:`Exchange._place`, whose resolution order is local registration,
sleeping profile, trunk route, directory, no such address; a DIAL_FORWARD
from a trunk is placed the same way) and a session's end
(:meth:`Exchange._end_session`). What happened is told to a
:class:`~systemx.core.records.Recorder` (call started/answered/ended, bound,
unbound), which by default writes the log lines.

The MSG relay is the hot path: one typed decode, one dict lookup of the call
(in the call book's own dict), one dict lookup of the sender in the call's
routes, one join of a prefix built when the call connected with the sender's
raw ``data``, and one send. The endpoint's ``data`` is never re-serialised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import msgspec

from systemx.core.actions import Actions, StoredHandler, WakeProfile
from systemx.core.calls import CONNECTED, CT_SUFFIX, Call, CallBook, CallEvent
from systemx.core.config import CoreConfig
from systemx.core.ids import uuid4 as _uuid4
from systemx.core.parties import PartyLine, PartyLines
from systemx.core.policy import Policy
from systemx.core.presence import PresenceService
from systemx.core.records import LogRecorder, Recorder
from systemx.core.registry import Registry
from systemx.core.security import Admission, Security
from systemx.core.session import ALLOWED, NEEDS_REGISTRATION, Sender, Session, endpoint_label, warn, who
from systemx.core.timerkeys import (
    SWEEP,
    AuthTimer,
    IdleTimer,
    RingTimer,
    SleepTimer,
    Sweep,
    TrunkTimer,
    WakeTimer,
)
from systemx.core.trunks import Trunks
from systemx.core.wake import Wake
from systemx.protocol import messages as m
from systemx.protocol.address import address_key, is_valid_address
from systemx.protocol.codes import (
    BusyReason,
    CloseCode,
    CloseReason,
    ErrorReason,
    HangupReason,
    PartyLeftReason,
    RegisterFailedReason,
)
from systemx.protocol.errors import NOT_JSON, describe_invalid
from systemx.quicklog import get_logger
from systemx.state.ports import PENDING, Claimed, Concurrency, Directory, InUse, Pending
from systemx.state.presence import MemoryPresenceIndex, PresenceGather, PresenceIndex

__all__ = ["Call", "Exchange", "PartyLine", "Session"]

log = get_logger("systemx.exchange")

_encode = m.encode
# Splices a frame from its parts with one copy of each (chained + copies the data each time).
_join = b"".join
_decode = m.decode_client
_DecodeError = msgspec.DecodeError
_ValidationError = msgspec.ValidationError
_CT_SUFFIX = CT_SUFFIX
# Enum members read at every session end, as module constants (an enum attribute costs more).
_RECONFIGURED, _PEER_DISCONNECTED = HangupReason.RECONFIGURED, HangupReason.PEER_DISCONNECTED


# The answer of the address index when it is the directory (no Registration built).
_LOCAL_CLAIM: Final = object()


class _Claim:
    """A REGISTER waiting for the directory's answer to its claim."""

    __slots__ = ("admission", "concurrency", "handler", "key", "meta", "msg")

    def __init__(
        self,
        msg: m.Register,
        key: str,
        handler: StoredHandler | None,
        concurrency: Concurrency,
        meta: dict[str, Any],
        admission: Admission | None,
    ) -> None:
        self.admission = admission
        self.msg = msg
        self.key = key
        self.handler = handler
        self.concurrency = concurrency
        self.meta = meta


class Exchange(Sender):
    """The facade over the exchange's components. See the module docstring."""

    def __init__(
        self,
        config: CoreConfig,
        actions: Actions,
        *,
        profiles: Mapping[str, WakeProfile] | None = None,
        new_id: Callable[[], str] | None = None,
        presence: PresenceIndex | None = None,
        directory: bool = False,
        claims: Directory | None = None,
        recorder: Recorder | None = None,
        security: Security | None = None,
        node_id: str | None = None,
        presence_gather: PresenceGather | None = None,
    ) -> None:
        super().__init__(actions.send)
        #: This exchange's id among the nodes of its cluster and the exchanges a dial crosses.
        self.node_id = node_id = node_id or _uuid4()
        self.config = config
        self._actions = actions
        send = actions.send
        self.recorder: Recorder = recorder if recorder is not None else LogRecorder(log)
        self.registry = Registry(presence if presence is not None else MemoryPresenceIndex(), claims, node_id)
        self.book = CallBook(actions, self.registry, self.recorder, new_id or _uuid4, config.call_timeout)
        self.wake = Wake(actions, self.registry, self.book, self.recorder, config, self._sleep)
        self.lines = PartyLines(
            send, self._address_taken, config.party_max_participants, config.party_max_per_session
        )
        self.presence = PresenceService(send, self.registry.presence, config, presence_gather)
        self.policy = Policy(
            actions,
            config,
            security if security is not None else Security.from_settings(config),
            self._credential_expired,
            self.lines.__contains__,
        )
        new = new_id or _uuid4
        # Federation: every trunk, its routes and the legs that cross it.
        self.book.trunks = self._trunks = Trunks(
            self, actions, self.book, self.registry, config, new, node_id
        )
        self._parts: tuple[Sender, ...] = (
            self,
            self.book,
            self.wake,
            self.lines,
            self.presence,
            self.policy,
            self._trunks,
        )
        for part in self._parts:
            part._recorder = self.recorder
        # The MSG relay reads the call book's dict directly.
        self._calls = self.book.by_id
        self._broadcast_msg = self.book.broadcast_msg
        # With a directory (cluster, federation), an address not held here is looked
        # up by an action and the answer returns as ``on_lookup_result``.
        self._directory = directory
        self._looking_up: set[str] = set()
        # Sessions whose REGISTER waits for the directory's answer (``on_claimed``).
        self._claiming: dict[Session, _Claim] = {}
        self._claim_ids: dict[str, Session] = {}
        self._hb_timeout = config.heartbeat_timeout
        self._hb_interval = config.heartbeat_interval
        self._stopping = False
        #: Frames whose handler raised (answered ``ERROR internal_error``).
        self.internal_errors = 0
        self._handlers: dict[type, Callable[[Session, Any, float], None]] = {
            m.Register: self._on_register,
            m.Unregister: self._on_unregister,
            m.Status: self._on_status,
            m.Heartbeat: self._on_heartbeat,
            m.Dial: self._on_dial,
            m.Answer: self.book.on_answer,
            m.Hangup: self.book.on_hangup,
            m.Join: self.lines.on_join,
            m.PartyMsg: self.lines.on_party_msg,
            m.Leave: self.lines.on_leave,
            m.Presence: self.presence.on_presence,
            m.SleepAck: self.wake.on_sleep_ack,
            m.RegisterPbx: self._on_register_pbx,
            m.DialForward: self._on_dial_forward,
        }
        # Checks run before the handler (policy, then the session state); False: refused and answered.
        self._door: dict[type, Callable[[Session, Any, float], bool]] = {
            m.Register: self.policy.register_values,
            m.Dial: self._door_dial,
            m.Join: self._door_join,
            m.Presence: self._door_presence,
        }
        # Timer key type -> the owner's handler; any other type is a bug and raises.
        self._timers: dict[type, Callable[[Any, float], None]] = {
            RingTimer: self.book.on_ring_timer,
            WakeTimer: self.wake.on_wake_timer,
            IdleTimer: self.wake.on_idle_timer,
            SleepTimer: self.wake.on_sleep_timer,
            Sweep: self._sweep,
            AuthTimer: self.policy.on_auth_timer,
            TrunkTimer: self._trunks.on_timer,
        }
        self.refresh_log_level()
        for profile in (profiles or {}).values():
            self.wake.load(profile)

    # ------------------------------------------------------------------ events

    def refresh_log_level(self) -> None:
        """Re-read whether DEBUG traffic logging is on (it costs nothing when off)."""
        debug = log.isEnabledFor(logging.DEBUG)
        send = self._send_logged if debug else self._actions.send
        for part in self._parts:
            part.use_send(send, debug)

    def use_recorder(self, recorder: Recorder) -> None:
        """Tell ``recorder`` of what happens from now on (it replaces the current one)."""
        self.recorder = recorder
        for part in self._parts:
            part._recorder = recorder

    def start(self, now: float) -> None:
        self._actions.start_timer(SWEEP, self._hb_interval)

    def on_open(self, conn: Any, now: float) -> Session:
        session = Session(conn, _uuid4(), now)
        self.registry.open(session)
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
            if s.trunk is not None and type(exc) is _ValidationError:  # a trunk's RING, BUSY...
                try:
                    self._trunks.on_raw(s, data, now)
                except Exception:
                    self._internal_error(s, None, now)
                return
            self._invalid(s, data, exc, now)
            return
        if self._debug:
            log.debug("<- %s %s", who(s), data[:512].decode("utf-8", "replace"))
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
                            data = msg.data
                            tally = route[2]
                            tally[0] += 1
                            tally[1] += len(data)
                            self._send(route[0], _join((route[1], data, _CT_SUFFIX[msg.content_type])))
                            return
                    elif call.listeners is not None and call.state is CONNECTED:
                        self._broadcast_msg(s, call, msg)
                        return
                elif s.trunk is not None:
                    # A listener on another node speaking to a broadcast here, under its node's id.
                    call = s.calls.get(msg.call_id)
                    if call is not None and call.listeners is not None and call.state is CONNECTED:
                        self._broadcast_msg(s, call, msg)
                        return
                warn(s, now, "MSG ignored: call %s is not a connected call of %s", msg.call_id, s.address)
                return
            if s.trunk is not None:  # control frames from a trunk
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
            self._end_session(s, _PEER_DISCONNECTED, now)
        self.registry.forget(s)

    def on_timer(self, key: object, now: float) -> None:
        """A timer the core started ran out; ``key`` says which, and whose it is."""
        handler = self._timers.get(type(key))
        if handler is None:
            raise TypeError(f"no component owns timers of type {type(key).__name__}: {key!r}")
        handler(key, now)

    def on_wake_failed(self, address: str, detail: str, now: float) -> None:
        self.wake.on_wake_failed(address, detail, now)

    def reload_security(self) -> str:
        """Re-read the tokens and policy files (SIGHUP); says what happened, for the log."""
        security = self.policy.security
        if security is None:
            return "nothing to reload (SYSTEMX_AUTH=none, no SYSTEMX_POLICY_FILE)"
        return security.reload()

    def is_registered(self, address: str) -> bool:
        return is_valid_address(address) and address_key(address) in self.registry

    def shutdown(self, now: float) -> None:
        """HANGUP every call with reason ``shutdown`` and close every session 1001."""
        self._stopping = True
        self.book.shutdown(now)
        for s in list(self.registry.sessions):
            if not s.closed:
                self._close(s, CloseCode.GOING_AWAY, CloseReason.SHUTDOWN)
                s.closed = True
                self._end_session(s, HangupReason.SHUTDOWN, now)

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self._stopping else "ok",
            "sessions": len(self.registry.sessions),
            "registered": len(self.registry),
            "calls": len(self.book),
            "asleep": self.wake.asleep(),
            "waking": len(self.wake.waking()),
            "parties": len(self.lines),
            "internal_errors": self.internal_errors,
            "trunks": self._trunks.up(),
        }

    # ------------------------------------------------------------ introspection

    def session_for(self, address: str) -> Session | None:
        return self.registry.holder(address_key(address)) if is_valid_address(address) else None

    def call(self, call_id: str) -> Call | None:
        return self.book.get(call_id)

    def party(self, name: str) -> PartyLine | None:
        return self.lines.get(name)

    def profiles(self) -> dict[str, WakeProfile]:
        return self.wake.profiles()

    @property
    def sessions(self) -> Iterable[Session]:
        return self.registry.sessions

    @property
    def calls(self) -> Iterable[Call]:
        return self.book.calls

    @property
    def parties(self) -> Iterable[PartyLine]:
        return self.lines.lines

    # ----------------------------------------------------------------- helpers

    def _send_logged(self, conn: Any, data: bytes) -> None:
        log.debug("-> %s %s", endpoint_label(conn), data[:512].decode("utf-8", "replace"))
        self._actions.send(conn, data)

    def _close(self, s: Session, code: int, reason: str) -> None:
        self._actions.close(s.conn, int(code), str(reason))

    def _address_taken(self, key: str) -> bool:
        return key in self.registry or self.wake.has_profile(key)

    def _invalid(self, s: Session, data: bytes, exc: Exception, now: float) -> None:
        """Answer a frame that did not decode: ERROR, or REGISTER_FAILED for a REGISTER."""
        why = describe_invalid(data, exc)
        warn(s, now, "Invalid %s from %s: %s", why.context, s.address or s.session_id, why.detail)
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
            self._register_failed(s, reason, address, why.detail, now)
            return
        self._error(s, ErrorReason.INVALID_PAYLOAD, why.context, why.detail)

    def _registered(self, s: Session, msg: Any, now: float) -> bool:
        """The session's state allows ``msg`` (else ERROR not_registered)."""
        if type(msg) in ALLOWED[s.state]:
            return True
        context = NEEDS_REGISTRATION[type(msg)]
        self._refuse(s, ErrorReason.NOT_REGISTERED, context, f"REGISTER an address before {context}", now)
        return False

    def _door_dial(self, s: Session, msg: m.Dial, now: float) -> bool:
        # The common case (no metadata, no rate limit, registered) costs no further call.
        policy = self.policy
        if msg.metadata is not None and not policy.dial_values(s, msg, now):
            return False
        if policy.dial_limited and not policy.dial_rate(s, now):
            return False
        return s.key is not None or self._registered(s, msg, now)

    def _door_join(self, s: Session, msg: m.Join, now: float) -> bool:
        return self._registered(s, msg, now) and self.policy.join(s, msg, now)

    def _door_presence(self, s: Session, msg: m.Presence, now: float) -> bool:
        return self.policy.presence_rate(s, now) and self._registered(s, msg, now)

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

    # ------------------------------------------------------------ registration

    def _on_register(self, s: Session, msg: m.Register, now: float) -> None:
        address = msg.address
        if not is_valid_address(address):
            self._register_failed(
                s,
                RegisterFailedReason.INVALID_ADDRESS,
                address[:300],
                "an address is local@domain.tld: no spaces, one @, a dot in the domain, "
                "at most 254 characters",
                now,
            )
            return
        key = address_key(address)
        policy = self.policy
        if key != s.key and not policy.register_rate(s, address, now):
            return
        admission: Admission | None = None
        if policy.security is not None:
            verdict = policy.admit(s, msg, self.wake.owner(key), now)
            if verdict is False:
                return
            admission = verdict
        concurrency = msg.concurrency or "single"
        problem = policy.register_options(msg, concurrency)
        if problem is not None:
            reason = RegisterFailedReason.INVALID_PAYLOAD
            self._register_failed(s, reason, address, problem, now)
            return
        handler: StoredHandler | None = None
        wake = self.wake
        if msg.mode == "wake_on_ring":
            ok, handler = wake.accept_handler(s, msg, key, address, now)
            if not ok:
                return
        registry = self.registry
        holder = registry.holder(key)
        if (holder is not None and holder is not s) or key in self.lines:
            self._register_failed(
                s,
                RegisterFailedReason.ADDRESS_IN_USE,
                address,
                "a party line has this address" if holder is None else None,
                now,
            )
            return
        if handler is not None and not wake.admit(s, key, address, now):
            return
        if s in self._claiming:
            self._register_failed(
                s,
                RegisterFailedReason.INVALID_PAYLOAD,
                address,
                "an earlier REGISTER of this session is still being processed",
                now,
            )
            return
        meta = dict(msg.metadata) if msg.metadata is not None else {}
        if not registry.shared:
            # The address index is the directory, and it said yes above.
            self._claimed(s, msg, key, handler, concurrency, meta, _LOCAL_CLAIM, now, admission)
            return
        result = registry.claim(s, key, address, msg, concurrency, meta)
        if result is PENDING:
            self._claiming[s] = _Claim(msg, key, handler, concurrency, meta, admission)
            self._claim_ids[s.session_id] = s
            return
        assert not isinstance(result, Pending)
        self._claimed(s, msg, key, handler, concurrency, meta, result, now, admission)

    def on_claimed_id(self, session_id: str, result: Claimed | InUse | None, now: float) -> None:
        """:meth:`on_claimed` for the session named by its id (as the directory knows it)."""
        s = self._claim_ids.get(session_id)
        if s is not None:
            self.on_claimed(s, result, now)

    def on_claim_refused(self, session_id: str, reason: str, detail: str, now: float) -> None:
        """The directory refused to claim for the session's REGISTER (a cluster-wide limit)."""
        s = self._claim_ids.pop(session_id, None)
        if s is None:
            return
        claim = self._claiming.pop(s, None)
        if claim is not None and not s.closed:
            self._register_failed(s, reason, claim.msg.address, detail, now)

    def on_claimed(self, s: Session, result: Claimed | InUse | None, now: float) -> None:
        """The directory's later answer to the claim of ``s``'s REGISTER: complete it.

        A claim granted to a session that has gone meanwhile is given back.
        ``None``: the directory could not be asked (REGISTER_FAILED unavailable).
        """
        claim = self._claiming.pop(s, None)
        self._claim_ids.pop(s.session_id, None)
        if claim is None:
            return
        if s.closed:
            if isinstance(result, Claimed):
                self.registry.release_claim(claim.key, s)
            return
        if result is None:
            self._register_failed(
                s,
                RegisterFailedReason.UNAVAILABLE,
                claim.msg.address,
                "the cluster directory cannot be reached; try again",
                now,
            )
            return
        self._claimed(
            s,
            claim.msg,
            claim.key,
            claim.handler,
            claim.concurrency,
            claim.meta,
            result,
            now,
            claim.admission,
        )

    def _claimed(
        self,
        s: Session,
        msg: m.Register,
        key: str,
        handler: StoredHandler | None,
        concurrency: Concurrency,
        meta: dict[str, Any],
        result: Claimed | InUse | object,
        now: float,
        admission: Admission | None = None,
    ) -> None:
        """The continuation of REGISTER once its claim is answered, at once or later."""
        address = msg.address
        registry = self.registry
        if (result is not _LOCAL_CLAIM and type(result) is not Claimed) or key in self.lines:
            if type(result) is Claimed:
                registry.release_claim(key, s)
            self._register_failed(
                s,
                RegisterFailedReason.ADDRESS_IN_USE,
                address,
                "a party line has this address" if key in self.lines else None,
                now,
            )
            return
        if s.key is not None and s.key != key:
            # A new address on the same socket: the old one is given up.
            self._end_session(s, HangupReason.RECONFIGURED, now)
        if admission is not None:
            self.policy.adopt(s, admission, now)
        wake = self.wake
        if handler is not None or wake.has_profile(key):
            wake.registered(key, address, msg.mode, handler, msg.metadata is not None, meta, s.subject)
        fresh = registry.bind(s, key, address, msg, concurrency, meta, now)
        self._send_msg(s, m.Registered(address=address, session_id=s.session_id))
        if fresh and self._directory and wake.has_profile(key):
            # Other nodes of a cluster may hold calls for it (they wait for this).
            self._actions.woke(address)
        woken = wake.is_waking(key) and wake.woken(key)
        if fresh or woken:
            self.recorder.bound(address, s.session_id, now, woken=woken)
        book = self.book
        if book.has_waiting(key):
            if woken:
                book.arm_waiting(key)
            book.ring_waiting(key, now)

    def _on_unregister(self, s: Session, msg: m.Unregister, now: float) -> None:
        s.closed = True
        self._end_session(s, HangupReason.CLIENT_REQUESTED, now)
        self._close(s, CloseCode.ROUTER, CloseReason.CLIENT_REQUESTED)

    def _end_session(self, s: Session, reason: str, now: float) -> None:
        """End ``s``'s calls and party memberships and free its address."""
        # Each step is skipped when it has nothing to do: this runs for every session.
        if s.trunk is not None:
            # A trunk's calls end, or are held for its grace (they are not the call book's to drop).
            self._trunks.session_closed(s, now)
        if s.calls:
            self.book.drop_session(s, reason, now)
        if s.parties:
            self.lines.drop_session(
                s,
                PartyLeftReason.RECONFIGURED if reason == _RECONFIGURED else PartyLeftReason.DISCONNECTED,
            )
        wake = self.wake
        if s.idle_timer is not None:
            wake.cancel_sleep(s)
        if s.auth_expires is not None:
            self.policy.released(s)
        key = s.key
        if key is None:
            return
        profiled = wake.has_profile(key)
        asleep = profiled and reason != _RECONFIGURED
        address = self.registry.unbind(s, asleep)
        assert address is not None
        why = "disconnected" if reason == _PEER_DISCONNECTED else reason
        self.recorder.unbound(address, s.session_id, why, now, asleep=asleep)
        if asleep and self._directory:
            self._actions.slept(address)
        if profiled or self.book.has_waiting(key):
            wake.unbound(key, asleep, now)

    def evict(self, s: Session, now: float) -> None:
        """``s``'s address was taken by another session while the directory was away: close it."""
        log.warning("%s (session: %s) closed: another session holds its address now", s.address, s.session_id)
        s.closed = True
        self._end_session(s, HangupReason.RECONFIGURED, now)
        self._close(s, CloseCode.ROUTER, RegisterFailedReason.ADDRESS_IN_USE)

    def _credential_expired(self, s: Session, now: float) -> None:
        s.closed = True
        self._end_session(s, HangupReason.AUTH_EXPIRED, now)
        self._close(s, CloseCode.AUTH_EXPIRED, CloseReason.AUTH_EXPIRED)

    def _sleep(self, s: Session, now: float) -> None:
        s.closed = True
        self._end_session(s, HangupReason.SLEEP, now)
        self._close(s, CloseCode.ROUTER, CloseReason.SLEEP)

    # -------------------------------------------------------- status, liveness

    def _on_heartbeat(self, s: Session, msg: m.Heartbeat, now: float) -> None:
        s.last_heartbeat = now
        s.last_activity = now
        self._send(s.conn, b'{"type":"HEARTBEAT_ACK","timestamp":%d}' % int(now * 1000))

    def _on_status(self, s: Session, msg: m.Status, now: float) -> None:
        s.last_activity = now
        if msg.status is not None:
            s.status = msg.status
            self.registry.touch(s)
            self.registry.status_told()
        if msg.auto_sleep is not None:
            self.wake.auto_sleep(s, msg.auto_sleep.idle_timeout_seconds)

    def _sweep(self, key: Sweep, now: float) -> None:
        for s in self.registry.expired(now - self._hb_timeout):
            log.warning("Heartbeat timeout: %s (session: %s)", s.address or "(unregistered)", s.session_id)
            s.closed = True
            self._end_session(s, HangupReason.TIMEOUT, now)
            self._close(s, CloseCode.ROUTER, CloseReason.TIMEOUT)
        self._actions.start_timer(SWEEP, self._hb_interval)

    # -------------------------------------------------------------------- dial

    def _on_dial(self, s: Session, msg: m.Dial, now: float) -> None:
        s.last_activity = now
        self._place(s, msg.to, msg.metadata, now, ringing=msg.ringing)

    def _place(
        self,
        s: Session,
        to: str,
        metadata: dict[str, Any] | None,
        now: float,
        call_id: str | None = None,
        hops: int = 0,
        via: list[str] | None = None,
        *,
        ringing: bool = False,
    ) -> None:
        """Place ``s``'s call to ``to``: local holder, sleeping profile, trunk route, directory.

        ``call_id`` is given when ``s`` is a caller behind a trunk (its DIAL_FORWARD's
        id, kept on this side); ``hops`` and ``via`` then come from that DIAL_FORWARD.
        """
        if not is_valid_address(to):
            self._refuse_dial(s, to, BusyReason.NO_SUCH_ADDRESS, now, call_id)
            return
        if s.grants is not None and not self.policy.may_dial(s, to, now):
            self._refuse_dial(s, to, BusyReason.FORBIDDEN, now, call_id)
            return
        key = address_key(to)
        if key == s.key:
            self._refuse_dial(s, to, BusyReason.ALREADY_IN_CALL, now, call_id)
            return
        # 1. registered here
        callee = self.registry.holder(key)
        if callee is not None:
            self.book.dial(s, callee, to, key, metadata, now, call_id, ringing)
            return
        # 2. asleep here: wake it
        if self.wake.has_profile(key):
            if self._directory and not self.wake.is_waking(key):
                # A cluster: the agent may be awake on another node. The caller hears
                # RINGING once the directory has said (``on_located``).
                link = (hops, via or []) if s.trunk is not None else None
                self.book.wait(s, to, key, metadata, now, waking=True, call_id=call_id, via=link, quiet=True)
                if key not in self._looking_up:
                    self._looking_up.add(key)
                    self._actions.lookup(to)
                return
            call = self.book.wait(s, to, key, metadata, now, waking=True, call_id=call_id)
            if not self.wake.is_waking(key):
                self.wake.start(key, call, now)
            return
        # 3. behind a trunk whose route matches
        if self._trunks.dial_out(s, to, key, metadata, now, call_id, hops, via or []):
            return
        # 4. held elsewhere: behind a trunk of another node, or ask the directory
        if self._directory:
            if self._trunks.dial_cluster(s, to, key, metadata, now, call_id, hops, via or []):
                return
            link = (hops, via or []) if s.trunk is not None else None
            self.book.wait(s, to, key, metadata, now, waking=False, call_id=call_id, via=link)
            if key not in self._looking_up:
                self._looking_up.add(key)
                self._actions.lookup(to)
            return
        # 5. nobody
        self._refuse_dial(s, to, BusyReason.NO_SUCH_ADDRESS, now, call_id)

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
        if conn is None or key in self.registry:
            self.book.fail_waiting(
                key, BusyReason.NO_SUCH_ADDRESS, CallEvent.UNREACHABLE, now, unless_bound=True
            )
            self.book.ring_waiting(key, now)
            return None
        if self.book.first_waiting(key) is None:
            return None
        endpoint = self.registry.bind_remote(conn, _uuid4(), address, key, now)
        self.book.ring_waiting(key, now)
        return endpoint

    def on_located(self, address: str, node: str | None, now: float, *, failed: bool = False) -> None:
        """The cluster directory's answer to ``Actions.lookup``: the node holding ``address``.

        The calls waiting for it are sent to that node over its link; with no
        holder they end with BUSY no_such_address, and with the directory out
        of reach (``failed``) with BUSY unavailable. An address bound here
        meanwhile rings here.
        """
        key = address_key(address)
        if key not in self._looking_up:
            return
        self._looking_up.discard(key)
        book = self.book
        if self.registry.holder(key) is not None:
            book.ring_waiting(key, now)
        elif not failed and (node is None or node == self.node_id) and self.wake.has_profile(key):
            # Asleep: wake it. The driver takes the cluster's wake lock, so of all the
            # nodes holding calls for it one runs the wake; the others wait for ``on_woken``.
            first = book.first_waiting(key)
            if first is not None:
                book.announce_waiting(key, waking=True)
                if not self.wake.is_waking(key):
                    self.wake.start(key, first, now)
        elif node is None or failed or node == self.node_id:
            reason = BusyReason.UNAVAILABLE if failed else BusyReason.NO_SUCH_ADDRESS
            book.fail_waiting(key, reason, CallEvent.UNREACHABLE, now, unless_bound=True)
        else:
            book.announce_waiting(key, waking=False)
            self._trunks.forward_waiting(key, node, now)

    def on_woken(self, address: str, node: str, now: float) -> None:
        """Cluster: ``address``, which has a wake profile, registered on node ``node``.

        A wake of it under way here is over, and the calls held here for it are
        sent to ``node`` over its link, where they ring. Calls still waiting for
        the directory's answer are left to it (it finds ``node``).
        """
        key = address_key(address)
        wake = self.wake
        wake.awake_elsewhere(key, node)
        if self.registry.holder(key) is not None or not wake.is_waking(key):
            return
        wake.woken(key)
        self.book.arm_waiting(key)
        self._trunks.forward_waiting(key, node, now)

    def on_presence_gathered(self, ticket: int, index: PresenceIndex | None, now: float) -> None:
        """The cluster's presence entries for a waiting PRESENCE (None: unreadable)."""
        self.presence.on_gathered(ticket, index, now)

    def open_node(self, node: str, conn: Any, now: float) -> Session:
        """The link to cluster node ``node`` is up over ``conn``: its frames go to ``on_data``."""
        return self._trunks.open_node(node, conn, now)

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


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
