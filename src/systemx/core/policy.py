"""Policy: what a session may ask for, and how often.

:class:`Policy` holds the per-session rate limits (DIAL, PRESENCE) and the
checks of values the exchange keeps (metadata and wake payloads: their shape,
depth and encoded size). It answers a refusal itself and returns False, so a
handler runs only for a request that passed. The wake handler policy (which
webhooks and programs) is :mod:`systemx.core.wakepolicy`, its pure helper;
token auth and per-domain ACLs belong here too when they come.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from systemx.core.config import CoreConfig
from systemx.core.session import Sender, Session, warn
from systemx.protocol import messages as m
from systemx.protocol.codes import CLIENT_STATUSES, ErrorReason, RegisterFailedReason

__all__ = ["Policy", "bound_value", "validate_metadata"]

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

    def __init__(self, send: Callable[[object, bytes], None], cfg: CoreConfig) -> None:
        super().__init__(send)
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
