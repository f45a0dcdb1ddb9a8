"""Property tests: no input crashes the core, and no sequence leaves a call half-ended."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from systemx.core import CallState, Exchange, RingTimer, SessionState, Sweep, WakeTimer
from tests.unit.harness import Harness

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
TYPES = [
    "REGISTER",
    "UNREGISTER",
    "STATUS",
    "HEARTBEAT",
    "DIAL",
    "ANSWER",
    "HANGUP",
    "MSG",
    "JOIN",
    "PARTY_MSG",
    "LEAVE",
    "PRESENCE",
    "SLEEP_ACK",
    "REGISTER_PBX",
    "DIAL_FORWARD",
    "BOGUS",
]
typed_objects = st.builds(
    lambda t, d: {"type": t, **d},
    st.sampled_from(TYPES),
    st.dictionaries(
        st.sampled_from(
            ["address", "to", "call_id", "data", "party", "status", "query", "metadata", "content_type"]
        ),
        json_values,
        max_size=4,
    ),
)


def check_invariants(x: Exchange) -> None:
    """Every index, read through its owner, agrees with every other."""
    sessions = set(x.registry.sessions)
    assert set(x.sessions) == sessions
    # CallBook: calls, per-session call sets, listeners, waiting queues.
    calls = list(x.book.calls)
    assert {c.call_id for c in x.calls} == {c.call_id for c in calls}
    for call in calls:
        assert call.state is not CallState.ENDED
        assert x.call(call.call_id) is call
        for party in call.parties():
            assert party.calls.get(call.call_id) is call, "a live call missing from a party's index"
        if call.state is CallState.CONNECTED and call.listeners is None:
            assert call.routes is not None
        if call.state is CallState.WAITING:
            assert call in x.book.waiting(call.callee_key), "a waiting call in no queue"
    live = {c.call_id for c in calls}
    for key in x.book.waiting_keys():
        queue = x.book.waiting(key)
        assert queue, "an empty queue survived"
        for call in queue:
            assert call.call_id in live and call.callee_key == key and call.state is CallState.WAITING
    for s in sessions:
        for call_id, call in s.calls.items():
            assert call_id in live, "a session holds an ended call"
            assert s in call.parties()
        for key, line in s.parties.items():
            assert s in line.members and x.party(line.name) is line and line.key == key
        # Registry: a session's address fields and the address index agree.
        assert (s.state is SessionState.REGISTERED) == (s.key is not None and not s.closed)
        if s.key is not None and not s.closed:
            assert x.registry.holder(s.key) is s, "a registered session missing from the address index"
    for key, holder in x.registry.bound().items():
        assert holder.key == key and holder in sessions, "the address index names a session that left"
        assert x.session_for(holder.address or "") is holder
        assert key not in x.lines, "an address and a party line share a key"
    # PartyLines
    for line in x.parties:
        assert line.members, "an empty party line survived"
        assert line.key in x.lines
        for member in line.members:
            assert member in sessions and member.parties.get(line.key) is line
    # Wake: a key being woken has a profile and is not bound.
    for key in x.wake.waking():
        assert x.wake.has_profile(key) and key not in x.registry


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            json_values.map(msgspec.json.encode),
            typed_objects.map(msgspec.json.encode),
        ),
        max_size=12,
    )
)
def test_arbitrary_frames_never_crash(frames: list[bytes]) -> None:
    h = Harness()
    h.register("A", "alice@example.com")
    for frame in frames:
        h.send("A", frame)
        check_invariants(h.x)
    for _, data in h.actions.sent:
        msgspec.json.decode(data)


NAMES = ["A", "B", "C", "D"]
ADDRS = {n: f"{n.lower()}@example.com" for n in NAMES}
ops = st.one_of(
    st.tuples(
        st.just("register"), st.sampled_from(NAMES), st.sampled_from(["single", "parallel", "broadcast"])
    ),
    st.tuples(st.just("dial"), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.tuples(st.just("answer"), st.sampled_from(NAMES), st.integers(1, 8)),
    st.tuples(st.just("hangup"), st.sampled_from(NAMES), st.integers(1, 8)),
    st.tuples(st.just("msg"), st.sampled_from(NAMES), st.integers(1, 8)),
    st.tuples(st.just("close"), st.sampled_from(NAMES), st.none()),
    st.tuples(st.just("timer"), st.sampled_from(["ring", "sweep", "wake"]), st.integers(1, 8)),
    st.tuples(st.just("join"), st.sampled_from(NAMES), st.sampled_from(["p1@x.com", "p2@x.com"])),
    st.tuples(st.just("leave"), st.sampled_from(NAMES), st.sampled_from(["p1@x.com", "p2@x.com"])),
    st.tuples(st.just("status"), st.sampled_from(NAMES), st.sampled_from(["available", "dnd", "busy"])),
    st.tuples(st.just("sleep"), st.sampled_from(NAMES), st.none()),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, max_size=40))
def test_random_sequences_keep_indexes_consistent(sequence: list[tuple[str, Any, Any]]) -> None:
    h = Harness(heartbeat_timeout_ms=1, party_max_participants=3)
    open_: set[str] = set()
    for op, who, arg in sequence:
        h.now += 0.01
        if op == "register":
            if who not in open_:
                h.open(who)
                open_.add(who)
            extra: dict[str, Any] = {"concurrency": arg}
            if who == "D":
                extra.update(
                    mode="wake_on_ring", wake_handler={"type": "webhook", "url": "http://h.example.com/"}
                )
            h.send(who, {"type": "REGISTER", "address": ADDRS[who], **extra})
        elif op == "timer":
            kind = {"ring": RingTimer, "sweep": Sweep, "wake": WakeTimer}[who]
            keys = [k for k in h.actions.timers if type(k) is kind]
            if keys:
                h.fire(keys[arg % len(keys)], advance=0.0)
        elif who not in open_:
            continue
        elif op == "close":
            h.close(who)
            open_.discard(who)
        elif op == "dial":
            h.send(who, {"type": "DIAL", "to": ADDRS[arg]})
        elif op in ("answer", "hangup"):
            h.send(who, {"type": op.upper(), "call_id": f"call-{arg}"})
        elif op == "msg":
            h.send(who, {"type": "MSG", "call_id": f"call-{arg}", "data": "x"})
        elif op in ("join", "leave"):
            h.send(who, {"type": op.upper(), "party": arg, "create_if_missing": True})
        elif op == "status":
            h.send(who, {"type": "STATUS", "status": arg})
        elif op == "sleep":
            h.send(who, {"type": "SLEEP_ACK"})
        for conn, _code, _reason in h.actions.closed:
            if conn in open_:
                h.close(conn)
                open_.discard(conn)
        check_invariants(h.x)
    for name in list(open_):
        h.close(name)
    check_invariants(h.x)
    assert list(h.x.calls) == []
    assert list(h.x.parties) == []
