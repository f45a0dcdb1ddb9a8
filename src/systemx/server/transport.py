"""The WebSocket side of a session: picows connections, corked writes, slow consumers.

This module owns each socket from the end of its HTTP upgrade to its last byte:

* :class:`Connection` is one WebSocket and the :class:`~systemx.core.endpoint.Endpoint`
  the core's frames for its session go to. It reassembles fragmented messages,
  enforces ``SYSTEMX_MAX_MESSAGE_BYTES``, answers a client CLOSE, runs the close
  handshake and the slow-consumer policy.
* :class:`Corker` holds the connections written to during the current pass of
  the event loop and writes each of them once at the end of the pass.
* :class:`Hub` is the set of open connections: it tells the core of each socket
  that opens or goes, and watches the open-files limit.

Frames: TEXT and BINARY messages are both handed to the core, which validates
UTF-8 and JSON itself. Fragmented messages are reassembled; a message larger
than ``SYSTEMX_MAX_MESSAGE_BYTES`` closes the socket with 1009 and is never
delivered. A client CLOSE is answered and the socket dropped; PINGs are
answered by picows.

Closing: a close asked for by the core sends the CLOSE frame, stops reading
messages from that socket and waits up to :data:`CLOSE_TIMEOUT` seconds for the
client's CLOSE before dropping the TCP connection. The core hears
``on_close`` once the socket is gone.

Writes are corked: the frames sent to one socket during one pass of the event
loop are framed and written with a single ``write`` (or ``writev``) at the end
of the pass (a ``call_soon`` flush, before the loop polls again). A loopback
write costs about 5 µs of CPU whatever its size, so a socket that receives four
frames in a pass pays for one write, not four; latency does not change, since
the flush runs in the same loop iteration. A socket with a single frame in the
pass is written by picows' own (Cython) framing, which is cheaper than framing
in Python. Large payloads (a frame over 8 KB, or 32 KB in one write) are handed
to the transport as separate buffers rather than joined: the payload of a
fan-out is one bytes object shared by all its recipients, and neither the
exchange nor uvloop copies it per recipient.

Slow consumers: sends are never refused while the kernel accepts data. Each
frame queued for a socket is counted against ``SYSTEMX_MAX_BUFFERED_BYTES``
together with the transport's write buffer (see :meth:`Connection.send`: one
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

Counters for the metrics: :class:`Hub` keeps plain integer totals (connections
opened and closed, messages and payload bytes received, frames sent,
slow-consumer cuts), two additions per received message and one per write;
``/metrics`` reads them when scraped.

Memory per idle socket (the target is under 8 KB with a registered session):
uvloop's own transports rather than aiofastnet's, the smallest picows read
buffer (``SYSTEMX_READ_BUFFER_BYTES``), and the handshake's headers dropped
once the upgrade is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import time as _now
from typing import TYPE_CHECKING, Any, Protocol, cast

from multidict import CIMultiDict, CIMultiDictProxy
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from systemx.core.endpoint import Endpoint
from systemx.protocol import messages as m
from systemx.protocol.codes import CloseCode, CloseReason, ErrorReason
from systemx.server.accept import AcceptedTransport
from systemx.server.limits import CLOSE, WARN, Bucket, RateLimits

__all__ = [
    "CLOSE_TIMEOUT",
    "Connection",
    "Corker",
    "ExchangeEvents",
    "Hub",
    "PicowsLog",
    "remote_ip",
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
_NO_HEADERS = cast("CIMultiDict[str]", CIMultiDictProxy(CIMultiDict[str]()))


if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:
    _Adapter = logging.LoggerAdapter


class PicowsLog(_Adapter):
    """picows' logger. A client's protocol violation is a warning, not a server error.

    Being an adapter rather than a :class:`logging.Logger` also stops picows from
    creating one child logger object per connection.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR and isinstance(msg, str) and msg.startswith("WS parser error"):
            level = logging.WARNING
        super().log(level, msg, *args, **kwargs)


class ExchangeEvents(Protocol):
    """The part of the exchange a socket's life reports to."""

    def on_open(self, conn: Endpoint, now: float) -> Any: ...
    def on_data(self, session: Any, data: bytes, now: float) -> None: ...
    def on_close(self, session: Any, now: float) -> None: ...


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


