"""Party lines: :class:`Party`, and what iterating one yields
(:class:`PartyMessage`, :class:`PartyEvent`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from systemx.client._inbox import Inbox
from systemx.client._payload import decode_data, encode_binary, encode_json, encode_text
from systemx.client.errors import ConnectionClosed, PartyClosed
from systemx.protocol.messages import Leave, PartyMsg

if TYPE_CHECKING:
    import msgspec

    from systemx.client.client import Client

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


class Party:
    """Membership of one party line. Iterate it for messages and join/leave events."""

    __slots__ = ("_client", "_end_exc", "_inbox", "_participants", "left", "name")

    def __init__(self, client: Client, name: str, participants: list[str]) -> None:
        self._client = client
        self.name = name
        self._participants = participants
        self._inbox: Inbox[PartyMessage | PartyEvent] = Inbox(client.loop)
        #: Resolves to the reason (``left``, ``connection_closed``, ...) once off the line.
        self.left: asyncio.Future[str] = client.loop.create_future()
        self._end_exc: PartyClosed | ConnectionClosed | None = None

    def __repr__(self) -> str:
        return f"<Party {self.name} {len(self._participants)} participants>"

    @property
    def participants(self) -> list[str]:
        """Current participants, as of the last JOINED/PARTY_JOINED/PARTY_LEFT."""
        return list(self._participants)

    async def send(self, text: str) -> None:
        await self._send(encode_text(text), "text")

    async def send_json(self, value: Any) -> None:
        await self._send(encode_json(value), "json")

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        await self._send(encode_binary(data), "binary")

    async def _send(self, data: msgspec.Raw, content_type: Any) -> None:
        if self._end_exc is not None:
            raise self._end_exc.with_traceback(None)
        client = self._client
        client._send_message(PartyMsg(party=self.name, data=data, content_type=content_type))
        if client._write_paused:
            await client._drain()

    async def recv(self, timeout: float | None = None) -> PartyMessage | PartyEvent:
        """Next message or event; raises :class:`PartyClosed`/:class:`ConnectionClosed`
        once off the line and drained, ``TimeoutError`` after ``timeout`` seconds."""
        if timeout is None:
            return await self._inbox.get()
        async with asyncio.timeout(timeout):
            return await self._inbox.get()

    def __aiter__(self) -> Party:
        return self

    async def __anext__(self) -> PartyMessage | PartyEvent:
        try:
            return await self.recv()
        except (PartyClosed, ConnectionClosed):
            raise StopAsyncIteration from None

    async def leave(self, timeout: float | None = None) -> None:
        """Send LEAVE and wait for LEFT. No-op once off the line."""
        if self._end_exc is not None:
            return
        client = self._client
        waiter = client.loop.create_future()
        client._leave_waiters.append((self.name, waiter))
        client._send_message(Leave(party=self.name))
        await client._wait(waiter, client.request_timeout if timeout is None else timeout)

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
