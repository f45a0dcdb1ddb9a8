"""Every party roster behaves the same; run against each backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from systemx.state.memory import MemoryPartyRoster
from systemx.state.ports import PENDING, PartyRoster, Pending, RosterMember

BACKENDS: dict[str, Callable[[], PartyRoster]] = {"memory": MemoryPartyRoster}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[PartyRoster]:
    yield BACKENDS[request.param]()


def members(roster: PartyRoster, party_key: str) -> list[tuple[str, str]]:
    answer = roster.members(party_key)
    assert answer is not PENDING and not isinstance(answer, Pending), "this backend answers at once"
    assert all(isinstance(m, RosterMember) for m in answer)
    return [(m.member_id, m.node) for m in answer]


def test_unknown_line_has_no_members(backend: PartyRoster) -> None:
    assert members(backend, "room@example.com") == []


def test_join_keeps_join_order(backend: PartyRoster) -> None:
    backend.join("room@example.com", "c@x.com", "n2")
    backend.join("room@example.com", "a@x.com", "n1")
    backend.join("room@example.com", "b@x.com", "n1")
    assert members(backend, "room@example.com") == [("c@x.com", "n2"), ("a@x.com", "n1"), ("b@x.com", "n1")]


def test_joining_again_keeps_the_place_and_takes_the_new_node(backend: PartyRoster) -> None:
    backend.join("room@example.com", "a@x.com", "n1")
    backend.join("room@example.com", "b@x.com", "n1")
    backend.join("room@example.com", "a@x.com", "n1")
    assert members(backend, "room@example.com") == [("a@x.com", "n1"), ("b@x.com", "n1")]
    backend.join("room@example.com", "a@x.com", "n3")
    assert members(backend, "room@example.com") == [("a@x.com", "n3"), ("b@x.com", "n1")]
    backend.drop_node("n1")
    assert members(backend, "room@example.com") == [("a@x.com", "n3")], "a moved member is not n1's"


def test_leave(backend: PartyRoster) -> None:
    backend.join("room@example.com", "a@x.com", "n1")
    backend.join("room@example.com", "b@x.com", "n2")
    backend.leave("room@example.com", "a@x.com")
    assert members(backend, "room@example.com") == [("b@x.com", "n2")]
    backend.leave("room@example.com", "a@x.com")  # not there: nothing happens
    backend.leave("other@example.com", "b@x.com")
    backend.leave("room@example.com", "b@x.com")
    assert members(backend, "room@example.com") == []
    backend.join("room@example.com", "a@x.com", "n1")
    assert members(backend, "room@example.com") == [("a@x.com", "n1")], "an emptied line can fill again"


def test_lines_are_independent(backend: PartyRoster) -> None:
    backend.join("one@example.com", "a@x.com", "n1")
    backend.join("two@example.com", "a@x.com", "n1")
    backend.join("two@example.com", "b@x.com", "n2")
    backend.leave("one@example.com", "a@x.com")
    assert members(backend, "one@example.com") == []
    assert members(backend, "two@example.com") == [("a@x.com", "n1"), ("b@x.com", "n2")]


def test_drop_node_removes_its_members_from_every_line(backend: PartyRoster) -> None:
    backend.join("one@example.com", "a@x.com", "n1")
    backend.join("one@example.com", "b@x.com", "n2")
    backend.join("one@example.com", "c@x.com", "n1")
    backend.join("two@example.com", "a@x.com", "n1")
    backend.join("three@example.com", "d@x.com", "n2")
    backend.drop_node("n1")
    assert members(backend, "one@example.com") == [("b@x.com", "n2")]
    assert members(backend, "two@example.com") == []
    assert members(backend, "three@example.com") == [("d@x.com", "n2")]
    backend.drop_node("n1")  # again: nothing left
    backend.drop_node("never-seen")
    assert members(backend, "one@example.com") == [("b@x.com", "n2")]
    backend.join("two@example.com", "a@x.com", "n1")
    assert members(backend, "two@example.com") == [("a@x.com", "n1")], "the node can come back"


def test_after_leave_drop_node_leaves_others_alone(backend: PartyRoster) -> None:
    backend.join("room@example.com", "a@x.com", "n1")
    backend.leave("room@example.com", "a@x.com")
    backend.join("room@example.com", "b@x.com", "n2")
    backend.drop_node("n1")
    assert members(backend, "room@example.com") == [("b@x.com", "n2")]
