"""Calls between two exchanges joined by a trunk, in process (see ``tests/unit/loopback.py``).

Exchange ``a`` is the parent, ``b`` the child with a trunk up to it: ``b`` routes
``*@a.test`` up the trunk and announces ``*@b.test``. Alice is on ``a``, Bob on ``b``.
"""

from __future__ import annotations

from typing import Any

import pytest

from systemx.core.endpoint import RecordingEndpoint
from systemx.core.timerkeys import RingTimer, TrunkTimer

from .loopback import LoopbackLink, Node

ALICE = "alice@a.test"
BOB = "bob@b.test"


class Pair:
    def __init__(self) -> None:
        self.a = Node("a")
        self.b = Node("b")
        self.link = LoopbackLink(
            self.a, self.b, domain="b.test", routes=("*@a.test",), announce=("*@b.test",)
        )
        self.alice = self.a.register("alice", ALICE)
        self.bob = self.b.register("bob", BOB)

    def side(self, who: str) -> tuple[Node, RecordingEndpoint, str]:
        """The node, endpoint and address of ``who`` ("alice" or "bob")."""
        if who == "alice":
            return self.a, self.alice, ALICE
        return self.b, self.bob, BOB

    def send(self, who: str, frame: dict[str, Any]) -> None:
        """``who`` sends ``frame``; the link carries whatever follows until it is quiet."""
        node, _, _ = self.side(who)
        node.send(who, frame)
        self.link.pump()

    def ring(self, caller: str, callee: str) -> str:
        """``caller`` dials ``callee`` and it rings there; return the call id."""
        _, caller_ep, caller_addr = self.side(caller)
        _, callee_ep, callee_addr = self.side(callee)
        self.send(caller, {"type": "DIAL", "to": callee_addr, "ringing": True})
        ringing = caller_ep.take()
        assert [f["type"] for f in ringing] == ["RINGING"]
        call_id = ringing[0]["call_id"]
        assert ringing == [{"type": "RINGING", "call_id": call_id, "to": callee_addr}]
        assert callee_ep.take() == [{"type": "RING", "from": caller_addr, "call_id": call_id}]
        return str(call_id)

    def connect(self, caller: str, callee: str) -> str:
        call_id = self.ring(caller, callee)
        _, caller_ep, _ = self.side(caller)
        _, callee_ep, callee_addr = self.side(callee)
        self.send(callee, {"type": "ANSWER", "call_id": call_id})
        assert caller_ep.take() == [{"type": "CONNECTED", "call_id": call_id, "to": callee_addr}]
        assert callee_ep.take() == []
        return call_id


@pytest.fixture
def p() -> Pair:
    return Pair()


DIRECTIONS = [
    pytest.param("bob", "alice", id="child-to-parent"),
    pytest.param("alice", "bob", id="parent-to-child"),
]


@pytest.mark.parametrize(("caller", "callee"), DIRECTIONS)
def test_call_connects_and_carries_msg_both_ways(p: Pair, caller: str, callee: str) -> None:
    call_id = p.connect(caller, callee)
    _, caller_ep, caller_addr = p.side(caller)
    _, callee_ep, callee_addr = p.side(callee)
    p.send(caller, {"type": "MSG", "call_id": call_id, "data": "hello"})
    p.send(callee, {"type": "MSG", "call_id": call_id, "data": {"n": 1}, "content_type": "json"})
    assert callee_ep.take() == [
        {"type": "MSG", "call_id": call_id, "from": caller_addr, "data": "hello", "content_type": "text"}
    ]
    assert caller_ep.take() == [
        {"type": "MSG", "call_id": call_id, "from": callee_addr, "data": {"n": 1}, "content_type": "json"}
    ]


@pytest.mark.parametrize(("caller", "callee"), DIRECTIONS)
@pytest.mark.parametrize("hanger", ["caller", "callee"])
def test_hangup_from_either_side_ends_both_legs(p: Pair, caller: str, callee: str, hanger: str) -> None:
    call_id = p.connect(caller, callee)
    quitter, other = (caller, callee) if hanger == "caller" else (callee, caller)
    p.send(quitter, {"type": "HANGUP", "call_id": call_id})
    assert p.side(other)[1].take() == [{"type": "HANGUP", "call_id": call_id, "reason": "normal"}]
    assert p.side(quitter)[1].take() == []
    assert list(p.a.x.calls) == [] and list(p.b.x.calls) == []
    # The call is gone on both sides: a late MSG reaches nobody.
    p.send(other, {"type": "MSG", "call_id": call_id, "data": "late"})
    assert p.alice.take() == [] and p.bob.take() == []


@pytest.mark.parametrize(("caller", "callee"), DIRECTIONS)
def test_busy_no_such_address_from_the_far_side(p: Pair, caller: str, callee: str) -> None:
    _, caller_ep, _ = p.side(caller)
    nobody = "nobody@" + p.side(callee)[2].split("@")[1]
    p.send(caller, {"type": "DIAL", "to": nobody, "ringing": True})
    frames = caller_ep.take()
    call_id = frames[0]["call_id"]
    assert frames == [
        {"type": "RINGING", "call_id": call_id, "to": nobody},
        {"type": "BUSY", "to": nobody, "reason": "no_such_address", "call_id": call_id},
    ]
    assert list(p.a.x.calls) == [] and list(p.b.x.calls) == []


