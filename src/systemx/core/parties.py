"""Party lines: group calls where every PARTY_MSG goes to every other participant.

:class:`PartyLines` is the only writer of the lines (by name key) and of each
session's ``parties``. A line exists while it has members: the last LEAVE (or
the last member going) closes it.

**In a cluster** a line's members may sit on several nodes. Here a line then
holds this node's members only, and :attr:`PartyLines.links` (a
:class:`PartyLinks`, set by the cluster) holds the rest: a JOIN's checks that
span the cluster (the line exists, its name is no address, it is not full)
and its JOINED wait for the roster (:meth:`PartyLinks.enter`, answered through
:meth:`PartyLines.admit` or :meth:`PartyLines.failed`); a PARTY_MSG goes to
the local members here and to the other nodes through
:meth:`PartyLinks.relay` when :attr:`PartyLine.remote` is not empty; a leave
is told to :meth:`PartyLinks.left`. Without links (one process) nothing of
this runs: the PARTY_MSG relay pays one attribute test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from systemx.core.session import Sender, Session
from systemx.protocol import messages as m
from systemx.protocol.address import address_key, is_valid_address
from systemx.protocol.codes import ErrorReason, JoinFailedReason, PartyLeftReason
from systemx.quicklog import get_logger

__all__ = ["PartyLine", "PartyLines", "PartyLinks"]

log = get_logger("systemx.exchange")

_encode = m.encode
_join = b"".join

# PARTY_MSG carries content_type only when the sender gave one.
_PARTY_CT_SUFFIX: dict[str | None, bytes] = {
    "text": b',"content_type":"text"}',
    "json": b',"content_type":"json"}',
    "binary": b',"content_type":"binary"}',
    None: b"}",
}


# The detail of a JOIN_FAILED the roster answered.
_REFUSALS: dict[str, str] = {
    JoinFailedReason.ADDRESS_IN_USE: "a registered address has this name",
    JoinFailedReason.NO_SUCH_PARTY: "no party line has this name",
    JoinFailedReason.UNAVAILABLE: "the cluster roster cannot be reached; try again",
}


class PartyLine:
    """A group call: every PARTY_MSG goes to every other participant."""

    __slots__ = ("key", "members", "name", "name_json", "remote")

    def __init__(self, name: str, key: str) -> None:
        self.name = name
        self.key = key
        self.name_json = _encode(name)
        #: This node's members, with their addresses.
        self.members: dict[Session, str] = {}
        #: In a cluster: the other nodes holding members (node -> how many); empty otherwise.
        self.remote: dict[str, int] = _NO_NODES


# Shared by every line of a single process (never written).
_NO_NODES: dict[str, int] = {}


class PartyLinks(Protocol):
    """The cluster's side of the party lines (see the module docstring)."""

    def enter(self, s: Session, key: str, name: str, create: bool, now: float) -> None:
        """Ask the roster to add ``s``; the answer comes as ``admit`` or ``failed``."""

    def entering(self, s: Session) -> int:
        """How many JOINs of ``s`` wait for the roster (they count towards its limit)."""

    def participants(self, line: PartyLine) -> list[str]:
        """Every participant's address, on any node, in join order."""

    def relay(self, line: PartyLine, frame: bytes) -> None:
        """Send the PARTY_MSG ``frame`` to the members on the nodes of ``line.remote``."""

    def left(self, s: Session, line: PartyLine, address: str, reason: str) -> None:
        """``s`` (``address``) left ``line`` for ``reason``; this node's members were told."""