def remote_ip(conn: Any) -> str | None:
    """The peer's IP address of a connection (``None``: not known, or not a socket)."""
    raw = getattr(conn, "raw", None)
    if raw is None:
        return None
    try:
        peer = raw.get_extra_info("peername")
    except Exception:
        return None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


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


class Corker:
    """The connections sent to during this loop pass, each written once when the pass ends.

    Also the slow-consumer bound every connection's sends are counted against.
    """

    __slots__ = (
        "_call_soon",
        "_flush_cb",
        "dirty",
        "high_water",
        "max_buffered_bytes",
        "pending",
        "unpaused_room",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, max_buffered_bytes: int) -> None:
        self._call_soon = loop.call_soon
        self._flush_cb = self.flush
        self.dirty: list[Connection] = []
        self.pending = False
        self.max_buffered_bytes = max_buffered_bytes
        # What a socket that has not paused writing may still take (see Connection.send):
        # its buffer is then at most the transport's high-water mark (set on first accept).
        self.unpaused_room = 0
        self.high_water: int | None = None

    def schedule(self) -> None:
        """Flush at the end of this loop pass (once, however many connections are dirty)."""
        if not self.pending:
            self.pending = True
            self._call_soon(self._flush_cb)

    def flush(self) -> None:
        self.pending = False
        dirty = self.dirty
        self.dirty = []
        for conn in dirty:
            conn.write_out()

    def fit(self, raw: Any) -> None:
        """Set a new socket's write-buffer limits so that pausing starts below the bound."""
        if self.max_buffered_bytes < 65536:
            # Pause must start below the limit (see Connection.send).
            raw.set_write_buffer_limits(high=self.max_buffered_bytes)
        if self.high_water is None:
            self.high_water = high = raw.get_write_buffer_limits()[1]
            self.unpaused_room = max(self.max_buffered_bytes - high, 0)


