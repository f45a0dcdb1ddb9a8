"""Calls: a connected :class:`Call`, an unanswered :class:`IncomingCall`, and :class:`Message`.

The owning :class:`~systemx.client.Client` feeds these objects from its reader;
they never read the socket themselves.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, NamedTuple

from systemx.client._inbox import Inbox
from systemx.client._payload import decode_data, encode_binary, encode_json, encode_text
from systemx.client.errors import CallEnded, ConnectionClosed
from systemx.protocol.messages import Answer, Hangup, Msg

if TYPE_CHECKING:
    import msgspec

    from systemx.client.client import Client

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


class Call:
    """A connected call. Iterate it for :class:`Message` until either side hangs up."""

    __slots__ = (
        "_client",
        "_end_exc",
        "_inbox",
        "call_id",
        "ended",
        "hangup_reason",
        "metadata",
        "outgoing",
        "peer",
    )

    def __init__(
        self,
        client: Client,
        call_id: str,
        peer: str,
        *,
        outgoing: bool,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._client = client
        self.call_id = call_id
        #: The other party: the dialled address for an outgoing call, the caller otherwise.
        self.peer = peer
        self.outgoing = outgoing
        self.metadata = metadata
        self._inbox: Inbox[Message] = Inbox(client.loop)
        #: Resolves to the hangup reason when the call ends (never raises).
        self.ended: asyncio.Future[str] = client.loop.create_future()
        self.hangup_reason: str | None = None
        self._end_exc: CallEnded | ConnectionClosed | None = None

    def __repr__(self) -> str:
        state = "active" if self.hangup_reason is None else f"ended:{self.hangup_reason}"
        return f"<Call {self.call_id} {'to' if self.outgoing else 'from'} {self.peer} {state}>"

    @property
    def active(self) -> bool:
        return self.hangup_reason is None

    async def send(self, text: str) -> None:
        """Send a ``text`` MSG."""
        await self._send(encode_text(text), "text")

    async def send_json(self, value: Any) -> None:
        """Send a ``json`` MSG (as a JSON-encoded string, like the reference SDK)."""
        await self._send(encode_json(value), "json")

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send a ``binary`` MSG (base64 on the wire)."""
        await self._send(encode_binary(data), "binary")

    async def _send(self, data: msgspec.Raw, content_type: Any) -> None:
        if self._end_exc is not None:
            raise self._end_exc.with_traceback(None)
        client = self._client
        client._send_message(Msg(call_id=self.call_id, data=data, content_type=content_type))
        if client._write_paused:
            await client._drain()

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message. Raises :class:`CallEnded` (or :class:`ConnectionClosed`)
        once the call has ended and every message received before that was read,
        and ``TimeoutError`` after ``timeout`` seconds."""
        item = self._inbox.get_nowait()
        if item is not None:
            return item
        if timeout is None:
            return await self._inbox.get()
        async with asyncio.timeout(timeout):
            return await self._inbox.get()

    def __aiter__(self) -> Call:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except (CallEnded, ConnectionClosed):
            raise StopAsyncIteration from None

    async def hangup(self, reason: str = "normal") -> None:
        """End the call; the peer hears ``HANGUP {reason}``. No-op if already ended."""
        if self.hangup_reason is not None:
            return
        client = self._client
        if client._closed is None:
            client._send_message(Hangup(call_id=self.call_id, reason=reason))
        client._forget(self.call_id)
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

    __slots__ = ("_client", "call_id", "ended", "from_", "hangup_reason", "metadata")

    def __init__(self, client: Client, call_id: str, from_: str, metadata: dict[str, Any] | None) -> None:
        self._client = client
        self.call_id = call_id
        self.from_ = from_
        self.metadata = metadata
        #: Resolves to the reason when the call ends before (or instead of) being answered.
        self.ended: asyncio.Future[str] = client.loop.create_future()
        self.hangup_reason: str | None = None

    def __repr__(self) -> str:
        return f"<IncomingCall {self.call_id} from {self.from_}>"

    async def answer(self) -> Call:
        """Send ANSWER and return the connected :class:`Call`.

        Raises :class:`CallEnded` when the caller already gave up (or the ring timed out).
        """
        if self.hangup_reason is not None:
            raise CallEnded(self.call_id, self.hangup_reason)
        client = self._client
        client._check_open()
        client._ringing_in.pop(self.call_id, None)
        # Registered before ANSWER goes out so that no MSG can arrive for an unknown call.
        call = Call(client, self.call_id, self.from_, outgoing=False, metadata=self.metadata)
        client._calls[self.call_id] = call
        client._send_message(Answer(call_id=self.call_id))
        return call

    async def reject(self, reason: str | None = None) -> None:
        """Refuse the call (HANGUP while ringing); the caller's ``dial`` raises ``CallRejected``."""
        if self.hangup_reason is not None:
            return
        client = self._client
        client._forget(self.call_id)
        if client._closed is None:
            client._send_message(Hangup(call_id=self.call_id, reason=reason))
        self._end(reason or "normal")

    def _end(self, reason: str) -> None:
        if self.hangup_reason is None:
            self.hangup_reason = reason
            self.ended.set_result(reason)
