"""``logs@system.local``: the exchange's log as a broadcast anyone may dial.

At start the server opens an internal session on the exchange (a
:class:`LogStream` is its endpoint) and registers ``logs@system.local`` with
``concurrency: broadcast``, ``max_listeners`` 1000 and metadata
``{service: "log_stream", description}``, as the reference router does. It is
an ordinary broadcaster to the exchange: a caller DIALs it, gets CONNECTED,
and the stream learns the broadcast's call id from the RING the exchange sends
it.

A :class:`logging.Handler` on the ``systemx`` logger keeps the newest
:data:`BACKLOG` records (all levels the logger passes) and, while the
broadcast has listeners, formats each into one line and sends it as
``MSG {call_id, data: line}``. Without listeners a record is kept unformatted
(its time, level, logger and message), and formatted only if someone dials
in; the handler is also a tap of :mod:`systemx.quicklog`, so the exchange's
INFO lines keep their short path while the stream is on. When a listener joins, the stream sends a
banner, the backlog, ``--- Live log stream ---``, then the live lines; the
exchange relays every MSG of a broadcast to all its listeners, so those
already listening get the backlog again (the reference does the same).

The frames go in through ``Exchange.on_data`` like any client's, always from
a callback of their own (``loop.call_soon``), never from inside the exchange's
handling of another event. Log records made while the stream hands its own
frames to the exchange are not streamed (no feedback loop); the stream sends
HEARTBEATs so that the sweep keeps it. With ``SYSTEMX_AUTH`` other than
``none`` its REGISTER is checked like any other and, carrying no credential,
refused: the stream is then not provided (one warning says so).
``SYSTEMX_LOG_STREAM=off`` turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgspec

from systemx.quicklog import add_line_tap, remove_line_tap

__all__ = ["ADDRESS", "BACKLOG", "LIVE_MARKER", "MAX_LINE", "LogStream", "start_log_stream"]

ADDRESS = "logs@system.local"
BACKLOG = 100
"""Lines kept for a listener who joins."""
MAX_LINE = 8192
"""Characters of one log line sent (a longer line is cut, marked with ``…``)."""
MAX_LISTENERS = 1000
LIVE_MARKER = "--- Live log stream ---"
_PENDING_MAX = 10_000
_BANNER = "\x1b[1mSystemX log stream\x1b[0m (logs@system.local): recent lines, then live"
_DESCRIPTION = "Live log stream of this exchange"

log = logging.getLogger("systemx.server.logstream")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class _Handler(logging.Handler):
    def __init__(self, stream: LogStream) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(_FORMAT))
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        stream = self._stream
        if stream.sending and threading.get_ident() == stream.thread:
            return  # made while the stream itself was sending: not streamed
        if record.exc_info or record.exc_text or record.stack_info:
            # Formatted now: a kept traceback would keep its frames alive.
            try:
                line = self.format(record)
            except Exception:
                return
            stream.add(line)
            return
        try:
            message = record.getMessage()
        except Exception:
            return
        stream.add((record.created, record.levelno, record.name, message))

    def emit_fields(
        self, created: float, levelno: int, name: str, message: str, fields: Mapping[str, Any] | None = None
    ) -> bool:
        """A line from :mod:`systemx.quicklog`'s short path (``fields`` are not streamed)."""
        stream = self._stream
        if not (stream.sending and threading.get_ident() == stream.thread):
            stream.add((created, levelno, name, message))
        return True


_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# One entry of the backlog: a formatted line, or (created, levelno, logger name, message).
_Entry = str | tuple[float, int, str, str]
_second_cache: list[Any] = [-1, ""]


def _text(entry: _Entry) -> str:
    """The line of ``entry`` as ``logging.Formatter(_FORMAT)`` writes it, cut at :data:`MAX_LINE`."""
    if isinstance(entry, str):
        line = entry
    else:
        created, levelno, name, message = entry
        seconds = int(created)
        cache = _second_cache
        if cache[0] != seconds:
            cache[1] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
            cache[0] = seconds
        millis = int((created - seconds) * 1000)
        line = f"{cache[1]},{millis:03d} {logging.getLevelName(levelno)} {name}: {message}"
    if len(line) > MAX_LINE:
        line = line[: MAX_LINE - 1] + "…"
    return line


