"""Accepting WebSocket connections with picows, minus its per-socket diagnostics.

picows' server protocol (``WSProtocol.connection_made``) sets TCP_NODELAY and
TCP_QUICKACK on every accepted socket and then reads five socket options, the
local and the peer address, all to format one INFO log line. Through uvloop's
transport each of those calls builds a temporary ``socket.socket`` (whose
constructor itself calls ``getsockname``): about sixteen system calls and nine
Python objects per connection, a quarter to a third of the server's CPU per
accepted connection on a small VM (see docs/performance.md).

:func:`create_server` builds the same protocol as ``picows.ws_create_server``
(same arguments, same defaults) from a subclass whose ``connection_made`` hands
picows a view of the transport that answers those queries without system
calls while the connection is being set up:

* ``setsockopt(TCP_NODELAY | TCP_QUICKACK, 1)`` is skipped: uvloop already
  enables TCP_NODELAY on every accepted TCP socket, and a new Linux socket
  starts in quick-ack mode (the option is not sticky anyway);
* ``getsockopt`` of the buffer sizes, TCP_NODELAY and TCP_QUICKACK is read
  from the first connection and reused (kernel defaults for a new socket;
  picows only logs them); any other option is read from the socket;
* the local and peer addresses read as ``None`` during set-up.

Everything else goes to the real transport, and once ``connection_made`` has
returned every query does too. picows keeps the view as
``WSTransport.underlying_transport``; its hot-path ``write`` and
``get_write_buffer_size`` are the real transport's bound methods, taken from
the view when the ``WSTransport`` is built.

The handshake deadline (``SYSTEMX_HANDSHAKE_TIMEOUT_MS``) is kept by one
:class:`HandshakeWheel` for every connection rather than by one event-loop
timer per connection, as picows does: a connection goes into the bucket of its
deadline when accepted and leaves it when it closes; one timer, running only
while a bucket is filled, drops the connections of each expired bucket whose
upgrade has not arrived. A timer armed and cancelled per connection cost 3.4 µs
of CPU, the bucket 0.3 (uvloop, measured in process).

The constructor of ``WSProtocol`` is picows' internal API. If it does not
match (another picows release), :func:`create_server` falls back to
``ws_create_server`` and says so in the log; the flag it returns (kept as
``Server.lean_accept``) tells which was used.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as _ssl
from collections.abc import Callable
from http import HTTPStatus
from time import time as _now
from typing import TYPE_CHECKING, Any, cast

from picows import WSAutoPingStrategy, WSUpgradeResponse, ws_create_server

from systemx.server.limits import IpGate

if TYPE_CHECKING:
    from multidict import CIMultiDict

try:
    from picows.picows import WSProtocol  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - a picows without the module layout we know
    WSProtocol = None

__all__ = ["AcceptedTransport", "HandshakeWheel", "SwitchingProtocols", "create_server"]

log = logging.getLogger("systemx.server")

_TCP_NOOP_OPTIONS = frozenset(
    (socket.IPPROTO_TCP, opt)
    for opt in (socket.TCP_NODELAY, getattr(socket, "TCP_QUICKACK", socket.TCP_NODELAY))
)
# The options picows reads only to log them: the same kernel defaults for every new socket.
_CACHEABLE_OPTIONS = _TCP_NOOP_OPTIONS | {
    (socket.SOL_SOCKET, socket.SO_RCVBUF),
    (socket.SOL_SOCKET, socket.SO_SNDBUF),
}
# (level, option) -> value read from the first accepted socket.
_OPTION_CACHE: dict[tuple[int, int], Any] = {}


class _SocketFacts:
    """The accepted socket as picows' ``connection_made`` uses it."""

    __slots__ = ("_sock",)

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def fileno(self) -> int:
        fd: int = self._sock.fileno()
        return fd

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        if (level, option) in _TCP_NOOP_OPTIONS and value == 1 and not rest:
            return
        self._sock.setsockopt(level, option, value, *rest)

    def getsockopt(self, level: int, option: int, *rest: Any) -> Any:
        key = (level, option)
        if rest or key not in _CACHEABLE_OPTIONS:
            return self._sock.getsockopt(level, option, *rest)
        value = _OPTION_CACHE.get(key)
        if value is None:
            value = _OPTION_CACHE[key] = self._sock.getsockopt(level, option)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class AcceptedTransport:
    """A view of an accepted connection's transport; see the module docstring."""

    __slots__ = ("_setting_up", "transport")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._setting_up = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._setting_up:
            if name == "socket":
                sock = self.transport.get_extra_info("socket")
                return None if sock is None else _SocketFacts(sock)
            if name in ("peername", "sockname"):
                return default
        return self.transport.get_extra_info(name, default)

    def set_up(self) -> None:
        self._setting_up = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


