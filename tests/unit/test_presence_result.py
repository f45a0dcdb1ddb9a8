"""PRESENCE answers are bounded in bytes and in rate, per session."""

from __future__ import annotations

import msgspec
import pytest

from systemx.core.presence import presence_result as _presence_result
from systemx.protocol import messages as m
from tests.unit.harness import Harness


def rows(n: int, pad: int) -> list[tuple[str, str, dict[str, object]]]:
    return [(f"a{i}@example.com", "available", {"note": "x" * (pad + i)}) for i in range(n)]


def test_an_untruncated_result_is_the_plain_encoding() -> None:
    for entries in (rows(0, 0), rows(1, 3), rows(5, 10)):
        frame = _presence_result(entries, 1 << 20)
        expected = m.PresenceResult(addresses=[m.PresenceEntry(a, st, md) for a, st, md in entries])
        assert frame == m.encode(expected)


@pytest.mark.parametrize("max_bytes", [1024, 1100, 1500, 2048, 3000, 4096, 5000])
def test_the_longest_prefix_that_fits_is_kept_and_marked(max_bytes: int) -> None:
    entries = rows(40, 50)
    frame = _presence_result(entries, max_bytes)
    assert len(frame) <= max_bytes
    decoded = msgspec.json.decode(frame)
    kept = len(decoded["addresses"])
    expected = [{"address": a, "status": st, "metadata": md} for a, st, md in entries[:kept]]
    assert decoded["addresses"] == expected
    assert decoded["truncated"] is True
    # One more entry would not have fitted.
    assert len(_presence_result(entries[: kept + 1], 1 << 20)) + len(',"truncated":true') > max_bytes


def test_a_first_entry_larger_than_the_bound_gives_an_empty_truncated_result() -> None:
    frame = _presence_result([("big@example.com", "available", {"blob": "x" * 5000})], 1024)
    assert msgspec.json.decode(frame) == {"type": "PRESENCE_RESULT", "addresses": [], "truncated": True}


def test_presence_rate_limit_window() -> None:
    h = Harness(presence_max_queries=2, presence_window_ms=1000)
    h.register("A", "a@example.com")
    h.register("B", "b@example.com")
    for _ in range(2):
        h.send("A", {"type": "PRESENCE"})
    assert [f["type"] for f in h.frames("A")] == ["PRESENCE_RESULT", "PRESENCE_RESULT"]
    h.now += 0.25
    h.send("A", {"type": "PRESENCE"})
    assert h.frames("A") == [
        {
            "type": "ERROR",
            "reason": "rate_limited",
            "context": "PRESENCE",
            "detail": "Too many PRESENCE queries: at most 2 per 1000 ms; retry in 750 ms",
            "limit": 2,
            "retry_after_ms": 750,
        }
    ]
    # Another session has its own window.
    h.send("B", {"type": "PRESENCE"})
    assert [f["type"] for f in h.frames("B")] == ["PRESENCE_RESULT"]
    h.now += 0.75
    h.send("A", {"type": "PRESENCE"})
    assert [f["type"] for f in h.frames("A")] == ["PRESENCE_RESULT"]


def test_presence_rate_limit_disabled() -> None:
    h = Harness(presence_max_queries=0)
    h.register("A", "a@example.com")
    for _ in range(50):
        h.send("A", {"type": "PRESENCE"})
    assert {f["type"] for f in h.frames("A")} == {"PRESENCE_RESULT"}
