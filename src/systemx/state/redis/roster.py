"""Party-line membership across the cluster, in Redis (``roster.lua``).

Per line: members with their node in join order, and a count of members per
node, so a node sending a PARTY_MSG learns the nodes interested in the line
(:meth:`RedisPartyRoster.nodes`) and sends it once per node, never once per
member. Per node: an index of its memberships, so :meth:`drop_node` removes a
dead node's members in batches (500 per script call) without scanning every
line. Each operation is one atomic script call (~10 µs Redis CPU).

Presented to the core through :class:`systemx.state.redis.adapter.PendingRoster`:
``join``, ``leave`` and ``drop_node`` are fire-and-forget, in order;
``members`` answers :data:`~systemx.state.ports.PENDING` and arrives later.

**The cluster's party lines** use :meth:`RedisPartyRoster.enter` and
:meth:`RedisPartyRoster.quit` instead: an enter checks and joins in one script
call (the line exists or may be created, its name is no address, it is not
full cluster-wide) and answers the whole roster with the member's sequence
number; a quit answers its own sequence number and the nodes still holding
members. Enters and quits of every line share one counter, so a node compares
a change's number with the number its own member joined at to know whether
that member already heard of the change (see ``systemx.server.partylinks``).
"""

from __future__ import annotations

from typing import NamedTuple

from systemx.state.ports import RosterMember
from systemx.state.redis import scripts
from systemx.state.redis.conn import RedisConnection
from systemx.state.redis.keys import Keys

__all__ = ["Entered", "Quit", "RedisPartyRoster", "RosterEntry"]


class RosterEntry(NamedTuple):
    """One member of a line as :meth:`RedisPartyRoster.enter` lists it."""

    member_id: str
    node: str
    epoch: int
    address: str
    seq: int


class Entered(NamedTuple):
    """The answer of :meth:`RedisPartyRoster.enter`.

    ``status``: ``joined`` (added now), ``again`` (was a member already), or the
    refusal: ``address_in_use``, ``no_such_party``, ``party_full``. For the first
    two, ``seq`` is the member's join number, ``name`` the line's name as its
    creator wrote it and ``members`` every member in join order.
    """

    status: str
    seq: int = 0
    name: str = ""
    members: tuple[RosterEntry, ...] = ()


class Quit(NamedTuple):
    """The answer of :meth:`RedisPartyRoster.quit`: ``left`` false when the member was not there."""

    left: bool
    seq: int = 0
    nodes: tuple[str, ...] = ()


class RedisPartyRoster:
    """The :class:`~systemx.state.ports.PartyRoster`, async, on ``conn``."""

    def __init__(self, conn: RedisConnection, *, keys: Keys | None = None, drop_batch: int = 500) -> None:
        self.conn = conn
        self.keys = keys or Keys()
        self.drop_batch = drop_batch
        conn.register(scripts.ROSTER)

    async def join(self, party_key: str, member_id: str, node: str) -> None:
        """Add ``member_id`` on ``node``; joining again keeps the place and records the node."""
        await self.conn.evalsha(scripts.ROSTER, (), ("join", self.keys.prefix, party_key, member_id, node))

    async def leave(self, party_key: str, member_id: str) -> None:
        """Remove ``member_id`` from ``party_key``; nothing happens if it is not there."""
        await self.conn.evalsha(scripts.ROSTER, (), ("leave", self.keys.prefix, party_key, member_id))

    async def members(self, party_key: str) -> list[RosterMember]:
        """The members of ``party_key`` in join order; empty for an unknown line."""
        flat = await self.conn.evalsha(scripts.ROSTER, (), ("members", self.keys.prefix, party_key))
        return [RosterMember(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    async def nodes(self, party_key: str) -> set[str]:
        """The nodes holding at least one member of ``party_key``."""
        counts = await self.conn.execute("HKEYS", f"{self.keys.prefix}:pl:{{{party_key}}}:n")
        return {node.decode() for node in counts}

    async def enter(
        self,
        party_key: str,
        name: str,
        member_id: str,
        node: str,
        epoch: int,
        address: str,
        *,
        create: bool,
        max_members: int,
        taken: tuple[str, ...] = (),
    ) -> Entered:
        """Join ``member_id`` (``address`` on ``node`` at ``epoch``) to ``party_key``, checked.

        A line that does not exist is created only with ``create``, and only
        when none of the keys ``taken`` exists (the name's claim, its sleeper
        profile); a line with ``max_members`` members refuses.
        """
        reply = await self.conn.evalsha(
            scripts.ROSTER,
            (),
            (
                "enter",
                self.keys.prefix,
                party_key,
                member_id,
                node,
                epoch,
                address,
                name,
                "1" if create else "0",
                max_members,
                *taken,
            ),
        )
        status = reply[0].decode()
        if len(reply) == 1:
            return Entered(status)
        entries = []
        for i in range(3, len(reply), 3):
            where, nepoch, addr = reply[i + 1].decode().split(" ", 2)
            entries.append(RosterEntry(reply[i].decode(), where, int(nepoch), addr, int(reply[i + 2])))
        return Entered(status, int(reply[1]), reply[2].decode(), tuple(entries))

    async def quit(self, party_key: str, member_id: str) -> Quit:
        """Remove ``member_id`` from ``party_key``, numbered as enters are."""
        reply = await self.conn.evalsha(scripts.ROSTER, (), ("quit", self.keys.prefix, party_key, member_id))
        if reply[0] == 0:
            return Quit(False)
        return Quit(True, int(reply[1]), tuple(n.decode() for n in reply[2:]))

    async def drop_node(self, node: str) -> int:
        """Remove every member held by ``node``, in batches; the number removed."""
        removed = 0
        while True:
            done, left = await self.conn.evalsha(
                scripts.ROSTER, (), ("drop", self.keys.prefix, node, self.drop_batch)
            )
            removed += int(done)
            if left == 0:
                return removed
