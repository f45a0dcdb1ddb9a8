"""Logging configuration: levels, the text line format and the JSON line format.

Text lines read ``2026-01-01T00:00:00.123Z [INFO] Connection registered: ...``
(UTC, millisecond precision; ``WARNING`` is spelled ``WARN``). With
``SYSTEMX_LOG_FORMAT=json`` every record is one JSON object per line with
``ts``, ``level``, ``logger``, ``msg`` and any ``extra`` fields given to the
logging call: the exchange's own lines carry their facts that way (``event``,
``address``, ``session``, ``call_id``, ``to``, ``reason``, ``disposition``,
``duration_s``, ``remote_ip``, ... as apply), so a log shipper need not parse
``msg``. Every SystemX logger lives under ``systemx.``; the WebSocket
library's per-connection chatter is kept at WARNING unless the level is debug.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

import msgspec

from systemx.config import Settings
from systemx.quicklog import set_line_handler

__all__ = ["JsonFormatter", "LoopFlushingHandler", "TextFormatter", "configure_logging", "parse_level"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_LEVEL_NAMES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "ERROR",
}

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_HANDLER_NAME = "systemx"


def parse_level(name: str) -> int:
    """``debug``/``info``/``warn``/``error`` (any case) to a :mod:`logging` level."""
    try:
        return _LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}") from None


_second_cache: list[Any] = [-1, ""]
_milli_cache: list[Any] = [-1, ""]


def _timestamp(created: float) -> str:
    millis = int(created * 1000)
    cache = _milli_cache
    if cache[0] == millis:
        # Lines come in bursts (a call's set-up, one loop pass): most share the millisecond.
        return cache[1]  # type: ignore[no-any-return]
    seconds = millis // 1000
    second = _second_cache
    if second[0] != seconds:
        # strftime is most of a record's formatting cost; one call per second suffices.
        second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        second[0] = seconds
    text = f"{second[1]}.{millis - seconds * 1000:03d}Z"
    cache[0] = millis
    cache[1] = text
    return text


def _level_name(levelno: int) -> str:
    return _LEVEL_NAMES.get(levelno) or logging.getLevelName(levelno)


class TextFormatter(logging.Formatter):
    """``<ISO-8601 UTC> [LEVEL] message`` plus any traceback (``extra`` fields are not written)."""

    def line(
        self, created: float, levelno: int, name: str, message: str, fields: Mapping[str, Any] | None = None
    ) -> str:
        """The line of a record with these fields and nothing else (no traceback)."""
        return f"{_timestamp(created)} [{_level_name(levelno)}] {message}"

    def format(self, record: logging.LogRecord) -> str:
        line = self.line(record.created, record.levelno, record.name, record.getMessage())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _fallback(obj: Any) -> Any:
    return str(obj)


_json_encode = msgspec.json.Encoder(enc_hook=_fallback).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``msg`` and ``extra`` fields."""

    def line(
        self, created: float, levelno: int, name: str, message: str, fields: Mapping[str, Any] | None = None
    ) -> str:
        """The line of a record with these fields and ``extra`` ``fields``, nothing else (no traceback)."""
        entry = _json_entry(created, levelno, name, message)
        if fields:
            if fields.keys() & _BASE_KEYS:  # a field never replaces the line's own keys
                fields = {k: v for k, v in fields.items() if k not in _BASE_KEYS}
            entry.update(fields)
        return _json_encode(entry).decode()

    def format(self, record: logging.LogRecord) -> str:
        entry = _json_entry(record.created, record.levelno, record.name, record.getMessage())
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _json_encode(entry).decode()


_BASE_KEYS = frozenset({"ts", "level", "logger", "msg"})


def _json_entry(created: float, levelno: int, name: str, message: str) -> dict[str, Any]:
    return {"ts": _timestamp(created), "level": _level_name(levelno), "logger": name, "msg": message}


class LoopFlushingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes once per event-loop pass instead of once per record.

    Inside a running asyncio loop, formatted records are kept in a list and one
    flush is scheduled with ``call_soon``: a pass that logs several lines makes one
    ``write`` to the stream (and so one system call, even on a line-buffered
    stderr, which would otherwise write every line on its own). Outside a loop,
    and for WARNING and above, the record and everything before it are written
    at once; ``logging.shutdown`` at exit writes whatever is left.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        # The loop a flush is scheduled on; a loop closed before running it
        # (a test's loop, say) does not hold later lines back.
        self._pending_loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._queue(line, record.levelno)

    def emit_fields(
        self, created: float, levelno: int, name: str, message: str, fields: Mapping[str, Any] | None = None
    ) -> bool:
        """Queue the line of a plain record with these fields (see :mod:`systemx.quicklog`).

        False, and nothing written, unless the formatter is one of SystemX's.
        """
        formatter = self.formatter
        if type(formatter) is not TextFormatter and type(formatter) is not JsonFormatter:
            return False
        line = formatter.line(created, levelno, name, message, fields)
        with self.lock:  # type: ignore[union-attr]  # as Handler.handle holds it around emit()
            self._queue(line, levelno)
        return True

    def _queue(self, line: str, levelno: int) -> None:
        self._lines.append(line)
        if levelno >= logging.WARNING:
            self.flush()
            return
        pending = self._pending_loop
        if pending is not None and not pending.is_closed():
            return
        # Asked once per pass, not per record: CPython 3.11 checks the running
        # loop against getpid(), a system call (about 1 us on a VM).
        loop = asyncio._get_running_loop()
        if loop is None:
            self._pending_loop = None
            self.flush()
        else:
            self._pending_loop = loop
            loop.call_soon(self._flush_soon)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines = self._lines
            if not lines:
                return
            self._lines = []
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except Exception:
                # Nothing sensible to do if stderr is gone; do not take the exchange down.
                pass

    def _flush_soon(self) -> None:
        self._pending_loop = None
        self.flush()


def configure_logging(settings: Settings, stream: IO[str] | None = None) -> None:
    """Send all log records at ``settings.log_level`` or above to ``stream`` (stderr).

    Calling it again replaces the handler it installed before.
    """
    level = parse_level(settings.log_level)
    # The logging HOWTO's optimisations: no caller lookup (a stack walk per record)
    # and no thread/process fields, which no SystemX format prints.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LoopFlushingHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    set_line_handler(handler)
    logging.getLogger("picows").setLevel(level if level <= logging.DEBUG else logging.WARNING)
