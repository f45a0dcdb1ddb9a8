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
"""

from __future__ import annotations

from systemx.state.ports import RosterMember
from systemx.state.redis import scripts
from systemx.state.redis.conn import RedisConnection
from systemx.state.redis.keys import Keys

__all__ = ["RedisPartyRoster"]


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
