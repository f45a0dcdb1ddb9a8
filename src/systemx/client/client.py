"""The asyncio client: one WebSocket to the exchange, one registered address.

:class:`Client` owns the socket (picows), the heartbeat timer and every
request/response correlation. Frames are decoded with
:func:`~systemx.protocol.messages.decode_server` in the socket callback and
dispatched synchronously: call-scoped frames to their :class:`Call` (by
``call_id``), RING to the incoming-call queue, party frames to their
:class:`Party`, answers to the future of the request that asked for them.

An answer is matched to the request it answers by what it names: a call by
``call_id`` (or, before the exchange named one, by ``to``), a JOIN or LEAVE by
its party line (``JOINED``, ``JOIN_FAILED``, ``LEFT``; names compared as the
exchange compares them, the domain without case, an invalid name by the 300
characters a ``JOIN_FAILED`` echoes). One JOIN and one LEAVE per line are in
flight at a time; a second ``join``/``leave`` of the same line waits for the
first's answer. What names nothing (``PRESENCE_RESULT``, and an ``ERROR``,
which carries only the request's type in ``context``) answers the oldest
request of that type still unanswered: the exchange answers in order. A
waiter abandoned by a timeout stays queued until its answer arrives so that
later answers still line up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

import msgspec
from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from systemx.client._inbox import Inbox
from systemx.client.call import CONNECTION_CLOSED, Call, IncomingCall
from systemx.client.errors import (
    BusyError,
    CallEnded,
    CallRejected,
    ConnectFailed,
    ConnectionClosed,
    DialTimeout,
    ExchangeError,
    JoinFailed,
    PartyClosed,
    RegisterFailed,
)
from systemx.client.party import Party
from systemx.protocol import messages as wire
from systemx.protocol.address import address_key, is_valid_address
from systemx.protocol.messages import (
    Answer,
    AuthExpiring,
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
    Leave,
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

__all__ = ["Client", "ConnectionEvent", "Disconnected", "Reconnected", "ServerEvent", "connect"]

logger = logging.getLogger("systemx.client")

T = TypeVar("T")


class Disconnected(NamedTuple):
    """The connection dropped and the client reconnects by itself (``reconnect=True``).

    Every call, ringing call, party line and request of the old connection has
    ended with :class:`ConnectionClosed` (``reconnecting=True``)."""

    code: int
    reason: str


class Reconnected(NamedTuple):
    """The client is connected and registered again, with the same REGISTER options."""

    session_id: str | None
    #: Connection attempts it took (1 when the first one succeeded).
    attempts: int
    #: Seconds from the drop to the new REGISTERED.
    downtime: float


ConnectionEvent = Disconnected | Reconnected

#: What :meth:`Client.events` yields: frames no request asked for (idle
#: warnings, credential expiry warnings (AUTH_EXPIRING), unsolicited errors,
#: listeners joining (RING) and leaving (HANGUP with ``from``) a broadcast this
#: client runs, federation frames an endpoint does not act on) and, with
#: ``reconnect=True``, :data:`ConnectionEvent` items.
ServerEvent = (
    SleepPending
    | AuthExpiring
    | Error
    | Ring
    | Hangup
    | DialForward
    | RegisteredPbx
    | Disconnected
    | Reconnected
)

# Close codes after which reconnecting would only repeat the failure: this
# client sent something the exchange refuses (protocol error, bad JSON or UTF-8,
# a message too big), or asked to go (4000 ``sleep``, ``client_requested``).
_FINAL_CODES = frozenset({1002, 1003, 1007, 1009})
_FINAL_4000 = frozenset({"sleep", "client_requested"})

_HEARTBEAT = b'{"type":"HEARTBEAT"}'
_SLEEP_ACK = encode(SleepAck())
_UNREGISTER = encode(Unregister())
_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_EVENTS_KEPT = 1000
_ABANDONED_KEPT = 256
# JOIN_FAILED echoes a name that is not an address cut to this many characters.
_ECHOED_NAME = 300


def _party_key(name: str) -> str:
    """What tells party lines apart: the name with its domain folded to lower case,
    or, for a name the exchange refuses, as much of it as JOIN_FAILED echoes."""
    return address_key(name) if is_valid_address(name) else name[:_ECHOED_NAME]


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
        if msg_type in (_TEXT, _BINARY):
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
            code, reason = handshake.recv.code.value, handshake.recv.reason or ""
        else:
            code, reason = 1006, ""
        self._client._on_disconnected(code, reason, self)

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
        reconnect: bool = False,
        reconnect_delay: tuple[float, float] = (0.1, 10.0),
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
        #: Reconnect by itself when the connection drops (see :meth:`Client.connect`).
        self.reconnect = reconnect
        #: Backoff of reconnection attempts: each waits a random time (full jitter)
        #: up to ``min(max, min * 2**attempt)`` seconds.
        self.reconnect_delay = reconnect_delay
        #: Called with :class:`Disconnected` and :class:`Reconnected` (also queued on :meth:`events`).
        self.on_connection_change: Callable[[ConnectionEvent], object] | None = None
        #: Called with each AUTH_EXPIRING (also queued on :meth:`events`); answer it with
        #: :meth:`refresh_auth`.
        self.on_auth_expiring: Callable[[AuthExpiring], object] | None = None
        self._concurrency = concurrency
        self._listener: _Listener | None = None
        self._url = ""
        self._register_message: Register | None = None
        self._connect_timeout: float | None = 10.0
        self._ssl_context: ssl.SSLContext | None = None
        self._registered_once = False
        # Set while reconnecting: how the last connection ended.
        self._down: ConnectionClosed | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
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
        # Listeners of each broadcast this client runs: the call ends with the last one.
        self._audience: dict[str, set[str]] = {}
        self._dials: deque[_PendingDial] = deque()
        self._dials_by_id: dict[str, _PendingDial] = {}
        # Ids of calls hung up while ringing, so a CONNECTED already in flight for
        # one is not mistaken for the answer to a newer dial of the same address.
        self._abandoned_ids: dict[str, None] = {}
        self._parties: dict[str, Party] = {}
        self._incoming: Inbox[IncomingCall] = Inbox(self.loop)
        self._events: Inbox[ServerEvent] = Inbox(self.loop, maxlen=_EVENTS_KEPT)

        self._register_waiter: asyncio.Future[Registered] | None = None
        self._presence_waiters: deque[asyncio.Future[list[PresenceEntry]]] = deque()
        # By party key, oldest first.
        self._join_waiters: dict[str, asyncio.Future[Party]] = {}
        self._leave_waiters: dict[str, asyncio.Future[None]] = {}
        self._status_waiters: deque[asyncio.Future[None]] = deque()
        self._sleep_waiter: asyncio.Future[None] | None = None

        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            Msg: self._on_msg,
            Ring: self._on_ring,
            Ringing: self._on_ringing,
            Connected: self._on_connected,
            Hangup: self._on_hangup,
            Busy: self._on_busy,
            HeartbeatAck: self._on_heartbeat_ack,
            Registered: self._on_registered,
            wire.RegisterFailed: self._on_register_failed,
            Joined: self._on_joined,
            wire.JoinFailed: self._on_join_failed,
            Left: self._on_left,
            PartyJoined: self._on_party_joined,
            PartyLeft: self._on_party_left,
            PartyMsg: self._on_party_msg,
            PresenceResult: self._on_presence_result,
            SleepPending: self._on_sleep_pending,
            AuthExpiring: self._on_auth_expiring,
            Error: self._on_error,
            DialForward: self._events.put,
            RegisteredPbx: self._events.put,
        }

    # ------------------------------------------------------------------
    # Lifecycle

    @classmethod
    async def connect(
        cls,
        url: str,
        address: str,
        *,
        metadata: dict[str, Any] | None = None,
        auth: str | None = None,
        concurrency: Literal["single", "parallel", "broadcast"] | None = None,
        max_sessions: int | None = None,
        max_listeners: int | None = None,
        pool_size: int | None = None,
        mode: Literal["wake_on_ring", "normal"] | None = None,
        wake_handler: WakeHandler | dict[str, Any] | None = None,
        heartbeat_interval: float | None = 30.0,
        request_timeout: float | None = 10.0,
        connect_timeout: float | None = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        reconnect: bool = False,
        reconnect_delay: tuple[float, float] = (0.1, 10.0),
        on_connection_change: Callable[[ConnectionEvent], object] | None = None,
    ) -> Client:
        """Open a WebSocket to ``url``, REGISTER ``address`` and start heartbeats.

        Raises :class:`ConnectFailed` when the socket cannot be opened,
        :class:`RegisterFailed` / :class:`ExchangeError` when the exchange
        refuses the registration. ``heartbeat_interval=None`` disables heartbeats.

        With ``reconnect=True``, a connection that drops after this first
        registration (the exchange restarted or shut down, the network failed,
        heartbeats timed out) is opened again and REGISTERed with the same
        options, after a random delay of up to ``min(max, min * 2**attempt)``
        seconds (``reconnect_delay=(min, max)``), until it succeeds or
        :meth:`close` is called. ``address_in_use`` (the exchange still holds the
        old session) is retried; any other refusal closes the client for good.
        Calls, ringing calls, party lines and pending requests do not survive:
        they end with :class:`ConnectionClosed` (``reconnecting=True``). The
        application hears :class:`Disconnected` and :class:`Reconnected` through
        ``on_connection_change`` and :meth:`events`. It is not done after a close
        this client caused (1002, 1003, 1007, 1009, ``4000 sleep``,
        ``4000 client_requested``) or asked for (:meth:`close`, :meth:`sleep`).
        """
        if isinstance(wake_handler, dict):
            wake_handler = msgspec.convert(wake_handler, WakeHandler)
        register = Register(
            address=address,
            auth=auth,
            metadata=metadata,
            concurrency=concurrency,
            max_sessions=max_sessions,
            max_listeners=max_listeners,
            pool_size=pool_size,
            mode=mode,
            wake_handler=wake_handler,
        )
        client = cls(
            address,
            heartbeat_interval=heartbeat_interval,
            request_timeout=request_timeout,
            concurrency=concurrency,
            reconnect=reconnect,
            reconnect_delay=reconnect_delay,
        )
        client.on_connection_change = on_connection_change
        client._url = url
        client._register_message = register
        client._connect_timeout = connect_timeout
        client._ssl_context = ssl_context
        try:
            await client._open()
        except ConnectFailed:
            raise
        except BaseException:
            await client.close()
            raise
        client._registered_once = True
        client._schedule_heartbeat()
        return client

    async def refresh_auth(self, auth: str, timeout: float | None = None) -> None:
        """Present a fresh credential: the same REGISTER again with ``auth`` replaced.

        The session, its calls and party lines continue (see AUTH_EXPIRING in
        PROTOCOL.md); a later reconnection presents the fresh credential too.
        Raises :class:`RegisterFailed` if the exchange refuses it.
        """
        register = self._register_message
        transport = self._transport
        if register is None or transport is None or not self.connected:
            raise RuntimeError("not registered")
        register = msgspec.structs.replace(register, auth=auth)
        self._register_message = register
        waiter: asyncio.Future[Registered] = self.loop.create_future()
        self._register_waiter = waiter
        transport.send(_TEXT, encode(register))
        await self._wait(waiter, timeout if timeout is not None else self._connect_timeout)

    async def _open(self) -> None:
        """Open the WebSocket and REGISTER (the first time, or again after a drop)."""
        listener = self._listener = _Listener(self)
        try:
            transport, _ = await ws_connect(
                lambda: listener,
                self._url,
                websocket_handshake_timeout=self._connect_timeout,
                ssl_context=self._ssl_context,
            )
        except (TimeoutError, OSError, WSError) as exc:
            raise ConnectFailed(self._url, str(exc) or type(exc).__name__) from exc
        self._transport = transport
        register = self._register_message
        assert register is not None
        waiter: asyncio.Future[Registered] = self.loop.create_future()
        self._register_waiter = waiter
        transport.send(_TEXT, encode(register))
        registered = await self._wait(waiter, self._connect_timeout)
        self.address = registered.address
        self.session_id = registered.session_id

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once the client is closed for good (not while it reconnects)."""
        return self._closed is not None

    @property
    def connected(self) -> bool:
        """True while registered on an open connection (False while reconnecting)."""
        return self._closed is None and self._down is None and not self._closing

    @property
    def close_info(self) -> ConnectionClosed | None:
        """How the connection closed (``code``, ``reason``), or ``None`` while open."""
        return self._closed

    async def wait_closed(self) -> ConnectionClosed:
        """Wait until the exchange (or :meth:`close`) closes the connection."""
        return await asyncio.shield(self._closed_future)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the WebSocket cleanly (1000). Ends every call, party and iterator,
        and stops reconnecting."""
        self._cancel_heartbeat()
        task = self._reconnect_task
        if task is not None and not task.done():
            self._closing = True
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
            if self._closed is None:
                self._finish(ConnectionClosed(1000, ""))
            if self._transport is not None:
                self._transport.disconnect(False)
                await self._transport.wait_disconnected()
            return
        transport = self._transport
        if transport is None:
            if self._closed is None:
                self._on_disconnected(1000, "")
            return
        if self._closed is None and not self._closing:
            self._closing = True
            transport.send_close(WSCloseCode.OK)
        if self._closed is None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._closed_future)
            except TimeoutError:
                transport.disconnect(False)
        try:
            await transport.wait_disconnected()
        except Exception:  # an earlier callback failure, already logged
            logger.debug("transport closed after an error", exc_info=True)

    async def unregister(self, timeout: float = 5.0) -> ConnectionClosed:
        """Send UNREGISTER; the exchange closes the socket (4000 ``client_requested``)
        and keeps a wake-on-ring profile, unlike a plain :meth:`close`."""
        self._send(_UNREGISTER)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._closed_future)
        finally:
            await self.close()

    # ------------------------------------------------------------------
    # Calls

    async def dial(
        self, to: str, metadata: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Call:
        """DIAL ``to`` and return the :class:`Call` once CONNECTED.

        Raises :class:`BusyError` (BUSY, with its reason), :class:`CallRejected`
        (the callee hung up while ringing), :class:`ExchangeError` (e.g.
        ``rate_limited``) or :class:`DialTimeout` (a ``TimeoutError``). Cancelling the awaiting task, or
        the timeout, hangs the ringing call up.
        """
        self._check_open()
        dial = _PendingDial(to, metadata, self.loop.create_future())
        self._dials.append(dial)
        # RINGING names the call at once, so a dial that times out can hang it up.
        self._send_message(Dial(to=to, metadata=metadata, ringing=True))
        try:
            if timeout is None:
                return await dial.future
            async with asyncio.timeout(timeout):
                return await dial.future
        except TimeoutError:
            self._abandon_dial(dial)
            raise DialTimeout(to, timeout or 0.0) from None
        except BaseException:
            self._abandon_dial(dial)
            raise

    def _abandon_dial(self, dial: _PendingDial) -> None:
        future = dial.future
        if dial.settled:
            # Connected just as the caller gave up: the call has no owner, end it.
            if not future.cancelled() and future.exception() is None and dial.abandoned is False:
                dial.abandoned = True
                call = future.result()
                self._hang_up(call.call_id, "normal")
                call._end("normal", CallEnded(call.call_id, "normal"))
            return
        dial.abandoned = True
        if dial.call_id is not None:
            self._settle(dial)
            self._hang_up_abandoned(dial.call_id)
        # Without a call id yet the HANGUP goes out when RINGING/CONNECTED names it.

    def incoming(self) -> _IncomingCalls:
        """``async for call in client.incoming()``: each RING, until the connection closes.

        Calls the caller abandoned before they were taken from the queue are skipped.
        """
        return _IncomingCalls(self)

    async def next_call(self, timeout: float | None = None) -> IncomingCall:
        """The next ringing call; raises :class:`ConnectionClosed` or ``TimeoutError``."""
        if timeout is None:
            return await self._next_call()
        async with asyncio.timeout(timeout):
            return await self._next_call()

    async def _next_call(self) -> IncomingCall:
        while True:
            call = await self._incoming.get()
            if call.hangup_reason is None:
                return call

    @property
    def calls(self) -> dict[str, Call]:
        """Connected calls by call id (a copy)."""
        return dict(self._calls)

    # ------------------------------------------------------------------
    # Party lines, presence, status

    async def join(self, party: str, create: bool = True, *, timeout: float | None = None) -> Party:
        """JOIN a party line; raises :class:`JoinFailed` (``no_such_party``, ``party_full``, ...)."""
        self._check_open()
        joined = self._parties.get(party)
        if joined is not None:
            return joined
        key = _party_key(party)
        waiter = self._join_waiters.get(key)
        if waiter is None:
            self._send_message(Join(party=party, create_if_missing=create))
            waiter = self._join_waiters[key] = self._shared_waiter()
        return await self._wait(asyncio.shield(waiter), timeout)

    async def _leave(self, party: str, timeout: float | None) -> None:
        key = _party_key(party)
        waiter = self._leave_waiters.get(key)
        if waiter is None:
            self._send_message(Leave(party=party))
            waiter = self._leave_waiters[key] = self._shared_waiter()
        await self._wait(asyncio.shield(waiter), timeout)

    def _shared_waiter(self) -> asyncio.Future[Any]:
        """A future several callers await, each shielded: whoever gives up waiting
        must neither cancel it for the others nor leave an unretrieved error."""
        waiter: asyncio.Future[Any] = self.loop.create_future()
        waiter.add_done_callback(_retrieve)
        return waiter

    @property
    def parties(self) -> dict[str, Party]:
        """Joined party lines by name (a copy)."""
        return dict(self._parties)

    async def presence(
        self,
        *,
        domain: str | None = None,
        capabilities: list[str] | None = None,
        near: tuple[float, float, float] | None = None,
        status: Literal["available", "busy", "dnd", "away", "asleep"] | None = None,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> list[PresenceEntry]:
        """Query registered addresses; ``near`` is ``(lat, lon, radius_km)``. Filters are ANDed."""
        self._check_open()
        query = PresenceQuery(
            domain=domain,
            capabilities=capabilities,
            status=status,
            near=Near(lat=near[0], lon=near[1], radius_km=near[2]) if near is not None else None,
        )
        waiter: asyncio.Future[list[PresenceEntry]] = self.loop.create_future()
        self._presence_waiters.append(waiter)
        self._send_message(Presence(query=query, limit=limit))
        return await self._wait(waiter, timeout)

    async def set_status(
        self,
        status: Literal["available", "busy", "dnd", "away"] | None = None,
        auto_sleep: AutoSleep | dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """Send STATUS. The exchange is silent on success, so this follows it with
        a HEARTBEAT: an ERROR for the STATUS arrives before that HEARTBEAT_ACK."""
        self._check_open()
        if isinstance(auto_sleep, dict):
            auto_sleep = msgspec.convert(auto_sleep, AutoSleep)
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._status_waiters.append(waiter)
        error: BaseException | None = None
        try:
            self._send_message(Status(status=status, auto_sleep=auto_sleep))
            await self.ping(timeout=timeout)
        finally:
            if not waiter.done():
                self._status_waiters.remove(waiter)
            elif not waiter.cancelled():
                error = waiter.exception()
        if error is not None:
            raise error

    async def ping(self, timeout: float | None = None) -> int:
        """Send HEARTBEAT now and return the HEARTBEAT_ACK timestamp (epoch ms).

        A heartbeat also resets the exchange's idle (auto-sleep) timer and
        cancels a pending sleep."""
        self._send(_HEARTBEAT)
        waiter: asyncio.Future[int] = self.loop.create_future()
        self._ping_waiters.append((self._heartbeats_sent, waiter))
        return await self._wait(waiter, timeout)

    async def sleep(self, timeout: float | None = None) -> ConnectionClosed:
        """Send SLEEP_ACK and wait for the exchange to close the socket (4000 ``sleep``).

        Raises :class:`ExchangeError` (``not_wake_on_ring``) when this address
        did not register with ``mode="wake_on_ring"``."""
        self._check_open()
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._sleep_waiter = waiter
        self._send(_SLEEP_ACK)
        await self._wait(waiter, timeout)
        return await self.wait_closed()

    def events(self) -> _Events:
        """``async for event in client.events()``: :data:`ServerEvent` frames no
        request asked for (SLEEP_PENDING, unsolicited ERROR, ...). The most recent
        1000 are kept for a slow reader."""
        return _Events(self)

    # ------------------------------------------------------------------
    # Sending

    def _check_open(self) -> None:
        if self._closed is not None:
            raise ConnectionClosed(self._closed.code, self._closed.reason)
        if self._closing:
            raise ConnectionClosed(1000, "closing")
        if self._down is not None:
            raise ConnectionClosed(self._down.code, self._down.reason, reconnecting=True)

    def _send(self, data: bytes) -> None:
        if self._closed is not None or self._closing or self._down is not None:
            self._check_open()
        assert self._transport is not None
        if data is _HEARTBEAT:
            self._heartbeats_sent += 1
        self._transport.send(_TEXT, data)

    def _send_message(self, message: Any) -> None:
        self._send(encode(message))

    def _hang_up(self, call_id: str, reason: str | None) -> None:
        if self._closed is None:
            self._send_message(Hangup(call_id=call_id, reason=reason))
        self._forget(call_id)

    def _answer(self, call: Call) -> None:
        self._check_open()
        self._ringing_in.pop(call.call_id, None)
        # Taken in before ANSWER goes out so that no MSG can arrive for an unknown call.
        self._calls[call.call_id] = call
        self._send_message(Answer(call_id=call.call_id))

    def _on_resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _drain(self) -> None:
        while self._write_paused and self._closed is None:
            waiter: asyncio.Future[None] = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    async def _wait(self, awaitable: Awaitable[T], timeout: float | None) -> T:
        if timeout is None:
            timeout = self.request_timeout
        if timeout is None:
            return await awaitable
        async with asyncio.timeout(timeout):
            return await awaitable

    def _schedule_heartbeat(self) -> None:
        interval = self.heartbeat_interval
        if interval and self._closed is None:
            self._heartbeat_handle = self.loop.call_later(interval, self._heartbeat)

    def _heartbeat(self) -> None:
        self._heartbeat_handle = None
        if self._closed is None and not self._closing and self._down is None:
            self._send(_HEARTBEAT)
            self._schedule_heartbeat()

    def _cancel_heartbeat(self) -> None:
        if self._heartbeat_handle is not None:
            self._heartbeat_handle.cancel()
            self._heartbeat_handle = None

    # ------------------------------------------------------------------
    # Receiving (called from the picows callbacks)

    def _on_data(self, data: bytes) -> None:
        try:
            message = decode_server(data)
        except msgspec.MsgspecError as exc:
            logger.warning("%s: undecodable frame from the exchange (%s): %.200r", self.address, exc, data)
            return
        try:
            self._handlers[type(message)](message)
        except Exception:
            logger.exception("%s: failed to handle %s", self.address, type(message).__name__)

    def _on_msg(self, msg: Msg) -> None:
        call = self._calls.get(msg.call_id)
        if call is not None:
            call._deliver(msg)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: MSG for unknown call %s", self.address, msg.call_id)

    def _on_ring(self, msg: Ring) -> None:
        if self._concurrency == "broadcast":
            audience = self._audience.get(msg.call_id)
            if audience is not None:
                audience.add(msg.from_)
                self._events.put(msg)
                return
            self._audience[msg.call_id] = {msg.from_}
        if msg.call_id in self._calls or msg.call_id in self._ringing_in:
            return
        incoming = IncomingCall(self, msg.call_id, msg.from_, msg.metadata)
        self._ringing_in[msg.call_id] = incoming
        self._incoming.put(incoming)

    def _unassigned_dial(self, to: str | None) -> _PendingDial | None:
        """The oldest dial the exchange has not yet named, preferring one to ``to``."""
        first: _PendingDial | None = None
        for dial in self._dials:
            if dial.call_id is None:
                if to is None or dial.to == to:
                    return dial
                if first is None:
                    first = dial
        return first

    def _on_ringing(self, msg: Ringing) -> None:
        dial = self._unassigned_dial(msg.to)
        if dial is None:
            return
        dial.call_id = msg.call_id
        if dial.abandoned:
            self._settle(dial)
            self._hang_up_abandoned(msg.call_id)
        else:
            self._dials_by_id[msg.call_id] = dial

    def _hang_up_abandoned(self, call_id: str) -> None:
        abandoned = self._abandoned_ids
        abandoned[call_id] = None
        if len(abandoned) > _ABANDONED_KEPT:
            del abandoned[next(iter(abandoned))]
        if self._closed is None:
            self._send_message(Hangup(call_id=call_id, reason="normal"))

    def _on_connected(self, msg: Connected) -> None:
        if msg.call_id in self._calls:
            return  # a repeated CONNECTED (second ANSWER, broadcast re-dial)
        dial = self._dials_by_id.pop(msg.call_id, None)
        if dial is None:
            if msg.call_id in self._abandoned_ids:
                return
            # No RINGING named this call (a broadcast, or a router that never sends RINGING).
            dial = self._unassigned_dial(msg.to)
            if dial is None:
                return
        self._settle(dial)
        if dial.abandoned or dial.future.done():
            self._hang_up_abandoned(msg.call_id)
            return
        call = Call(self, msg.call_id, dial.to, outgoing=True, metadata=dial.metadata)
        self._calls[msg.call_id] = call
        dial.future.set_result(call)

    def _settle(self, dial: _PendingDial) -> None:
        dial.settled = True
        try:
            self._dials.remove(dial)
        except ValueError:
            pass
        if dial.call_id is not None:
            self._dials_by_id.pop(dial.call_id, None)

    def _on_busy(self, msg: Busy) -> None:
        if msg.call_id is not None:
            # A BUSY naming a call follows the RINGING that named it; an unknown
            # id is a dial already given up.
            dial = self._dials_by_id.get(msg.call_id)
        else:
            dial = self._unassigned_dial(msg.to)
        if dial is None:
            return
        self._settle(dial)
        if not dial.future.done():
            dial.future.set_exception(BusyError(msg.to, msg.reason, msg.call_id or dial.call_id))

    def _on_hangup(self, msg: Hangup) -> None:
        call_id = msg.call_id
        reason = msg.reason or "normal"
        if msg.from_ is not None:
            audience = self._audience.get(call_id)
            if audience is not None:
                audience.discard(msg.from_)
                self._events.put(msg)
                if audience:
                    return  # one listener left; the broadcast goes on
        call = self._calls.get(call_id)
        if call is not None:
            self._forget(call_id)
            call._end(reason, CallEnded(call_id, reason))
            return
        dial = self._dials_by_id.get(call_id)
        if dial is not None:
            self._settle(dial)
            if not dial.future.done():
                dial.future.set_exception(CallRejected(dial.to, reason, call_id))
            return
        incoming = self._ringing_in.get(call_id)
        if incoming is not None:
            self._forget(call_id)
            incoming._end(reason)

    def _forget(self, call_id: str) -> None:
        """Drop ``call_id`` from every index of calls this client takes part in."""
        self._calls.pop(call_id, None)
        self._ringing_in.pop(call_id, None)
        self._audience.pop(call_id, None)

    def _on_heartbeat_ack(self, msg: HeartbeatAck) -> None:
        self._heartbeats_acked += 1
        waiters = self._ping_waiters
        while waiters and waiters[0][0] <= self._heartbeats_acked:
            waiter = waiters.popleft()[1]
            if not waiter.done():
                waiter.set_result(msg.timestamp)

    def _on_registered(self, msg: Registered) -> None:
        waiter, self._register_waiter = self._register_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    def _on_register_failed(self, msg: wire.RegisterFailed) -> None:
        waiter, self._register_waiter = self._register_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(RegisterFailed(msg.reason, msg.detail, msg.address))

    def _on_joined(self, msg: Joined) -> None:
        waiter = self._join_waiters.pop(_party_key(msg.party), None)
        party = self._parties.get(msg.party)
        if party is None:
            party = Party(self, msg.party, list(msg.participants))
            self._parties[msg.party] = party
        else:
            party._participants[:] = msg.participants
        if waiter is not None and not waiter.done():
            waiter.set_result(party)

    def _on_join_failed(self, msg: wire.JoinFailed) -> None:
        waiters = self._join_waiters
        # A refused name cut to 300 characters may read as an address; its JOIN is keyed by the cut.
        waiter = waiters.pop(_party_key(msg.party), None) or waiters.pop(msg.party, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(JoinFailed(msg.party, msg.reason, msg.detail))

    def _on_left(self, msg: Left) -> None:
        party = self._parties.pop(msg.party, None)
        if party is not None:
            party._end("left", PartyClosed(msg.party, "left"))
        waiter = self._leave_waiters.pop(_party_key(msg.party), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_party_joined(self, msg: PartyJoined) -> None:
        party = self._parties.get(msg.party)
        if party is not None:
            party._joined(msg.address)

    def _on_party_left(self, msg: PartyLeft) -> None:
        party = self._parties.get(msg.party)
        if party is None:
            return
        if msg.address == self.address:
            del self._parties[msg.party]
            party._end(msg.reason, PartyClosed(msg.party, msg.reason))
        else:
            party._left(msg.address, msg.reason)

    def _on_party_msg(self, msg: PartyMsg) -> None:
        party = self._parties.get(msg.party)
        if party is not None:
            party._deliver(msg)

    def _on_presence_result(self, msg: PresenceResult) -> None:
        if self._presence_waiters:
            waiter = self._presence_waiters.popleft()
            if not waiter.done():
                waiter.set_result(msg.addresses)

    def _on_auth_expiring(self, msg: AuthExpiring) -> None:
        self._events.put(msg)
        hook = self.on_auth_expiring
        if hook is not None:
            hook(msg)

    def _on_sleep_pending(self, msg: SleepPending) -> None:
        self._events.put(msg)
        hook = self.on_sleep_pending
        if hook is not None:
            hook(msg)

    def _on_error(self, msg: Error) -> None:
        waiter = self._error_waiter(msg.context)
        if waiter is None:
            if msg.context == "DIAL":
                dial = self._unassigned_dial(None)
                if dial is not None:
                    self._settle(dial)
                    if not dial.future.done():
                        dial.future.set_exception(ExchangeError(msg.reason, msg.context, msg.detail))
                    return
            logger.warning("%s: ERROR %s (%s): %s", self.address, msg.reason, msg.context, msg.detail)
            self._events.put(msg)
        elif not waiter.done():
            waiter.set_exception(ExchangeError(msg.reason, msg.context, msg.detail))

    def _error_waiter(self, context: str) -> asyncio.Future[Any] | None:
        """The pending request an ERROR with this ``context`` answers, removed from its queue."""
        found: asyncio.Future[Any] | None = None
        if context == "REGISTER":
            found, self._register_waiter = self._register_waiter, None
        elif context == "PRESENCE" and self._presence_waiters:
            found = self._presence_waiters.popleft()
        elif context == "JOIN" and self._join_waiters:
            found = self._join_waiters.pop(next(iter(self._join_waiters)))
        elif context == "LEAVE" and self._leave_waiters:
            found = self._leave_waiters.pop(next(iter(self._leave_waiters)))
        elif context == "STATUS" and self._status_waiters:
            found = self._status_waiters.popleft()
        elif context == "SLEEP_ACK":
            found, self._sleep_waiter = self._sleep_waiter, None
        return found

    def _on_disconnected(self, code: int, reason: str, listener: _Listener | None = None) -> None:
        if self._closed is not None:
            return
        if listener is not None and listener is not self._listener:
            return  # a late callback of an earlier connection
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: connection closed %d %s", self.address, code, reason)
        if self._down is not None:
            # The connection being opened again dropped before REGISTERED.
            waiter, self._register_waiter = self._register_waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionClosed(code, reason, reconnecting=True))
            return
        self._cancel_heartbeat()
        if self._should_reconnect(code, reason):
            down = self._down = ConnectionClosed(code, reason, reconnecting=True)
            logger.warning("%s: %s", self.address, down)
            self._end_connection(down)
            self._announce(Disconnected(code, reason))
            self._reconnect_task = self.loop.create_task(self._reconnect())
            return
        self._finish(ConnectionClosed(code, reason))

    def _should_reconnect(self, code: int, reason: str) -> bool:
        if not (self.reconnect and self._registered_once) or self._closing or self._sleep_waiter is not None:
            return False
        return code not in _FINAL_CODES and not (code == 4000 and reason in _FINAL_4000)

    def _announce(self, event: ConnectionEvent) -> None:
        self._events.put(event)
        hook = self.on_connection_change
        if hook is not None:
            try:
                hook(event)
            except Exception:
                logger.exception("%s: on_connection_change failed", self.address)

    async def _reconnect(self) -> None:
        low, high = self.reconnect_delay
        started = self.loop.time()
        attempts = 0
        while True:
            await asyncio.sleep(random.uniform(0.0, min(high, low * 2 ** min(attempts, 32))))
            attempts += 1
            try:
                await self._open()
            except RegisterFailed as exc:
                self._drop_transport()
                if exc.reason != "address_in_use":
                    self._give_up(exc)
                    return
                # The exchange still holds the old session; it goes when its heartbeats stop.
                logger.info("%s: reconnect attempt %d: %s", self.address, attempts, exc)
            except ExchangeError as exc:
                self._drop_transport()
                self._give_up(exc)
                return
            except (ConnectFailed, ConnectionClosed, TimeoutError) as exc:
                self._drop_transport()
                logger.info("%s: reconnect attempt %d: %s", self.address, attempts, exc or "timed out")
            else:
                break
        self._down = None
        self._heartbeats_sent = self._heartbeats_acked = 0
        self._write_paused = False
        self._schedule_heartbeat()
        logger.warning("%s: reconnected after %d attempt(s)", self.address, attempts)
        self._announce(Reconnected(self.session_id, attempts, self.loop.time() - started))

    def _drop_transport(self) -> None:
        transport, self._transport = self._transport, None
        self._listener = None
        if transport is not None:
            transport.disconnect(False)

    def _give_up(self, exc: Exception) -> None:
        logger.error("%s: stopped reconnecting: %s", self.address, exc)
        down = self._down
        assert down is not None
        self._finish(ConnectionClosed(down.code, down.reason))

    def _finish(self, closed: ConnectionClosed) -> None:
        """The client is closed for good: end everything and every iterator."""
        self._closed = closed
        self._down = None
        self._cancel_heartbeat()
        self._end_connection(closed)
        self._incoming.close(closed)
        self._events.close(closed)
        self._closed_future.set_result(closed)

    def _end_connection(self, closed: ConnectionClosed) -> None:
        """End what lived on the connection that just closed: calls, party lines, requests."""
        code, reason, again = closed.code, closed.reason, closed.reconnecting

        def gone() -> ConnectionClosed:
            return ConnectionClosed(code, reason, reconnecting=again)

        def fail(waiter: asyncio.Future[Any] | None) -> None:
            if waiter is not None and not waiter.done():
                waiter.set_exception(gone())

        for dial in self._dials:
            dial.settled = True
            fail(dial.future)
        for dial in self._dials_by_id.values():
            dial.settled = True
            fail(dial.future)
        self._dials.clear()
        self._dials_by_id.clear()
        self._abandoned_ids.clear()
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call._end(CONNECTION_CLOSED, gone())
        ringing, self._ringing_in = self._ringing_in, {}
        self._audience.clear()
        for incoming in ringing.values():
            incoming._end(CONNECTION_CLOSED)
        parties, self._parties = self._parties, {}
        for party in parties.values():
            party._end(CONNECTION_CLOSED, gone())
        fail(self._register_waiter)
        waiters: list[asyncio.Future[Any]] = [
            *self._presence_waiters,
            *self._join_waiters.values(),
            *self._status_waiters,
            *self._leave_waiters.values(),
            *(w for _, w in self._ping_waiters),
        ]
        for waiter in waiters:
            fail(waiter)
        self._presence_waiters.clear()
        self._join_waiters.clear()
        self._leave_waiters.clear()
        self._status_waiters.clear()
        self._ping_waiters.clear()
        self._register_waiter = None
        # SLEEP_ACK answered by a close is the success case.
        sleep_waiter, self._sleep_waiter = self._sleep_waiter, None
        if sleep_waiter is not None and not sleep_waiter.done():
            sleep_waiter.set_result(None)
        self._on_resume_writing()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class _IncomingCalls:
    __slots__ = ("_client",)

    def __init__(self, client: Client) -> None:
        self._client = client

    def __aiter__(self) -> _IncomingCalls:
        return self

    async def __anext__(self) -> IncomingCall:
        try:
            return await self._client._next_call()
        except ConnectionClosed:
            raise StopAsyncIteration from None


class _Events:
    __slots__ = ("_client",)

    def __init__(self, client: Client) -> None:
        self._client = client

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> ServerEvent:
        try:
            return await self._client._events.get()
        except ConnectionClosed:
            raise StopAsyncIteration from None


_NOT_AWAITED = (
    "connect() returns an awaitable, not a Client: write `client = await connect(...)` "
    "or `async with connect(...) as client`"
)


class _Connecting:
    """What :func:`connect` returns: await it for a :class:`Client`, or use it
    directly as ``async with connect(...) as client``. Anything else (a forgotten
    ``await``) raises an error that names the fix; nothing is opened until then."""

    __slots__ = ("_client", "_coro")

    def __init__(self, coro: Callable[[], Awaitable[Client]]) -> None:
        self._coro = coro
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        return _await(self._coro()).__await__()

    if not TYPE_CHECKING:  # at run time only: a type checker still flags these mistakes

        def __getattr__(self, name: str) -> Any:
            raise AttributeError(f"{_NOT_AWAITED} (no attribute {name!r} before that)", name=name, obj=self)

        def __enter__(self) -> Any:
            raise TypeError(f"{_NOT_AWAITED}; `with` without `async` cannot connect")

        def __exit__(self, *exc: object) -> None:
            return None

    async def __aenter__(self) -> Client:
        self._client = await self._coro()
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def connect(
    url: str,
    address: str,
    *,
    metadata: dict[str, Any] | None = None,
    auth: str | None = None,
    concurrency: Literal["single", "parallel", "broadcast"] | None = None,
    max_sessions: int | None = None,
    max_listeners: int | None = None,
    pool_size: int | None = None,
    mode: Literal["wake_on_ring", "normal"] | None = None,
    wake_handler: WakeHandler | dict[str, Any] | None = None,
    heartbeat_interval: float | None = 30.0,
    request_timeout: float | None = 10.0,
    connect_timeout: float | None = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    reconnect: bool = False,
    reconnect_delay: tuple[float, float] = (0.1, 10.0),
    on_connection_change: Callable[[ConnectionEvent], object] | None = None,
) -> _Connecting:
    """Connect and register; see :meth:`Client.connect`.

    ``client = await connect(...)``, ``async with await connect(...) as client``
    and ``async with connect(...) as client`` all work.
    """
    return _Connecting(
        lambda: Client.connect(
            url,
            address,
            metadata=metadata,
            auth=auth,
            concurrency=concurrency,
            max_sessions=max_sessions,
            max_listeners=max_listeners,
            pool_size=pool_size,
            mode=mode,
            wake_handler=wake_handler,
            heartbeat_interval=heartbeat_interval,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
            ssl_context=ssl_context,
            reconnect=reconnect,
            reconnect_delay=reconnect_delay,
            on_connection_change=on_connection_change,
        )
    )
