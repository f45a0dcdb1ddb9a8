"""The WebSocket driver: sockets, timers, wake runner and profile store around the core.

:class:`Server` owns everything the sans-I/O :class:`~systemx.core.exchange.Exchange`
cannot do itself. It accepts connections with picows on uvloop, turns each
complete WebSocket message into ``Exchange.on_data`` and executes the core's
:class:`~systemx.core.actions.Actions` (send, close, timers, wake, profiles).

HTTP on the listening port:

* a WebSocket upgrade on any path opens a session;
* ``GET /healthz`` without an upgrade answers ``200 application/json`` with
  ``Exchange.health()``;
* any other plain HTTP request gets ``426 Upgrade Required``.

Frames: TEXT and BINARY messages are both handed to the core, which validates
UTF-8 and JSON itself. Fragmented messages are reassembled; a message larger
than ``SYSTEMX_MAX_MESSAGE_BYTES`` closes the socket with 1009 and is never
delivered (see "Oversized input" below). A client CLOSE
is answered and the socket dropped; PINGs are answered by picows.

Closing: a close asked for by the core sends the CLOSE frame, stops reading
messages from that socket and waits up to :data:`CLOSE_TIMEOUT` seconds for the
client's CLOSE before dropping the TCP connection. The core hears
``on_close`` once the socket is gone.

Writes are corked: the core's sends to one socket during one pass of the event
loop are framed and written with a single ``write`` (or ``writev``) at the end
of the pass (a ``call_soon`` flush, before the loop polls again). On this class
of machine a loopback write costs about 5 µs of CPU whatever its size, so a
socket that receives four frames in a pass pays for one write, not four;
latency does not change, since the flush runs in the same loop iteration. A
socket with a single frame in the pass is written by picows' own (Cython)
framing, which is cheaper than framing in Python. Large payloads (a frame over
8 KB, or 32 KB in one write) are handed to the transport as separate buffers
rather than joined: the payload of a fan-out is one bytes object shared by all
its recipients, and neither the exchange nor uvloop copies it per recipient.

Slow consumers: sends are never refused while the kernel accepts data. Each
frame queued for a socket is counted against ``SYSTEMX_MAX_BUFFERED_BYTES``
together with the transport's write buffer (see :meth:`Server.send`: one
subtraction and one compare per frame; the exact count only when the estimate
runs out). A frame that would take a socket over the bound is not queued; that
connection is dropped: the frames corked in the pass are discarded, the CLOSE
frame (1008 ``slow_consumer``) is queued behind the unsent data, the session
ends in the core at once (``on_close`` on the next loop iteration, so its calls
and parties end for everyone else), and the socket is aborted if it has not
drained within :data:`CLOSE_TIMEOUT`. The sender and every other session are
untouched.

Oversized input: picows refuses a frame over ``SYSTEMX_MAX_MESSAGE_BYTES`` from
its header and sends the 1009 CLOSE; :meth:`Connection.on_parser_error` (told by
``systemx.server.accept``) then stops reading that socket, so the refused
payload is neither buffered further nor delivered. Read buffers grow only to
fit a frame, not with a burst (``systemx.server.accept._READ_SLACK``).

Memory per idle socket (the target is under 8 KB with a registered session):
uvloop's own transports rather than aiofastnet's, the smallest picows read
buffer (``SYSTEMX_READ_BUFFER_BYTES``), and the handshake's headers dropped
once the upgrade is done.

Limits: a connection that has not completed its HTTP upgrade within
``SYSTEMX_HANDSHAKE_TIMEOUT_MS`` (5 s) is dropped. The listening socket's
accept queue is ``SYSTEMX_LISTEN_BACKLOG`` (default 4096, capped by the
kernel's ``net.core.somaxconn``) so that thousands of clients connecting at
once are queued rather than dropped, and :func:`serve` raises the process's
soft open-file limit to its hard limit (every connection is a file
descriptor; many systems start programs at 1024). Past the limit the event
loop refuses new connections without a word, so the server warns once when
its connections reach 90% of the descriptors left at start, and again only
after they have fallen back below 80% of that.

Shutdown (:meth:`Server.shutdown`): stop accepting, ``Exchange.shutdown``
(HANGUP ``shutdown`` to every call, close 1001 for every session), wait for the
sockets to go, bounded by ``SYSTEMX_SHUTDOWN_TIMEOUT``, abort the rest, then
close the wake runner and the profile store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import ssl
from collections.abc import Callable, Hashable
from pathlib import Path
from time import time as _now
from typing import TYPE_CHECKING, Any, Protocol, cast

import msgspec
from multidict import CIMultiDict, CIMultiDictProxy
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

from systemx.config import ConfigError, Settings
from systemx.core.actions import WakeProfile, WakeRequest
from systemx.core.exchange import Exchange
from systemx.protocol.codes import CloseCode, CloseReason
from systemx.server.accept import AcceptedTransport, SwitchingProtocols, create_server
from systemx.server.timers import Timers

try:
    import resource
except ImportError:  # not on Windows: no open-file limits to manage
    resource = None  # type: ignore[assignment]

__all__ = [
    "CLOSE_TIMEOUT",
    "Connection",
    "ExchangeLike",
    "ProfileStore",
    "Server",
    "WakeRunnerLike",
    "run",
    "serve",
]

log = logging.getLogger("systemx.server")

CLOSE_TIMEOUT = 5.0
"""Seconds a closing socket may take to finish the close handshake or drain."""

_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CONTINUATION = WSMsgType.CONTINUATION
_CLOSE = WSMsgType.CLOSE
_PROTOCOL_ERROR = 1002
# Largest frame WSTransport.send copies into its own buffer (see _frame_parts).
_PICOWS_SAFE_SEND = 8192
# From one frame over _PICOWS_SAFE_SEND, or this many payload bytes in one write,
# the frames go to the transport as separate buffers (one writev) rather than
# joined into one: a large MSG or PARTY_MSG payload is one bytes object shared by
# every recipient of a fan-out, and joining would copy it once per recipient.
# uvloop keeps what it cannot send at once by reference, not by copy.
_SHARE_BYTES = 32768
# Server-to-client frame headers (FIN + TEXT, unmasked) by payload size, filled on first use.
# Sizes from 16 KB up are rare and their copy dwarfs the header; the cache stays under 2 MB.
_HEADERS: dict[int, bytes] = {}
_HEADER_CACHE_LIMIT = 16384
_MAX_REASON_BYTES = 123
_PROFILE_DB = "systemx.db"
_NO_HEADERS = cast("CIMultiDict[str]", CIMultiDictProxy(CIMultiDict[str]()))


class ExchangeLike(Protocol):
    """The part of :class:`systemx.core.exchange.Exchange` the driver calls."""

    def start(self, now: float) -> None: ...
    def on_open(self, conn: Any, now: float) -> Any: ...
    def on_data(self, session: Any, data: bytes, now: float) -> None: ...
    def on_close(self, session: Any, now: float) -> None: ...
    def on_timer(self, key: Hashable, now: float) -> None: ...
    def on_wake_failed(self, address: str, detail: str, now: float) -> None: ...
    def on_lookup_result(self, address: str, conn: Any, now: float) -> Any: ...
    def is_registered(self, address: str) -> bool: ...
    def shutdown(self, now: float) -> None: ...
    def health(self) -> dict[str, Any]: ...


class ProfileStore(Protocol):
    """Durable wake profiles (``systemx.state.profiles.SqliteProfileStore``)."""

    def load_all(self) -> dict[str, dict[str, Any]]: ...
    def put(self, address: str, profile: dict[str, Any]) -> None: ...
    def delete(self, address: str) -> None: ...
    def close(self) -> None: ...


class WakeRunnerLike(Protocol):
    """Runs wake handlers (``systemx.server.wake.WakeRunner``)."""

    def wake(self, request: WakeRequest) -> None: ...
    def cancel(self, address: str) -> None: ...
    async def close(self) -> None: ...


ExchangeFactory = Callable[..., ExchangeLike]
"""``factory(core_config, actions, profiles=...)`` building the exchange."""
ProfileStoreFactory = Callable[[Path], ProfileStore]
WakeRunnerFactory = Callable[[Settings, Callable[[str, str], None], Callable[[str], bool]], WakeRunnerLike]


# Imported when first used, so a deployment without them fails only when it needs them.
def _default_profile_store(path: Path) -> ProfileStore:
    from systemx.state.profiles import SqliteProfileStore

    return SqliteProfileStore(path)


def _default_wake_runner(
    settings: Settings, on_failed: Callable[[str, str], None], is_registered: Callable[[str], bool]
) -> WakeRunnerLike:
    from systemx.server.wake import WakeRunner

    return WakeRunner(settings, on_failed, is_registered)


if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:
    _Adapter = logging.LoggerAdapter


class _PicowsLog(_Adapter):
    """picows' logger. A client's protocol violation is a warning, not a server error.

    Being an adapter rather than a :class:`logging.Logger` also stops picows from
    creating one child logger object per connection.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR and isinstance(msg, str) and msg.startswith("WS parser error"):
            level = logging.WARNING
        super().log(level, msg, *args, **kwargs)


