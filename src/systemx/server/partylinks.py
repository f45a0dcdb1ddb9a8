"""Party lines whose members sit on several nodes of a cluster.

The core's :class:`~systemx.core.parties.PartyLines` holds each line's members
on this node; :class:`PartyLinks` (its ``links``) holds the rest of the line,
for every line with members here or a JOIN on its way:

* **the roster in Redis** (:meth:`~systemx.state.redis.roster.RedisPartyRoster.enter`,
  ``quit``) is the truth: member -> node, in join order. A JOIN is one script
  call that checks the line cluster-wide (it exists or may be created, its
  name is no claimed or sleeping address, it has fewer than
  ``SYSTEMX_PARTY_MAX_PARTICIPANTS`` members) and answers every member, so the
  joiner's JOINED lists the members of every node. Every enter and quit gets
  a number from one counter.
* **a replica per line** here: every member (node, node epoch, address, join
  number), and per other node the count of its members, which is the line's
  ``remote``: a PARTY_MSG is sent to the members here and, built once, in one
  :class:`~systemx.protocol.link.PartyDeliver` per other node (one bus XADD
  each); the receiving node sends the frame as it is to its members. No other
  Redis command is issued per PARTY_MSG.
* **notices between nodes**: a join is told (:class:`~systemx.protocol.link.PartyJoin`)
  to the nodes that held members when it happened, a leave
  (:class:`~systemx.protocol.link.PartyLeave`) to the nodes that still hold
  members. A node tells its own members of a change numbered ``n`` only if they
  joined before ``n`` (those who joined after saw it in their JOINED), and of a
  leave only those who knew the member, so each member hears of each join and
  leave once, as a single process tells it.
* **node death**: every poll of the cluster (:meth:`check`) drops the members
  of nodes whose lease is gone or renewed with another epoch, and tells this
  node's members ``PARTY_LEFT disconnected``; the node that sweeps the dead
  node removes them from the roster (:meth:`drop_node`).

**Consistency window.** Notices travel the bus, so for the time a notice takes
(a few ms) a node may not know a member that just joined elsewhere: a
PARTY_MSG sent from there in that time does not reach the new member. The
participant limit is exact (the roster's script counts every node), but
counts the members of a killed node until it is swept (node TTL plus one
poll).
"""

from __future__ import annotations

import logging
from math import inf
from time import time as _now
from typing import TYPE_CHECKING

from systemx.protocol import link
from systemx.protocol import messages as m
from systemx.protocol.codes import JoinFailedReason, PartyLeftReason
from systemx.state.redis.conn import RedisError

if TYPE_CHECKING:
    from systemx.core.parties import PartyLine, PartyLines
    from systemx.core.session import Session
    from systemx.state.redis.adapter import Later
    from systemx.state.redis.bus import RedisBus
    from systemx.state.redis.keys import Keys
    from systemx.state.redis.roster import Entered, Quit, RedisPartyRoster

__all__ = ["PartyLinks"]

log = logging.getLogger("systemx.cluster")

_encode = m.encode
_encode_link = link.encode
_join = b"".join


class _Member:
    """A member of a line as this node knows it."""

    __slots__ = ("address", "announced", "born", "cutoff", "epoch", "node", "seq")

    def __init__(self, node: str, epoch: int, address: str, seq: int, announced: bool, born: int) -> None:
        self.node = node
        self.epoch = epoch
        self.address = address
        #: Its join number.
        self.seq = seq
        #: This node's members that joined before it heard PARTY_JOINED (its join notice arrived).
        self.announced = announced
        #: Members here that joined at or after this number never heard of it (it had left by then).
        self.cutoff: float = inf
        self.born = born


class _Party:
    """This node's replica of one line."""

    __slots__ = ("gone", "key", "local", "members", "nodes", "pending")

    def __init__(self, key: str) -> None:
        self.key = key
        #: member id -> member, on every node (this one's included).
        self.members: dict[str, _Member] = {}
        #: This node's members -> their join numbers.
        self.local: dict[Session, int] = {}
        #: Other node -> its members (the line's ``remote``).
        self.nodes: dict[str, int] = {}
        #: JOINs from here waiting for the roster.
        self.pending = 0
        #: While JOINs wait: members that left meanwhile -> (leave number, address, reason).
        self.gone: dict[str, tuple[float, str, str]] = {}


