"""Exceptions raised by the client library.

Every exception carries the data the exchange sent, not just a message::

    ClientError
    ├── ConnectFailed         the WebSocket could not be opened
    ├── ConnectionClosed      the WebSocket closed (code, reason)
    ├── RegisterFailed        REGISTER_FAILED (reason, detail)
    ├── ExchangeError         ERROR (reason, context, detail) answering a request
    ├── CallRejected          DIAL did not connect: the callee hung up while ringing
    │   └── BusyError         BUSY (to, reason, call_id)
    ├── DialTimeout           DIAL not answered within the caller's timeout (also a TimeoutError)
    ├── CallEnded             use of a call that has been hung up
    ├── JoinFailed            JOIN_FAILED (party, reason, detail)
    └── PartyClosed           use of a party line after LEAVE or removal
"""

from __future__ import annotations

__all__ = [
    "BusyError",
    "CallEnded",
    "CallRejected",
    "ClientError",
    "ConnectFailed",
    "ConnectionClosed",
    "DialTimeout",
    "ExchangeError",
    "JoinFailed",
    "PartyClosed",
    "RegisterFailed",
]


class ClientError(Exception):
    """Base of every client library exception."""


class ConnectFailed(ClientError):
    """The WebSocket to ``url`` could not be opened."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"cannot connect to {url}: {detail}")
        self.url = url
        self.detail = detail


class ConnectionClosed(ClientError):
    """The WebSocket is closed; ``code``/``reason`` are from the close frame.

    ``code`` is 1006 when the connection dropped without a close frame. The
    exchange closes with 4000 (``timeout``, ``sleep``, ``client_requested``)
    and 1001 on shutdown.
    """

    def __init__(self, code: int, reason: str = "", *, reconnecting: bool = False) -> None:
        super().__init__(_describe_close(code, reason, reconnecting))
        self.code = code
        self.reason = reason
        #: True when the client is reconnecting by itself (``reconnect=True``):
        #: the client goes on, but what used the old connection has ended.
        self.reconnecting = reconnecting


def _describe_close(code: int, reason: str, reconnecting: bool) -> str:
    what = f"{code}{' ' + reason if reason else ''}"
    if code == 1006:
        text = f"connection lost ({what}: no close frame; the network or the exchange went away)"
    elif code == 1001:
        text = f"the exchange closed the connection ({what}: it is shutting down)"
    elif code == 4000 and reason == "timeout":
        text = f"the exchange closed the connection ({what}: no heartbeat reached it in time)"
    else:
        text = f"connection closed ({what})"
    if reconnecting:
        text += "; reconnecting (calls and party lines of the old connection have ended)"
    return text


class RegisterFailed(ClientError):
    """The exchange refused the address (``invalid_address``, ``address_in_use``, ...)."""

    def __init__(self, reason: str, detail: str | None = None, address: str | None = None) -> None:
        super().__init__(f"register failed: {reason}{f' ({detail})' if detail else ''}")
        self.reason = reason
        self.detail = detail
        self.address = address


class ExchangeError(ClientError):
    """The exchange answered a request with ``ERROR {reason, context, detail}``."""

    def __init__(self, reason: str, context: str, detail: str) -> None:
        super().__init__(f"{context}: {reason} ({detail})")
        self.reason = reason
        self.context = context
        self.detail = detail


class CallRejected(ClientError):
    """A dialled call ended before it connected; ``reason`` is the HANGUP reason."""

    def __init__(self, to: str, reason: str, call_id: str | None = None) -> None:
        super().__init__(f"call to {to} rejected: {reason}")
        self.to = to
        self.reason = reason
        self.call_id = call_id


class BusyError(CallRejected):
    """The exchange answered DIAL with ``BUSY``; ``reason`` is its reason
    (``no_such_address``, ``already_in_call``, ``dnd``, ``timeout``, ...)."""

    def __init__(self, to: str, reason: str, call_id: str | None = None) -> None:
        super().__init__(to, reason, call_id)
        self.args = (busy_text(to, reason),)


_BUSY_TEXT = {
    "no_such_address": "{to}: no such address (nobody is registered there and it has no wake profile)",
    "already_in_call": "{to} is busy: already in a call",
    "dnd": "{to} does not want to be disturbed (status dnd)",
    "away": "{to} is away (status away)",
    "busy": "{to} is busy (status busy)",
    "max_sessions_reached": "{to} is busy: all its parallel sessions are taken",
    "max_listeners_reached": "{to} is busy: the broadcast has its maximum of listeners",
    "timeout": "{to} did not answer in time (timeout)",
    "wake_failed": "{to} is asleep and could not be woken (wake_failed)",
    "shutdown": "{to} unreachable: the exchange is shutting down",
}


def busy_text(to: str, reason: str) -> str:
    """What a BUSY with ``reason`` means, in words, naming the dialled address."""
    template = _BUSY_TEXT.get(reason)
    return template.format(to=to) if template is not None else f"{to} is busy: {reason}"


class DialTimeout(ClientError, TimeoutError):
    """``dial(timeout=...)`` gave up: no CONNECTED within ``timeout`` seconds.

    The ringing call has been hung up. It is also a ``TimeoutError``."""

    def __init__(self, to: str, timeout: float) -> None:
        super().__init__(f"no answer from {to} within {timeout:g} s; the call was hung up")
        self.to = to
        self.timeout = timeout


class CallEnded(ClientError):
    """The call was hung up (by either side) or the connection closed."""

    def __init__(self, call_id: str, reason: str) -> None:
        super().__init__(f"call {call_id} ended: {reason}")
        self.call_id = call_id
        self.reason = reason


class JoinFailed(ClientError):
    """The exchange answered JOIN with ``JOIN_FAILED``."""

    def __init__(self, party: str, reason: str, detail: str | None = None) -> None:
        super().__init__(f"join {party} failed: {reason}{f' ({detail})' if detail else ''}")
        self.party = party
        self.reason = reason
        self.detail = detail


class PartyClosed(ClientError):
    """This endpoint is no longer on the party line (``left``, or the connection closed)."""

    def __init__(self, party: str, reason: str) -> None:
        super().__init__(f"not on party line {party}: {reason}")
        self.party = party
        self.reason = reason