def _reason_bytes(reason: str) -> bytes:
    raw = reason.encode()
    if len(raw) > _MAX_REASON_BYTES:
        raw = raw[:_MAX_REASON_BYTES].decode("utf-8", "ignore").encode()
    return raw


def _header(n: int) -> bytes:
    """The header of an unmasked final TEXT frame with an ``n``-byte payload."""
    header = _HEADERS.get(n)
    if header is None:
        if n < 126:
            header = bytes((0x81, n))
        elif n < 65536:
            header = b"\x81\x7e" + n.to_bytes(2, "big")
        else:
            return b"\x81\x7f" + n.to_bytes(8, "big")
        if n < _HEADER_CACHE_LIMIT:
            _HEADERS[n] = header
    return header


def _frame_parts(out: list[bytes]) -> list[bytes]:
    # Framed here rather than by WSTransport.send when several frames share a write,
    # or for one frame over 8 KB: picows hands those to writelines() with the header
    # as a view of a buffer it reuses, and uvloop queues that view uncopied when the
    # socket is backed up, so a later frame would overwrite it. These headers are
    # immutable bytes, never reused for anything else.
    parts: list[bytes] = []
    append = parts.append
    for data in out:
        append(_header(len(data)))
        append(data)
    return parts


def _ws_code(code: int) -> WSCloseCode:
    # picows takes any integer here, including the 4000 range its enum does not list.
    return cast(WSCloseCode, code)