class PartyLinks:
    """The cluster's side of the party lines (see the module docstring)."""

    def __init__(
        self,
        lines: PartyLines,
        roster: RedisPartyRoster,
        later: Later,
        bus: RedisBus,
        keys: Keys,
        node: str,
        epoch: int,
        max_participants: int,
    ) -> None:
        self.lines = lines
        self.roster = roster
        self.later = later
        self.bus = bus
        self.keys = keys
        self.node = node
        self.epoch = epoch
        self.head = f"{node} {epoch}\n".encode()
        self.max_participants = max_participants
        self._parties: dict[str, _Party] = {}
        self._entering: dict[Session, int] = {}
        # line key -> head + PartyDeliver prefix, built once per line.
        self._prefixes: dict[str, bytes] = {}
        self._born = 0
        #: PartyDeliver envelopes sent, and frames delivered here from other nodes.
        self.relayed = 0
        self.delivered = 0
        #: Envelopes from other nodes that did not decode.
        self.invalid = 0

    def health(self) -> dict[str, int]:
        return {
            "lines": len(self._parties),
            "spanning": sum(1 for p in self._parties.values() if p.nodes),
            "relayed": self.relayed,
            "delivered": self.delivered,
        }

    # ------------------------------------------------------------ the core's calls

    def entering(self, s: Session) -> int:
        return self._entering.get(s, 0)

    def enter(self, s: Session, key: str, name: str, create: bool, now: float) -> None:
        party = self._parties.get(key)
        if party is None:
            party = self._parties[key] = _Party(key)
        party.pending += 1
        self._entering[s] = self._entering.get(s, 0) + 1
        address = s.address or ""
        keys = self.keys
        self.later.call(
            self.roster.enter(
                key,
                name,
                s.session_id,
                self.node,
                self.epoch,
                address,
                create=create,
                max_members=self.max_participants,
                taken=(keys.address(key), keys.sleeper(key)),
            ),
            lambda answer: self._entered(s, key, name, address, answer),
        )

    def participants(self, line: PartyLine) -> list[str]:
        party = self._parties.get(line.key)
        if party is None:
            return list(line.members.values())
        ranked = sorted((m for m in party.members.values() if m.cutoff == inf), key=_by_seq)
        return [m.address for m in ranked]

    def relay(self, line: PartyLine, frame: bytes) -> None:
        prefix = self._prefixes.get(line.key)
        if prefix is None:
            prefix = self._prefixes[line.key] = self.head + link.party_deliver_prefix(line.key)
        message = _join((prefix, frame, b"}"))
        send = self.bus.send
        for node in line.remote:
            send(node, message)
        self.relayed += len(line.remote)

    def left(self, s: Session, line: PartyLine, address: str, reason: str) -> None:
        party = self._parties.get(line.key)
        if party is None:
            return
        party.local.pop(s, None)
        party.members.pop(s.session_id, None)
        self._quit(party, s.session_id, address, reason)
        self._forget(party)

    # ------------------------------------------------------------ roster answers

    def _entered(self, s: Session, key: str, name: str, address: str, answer: Entered | RedisError) -> None:
        party = self._parties[key]
        party.pending -= 1
        waiting = self._entering.get(s, 1) - 1
        if waiting:
            self._entering[s] = waiting
        else:
            self._entering.pop(s, None)
        now = _now()
        lines = self.lines
        if isinstance(answer, RedisError):
            log.warning("JOIN %s: the roster did not answer: %s", name, answer)
            if not s.closed:
                lines.failed(s, now, name, JoinFailedReason.UNAVAILABLE)
            self._forget(party)
            return
        if answer.status not in ("joined", "again"):
            if not s.closed:
                lines.failed(s, now, name, answer.status)
            self._forget(party)
            return
        line = lines.by_key(key)
        if line is not None and s in line.members:  # a JOIN again while the first one waited
            lines.tell(s, _encode(m.Joined(party=line.name, participants=self.participants(line))))
            self._forget(party)
            return
        seq = answer.seq
        listed = set()
        for entry in answer.members:
            listed.add(entry.member_id)
            if entry.member_id == s.session_id or entry.member_id in party.gone:
                continue
            if entry.member_id not in party.members:
                self._add(party, entry.member_id, entry.node, entry.epoch, entry.address, entry.seq, False)
        for member_id, member in party.members.items():
            if member.seq < seq and member.node != self.node and member_id not in listed:
                # Gone from the roster before this JOIN (its notice is on the way): not in its JOINED.
                member.cutoff = min(member.cutoff, seq)
        if s.closed or s.address != address:
            # The session went (or took another address) while the roster answered: it leaves again.
            why = PartyLeftReason.DISCONNECTED if s.closed else PartyLeftReason.RECONFIGURED
            self._quit(party, s.session_id, address, why)
            self._forget(party)
            return
        line = lines.admit(s, key, answer.name, [entry.address for entry in answer.members])
        party.local[s] = seq
        self._add(party, s.session_id, self.node, self.epoch, address, seq, True)
        line.remote = party.nodes
        # What this node heard of after the roster answered: joins numbered later, leaves of listed members.
        for member in sorted(party.members.values(), key=_by_seq):
            if member.seq > seq and member.announced:
                lines.tell(s, _encode(m.PartyJoined(party=line.name, address=member.address)))
        for member_id, (number, gone_address, reason) in party.gone.items():
            if number > seq and member_id in listed:
                lines.tell(s, _encode(m.PartyLeft(party=line.name, address=gone_address, reason=reason)))
        if answer.status == "joined":
            notice = self.head + _encode_link(link.PartyJoin(key, s.session_id, address, seq))
            for node in {entry.node for entry in answer.members}:
                if node != self.node:
                    self.bus.send(node, notice)

    def _quit(self, party: _Party, member_id: str, address: str, reason: str) -> None:
        if party.pending:
            party.gone[member_id] = (inf, address, reason)
        key = party.key
        self.later.call(
            self.roster.quit(key, member_id),
            lambda answer: self._quitted(key, member_id, address, reason, answer),
        )

    def _quitted(
        self, key: str, member_id: str, address: str, reason: str, answer: Quit | RedisError
    ) -> None:
        if isinstance(answer, RedisError):
            log.warning("Leaving party line %s: the roster did not answer: %s", key, answer)
            return
        if not answer.left:
            return
        notice = self.head + _encode_link(link.PartyLeave(key, member_id, address, reason, answer.seq))
        for node in answer.nodes:
            if node != self.node:
                self.bus.send(node, notice)

    # ------------------------------------------------------------ other nodes

    def on_envelope(self, node: str, epoch: int, payload: bytes) -> None:
        """A link envelope from ``node`` (at ``epoch``) on the bus."""
        try:
            msg = link.decode(payload)
        except link.InvalidLinkMessage as exc:
            self.invalid += 1
            log.warning("Envelope from node %s ignored: %s", node, exc.detail)
            return
        if type(msg) is link.PartyDeliver:
            self.delivered += self.lines.deliver(msg.party, bytes(msg.frame))
        elif type(msg) is link.PartyJoin:
            self._joined_there(node, epoch, msg)
        elif type(msg) is link.PartyLeave:
            self._left_there(msg)
        else:
            self.invalid += 1
            log.warning("Envelope %s from node %s ignored: not for the bus", type(msg).__name__, node)

    def _joined_there(self, node: str, epoch: int, msg: link.PartyJoin) -> None:
        party = self._parties.get(msg.party)
        if party is None or msg.member in party.gone:
            return
        member = party.members.get(msg.member)
        if member is None:
            self._add(party, msg.member, node, epoch, msg.address, msg.seq, True)
        else:
            member.announced = True
        line = self.lines.by_key(msg.party)
        if line is None:
            return
        notice = _encode(m.PartyJoined(party=line.name, address=msg.address))
        tell = self.lines.tell
        for s, joined in party.local.items():
            if joined < msg.seq:
                tell(s, notice)

    def _left_there(self, msg: link.PartyLeave) -> None:
        party = self._parties.get(msg.party)
        if party is None:
            return
        if party.pending:
            party.gone[msg.member] = (msg.seq, msg.address, msg.reason)
        member = party.members.pop(msg.member, None)
        if member is not None:
            self._uncount(party, member.node)
            self._tell_left(party, member, msg.reason, msg.seq)

    # ------------------------------------------------------------ node liveness

    def mark(self) -> int:
        """A mark to give :meth:`check`: members learned after it are not judged by that check."""
        return self._born

    def check(self, alive: dict[str, int], mark: int) -> None:
        """Drop the members of nodes not in ``alive`` (node -> epoch) and tell this node's members."""
        for party in list(self._parties.values()):
            if not party.nodes:
                continue
            dead = [
                (member_id, member)
                for member_id, member in party.members.items()
                if member.node != self.node and member.born <= mark and alive.get(member.node) != member.epoch
            ]
            for member_id, member in dead:
                del party.members[member_id]
                self._uncount(party, member.node)
                if party.pending:
                    party.gone[member_id] = (inf, member.address, PartyLeftReason.DISCONNECTED)
                self._tell_left(party, member, PartyLeftReason.DISCONNECTED, inf)
            if dead:
                log.info("Party line %s: %d member(s) of dead nodes left", party.key, len(dead))

    async def drop_node(self, node: str) -> int:
        """Remove the dead ``node``'s members from the roster; how many."""
        removed = await self.roster.drop_node(node)
        if removed:
            log.info("Removed %d party member(s) of dead node %s from the roster", removed, node)
        return removed

    # ------------------------------------------------------------ helpers

    def _add(
        self, party: _Party, member_id: str, node: str, epoch: int, address: str, seq: int, announced: bool
    ) -> None:
        self._born += 1
        party.members[member_id] = _Member(node, epoch, address, seq, announced, self._born)
        if node != self.node:
            party.nodes[node] = party.nodes.get(node, 0) + 1

    def _uncount(self, party: _Party, node: str) -> None:
        count = party.nodes.get(node, 0) - 1
        if count > 0:
            party.nodes[node] = count
        else:
            party.nodes.pop(node, None)

    def _tell_left(self, party: _Party, member: _Member, reason: str, before: float) -> None:
        line = self.lines.by_key(party.key)
        if line is None:
            return
        limit = min(before, member.cutoff)
        notice = _encode(m.PartyLeft(party=line.name, address=member.address, reason=reason))
        tell = self.lines.tell
        for s, joined in party.local.items():
            if joined < limit and (joined > member.seq or member.announced):
                tell(s, notice)

    def _forget(self, party: _Party) -> None:
        """Drop the replica of a line with no member here and no JOIN waiting."""
        if party.pending:
            return
        party.gone.clear()
        if not party.local:
            self._parties.pop(party.key, None)
            self._prefixes.pop(party.key, None)


def _by_seq(member: _Member) -> int:
    return member.seq
