"""Wake-on-ring and auto-sleep rules of the core."""

from __future__ import annotations

from typing import Any

from systemx.core import IdleTimer, SleepTimer, WakeTimer
from tests.unit.harness import Harness

HOOK = {"type": "webhook", "url": "http://hooks.example.net/wake", "timeout_seconds": 10}


def sleeper(h: Harness, name: str = "S", address: str = "agent@example.com", **extra: Any) -> None:
    reply = h.register(name, address, mode="wake_on_ring", wake_handler=HOOK, **extra)
    assert reply["type"] == "REGISTERED", reply


def test_profile_persisted_and_kept_after_disconnect() -> None:
    h = Harness()
    sleeper(h, metadata={"capabilities": ["chat"]})
    assert h.actions.profiles["agent@example.com"] == {
        "address": "agent@example.com",
        "handler": {**HOOK, "timeout_seconds": 10.0},
        "metadata": {"capabilities": ["chat"]},
    }
    h.close("S")
    assert h.x.health()["asleep"] == 1
    h.register("A", "a@example.com")
    h.send("A", {"type": "PRESENCE", "query": {"capabilities": ["chat"]}})
    result = h.frames("A")[-1]
    assert result["addresses"] == [
        {"address": "agent@example.com", "status": "asleep", "metadata": {"capabilities": ["chat"]}}
    ]


def test_dial_sleeping_wakes_then_rings_with_original_call() -> None:
    h = Harness()
    sleeper(h)
    h.send("S", {"type": "SLEEP_ACK"})
    assert h.closes("S") == [(4000, "sleep")]
    h.close("S")
    h.register("A", "a@example.com")
    h.send("A", {"type": "DIAL", "to": "agent@example.com", "metadata": {"subject": "wake up"}})
    assert h.frames("A") == [
        {"type": "RINGING", "call_id": "call-1", "to": "agent@example.com", "waking": True}
    ]
    (req,) = h.actions.wakes
    assert (req.address, req.call_id, req.caller) == ("agent@example.com", "call-1", "a@example.com")
    assert h.actions.timers[h.timer(WakeTimer, "agent@example.com")] == 10.0
    # The woken agent registers (without repeating its handler): the held RING arrives.
    assert h.register("S2", "agent@example.com")["type"] == "REGISTERED"
    assert h.frames("S2") == [
        {"type": "RING", "from": "a@example.com", "call_id": "call-1", "metadata": {"subject": "wake up"}}
    ]
    assert h.timer(WakeTimer, "agent@example.com") is None
    assert h.actions.cancelled_wakes == ["agent@example.com"]  # the wake is over
    h.send("S2", {"type": "ANSWER", "call_id": "call-1"})
    assert h.frames("A")[-1] == {"type": "CONNECTED", "call_id": "call-1", "to": "agent@example.com"}


def test_wake_timeout_busy_and_cancel() -> None:
    h = Harness()
    sleeper(h)
    h.close("S")
    h.register("A", "a@example.com")
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    h.frames("A")
    h.fire(h.timer(WakeTimer, "agent@example.com"))
    assert h.frames("A") == [
        {"type": "BUSY", "to": "agent@example.com", "reason": "timeout", "call_id": "call-1"}
    ]
    assert h.actions.cancelled_wakes == ["agent@example.com"]
    assert list(h.x.calls) == []


def test_wake_failed_busy() -> None:
    h = Harness()
    sleeper(h)
    h.close("S")
    h.register("A", "a@example.com")
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    h.frames("A")
    h.x.on_wake_failed("agent@example.com", "HTTP 500", h.now)
    assert h.frames("A") == [
        {"type": "BUSY", "to": "agent@example.com", "reason": "wake_failed", "call_id": "call-1"}
    ]
    assert h.timer(WakeTimer, "agent@example.com") is None


