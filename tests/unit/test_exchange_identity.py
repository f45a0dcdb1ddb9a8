"""One line, one identity: the domain's case never splits presence rows, profiles or wakes."""

from __future__ import annotations

from tests.unit.harness import Harness

HOOK = {"type": "webhook", "url": "http://hooks.example.net/wake", "timeout_seconds": 10}


def test_woken_agent_registering_in_another_case_ends_the_wake_it_was_started_for() -> None:
    h = Harness()
    h.register("S", "agent@example.com", mode="wake_on_ring", wake_handler=HOOK)
    h.send("S", {"type": "SLEEP_ACK"})
    h.close("S")
    h.register("A", "a@example.com")
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    assert [w.address for w in h.actions.wakes] == ["agent@example.com"]
    assert h.register("S2", "agent@EXAMPLE.com")["type"] == "REGISTERED"
    assert [f["type"] for f in h.frames("S2")] == ["RING"]
    # The driver tracks the wake under the address it was asked to wake.
    assert h.actions.cancelled_wakes == ["agent@example.com"]
    # From now on the line is woken and shown as it last registered.
    assert h.actions.profiles["agent@example.com"] == {
        "address": "agent@EXAMPLE.com",
        "handler": {**HOOK, "timeout_seconds": 10.0},
        "metadata": {},
    }

