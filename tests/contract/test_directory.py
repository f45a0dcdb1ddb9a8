"""Every directory behaves the same; run against each backend.

A backend may answer PENDING and deliver the answer later; the memory backend
answers at once. ``settle`` turns either into the answer, so the same tests hold
for a backend that answers later once its fixture knows how to wait for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from systemx.state.memory import MemoryDirectory
from systemx.state.ports import PENDING, Claimed, Directory, InUse, Pending, Registration

T = TypeVar("T")

BACKENDS: dict[str, Callable[[], Directory]] = {"memory": MemoryDirectory}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[Directory]:
    yield BACKENDS[request.param]()


def settle(answer: T | Pending) -> T:
    assert answer is not PENDING, "this backend answers at once"
    assert not isinstance(answer, Pending)
    return answer


def reg(address: str, session_id: str, *, node: str = "node-1", **options: Any) -> Registration:
    local, _, domain = address.rpartition("@")
    return Registration(
        address=address,
        key=f"{local}@{domain.lower()}",
        node=node,
        session_id=session_id,
        **options,
    )


def claim(directory: Directory, registration: Registration) -> Claimed | InUse:
    answer = directory.claim(registration)
    assert isinstance(answer, (Claimed, InUse)), f"this backend answers at once, got {answer!r}"
    return answer


def lookup(directory: Directory, key: str) -> Registration | None:
    return settle(directory.lookup(key))


def test_unknown_key_looks_up_none(backend: Directory) -> None:
    assert lookup(backend, "nobody@example.com") is None


def test_claim_then_lookup(backend: Directory) -> None:
    mine = reg(
        "Agent@Example.com",
        "s1",
        concurrency="parallel",
        max_sessions=3,
        metadata={"capabilities": ["chat"], "note": "héllo ☎"},
    )
    result = claim(backend, mine)
    assert isinstance(result, Claimed)
    stored = result.registration
    assert (stored.address, stored.key, stored.node, stored.session_id) == (
        "Agent@Example.com",
        "Agent@example.com",
        "node-1",
        "s1",
    )
    assert (stored.concurrency, stored.max_sessions, stored.max_listeners) == ("parallel", 3, None)
    assert stored.metadata == {"capabilities": ["chat"], "note": "héllo ☎"}
    assert lookup(backend, "Agent@example.com") == stored
    assert lookup(backend, "agent@example.com") is None, "the local part is case-sensitive"


def test_a_second_session_is_refused_with_the_holder(backend: Directory) -> None:
    first = claim(backend, reg("agent@example.com", "s1", node="node-1"))
    assert isinstance(first, Claimed)
    second = claim(backend, reg("agent@EXAMPLE.com", "s2", node="node-2"))
    assert isinstance(second, InUse)
    assert second.holder == first.registration
    assert lookup(backend, "agent@example.com") == first.registration


def test_the_same_session_claims_again_and_replaces_its_registration(backend: Directory) -> None:
    first = claim(backend, reg("agent@example.com", "s1", metadata={"v": 1}))
    again = claim(backend, reg("agent@EXAMPLE.com", "s1", metadata={"v": 2}))
    assert isinstance(first, Claimed) and isinstance(again, Claimed)
    held = lookup(backend, "agent@example.com")
    assert held is not None
    assert (held.address, held.metadata) == ("agent@EXAMPLE.com", {"v": 2})
    assert held.epoch > first.registration.epoch


def test_epochs_grow_with_each_claim(backend: Directory) -> None:
    epochs = []
    for session in ("s1", "s2", "s3"):
        result = claim(backend, reg("agent@example.com", session))
        assert isinstance(result, Claimed)
        epochs.append(result.registration.epoch)
        backend.release("agent@example.com", session)
    assert epochs == sorted(epochs) and len(set(epochs)) == 3


def test_release_by_the_holder_frees_the_key(backend: Directory) -> None:
    claim(backend, reg("agent@example.com", "s1"))
    backend.release("agent@example.com", "s1")
    assert lookup(backend, "agent@example.com") is None
    assert isinstance(claim(backend, reg("agent@example.com", "s2")), Claimed)


def test_release_by_another_session_does_nothing(backend: Directory) -> None:
    held = claim(backend, reg("agent@example.com", "s1"))
    assert isinstance(held, Claimed)
    backend.release("agent@example.com", "s2")
    assert lookup(backend, "agent@example.com") == held.registration
    assert isinstance(claim(backend, reg("agent@example.com", "s2")), InUse)


def test_a_late_release_does_not_free_a_newer_claim(backend: Directory) -> None:
    claim(backend, reg("agent@example.com", "s1"))
    backend.release("agent@example.com", "s1")
    newer = claim(backend, reg("agent@example.com", "s2"))
    assert isinstance(newer, Claimed)
    backend.release("agent@example.com", "s1")  # the old session's release, arriving late
    assert lookup(backend, "agent@example.com") == newer.registration


def test_release_of_an_unknown_key_is_harmless(backend: Directory) -> None:
    backend.release("nobody@example.com", "s1")
    assert lookup(backend, "nobody@example.com") is None


def test_keys_are_independent(backend: Directory) -> None:
    a = claim(backend, reg("a@example.com", "s1"))
    b = claim(backend, reg("b@example.com", "s2"))
    assert isinstance(a, Claimed) and isinstance(b, Claimed)
    backend.release("a@example.com", "s1")
    assert lookup(backend, "a@example.com") is None
    assert lookup(backend, "b@example.com") == b.registration


# --------------------------------------------------------------------------
# PENDING


def test_pending_is_one_value_that_cannot_pass_for_an_answer() -> None:
    assert Pending() is PENDING
    assert repr(PENDING) == "PENDING"
    with pytest.raises(TypeError, match="is PENDING"):
        bool(PENDING)
