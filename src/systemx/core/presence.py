"""PRESENCE queries: who is online, filtered, bounded, never the asker.

:class:`PresenceService` answers a PRESENCE (its rate limit is the policy's)
from the presence index the registry writes: the limit is clamped to the
operator's maximum, the asker is excluded, and the PRESENCE_RESULT frame is
bounded in bytes, cut at a whole entry with ``"truncated": true``. A session
whose grants restrict ``presence`` (:mod:`systemx.core.security`) sees only the
domains they permit.

**In a cluster** (built with a :class:`~systemx.state.presence.PresenceGather`)
the registry's index holds this node's entries only, so a PRESENCE is answered
later: the query is checked and kept (one continuation per request), the
entries of every node are gathered, and :meth:`PresenceService.on_gathered`
answers it from the gathered index with the same filters, order, limit and size
bound as one process. An asker that has gone meanwhile gets nothing; when the
entries cannot be read the asker gets ``ERROR unavailable`` (context
``PRESENCE``), never a partial list that would look like a complete one.
"""

from __future__ import annotations

from collections.abc import Callable

from systemx.core.acl import Grants
from systemx.core.config import CoreConfig
from systemx.core.session import Sender, Session
from systemx.protocol import messages as m
from systemx.protocol.address import domain_of
from systemx.protocol.codes import ErrorReason
from systemx.state.presence import PresenceGather, PresenceIndex, PresenceRow

__all__ = ["PresenceService", "presence_result"]

_encode = m.encode
_join = b"".join

_RESULT_HEAD = b'{"type":"PRESENCE_RESULT","addresses":['
_RESULT_TAIL = b"]}"
_RESULT_TRUNCATED_TAIL = b'],"truncated":true}'


def presence_result(rows: list[PresenceRow], max_bytes: int) -> bytes:
    """The PRESENCE_RESULT frame for ``rows``, at most ``max_bytes`` long.

    Entries are encoded one at a time, so a query matching much large metadata
    costs no more than the bound: the first entry that would not fit ends the list,
    and the frame says ``"truncated":true``.
    """
    parts: list[bytes] = []
    size = len(_RESULT_HEAD) + len(_RESULT_TAIL)
    for address, status, metadata in rows:
        part = _encode(m.PresenceEntry(address=address, status=status, metadata=metadata))
        size += len(part) + (1 if parts else 0)
        if size > max_bytes:
            break
        parts.append(part)
    else:
        return _join((_RESULT_HEAD, b",".join(parts), _RESULT_TAIL))
    room = max_bytes - len(_RESULT_HEAD) - len(_RESULT_TRUNCATED_TAIL)
    used = sum(map(len, parts)) + max(len(parts) - 1, 0)
    while parts and used > room:
        used -= len(parts.pop()) + (1 if parts else 0)
    return _join((_RESULT_HEAD, b",".join(parts), _RESULT_TRUNCATED_TAIL))


class _Query:
    """A PRESENCE waiting for the cluster's entries."""

    __slots__ = ("domain", "exclude", "limit", "near", "q", "session")

    def __init__(
        self,
        session: Session,
        domain: str | None,
        q: m.PresenceQuery,
        near: tuple[float, float, float] | None,
        exclude: str | None,
        limit: int,
    ) -> None:
        self.session = session
        self.domain = domain
        self.q = q
        self.near = near
        self.exclude = exclude
        self.limit = limit


class PresenceService(Sender):
    """Answers PRESENCE from the index. See the module docstring."""

    def __init__(
        self,
        send: Callable[[object, bytes], None],
        index: PresenceIndex,
        cfg: CoreConfig,
        gather: PresenceGather | None = None,
    ) -> None:
        super().__init__(send)
        self._index = index
        self._default_limit = cfg.presence_default_limit
        self._max_limit = cfg.presence_max_limit
        self._max_bytes = cfg.presence_max_result_bytes
        self._gather = gather
        # Queries waiting for ``on_gathered``, by ticket.
        self._waiting: dict[int, _Query] = {}
        self._next_ticket = 0

    def __len__(self) -> int:
        """Queries waiting for the cluster's entries."""
        return len(self._waiting)

    def on_presence(self, s: Session, msg: m.Presence, now: float) -> None:
        q = msg.query
        limit = min(msg.limit or self._default_limit, self._max_limit)
        near = (q.near.lat, q.near.lon, q.near.radius_km) if q.near is not None else None
        domain = q.domain.lower() if q.domain is not None else None
        grants = s.grants
        if (
            grants is not None
            and domain is not None
            and grants.restricts("presence")
            and not grants.permits("presence", domain)
        ):
            self._error(s, ErrorReason.FORBIDDEN, "PRESENCE", "not permitted to see this domain")
            return
        if self._gather is not None:
            ticket = self._next_ticket = self._next_ticket + 1
            self._waiting[ticket] = _Query(s, domain, q, near, s.key, limit)
            self._gather.gather(ticket)
            return
        self._answer(s, self._index, domain, q, near, s.key, limit)

    def on_gathered(self, ticket: int, index: PresenceIndex | None, now: float) -> None:
        """The cluster's entries for the query ``ticket`` (None: unreadable): answer it."""
        query = self._waiting.pop(ticket, None)
        if query is None:
            return
        s = query.session
        if s.closed:
            return
        if index is None:
            self._error(
                s,
                ErrorReason.UNAVAILABLE,
                "PRESENCE",
                "the cluster's presence cannot be read; try again",
            )
            return
        self._answer(s, index, query.domain, query.q, query.near, query.exclude, query.limit)

    def _answer(
        self,
        s: Session,
        index: PresenceIndex,
        domain: str | None,
        q: m.PresenceQuery,
        near: tuple[float, float, float] | None,
        exclude: str | None,
        limit: int,
    ) -> None:
        grants = s.grants
        if grants is not None and grants.restricts("presence"):
            rows = self._visible_rows(index, grants, domain, q, near, exclude, limit)
        else:
            rows = index.query(
                domain=domain,
                capabilities=q.capabilities,
                near=near,
                status=q.status,
                exclude=exclude,
                limit=limit,
            )
        self._send(s.conn, presence_result(rows, self._max_bytes))

    def _visible_rows(
        self,
        index: PresenceIndex,
        grants: Grants,
        domain: str | None,
        q: m.PresenceQuery,
        near: tuple[float, float, float] | None,
        exclude: str | None,
        limit: int,
    ) -> list[PresenceRow]:
        """The first ``limit`` matches the asker may see, in the index's order.

        The index cannot filter by a pattern, so it is asked for more until enough
        visible rows came back or it has no more: never is an invisible row returned.
        """
        ask = limit
        while True:
            rows = index.query(
                domain=domain,
                capabilities=q.capabilities,
                near=near,
                status=q.status,
                exclude=exclude,
                limit=ask,
            )
            visible = [row for row in rows if grants.permits("presence", domain_of(row[0]))]
            if len(visible) >= limit or len(rows) < ask:
                return visible[:limit]
            ask *= 4
