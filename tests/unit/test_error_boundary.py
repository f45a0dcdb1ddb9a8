"""The core's error boundary: a handler that raises costs its own frame an ERROR, nothing more.

The exchange's ports are where the outside world can fail under it (a store that
cannot write, a send on a broken connection); here the profile store raises, as a
full disk would, and the exchange must answer, count, log once and carry on.
"""

from __future__ import annotations

import logging

import pytest

from systemx.core.actions import WakeProfile
from tests.unit.harness import Harness

WAKE = {"mode": "wake_on_ring", "wake_handler": {"type": "webhook", "url": "https://hooks.example.com/wake"}}


class DiskFull(OSError):
    pass


@pytest.fixture
def h() -> Harness:
    return Harness()


def failing_store(h: Harness) -> None:
    def persist_profile(key: str, profile: WakeProfile | None) -> None:
        raise DiskFull("no space left on device")

    h.actions.persist_profile = persist_profile  # type: ignore[method-assign]


def test_a_raising_handler_is_answered_counted_and_logged_once(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.register("B", "bob@example.com")
    failing_store(h)
    h.open("A")
    with caplog.at_level(logging.ERROR, logger="systemx.exchange"):
        for _ in range(3):
            h.send("A", {"type": "REGISTER", "address": "agent@example.com", **WAKE})
    errors = [f for f in h.frames("A") if f["type"] == "ERROR"]
    assert (
        errors
        == [{"type": "ERROR", "reason": "internal_error", "context": "REGISTER", "detail": "internal error"}]
        * 3
    )
    assert h.x.health()["internal_errors"] == 3
    records = [r for r in caplog.records if "Internal error" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None
    assert "REGISTER" in records[0].getMessage() and h.sessions["A"].session_id in records[0].getMessage()
    assert h.closes("A") == [] and h.closes("B") == []
    h.send("A", {"type": "HEARTBEAT"})
    assert h.frames("A")[-1]["type"] == "HEARTBEAT_ACK"
    h.send("B", {"type": "HEARTBEAT"})
    assert h.frames("B")[-1]["type"] == "HEARTBEAT_ACK"


def test_health_counts_no_internal_errors_by_default(h: Harness) -> None:
    assert h.x.health()["internal_errors"] == 0