class LogStream:
    """The internal endpoint that broadcasts the log (``send``/``close`` as a connection)."""

    def __init__(self, exchange: Any, loop: asyncio.AbstractEventLoop, heartbeat_s: float) -> None:
        self._exchange = exchange
        self._loop = loop
        self._heartbeat_s = heartbeat_s
        self._session: Any = None
        self._handler = _Handler(self)
        self._lock = threading.Lock()
        self.backlog: deque[_Entry] = deque(maxlen=BACKLOG)
        self._pending: list[str] = []
        self._flush_scheduled = False
        self._heartbeat: asyncio.TimerHandle | None = None
        self.thread = threading.get_ident()
        self.sending = False
        self.call_id: str | None = None
        self.listeners = 0
        self.closed = False

    @property
    def holds_address(self) -> bool:
        """Whether this stream's session holds ``logs@system.local``."""
        return (
            not self.closed
            and self._session is not None
            and self._exchange.session_for(ADDRESS) is self._session
        )

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        logging.getLogger("systemx").addHandler(self._handler)
        add_line_tap(self._handler)
        now = time.time()
        self._session = self._exchange.on_open(self, now)
        register = {
            "type": "REGISTER",
            "address": ADDRESS,
            "concurrency": "broadcast",
            "max_listeners": MAX_LISTENERS,
            "metadata": {"service": "log_stream", "description": _DESCRIPTION},
        }
        self._feed(_encode(register))
        if not self.closed:
            self._heartbeat = self._loop.call_later(self._heartbeat_s, self._beat)

    def stop(self) -> None:
        """Leave the exchange (the broadcast ends) and detach from the log.

        Not needed at shutdown: the exchange closes this session with all others.
        """
        if self.closed:
            return
        self._shut()
        self._exchange.on_close(self._session, time.time())

    def _shut(self) -> None:
        self.closed = True
        self.call_id = None
        self._pending.clear()
        logging.getLogger("systemx").removeHandler(self._handler)
        remove_line_tap(self._handler)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None

    def _beat(self) -> None:
        if self.closed:
            return
        self._feed(b'{"type":"HEARTBEAT"}')
        self._heartbeat = self._loop.call_later(self._heartbeat_s, self._beat)

    def _feed(self, frame: bytes) -> None:
        if self.closed or self._session is None:
            return
        self.sending = True
        try:
            self._exchange.on_data(self._session, frame, time.time())
        finally:
            self.sending = False

    # -- the Endpoint the exchange writes to -------------------------------------

    def send(self, data: bytes) -> None:
        kind = data[9:40]  # '{"type":"' is 9 bytes: look only at what matters
        if not (kind.startswith((b"RING", b"HANGUP", b"REGISTER_FAILED"))):
            return
        try:
            frame = _decode(data)
        except msgspec.DecodeError:
            return
        if not isinstance(frame, dict):
            return
        kind_s = frame.get("type")
        if kind_s == "RING" and isinstance(frame.get("call_id"), str):
            if frame["call_id"] != self.call_id:
                self.call_id = frame["call_id"]
                self.listeners = 0
            self.listeners += 1
            self._loop.call_soon(self._welcome)
        elif kind_s == "HANGUP" and frame.get("call_id") == self.call_id:
            self.listeners -= 1
            if self.listeners <= 0:
                self.listeners = 0
                self.call_id = None
                self._pending.clear()
        elif kind_s == "REGISTER_FAILED":
            reason = frame.get("reason")
            self._loop.call_soon(self._refused, str(reason))

    def close(self, code: int, reason: str) -> None:
        # The exchange closed the session (its shutdown): like a socket, report it gone.
        if not self.closed:
            self._shut()
            self._loop.call_soon(self._exchange.on_close, self._session, time.time())

    def _refused(self, reason: str) -> None:
        if self.closed:
            return
        self.stop()
        log.warning("%s is not provided: its REGISTER was refused (%s)", ADDRESS, reason)

    # -- lines ---------------------------------------------------------------------

    def add(self, entry: _Entry) -> None:
        """One log line, formatted or as fields (from any thread)."""
        with self._lock:
            self.backlog.append(entry)
            if self.call_id is None or self.closed:
                return
            if len(self._pending) < _PENDING_MAX:
                self._pending.append(_text(entry))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        if threading.get_ident() == self.thread:
            self._loop.call_soon(self._flush)
        else:
            try:
                self._loop.call_soon_threadsafe(self._flush)
            except RuntimeError:  # the loop has closed
                pass

    def _flush(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
            self._flush_scheduled = False
        self._send_lines(lines)

    def _welcome(self) -> None:
        if self.call_id is None:
            return
        with self._lock:
            backlog = [_text(entry) for entry in self.backlog]
            # The backlog holds every pending line: they are sent once, with it.
            self._pending.clear()
        self._send_lines([_BANNER, *backlog, LIVE_MARKER])

    def _send_lines(self, lines: list[str]) -> None:
        for line in lines:
            call_id = self.call_id
            if call_id is None or self.closed:
                return
            self._feed(_encode({"type": "MSG", "call_id": call_id, "data": line}))


def start_log_stream(server: Any) -> LogStream | None:
    """Open the stream on ``server``'s exchange, unless ``SYSTEMX_LOG_STREAM=off``."""
    settings = server.settings
    if not getattr(settings, "log_stream_enabled", True):
        return None
    # Well within the heartbeat timeout, and never busier than once a second.
    heartbeat_s = max(settings.heartbeat_timeout_ms / 3000, 1.0)
    stream = LogStream(server.exchange, server.loop, heartbeat_s)
    stream.start()
    return stream
