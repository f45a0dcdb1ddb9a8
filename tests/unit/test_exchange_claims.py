"""REGISTER claims its address through the Directory port, answered at once or later."""

from __future__ import annotations

from typing import Any

from systemx.core import Exchange
from systemx.state.memory import MemoryDirectory
from systemx.state.ports import PENDING, Claimed, InUse, Pending, Registration
from tests.unit.harness import Harness


class LaterDirectory:
    """A directory that answers every claim later, as a shared one does."""

    def __init__(self) -> None:
        self.claims: list[Registration] = []
        self.released: list[tuple[str, str]] = []

    def claim(self, reg: Registration) -> Claimed | InUse | Pending:
        self.claims.append(reg)
        return PENDING

    def release(self, key: str, session_id: str) -> None:
        self.released.append((key, session_id))

    def lookup(self, key: str) -> Registration | Pending | None:
        return None


def harness(directory: Any) -> Harness:
    h = Harness()
    h.x = Exchange(h.settings.core_config(), h.actions, new_id=h._id, claims=directory)
    return h


def test_a_pending_claim_answers_registered_when_granted() -> None:
    d = LaterDirectory()
    h = harness(d)
    h.open("A")
    h.send("A", {"type": "REGISTER", "address": "alice@Example.com", "metadata": {"team": "x"}})
    assert h.frames("A") == []
    assert h.x.session_for("alice@example.com") is None
    [reg] = d.claims
    assert (reg.address, reg.key, reg.session_id) == (
        "alice@Example.com",
        "alice@example.com",
        h.sessions["A"].session_id,
    )
    assert reg.metadata == {"team": "x"}
    h.x.on_claimed(h.sessions["A"], Claimed(reg), h.now)
    assert h.frames("A") == [
        {"type": "REGISTERED", "address": "alice@Example.com", "session_id": h.sessions["A"].session_id}
    ]
    assert h.x.session_for("alice@example.com") is h.sessions["A"]
    assert h.x.health()["registered"] == 1
    h.close("A")
    assert d.released == [("alice@example.com", h.sessions["A"].session_id)]


def test_a_pending_claim_refused_answers_address_in_use() -> None:
    d = LaterDirectory()
    h = harness(d)
    h.open("A")
    h.send("A", {"type": "REGISTER", "address": "alice@example.com"})
    other = Registration(address="alice@example.com", key="alice@example.com", node="n2", session_id="s-2")
    h.x.on_claimed(h.sessions["A"], InUse(other), h.now)
    assert h.frames("A") == [
        {"type": "REGISTER_FAILED", "reason": "address_in_use", "address": "alice@example.com"}
    ]
    assert h.x.session_for("alice@example.com") is None
    h.send("A", {"type": "DIAL", "to": "bob@example.com"})
    assert h.frames("A")[0]["reason"] == "not_registered"


def test_a_claim_granted_after_the_session_left_is_given_back() -> None:
    d = LaterDirectory()
    h = harness(d)
    h.open("A")
    h.send("A", {"type": "REGISTER", "address": "alice@example.com"})
    h.close("A")
    h.x.on_claimed(h.sessions["A"], Claimed(d.claims[0]), h.now)
    assert d.released == [("alice@example.com", h.sessions["A"].session_id)]
    assert h.x.session_for("alice@example.com") is None
    assert h.actions.sent == []


def test_a_second_register_while_the_first_is_pending_is_refused() -> None:
    d = LaterDirectory()
    h = harness(d)
    h.open("A")
    h.send("A", {"type": "REGISTER", "address": "alice@example.com"})
    h.send("A", {"type": "REGISTER", "address": "alice@example.com"})
    [failed] = h.frames("A")
    assert failed["type"] == "REGISTER_FAILED" and failed["reason"] == "invalid_payload"
    assert len(d.claims) == 1


def test_the_memory_directory_answers_at_once_and_follows_the_bindings() -> None:
    d = MemoryDirectory()
    h = harness(d)
    assert h.register("A", "alice@example.com")["type"] == "REGISTERED"
    held = d.lookup("alice@example.com")
    assert held is not None and held.session_id == h.sessions["A"].session_id
    assert h.register("B", "alice@example.com")["reason"] == "address_in_use"
    # A rename gives the old address back.
    assert h.register("A", "alice2@example.com")["type"] == "REGISTERED"
    assert d.lookup("alice@example.com") is None
    assert h.register("B", "alice@example.com")["type"] == "REGISTERED"
    h.close("B")
    assert d.lookup("alice@example.com") is None
    assert len(d) == 1
