"""Random frames for robustness runs: valid messages, mutated fields, random JSON, broken bytes.

:class:`FrameMaker` draws from a seeded :class:`random.Random`, so a failing run can
be replayed with its seed. Every message type of PROTOCOL.md appears, first in a
valid shape and then with one field given a value of another JSON type, deeply
nested, huge, or removed; besides those come random JSON values of any type and
depth, and byte strings that are not JSON (truncated, trailing garbage, bad escapes).
Invalid UTF-8 is drawn only when asked for (it closes the socket with 1007).
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

__all__ = ["FrameMaker", "message_templates"]

_encode = msgspec.json.encode


def message_templates(address: str, other: str) -> list[dict[str, Any]]:
    """One valid-looking message of every type an endpoint may send (and some it may not)."""
    call_id = "00000000-0000-4000-8000-000000000000"
    return [
        {
            "type": "REGISTER",
            "address": address,
            "metadata": {"capabilities": ["chat"], "status": "available"},
        },
        {
            "type": "REGISTER",
            "address": address,
            "mode": "wake_on_ring",
            "wake_handler": {"type": "webhook", "url": "http://127.0.0.1:9/wake", "payload": {"k": 1}},
        },
        {"type": "REGISTER", "address": address, "concurrency": "parallel", "max_sessions": 2},
        {"type": "REGISTER", "address": address, "concurrency": "broadcast", "max_listeners": 2},
        {"type": "STATUS", "status": "busy", "auto_sleep": {"idle_timeout_seconds": 30}},
        {"type": "HEARTBEAT"},
        {"type": "DIAL", "to": other, "metadata": {"topic": "x"}},
        {"type": "ANSWER", "call_id": call_id, "from": other},
        {"type": "HANGUP", "call_id": call_id, "reason": "normal", "from": other},
        {"type": "MSG", "call_id": call_id, "data": {"a": [1, 2]}, "content_type": "json", "from": other},
        {"type": "JOIN", "party": "room@fuzz.example.com", "create_if_missing": True},
        {"type": "PARTY_MSG", "party": "room@fuzz.example.com", "data": "hi", "content_type": "text"},
        {"type": "LEAVE", "party": "room@fuzz.example.com"},
        {
            "type": "PRESENCE",
            "query": {
                "domain": "fuzz.example.com",
                "capabilities": ["chat"],
                "near": {"lat": 1.0, "lon": 2.0, "radius_km": 10.0},
                "status": "available",
            },
            "limit": 5,
        },
        {"type": "SLEEP_ACK"},
        {"type": "REGISTER_PBX", "domain": "sub.example.com", "routes": ["*@sub.example.com"]},
        {"type": "DIAL_FORWARD", "from": address, "to": other, "call_id": call_id, "metadata": {}},
        {"type": "RING", "from": other, "call_id": call_id},
        {"type": "ERROR", "reason": "x", "context": "y", "detail": "z"},
    ]


class FrameMaker:
    """Random frames; ``unregister`` and ``invalid_utf8`` allow the frames that close the socket."""

    def __init__(
        self,
        rng: random.Random,
        address: str,
        other: str,
        *,
        max_bytes: int = 64 * 1024,
        unregister: bool = False,
        invalid_utf8: bool = False,
    ) -> None:
        self.rng = rng
        self.address = address
        self.other = other
        self.max_bytes = max_bytes
        self.unregister = unregister
        self.invalid_utf8 = invalid_utf8

    # -------------------------------------------------------------- values

    def scalar(self) -> Any:
        r = self.rng
        return r.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                r.randint(-(2**70), 2**70),
                r.random() * 10 ** r.randint(-300, 300),
                "",
                "x" * r.randint(1, 40),
                "a@b.c",
                self.other,
                "\u00e9\u4e2d\U0001f600",
                "\x00\x1f",
                "available",
                "asleep",
                "json",
            ]
        )

    def value(self, depth: int = 0) -> Any:
        """A random JSON value; containers get rarer with depth."""
        r = self.rng
        if depth > 6 or r.random() < 0.5:
            return self.scalar()
        if r.random() < 0.5:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {
            r.choice(["type", "address", "k", "status", "location", ""]): self.value(depth + 1)
            for _ in range(r.randint(0, 4))
        }

    def deep(self) -> bytes:
        depth = self.rng.choice([31, 32, 33, 100, 500, 990, 1_000, 5_000, 20_000])
        if self.rng.random() < 0.5:
            return b"[" * depth + b"1" + b"]" * depth
        return b'{"k":' * depth + b"1" + b"}" * depth

    # -------------------------------------------------------------- frames

    def mutate(self, message: dict[str, Any]) -> bytes:
        r = self.rng
        message = dict(message)
        fields = [k for k in message if k != "type"] or ["type"]
        name = r.choice([*fields, "type", "extra"])
        how = r.random()
        if how < 0.15 and name in message:
            del message[name]
        elif how < 0.3:
            return self._with_raw(message, name, self.deep())
        elif how < 0.4:
            message[name] = "y" * r.randint(300, 20_000)
        elif how < 0.5 and isinstance(message.get(name), dict):
            inner = dict(message[name])
            key = r.choice(list(inner) or ["k"])
            inner[key] = self.value()
            message[name] = inner
        else:
            message[name] = self.value()
        return _encode(message)

    def _with_raw(self, message: dict[str, Any], name: str, raw: bytes) -> bytes:
        message = {k: v for k, v in message.items() if k != name}
        body = _encode(message)
        return body[:-1] + (b"," if len(body) > 2 else b"") + _encode(name) + b":" + raw + b"}"

    def garbage(self) -> bytes:
        r = self.rng
        valid = _encode(r.choice(self.templates()))
        choice = r.randrange(12)
        if choice == 0:
            return valid[: r.randrange(len(valid))]
        if choice == 1:
            return valid + r.choice([b"x", b"{}", b" ]", b",", b"\x00"])
        if choice == 2:
            return r.choice([b"", b" ", b"NaN", b"Infinity", b"-", b"1e999", b"01", b"tru", b"nul"])
        if choice == 3:
            return r.choice(
                [b'{"type":"DIAL","to":"\\ud800@b.c"}', b'{"type":"DIAL","to":"\\q"}', b"{'a':1}"]
            )
        if choice == 4:
            return self.deep()
        if choice == 5:
            return b'{"type":"MSG","call_id":"c","data":' + self.deep() + b"}"
        if choice == 6:
            return b'{"type":"HEARTBEAT","type":' + _encode(self.value()) + b"}"
        if choice == 7:
            return bytes(r.randrange(32, 127) for _ in range(r.randint(1, 64)))
        if choice == 8:
            return _encode(self.value())
        if choice == 9:
            return b'{"type":"PRESENCE","limit":' + b"9" * r.randint(20, 500) + b"}"
        if choice == 10:
            return valid.replace(b":", b":" + b" " * r.randint(1, 5), 1)
        return b'{"type":"HEARTBEAT","x":' + b"[" * r.randint(1, 3000) + b"}"

    def templates(self) -> list[dict[str, Any]]:
        out = message_templates(self.address, self.other)
        if self.unregister:
            out.append({"type": "UNREGISTER"})
        return out

    def frame(self) -> bytes:
        r = self.rng
        pick = r.random()
        if pick < 0.25:
            data = _encode(r.choice(self.templates()))
        elif pick < 0.7:
            data = self.mutate(r.choice(self.templates()))
        else:
            data = self.garbage()
        if self.invalid_utf8 and r.random() < 0.01:
            data = data[:-1] + b"\xff" + data[-1:]
        if len(data) > self.max_bytes:
            data = data[: self.max_bytes]
        return data