def test_two_callers_one_wake_queued_in_order() -> None:
    h = Harness()
    sleeper(h)
    h.close("S")
    h.register("A", "a@example.com")
    h.register("B", "b@example.com")
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    h.send("B", {"type": "DIAL", "to": "agent@example.com"})
    assert len(h.actions.wakes) == 1
    h.register("S2", "agent@example.com")
    rings = [f for f in h.frames("S2") if f["type"] == "RING"]
    assert [r["from"] for r in rings] == ["a@example.com"]
    h.send("S2", {"type": "ANSWER", "call_id": "call-1"})
    h.send("S2", {"type": "HANGUP", "call_id": "call-1"})
    rings = [f for f in h.frames("S2") if f["type"] == "RING"]
    assert [(r["from"], r["call_id"]) for r in rings] == [("b@example.com", "call-2")]


def test_caller_hangup_while_waking_drops_the_queued_call() -> None:
    h = Harness()
    sleeper(h)
    h.close("S")
    h.register("A", "a@example.com")
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    h.send("A", {"type": "HANGUP", "call_id": "call-1"})
    assert h.register("S2", "agent@example.com")["type"] == "REGISTERED"
    assert h.frames("S2") == []


def test_sleep_ack_needs_wake_mode() -> None:
    h = Harness()
    h.register("A", "a@example.com")
    h.send("A", {"type": "SLEEP_ACK"})
    assert h.frames("A")[-1]["type"] == "ERROR" and h.closes("A") == []


def test_spawn_refused_by_policy() -> None:
    h = Harness()
    reply = h.register(
        "A", "a@example.com", mode="wake_on_ring", wake_handler={"type": "spawn", "command": ["/bin/true"]}
    )
    assert reply["type"] == "REGISTER_FAILED" and reply["reason"] == "wake_handler_not_allowed"
    ok = h.register(
        "B", "b@spawn.test", mode="wake_on_ring", wake_handler={"type": "spawn", "command": ["/bin/true"]}
    )
    assert ok["type"] == "REGISTERED"
    # Stored by name, with the operator's timeout.
    stored = h.actions.profiles["b@spawn.test"]
    assert stored is not None
    assert stored["handler"] == {
        "type": "spawn",
        "handler": "true",
        "timeout_seconds": 30.0,
    }
    shell = h.register(
        "C",
        "c@spawn.test",
        mode="wake_on_ring",
        wake_handler={"type": "spawn", "command": ["/bin/sh", "-c", "id"]},
    )
    assert shell["type"] == "REGISTER_FAILED" and "matches no spawn handler" in shell["detail"]


def test_profiles_per_session_are_bounded() -> None:
    h = Harness(wake_max_profiles_per_session=2)
    for n in range(2):
        assert (
            h.register("S", f"a{n}@example.com", mode="wake_on_ring", wake_handler=HOOK)["type"]
            == "REGISTERED"
        )
    # Updating a profile it created is not a new one.
    assert h.register("S", "a1@example.com", mode="wake_on_ring", wake_handler=HOOK)["type"] == "REGISTERED"
    refused = h.register("S", "a2@example.com", mode="wake_on_ring", wake_handler=HOOK)
    assert refused["type"] == "REGISTER_FAILED" and refused["reason"] == "wake_profile_limit"
    assert "SYSTEMX_WAKE_MAX_PROFILES_PER_SESSION" in refused["detail"]
    assert set(h.actions.profiles) == {"a0@example.com", "a1@example.com"}
    # The refused REGISTER changed nothing: the session still holds its address.
    assert h.sessions["S"].address == "a1@example.com"
    # A plain registration needs no profile.
    assert h.register("S", "a3@example.com")["type"] == "REGISTERED"


def test_profiles_in_total_are_bounded() -> None:
    h = Harness(wake_max_profiles=2)
    sleeper(h, "S1", "a1@example.com")
    sleeper(h, "S2", "a2@example.com")
    refused = h.register("S3", "a3@example.com", mode="wake_on_ring", wake_handler=HOOK)
    assert refused["type"] == "REGISTER_FAILED" and refused["reason"] == "wake_profile_limit"
    assert "SYSTEMX_WAKE_MAX_PROFILES" in refused["detail"]
    # An existing profile can still be updated, and a forgotten one makes room.
    assert h.register("S1", "a1@example.com", mode="wake_on_ring", wake_handler=HOOK)["type"] == "REGISTERED"
    h.register("S2", "a2@example.com", mode="normal")
    assert h.register("S3", "a3@example.com", mode="wake_on_ring", wake_handler=HOOK)["type"] == "REGISTERED"


