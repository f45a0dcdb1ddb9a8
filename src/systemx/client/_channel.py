"""What a :class:`~systemx.client.Call` and a :class:`~systemx.client.Party` share.

Both send text, JSON and binary payloads as one frame type, queue what the
reader delivers in an :class:`~systemx.client._inbox.Inbox`, and end with an
exception that ``recv`` raises once the queue is drained and iteration turns
into the end of the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, Self, TypeVar

import msgspec

from systemx.client._inbox import Inbox
from systemx.client._link import Link
from systemx.client._payload import encode_binary, encode_json, encode_text
from systemx.client.errors import CallEnded, ConnectionClosed, PartyClosed

__all__ = ["Channel"]

T = TypeVar("T")


class Channel(Generic[T]):
    __slots__ = ("_end_exc", "_inbox", "_link")

    def __init__(self, link: Link) -> None:
        self._link = link
        self._inbox: Inbox[T] = Inbox(link.loop)
        self._end_exc: CallEnded | PartyClosed | ConnectionClosed | None = None

    def _frame(self, data: msgspec.Raw, content_type: Any) -> Any:
        """The frame that carries ``data``."""
        raise NotImplementedError

    async def send(self, text: str) -> None:
        """Send ``text`` (content type ``text``)."""
        await self._send(encode_text(text), "text")

    async def send_json(self, value: Any) -> None:
        """Send ``value`` as content type ``json`` (a JSON-encoded string, like the reference SDK)."""
        await self._send(encode_json(value), "json")

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as content type ``binary`` (base64 on the wire)."""
        await self._send(encode_binary(data), "binary")

    async def _send(self, data: msgspec.Raw, content_type: Any) -> None:
        if self._end_exc is not None:
            raise self._end_exc.with_traceback(None)
        link = self._link
        link._send_message(self._frame(data, content_type))
        if link._write_paused:
            await link._drain()

    async def recv(self, timeout: float | None = None) -> T:
        """The next item. Once this has ended and every item received before that was
        read, raises why it ended (:class:`CallEnded`, :class:`PartyClosed` or
        :class:`ConnectionClosed`); ``TimeoutError`` after ``timeout`` seconds."""
        item = self._inbox.get_nowait()
        if item is not None:
            return item
        if timeout is None:
            return await self._inbox.get()
        async with asyncio.timeout(timeout):
            return await self._inbox.get()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.recv()
        except (CallEnded, PartyClosed, ConnectionClosed):
            raise StopAsyncIteration from None
