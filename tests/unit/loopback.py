"""Two exchanges in one test: a trunk between two in-process :class:`Exchange` s, no sockets.

:class:`Node` is one exchange driven as :mod:`tests.unit.harness` drives one
(timers recorded and fired by hand, ``now`` passed explicitly), except that its
actions hand each frame to the session's :class:`~systemx.core.endpoint.Endpoint`:
a party is a :class:`~systemx.core.endpoint.RecordingEndpoint`, the trunk a
:class:`LinkEnd`.

:class:`LoopbackLink` joins a *parent* and a *child* node as
``systemx.server.federation`` and an inbound ``REGISTER_PBX`` join two servers:
the child has an outbound trunk (``Exchange.add_trunk``) with routes to the
parent; ``up()`` opens a session on the parent and registers it there with
``REGISTER_PBX`` (the child's announced routes), and on ``REGISTERED_PBX`` the
child opens its trunk session (``Exchange.open_trunk``), as the trunk client's
``on_up`` does. Each side's ``LinkEnd.send`` only queues the frame for the
other side; :meth:`LoopbackLink.pump` delivers the queued frames, both ways,
until none is left, so an exchange is never entered from inside itself.
:meth:`LoopbackLink.down` closes the trunk session on both sides.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Hashable
from typing import Any

import msgspec

from systemx.config import Settings
from systemx.core import Exchange, Session
from systemx.core.actions import RecordingActions
from systemx.core.endpoint import RecordingEndpoint

__all__ = ["LinkEnd", "LoopbackLink", "Node"]

_dec = msgspec.json.Decoder()
_enc = msgspec.json.encode


class EndpointActions(RecordingActions):
    """Records as :class:`RecordingActions` does, and hands each send and close to ``conn``."""

    def send(self, conn: Any, data: bytes) -> None:
        super().send(conn, data)
        conn.send(data)

    def close(self, conn: Any, code: int, reason: str) -> None:
        super().close(conn, code, reason)
        conn.close(code, reason)


class Node:
    """One exchange, its parties (by name) and its clock."""

    def __init__(self, name: str, **overrides: Any) -> None:
        self.name = name
        self.settings = dataclasses.replace(Settings(), **overrides)
        self.actions = EndpointActions()
        self.now = 1_000.0
        self._ids = 0
        self.x = Exchange(self.settings.core_config(), self.actions, new_id=self._id)
        self.x.start(self.now)
        self.parties: dict[str, RecordingEndpoint] = {}
        self.sessions: dict[str, Session] = {}

    def __repr__(self) -> str:
        return f"<Node {self.name}>"

    def _id(self) -> str:
        self._ids += 1
        return f"{self.name}-call-{self._ids}"

    def open(self, name: str) -> RecordingEndpoint:
        endpoint = RecordingEndpoint(name)
        self.parties[name] = endpoint
        self.sessions[name] = self.x.on_open(endpoint, self.now)
        return endpoint

    def send(self, name: str, frame: dict[str, Any]) -> None:
        self.x.on_data(self.sessions[name], _enc(frame), self.now)

    def register(self, name: str, address: str) -> RecordingEndpoint:
        """Open party ``name`` and register ``address``; its frames so far are taken."""
        endpoint = self.open(name)
        self.send(name, {"type": "REGISTER", "address": address})
        assert endpoint.take()[0]["type"] == "REGISTERED", f"{address} not registered"
        return endpoint

    def close(self, name: str) -> None:
        self.x.on_close(self.sessions[name], self.now)

    def timer(self, kind: type, arg: Any) -> Hashable | None:
        """The running timer key of type ``kind`` whose first field is ``arg``, or None."""
        field = vars(kind)["__slots__"][0]
        for key in self.actions.timers:
            if type(key) is kind and getattr(key, field) == arg:
                return key
        return None

    def fire(self, key: Hashable | None) -> None:
        """Run timer ``key`` out: the clock moves on by its delay, the exchange hears of it."""
        assert key is not None, "no such timer running"
        self.now += self.actions.timers.pop(key)
        self.x.on_timer(key, self.now)


class LinkEnd:
    """The Endpoint of one side's trunk session: a frame sent is queued for the other side."""

    __slots__ = ("closes", "name", "open", "queue")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: deque[bytes] = deque()
        self.closes: list[tuple[int, str]] = []
        self.open = True

    def __repr__(self) -> str:
        return f"<LinkEnd {self.name}: {len(self.queue)} queued>"

    def send(self, data: bytes) -> None:
        if self.open:
            self.queue.append(bytes(data))

    def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        self.open = False


