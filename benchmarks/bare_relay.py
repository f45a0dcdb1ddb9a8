"""The bare relay: the least work a Python WebSocket relay can do per message.

It is the baseline the exchange is compared against. A connection's first
frame is ``{"type":"PAIR","pair":KEY,"address":ADDR}``; once two connections
sent the same key both get ``{"type":"PAIRED","pair":KEY}``. Every later frame
is decoded with msgspec (the ``data`` value kept raw, as the exchange does), the
sender's address is set as ``from`` and the re-encoded frame goes to the other
connection of the pair. No registry, calls, validation or logging: the same
shape of work as relaying a MSG, minus the exchange.

Run ``python -m benchmarks.bare_relay [--host H] [--port P]``; it prints
``bare relay listening on ws://HOST:PORT`` on stderr when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import msgspec
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

__all__ = ["BareRelay", "RelayFrame", "main", "serve"]


class RelayFrame(msgspec.Struct, omit_defaults=True, gc=False):
    """Any relayed frame: the fields of a MSG, ``data`` left as raw JSON."""

    type: str
    call_id: str | None = None
    data: msgspec.Raw = msgspec.Raw()
    content_type: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")


class _Pair(msgspec.Struct):
    type: str
    pair: str
    address: str


_decode_frame = msgspec.json.Decoder(RelayFrame).decode
_decode_pair = msgspec.json.Decoder(_Pair).decode
_encode = msgspec.json.Encoder().encode


class BareRelay:
    """Pairs connections by key and forwards frames between the two ends."""

    def __init__(self) -> None:
        self.waiting: dict[str, _Link] = {}

    def listener(self, request: WSUpgradeRequest) -> WSListener:
        return _Link(self)


class _Link(WSListener):
    __slots__ = ("address", "peer", "relay", "transport")

    def __init__(self, relay: BareRelay) -> None:
        self.relay = relay
        self.transport: WSTransport | None = None
        self.peer: _Link | None = None
        self.address = ""

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if msg_type is not WSMsgType.TEXT and msg_type is not WSMsgType.BINARY:
            return
        payload = frame.get_payload_as_memoryview()
        peer = self.peer
        if peer is not None:
            msg = _decode_frame(payload)
            msg.from_ = self.address
            if peer.transport is not None:
                peer.transport.send(WSMsgType.TEXT, _encode(msg))
            return
        hello = _decode_pair(payload)
        self.address = hello.address
        other = self.relay.waiting.pop(hello.pair, None)
        if other is None:
            self.relay.waiting[hello.pair] = self
            return
        self.peer, other.peer = other, self
        reply = _encode({"type": "PAIRED", "pair": hello.pair})
        transport.send(WSMsgType.TEXT, reply)
        if other.transport is not None:
            other.transport.send(WSMsgType.TEXT, reply)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            if peer.transport is not None:
                peer.transport.send_close()
                peer.transport.disconnect()
        for key, link in list(self.relay.waiting.items()):
            if link is self:
                del self.relay.waiting[key]


async def serve(host: str, port: int) -> None:
    relay = BareRelay()
    server = await ws_create_server(relay.listener, host, port)
    sock = server.sockets[0].getsockname()
    print(f"bare relay listening on ws://{sock[0]}:{sock[1]}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bare_relay", description="The bare relay baseline."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