@pytest.mark.parametrize(("caller", "callee"), DIRECTIONS)
def test_busy_already_in_call_from_the_far_side(p: Pair, caller: str, callee: str) -> None:
    far, callee_ep, callee_addr = p.side(callee)
    # The callee is in a local call already.
    other = far.register("other", "other@" + callee_addr.split("@")[1])
    far.send("other", {"type": "DIAL", "to": callee_addr})
    local_id = callee_ep.take()[0]["call_id"]
    far.send(callee, {"type": "ANSWER", "call_id": local_id})
    assert other.take()[-1]["type"] == "CONNECTED"
    _, caller_ep, _ = p.side(caller)
    p.send(caller, {"type": "DIAL", "to": callee_addr, "ringing": True})
    frames = caller_ep.take()
    call_id = frames[0]["call_id"]
    assert frames == [
        {"type": "RINGING", "call_id": call_id, "to": callee_addr},
        {"type": "BUSY", "to": callee_addr, "reason": "already_in_call", "call_id": call_id},
    ]
    assert callee_ep.take() == []


@pytest.mark.parametrize(("caller", "callee"), DIRECTIONS)
def test_busy_dnd_from_the_far_side(p: Pair, caller: str, callee: str) -> None:
    _, callee_ep, callee_addr = p.side(callee)
    p.send(callee, {"type": "STATUS", "status": "dnd"})
    _, caller_ep, _ = p.side(caller)
    p.send(caller, {"type": "DIAL", "to": callee_addr, "ringing": True})
    frames = caller_ep.take()
    call_id = frames[0]["call_id"]
    assert frames == [
        {"type": "RINGING", "call_id": call_id, "to": callee_addr},
        {"type": "BUSY", "to": callee_addr, "reason": "dnd", "call_id": call_id},
    ]
    assert callee_ep.take() == []


@pytest.mark.parametrize(("caller", "callee"), DIRECTIONS)
def test_ring_timeout_on_the_callers_side(p: Pair, caller: str, callee: str) -> None:
    call_id = p.ring(caller, callee)
    node, caller_ep, _ = p.side(caller)
    _, callee_ep, callee_addr = p.side(callee)
    node.fire(node.timer(RingTimer, call_id))
    p.link.pump()
    assert caller_ep.take() == [{"type": "BUSY", "to": callee_addr, "reason": "timeout", "call_id": call_id}]
    assert callee_ep.take() == [{"type": "HANGUP", "call_id": call_id, "reason": "timeout"}]
    assert list(p.a.x.calls) == [] and list(p.b.x.calls) == []


@pytest.mark.parametrize(("caller", "callee"), DIRECTIONS)
def test_caller_cancels_while_ringing(p: Pair, caller: str, callee: str) -> None:
    call_id = p.ring(caller, callee)
    _, caller_ep, _ = p.side(caller)
    _, callee_ep, _ = p.side(callee)
    p.send(caller, {"type": "HANGUP", "call_id": call_id})
    assert callee_ep.take() == [{"type": "HANGUP", "call_id": call_id, "reason": "normal"}]
    assert caller_ep.take() == []
    assert list(p.a.x.calls) == [] and list(p.b.x.calls) == []
    # An ANSWER that crossed the cancel connects nothing.
    p.send(callee, {"type": "ANSWER", "call_id": call_id})
    assert caller_ep.take() == []


@pytest.mark.parametrize(("caller", "callee"), DIRECTIONS)
def test_link_down_ends_connected_calls_after_the_grace(p: Pair, caller: str, callee: str) -> None:
    call_id = p.connect(caller, callee)
    p.link.down()
    # Held for the grace: nobody is told yet.
    assert p.alice.take() == [] and p.bob.take() == []
    p.b.fire(p.b.timer(TrunkTimer, "out:a"))
    assert p.bob.take() == [{"type": "HANGUP", "call_id": call_id, "reason": "peer_disconnected"}]
    assert p.alice.take() == []
    p.a.fire(p.a.timer(TrunkTimer, "in:b.test"))
    assert p.alice.take() == [{"type": "HANGUP", "call_id": call_id, "reason": "peer_disconnected"}]
    assert list(p.a.x.calls) == [] and list(p.b.x.calls) == []


@pytest.mark.parametrize(("caller", "callee"), DIRECTIONS)
def test_link_down_ends_ringing_calls_at_once(p: Pair, caller: str, callee: str) -> None:
    call_id = p.ring(caller, callee)
    _, caller_ep, _ = p.side(caller)
    _, callee_ep, callee_addr = p.side(callee)
    p.link.down()
    assert caller_ep.take() == [
        {"type": "BUSY", "to": callee_addr, "reason": "unavailable", "call_id": call_id}
    ]
    assert callee_ep.take() == [{"type": "HANGUP", "call_id": call_id, "reason": "peer_disconnected"}]
    assert list(p.a.x.calls) == [] and list(p.b.x.calls) == []


def test_link_back_within_the_grace_keeps_connected_calls(p: Pair) -> None:
    call_id = p.connect("bob", "alice")
    p.link.down()
    p.link.up()
    assert p.a.timer(TrunkTimer, "in:b.test") is None and p.b.timer(TrunkTimer, "out:a") is None
    p.send("alice", {"type": "MSG", "call_id": call_id, "data": "still here"})
    assert p.bob.take() == [
        {"type": "MSG", "call_id": call_id, "from": ALICE, "data": "still here", "content_type": "text"}
    ]