def test_mode_normal_forgets_profile() -> None:
    h = Harness()
    sleeper(h)
    h.register("S", "agent@example.com", mode="normal")
    assert h.actions.profiles["agent@example.com"] is None
    h.close("S")
    h.register("A", "a@example.com")
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    assert h.frames("A")[-1]["reason"] == "no_such_address"


def test_profiles_loaded_at_start() -> None:
    profile = {"address": "agent@example.com", "handler": HOOK, "metadata": {}}
    h = Harness(profiles={"agent@example.com": profile})
    h.register("A", "a@example.com")
    h.send("A", {"type": "DIAL", "to": "agent@example.com"})
    assert h.actions.wakes[0].address == "agent@example.com"


def test_auto_sleep_pending_then_sleep() -> None:
    h = Harness()
    sleeper(h)
    h.send("S", {"type": "STATUS", "auto_sleep": {"idle_timeout_seconds": 2, "wake_on_ring": True}})
    assert h.actions.timers[h.timer(IdleTimer, h.sessions["S"])] == 2
    h.fire(h.timer(IdleTimer, h.sessions["S"]))
    assert h.frames("S")[-1] == {"type": "SLEEP_PENDING", "reason": "idle_timeout", "seconds_until_sleep": 2}
    h.fire(h.timer(SleepTimer, h.sessions["S"]))
    assert h.closes("S") == [(4000, "sleep")]
    assert h.x.health()["asleep"] == 1


def test_auto_sleep_cancelled_by_activity() -> None:
    h = Harness()
    sleeper(h)
    s = h.sessions["S"]
    h.send("S", {"type": "STATUS", "auto_sleep": {"idle_timeout_seconds": 2}})
    h.fire(h.timer(IdleTimer, s))
    assert h.frames("S")[-1]["type"] == "SLEEP_PENDING"
    h.now += 0.5
    h.send("S", {"type": "HEARTBEAT"})
    h.fire(h.timer(SleepTimer, s), advance=1.5)
    assert h.closes("S") == []
    assert h.timer(IdleTimer, s) is not None


def test_auto_sleep_deferred_while_in_call() -> None:
    h = Harness()
    sleeper(h)
    h.register("A", "a@example.com")
    s = h.sessions["S"]
    h.send("S", {"type": "STATUS", "auto_sleep": {"idle_timeout_seconds": 1}})
    h.connect("A", "S")
    h.fire(h.timer(IdleTimer, s), advance=5)
    assert all(f["type"] != "SLEEP_PENDING" for f in h.frames("S"))
    assert h.timer(IdleTimer, s) is not None


def test_a_call_from_a_trunk_wakes_a_sleeping_agent() -> None:
    h = Harness()
    sleeper(h)
    h.close("S")
    h.open("P")
    h.send("P", {"type": "REGISTER_PBX", "domain": "branch.test", "routes": ["*@branch.test"]})
    h.frames("P")
    h.send("P", {"type": "DIAL_FORWARD", "from": "a@branch.test", "to": "agent@example.com", "call_id": "c9"})
    (wake,) = h.actions.wakes
    assert (wake.address, wake.call_id, wake.caller) == ("agent@example.com", "c9", "a@branch.test")
    assert h.frames("P") == []  # nothing until the agent rings (no RINGING on a trunk)
    h.register("S2", "agent@example.com", mode="wake_on_ring", wake_handler=HOOK)
    ring = [f for f in h.frames("S2") if f["type"] == "RING"]
    assert ring == [{"type": "RING", "from": "a@branch.test", "call_id": "c9"}]
    assert h.frames("P") == [{"type": "RING", "call_id": "c9", "from": "agent@example.com"}]
