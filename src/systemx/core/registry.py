"""The registry: which local session holds which address, and what presence says of it.

:class:`Registry` is the only writer of the set of open sessions, of the address
index (address key -> the session holding it), of a session's address fields
and of the presence index's entries. It binds and unbinds, works out a
session's effective status (``busy`` while in a call), and finds the sessions
whose heartbeat is overdue. A holder found by a directory lookup (a session of
another node, or behind a trunk) is bound here too, as a *remote* session, for
as long as it carries calls.
"""

from __future__ import annotations

from collections.abc import Iterable, KeysView
from typing import Any

from systemx.core.session import Session
from systemx.protocol import messages as m
from systemx.protocol.address import domain_of
from systemx.protocol.codes import Status
from systemx.quicklog import get_logger
from systemx.state.presence import PresenceIndex

__all__ = ["Registry"]

log = get_logger("systemx.exchange")

_encode = m.encode


def _location(meta: dict[str, Any]) -> tuple[float | None, float | None]:
    loc = meta.get("location")
    if isinstance(loc, dict):
        return float(loc["lat"]), float(loc["lon"])
    return None, None


class Registry:
    """Sessions, the address index and presence entries. See the module docstring."""

    def __init__(self, presence: PresenceIndex) -> None:
        self._sessions: dict[Session, None] = {}
        self._by_key: dict[str, Session] = {}
        self._presence = presence
        #: The session holding an address key, or None.
        self.holder = self._by_key.get

    # ------------------------------------------------------------- accessors

    @property
    def sessions(self) -> KeysView[Session]:
        return self._sessions.keys()

    def bound(self) -> dict[str, Session]:
        """A copy of the address index (for checks and tools)."""
        return dict(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    @property
    def presence(self) -> PresenceIndex:
        """The presence index, for reading (queries); only the registry writes it."""
        return self._presence

    # -------------------------------------------------------------- sessions

    def open(self, s: Session) -> None:
        self._sessions[s] = None

    def forget(self, s: Session) -> None:
        self._sessions.pop(s, None)

    def expired(self, limit: float) -> list[Session]:
        """Open local sessions whose last heartbeat is older than ``limit``."""
        return [s for s in self._sessions if s.last_heartbeat < limit and not s.closed and not s.remote]

    # ------------------------------------------------------------ addresses

    def bind(self, s: Session, key: str, address: str, msg: m.Register, concurrency: str, now: float) -> bool:
        """``s`` holds ``key`` with ``msg``'s options (validated); True if newly bound."""
        meta = dict(msg.metadata) if msg.metadata is not None else {}
        s.metadata = meta
        s.status = meta.get("status", s.status if s.key == key else "available")
        s.concurrency = concurrency
        s.max_sessions = msg.max_sessions
        s.max_listeners = msg.max_listeners
        s.last_heartbeat = now
        s.last_activity = now
        fresh = s.key != key
        if fresh:
            s.key = key
            self._by_key[key] = s
        if s.address != address:
            # The same line re-registered with its domain in another case: shown as now written.
            s.address = address
            s.addr_json = _encode(address)
        return fresh

    def unbind(self, s: Session) -> tuple[str, str] | None:
        """``s`` gives up its address: ``(key, address)`` it held, or None if it held none.

        The presence entry stays: what becomes of it (removed, or kept as asleep)
        is the caller's decision, made through :meth:`set_asleep` or :meth:`remove`.
        """
        key = s.key
        if key is None:
            return None
        address = s.address
        assert address is not None
        if self._by_key.get(key) is s:
            del self._by_key[key]
        s.key = None
        s.address = None
        return key, address

    def bind_remote(self, conn: Any, session_id: str, address: str, key: str, now: float) -> Session:
        """A holder found elsewhere, bound here while it carries calls."""
        endpoint = Session(conn, session_id, now)
        endpoint.remote = True
        endpoint.address = address
        endpoint.key = key
        endpoint.addr_json = _encode(address)
        self._sessions[endpoint] = None
        self._by_key[key] = endpoint
        return endpoint

    def forget_remote(self, s: Session) -> None:
        """A remote holder's last call ended: it holds the address here no longer."""
        s.closed = True
        key = s.key
        if key is not None and self._by_key.get(key) is s:
            del self._by_key[key]
        s.key = None
        self._sessions.pop(s, None)
        log.info("Remote holder released: %s (session: %s)", s.address, s.session_id)

    # -------------------------------------------------------------- presence

    @staticmethod
    def effective_status(s: Session) -> str:
        if s.status in ("dnd", "away"):
            return s.status
        return "busy" if s.calls else s.status

    def touch(self, *sessions: Session | None) -> None:
        """Refresh the presence status of each registered, open session given."""
        set_status = self._presence.set_status
        for s in sessions:
            if s is not None and s.key is not None and not s.closed:
                set_status(s.key, self.effective_status(s))

    def touch_all(self, sessions: Iterable[Session]) -> None:
        self.touch(*sessions)

    def publish(self, key: str, address: str, meta: dict[str, Any], status: str) -> None:
        """Put ``address`` in the presence index under ``key`` with its (validated) metadata."""
        lat, lon = _location(meta)
        self._presence.put(
            key,
            address=address,
            domain=domain_of(address),
            capabilities=meta.get("capabilities") or (),
            lat=lat,
            lon=lon,
            status=status,
            metadata=meta,
        )

    def set_asleep(self, key: str) -> None:
        self._presence.set_status(key, Status.ASLEEP)

    def remove(self, key: str) -> None:
        self._presence.remove(key)
