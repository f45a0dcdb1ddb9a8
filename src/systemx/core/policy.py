"""Policy: what a session may ask for, and how often.

:class:`Policy` holds the per-session rate limits (DIAL, PRESENCE) and the
checks of values the exchange keeps (metadata and wake payloads: their shape,
depth and encoded size). It answers a refusal itself and returns False, so a
handler runs only for a request that passed. The wake handler policy (which
webhooks and programs) is :mod:`systemx.core.wakepolicy`, its pure helper.

It also holds the security checks (:mod:`systemx.core.security`): the
credential and may-register at REGISTER (and who owns a sleeping address),
may-dial, may-join and may-create, the REGISTER-rename and JOIN rate limits,
and the credential's expiry (``AUTH_EXPIRING``, then close), timed by the
session's :class:`~systemx.core.timerkeys.AuthTimer`. With ``SYSTEMX_AUTH=none``
and no policy file there is no :class:`~systemx.core.security.Security` and
each check is one ``is None`` test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from systemx.core.actions import Actions
from systemx.core.config import CoreConfig
from systemx.core.security import Admission, Security, Window
from systemx.core.session import Sender, Session, warn
from systemx.core.timerkeys import AuthTimer
from systemx.protocol import messages as m
from systemx.protocol.address import address_key, is_valid_address
from systemx.protocol.codes import CLIENT_STATUSES, ErrorReason, JoinFailedReason, RegisterFailedReason
from systemx.quicklog import get_logger

__all__ = ["AUTH_WARN_SECONDS", "Policy", "bound_value", "validate_metadata"]

log = get_logger("systemx.exchange")

#: The AUTH_EXPIRING warning goes out this long before a session's credential expires.
AUTH_WARN_SECONDS = 60.0

_encode = m.encode


def validate_metadata(meta: dict[str, Any]) -> str | None:
    """Why REGISTER ``metadata`` is refused (the fields the exchange reads), or None."""
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


def bound_value(value: Any, name: str, max_depth: int, max_bytes: int) -> str | None:
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


class Policy(Sender):
    """Rate limits and value checks. See the module docstring."""

    def __init__(
        self,
        actions: Actions,
        cfg: CoreConfig,
        security: Security | None,
        expired: Callable[[Session, float], None],
        party_exists: Callable[[str], bool],
    ) -> None:
        super().__init__(actions.send)
        self._actions = actions
        #: None when nothing is checked (``SYSTEMX_AUTH=none``, no policy file).
        self.security = security
        self._expired = expired
        self._party_exists = party_exists
        self._auth_grace = cfg.auth_grace_ms / 1000.0
        self._register_max = cfg.register_max_renames
        self._register_window_ms = cfg.register_window_ms
        self._join_max = cfg.join_max_attempts
        self._join_window_ms = cfg.join_window_ms
        self._max_depth = cfg.max_json_depth
        self._max_value_bytes = cfg.max_value_bytes
        self._dial_max = cfg.dial_max_attempts
        #: Whether DIAL is rate limited at all (``dial_rate`` need not be asked otherwise).
        self.dial_limited = cfg.dial_max_attempts > 0
        self._dial_window = cfg.dial_window
        self._presence_max = cfg.presence_max_queries
        self._presence_window_ms = cfg.presence_window_ms
        self._presence_window = cfg.presence_window_ms / 1000.0

    # ------------------------------------------------------------- REGISTER

    def register_values(self, s: Session, msg: m.Register, now: float) -> bool:
        """The REGISTER's kept values are within bounds (else REGISTER_FAILED)."""
        problem = None
        if msg.metadata is not None:
            problem = bound_value(msg.metadata, "metadata", self._max_depth, self._max_value_bytes)
        if problem is None and msg.wake_handler is not None and msg.wake_handler.payload is not None:
            problem = bound_value(
                msg.wake_handler.payload, "wake_handler.payload", self._max_depth, self._max_value_bytes
            )
        if problem is None:
            return True
        warn(s, now, "Invalid REGISTER from %s: %s", s.address or s.session_id, problem)
        self._register_failed(s, RegisterFailedReason.INVALID_PAYLOAD, msg.address[:300], problem, now)
        return False

    @staticmethod
    def register_options(msg: m.Register, concurrency: str) -> str | None:
        """Why the REGISTER's options do not go together, or its metadata is refused, or None."""
        if msg.max_listeners is not None and concurrency != "broadcast":
            return "max_listeners requires concurrency broadcast"
        if msg.max_sessions is not None and concurrency != "parallel":
            return "max_sessions requires concurrency parallel"
        if msg.metadata is not None and (problem := validate_metadata(msg.metadata)) is not None:
            return problem
        if msg.wake_handler is not None and msg.mode != "wake_on_ring":
            return "wake_handler requires mode wake_on_ring"
        return None

    # ----------------------------------------------------------------- DIAL

    def dial_values(self, s: Session, msg: m.Dial, now: float) -> bool:
        """The DIAL's metadata is within bounds (else ERROR invalid_payload)."""
        if msg.metadata is None:
            return True
        problem = bound_value(msg.metadata, "metadata", self._max_depth, self._max_value_bytes)
        if problem is None:
            return True
        warn(s, now, "Invalid DIAL from %s: %s", s.address or s.session_id, problem)
        self._error(s, ErrorReason.INVALID_PAYLOAD, "DIAL", problem)
        return False

    def dial_rate(self, s: Session, now: float) -> bool:
        """Count one DIAL in ``s``'s fixed window; past the limit, answer ``rate_limited``."""
        if self._dial_max <= 0:
            return True
        if s.dial_count == 0 or now - s.dial_window_start >= self._dial_window:
            s.dial_window_start = now
            s.dial_count = 1
            return True
        s.dial_count += 1
        if s.dial_count <= self._dial_max:
            return True
        warn(s, now, "Dial rate limit: %s (session: %s)", s.address, s.session_id)
        self._refuse(s, ErrorReason.RATE_LIMITED, "DIAL", "Too many dial attempts", now)
        return False

    # ------------------------------------------------------------- PRESENCE

    def presence_rate(self, s: Session, now: float) -> bool:
        """Count one PRESENCE in ``s``'s fixed window; past the limit, answer ``rate_limited``."""
        if self._presence_max <= 0:
            return True
        if s.presence_count == 0 or now - s.presence_window_start >= self._presence_window:
            s.presence_window_start = now
            s.presence_count = 1
            return True
        s.presence_count += 1
        if s.presence_count <= self._presence_max:
            return True
        retry_ms = max(1, math.ceil((s.presence_window_start + self._presence_window - now) * 1000))
        warn(s, now, "Presence rate limit: %s (session: %s)", s.address, s.session_id)
        self._send_msg(
            s,
            m.Error(
                reason=ErrorReason.RATE_LIMITED,
                context="PRESENCE",
                detail=f"Too many PRESENCE queries: at most {self._presence_max} per "
                f"{self._presence_window_ms} ms; retry in {retry_ms} ms",
                limit=self._presence_max,
                retry_after_ms=retry_ms,
            ),
        )
        self._recorder.refused("PRESENCE", ErrorReason.RATE_LIMITED, s.address, now)
        return False

    # ------------------------------------------------------- REGISTER security

    def register_rate(self, s: Session, address: str, now: float) -> bool:
        """Count a REGISTER of a new address; past the limit, answer ``rate_limited``."""
        limit = self._register_max
        if limit <= 0:
            return True
        # Window.hit, inline on the session's counters: this runs at every fresh REGISTER.
        length = self._register_window_ms / 1000
        if s.register_count == 0 or now - s.register_window_start >= length:
            s.register_window_start = now
            s.register_count = 1
            return True
        s.register_count += 1
        if s.register_count <= limit:
            return True
        retry_ms = max(1, math.ceil((s.register_window_start + length - now) * 1000))
        warn(s, now, "REGISTER rate limit: %s (session: %s)", s.address, s.session_id)
        detail = (
            f"Too many REGISTERs of a new address: at most {limit} per "
            f"{self._register_window_ms} ms; retry in {retry_ms} ms"
        )
        self._register_failed(s, RegisterFailedReason.RATE_LIMITED, address, detail, now)
        return False

    def admit(
        self, s: Session, msg: m.Register, owner: str | None, now: float
    ) -> Admission | Literal[False] | None:
        """Authenticate a REGISTER of (valid) ``msg.address`` and check it may bind it.

        ``owner`` is the identity that owns the address's wake profile, if any.
        Returns the :class:`Admission`, ``None`` when nothing is checked, or False
        when refused (answered ``REGISTER_FAILED``).
        """
        security = self.security
        if security is None:
            return None
        address = msg.address
        verdict = security.admit(msg.auth, address, now)
        if not isinstance(verdict, Admission):
            warn(
                s,
                now,
                "REGISTER refused (%s): %s (session: %s): %s",
                verdict.reason,
                address,
                s.session_id,
                verdict.why,
            )
            self._register_failed(s, verdict.reason, address, None, now)
            return False
        if owner is not None and verdict.subject not in (None, owner):
            # Only the identity that created a wake profile may take its address back
            # (without authentication there are no identities: nothing to enforce).
            warn(
                s,
                now,
                "REGISTER refused (forbidden): %s belongs to %s, not %s (session: %s)",
                address,
                owner,
                verdict.subject,
                s.session_id,
            )
            self._register_failed(s, RegisterFailedReason.FORBIDDEN, address, None, now)
            return False
        return verdict

    def adopt(self, s: Session, admission: Admission, now: float) -> None:
        """``s`` registered with ``admission``: keep its identity and grants, time its credential.

        A REGISTER of the same address with a fresh credential keeps the session and
        its calls and moves the expiry (see PROTOCOL.md, "Authentication").
        """
        s.subject, s.grants = admission.subject, admission.grants
        if admission.expires_at != s.auth_expires:
            s.auth_expires = admission.expires_at
            self._arm_auth(s, now)

    def _arm_auth(self, s: Session, now: float) -> None:
        """(Re)start the credential timer: AUTH_EXPIRING before expiry, close after the grace."""
        timer = s.auth_timer
        if timer is None:
            timer = s.auth_timer = AuthTimer(s)
        else:
            self._actions.cancel_timer(timer)
        s.auth_warned = False
        expires = s.auth_expires
        if expires is not None:
            due = max(expires - AUTH_WARN_SECONDS - now, 0.0)
            self._actions.start_timer(timer, math.ceil(due * 10) / 10)

    def on_auth_timer(self, key: AuthTimer, now: float) -> None:
        s = key.session
        expires = s.auth_expires
        if s.closed or expires is None:
            return
        if not s.auth_warned:
            s.auth_warned = True
            left = max(int(expires - now), 0)
            self._send_msg(s, m.AuthExpiring(expires_at=int(expires), seconds_left=left))
            delay = math.ceil(max(expires + self._auth_grace - now, 0.0) * 10) / 10
            self._actions.start_timer(key, delay)
            return
        log.warning("Credential expired: %s (session: %s)", s.address, s.session_id)
        self._expired(s, now)

    def released(self, s: Session) -> None:
        """``s`` gave up its address: its credential is no longer timed."""
        if s.auth_expires is not None:
            if s.auth_timer is not None:
                self._actions.cancel_timer(s.auth_timer)
            s.auth_expires = None

    # -------------------------------------------------------- DIAL, JOIN security

    def may_dial(self, s: Session, to: str, now: float) -> bool:
        """``s``'s grants let it dial ``to`` (else a warning; the caller answers BUSY forbidden)."""
        grants = s.grants
        if grants is None or grants.permits("dial", to):
            return True
        warn(s, now, "DIAL refused (forbidden): %s → %s", s.address, to)
        return False

    def join(self, s: Session, msg: m.Join, now: float) -> bool:
        """The JOIN rate limit, then may-join and may-create (else answered)."""
        limit = self._join_max
        if limit > 0:
            window = s.join_window
            if window is None:
                window = s.join_window = Window()
            retry_ms = window.hit(now, limit, self._join_window_ms / 1000)
            if retry_ms is not None:
                warn(s, now, "JOIN rate limit: %s (session: %s)", s.address, s.session_id)
                self._send_msg(
                    s,
                    m.Error(
                        reason=ErrorReason.RATE_LIMITED,
                        context="JOIN",
                        detail=f"Too many JOINs: at most {limit} per {self._join_window_ms} ms; "
                        f"retry in {retry_ms} ms",
                        limit=limit,
                        retry_after_ms=retry_ms,
                    ),
                )
                self._recorder.refused("JOIN", ErrorReason.RATE_LIMITED, s.address, now)
                return False
        grants = s.grants
        name = msg.party
        if grants is None or not is_valid_address(name):
            return True
        if not grants.permits("join", name):
            warn(s, now, "JOIN refused (forbidden): %s → %s", s.address, name)
            self._join_forbidden(s, name, "not permitted to join this party line", now)
            return False
        if (
            msg.create_if_missing
            and not self._party_exists(address_key(name))
            and not grants.permits("create", name)
        ):
            warn(s, now, "JOIN refused (forbidden to create): %s → %s", s.address, name)
            self._join_forbidden(s, name, "not permitted to create this party line", now)
            return False
        return True

    def _join_forbidden(self, s: Session, name: str, detail: str, now: float) -> None:
        self._send_msg(s, m.JoinFailed(party=name, reason=JoinFailedReason.FORBIDDEN, detail=detail))
        self._recorder.refused("JOIN", JoinFailedReason.FORBIDDEN, name, now)
