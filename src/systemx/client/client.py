"""The asyncio client: one WebSocket to the exchange, one registered address.

:class:`Client` owns the socket (picows), the heartbeat timer and every
request/response correlation. Frames are decoded with
:func:`~systemx.protocol.messages.decode_server` in the socket callback and
dispatched synchronously: call-scoped frames to their :class:`Call` (by
``call_id``), RING to the incoming-call queue, party frames to their
:class:`Party`, answers to the future of the request that asked for them.

The exchange answers requests in order and, apart from ``call_id`` and
``party``, frames carry no correlation id, so requests of one kind are matched
first-in first-out. A waiter abandoned by a timeout stays queued until its
answer arrives so that later answers still line up.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Literal, TypeVar

import msgspec
from picows import WSCloseCode, WSError, WSFrame, WSInvalidURL, WSListener, WSMsgType, WSTransport, ws_connect

from systemx.client._inbox import Inbox
from systemx.client.call import CONNECTION_CLOSED, Call, IncomingCall
from systemx.client.errors import (
    BusyError,
    CallRejected,
    ConnectFailed,
    ConnectionClosed,
    ExchangeError,
    JoinFailed,
    PartyClosed,
    RegisterFailed,
)
from systemx.client.party import Party
from systemx.protocol.messages import (
    AutoSleep,
    Busy,
    Connected,
    Dial,
    DialForward,
    Error,
    Hangup,
    HeartbeatAck,
    Join,
    Joined,
    Left,
    Msg,
    Near,
    PartyJoined,
    PartyLeft,
    PartyMsg,
    Presence,
    PresenceEntry,
    PresenceQuery,
    PresenceResult,
    Register,
    Registered,
    RegisteredPbx,
    Ring,
    Ringing,
    SleepAck,
    SleepPending,
    Status,
    Unregister,
    WakeHandler,
    decode_server,
    encode,
)

__all__ = ["Client", "ServerEvent", "connect"]

logger = logging.getLogger("systemx.client")

T = TypeVar("T")

#: Frames no request asked for: idle warnings, unsolicited errors, broadcast
#: listener hangups, and federation frames an endpoint does not act on.
ServerEvent = SleepPending | Error | Hangup | DialForward | RegisteredPbx

_HEARTBEAT = b'{"type":"HEARTBEAT"}'
_SLEEP_ACK = encode(SleepAck())
_UNREGISTER = encode(Unregister())
_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_EVENTS_KEPT = 1000


class _PendingDial:
    __slots__ = ("abandoned", "call_id", "future", "metadata", "settled", "to")

    def __init__(self, to: str, metadata: dict[str, Any] | None, future: asyncio.Future[Call]) -> None:
        self.to = to
        self.metadata = metadata
        self.future = future
        self.call_id: str | None = None
        self.settled = False
        self.abandoned = False


class _Listener(WSListener):
    """picows callbacks, forwarded to the client. Reassembles fragmented messages."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._fragments: list[bytes] | None = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == _TEXT or msg_type == _BINARY:
            if frame.fin:
                self._client._on_data(frame.get_payload_as_bytes())
            else:
                self._fragments = [frame.get_payload_as_bytes()]
        elif msg_type == _CONTINUATION:
            if self._fragments is None:
                return
            self._fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = None
                self._client._on_data(data)
        elif msg_type == _CLOSE:
            code = frame.get_close_code()
            transport.send_close(code if code != WSCloseCode.NO_INFO else WSCloseCode.OK)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        handshake = transport.close_handshake
        if handshake is not None and handshake.recv is not None:
            code, reason = int(handshake.recv.code), handshake.recv.reason or ""
        else:
            code, reason = 1006, ""
        self._client._on_disconnected(code, reason)

    def pause_writing(self) -> None:
        self._client._write_paused = True

    def resume_writing(self) -> None:
        self._client._on_resume_writing()


class Client:
    """A registered endpoint. Create it with :func:`connect` (or :meth:`Client.connect`)."""

    def __init__(
        self,
        address: str,
        *,
        heartbeat_interval: float | None = 30.0,
        request_timeout: float | None = 10.0,
        concurrency: str | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        #: The address as the exchange echoed it in REGISTERED.
        self.address = address
        self.session_id: str | None = None
        self.heartbeat_interval = heartbeat_interval
        #: Default bound on waiting for an answer to a request; ``None`` waits forever.
        self.request_timeout = request_timeout
        #: Called with each SLEEP_PENDING (which is also queued on :meth:`events`).
        self.on_sleep_pending: Callable[[SleepPending], object] | None = None
        self._concurrency = concurrency
        self._listener = _Listener(self)
        self._transport: WSTransport | None = None
        self._closed: ConnectionClosed | None = None
        self._closing = False
        self._closed_future: asyncio.Future[ConnectionClosed] = self.loop.create_future()
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._heartbeat_handle: asyncio.TimerHandle | None = None
        self._heartbeats_sent = 0
        self._heartbeats_acked = 0
        self._ping_waiters: deque[tuple[int, asyncio.Future[int]]] = deque()

        self._calls: dict[str, Call] = {}
        self._ringing_in: dict[str, IncomingCall] = {}
        self._dials: deque[_PendingDial] = deque()
        self._dials_by_id: dict[str, _PendingDial] = {}
        self._parties: dict[str, Party] = {}
        self._incoming: Inbox[IncomingCall] = Inbox(self.loop)
        self._events: Inbox[ServerEvent] = Inbox(self.loop, maxlen=_EVENTS_KEPT)

        self._register_waiter: asyncio.Future[Registered] | None = None
        self._presence_waiters: deque[asyncio.Future[list[PresenceEntry]]] = deque()
        self._join_waiters: dict[str, asyncio.Future[Party]] = {}
        self._leave_waiters: deque[tuple[str, asyncio.Future[None]]] = deque()
        self._status_waiters: deque[asyncio.Future[None]] = deque()
        self._sleep_waiter: asyncio.Future[None] | None = None

