"""Every message of the SystemX wire protocol as a ``msgspec.Struct``.

All messages are JSON objects tagged by ``"type"``. Two unions exist because a
few types (``MSG``, ``HANGUP``, ``PARTY_MSG``, ``RING``, ``ANSWER``, ``BUSY``)
travel in both directions:

* :data:`ClientMessage` — what an endpoint (or a downstream PBX) sends to the
  exchange; decoded and validated in one step by :func:`decode_client`.
* :data:`ServerMessage` — what the exchange sends; the client library decodes it
  with :func:`decode_server`.

``data`` of ``MSG``/``PARTY_MSG`` is kept as :class:`msgspec.Raw`: the exchange
never re-serialises an endpoint's payload, it splices the raw JSON value into
the outgoing frame. Encoding is the pure function :func:`encode`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Raw, field

__all__ = [
    "Answer",
    "AuthExpiring",
    "AutoSleep",
    "Busy",
    "ClientMessage",
    "Connected",
    "Dial",
    "DialForward",
    "Error",
    "Hangup",
    "Heartbeat",
    "HeartbeatAck",
    "Join",
    "JoinFailed",
    "Joined",
    "Leave",
    "Left",
    "Msg",
    "Near",
    "PartyJoined",
    "PartyLeft",
    "PartyMsg",
    "Presence",
    "PresenceEntry",
    "PresenceQuery",
    "PresenceResult",
    "Register",
    "RegisterFailed",
    "RegisterPbx",
    "Registered",
    "RegisteredPbx",
    "Ring",
    "Ringing",
    "ServerMessage",
    "SleepAck",
    "SleepPending",
    "Status",
    "Unregister",
    "WakeHandler",
    "decode_client",
    "decode_server",
    "encode",
]

ContentType = Literal["text", "json", "binary"]
StatusValue = Literal["available", "busy", "dnd", "away"]
ShortStr = Annotated[str, Meta(max_length=256)]
PositiveInt = Annotated[int, Meta(gt=0)]
# ``from`` of a message that travels both ways: the exchange always sends a string, and
# whatever an endpoint puts there (any JSON value) is decoded only to be ignored.
Sender = Any


class _Message(msgspec.Struct, tag_field="type", omit_defaults=True):
    """Base of every message; the subclass's ``tag`` is its ``type``."""


# --------------------------------------------------------------------------
# Nested objects