class LoopbackLink:
    """A trunk from ``child`` up to ``parent`` (see the module docstring).

    ``routes`` are the child's routes to the parent (a peer's ``routes``),
    ``announce`` the routes the child registers with the parent
    (``REGISTER_PBX`` ``routes``), ``domain`` its ``REGISTER_PBX`` domain.
    """

    def __init__(
        self,
        parent: Node,
        child: Node,
        *,
        domain: str,
        routes: tuple[str, ...],
        announce: tuple[str, ...],
        connect: bool = True,
    ) -> None:
        self.parent = parent
        self.child = child
        self.domain = domain
        self.announce = announce
        self.trunk_id = "out:" + parent.name
        child.x.add_trunk(self.trunk_id, parent.name, routes)
        self.up_end: LinkEnd | None = None  # the child's end: frames for the parent
        self.down_end: LinkEnd | None = None  # the parent's end: frames for the child
        self.parent_session: Session | None = None
        self.child_session: Session | None = None
        self.refused: list[dict[str, Any]] = []
        if connect:
            self.up()

    @property
    def is_up(self) -> bool:
        return self.child_session is not None

    def up(self) -> None:
        """Connect: a session on the parent, ``REGISTER_PBX`` on it, the child's trunk opened on
        ``REGISTERED_PBX``. Raises AssertionError if the parent refuses."""
        assert self.up_end is None, "the link is already connected"
        self.up_end = LinkEnd(f"{self.child.name}->{self.parent.name}")
        self.down_end = LinkEnd(f"{self.parent.name}->{self.child.name}")
        self.parent_session = self.parent.x.on_open(self.down_end, self.parent.now)
        self.up_end.send(_enc({"type": "REGISTER_PBX", "domain": self.domain, "routes": list(self.announce)}))
        self.pump()
        assert self.is_up, f"trunk refused by {self.parent.name}: {self.refused}"

    def pump(self) -> int:
        """Deliver queued frames both ways until neither side has one; return how many."""
        delivered = 0
        while True:
            up, down = self.up_end, self.down_end
            if up is not None and up.queue:
                data = up.queue.popleft()
                if self.parent_session is not None:
                    self.parent.x.on_data(self.parent_session, data, self.parent.now)
            elif down is not None and down.queue:
                self._to_child(down.queue.popleft())
            else:
                return delivered
            delivered += 1

    def _to_child(self, data: bytes) -> None:
        child = self.child
        if self.child_session is not None:
            child.x.on_data(self.child_session, data, child.now)
            return
        # Not up yet: what the trunk client does with the answer to its REGISTER_PBX.
        answer = _dec.decode(data)
        if isinstance(answer, dict) and answer.get("type") == "REGISTERED_PBX":
            assert self.up_end is not None
            self.child_session = child.x.open_trunk(self.trunk_id, self.up_end, child.now)
        else:
            self.refused.append(answer)

    def down(self) -> None:
        """The link is lost: frames in flight are dropped, each side's trunk session is closed."""
        for end in (self.up_end, self.down_end):
            if end is not None:
                end.open = False
                end.queue.clear()
        if self.child_session is not None:
            self.child.x.on_close(self.child_session, self.child.now)
        if self.parent_session is not None:
            self.parent.x.on_close(self.parent_session, self.parent.now)
        self.up_end = self.down_end = None
        self.child_session = self.parent_session = None