def _session_label(session: Any) -> str:
    return str(getattr(session, "session_id", None) or getattr(session, "id", "?"))


def _who(session: Any) -> str:
    """``session: ID`` and, once registered, ``address: ADDRESS``, for log lines."""
    address = getattr(session, "address", None)
    if address:
        return f"session: {_session_label(session)}, address: {address}"
    return f"session: {_session_label(session)}"


def _reply_code(frame: WSFrame) -> int:
    if frame.payload_size < 2:
        return CloseCode.NORMAL
    code = int.from_bytes(frame.get_payload_as_bytes()[:2], "big")
    if 1000 <= code <= 4999 and code not in (1004, 1005, 1006, 1015):
        return code
    return CloseCode.NORMAL


class Connection(WSListener):
    """One WebSocket: the core session it carries and its close/backpressure state.

    This object is the ``conn`` handle the core passes back in its actions.
    """

    __slots__ = (
        "_close_handle",
        "_frag_size",
        "_frags",
        "_ready",
        "closing",
        "out",
        "paused",
        "raw",
        "room",
        "server",
        "session",
        "transport",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: WSTransport | None = None
        # The event loop's transport under picows (never a view of it): writes go here.
        self.raw: Any = None
        self.session: Any = None
        # True while frames may go straight to the core: open, not closing, not mid-fragment.
        self._ready = False
        self._frags: list[bytes] | None = None
        self._frag_size = 0
        self.paused = False
        self.closing = False
        # Frames sent during this loop pass, written by Server._flush.
        self.out: list[bytes] | None = None
        # Bytes that may still be queued before SYSTEMX_MAX_BUFFERED_BYTES is crossed
        # (valid while ``out`` is not None; see Server.send).
        self.room = 0
        self._close_handle: asyncio.TimerHandle | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        underlying = transport.underlying_transport
        self.raw = underlying.transport if isinstance(underlying, AcceptedTransport) else underlying
        # The handshake headers are not needed once upgraded; dropping them saves ~2 KB per socket.
        transport.request.headers = _NO_HEADERS
        transport.response.headers = _NO_HEADERS
        self.server._opened(self)
        self._ready = True

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self._ready and frame.fin:
            kind = frame.msg_type
            if kind is _TEXT or kind is _BINARY:
                self.server.on_data(self.session, frame.get_payload_as_bytes(), _now())
                return
        self._other_frame(transport, frame)

    def _other_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is _CLOSE:
            if not self.closing:
                self.closing = True
                self._ready = False
                transport.send_close(_ws_code(_reply_code(frame)))
            transport.disconnect()
            return
        if self.closing or not (kind is _TEXT or kind is _BINARY or kind is _CONTINUATION):
            return
        if kind is _CONTINUATION:
            if self._frags is None:
                self.close(_PROTOCOL_ERROR, "Unexpected continuation frame")
                return
        elif self._frags is not None:
            self.close(_PROTOCOL_ERROR, "Expected continuation frame")
            return
        else:
            self._frags = []
            self._frag_size = 0
            self._ready = False
        self._frag_size += frame.payload_size
        limit = self.server.settings.max_message_bytes
        if self._frag_size > limit:
            # Refused as soon as the running total passes the limit; later fragments
            # are read and dropped (closing) until the client answers the CLOSE.
            log.warning(
                "Message too big (1009): fragments of %d bytes so far, over the %d-byte limit (%s)",
                self._frag_size,
                limit,
                _who(self.session),
            )
            self.close(CloseCode.MESSAGE_TOO_BIG, CloseReason.TOO_BIG)
            return
        self._frags.append(frame.get_payload_as_bytes())
        if frame.fin:
            data = b"".join(self._frags)
            self._frags = None
            self._frag_size = 0
            self._ready = True
            self.server.on_data(self.session, data, _now())

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._ready = False
        self.closing = True
        if self._close_handle is not None:
            self._close_handle.cancel()
            self._close_handle = None
        self.server._closed(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def write_out(self) -> None:
        """Write the frames corked during this loop pass (one write for all of them)."""
        out = self.out
        if out is None:
            return
        self.out = None
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        if len(out) == 1 and len(out[0]) <= _PICOWS_SAFE_SEND:
            # The common case under light load: picows' Cython framing is cheaper.
            transport.send(_TEXT, out[0])
        elif len(out) == 1 or sum(map(len, out)) >= _SHARE_BYTES:
            # One writev; the payloads are not copied (see _SHARE_BYTES).
            self.raw.writelines(_frame_parts(out))
        else:
            # Small frames: one copy into one buffer is cheaper than a writev of many.
            self.raw.write(b"".join(_frame_parts(out)))

    def close(self, code: int, reason: str) -> None:
        """Send CLOSE and drop the socket once the client answers (or after :data:`CLOSE_TIMEOUT`)."""
        transport = self.transport
        if transport is None or self.closing:
            return
        self.write_out()  # frames the core sent before closing go out before the CLOSE
        if self.closing:
            return
        self.closing = True
        self._ready = False
        self._frags = None
        transport.send_close(_ws_code(code), _reason_bytes(reason))
        self._close_handle = self.server.loop.call_later(CLOSE_TIMEOUT, self.abort)

    def abort(self) -> None:
        """Drop the TCP connection now, discarding unsent data."""
        self._close_handle = None
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    def over_room(self) -> None:
        """The frame just queued may take this socket past its bound: check exactly, drop if so.

        ``room`` is a lower bound (see :meth:`Server.send`); here the corked bytes and the
        transport's own buffer are counted. Called only when ``room`` has gone negative.
        """
        out = self.out
        assert out is not None
        queued = sum(map(len, out))
        room = self.server.max_buffered_bytes - queued - self.raw.get_write_buffer_size()
        if room >= 0:
            self.room = room
            return
        self._drop_slow_consumer(queued - len(out[-1]) + self.raw.get_write_buffer_size())

    def _drop_slow_consumer(self, unsent: int) -> None:
        transport = self.transport
        assert transport is not None
        # The frames corked in this pass are not written: the session is over.
        self.out = None
        self.closing = True
        self._ready = False
        self._frags = None
        log.warning(
            "Slow consumer closed (1008): %d bytes unsent (%s)",
            unsent,
            _who(self.session),
            extra={"unsent_bytes": unsent},
        )
        transport.send_close(_ws_code(CloseCode.POLICY_VIOLATION), CloseReason.SLOW_CONSUMER.encode())
        transport.disconnect()
        self._close_handle = self.server.loop.call_later(CLOSE_TIMEOUT, self.abort)
        # The core is mid-action (this is one of its sends): end the session after it returns.
        self.server.loop.call_soon(self.server._end_session, self)

    def on_parser_error(self, code: int, detail: str) -> None:
        """picows refused this socket's input (an oversized frame, a protocol violation).

        picows sends the CLOSE and drops the connection shortly after; until then
        nothing more from this socket is read or reaches the core (picows would go on
        buffering the refused frame and hand it over once complete).
        """
        if self.closing:
            return
        self.closing = True
        self._ready = False
        self._frags = None
        if self.raw is not None:
            self.raw.pause_reading()
        if code == CloseCode.MESSAGE_TOO_BIG:
            log.warning("Message too big (1009): %s (%s)", detail, _who(self.session))
        else:
            log.warning("Protocol error (%d): %s (%s)", code, detail, _who(self.session))


class Server:
    """The exchange behind a picows WebSocket server; implements the core's ``Actions``."""

    def __init__(
        self,
        settings: Settings,
        *,
        exchange_factory: ExchangeFactory | None = None,
        profile_store_factory: ProfileStoreFactory | None = None,
        wake_runner_factory: WakeRunnerFactory | None = None,
        use_aiofastnet: bool = False,
    ) -> None:
        self.settings = settings
        # uvloop's own transports: aiofastnet's cost ~5 KB more per idle socket for no
        # measurable CPU gain on the relay path.
        self._use_aiofastnet = use_aiofastnet
        self._exchange_factory: ExchangeFactory = exchange_factory or Exchange
        self._profile_store_factory = profile_store_factory or _default_profile_store
        self._wake_runner_factory = wake_runner_factory or _default_wake_runner
        self._exchange: ExchangeLike | None = None
        self._server: asyncio.Server | None = None
        # True when connections are accepted by systemx.server.accept's lean protocol.
        self.lean_accept = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: Timers | None = None
        self._conns: set[Connection] = set()
        self._all_closed = asyncio.Event()
        self._profiles: ProfileStore | None = None
        self._profiles_missing_logged = False
        self._wake_runner: WakeRunnerLike | None = None
        self._stopping = False
        self._dirty: list[Connection] = []
        self._flush_pending = False
        self.max_buffered_bytes = settings.max_buffered_bytes
        # What a socket that has not paused writing may still take (see send): its
        # buffer is then at most the transport's high-water mark (set on first accept).
        self._unpaused_room = 0
        self._high_water: int | None = None
        # Connections at which the open-files limit is near (warned once per approach).
        self._near_fd_limit: int | None = None
        self._fd_limit_warned = False
        self._call_soon: Callable[..., Any] = self._not_started
        self.port = 0
        self.on_data: Callable[[Any, bytes, float], None] = self._not_started

    @staticmethod
    def _not_started(*args: Any) -> Any:
        raise RuntimeError("server not started")

    @property
    def exchange(self) -> ExchangeLike:
        if self._exchange is None:
            raise RuntimeError("server not started")
        return self._exchange

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("server not started")
        return self._loop

    @property
    def timers(self) -> Timers:
        if self._timers is None:
            raise RuntimeError("server not started")
        return self._timers

    @property
    def url(self) -> str:
        scheme = "wss" if self.settings.tls_enabled else "ws"
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Open the profile store, build the exchange, bind the socket and arm the core's timers."""
        settings = self.settings
        self._loop = asyncio.get_running_loop()
        self._call_soon = self._loop.call_soon
        self._timers = Timers(self._loop, self._fire_timer)
        ssl_context = self._ssl_context() if settings.tls_enabled else None
        profiles = self._open_profiles()
        self._server, self.lean_accept = await create_server(
            self._accept,
            settings.host,
            settings.port,
            ssl=ssl_context,
            max_frame_size=settings.max_message_bytes,
            read_buffer_init_size=settings.read_buffer_bytes,
            backlog=settings.listen_backlog,
            handshake_timeout=settings.handshake_timeout_ms / 1000,
            logger=_PicowsLog(logging.getLogger("picows.server"), {}),
            use_aiofastnet=self._use_aiofastnet,
        )
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else settings.port
        self.settings = dataclasses.replace(settings, port=self.port)
        # Built after binding so that it knows the real port (with --port 0) when it
        # refuses webhooks aimed at the exchange itself. No connection is handled
        # before this line: the loop has not run since the bind returned.
        self._exchange = self._exchange_factory(self.settings.core_config(), self, profiles=profiles)
        self.on_data = self._exchange.on_data
        self._exchange.start(_now())
        capacity = connection_capacity()
        self._near_fd_limit = None if capacity is None else max(int(capacity * 0.9), 1)
        log.info("SystemX listening on %s", self.url, extra={"port": self.port})

    async def shutdown(self) -> None:
        """Stop accepting, end every call and session, wait (bounded), then release everything."""
        if self._stopping:
            return
        self._stopping = True
        log.info("Shutting down: %d connection(s)", len(self._conns))
        if self._server is not None:
            self._server.close()
        if self._exchange is not None:
            try:
                self._exchange.shutdown(_now())
            except Exception:
                log.exception("Exchange shutdown failed")
        for conn in list(self._conns):
            conn.close(CloseCode.GOING_AWAY, CloseReason.SHUTDOWN)
        await self._wait_all_closed(self.settings.shutdown_timeout_ms / 1000)
        if self._conns:
            log.warning("Shutdown timeout: aborting %d connection(s)", len(self._conns))
            for conn in list(self._conns):
                conn.abort()
            await self._wait_all_closed(1.0)
        if self._timers is not None:
            self._timers.clear()
        if self._wake_runner is not None:
            try:
                await self._wake_runner.close()
            except Exception:
                log.exception("Wake runner close failed")
        if self._profiles is not None:
            try:
                self._profiles.close()
            except Exception:
                log.exception("Profile store close failed")
            self._profiles = None
        log.info("SystemX stopped")

    async def _wait_all_closed(self, timeout: float) -> None:
        if not self._conns:
            return
        self._all_closed.clear()
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout)
        except TimeoutError:
            pass

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.settings.tls_cert_path, self.settings.tls_key_path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS_CERT_PATH/TLS_KEY_PATH cannot be loaded: {exc}") from None
        return context

    def _open_profiles(self) -> dict[str, WakeProfile]:
        path = Path(self.settings.data_dir) / _PROFILE_DB
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._profiles = self._profile_store_factory(path)
            stored = self._profiles.load_all()
        except ImportError as exc:
            log.warning("Wake profiles will not persist: no profile store (%s)", exc)
            return {}
        except Exception as exc:
            raise ConfigError(f"SYSTEMX_DATA_DIR: cannot open {path}: {exc}") from exc
        profiles: dict[str, WakeProfile] = {}
        for key, doc in stored.items():
            try:
                profiles[key] = msgspec.convert(doc, WakeProfile)
            except msgspec.ValidationError as exc:
                # One damaged profile must not stop the exchange from starting.
                log.error("Skipping unreadable wake profile of %s in %s: %s", key, path, exc)
        if profiles:
            log.info("Loaded %d wake profile(s) from %s", len(profiles), path)
        return profiles

    # -- connections ---------------------------------------------------------

    def _accept(self, request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return WSUpgradeResponseWithListener(self._http_response(request), None)
        if self._stopping:
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(503, b"Shutting down"), None
            )
        return WSUpgradeResponseWithListener(SwitchingProtocols(), Connection(self))

    def _http_response(self, request: WSUpgradeRequest) -> WSUpgradeResponse:
        path = request.path.split(b"?", 1)[0]
        if path == b"/healthz":
            body = msgspec.json.encode(self.exchange.health())
            response: WSUpgradeResponse = WSUpgradeResponse.create_ok_response(
                body, {"Content-Type": "application/json"}
            )
            return response
        response = WSUpgradeResponse.create_error_response(
            426, b"Upgrade Required: this is a WebSocket endpoint\n", {"Upgrade": "websocket"}
        )
        return response

    def _opened(self, conn: Connection) -> None:
        conns = self._conns
        conns.add(conn)
        if self._near_fd_limit is not None and len(conns) >= self._near_fd_limit:
            self._warn_fd_limit()
        conn.session = self.exchange.on_open(conn, _now())
        raw = conn.raw
        if raw is not None:
            if self.max_buffered_bytes < 65536:
                # Pause must start below the limit (see send).
                raw.set_write_buffer_limits(high=self.max_buffered_bytes)
            if self._high_water is None:
                self._high_water = high = raw.get_write_buffer_limits()[1]
                self._unpaused_room = max(self.max_buffered_bytes - high, 0)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Connection opened (session: %s)", _session_label(conn.session))

    def _end_session(self, conn: Connection) -> None:
        session = conn.session
        if session is None:
            return
        conn.session = None
        self.exchange.on_close(session, _now())

    def _warn_fd_limit(self) -> None:
        if self._fd_limit_warned:
            return
        self._fd_limit_warned = True
        log.warning(
            "%d connections: close to the open-files limit; past it new connections are "
            "refused (raise the hard limit, ulimit -Hn)",
            len(self._conns),
        )

    def _closed(self, conn: Connection) -> None:
        self._conns.discard(conn)
        limit = self._near_fd_limit
        if self._fd_limit_warned and limit is not None and len(self._conns) < limit * 0.8:
            self._fd_limit_warned = False  # warn again on the next approach
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Connection closed (session: %s)", _session_label(conn.session))
        try:
            self._end_session(conn)
        finally:
            if not self._conns:
                self._all_closed.set()

    # -- Actions -------------------------------------------------------------

    def send(self, conn: Any, data: bytes) -> None:
        # conn.room is what may still be queued for this socket before the slow-consumer
        # bound: set when the pass's first frame is corked, from the transport's buffered
        # bytes if it has paused writing, else from its high-water mark (its buffer is
        # below that while not paused). Each frame costs a subtraction and a compare;
        # conn.over_room counts exactly when the estimate runs out.
        out = conn.out
        if out is None:
            if conn.closing:
                return
            conn.out = [data]
            if conn.paused:
                conn.room = self.max_buffered_bytes - conn.raw.get_write_buffer_size() - len(data)
            else:
                conn.room = self._unpaused_room - len(data)
            self._dirty.append(conn)
            if not self._flush_pending:
                self._flush_pending = True
                self._call_soon(self._flush)
        else:
            out.append(data)
            conn.room -= len(data)
        if conn.room < 0:
            conn.over_room()

    def _flush(self) -> None:
        self._flush_pending = False
        dirty = self._dirty
        self._dirty = []
        for conn in dirty:
            conn.write_out()

    def close(self, conn: Any, code: int, reason: str) -> None:
        conn.close(code, reason)

    def start_timer(self, key: Hashable, delay: float) -> None:
        self.timers.start(key, delay)

    def cancel_timer(self, key: Hashable) -> None:
        self.timers.cancel(key)

    def _fire_timer(self, key: Hashable) -> None:
        try:
            self.exchange.on_timer(key, _now())
        except Exception:
            log.exception("Timer %r failed", key)

    def wake(self, request: WakeRequest) -> None:
        try:
            runner = self._runner()
            runner.wake(request)
        except Exception as exc:
            log.exception("Cannot wake %s", request.address)
            # The core is mid-action: report the failure after it returns.
            self.loop.call_soon(self._wake_failed, request.address, f"wake runner failed: {exc}")

    def cancel_wake(self, address: str) -> None:
        if self._wake_runner is not None:
            self._wake_runner.cancel(address)

    def persist_profile(self, address: str, profile: WakeProfile | None) -> None:
        store = self._profiles
        if store is None:
            if not self._profiles_missing_logged:
                self._profiles_missing_logged = True
                log.warning("Wake profile of %s not persisted: no profile store", address)
            return
        try:
            if profile is None:
                store.delete(address)
            else:
                store.put(address, msgspec.to_builtins(profile))
        except Exception:
            log.exception("Persisting the wake profile of %s failed", address)

    def lookup(self, address: str) -> None:
        # The embedded exchange has no directory beyond its own registry; a
        # clustered or federated driver answers from Redis or a trunk instead.
        self.loop.call_soon(self._lookup_missed, address)

    def _lookup_missed(self, address: str) -> None:
        self.exchange.on_lookup_result(address, None, _now())

    def _runner(self) -> WakeRunnerLike:
        if self._wake_runner is None:
            self._wake_runner = self._wake_runner_factory(
                self.settings, self._wake_failed, self.exchange.is_registered
            )
        return self._wake_runner

    def _wake_failed(self, address: str, detail: str) -> None:
        if self._stopping:
            return
        self.exchange.on_wake_failed(address, detail, _now())


GC_GEN0_THRESHOLD = 7000
"""Allocations between young-generation collections (CPython's default is 700)."""


def _tune_gc() -> None:
    """Keep the cycle collector off the hot path of a long-running exchange.

    Everything alive once the server has started (modules, settings, the
    exchange itself) lives until exit: ``gc.freeze`` moves it out of every
    collection's reach. A higher young-generation threshold lets the many
    short-lived objects of each event die before a collection looks at them.
    Measured on ``connect`` (8,000 registrations): the collector's share of the
    server's CPU fell from 6.8% to 2.7%.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


_NR_OPEN = Path("/proc/sys/fs/nr_open")


def raise_open_file_limit() -> None:
    """Raise this process's soft open-file limit to its hard limit (logged).

    Every connection is a file descriptor, and many systems start programs with
    a soft limit of 1024 (the hard limit is usually far higher): past it, the
    exchange could not accept another connection. Nothing to do where there
    are no such limits (no ``resource`` module).
    """
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses a soft limit above fs.nr_open even when the hard one is unlimited.
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("Open files: cannot raise the limit of %d (%s)", soft, exc)
        else:
            log.info("Open files: limit raised from %d to %d", soft, target)


def connection_capacity() -> int | None:
    """About how many more sockets this process can open, or None when unlimited.

    The soft open-files limit minus the descriptors open now (the listening
    socket, the event loop's, stdio, the profile store...).
    """
    if resource is None:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        in_use = len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened
    except OSError:
        in_use = 0
    return max(soft - in_use, 1)


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run a :class:`Server` until SIGTERM/SIGINT (or ``stop`` is set), then shut it down."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    raise_open_file_limit()
    server = Server(settings)
    try:
        await server.start()
        _tune_gc()
        await stop.wait()
    finally:
        await server.shutdown()
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(settings: Settings) -> int:
    """Serve on uvloop (where available) until a signal; the process exit status."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0
