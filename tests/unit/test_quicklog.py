"""QuickLogger: the short INFO path writes what logging would, and steps aside for anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from systemx.config import Settings
from systemx.logsetup import configure_logging
from systemx.quicklog import QuickLogger, _only_handler, get_logger, set_line_handler

_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[(\w+)\] (.*)$")


@contextlib.contextmanager
def _only_ours(log_format: str = "text") -> Iterator[io.StringIO]:
    """SystemX's handler alone on the root logger (pytest adds its own for each test phase)."""
    root = logging.getLogger()
    others = [h for h in root.handlers if h.get_name() != "systemx"]
    for handler in others:
        root.removeHandler(handler)
    out = io.StringIO()
    configure_logging(dataclasses.replace(Settings(), log_level="info", log_format=log_format), out)
    try:
        yield out
    finally:
        for handler in [h for h in root.handlers if h.get_name() == "systemx"]:
            root.removeHandler(handler)
            handler.close()
        set_line_handler(None)
        root.setLevel(logging.WARNING)
        logging.getLogger("picows").setLevel(logging.NOTSET)
        for handler in others:
            root.addHandler(handler)


@pytest.fixture
def log() -> QuickLogger:
    logger = get_logger("systemx.test.quick")
    assert isinstance(logger, QuickLogger)
    return logger


