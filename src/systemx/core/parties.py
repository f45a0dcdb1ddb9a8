"""Party lines: group calls where every PARTY_MSG goes to every other participant.

:class:`PartyLines` is the only writer of the lines (by name key) and of each
session's ``parties``. A line exists while it has members: the last LEAVE (or
the last member going) closes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from systemx.core.session import Sender, Session
from systemx.protocol import messages as m
from systemx.protocol.address import address_key, is_valid_address
from systemx.protocol.codes import ErrorReason, JoinFailedReason, PartyLeftReason
from systemx.quicklog import get_logger

__all__ = ["PartyLine", "PartyLines"]

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


class PartyLine:
    """A group call: every PARTY_MSG goes to every other participant."""

    __slots__ = ("key", "members", "name", "name_json")

    def __init__(self, name: str, key: str) -> None:
        self.name = name
        self.key = key
        self.name_json = _encode(name)
        self.members: dict[Session, str] = {}


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

    def __len__(self) -> int:
        return len(self._lines)

    def __contains__(self, key: str) -> bool:
        return key in self._lines

    def get(self, name: str) -> PartyLine | None:
        return self._lines.get(address_key(name)) if is_valid_address(name) else None

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
            if not msg.create_if_missing:
                self._failed(s, now, name, JoinFailedReason.NO_SUCH_PARTY, "no party line has this name")
                return
        elif s in line.members:
            self._send_msg(s, m.Joined(party=line.name, participants=list(line.members.values())))
            return
        if len(s.parties) >= self._max_per_session:
            self._failed(
                s,
                now,
                name,
                JoinFailedReason.TOO_MANY_PARTIES,
                f"a session may be in at most {self._max_per_session} party lines",
            )
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
        if not line.members:
            del self._lines[line.key]
            log.info("Party line closed: %s", line.name)
            return
        notice = _encode(m.PartyLeft(party=line.name, address=address, reason=reason))
        for member in line.members:
            self._send(member.conn, notice)
