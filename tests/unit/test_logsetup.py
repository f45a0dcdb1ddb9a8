"""The log handler: one write per event-loop pass, ordering, formats."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from collections.abc import Iterator

import pytest

from systemx.config import Settings
from systemx.logsetup import configure_logging


class _CountingStream(io.StringIO):
    """A real text stream that also counts the writes it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def _unconfigure() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "systemx"]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.WARNING)
    logging.getLogger("picows").setLevel(logging.NOTSET)


@pytest.fixture
def stream() -> Iterator[_CountingStream]:
    out = _CountingStream()
    configure_logging(dataclasses.replace(Settings(), log_level="info"), out)
    yield out
    _unconfigure()


async def test_lines_of_one_pass_are_written_at_once(stream: _CountingStream) -> None:
    log = logging.getLogger("systemx.test")
    for i in range(5):
        log.info("line %d", i)
    assert stream.writes == 0  # nothing until the pass ends
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert stream.writes == 1
    lines = stream.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [f"line {i}" for i in range(5)]
    assert all("[INFO]" in line for line in lines)


async def test_a_warning_is_written_at_once_after_what_came_before(stream: _CountingStream) -> None:
    log = logging.getLogger("systemx.test")
    log.info("first")
    log.warning("second")
    assert stream.writes == 1
    assert [line.split("] ", 1)[1] for line in stream.getvalue().splitlines()] == ["first", "second"]
    assert "[WARN] second" in stream.getvalue()


def test_outside_a_loop_every_record_is_written(stream: _CountingStream) -> None:
    log = logging.getLogger("systemx.test")
    log.info("one")
    log.info("two")
    assert stream.writes == 2
    assert stream.getvalue().endswith("two\n")


def test_debug_is_filtered_at_info(stream: _CountingStream) -> None:
    logging.getLogger("systemx.test").debug("hidden")
    assert stream.getvalue() == ""


async def test_json_lines_carry_extra_fields() -> None:
    out = _CountingStream()
    configure_logging(dataclasses.replace(Settings(), log_level="info", log_format="json"), out)
    try:
        logging.getLogger("systemx.test").info("hello %s", "there", extra={"port": 8080})
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
        assert record["msg"] == "hello there"
        assert record["level"] == "INFO"
        assert record["logger"] == "systemx.test"
        assert record["port"] == 8080
    finally:
        _unconfigure()


def test_timestamps_are_utc_to_the_millisecond_however_often_asked() -> None:
    from systemx.logsetup import _timestamp

    assert _timestamp(1767225600.123) == "2026-01-01T00:00:00.123Z"
    assert _timestamp(1767225600.123) == "2026-01-01T00:00:00.123Z"  # the same millisecond again
    assert _timestamp(1767225600.9999) == "2026-01-01T00:00:00.999Z"
    assert _timestamp(1767225601.0) == "2026-01-01T00:00:01.000Z"
    assert _timestamp(1767225599.5) == "2025-12-31T23:59:59.500Z"  # back in time: no stale cache
    assert _timestamp(0.0) == "1970-01-01T00:00:00.000Z"