class _Tap(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_short_path_writes_the_same_line_as_a_log_record(log: QuickLogger) -> None:
    plain = logging.getLogger("systemx.test.plain")
    assert not isinstance(plain, QuickLogger)
    with _only_ours() as out:
        assert _only_handler(log) is not None  # the short path is the one under test
        log.info("Call ended: %s (duration %.3fs, reason %s)", "c-1", 0.5, "normal")
        plain.info("Call ended: %s (duration %.3fs, reason %s)", "c-1", 0.5, "normal")
        log.info("no arguments: 100%")
    fast, slow, bare = out.getvalue().splitlines()
    fast_match, slow_match = _TEXT_LINE.match(fast), _TEXT_LINE.match(slow)
    assert fast_match is not None and slow_match is not None
    expected = ("INFO", "Call ended: c-1 (duration 0.500s, reason normal)")
    assert fast_match.groups() == slow_match.groups() == expected
    assert bare.endswith(" [INFO] no arguments: 100%")


def test_short_path_json_matches_a_log_record(log: QuickLogger) -> None:
    with _only_ours("json") as out:
        assert _only_handler(log) is not None
        log.info("hello %s", "there")
        logging.getLogger("systemx.test.plain").info("hello %s", "there")
    fast, slow = (json.loads(line) for line in out.getvalue().splitlines())
    assert fast.pop("ts")[-1] == slow.pop("ts")[-1] == "Z"
    assert fast == {"level": "INFO", "logger": "systemx.test.quick", "msg": "hello there"}
    assert slow == {"level": "INFO", "logger": "systemx.test.plain", "msg": "hello there"}


def test_extra_fields_keep_the_short_path_and_reach_the_json_line(log: QuickLogger) -> None:
    fields = {"event": "call_started", "call_id": "c-1", "address": "a@x.com", "to": "b@y.com"}
    with _only_ours("json") as out:
        handler = _only_handler(log)
        assert handler is not None
        calls: list[object] = []
        real = handler.emit_fields

        def spy(*args: object) -> bool:
            calls.append(args)
            return real(*args)  # type: ignore[arg-type]

        handler.emit_fields = spy  # type: ignore[method-assign,assignment]
        try:
            log.info("Call initiated: %s → %s", "a@x.com", "b@y.com", extra=fields)
        finally:
            del handler.emit_fields
        logging.getLogger("systemx.test.plain").info(
            "Call initiated: %s → %s", "a@x.com", "b@y.com", extra=fields
        )
        # A field never replaces the line's own keys.
        log.info("plain", extra={"msg_id": 1, "level": "nope"})
    assert len(calls) == 1  # the extra fields did not cost the short path
    fast, slow, third = (json.loads(line) for line in out.getvalue().splitlines())
    fast.pop("ts"), slow.pop("ts")
    assert fast == {
        "level": "INFO",
        "logger": "systemx.test.quick",
        "msg": "Call initiated: a@x.com → b@y.com",
        **fields,
    }
    assert slow == {**fast, "logger": "systemx.test.plain"}
    assert third["level"] == "INFO" and third["msg_id"] == 1


class _FieldsTap(logging.Handler):
    """A handler that takes the short path's lines as fields (as the log stream's does)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.fields: list[tuple[Any, ...]] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def emit_fields(self, *fields: Any) -> bool:
        self.fields.append(fields)
        return True


def test_a_registered_tap_keeps_the_short_path(log: QuickLogger) -> None:
    from systemx.quicklog import add_line_tap, remove_line_tap

    tap = _FieldsTap()
    holder = logging.getLogger("systemx")
    with _only_ours() as out:
        holder.addHandler(tap)
        try:
            assert _only_handler(log) is None  # an unknown handler: the full path
            log.info("before %s", "registration")
            add_line_tap(tap)
            try:
                assert _only_handler(log) is not None
                log.info("after %s", "registration", extra={"event": "x"})
            finally:
                remove_line_tap(tap)
        finally:
            holder.removeHandler(tap)
    assert [r.getMessage() for r in tap.records] == ["before registration"]
    assert [f[1:4] for f in tap.fields] == [(logging.INFO, "systemx.test.quick", "after registration")]
    assert out.getvalue().endswith("[INFO] after registration\n")


def test_extra_fields_stay_out_of_the_text_line(log: QuickLogger) -> None:
    with _only_ours() as out:
        log.info("Connection registered: %s", "a@x.com", extra={"event": "registered", "address": "a@x.com"})
    assert out.getvalue().endswith("[INFO] Connection registered: a@x.com\n")


@pytest.mark.parametrize("where", ["", "systemx.test"], ids=["root", "parent"])
def test_another_handler_gets_the_record(log: QuickLogger, where: str) -> None:
    tap = _Tap()
    holder = logging.getLogger(where or None)
    with _only_ours() as out:
        holder.addHandler(tap)
        try:
            assert _only_handler(log) is None
            log.info("seen by %s", "both")
        finally:
            holder.removeHandler(tap)
    assert [r.getMessage() for r in tap.records] == ["seen by both"]
    assert out.getvalue().endswith("[INFO] seen by both\n")


def test_filters_are_honoured(log: QuickLogger) -> None:
    def drop(record: logging.LogRecord) -> bool:
        return "secret" not in record.getMessage()

    with _only_ours() as out:
        log.addFilter(drop)
        try:
            log.info("a secret")
            log.info("public")
        finally:
            log.removeFilter(drop)
        handler = next(h for h in logging.getLogger().handlers if h.get_name() == "systemx")
        handler.addFilter(drop)
        try:
            log.info("another secret")
        finally:
            handler.removeFilter(drop)
    assert [line.split("] ", 1)[1] for line in out.getvalue().splitlines()] == ["public"]


def test_a_record_factory_sees_every_record(log: QuickLogger) -> None:
    seen: list[str] = []
    original = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = original(*args, **kwargs)
        seen.append(record.getMessage())
        return record

    with _only_ours() as out:
        logging.setLogRecordFactory(factory)
        try:
            log.info("made by the factory")
        finally:
            logging.setLogRecordFactory(original)
    assert seen == ["made by the factory"]
    assert out.getvalue().endswith("made by the factory\n")


def test_extra_and_levels(log: QuickLogger) -> None:
    with _only_ours("json") as out:
        log.info("with extra", extra={"port": 8080})
        log.debug("below the level")
        log.setLevel(logging.WARNING)
        try:
            log.info("below the logger's level")
        finally:
            log.setLevel(logging.NOTSET)
    (record,) = (json.loads(line) for line in out.getvalue().splitlines())
    assert record["msg"] == "with extra" and record["port"] == 8080


def test_without_the_handler_it_is_plain_logging(log: QuickLogger) -> None:
    tap = _Tap()
    root = logging.getLogger()
    root.addHandler(tap)
    log.setLevel(logging.INFO)
    try:
        assert _only_handler(log) is None
        log.info("captured %d", 1)
    finally:
        log.setLevel(logging.NOTSET)
        root.removeHandler(tap)
    assert [r.getMessage() for r in tap.records] == ["captured 1"]


def test_a_bad_format_string_is_reported_not_raised(
    log: QuickLogger, capsys: pytest.CaptureFixture[str]
) -> None:
    with _only_ours() as out:
        log.info("two %s %s", "only-one")
        log.info("still logging")
    assert out.getvalue().endswith("[INFO] still logging\n")
    assert "Logging error" in capsys.readouterr().err


def test_an_existing_plain_logger_is_kept() -> None:
    plain = logging.getLogger("systemx.test.existing")
    assert get_logger("systemx.test.existing") is plain
    assert not isinstance(logging.getLogger("systemx.test.newer"), QuickLogger)


def test_lines_held_for_a_closed_loop_go_out_with_the_next_line(log: QuickLogger) -> None:
    with _only_ours() as out:
        loop = asyncio.new_event_loop()
        try:
            loop.call_soon(loop.stop)
            loop.call_soon(log.info, "logged as the loop stopped")
            loop.run_forever()
        finally:
            loop.close()
        assert out.getvalue() == ""  # its flush was due on the next pass, which never came
        log.info("after the loop")
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["logged as the loop stopped", "after the loop"]
