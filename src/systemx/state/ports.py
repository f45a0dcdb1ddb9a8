"""Every state port of the exchange, in one place.

A port is a :class:`typing.Protocol`; each has a memory implementation
(:mod:`systemx.state.memory`, :mod:`systemx.state.presence`,
:mod:`systemx.state.profiles`) and, where the data must outlive the process, a
durable one. One contract suite per port (``tests/contract/``) runs against
every implementation.

* :class:`Directory`: who holds an address, cluster-wide. Claiming is how an
  address is bound; a claim held by another session is refused.
* :class:`PresenceIndex`: who is online, for PRESENCE queries.
* :class:`PartyRoster`: who is on which party line, on which node.
* :class:`ProfileStore`: durable wake profiles.
* :class:`RecordStore`: call records, written behind the calls.

**Answer now or later.** The core is sans-I/O, so a port cannot block on a
network round trip. A query therefore answers either at once, with its result,
or with :data:`PENDING`: "the answer comes later, as an event to the core"
(for example ``Exchange.on_claimed``). The memory implementations always answer
at once, so a single-node exchange takes the path it takes today, with no extra
loop pass and no extra latency; a Redis implementation answers ``PENDING`` and
its driver delivers the answer when Redis replies. The core keeps one
continuation per request, the code that runs on the answer whichever way it
came, so the two paths cannot drift apart. Writes (``release``, ``join``,
``leave``, presence updates, ``append``) return nothing: they are
fire-and-forget, in order, and a later query of the same implementation sees
them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Literal, NamedTuple, Protocol, final

import msgspec

from systemx.core.records import CallRecord, Disposition
from systemx.state.presence import PresenceIndex
from systemx.state.profiles import ProfileStore

__all__ = [
    "PENDING",
    "Claimed",
    "Concurrency",
    "Directory",
    "InUse",
    "PartyRoster",
    "Pending",
    "PresenceIndex",
    "ProfileStore",
    "RecordFilter",
    "RecordStore",
    "Registration",
    "RosterMember",
]

Concurrency = Literal["single", "parallel", "broadcast"]


@final
class Pending:
    """The type of :data:`PENDING`; there is one instance."""

    __slots__ = ()
    _instance: Pending | None = None

    def __new__(cls) -> Pending:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "PENDING"

    def __bool__(self) -> bool:
        # A pending answer is not a result: ``if lookup(...)`` must not treat it as a holder.
        raise TypeError("PENDING has no truth value; test `is PENDING`")


#: "The answer comes later, as an event to the core."
PENDING: Final = Pending()


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    """An address bound to a session, as the directory stores it.

    ``address`` is as its holder wrote it and ``key`` its lookup key
    (:func:`systemx.protocol.address.address_key`); ``node`` is the node whose
    session ``session_id`` holds it. ``epoch`` orders the claims of one key:
    the directory stamps each successful claim with a larger one, so of two
    answers about a key the larger epoch is the newer. ``metadata`` is shared,
    not copied: nobody may mutate it.
    """

    address: str
    key: str
    node: str
    session_id: str
    concurrency: Concurrency = "single"
    max_sessions: int | None = None
    max_listeners: int | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    epoch: int = 0


class Claimed(msgspec.Struct, frozen=True):
    """The claim succeeded; ``registration`` is what the directory now holds (its epoch set)."""

    registration: Registration


class InUse(msgspec.Struct, frozen=True):
    """Another session holds the key: ``holder``."""

    holder: Registration


class Directory(Protocol):
    """Who holds each address key. One holder per key, across every node."""

    def claim(self, reg: Registration) -> Claimed | InUse | Pending:
        """Bind ``reg.key`` to ``reg.session_id`` unless another session holds it.

        A claim by the session that already holds the key succeeds and replaces
        the registration (a re-REGISTER with new options). Answers later through
        the core's claim event when it returns :data:`PENDING`.
        """

    def release(self, key: str, session_id: str) -> None:
        """Unbind ``key`` if ``session_id`` holds it; a claim of any other session stays."""

    def lookup(self, key: str) -> Registration | Pending | None:
        """The registration holding ``key``, or ``None``."""


class RosterMember(NamedTuple):
    """One participant of a party line: its member id and the node holding it."""

    member_id: str
    node: str


class PartyRoster(Protocol):
    """Who is on which party line, and on which node, across every node.

    The core uses the member's address as ``member_id`` (an address has one
    holder, so it is unique); the roster treats it as an opaque string.
    """

    def join(self, party_key: str, member_id: str, node: str) -> None:
        """Add ``member_id`` on ``node`` to ``party_key``, after the members already there.

        Joining again keeps the member's place and records the new node.
        """

    def leave(self, party_key: str, member_id: str) -> None:
        """Remove ``member_id`` from ``party_key``; nothing happens if it is not there."""

    def members(self, party_key: str) -> list[RosterMember] | Pending:
        """The members of ``party_key`` in join order; empty for an unknown line."""

    def drop_node(self, node: str) -> None:
        """Remove every member held by ``node`` (it stopped or its link went down)."""


class RecordFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`RecordStore.query` selects; an absent filter does not restrict.

    ``address`` matches a record whose caller or callee is that address (the
    domain in any case); ``since <= ended_at < until``.
    """

    address: str | None = None
    disposition: Disposition | None = None
    since: float | None = None
    until: float | None = None


class RecordStore(Protocol):
    """Call records, newest first.

    A record's time is ``ended_at``: a record exists once its call ended, so
    ordering and the ``since``/``until`` window use it, and records with equal
    ``ended_at`` come newest appended first. Retention is each store's bound,
    by count (the oldest appended go first) and by age (:meth:`prune`).

    A durable store does I/O in ``append_many``: the driver buffers records and
    writes them in batches off the event loop (write-behind); the core never
    calls a store.
    """

    def append(self, record: CallRecord) -> None:
        """Store one record."""

    def append_many(self, records: Iterable[CallRecord]) -> None:
        """Store ``records`` in order, in one transaction where the store has them."""

    def query(
        self, filters: RecordFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[CallRecord]:
        """Matching records, newest first, skipping ``offset`` and at most ``limit``.

        Raises ``ValueError`` for a negative ``offset``; ``limit <= 0`` gives none.
        """

    def prune(self, now: float) -> int:
        """Drop the records older than the age bound at ``now``; the number dropped."""

    def close(self) -> None:
        """Release the store; calling it twice is harmless."""
