"""Party lines: :class:`Party`, and what iterating one yields
(:class:`PartyMessage`, :class:`PartyEvent`)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal, NamedTuple

import msgspec

from systemx.client._channel import Channel
from systemx.client._link import Link
from systemx.client._payload import decode_data
from systemx.client.errors import ConnectionClosed, PartyClosed
from systemx.protocol.messages import PartyMsg

__all__ = ["Party", "PartyEvent", "PartyMessage"]


class PartyMessage(NamedTuple):
    """A PARTY_MSG; ``data`` decoded like a call :class:`~systemx.client.Message`."""

    party: str
    from_: str | None
    data: Any
    content_type: str | None


class PartyEvent(NamedTuple):
    """Someone joined or left the party line."""

    party: str
    kind: Literal["joined", "left"]
    address: str
    reason: str | None = None


class Party(Channel[PartyMessage | PartyEvent]):
    """Membership of one party line. Iterate it for messages and join/leave events.

    :meth:`send`, :meth:`send_json` and :meth:`send_bytes` send a PARTY_MSG;
    :meth:`recv` raises :class:`PartyClosed` (or :class:`ConnectionClosed`)
    once off the line and drained.
    """

    __slots__ = ("_participants", "left", "name")

    def __init__(self, link: Link, name: str, participants: list[str]) -> None:
        super().__init__(link)
        #: The line's name as its creator wrote it.
        self.name = name
        self._participants = participants
        #: Resolves to the reason (``left``, ``connection_closed``, ...) once off the line.
        self.left: asyncio.Future[str] = link.loop.create_future()

    def __repr__(self) -> str:
        return f"<Party {self.name} {len(self._participants)} participants>"

    @property
    def participants(self) -> list[str]:
        """Current participants, as of the last JOINED/PARTY_JOINED/PARTY_LEFT."""
        return list(self._participants)

    def _frame(self, data: msgspec.Raw, content_type: Any) -> PartyMsg:
        return PartyMsg(party=self.name, data=data, content_type=content_type)

    async def leave(self, timeout: float | None = None) -> None:
        """Send LEAVE and wait for LEFT. No-op once off the line."""
        if self._end_exc is None:
            await self._link._leave(self.name, timeout)

    def _deliver(self, msg: PartyMsg) -> None:
        self._inbox.put(
            PartyMessage(msg.party, msg.from_, decode_data(msg.data, msg.content_type), msg.content_type)
        )

    def _joined(self, address: str) -> None:
        if address not in self._participants:
            self._participants.append(address)
        self._inbox.put(PartyEvent(self.name, "joined", address))

    def _left(self, address: str, reason: str) -> None:
        try:
            self._participants.remove(address)
        except ValueError:
            pass
        self._inbox.put(PartyEvent(self.name, "left", address, reason))

    def _end(self, reason: str, exc: PartyClosed | ConnectionClosed) -> None:
        if self._end_exc is not None:
            return
        self._end_exc = exc
        self._inbox.close(exc)
        self.left.set_result(reason)
