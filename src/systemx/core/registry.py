"""The registry: which local session holds which address, and what presence says of it.

:class:`Registry` is the only writer of the set of open sessions, of the address
index (address key -> the session holding it), of a session's address fields
and of the presence index's entries. It binds and unbinds, works out a
session's effective status (``busy`` while in a call), and finds the sessions
whose heartbeat is overdue. A holder found by a directory lookup (a session of
another node, or behind a trunk) is bound here too, as a *remote* session, for
as long as it carries calls.

With a :class:`~systemx.state.ports.Directory` (``directory=``), binding an
address claims it there first (:meth:`Registry.claim`) and unbinding releases
it. A memory directory answers at once, so REGISTER completes in the same call;
a shared directory may answer :data:`~systemx.state.ports.PENDING`, and the
facade completes the REGISTER when the answer arrives (``Exchange.on_claimed``).
Without one (a single node), the address index itself is the directory and
answers at once: an address held by another local session is in use, anything
else is claimed, with no :class:`~systemx.state.ports.Registration` built.
"""

from __future__ import annotations

from collections.abc import Callable, KeysView
from typing import Any

from systemx.core.session import Session
from systemx.protocol import messages as m
from systemx.protocol.address import domain_of
from systemx.protocol.codes import Status
from systemx.quicklog import get_logger
from systemx.state.ports import Claimed, Concurrency, Directory, InUse, Pending, Registration
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

    def __init__(
        self, presence: PresenceIndex, directory: Directory | None = None, node: str = "local"
    ) -> None:
        self._sessions: dict[Session, None] = {}
        self._by_key: dict[str, Session] = {}
        self._presence = presence
        self._directory = directory
        self._node = node
        #: Whether claims go to a directory (else the address index answers them).
        self.shared = directory is not None
        #: The session holding an address key, or None.
        self.holder = self._by_key.get
        #: Add an opened session (C-level: runs once per connection).
        self.open: Callable[[Session], object] = self._sessions.setdefault

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

    def forget(self, s: Session) -> None:
        self._sessions.pop(s, None)

    def expired(self, limit: float) -> list[Session]:
        """Open local sessions whose last heartbeat is older than ``limit``."""
        return [s for s in self._sessions if s.last_heartbeat < limit and not s.closed and not s.remote]

    # ------------------------------------------------------------ addresses

    def claim(
        self,
        s: Session,
        key: str,
        address: str,
        msg: m.Register,
        concurrency: Concurrency,
        meta: dict[str, Any],
    ) -> Claimed | InUse | Pending:
        """Claim ``key`` for ``s`` in the directory: the answer, or PENDING (it comes later)."""
        assert self._directory is not None
        return self._directory.claim(
            Registration(
                address=address,
                key=key,
                node=self._node,
                session_id=s.session_id,
                concurrency=concurrency,
                max_sessions=msg.max_sessions,
                max_listeners=msg.max_listeners,
                metadata=meta,
            )
        )

    def registrations(self) -> list[tuple[Session, Registration]]:
        """Every address bound to a local session, as the directory stores it (to claim again)."""
        return [
            (
                s,
                Registration(
                    address=s.address or key,
                    key=key,
                    node=self._node,
                    session_id=s.session_id,
                    concurrency=s.concurrency,  # type: ignore[arg-type]
                    max_sessions=s.max_sessions,
                    max_listeners=s.max_listeners,
                    metadata=s.metadata,
                ),
            )
            for key, s in self._by_key.items()
            if not s.remote and not s.closed
        ]

    def release_claim(self, key: str, s: Session) -> None:
        """Give back a claim that was granted but will not be bound (the session went meanwhile)."""
        if self._directory is not None:
            self._directory.release(key, s.session_id)

    def bind(
        self,
        s: Session,
        key: str,
        address: str,
        msg: m.Register,
        concurrency: str,
        meta: dict[str, Any],
        now: float,
    ) -> bool:
        """``s`` holds ``key`` (claimed) with ``msg``'s options (validated), and presence
        shows it with ``meta``; True if newly bound."""
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
        status = s.status
        if s.calls and status != "dnd" and status != "away":
            status = "busy"
        self.publish(key, address, meta, status)
        return fresh

    def unbind(self, s: Session, asleep: bool) -> str | None:
        """``s`` gives up its address (returned; None if it held none).

        ``asleep``: presence keeps the address as ``asleep`` (a wake-on-ring address,
        still dialable); otherwise its entry is removed.
        """
        key = s.key
        if key is None:
            return None
        address = s.address
        assert address is not None
        if self._by_key.get(key) is s:
            del self._by_key[key]
            if self._directory is not None:
                self._directory.release(key, s.session_id)
        s.key = None
        s.address = None
        if asleep:
            self._presence.set_status(key, Status.ASLEEP)
        else:
            self._presence.remove(key)
        return address

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
        """Refresh the presence status of each registered, open, local session given."""
        set_status = self._presence.set_status
        for s in sessions:
            if s is not None and s.key is not None and not s.closed and s.trunk is None:
                # effective_status, inline: this runs four times per call.
                status = s.status
                if s.calls and status != "dnd" and status != "away":
                    status = "busy"
                set_status(s.key, status)

    def status_told(self) -> None:
        """A session told its status (STATUS): other nodes' PRESENCE should see it at once.

        A shared presence index may hold status changes back a little to write
        them together (those a call makes, four per call); one a client asked for
        is written now, with whatever waits.
        """
        flush = getattr(self._presence, "flush_now", None)
        if flush is not None:
            flush()

    def unpublish(self, key: str) -> None:
        """Remove ``key``'s presence entry unless a session here holds it (a sleeper that is gone)."""
        if key not in self._by_key:
            self._presence.remove(key)

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