# picows doubles its read buffer after any read that leaves it over 90% full, and
# never shrinks it: handed all of its free space, a socket that receives a burst
# faster than the loop gets to it grows the buffer on every read (to megabytes
# after one burst) though each frame is small. Offered half the free space, a read
# cannot take the buffer past 90% unless an unfinished frame already fills over
# 80% of it; only then (or with this little space left) is all of it offered, and
# the buffer grows to fit that frame. So it ends at about twice the largest frame
# received, and stays at SYSTEMX_READ_BUFFER_BYTES while frames fit in it.
# It cannot be given back once grown: the buffer is a C-level attribute of
# WSProtocol (no Python access, no hook to replace or reallocate it), picows only
# ever enlarges it, and read_buffer_init_size is read once, by the constructor. A
# connection that received a frame of N bytes keeps a buffer of about 2N (about N
# of it resident) until it closes.
_READ_SLACK = 512
# Where WSProtocol's constructor takes the logger (see create_server).
_LOGGER_ARG = 4

_101_HEAD = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
_ACCEPT = "Sec-WebSocket-Accept"


class SwitchingProtocols(WSUpgradeResponse):
    """The ``101`` answer to an upgrade, serialised without per-connection formatting.

    picows' own (``WSUpgradeResponse.create_101_response``) builds a
    case-insensitive multidict and formats every header line in Python on each
    connection. This one holds a plain dict, to which picows adds only
    ``Sec-WebSocket-Accept``, and writes the fixed lines as one constant.
    """

    __slots__ = ()

    def __init__(self) -> None:
        self.version = b"HTTP/1.1"
        self.status = HTTPStatus.SWITCHING_PROTOCOLS
        self.headers = cast("CIMultiDict[str]", {})
        self.body = None

    def to_bytes(self) -> bytearray:
        headers = self.headers
        accept = headers.get(_ACCEPT)
        if accept is None or len(headers) != 1:
            # Anything but the usual single header: picows' generic serialisation.
            return super().to_bytes()
        return bytearray(b"%s%s: %s\r\n\r\n" % (_101_HEAD, _ACCEPT.encode(), accept.encode()))


_PARSER_ERROR = "WS parser error"


