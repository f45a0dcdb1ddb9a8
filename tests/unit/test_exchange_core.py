"""The core's internals that the wire does not show: timer ownership, the events port, session states."""

from __future__ import annotations

import pytest

from systemx.core import Exchange, RingTimer, Session, SessionState
from systemx.core.records import Disposition, EndedBy, RecordingRecorder
from systemx.core.session import ALLOWED, NEEDS_REGISTRATION
from systemx.protocol import messages as m
from tests.unit.harness import Harness


def recorded() -> tuple[Harness, RecordingRecorder]:
    h = Harness()
    rec = RecordingRecorder()
    h.x = Exchange(h.settings.core_config(), h.actions, new_id=h._id, recorder=rec)
    return h, rec


def test_a_timer_key_nobody_owns_raises() -> None:
    h = Harness()
    with pytest.raises(TypeError, match="no component owns timers of type tuple"):
        h.x.on_timer(("ring", "call-1"), h.now)


def test_an_answered_call_is_recorded_once_with_its_times() -> None:
    h, rec = recorded()
    h.register("A", "alice@example.com")
    h.register("B", "bob@example.com")
    h.now += 1
    call_id = h.connect("A", "B")
    h.now += 2
    h.send("B", {"type": "HANGUP", "call_id": call_id})
    assert rec.names() == ["bound", "bound", "call_started", "call_answered", "call_ended"]
    [record] = rec.records
    assert (record.caller, record.callee, record.disposition, record.ended_by, record.reason) == (
        "alice@example.com",
        "bob@example.com",
        Disposition.ANSWERED,
        EndedBy.CALLEE,
        "normal",
    )
    assert record.talk_seconds == 2.0 and record.msgs_up == 0


def test_a_call_nobody_answers_is_recorded_as_no_answer_by_the_exchange() -> None:
    h, rec = recorded()
    h.register("A", "alice@example.com")
    h.register("B", "bob@example.com")
    h.send("A", {"type": "DIAL", "to": "bob@example.com"})
    h.fire(h.timer(RingTimer, "call-1"))
    [record] = rec.records
    assert (record.disposition, record.ended_by, record.ring_seconds) == (
        Disposition.NO_ANSWER,
        EndedBy.EXCHANGE,
        30.0,
    )


def test_unbinding_is_recorded_with_its_reason() -> None:
    h, rec = recorded()
    h.register("A", "alice@example.com")
    h.close("A")
    assert rec.events[-1][0] == "unbound" and rec.events[-1][1:4] == (
        "alice@example.com",
        h.sessions["A"].session_id,
        "disconnected",
    )


def state(s: Session) -> SessionState:
    return s.state


def test_session_states_and_what_each_allows() -> None:
    h = Harness()
    s = h.open("A")
    assert state(s) is SessionState.OPEN
    assert not NEEDS_REGISTRATION.keys() & ALLOWED[SessionState.OPEN]
    assert m.Register in ALLOWED[SessionState.OPEN] and m.Dial in ALLOWED[SessionState.REGISTERED]
    h.send("A", {"type": "JOIN", "party": "room@example.com", "create_if_missing": True})
    assert h.frames("A")[-1] == {
        "type": "ERROR",
        "reason": "not_registered",
        "context": "JOIN",
        "detail": "REGISTER an address before JOIN",
    }
    h.register("A", "alice@example.com")
    assert state(s) is SessionState.REGISTERED
    h.close("A")
    assert state(s) is SessionState.CLOSED


def test_a_broadcast_is_connected_through_the_transition_table() -> None:
    h = Harness()
    h.register("C", "caster@example.com", concurrency="broadcast")
    h.register("L", "listener@example.com")
    h.send("L", {"type": "DIAL", "to": "caster@example.com"})
    [call] = list(h.x.calls)
    assert call.listeners is not None and call.state.value == "connected" and call.rang_at == h.now


def test_refused_requests_are_recorded_with_their_wire_reason() -> None:
    h, rec = recorded()
    h.open("A")
    h.send("A", {"type": "DIAL", "to": "bob@example.com"})
    h.register("A", "alice@example.com")
    h.register("B", "alice@example.com")
    h.send("A", {"type": "DIAL", "to": "nobody@example.com"})
    h.send("A", {"type": "JOIN", "party": "alice@example.com", "create_if_missing": True})
    refused = [event[1:4] for event in rec.events if event[0] == "refused"]
    assert refused == [
        ("DIAL", "not_registered", None),
        ("REGISTER", "address_in_use", "alice@example.com"),
        ("DIAL", "no_such_address", "nobody@example.com"),
        ("JOIN", "address_in_use", "alice@example.com"),
    ]
