"""Party lines and presence rules of the core."""

from __future__ import annotations

import pytest

from tests.unit.harness import Harness


@pytest.fixture
def h() -> Harness:
    h = Harness(party_max_participants=3, party_max_per_session=2)
    for n in "ABCD":
        h.register(n, f"{n.lower()}@example.com")
    return h


def test_join_create_and_notify(h: Harness) -> None:
    h.send("A", {"type": "JOIN", "party": "room@party.example.com", "create_if_missing": True})
    assert h.frames("A") == [
        {"type": "JOINED", "party": "room@party.example.com", "participants": ["a@example.com"]}
    ]
    h.send("B", {"type": "JOIN", "party": "room@party.example.com"})
    assert h.frames("B") == [
        {
            "type": "JOINED",
            "party": "room@party.example.com",
            "participants": ["a@example.com", "b@example.com"],
        }
    ]
    assert h.frames("A") == [
        {"type": "PARTY_JOINED", "party": "room@party.example.com", "address": "b@example.com"}
    ]


def test_join_missing_without_create(h: Harness) -> None:
    h.send("A", {"type": "JOIN", "party": "room@party.example.com"})
    (f,) = h.frames("A")
    assert f["type"] == "JOIN_FAILED" and f["reason"] == "no_such_party"


def test_join_invalid_and_colliding_names(h: Harness) -> None:
    h.send("A", {"type": "JOIN", "party": "not a party", "create_if_missing": True})
    assert h.frames("A")[-1]["reason"] == "invalid_address"
    h.send("A", {"type": "JOIN", "party": "b@example.com", "create_if_missing": True})
    assert h.frames("A")[-1]["reason"] == "address_in_use"
    h.send("A", {"type": "JOIN", "party": "room@x.com", "create_if_missing": True})
    h.open("E")
    h.send("E", {"type": "REGISTER", "address": "room@X.com"})
    assert h.frames("E")[-1] == {
        "type": "REGISTER_FAILED",
        "reason": "address_in_use",
        "address": "room@X.com",
        "detail": "a party line has this address",
    }


def test_party_msg_fanout_once_each_no_echo(h: Harness) -> None:
    for n in "ABC":
        h.send(n, {"type": "JOIN", "party": "room@x.com", "create_if_missing": True})
    for n in "ABC":
        h.frames(n)
    before = len(h.actions.sent)
    h.send("B", {"type": "PARTY_MSG", "party": "room@x.com", "data": {"t": 1}, "from": "spoof@x.com"})
    expected = {"type": "PARTY_MSG", "party": "room@x.com", "from": "b@example.com", "data": {"t": 1}}
    assert h.frames("A") == [expected] and h.frames("C") == [expected] and h.frames("B") == []
    frames = [d for _, d in h.actions.sent[before:]]
    assert len(frames) == 2 and frames[0] is frames[1]  # encoded once


def test_party_msg_content_type_kept(h: Harness) -> None:
    for n in "AB":
        h.send(n, {"type": "JOIN", "party": "room@x.com", "create_if_missing": True})
    h.frames("B")
    h.send("A", {"type": "PARTY_MSG", "party": "room@x.com", "data": "{}", "content_type": "json"})
    assert h.frames("B")[-1]["content_type"] == "json"


def test_outsider_cannot_party_msg_or_leave(h: Harness) -> None:
    h.send("A", {"type": "JOIN", "party": "room@x.com", "create_if_missing": True})
    h.frames("A")
    h.send("D", {"type": "PARTY_MSG", "party": "room@x.com", "data": "hi"})
    assert h.frames("D")[-1]["reason"] == "not_in_party"
    h.send("D", {"type": "LEAVE", "party": "room@x.com"})
    assert h.frames("D")[-1] == {
        "type": "ERROR",
        "reason": "not_in_party",
        "context": "LEAVE",
        "detail": "not a participant of room@x.com",
    }
    assert h.frames("A") == []


def test_leave_and_disconnect_and_empty_party_disappears(h: Harness) -> None:
    for n in "AB":
        h.send(n, {"type": "JOIN", "party": "room@x.com", "create_if_missing": True})
    h.frames("A")
    h.send("B", {"type": "LEAVE", "party": "room@x.com"})
    assert h.frames("B")[-1] == {"type": "LEFT", "party": "room@x.com"}
    assert h.frames("A") == [
        {"type": "PARTY_LEFT", "party": "room@x.com", "address": "b@example.com", "reason": "left"}
    ]
    h.send("B", {"type": "JOIN", "party": "room@x.com"})
    h.frames("A")
    h.close("B")
    assert h.frames("A")[-1]["reason"] == "disconnected"
    h.close("A")
    assert h.x.party("room@x.com") is None
    h.send("C", {"type": "JOIN", "party": "room@x.com"})
    assert h.frames("C")[-1]["reason"] == "no_such_party"


