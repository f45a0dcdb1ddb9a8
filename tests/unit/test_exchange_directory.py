"""A directory (cluster or federation) plugs in as a lookup action and an answer event."""

from __future__ import annotations

import msgspec
import pytest

from systemx.core import SWEEP, Exchange, RingTimer
from systemx.core.actions import WakeProfile
from tests.unit.harness import Harness


def directory_harness() -> Harness:
    h = Harness()
    h.x = Exchange(h.settings.core_config(), h.actions, new_id=h._id, directory=True)
    h.register("A", "a@example.com")
    return h


def test_unknown_address_is_looked_up_and_a_remote_holder_rings() -> None:
    h = directory_harness()
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example", "ringing": True})
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


# --------------------------------------------------------------------------
# Wake-on-ring in a cluster (the directory decides whether a sleeper is awake on another node)

HOOK = {"type": "webhook", "url": "https://hooks.example.com/wake", "timeout_seconds": 10}


def sleeper_harness() -> Harness:
    h = directory_harness()
    h.x.wake.load(msgspec.convert({"address": "agent@example.com", "handler": HOOK}, WakeProfile))
    h.register("B", "b@example.com")
    return h


def test_a_dial_to_a_sleeper_asks_the_directory_before_ringing_or_waking() -> None:
    h = sleeper_harness()
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    h.send("B", {"type": "DIAL", "to": "agent@example.com"})
    assert h.frames("A") == [] and h.frames("B") == []
    assert h.actions.lookups == ["agent@example.com"] and h.actions.wakes == []
    h.x.on_located("agent@example.com", None, h.now)
    ringing = {"type": "RINGING", "to": "agent@example.com", "waking": True}
    assert h.frames("A") == [{**ringing, "call_id": "call-1"}]
    assert h.frames("B") == [{**ringing, "call_id": "call-2"}]
    assert [w.call_id for w in h.actions.wakes] == ["call-1"]
    assert h.timer(RingTimer, "call-1") is None, "the wake timeout runs, not the ring timeout"
    # Dialled again while the wake runs: RINGING at once, no second lookup or wake.
    h.register("C", "c@example.com")
    h.send("C", {"type": "DIAL", "to": "agent@example.com"})
    assert h.frames("C") == [{**ringing, "call_id": "call-3"}]
    assert len(h.actions.lookups) == 1 and len(h.actions.wakes) == 1


def test_a_sleeper_awake_on_another_node_is_dialled_there_without_a_wake() -> None:
    h = sleeper_harness()
    h.sessions["L"] = h.x.open_node("n2", "L", h.now)
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    h.x.on_located("agent@example.com", "n2", h.now)
    (ringing,) = h.frames("A")
    assert (ringing["type"], "waking" in ringing) == ("RINGING", False)
    call_id = ringing["call_id"]
    forward = [(f["type"], f["to"], f["call_id"]) for f in h.frames("L")]
    assert forward == [("DIAL_FORWARD", "agent@example.com", call_id)]
    assert h.actions.wakes == []
    assert h.timer(RingTimer, call_id) is not None


def test_woken_on_another_node_the_held_calls_go_there() -> None:
    h = sleeper_harness()
    h.sessions["L"] = h.x.open_node("n2", "L", h.now)
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    h.x.on_located("agent@example.com", None, h.now)
    call_id = h.frames("A")[0]["call_id"]
    assert h.x.health()["asleep"] == 1
    h.x.on_woken("agent@example.com", "n2", h.now)
    assert [(f["type"], f["call_id"]) for f in h.frames("L")] == [("DIAL_FORWARD", call_id)]
    assert h.actions.cancelled_wakes == ["agent@example.com"]
    assert not h.x.wake.is_waking("agent@example.com")
    assert h.timer(RingTimer, call_id) is not None
    # Shown awake there: not asleep here.
    assert h.x.health()["asleep"] == 0


def test_a_sleeper_registering_and_sleeping_here_is_told_to_the_cluster() -> None:
    h = sleeper_harness()
    h.register("S", "agent@example.com")
    assert h.actions.woken == ["agent@example.com"]
    h.send("S", {"type": "SLEEP_ACK"})
    assert h.actions.slept_ == ["agent@example.com"]


def test_a_failed_wake_elsewhere_is_busy_wake_failed_here() -> None:
    h = sleeper_harness()
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    h.x.on_located("agent@example.com", None, h.now)
    h.frames("A")
    h.x.on_wake_failed("agent@example.com", "HTTP 500", h.now)
    assert h.frames("A") == [
        {"type": "BUSY", "to": "agent@example.com", "reason": "wake_failed", "call_id": "call-1"}
    ]
