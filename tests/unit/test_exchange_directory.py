"""A directory (cluster or federation) plugs in as a lookup action and an answer event."""

from __future__ import annotations

import pytest

from systemx.core import SWEEP, Exchange, RingTimer
from tests.unit.harness import Harness


def directory_harness() -> Harness:
    h = Harness()
    h.x = Exchange(h.settings.core_config(), h.actions, new_id=h._id, directory=True)
    h.register("A", "a@example.com")
    return h


def test_unknown_address_is_looked_up_and_a_remote_holder_rings() -> None:
    h = directory_harness()
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example"})
    assert h.frames("A") == [{"type": "RINGING", "call_id": "call-1", "to": "far@elsewhere.example"}]
    assert h.actions.lookups == ["far@elsewhere.example"]
    remote = h.x.on_lookup_result("far@elsewhere.example", "R", h.now)
    assert remote is not None and remote.remote
    h.sessions["R"] = remote
    assert h.frames("R") == [{"type": "RING", "from": "a@example.com", "call_id": "call-1"}]
    h.send("R", {"type": "ANSWER", "call_id": "call-1"})
    assert h.frames("A") == [
        {"type": "RINGING", "call_id": "call-1", "to": "far@elsewhere.example"},
        {"type": "CONNECTED", "call_id": "call-1", "to": "far@elsewhere.example"},
    ]
    h.fire(SWEEP, advance=3600)
    assert h.closes("R") == []


def test_lookup_miss_is_busy_no_such_address() -> None:
    h = directory_harness()
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example"})
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example"})
    assert h.actions.lookups == ["far@elsewhere.example"]
    h.frames("A")
    h.x.on_lookup_result("far@elsewhere.example", None, h.now)
    assert [f["reason"] for f in h.frames("A")] == ["no_such_address", "no_such_address"]
    assert list(h.x.calls) == []


def test_lookup_counts_towards_ring_timeout() -> None:
    h = directory_harness()
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example"})
    h.frames("A")
    h.fire(h.timer(RingTimer, "call-1"))
    assert h.frames("A") == [
        {"type": "BUSY", "to": "far@elsewhere.example", "reason": "timeout", "call_id": "call-1"}
    ]


def test_in_memory_default_never_looks_up() -> None:
    h = Harness()
    h.register("A", "a@example.com")
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example"})
    assert h.frames("A")[-1]["reason"] == "no_such_address"
    assert h.actions.lookups == []


def remote_call(h: Harness) -> str:
    """A dials far@elsewhere.example, the directory finds it behind R, R answers."""
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example"})
    remote = h.x.on_lookup_result("far@elsewhere.example", "R", h.now)
    assert remote is not None
    h.sessions["R"] = remote
    call_id = h.frames("R")[0]["call_id"]
    h.send("R", {"type": "ANSWER", "call_id": call_id})
    assert h.frames("A")[-1]["type"] == "CONNECTED"
    return str(call_id)


@pytest.mark.parametrize("who", ["A", "R"])
def test_remote_holder_is_released_when_its_last_call_ends(who: str) -> None:
    h = directory_harness()
    call_id = remote_call(h)
    assert h.x.health()["registered"] == 2
    h.send(who, {"type": "HANGUP", "call_id": call_id})
    peer = "R" if who == "A" else "A"
    assert h.frames(peer) == [{"type": "HANGUP", "call_id": call_id, "reason": "normal"}]
    assert h.x.health() == {**h.x.health(), "sessions": 1, "registered": 1, "calls": 0}
    assert h.x.session_for("far@elsewhere.example") is None
    # The address is free for a local agent, and frames still routed for the old holder are ignored.
    assert h.register("L", "far@elsewhere.example")["type"] == "REGISTERED"
    h.send("R", {"type": "DIAL", "to": "a@example.com"})
    assert h.frames("A") == []
    assert h.frames("R") == []


def test_a_new_dial_after_the_release_asks_the_directory_again() -> None:
    h = directory_harness()
    call_id = remote_call(h)
    h.send("A", {"type": "HANGUP", "call_id": call_id})
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example"})
    assert h.actions.lookups == ["far@elsewhere.example", "far@elsewhere.example"]


def test_remote_holder_with_queued_calls_stays_until_the_last_ends() -> None:
    h = directory_harness()
    h.register("B", "b@example.com")
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example"})
    h.send("B", {"type": "DIAL", "to": "far@elsewhere.example"})
    remote = h.x.on_lookup_result("far@elsewhere.example", "R", h.now)
    assert remote is not None
    h.sessions["R"] = remote
    first, second = h.frames("A")[0]["call_id"], h.frames("B")[0]["call_id"]
    assert [f["call_id"] for f in h.frames("R")] == [first]
    h.send("R", {"type": "HANGUP", "call_id": first})
    assert [f["call_id"] for f in h.frames("R")] == [second]
    assert h.x.session_for("far@elsewhere.example") is remote
    h.send("R", {"type": "HANGUP", "call_id": second})
    assert h.x.session_for("far@elsewhere.example") is None
    assert h.x.health()["sessions"] == 2


def test_an_answer_after_the_waiting_calls_ended_binds_nothing() -> None:
    h = directory_harness()
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example"})
    h.fire(h.timer(RingTimer, "call-1"))
    assert h.x.on_lookup_result("far@elsewhere.example", "R", h.now) is None
    assert h.x.session_for("far@elsewhere.example") is None
    assert h.x.health() == {**h.x.health(), "sessions": 1, "registered": 1}
