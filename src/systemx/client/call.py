"""Calls: a connected :class:`Call`, an unanswered :class:`IncomingCall`, and :class:`Message`.

The owning :class:`~systemx.client.Client` feeds these objects from its reader;
they never read the socket themselves, and reach the client only through its
:class:`~systemx.client._link.Link`.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import msgspec

from systemx.client._channel import Channel
from systemx.client._link import Link
from systemx.client._payload import decode_data
from systemx.client.errors import CallEnded, ConnectionClosed
from systemx.protocol.messages import Msg

__all__ = ["Call", "IncomingCall", "Message"]

#: ``hangup_reason`` of calls cut short because the WebSocket closed.
CONNECTION_CLOSED = "connection_closed"


class Message(NamedTuple):
    """One MSG received on a call, ``data`` decoded per ``content_type``:
    ``str`` for text, the parsed value for json, ``bytes`` for binary."""

    from_: str | None
    data: Any
    content_type: str
    call_id: str


class Call(Channel[Message]):
    """A connected call. Iterate it for :class:`Message` until either side hangs up.

    :meth:`send`, :meth:`send_json` and :meth:`send_bytes` send a MSG;
    :meth:`recv` raises :class:`CallEnded` (or :class:`ConnectionClosed`) once
    the call has ended and every message received before that was read.
    """

    __slots__ = ("call_id", "ended", "hangup_reason", "metadata", "outgoing", "peer")

    def __init__(
        self,
        link: Link,
        call_id: str,
        peer: str,
        *,
        outgoing: bool,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(link)
        self.call_id = call_id
        #: The other party: the dialled address for an outgoing call, the caller otherwise.
        self.peer = peer
        self.outgoing = outgoing
        self.metadata = metadata
        #: Resolves to the hangup reason when the call ends (never raises).
        self.ended: asyncio.Future[str] = link.loop.create_future()
        self.hangup_reason: str | None = None

    def __repr__(self) -> str:
        state = "active" if self.hangup_reason is None else f"ended:{self.hangup_reason}"
        return f"<Call {self.call_id} {'to' if self.outgoing else 'from'} {self.peer} {state}>"

    @property
    def active(self) -> bool:
        return self.hangup_reason is None

    def _frame(self, data: msgspec.Raw, content_type: Any) -> Msg:
        return Msg(call_id=self.call_id, data=data, content_type=content_type)

    async def hangup(self, reason: str = "normal") -> None:
        """End the call; the peer hears ``HANGUP {reason}``. No-op if already ended."""
        if self.hangup_reason is not None:
            return
        self._link._hang_up(self.call_id, reason)
        self._end(reason, CallEnded(self.call_id, reason))

    def _deliver(self, msg: Msg) -> None:
        content_type = msg.content_type or "text"
        self._inbox.put(Message(msg.from_, decode_data(msg.data, content_type), content_type, msg.call_id))

    def _end(self, reason: str, exc: CallEnded | ConnectionClosed) -> None:
        if self.hangup_reason is not None:
            return
        self.hangup_reason = reason
        self._end_exc = exc
        self._inbox.close(exc)
        self.ended.set_result(reason)


class IncomingCall:
    """A RING not yet answered: :meth:`answer` it or :meth:`reject` it."""

    __slots__ = ("_link", "call_id", "ended", "from_", "hangup_reason", "metadata")

    def __init__(self, link: Link, call_id: str, from_: str, metadata: dict[str, Any] | None) -> None:
        self._link = link
        self.call_id = call_id
        self.from_ = from_
        self.metadata = metadata
        #: Resolves to the reason when the call ends before (or instead of) being answered.
        self.ended: asyncio.Future[str] = link.loop.create_future()
        self.hangup_reason: str | None = None

    def __repr__(self) -> str:
        return f"<IncomingCall {self.call_id} from {self.from_}>"

    async def answer(self) -> Call:
        """Send ANSWER and return the connected :class:`Call`.

        Raises :class:`CallEnded` when the caller already gave up (or the ring timed out).
        """
        if self.hangup_reason is not None:
            raise CallEnded(self.call_id, self.hangup_reason)
        call = Call(self._link, self.call_id, self.from_, outgoing=False, metadata=self.metadata)
        self._link._answer(call)
        return call

    async def reject(self, reason: str | None = None) -> None:
        """Refuse the call (HANGUP while ringing); the caller's ``dial`` raises ``CallRejected``."""
        if self.hangup_reason is not None:
            return
        self._link._hang_up(self.call_id, reason)
        self._end(reason or "normal")

    def _end(self, reason: str) -> None:
        if self.hangup_reason is None:
            self.hangup_reason = reason
            self.ended.set_result(reason)