class PartyLines(Sender):
    """Every party line. ``address_taken(key)`` says whether a name is an address's."""

    def __init__(
        self,
        send: Callable[[object, bytes], None],
        address_taken: Callable[[str], bool],
        max_participants: int,
        max_per_session: int,
    ) -> None:
        super().__init__(send)
        self._lines: dict[str, PartyLine] = {}
        self._address_taken = address_taken
        self._max_participants = max_participants
        self._max_per_session = max_per_session
        #: The cluster's side of the lines; None in a single process.
        self.links: PartyLinks | None = None

    def __len__(self) -> int:
        return len(self._lines)

    def __contains__(self, key: str) -> bool:
        return key in self._lines

    def get(self, name: str) -> PartyLine | None:
        return self._lines.get(address_key(name)) if is_valid_address(name) else None

    def by_key(self, key: str) -> PartyLine | None:
        """The line whose key is ``key``, if it has members here."""
        return self._lines.get(key)

    @property
    def lines(self) -> Iterable[PartyLine]:
        return self._lines.values()

    def on_join(self, s: Session, msg: m.Join, now: float) -> None:
        name = msg.party
        if not is_valid_address(name):
            self._failed(
                s,
                now,
                name[:300],
                JoinFailedReason.INVALID_ADDRESS,
                "a party line's name follows the address grammar",
            )
            return
        key = address_key(name)
        line = self._lines.get(key)
        if line is None:
            if self._address_taken(key):
                self._failed(
                    s, now, name, JoinFailedReason.ADDRESS_IN_USE, "a registered address has this name"
                )
                return
            if not msg.create_if_missing and self.links is None:
                self._failed(s, now, name, JoinFailedReason.NO_SUCH_PARTY, "no party line has this name")
                return
        elif s in line.members:
            links = self.links
            participants = list(line.members.values()) if links is None else links.participants(line)
            self._send_msg(s, m.Joined(party=line.name, participants=participants))
            return
        links = self.links
        if len(s.parties) + (0 if links is None else links.entering(s)) >= self._max_per_session:
            self._failed(
                s,
                now,
                name,
                JoinFailedReason.TOO_MANY_PARTIES,
                f"a session may be in at most {self._max_per_session} party lines",
            )
            return
        if links is not None:
            # The cluster checks the line's existence, name and size across nodes.
            links.enter(s, key, name, msg.create_if_missing, now)
            return
        if line is None:
            line = PartyLine(name, key)
            self._lines[key] = line
            log.info("Party line created: %s", name)
        elif len(line.members) >= self._max_participants:
            self._failed(
                s,
                now,
                name,
                JoinFailedReason.PARTY_FULL,
                f"a party line has at most {self._max_participants} participants",
            )
            return
        address = s.address or ""
        notice = _encode(m.PartyJoined(party=line.name, address=address))
        for member in line.members:
            self._send(member.conn, notice)
        line.members[s] = address
        s.parties[key] = line
        self._send_msg(s, m.Joined(party=line.name, participants=list(line.members.values())))
        log.info("Party joined: %s → %s (%d participants)", address, line.name, len(line.members))

    def _failed(self, s: Session, now: float, party: str, reason: str, detail: str) -> None:
        self._send_msg(s, m.JoinFailed(party=party, reason=reason, detail=detail))
        self._recorder.refused("JOIN", reason, party, now)

    # -------------------------------------------------------------- the cluster's calls

    def admit(self, s: Session, key: str, name: str, participants: list[str]) -> PartyLine:
        """The roster took ``s`` into line ``key``: tell this node's members, then JOINED to ``s``."""
        line = self._lines.get(key)
        if line is None:
            line = PartyLine(name, key)
            self._lines[key] = line
            log.info("Party line created here: %s", name)
        address = s.address or ""
        notice = _encode(m.PartyJoined(party=line.name, address=address))
        for member in line.members:
            self._send(member.conn, notice)
        line.members[s] = address
        s.parties[key] = line
        self._send_msg(s, m.Joined(party=line.name, participants=participants))
        log.info("Party joined: %s → %s (%d participants)", address, line.name, len(participants))
        return line

    def failed(self, s: Session, now: float, party: str, reason: str) -> None:
        """The roster refused the JOIN of ``s`` for ``reason`` (a JOIN_FAILED reason)."""
        detail = (
            f"a party line has at most {self._max_participants} participants"
            if reason == JoinFailedReason.PARTY_FULL
            else _REFUSALS.get(reason, reason)
        )
        self._failed(s, now, party, reason, detail)

    def tell(self, s: Session, frame: bytes) -> None:
        """Send ``frame`` to the local member ``s``."""
        self._send(s.conn, frame)

    def deliver(self, key: str, frame: bytes) -> int:
        """A PARTY_MSG ``frame`` from another node: to every member of line ``key`` here; how many."""
        line = self._lines.get(key)
        if line is None:
            return 0
        send = self._send
        for member in line.members:
            send(member.conn, frame)
        return len(line.members)

    def _member_line(self, s: Session, name: str, context: str) -> PartyLine | None:
        line = self._lines.get(address_key(name)) if is_valid_address(name) else None
        if line is None or s not in line.members:
            self._error(s, ErrorReason.NOT_IN_PARTY, context, f"not a participant of {name[:300]}")
            return None
        return line

    def on_party_msg(self, s: Session, msg: m.PartyMsg, now: float) -> None:
        line = self._member_line(s, msg.party, "PARTY_MSG")
        if line is None:
            return
        s.last_activity = now
        frame = _join(
            (
                b'{"type":"PARTY_MSG","party":',
                line.name_json,
                b',"from":',
                s.addr_json,
                b',"data":',
                msg.data,
                _PARTY_CT_SUFFIX[msg.content_type],
            )
        )
        send = self._send
        for member in line.members:
            if member is not s:
                send(member.conn, frame)
        if line.remote:
            self.links.relay(line, frame)  # type: ignore[union-attr]

    def on_leave(self, s: Session, msg: m.Leave, now: float) -> None:
        line = self._member_line(s, msg.party, "LEAVE")
        if line is not None:
            self._leave(s, line, PartyLeftReason.LEFT)
            self._send_msg(s, m.Left(party=line.name))

    def drop_session(self, s: Session, reason: str) -> None:
        """``s`` is going: it leaves every line it is on, the others hearing PARTY_LEFT ``reason``."""
        for line in list(s.parties.values()):
            self._leave(s, line, reason)

    def _leave(self, s: Session, line: PartyLine, reason: str) -> None:
        address = line.members.pop(s, None)
        s.parties.pop(line.key, None)
        if address is None:
            return
        if line.members:
            notice = _encode(m.PartyLeft(party=line.name, address=address, reason=reason))
            for member in line.members:
                self._send(member.conn, notice)
        else:
            del self._lines[line.key]
            log.info("Party line closed: %s", line.name)
        if self.links is not None:
            self.links.left(s, line, address, reason)
