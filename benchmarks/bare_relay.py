"""The bare relay: the least work a Python WebSocket relay can do per message.

It is the baseline the exchange is compared against. A connection's first
frame is ``{"type":"PAIR","pair":KEY,"address":ADDR}``; once two connections
sent the same key both get ``{"type":"PAIRED","pair":KEY}``. Every later frame
is decoded with msgspec (the ``data`` value kept raw, as the exchange does), the
sender's address is set as ``from`` and the re-encoded frame goes to the other
connection of the pair. No registry, calls, validation or logging: the same
shape of work as relaying a MSG, minus the exchange.

Unpaired connections get the least a call router does, as in the Bun baseline
(``benchmarks/bun_relay.js``), so that the ``connect`` and ``callsetup``
scenarios can run against it: REGISTER (REGISTERED with a session id; the
address is looked up by DIAL), HEARTBEAT (HEARTBEAT_ACK), DIAL (RING to the
callee with a fresh call id, RINGING to the caller if it asked, a ring timer; BUSY
``no_such_address`` or ``already_in_call``), ANSWER (CONNECTED to the caller)
and HANGUP (HANGUP to the other party). No validation, presence or logging:
a lower bound for a Python call router on picows.

Run ``python -m benchmarks.bare_relay [--host H] [--port P]``; it prints
``bare relay listening on ws://HOST:PORT`` on stderr when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any

import msgspec
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

__all__ = ["BareRelay", "RelayFrame", "main", "serve"]


class RelayFrame(msgspec.Struct, omit_defaults=True, gc=False):
    """Any relayed frame: the fields of a MSG, ``data`` left as raw JSON."""

    type: str
    call_id: str | None = None
    data: msgspec.Raw = msgspec.Raw()
    content_type: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")


class _Hello(msgspec.Struct, gc=False):
    """A frame of an unpaired connection: PAIR or one of the call router's."""

    type: str
    pair: str = ""
    address: str = ""
    to: str = ""
    call_id: str = ""
    reason: str = ""
    ringing: bool = False


_decode_frame = msgspec.json.Decoder(RelayFrame).decode
_decode_hello = msgspec.json.Decoder(_Hello).decode
_encode = msgspec.json.Encoder().encode

RING_TIMEOUT_S = 30.0


class _Ids:
    """Random 128-bit ids as hex, entropy drawn from the OS in blocks."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def __call__(self) -> str:
        if self._at >= len(self._pool):
            self._pool = os.urandom(16 * 256)
            self._at = 0
        at = self._at
        self._at = at + 16
        return self._pool[at : at + 16].hex()


class _Call:
    __slots__ = ("call_id", "callee", "caller", "timer", "to")

    def __init__(self, call_id: str, caller: _Link, callee: _Link, to: str) -> None:
        self.call_id = call_id
        self.caller = caller
        self.callee = callee
        self.to = to
        self.timer: asyncio.TimerHandle | None = None


class BareRelay:
    """Pairs connections by key and forwards frames between the two ends; places calls."""

    def __init__(self) -> None:
        self.waiting: dict[str, _Link] = {}
        self.registry: dict[str, _Link] = {}
        self.calls: dict[str, _Call] = {}
        self.new_id = _Ids()

    def listener(self, request: WSUpgradeRequest) -> WSListener:
        return _Link(self)

    def end_call(self, call: _Call) -> None:
        self.calls.pop(call.call_id, None)
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        call.caller.call = None
        call.callee.call = None

    def ring_timeout(self, call: _Call) -> None:
        if self.calls.get(call.call_id) is call:
            self.end_call(call)
            call.caller.send({"type": "BUSY", "to": call.to, "reason": "timeout", "call_id": call.call_id})
            call.callee.send({"type": "HANGUP", "call_id": call.call_id, "reason": "timeout"})


class _Link(WSListener):
    __slots__ = ("address", "call", "pair", "peer", "relay", "transport")

    def __init__(self, relay: BareRelay) -> None:
        self.relay = relay
        self.transport: WSTransport | None = None
        self.peer: _Link | None = None
        self.pair = ""
        self.call: _Call | None = None
        self.address = ""

    def send(self, msg: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.send(WSMsgType.TEXT, _encode(msg))

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
        try:
            hello = _decode_hello(payload)
        except msgspec.DecodeError:
            transport.send_close(WSCloseCode.INVALID_TEXT, b"not JSON")
            transport.disconnect()
            return
        kind = hello.type
        if kind == "PAIR":
            self._pair(hello)
        elif kind == "REGISTER":
            self.address = hello.address
            self.relay.registry[hello.address] = self
            self.send({"type": "REGISTERED", "address": hello.address, "session_id": self.relay.new_id()})
        elif kind == "HEARTBEAT":
            self.send({"type": "HEARTBEAT_ACK", "timestamp": time.time_ns() // 1_000_000})
        elif kind == "DIAL":
            self._dial(hello)
        elif kind == "ANSWER":
            call = self.relay.calls.get(hello.call_id)
            if call is not None and call.callee is self:
                if call.timer is not None:
                    call.timer.cancel()
                    call.timer = None
                call.caller.send({"type": "CONNECTED", "call_id": call.call_id, "to": call.to})
        elif kind == "HANGUP":
            call = self.relay.calls.get(hello.call_id)
            if call is not None and (call.caller is self or call.callee is self):
                self.relay.end_call(call)
                other = call.callee if call.caller is self else call.caller
                other.send({"type": "HANGUP", "call_id": call.call_id, "reason": hello.reason or "normal"})

    def _pair(self, hello: _Hello) -> None:
        self.address = hello.address
        other = self.relay.waiting.pop(hello.pair, None)
        if other is None:
            self.pair = hello.pair
            self.relay.waiting[hello.pair] = self
            return
        other.pair = ""
        self.peer, other.peer = other, self
        reply = {"type": "PAIRED", "pair": hello.pair}
        self.send(reply)
        other.send(reply)

    def _dial(self, hello: _Hello) -> None:
        relay = self.relay
        callee = relay.registry.get(hello.to)
        if callee is None:
            self.send({"type": "BUSY", "to": hello.to, "reason": "no_such_address"})
            return
        if callee.call is not None or self.call is not None:
            self.send({"type": "BUSY", "to": hello.to, "reason": "already_in_call"})
            return
        call = _Call(relay.new_id(), self, callee, hello.to)
        call.timer = asyncio.get_running_loop().call_later(RING_TIMEOUT_S, relay.ring_timeout, call)
        relay.calls[call.call_id] = call
        self.call = callee.call = call
        callee.send({"type": "RING", "from": self.address, "call_id": call.call_id})
        if hello.ringing:
            self.send({"type": "RINGING", "call_id": call.call_id, "to": hello.to})

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        relay = self.relay
        self.transport = None
        if relay.registry.get(self.address) is self:
            del relay.registry[self.address]
        call = self.call
        if call is not None:
            relay.end_call(call)
            other = call.callee if call.caller is self else call.caller
            other.send({"type": "HANGUP", "call_id": call.call_id, "reason": "peer_disconnected"})
        if self.pair and relay.waiting.get(self.pair) is self:
            del relay.waiting[self.pair]
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            if peer.transport is not None:
                peer.transport.send_close()
                peer.transport.disconnect()


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