def test_limits(h: Harness) -> None:
    for n in "ABC":
        h.send(n, {"type": "JOIN", "party": "room@x.com", "create_if_missing": True})
    h.send("D", {"type": "JOIN", "party": "room@x.com"})
    assert h.frames("D")[-1]["reason"] == "party_full"
    h.send("D", {"type": "JOIN", "party": "one@x.com", "create_if_missing": True})
    h.send("D", {"type": "JOIN", "party": "two@x.com", "create_if_missing": True})
    h.send("D", {"type": "JOIN", "party": "three@x.com", "create_if_missing": True})
    assert h.frames("D")[-1]["reason"] == "too_many_parties"


def test_join_unregistered_is_error() -> None:
    h = Harness()
    h.open("A")
    h.send("A", {"type": "JOIN", "party": "room@x.com", "create_if_missing": True})
    assert h.frames("A")[-1]["reason"] == "not_registered"


def test_rejoin_is_idempotent(h: Harness) -> None:
    h.send("A", {"type": "JOIN", "party": "room@x.com", "create_if_missing": True})
    h.send("A", {"type": "JOIN", "party": "room@x.com", "create_if_missing": True})
    assert h.frames("A")[-1] == {"type": "JOINED", "party": "room@x.com", "participants": ["a@example.com"]}


# ------------------------------------------------------------------ presence


def test_presence_filters_and_excludes_asker() -> None:
    h = Harness()
    h.register("Q", "q@example.com", metadata={"capabilities": ["chat"]})
    h.register(
        "A",
        "a@leeds.example.org",
        metadata={"capabilities": ["chat", "code"], "location": {"lat": 53.8, "lon": -1.55}},
    )
    h.register(
        "B",
        "b@leeds.example.org",
        metadata={"capabilities": ["chat"], "location": {"lat": 51.5, "lon": -0.12}},
    )
    h.register("C", "c@other.example.org", metadata={"capabilities": ["chat", "code"]})
    h.send("Q", {"type": "PRESENCE", "query": {"capabilities": ["chat"]}})
    assert [e["address"] for e in h.frames("Q")[-1]["addresses"]] == [
        "a@leeds.example.org",
        "b@leeds.example.org",
        "c@other.example.org",
    ]
    h.send("Q", {"type": "PRESENCE", "query": {"domain": "LEEDS.example.org", "capabilities": ["code"]}})
    assert [e["address"] for e in h.frames("Q")[-1]["addresses"]] == ["a@leeds.example.org"]
    h.send("Q", {"type": "PRESENCE", "query": {"near": {"lat": 53.7, "lon": -1.8, "radius_km": 400}}})
    result = h.frames("Q")[-1]["addresses"]
    assert [e["address"] for e in result] == ["a@leeds.example.org", "b@leeds.example.org"]
    assert result[0]["status"] == "available"
    assert result[0]["metadata"]["location"] == {"lat": 53.8, "lon": -1.55}


def test_presence_status_follows_status_and_calls() -> None:
    h = Harness()
    h.register("Q", "q@example.com")
    h.register("A", "a@example.com")
    h.register("B", "b@example.com")
    h.send("A", {"type": "STATUS", "status": "dnd"})
    h.connect("Q", "B")
    h.send("Q", {"type": "PRESENCE", "query": {}})
    statuses = {e["address"]: e["status"] for e in h.frames("Q")[-1]["addresses"]}
    assert statuses == {"a@example.com": "dnd", "b@example.com": "busy"}
    h.send("Q", {"type": "PRESENCE", "query": {"status": "busy"}})
    assert [e["address"] for e in h.frames("Q")[-1]["addresses"]] == ["b@example.com"]


def test_presence_limit_and_validation() -> None:
    h = Harness(presence_default_limit=2, presence_max_limit=3)
    h.register("Q", "q@example.com")
    for i in range(5):
        h.register(f"N{i}", f"n{i}@example.com")
    h.send("Q", {"type": "PRESENCE", "query": {}})
    assert len(h.frames("Q")[-1]["addresses"]) == 2
    h.send("Q", {"type": "PRESENCE", "query": {}, "limit": 50})
    assert len(h.frames("Q")[-1]["addresses"]) == 3
    h.send("Q", {"type": "PRESENCE", "query": {"near": {"lat": 100, "lon": 0, "radius_km": 1}}})
    assert h.frames("Q")[-1]["type"] == "ERROR"
    h.send("Q", {"type": "PRESENCE", "query": {"capabilities": "chat"}})
    assert h.frames("Q")[-1]["context"] == "PRESENCE"


def test_presence_needs_registration() -> None:
    h = Harness()
    h.open("A")
    h.send("A", {"type": "PRESENCE", "query": {}})
    assert h.frames("A")[-1]["reason"] == "not_registered"
