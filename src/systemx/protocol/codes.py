"""Reasons and close codes: every string the exchange puts in a reason field.

Each enum is a ``StrEnum``/``IntEnum`` so values go on the wire unchanged.
"""

from __future__ import annotations

import enum

__all__ = [
    "BusyReason",
    "CloseCode",
    "CloseReason",
    "ErrorReason",
    "HangupReason",
    "JoinFailedReason",
    "PartyLeftReason",
    "RegisterFailedReason",
    "SleepReason",
    "Status",
]


class Status(enum.StrEnum):
    """Presence status of an address. ``asleep`` is set by the exchange only."""

    AVAILABLE = "available"
    BUSY = "busy"
    DND = "dnd"
    AWAY = "away"
    ASLEEP = "asleep"


CLIENT_STATUSES = frozenset({"available", "busy", "dnd", "away"})


class RegisterFailedReason(enum.StrEnum):
    INVALID_ADDRESS = "invalid_address"
    ADDRESS_IN_USE = "address_in_use"
    AUTH_FAILED = "auth_failed"
    WAKE_HANDLER_NOT_ALLOWED = "wake_handler_not_allowed"
    WAKE_PROFILE_LIMIT = "wake_profile_limit"
    INVALID_PAYLOAD = "invalid_payload"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    # A cluster node cannot reach the shared directory (Redis) to claim the address.
    UNAVAILABLE = "unavailable"


class BusyReason(enum.StrEnum):
    NO_SUCH_ADDRESS = "no_such_address"
    ALREADY_IN_CALL = "already_in_call"
    DND = "dnd"
    AWAY = "away"
    BUSY = "busy"
    MAX_SESSIONS_REACHED = "max_sessions_reached"
    MAX_LISTENERS_REACHED = "max_listeners_reached"
    TIMEOUT = "timeout"
    WAKE_FAILED = "wake_failed"
    SHUTDOWN = "shutdown"
    FORBIDDEN = "forbidden"
    # The trunk that reaches the address is down.
    UNAVAILABLE = "unavailable"
    # A DIAL_FORWARD for a broadcast address (listeners do not cross a trunk).
    UNSUPPORTED = "unsupported"


class HangupReason(enum.StrEnum):
    NORMAL = "normal"
    TIMEOUT = "timeout"
    PEER_DISCONNECTED = "peer_disconnected"
    CLIENT_REQUESTED = "client_requested"
    SLEEP = "sleep"
    RECONFIGURED = "reconfigured"
    SHUTDOWN = "shutdown"
    AUTH_EXPIRED = "auth_expired"


class ErrorReason(enum.StrEnum):
    INVALID_PAYLOAD = "invalid_payload"
    NOT_REGISTERED = "not_registered"
    RATE_LIMITED = "rate_limited"
    NOT_IN_PARTY = "not_in_party"
    NOT_WAKE_ON_RING = "not_wake_on_ring"
    INTERNAL_ERROR = "internal_error"
    FORBIDDEN = "forbidden"
    # A cluster node cannot read the other nodes' presence (Redis out of reach).
    UNAVAILABLE = "unavailable"


class JoinFailedReason(enum.StrEnum):
    NO_SUCH_PARTY = "no_such_party"
    INVALID_ADDRESS = "invalid_address"
    ADDRESS_IN_USE = "address_in_use"
    PARTY_FULL = "party_full"
    TOO_MANY_PARTIES = "too_many_parties"
    FORBIDDEN = "forbidden"
    # A cluster node cannot reach the shared roster (Redis) to join the line.
    UNAVAILABLE = "unavailable"


class PartyLeftReason(enum.StrEnum):
    LEFT = "left"
    DISCONNECTED = "disconnected"
    RECONFIGURED = "reconfigured"


class SleepReason(enum.StrEnum):
    IDLE_TIMEOUT = "idle_timeout"


class CloseReason(enum.StrEnum):
    """Text of a router-initiated close (code 4000) or of other close codes."""

    TIMEOUT = "timeout"
    SLEEP = "sleep"
    CLIENT_REQUESTED = "client_requested"
    INVALID_UTF8 = "Invalid UTF-8"
    INVALID_JSON = "Invalid JSON"
    TOO_BIG = "Message too big"
    SLOW_CONSUMER = "slow_consumer"
    SHUTDOWN = "shutdown"
    AUTH_EXPIRED = "auth_expired"
    RATE_LIMITED = "rate_limited"


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    ROUTER = 4000
    AUTH_EXPIRED = 4001
