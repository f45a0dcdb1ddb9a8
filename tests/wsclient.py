"""A small WebSocket client for tests, on picows: JSON in and out, raw frames, close codes.

Every wait takes a timeout in seconds scaled by ``SYSTEMX_TEST_TIMEOUT_SCALE``
(see :func:`scaled`), so slow machines get more time without editing tests.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any

import msgspec
from picows import WSFrame, WSListener, WSMsgType, WSParsedURL, WSTransport, ws_connect

__all__ = ["TIMEOUT", "TIMEOUT_SCALE", "ConnectionClosed", "WSClient", "scaled"]

TIMEOUT_SCALE = float(os.environ.get("SYSTEMX_TEST_TIMEOUT_SCALE", "1") or 1)


def scaled(seconds: float) -> float:
    """``seconds`` multiplied by the test timeout scale."""
    return seconds * TIMEOUT_SCALE


TIMEOUT = scaled(5.0)
"""Default bound on any single wait."""

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.encode


class ConnectionClosed(Exception):
    """The server closed the socket while a message was expected."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason!r}")
        self.code = code
        self.reason = reason


# Queue items: ("msg", bytes) | ("close", (code, reason)) | ("gone", None)
_Item = tuple[str, Any]


class _Listener(WSListener):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.disconnected = asyncio.Event()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            self.queue.put_nowait(("msg", frame.get_payload_as_bytes()))
        elif kind is WSMsgType.CLOSE:
            payload = frame.get_payload_as_bytes()
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.queue.put_nowait(("close", (code, payload[2:].decode("utf-8", "replace"))))
            if not transport.is_close_frame_sent:
                transport.send_close(code if code != 1005 else 1000)  # type: ignore[arg-type]
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.queue.put_nowait(("gone", None))
        self.disconnected.set()


class WSClient:
    """One WebSocket connection; use :meth:`connect`."""

    def __init__(self, transport: WSTransport, listener: _Listener) -> None:
        self.transport = transport
        self._listener = listener
        self.closed: tuple[int, str] | None = None
        self.skipped: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        receive_buffer: int | None = None,
        source: str | None = None,
        timeout: float = TIMEOUT,
    ) -> WSClient:
        """Open a connection; ``receive_buffer`` sets SO_RCVBUF before connecting (a small TCP window).

        ``source`` binds the client socket to that local IP address first (127.0.0.2 and
        so on: every loopback address is a distinct client IP to the server).
        """

        def make_socket(target: WSParsedURL) -> socket.socket | None:
            if receive_buffer is None and source is None:
                return None
            family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            if receive_buffer is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            if source is not None:
                sock.bind((source, 0))
            return sock

        transport, listener = await asyncio.wait_for(
            ws_connect(
                _Listener,
                url,
                ssl_context=ssl_context,
                max_frame_size=64 * 1024 * 1024,
                socket_factory=make_socket,
            ),
            timeout,
        )
        assert isinstance(listener, _Listener)
        return cls(transport, listener)

    # -- sending -------------------------------------------------------------

    def send_json(self, message: dict[str, Any]) -> None:
        self.transport.send(WSMsgType.TEXT, _json_encode(message))

    def send_raw(self, data: bytes, *, binary: bool = False) -> None:
        self.transport.send(WSMsgType.BINARY if binary else WSMsgType.TEXT, data)

    def send_frame(self, kind: WSMsgType, data: bytes, *, fin: bool = True) -> None:
        """One frame exactly as given (for fragmentation and protocol-error tests)."""
        self.transport.send(kind, data, fin=fin)

    def send_fragmented(self, data: bytes, parts: int) -> None:
        """``data`` as one TEXT message split into ``parts`` frames."""
        size = -(-len(data) // parts)
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        for i, chunk in enumerate(chunks):
            kind = WSMsgType.TEXT if i == 0 else WSMsgType.CONTINUATION
            self.transport.send(kind, chunk, fin=i == len(chunks) - 1)

    # -- receiving -----------------------------------------------------------

    async def _next(self, timeout: float) -> _Item:
        item = await asyncio.wait_for(self._listener.queue.get(), timeout)
        if item[0] == "close":
            self.closed = item[1]
        elif item[0] == "gone" and self.closed is None:
            self.closed = (1006, "")
        return item

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next message, decoded; :class:`ConnectionClosed` if the socket closes first."""
        if self.closed is not None:
            raise ConnectionClosed(*self.closed)
        kind, value = await self._next(timeout)
        if kind != "msg":
            assert self.closed is not None
            raise ConnectionClosed(*self.closed)
        decoded = _json_decode(value)
        assert isinstance(decoded, dict), decoded
        return decoded

    async def expect(
        self,
        type_: str,
        timeout: float = TIMEOUT,
        *,
        skip: tuple[str, ...] = (),
        from_: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """The next message, asserting its ``type`` and any given field values.

        ``from_`` stands for the field ``from``. Messages whose type is in
        ``skip`` are passed over (and kept in :attr:`skipped`).
        """
        if from_ is not None:
            fields["from"] = from_
        message = await self.recv(timeout)
        while message.get("type") in skip:
            self.skipped.append(message)
            message = await self.recv(timeout)
        assert message.get("type") == type_, message
        for name, value in fields.items():
            assert message.get(name) == value, (name, message)
        return message

    async def expect_close(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Wait for the socket to close; ``(code, reason)`` of the server's CLOSE (1006 if none).

        Messages arriving first are kept in :attr:`skipped`.
        """
        while self.closed is None:
            kind, value = await self._next(timeout)
            if kind == "msg":
                self.skipped.append(_json_decode(value))
        return self.closed

    async def wait_disconnected(self, timeout: float = TIMEOUT) -> None:
        await asyncio.wait_for(self._listener.disconnected.wait(), timeout)

    # -- helpers -------------------------------------------------------------

    async def register(self, address: str, timeout: float = TIMEOUT, **extra: Any) -> dict[str, Any]:
        self.send_json({"type": "REGISTER", "address": address, **extra})
        return await self.expect("REGISTERED", timeout, address=address)

    async def roundtrip(self, timeout: float = TIMEOUT) -> None:
        """HEARTBEAT and wait for its ACK: everything sent before it has been processed."""
        self.send_json({"type": "HEARTBEAT"})
        await self.expect("HEARTBEAT_ACK", timeout)

    def pause_reading(self) -> None:
        self.transport.underlying_transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.underlying_transport.resume_reading()

    async def close(self, code: int = 1000, timeout: float = TIMEOUT) -> None:
        """Close politely and wait for the socket to go (no error if it already has)."""
        if not self._listener.disconnected.is_set():
            self.transport.send_close(code)  # type: ignore[arg-type]
            try:
                await asyncio.wait_for(self._listener.disconnected.wait(), timeout)
            finally:
                self.transport.disconnect()