class WakeHandler(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """How to wake a sleeping ``wake_on_ring`` address."""

    type: Literal["webhook", "spawn"]
    url: str | None = None
    # spawn: the name of a handler the operator defined (``command`` must match its argv).
    handler: str | None = None
    command: list[str] | None = None
    timeout_seconds: Annotated[float, Meta(gt=0, le=3600)] = 30.0
    payload: Any = None


class AutoSleep(msgspec.Struct, omit_defaults=True):
    idle_timeout_seconds: Annotated[float, Meta(ge=0)]
    wake_on_ring: bool = True


class Near(msgspec.Struct):
    lat: Annotated[float, Meta(ge=-90, le=90)]
    lon: Annotated[float, Meta(ge=-180, le=180)]
    radius_km: Annotated[float, Meta(ge=0)]


class PresenceQuery(msgspec.Struct, omit_defaults=True):
    domain: str | None = None
    capabilities: list[str] | None = None
    near: Near | None = None
    status: StatusValue | Literal["asleep"] | None = None


class PresenceEntry(msgspec.Struct):
    address: str
    status: str
    metadata: dict[str, Any]


# --------------------------------------------------------------------------
# Endpoint -> exchange


class Register(_Message, tag="REGISTER"):
    address: str
    # A string or {"token": "..."}; checked only when SYSTEMX_AUTH is tokens or jwt,
    # so any JSON value is accepted here, as the reference router does.
    auth: Any = None
    metadata: dict[str, Any] | None = None
    concurrency: Literal["single", "parallel", "broadcast"] | None = None
    max_listeners: PositiveInt | None = None
    max_sessions: PositiveInt | None = None
    pool_size: PositiveInt | None = None
    mode: Literal["wake_on_ring", "normal"] | None = None
    wake_handler: WakeHandler | None = None


class Unregister(_Message, tag="UNREGISTER"):
    pass


class Status(_Message, tag="STATUS"):
    status: StatusValue | None = None
    auto_sleep: AutoSleep | None = None


class Heartbeat(_Message, tag="HEARTBEAT"):
    pass


class Dial(_Message, tag="DIAL"):
    to: str
    metadata: dict[str, Any] | None = None
    # The caller asks for RINGING (with the call's id) when the callee starts ringing.
    ringing: bool = False


class Answer(_Message, tag="ANSWER"):
    call_id: str
    # Set only by a downstream PBX relaying its callee's answer; any JSON value from an endpoint is ignored.
    from_: Sender = field(default=None, name="from")


class Hangup(_Message, tag="HANGUP"):
    call_id: str
    reason: ShortStr | None = None
    # Set by the exchange when a broadcast listener leaves; ignored from endpoints.
    from_: Sender = field(default=None, name="from")


class Msg(_Message, tag="MSG", gc=False):
    call_id: str
    data: Raw
    # Absent or null means "text"; the exchange always relays an explicit value.
    content_type: ContentType | None = "text"
    # Ignored from endpoints: the exchange always sets ``from`` itself.
    from_: Sender = field(default=None, name="from")


class Join(_Message, tag="JOIN"):
    party: str
    create_if_missing: bool = False


class PartyMsg(_Message, tag="PARTY_MSG", gc=False):
    party: str
    data: Raw
    content_type: ContentType | None = None
    from_: Sender = field(default=None, name="from")


class Leave(_Message, tag="LEAVE"):
    party: str


class Presence(_Message, tag="PRESENCE"):
    query: PresenceQuery = msgspec.field(default_factory=PresenceQuery)
    limit: Annotated[int, Meta(gt=0)] | None = None


class SleepAck(_Message, tag="SLEEP_ACK"):
    pass


class RegisterPbx(_Message, tag="REGISTER_PBX"):
    domain: str
    routes: list[str]
    endpoint: str | None = None
    auth: Any = None  # any JSON value, unchecked (as REGISTER's)


class DialForward(_Message, tag="DIAL_FORWARD"):
    from_: str = field(name="from")
    to: str
    call_id: str
    metadata: dict[str, Any] | None = None
    # Additive (the reference router ignores them): times the dial was sent on
    # from exchange to exchange, and the ids of the exchanges it passed.
    hops: Annotated[int, Meta(ge=0)] | None = None
    via: list[str] | None = None


# --------------------------------------------------------------------------
# Exchange -> endpoint


class Registered(_Message, tag="REGISTERED"):
    address: str
    session_id: str


class RegisterFailed(_Message, tag="REGISTER_FAILED"):
    reason: str
    address: str | None = None
    detail: str | None = None


class HeartbeatAck(_Message, tag="HEARTBEAT_ACK"):
    timestamp: int


class Ring(_Message, tag="RING"):
    from_: str = field(name="from")
    call_id: str
    metadata: dict[str, Any] | None = None


class Ringing(_Message, tag="RINGING"):
    """Additive: tells the caller its call id while the callee rings or wakes."""

    call_id: str
    to: str
    waking: bool = False


class Connected(_Message, tag="CONNECTED"):
    call_id: str
    to: str


class Busy(_Message, tag="BUSY"):
    to: str
    reason: str
    call_id: str | None = None


class Joined(_Message, tag="JOINED"):
    party: str
    participants: list[str]


class JoinFailed(_Message, tag="JOIN_FAILED"):
    party: str
    reason: str
    detail: str | None = None


class Left(_Message, tag="LEFT"):
    party: str


class PartyJoined(_Message, tag="PARTY_JOINED"):
    party: str
    address: str


class PartyLeft(_Message, tag="PARTY_LEFT"):
    party: str
    address: str
    reason: str


class PresenceResult(_Message, tag="PRESENCE_RESULT"):
    addresses: list[PresenceEntry]
    # Present (true) only when the result's byte bound left out matching entries.
    truncated: bool = False


class SleepPending(_Message, tag="SLEEP_PENDING"):
    reason: str
    seconds_until_sleep: int


class AuthExpiring(_Message, tag="AUTH_EXPIRING"):
    # When the session's credential expires (epoch seconds) and how long that is from now.
    expires_at: int
    seconds_left: int


class RegisteredPbx(_Message, tag="REGISTERED_PBX"):
    domain: str


class Error(_Message, tag="ERROR"):
    reason: str
    context: str
    detail: str
    # With ``rate_limited`` for PRESENCE: the queries allowed per window, and when the next is.
    limit: int | None = None
    retry_after_ms: int | None = None


ClientMessage = (
    Register
    | Unregister
    | Status
    | Heartbeat
    | Dial
    | Answer
    | Hangup
    | Msg
    | Join
    | PartyMsg
    | Leave
    | Presence
    | SleepAck
    | RegisterPbx
    | DialForward
)

ServerMessage = (
    Registered
    | RegisterFailed
    | HeartbeatAck
    | Ring
    | Ringing
    | Connected
    | Hangup
    | Busy
    | Msg
    | Joined
    | JoinFailed
    | Left
    | PartyJoined
    | PartyLeft
    | PartyMsg
    | PresenceResult
    | SleepPending
    | AuthExpiring
    | DialForward
    | RegisteredPbx
    | Error
)

_client_decoder = msgspec.json.Decoder(ClientMessage)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_encoder = msgspec.json.Encoder()

#: Decode and validate one endpoint frame. Raises ``msgspec.DecodeError`` for
#: text that is not JSON and ``msgspec.ValidationError`` for JSON that is not a
#: valid message (see :mod:`systemx.protocol.errors`).
decode_client = _client_decoder.decode

#: Decode one exchange frame (client side).
decode_server = _server_decoder.decode

#: Encode any message (or plain JSON value) to bytes.
encode = _encoder.encode
