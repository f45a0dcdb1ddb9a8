"""A directory (cluster or federation) plugs in as a lookup action and an answer event."""

from __future__ import annotations

from systemx.core import Exchange
from tests.unit.harness import Harness


def directory_harness() -> Harness:
    h = Harness()
    h.x = Exchange(h.settings, h.actions, new_id=h._id, directory=True)
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
    h.fire(("sweep",), advance=3600)
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
    h.fire(("ring", "call-1"))
    assert h.frames("A") == [
        {"type": "BUSY", "to": "far@elsewhere.example", "reason": "timeout", "call_id": "call-1"}
    ]


def test_in_memory_default_never_looks_up() -> None:
    h = Harness()
    h.register("A", "a@example.com")
    h.send("A", {"type": "DIAL", "to": "far@elsewhere.example"})
    assert h.frames("A")[-1]["reason"] == "no_such_address"
    assert h.actions.lookups == []