class Connection(WSListener):
    """One WebSocket: the core session it carries and its close/backpressure state.

    This object is the ``conn`` handle the core passes back in its actions, and an
    :class:`~systemx.core.endpoint.Endpoint`.
    """

    __slots__ = (
        "_close_handle",
        "_frag_size",
        "_frags",
        "_ready",
        "bucket",
        "closing",
        "corker",
        "hub",
        "opened_at",
        "out",
        "paused",
        "raw",
        "room",
        "session",
        "transport",
    )

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.corker = hub.corker
        self.opened_at = 0.0
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
        # Frames sent during this loop pass, written by Corker.flush.
        self.out: list[bytes] | None = None
        # Bytes that may still be queued before SYSTEMX_MAX_BUFFERED_BYTES is crossed
        # (valid while ``out`` is not None; see send).
        self.room = 0
        self._close_handle: asyncio.TimerHandle | None = None
        # Token buckets of SYSTEMX_MAX_FRAMES_PER_SECOND / _BYTES_PER_SECOND (None: no limit).
        self.bucket: Bucket | None = None

    # -- Endpoint ------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Cork one text frame for the end of this loop pass (dropped once closing)."""
        # self.room is what may still be queued for this socket before the slow-consumer
        # bound: set when the pass's first frame is corked, from the transport's buffered
        # bytes if it has paused writing, else from its high-water mark (its buffer is
        # below that while not paused). Each frame costs a subtraction and a compare;
        # over_room counts exactly when the estimate runs out.
        out = self.out
        if out is None:
            if self.closing:
                return
            self.out = [data]
            corker = self.corker
            if self.paused:
                self.room = corker.max_buffered_bytes - self.raw.get_write_buffer_size() - len(data)
            else:
                self.room = corker.unpaused_room - len(data)
            corker.dirty.append(self)
            if not corker.pending:
                corker.schedule()
        else:
            out.append(data)
            self.room -= len(data)
        if self.room < 0:
            self.over_room()

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
        self._close_handle = self.hub.loop.call_later(CLOSE_TIMEOUT, self.abort)

    # -- picows events -------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        underlying = transport.underlying_transport
        self.raw = underlying.transport if isinstance(underlying, AcceptedTransport) else underlying
        # The handshake headers are not needed once upgraded; dropping them saves ~2 KB per socket.
        transport.request.headers = _NO_HEADERS
        transport.response.headers = _NO_HEADERS
        self.opened_at = _now()
        self.hub.opened(self)
        self._ready = True

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self._ready and frame.fin:
            kind = frame.msg_type
            if kind is _TEXT or kind is _BINARY:
                now = _now()
                bucket = self.bucket
                if bucket is not None and bucket.take(frame.payload_size, now):
                    self._over_rate(bucket)
                    return
                hub = self.hub
                data = frame.get_payload_as_bytes()
                # Read by /metrics at scrape time: two integer adds, no metric call per message.
                hub.msgs_received += 1
                hub.bytes_received += len(data)
                hub.on_data(self.session, data, now)
                return
        self._other_frame(transport, frame)

    def _over_rate(self, bucket: Bucket) -> None:
        """A message over the connection's rate: dropped; answered once per run; closed if it goes on."""
        verdict = bucket.refused_verdict
        limits = bucket.limits
        limit = bucket.over()
        if limit == "frames_per_second":
            rate = f"{limits.frame_rate:g} messages per second (SYSTEMX_MAX_FRAMES_PER_SECOND)"
            per_second = int(limits.frame_rate)
        else:
            rate = f"{limits.bytes_per_second} bytes per second (SYSTEMX_MAX_BYTES_PER_SECOND)"
            per_second = limits.bytes_per_second
        if verdict == CLOSE:
            log.warning("Rate limit (1008): still sending over %s (%s)", rate, _who(self.session))
            self.close(CloseCode.POLICY_VIOLATION, CloseReason.RATE_LIMITED)
            return
        if verdict != WARN:
            return
        retry_ms = bucket.retry_after_ms()
        log.warning("Rate limit: over %s, messages dropped (%s)", rate, _who(self.session))
        error = m.Error(
            reason=ErrorReason.RATE_LIMITED,
            context=limit,
            detail=f"Over {rate}, burst {limits.burst_seconds:g} s: messages are dropped; retry in "
            f"{retry_ms} ms; sending on closes the connection (1008)",
            limit=per_second,
            retry_after_ms=retry_ms,
        )
        self.send(m.encode(error))

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
        limit = self.hub.max_message_bytes
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
            now = _now()
            bucket = self.bucket
            if bucket is not None and bucket.take(len(data), now):
                self._over_rate(bucket)
                return
            self.hub.on_data(self.session, data, now)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._ready = False
        self.closing = True
        if self._close_handle is not None:
            self._close_handle.cancel()
            self._close_handle = None
        self.hub.closed(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

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

    # -- writing -------------------------------------------------------------

    def write_out(self) -> None:
        """Write the frames corked during this loop pass (one write for all of them)."""
        out = self.out
        if out is None:
            return
        self.out = None
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        self.hub.frames_sent += len(out)
        if len(out) == 1 and len(out[0]) <= _PICOWS_SAFE_SEND:
            # The common case under light load: picows' Cython framing is cheaper.
            transport.send(_TEXT, out[0])
        elif len(out) == 1 or sum(map(len, out)) >= _SHARE_BYTES:
            # One writev; the payloads are not copied (see _SHARE_BYTES).
            self.raw.writelines(_frame_parts(out))
        else:
            # Small frames: one copy into one buffer is cheaper than a writev of many.
            self.raw.write(b"".join(_frame_parts(out)))

    def abort(self) -> None:
        """Drop the TCP connection now, discarding unsent data."""
        self._close_handle = None
        if self.transport is not None:
            self.transport.disconnect(graceful=False)

    def over_room(self) -> None:
        """The frame just queued may take this socket past its bound: check exactly, drop if so.

        ``room`` is a lower bound (see :meth:`send`); here the corked bytes and the
        transport's own buffer are counted. Called only when ``room`` has gone negative.
        """
        out = self.out
        assert out is not None
        queued = sum(map(len, out))
        room = self.corker.max_buffered_bytes - queued - self.raw.get_write_buffer_size()
        if room >= 0:
            self.room = room
            return
        self._drop_slow_consumer(queued - len(out[-1]) + self.raw.get_write_buffer_size())

    def _drop_slow_consumer(self, unsent: int) -> None:
        transport = self.transport
        assert transport is not None
        # The frames corked in this pass are not written: the session is over.
        self.out = None
        self.hub.slow_consumers += 1
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
        loop = self.hub.loop
        self._close_handle = loop.call_later(CLOSE_TIMEOUT, self.abort)
        # The core is mid-action (this is one of its sends): end the session after it returns.
        loop.call_soon(self.hub.end_session, self)


class Hub:
    """The open connections: reports each one's opening, data and end to the exchange.

    ``on_data`` is the exchange's own bound method once :meth:`attach` has run, so a
    complete message costs one call into the core.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_message_bytes: int, max_buffered_bytes: int
    ) -> None:
        self.loop = loop
        self.max_message_bytes = max_message_bytes
        self.corker = Corker(loop, max_buffered_bytes)
        self.conns: set[Connection] = set()
        self.rate_limits: RateLimits | None = None
        self.all_closed = asyncio.Event()
        self.on_data: Callable[[Any, bytes, float], None] = self._not_attached
        self._exchange: ExchangeEvents | None = None
        # Connections at which the open-files limit is near (warned once per approach).
        self.near_fd_limit: int | None = None
        self._fd_limit_warned = False
        # Totals since start, read by the metrics at scrape time (see Connection.on_ws_frame).
        self.opened_total = 0
        self.closed_total = 0
        self.msgs_received = 0
        self.bytes_received = 0
        self.frames_sent = 0
        self.slow_consumers = 0

    @staticmethod
    def _not_attached(*args: Any) -> Any:
        raise RuntimeError("server not started")

    def attach(self, exchange: ExchangeEvents) -> None:
        """Report to ``exchange`` from now on."""
        self._exchange = exchange
        self.on_data = exchange.on_data

    def __len__(self) -> int:
        return len(self.conns)

    def opened(self, conn: Connection) -> None:
        exchange = self._exchange
        if exchange is None:
            raise RuntimeError("server not started")
        conns = self.conns
        conns.add(conn)
        self.opened_total += 1
        if self.near_fd_limit is not None and len(conns) >= self.near_fd_limit:
            self._warn_fd_limit()
        now = _now()
        if self.rate_limits is not None:
            conn.bucket = self.rate_limits.bucket(now)
        conn.session = exchange.on_open(conn, now)
        raw = conn.raw
        if raw is not None:
            self.corker.fit(raw)
        if log.isEnabledFor(logging.DEBUG):
            session_id, ip = _session_label(conn.session), remote_ip(conn)
            log.debug(
                "Connection opened: %s (session: %s)",
                ip,
                session_id,
                extra={"event": "connection_opened", "session": session_id, "remote_ip": ip},
            )

    def end_session(self, conn: Connection) -> None:
        session = conn.session
        if session is None or self._exchange is None:
            return
        conn.session = None
        self._exchange.on_close(session, _now())

    def closed(self, conn: Connection) -> None:
        if conn in self.conns:
            self.closed_total += 1
        self.conns.discard(conn)
        limit = self.near_fd_limit
        if self._fd_limit_warned and limit is not None and len(self.conns) < limit * 0.8:
            self._fd_limit_warned = False  # warn again on the next approach
        if log.isEnabledFor(logging.DEBUG):
            session = conn.session
            session_id, ip = _session_label(session), remote_ip(conn)
            address = getattr(session, "address", None)
            log.debug(
                "Connection closed: %s (session: %s%s)",
                ip,
                session_id,
                f", address: {address}" if address else "",
                extra={
                    "event": "connection_closed",
                    "session": session_id,
                    "address": address,
                    "remote_ip": ip,
                },
            )
        try:
            self.end_session(conn)
        finally:
            if not self.conns:
                self.all_closed.set()

    def _warn_fd_limit(self) -> None:
        if self._fd_limit_warned:
            return
        self._fd_limit_warned = True
        log.warning(
            "%d connections: close to the open-files limit; past it new connections are "
            "refused (raise the hard limit, ulimit -Hn)",
            len(self.conns),
        )

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.conns):
            conn.close(code, reason)

    def abort_all(self) -> None:
        for conn in list(self.conns):
            conn.abort()

    async def wait_all_closed(self, timeout: float) -> None:
        """Return once every connection is gone, or after ``timeout`` seconds."""
        if not self.conns:
            return
        self.all_closed.clear()
        try:
            await asyncio.wait_for(self.all_closed.wait(), timeout)
        except TimeoutError:
            pass
