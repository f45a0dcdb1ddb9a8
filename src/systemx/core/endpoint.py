"""Where a party's frames go: the :class:`Endpoint` port.

A party of a call or a party line is reached through an endpoint, and the core
only ever sends it a whole text frame or closes it. What is behind is the
driver's business:

* a local WebSocket connection, whose ``send`` appends to the connection's cork
  list;
* a party held by another node of the cluster, whose ``send`` wraps the frame
  in a :class:`systemx.protocol.link.Deliver` for that node's session and
  appends it to the per-node batch;
* a party behind a federation trunk, whose ``send`` writes the frame on the
  trunk;
* :class:`RecordingEndpoint`, which keeps what it was given, for tests and tools.

The port is structural (a :class:`typing.Protocol`), so an implementation
needs no base class, and two methods keep every implementation cheap to write.
``send`` must not raise for a closed or slow endpoint: dropping frames for it,
or closing it, is the implementation's policy, and the core never learns of it
except through the session's own close event.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

__all__ = ["Endpoint", "RecordingEndpoint"]

_decode_json = msgspec.json.Decoder().decode


class Endpoint(Protocol):
    def send(self, data: bytes) -> None:
        """Send one complete text frame (UTF-8 JSON)."""

    def close(self, code: int, reason: str) -> None:
        """Close with a WebSocket close code and reason text; frames sent later are dropped."""


class RecordingEndpoint:
    """An :class:`Endpoint` that records every frame and close.

    ``frames`` holds the frames in order, ``closes`` every ``(code, reason)``;
    frames sent after the first close are dropped, as a closed socket drops them,
    and counted in ``dropped``.
    """

    __slots__ = ("closes", "dropped", "frames", "name")

    def __init__(self, name: str = "endpoint") -> None:
        self.name = name
        self.frames: list[bytes] = []
        self.closes: list[tuple[int, str]] = []
        self.dropped = 0

    def __repr__(self) -> str:
        return (
            f"<RecordingEndpoint {self.name}: {len(self.frames)} frames{', closed' if self.closes else ''}>"
        )

    def send(self, data: bytes) -> None:
        if self.closes:
            self.dropped += 1
            return
        self.frames.append(bytes(data))

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))

    @property
    def closed(self) -> bool:
        return bool(self.closes)

    def messages(self) -> list[Any]:
        """Every frame decoded as JSON, in order (raises ``msgspec.DecodeError`` for one that is not)."""
        return [_decode_json(frame) for frame in self.frames]

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        """The decoded frames whose ``"type"`` is ``type_``."""
        return [msg for msg in self.messages() if isinstance(msg, dict) and msg.get("type") == type_]

    def types(self) -> list[Any]:
        """The ``"type"`` of each frame, in order (``None`` for a frame without one)."""
        return [msg.get("type") if isinstance(msg, dict) else None for msg in self.messages()]

    def take(self) -> list[Any]:
        """The decoded frames so far, forgetting them, so a test can look at what comes next."""
        out = self.messages()
        self.frames.clear()
        return out