class HandshakeWheel:
    """The handshake deadlines of the connections being set up, kept on one timer.

    Deadlines are rounded up to the next tick (a quarter of the timeout, at
    most a second), so a connection that never upgrades is dropped between
    ``timeout`` and ``timeout`` plus two ticks after it was accepted. A
    connection stays in its bucket once upgraded (it is checked and skipped
    when the bucket expires) and leaves it when it closes, so a closed
    connection is not kept alive by the wheel.
    """

    __slots__ = ("_buckets", "_handle", "_loop", "tick", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self.tick = min(max(timeout / 4, 0.01), 1.0)
        # Slot (deadline // tick) -> the protocols whose deadline falls in it.
        self._buckets: dict[int, dict[Any, None]] = {}
        self._handle: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return sum(map(len, self._buckets.values()))

    def add(self, proto: Any) -> int:
        """Watch ``proto``'s handshake; the slot to pass to :meth:`discard`."""
        slot = int((self._loop.time() + self.timeout) / self.tick) + 1
        bucket = self._buckets.get(slot)
        if bucket is None:
            self._buckets[slot] = bucket = {}
        bucket[proto] = None
        if self._handle is None:
            self._handle = self._loop.call_later(self.tick, self._turn)
        return slot

    def discard(self, proto: Any, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.pop(proto, None)

    def _turn(self) -> None:
        self._handle = None
        now = int(self._loop.time() / self.tick)
        for slot in [slot for slot in self._buckets if slot <= now]:
            for proto in self._buckets.pop(slot):
                transport = proto.transport
                # The request is set once the upgrade arrived (answered or refused at once).
                if transport is not None and transport.request is None and not transport.is_disconnected:
                    proto._handshake_timeout_callback()
        if self._buckets:
            self._handle = self._loop.call_later(self.tick, self._turn)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._buckets.clear()


class _ProtocolLog:
    """picows' logger for one connection: the shared one, plus word of a refused input.

    picows reports a frame it refuses (one over ``max_frame_size``, a protocol
    violation) only by sending the CLOSE and logging ``WS parser error``, and its
    parser then goes on buffering the refused frame and delivers it once complete.
    This logger passes that report to the connection's listener
    (``on_parser_error(code, detail)``), which stops reading and delivering at once
    and logs the refusal with the session it came from; other records go to the
    shared logger unchanged.
    """

    __slots__ = ("_log", "protocol")

    def __init__(self, shared: Any) -> None:
        self._log = shared
        self.protocol: Any = None

    def isEnabledFor(self, level: int) -> bool:
        enabled: bool = self._log.isEnabledFor(level)
        return enabled

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log.log(level, msg, *args, **kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self._log.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if isinstance(msg, str) and msg.startswith(_PARSER_ERROR) and self._refused(args):
            return
        self._log.log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exc_info", True)
        self._log.log(logging.ERROR, msg, *args, **kwargs)

    def _refused(self, args: tuple[Any, ...]) -> bool:
        # picows passes the WSProtocolError's args: (close code, text).
        listener = getattr(self.protocol, "listener", None)
        handler = getattr(listener, "on_parser_error", None)
        if handler is None or not args or not isinstance(args[0], tuple) or len(args[0]) != 2:
            return False
        code, detail = args[0]
        handler(int(code), str(detail))
        return True


if WSProtocol is not None:

    class _ServerProtocol(WSProtocol):  # type: ignore[misc]
        __slots__ = ("_conn_log", "_gate", "_ip", "_slot", "_wheel")

        def __init__(
            self, *args: Any, gate: IpGate | None = None, wheel: HandshakeWheel | None = None
        ) -> None:
            conn_log = _ProtocolLog(args[_LOGGER_ARG])
            super().__init__(*args[:_LOGGER_ARG], conn_log, *args[_LOGGER_ARG + 1 :])
            conn_log.protocol = self
            self._conn_log = conn_log
            self._gate = gate
            self._ip: str | None = None
            self._wheel = wheel
            self._slot = 0

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            gate = self._gate
            if gate is not None:
                # Per-IP limits, before picows sees the connection: a refused one costs
                # no HTTP parsing and gets no answer, only the closed TCP connection.
                peer = transport.get_extra_info("peername")
                ip = str(peer[0]) if peer else ""
                refused = gate.admit(ip, _now())
                if refused is not None:
                    _log_refusal(ip, refused)
                    transport.abort()  # type: ignore[attr-defined]
                    return
                self._ip = ip
            view = AcceptedTransport(transport)
            try:
                super().connection_made(view)
            finally:
                view.set_up()
            wheel = self._wheel
            if wheel is not None:
                self._slot = wheel.add(self)

        def get_buffer(self, size_hint: int) -> memoryview:
            # Half the free space: see _READ_SLACK.
            view: memoryview = super().get_buffer(size_hint)
            free = len(view)
            if free > _READ_SLACK:
                return view[: free >> 1]
            return view

        def connection_lost(self, exc: Exception | None) -> None:
            ip = self._ip
            if self._gate is not None:
                if ip is None:
                    return  # refused in connection_made: picows never had it
                self._gate.release(ip)
            wheel = self._wheel
            if wheel is not None:
                wheel.discard(self, self._slot)
            try:
                super().connection_lost(exc)
            finally:
                self._conn_log.protocol = None  # no cycle left behind


# ip -> time of its last refusal logged (one line per address per 10 s).
_refusals_logged: dict[str, float] = {}


def _log_refusal(ip: str, why: str) -> None:
    now = _now()
    if now - _refusals_logged.get(ip, 0.0) < 10.0 and why != "flood":
        return
    if len(_refusals_logged) > 10_000:
        _refusals_logged.clear()
    _refusals_logged[ip] = now
    if why == "flood":
        log.warning("Connection flood from %s: banned (SYSTEMX_CONNECT_RATE_PER_IP)", ip)
    elif why == "banned":
        log.warning("Connection refused from %s: banned after a flood (SYSTEMX_BAN_SECONDS)", ip)
    else:
        log.warning("Connection refused from %s: SYSTEMX_MAX_CONNECTIONS_PER_IP reached", ip)


async def create_server(
    listener_factory: Callable[[Any], Any],
    host: str,
    port: int,
    *,
    ssl: _ssl.SSLContext | None,
    max_frame_size: int,
    read_buffer_init_size: int,
    logger: Any,
    use_aiofastnet: bool = False,
    backlog: int,
    handshake_timeout: float,
    gate: IpGate | None = None,
    reuse_port: bool = False,
    start_serving: bool = True,
) -> tuple[asyncio.Server, bool]:
    """Listen like ``ws_create_server``; the flag is True when the lean protocol is in use.

    ``gate`` (per-IP limits) is applied only by the lean protocol; without it the
    limits are not enforced, and the log says so. The lean protocol keeps the
    handshake deadlines on one :class:`HandshakeWheel` for the server. With
    ``start_serving=False`` the socket is bound and listening but no connection
    is accepted until ``Server.start_serving()``.
    """
    if WSProtocol is not None and not use_aiofastnet:
        loop = asyncio.get_running_loop()
        wheel = HandshakeWheel(loop, handshake_timeout)
        # The defaults of ws_create_server for everything not passed here.
        args: tuple[Any, ...] = (
            None,  # host and port (client side only)
            None,  # path (client side only)
            False,  # is_client_side
            listener_factory,
            logger,
            True,  # disconnect_on_exception
            None,  # websocket_handshake_timeout: kept by the wheel instead
            False,  # enable_auto_ping
            20,  # auto_ping_idle_timeout
            20,  # auto_ping_reply_timeout
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,  # enable_auto_pong
            max_frame_size,
            None,  # extra_headers
            read_buffer_init_size,
        )
        try:
            _ServerProtocol(*args)
        except TypeError as exc:
            log.warning("picows' protocol signature changed (%s); using ws_create_server", exc)
        else:
            server = await loop.create_server(
                lambda: _ServerProtocol(*args, gate=gate, wheel=wheel),
                host,
                port,
                ssl=ssl,
                backlog=backlog,
                reuse_port=reuse_port or None,
                start_serving=start_serving,
            )
            return server, True
    if gate is not None:
        log.warning("Per-IP connection limits are not enforced: picows' own accept path is in use")
    server = await ws_create_server(
        listener_factory,
        host,
        port,
        ssl=ssl,
        max_frame_size=max_frame_size,
        read_buffer_init_size=read_buffer_init_size,
        enable_auto_pong=True,
        logger_name=logger,
        use_aiofastnet=use_aiofastnet,
        backlog=backlog,
        websocket_handshake_timeout=handshake_timeout,
        reuse_port=reuse_port or None,
        start_serving=start_serving,
    )
    return server, False
