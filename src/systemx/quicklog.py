"""INFO lines without a LogRecord when nothing but SystemX's own handler would see it.

The exchange logs every registration and every call at INFO (the level it
runs at by default). Through :mod:`logging` each line is a ``LogRecord`` and
about fifteen Python calls (make the record, filter, walk the logger tree,
lock the handler, format): 4 to 5 us of CPU per line on a small VM, a fifth
of the server's CPU per call set-up. :class:`QuickLogger` is a
:class:`logging.Logger` whose :meth:`~QuickLogger.info` skips all that when
the outcome is known: the record would reach exactly one handler, the one
:func:`systemx.logsetup.configure_logging` installed on the root logger, and
no filter or record factory could change or observe it. The line it writes
is the one that handler's formatter makes from the record, ``extra`` fields
included (the JSON format writes them; the text format leaves them out). In
any other case (a handler or filter added anywhere on the way, ``caplog`` in a
test, a custom record factory, ``exc_info``, ``stack_info``) it is
``Logger.info`` unchanged.

A handler that also takes lines as fields (``emit_fields``, as the root
handler does) may be registered as a *tap* (:func:`add_line_tap`): the
``logs@system.local`` stream is one. A tap attached anywhere on the way does
not cost the short path: it is handed the same fields after the root handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["LineHandler", "QuickLogger", "add_line_tap", "get_logger", "remove_line_tap", "set_line_handler"]

_INFO = logging.INFO
_LogRecord = logging.LogRecord
_record_factory = logging.getLogRecordFactory
_time = time.time


class LineHandler(Protocol):
    """A handler that can write a line it formats from fields, not from a record."""

    level: int
    filters: list[Any]

    def emit_fields(
        self, created: float, levelno: int, name: str, message: str, fields: Mapping[str, Any] | None = None
    ) -> bool:
        """Write the line the handler would write for such a record (``fields``: its
        ``extra``); False if it cannot."""


# The handler configure_logging installed on the root logger, if any.
_line_handler: list[LineHandler | None] = [None]
# Handlers that take lines as fields too, wherever they are attached (see add_line_tap).
_taps: set[Any] = set()


def set_line_handler(handler: LineHandler | None) -> None:
    """Let :class:`QuickLogger` write straight to ``handler`` (None: never)."""
    _line_handler[0] = handler


def add_line_tap(handler: LineHandler) -> None:
    """Let ``handler`` (attached to some logger) take the short path's lines as fields."""
    _taps.add(handler)


def remove_line_tap(handler: LineHandler) -> None:
    _taps.discard(handler)


def _route(logger: logging.Logger) -> tuple[LineHandler, ...] | None:
    """The handlers a record of ``logger`` would reach, unfiltered, when all take fields:
    the root's line handler first, then any taps; None if anything else would see it."""
    handler = _line_handler[0]
    if handler is None or handler.filters or handler.level > _INFO or _record_factory() is not _LogRecord:
        return None
    taps: tuple[LineHandler, ...] = ()
    c: logging.Logger | None = logger
    while c is not None:
        if c.filters or not c.propagate:
            return None
        handlers: list[Any] = c.handlers
        for h in handlers:
            if h is handler and c.parent is None:
                continue
            if h in _taps and not h.filters and h.level <= _INFO:
                taps += (h,)
                continue
            return None
        c = c.parent
    return (handler, *taps)


def _only_handler(logger: logging.Logger) -> LineHandler | None:
    """The line handler if the short path applies to ``logger`` (see :func:`_route`)."""
    route = _route(logger)
    return route[0] if route is not None else None


class QuickLogger(logging.Logger):
    """A :class:`logging.Logger` with a short path for plain INFO lines; see the module docstring."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(_INFO):
            return
        extra = kwargs.get("extra") if len(kwargs) == 1 else None
        if (not kwargs or extra is not None) and not self.disabled:
            route = _route(self)
            if route is not None and not (len(args) == 1 and isinstance(args[0], Mapping)):
                try:
                    message = str(msg) % args if args else str(msg)
                except Exception:
                    pass  # Logger.info reports a bad format string the usual way
                else:
                    created = _time()
                    name = self.name
                    if route[0].emit_fields(created, _INFO, name, message, extra):
                        for tap in route[1:]:
                            tap.emit_fields(created, _INFO, name, message, extra)
                        return
        self._log(_INFO, msg, args, **kwargs)


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, created as a :class:`QuickLogger` if it does not exist yet."""
    manager = logging.Logger.manager
    saved = manager.loggerClass
    manager.setLoggerClass(QuickLogger)
    try:
        return logging.getLogger(name)
    finally:
        manager.loggerClass = saved
