"""A socket-free driver for the core: frames in, decoded frames out, timers by hand."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any

import msgspec

from systemx.config import Settings, SpawnHandler
from systemx.core import Exchange, RecordingActions, Session
from systemx.core.actions import WakeProfile
from systemx.state.presence import PresenceGather

_dec = msgspec.json.Decoder()


def _fields(key: Any) -> list[Any]:
    return [getattr(key, name) for name in type(key).__slots__]


class Harness:
    def __init__(
        self,
        profiles: dict[str, dict[str, Any]] | None = None,
        presence_gather: PresenceGather | None = None,
        **overrides: Any,
    ) -> None:
        spawn = SpawnHandler(name="true", argv=("/bin/true",), addresses=("*@spawn.test",))
        base = {"spawn_handlers": (spawn,), **overrides}
        self.settings = dataclasses.replace(Settings(), **base)
        self.actions = RecordingActions()
        self.now = 1_000.0
        self.ids = 0
        stored = {k: msgspec.convert(v, WakeProfile) for k, v in (profiles or {}).items()}
        self.x = Exchange(
            self.settings.core_config(),
            self.actions,
            new_id=self._id,
            profiles=stored,
            presence_gather=presence_gather,
        )
        self.x.start(self.now)
        self.sessions: dict[str, Session] = {}
        self.read: dict[str, int] = {}
        self.pending: dict[str, list[dict[str, Any]]] = {}

    def _id(self) -> str:
        self.ids += 1
        return f"call-{self.ids}"

    def open(self, name: str) -> Session:
        s = self.x.on_open(name, self.now)
        self.sessions[name] = s
        self.read[name] = len(self.actions.sent)
        return s

    def send(self, name: str, frame: dict[str, Any] | bytes) -> None:
        data = frame if isinstance(frame, bytes) else msgspec.json.encode(frame)
        self.x.on_data(self.sessions[name], data, self.now)

    def register(self, name: str, address: str, **extra: Any) -> dict[str, Any]:
        if name not in self.sessions:
            self.open(name)
        self.send(name, {"type": "REGISTER", "address": address, **extra})
        frames = self.frames(name)
        assert frames, f"no answer to REGISTER {address}"
        self.pending[name] = frames[1:]
        return frames[0]

    def frames(self, name: str) -> list[dict[str, Any]]:
        """Frames sent to ``name`` since the last call."""
        start = self.read.get(name, 0)
        out = self.pending.pop(name, [])
        out += [_dec.decode(d) for c, d in self.actions.sent[start:] if c == name]
        self.read[name] = len(self.actions.sent)
        return out

    def all_frames(self, name: str) -> list[dict[str, Any]]:
        return [_dec.decode(d) for c, d in self.actions.sent if c == name]

    def closes(self, name: str) -> list[tuple[int, str]]:
        return [(code, reason) for c, code, reason in self.actions.closed if c == name]

    def close(self, name: str) -> None:
        self.x.on_close(self.sessions[name], self.now)

    def timer(self, kind: type, arg: Any = None) -> Any:
        """The running timer key of type ``kind`` whose field is ``arg`` (a call id, an
        address key, a session), or None."""
        for key in self.actions.timers:
            if type(key) is kind and (arg is None or next(iter(_fields(key)), None) == arg):
                return key
        return None

    def fire(self, key: Hashable, advance: float | None = None) -> None:
        assert key is not None, "no such timer running"
        delay = self.actions.timers.pop(key)
        self.now += delay if advance is None else advance
        self.x.on_timer(key, self.now)

    def connect(self, a: str, b: str, *, meta: dict[str, Any] | None = None) -> str:
        """Register a and b (if needed), a dials b, b answers; return the call id."""
        self.send(
            a, {"type": "DIAL", "to": self.sessions[b].address or b, **({"metadata": meta} if meta else {})}
        )
        ring = [f for f in self.frames(b) if f["type"] == "RING"][-1]
        self.send(b, {"type": "ANSWER", "call_id": ring["call_id"]})
        connected = [f for f in self.frames(a) if f["type"] == "CONNECTED"]
        assert connected, "caller not CONNECTED"
        return str(ring["call_id"])
