"""Trunks: exchanges that call each other (federation).

:class:`Trunks` is the core component that owns every trunk, the trunk route
table and the bookkeeping of the call legs that cross a trunk. The exchange
hands it a trunk session's frames, REGISTER_PBX, a dial no local session or
sleeping profile takes, and a trunk session's end; the call book asks it for the
trunk forms of RING and ANSWER. It changes calls only through the call book
(:class:`~systemx.core.calls.CallBook`) and does no I/O of its own.

**Trunks.** A trunk is a session that speaks for another exchange:

* *inbound*: a socket that sent ``REGISTER_PBX`` here (this exchange is the
  parent); its routes are the ones it registered, checked against
  ``SYSTEMX_PBX_TOKENS``;
* *outbound*: a connection this exchange opened to a parent
  (``systemx.server.federation``); its routes are the peer's configured
  ``routes`` and are in the table from start, up or not.

A :class:`Trunk` outlives its sessions: when the same trunk comes back (the same
inbound domain, or the outbound peer reconnecting) within
``SYSTEMX_TRUNK_GRACE_MS``, its connected calls continue on the new session.

**Legs.** A party behind a trunk is a *proxy*: a :class:`Session` that is in no
registry, holds the remote address, and whose ``conn`` is the trunk's, so the
call book sends it frames that go down the trunk as they are (``HANGUP``,
``BUSY``, ``MSG``). The few frames whose trunk form differs are sent here:
``DIAL_FORWARD`` instead of ``RING`` to a remote callee, ``RING`` instead of
``RINGING`` and ``ANSWER`` instead of ``CONNECTED`` to a remote caller. Every
proxy of a trunk shares the trunk's ``calls`` dict, so the call book's
``_add``/``_end`` keep the trunk's legs without knowing about trunks. A
connected call's routes are keyed by the trunk *session* (frames arrive on it,
not on the proxy), so a MSG from a trunk costs the
same as one from a local socket, and its ``from`` is the address this exchange
knows for that leg, never what the far side wrote.

**Loops.** ``DIAL_FORWARD`` carries ``hops`` and ``via`` (this exchange's random
id is added at each forward). A dial is never sent back on the trunk it came
in on, never sent on when this exchange is already in ``via`` or ``hops``
reached :data:`systemx.protocol.link.MAX_HOPS`, and a ``DIAL_FORWARD`` whose
call id is already a call here is refused; each of these answers ``BUSY
no_such_address``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from systemx.core.actions import Actions
from systemx.core.calls import TRUNK_RING_BACKSTOP, Call, CallBook, CallEvent, CallState, Route, msg_prefix
from systemx.core.config import CoreConfig
from systemx.core.registry import Registry
from systemx.core.routes import RouteTable
from systemx.core.session import Sender, Session, warn
from systemx.core.timerkeys import TrunkTimer
from systemx.core.trunkauth import PbxTokens
from systemx.protocol import messages as m
from systemx.protocol.address import MAX_ADDRESS_LENGTH, address_key, is_valid_address
from systemx.protocol.codes import BusyReason, CloseCode, ErrorReason, HangupReason
from systemx.protocol.link import MAX_HOPS
from systemx.quicklog import get_logger

if TYPE_CHECKING:
    from systemx.core.exchange import Exchange

__all__ = ["NODE_TRUNK", "TRUNK_RING_BACKSTOP", "Trunk", "Trunks"]

#: The id prefix of the trunk that links this exchange to another node of its cluster.
NODE_TRUNK = "node:"

log = get_logger("systemx.trunks")

_encode = m.encode

# Frames a trunk sends that an endpoint never does.
_TrunkFrame = m.Ring | m.Busy | m.Error | m.RegisteredPbx | m.HeartbeatAck | m.Ringing | m.Connected
_decode_trunk = msgspec.json.Decoder(_TrunkFrame).decode


class Trunk:
    """One trunk: its routes, its current session (``None`` while down) and its call legs."""

    __slots__ = ("calls", "id", "inbound", "label", "node", "routes", "session", "timer")

    def __init__(
        self, trunk_id: str, label: str, routes: tuple[str, ...], *, inbound: bool, node: str | None = None
    ) -> None:
        self.id = trunk_id
        self.label = label
        self.routes = routes
        self.inbound = inbound
        # The cluster node at the far end of a node link (None for a federation trunk).
        self.node = node
        self.session: Session | None = None
        # call_id -> call, for every call with a leg on this trunk (shared with its proxies).
        self.calls: dict[str, Call] = {}
        # The grace timer while the trunk is down.
        self.timer = TrunkTimer(trunk_id)

    def __repr__(self) -> str:
        return f"<Trunk {self.id} {'up' if self.session is not None else 'down'}>"


class Trunks(Sender):
    """Every trunk of one exchange (see the module docstring)."""

    def __init__(
        self,
        exchange: Exchange,
        actions: Actions,
        book: CallBook,
        registry: Registry,
        config: CoreConfig,
        new_id: Callable[[], str],
        node_id: str,
    ) -> None:
        super().__init__(actions.send)
        self._ex = exchange
        self._actions = actions
        self._book = book
        self._registry = registry
        self._new_id = new_id
        self.node_id = node_id
        self._table = RouteTable()
        # The routes of the trunks other cluster nodes hold, keyed by their node links.
        self._cluster_table = RouteTable()
        self._trunks: dict[str, Trunk] = {}
        text = config.pbx_tokens.strip()
        self._tokens = PbxTokens.parse(text) if text else PbxTokens.open()
        self._grace = config.trunk_grace_ms / 1000.0

    # ------------------------------------------------------------ inspection

    @property
    def tokens_open(self) -> bool:
        return self._tokens.is_open

    def up(self) -> int:
        """The number of trunks with a session now."""
        return sum(1 for t in self._trunks.values() if t.session is not None and t.node is None)

    def get(self, trunk_id: str) -> Trunk | None:
        return self._trunks.get(trunk_id)

    # ------------------------------------------------------ outbound trunks

    def add_outbound(self, trunk_id: str, label: str, routes: tuple[str, ...]) -> Trunk:
        """A trunk to a parent: its routes are routed from now on, up or not."""
        trunk = Trunk(trunk_id, label, routes, inbound=False)
        self._table.add(trunk_id, routes)
        self._trunks[trunk_id] = trunk
        return trunk

    def open_outbound(self, trunk_id: str, conn: Any, now: float) -> Session:
        """The outbound trunk ``trunk_id`` is registered with its parent; ``conn`` carries it."""
        trunk = self._trunks[trunk_id]
        s = self._ex.on_open(conn, now)
        # The trunk client watches the parent's liveness, not the heartbeat sweep.
        s.remote = True
        self._bind(trunk, s, now)
        return s

    # ------------------------------------------------------------ node links

    def open_node(self, node: str, conn: Any, now: float) -> Session:
        """A link to the cluster node ``node`` over ``conn``; its frames go to ``on_data`` of the result.

        A node link is a trunk with no routes: a dial goes down it only when the
        directory says the address is held on that node (:meth:`forward_waiting`).
        """
        trunk_id = NODE_TRUNK + node
        trunk = self._trunks.get(trunk_id)
        if trunk is None:
            trunk = self._trunks[trunk_id] = Trunk(trunk_id, f"node {node}", (), inbound=False, node=node)
        s = Session(conn, self._new_id(), now)
        # The cluster watches the node's lease, not the heartbeat sweep.
        s.remote = True
        self._bind(trunk, s, now)
        return s

    def local_routes(self) -> tuple[str, ...]:
        """The route patterns of this exchange's own trunks (what other nodes may send here)."""
        return tuple(
            sorted({r for t in self._trunks.values() if t.node is None for r in self._table.routes(t.id)})
        )

    def set_cluster_routes(self, routes: dict[str, tuple[str, ...]]) -> None:
        """The trunk routes the other nodes of the cluster hold, by node (replaces the last set)."""
        table = RouteTable()
        for node, patterns in routes.items():
            if node != self.node_id and patterns:
                table.add(NODE_TRUNK + node, patterns)
        self._cluster_table = table

    def dial_cluster(
        self,
        caller: Session,
        to: str,
        key: str,
        metadata: dict[str, Any] | None,
        now: float,
        call_id: str | None,
        hops: int,
        via: list[str],
    ) -> bool:
        """Send ``caller``'s dial of ``to`` to the node whose trunk routes it; False if none does.

        The node relays it down its trunk (a call through two legs here and
        there); a dial that came from that node is not sent back.
        """
        link_id = self._cluster_table.match(to)
        if link_id is None:
            return False
        trunk = self._trunks.get(link_id)
        if trunk is None or trunk.session is None or trunk.node is None or caller.trunk is trunk:
            return False
        link = (hops, via) if caller.trunk is not None else None
        self._book.wait(caller, to, key, metadata, now, waking=False, call_id=call_id, via=link)
        self.forward_waiting(key, trunk.node, now)
        return True

    def forward_waiting(self, key: str, node: str, now: float) -> None:
        """The directory says ``key`` is held on ``node``: the calls waiting for it are sent there.

        Each becomes a leg on the node link (``DIAL_FORWARD``, as over a trunk);
        its caller was told RINGING when it started waiting, and its ring timer
        runs from then. A dial that came from that node, or has been there
        before, is refused (BUSY no_such_address): the directory and the node
        disagree, and sending it back would loop.
        """
        trunk = self._trunks.get(NODE_TRUNK + node)
        session = trunk.session if trunk is not None else None
        book = self._book
        for call in book.take_waiting(key):
            caller = call.caller
            if caller is None:
                continue
            hops, via = call.via or (0, [])
            if session is None or trunk is None:
                self._busy(caller, call.to, BusyReason.UNAVAILABLE, call.call_id)
                book.end(call, CallEvent.UNREACHABLE, BusyReason.UNAVAILABLE, now)
                continue
            if caller.trunk is trunk or hops >= MAX_HOPS or self.node_id in via:
                self._busy(caller, call.to, BusyReason.NO_SUCH_ADDRESS, call.call_id)
                book.end(call, CallEvent.UNREACHABLE, BusyReason.NO_SUCH_ADDRESS, now)
                continue
            book.attach(call, self._proxy(trunk, call.to, now))
            call.rang_at = now
            self._send(
                session.conn,
                _encode(
                    m.DialForward(
                        from_=caller.address or "",
                        to=call.to,
                        call_id=call.call_id,
                        metadata=call.metadata,
                        hops=hops + 1,
                        via=[*via, self.node_id],
                    )
                ),
            )
            # Busy from now on, as a caller whose callee rings here is.
            self._registry.touch(caller)

    # ------------------------------------------------------------ binding

    def _bind(self, trunk: Trunk, s: Session, now: float) -> None:
        old = trunk.session
        if old is s:
            return
        self._actions.cancel_timer(trunk.timer)
        if old is not None:
            # The same trunk from a new socket: the old one is replaced.
            old.trunk = None
            old.calls = {}
            log.warning("Trunk %s: a new session replaces the old one", trunk.label)
            self._ex._close(old, CloseCode.ROUTER, "replaced")
        trunk.session = s
        s.trunk = trunk
        s.calls = trunk.calls
        conn = s.conn
        for call in trunk.calls.values():
            for p in (call.caller, call.callee):
                if p is not None and p.trunk is trunk and p is not s:
                    p.conn = conn
            if call.routes is not None:
                call.routes = routes_for(call)
        if trunk.calls:
            log.info("Trunk %s is back: %d call(s) continue", trunk.label, len(trunk.calls))

    def session_closed(self, s: Session, now: float) -> None:
        """The trunk session ``s`` is gone (its calls are handled here, not by the call book)."""
        trunk = s.trunk
        s.trunk = None
        s.calls = {}
        if trunk is None or trunk.session is not s:
            return
        trunk.session = None
        if trunk.node is not None:
            # A node link goes down when the node is gone (its lease expired, it
            # restarted or shut down): nothing can come back on it.
            if trunk.calls:
                log.warning("Cluster node %s is gone: %d call(s) end", trunk.node, len(trunk.calls))
            self._expire(trunk, now)
            return
        log.warning("Trunk %s down (%d call(s))", trunk.label, len(trunk.calls))
        for call in list(trunk.calls.values()):
            if call.state is CallState.CONNECTED:
                continue
            self._end_leg(trunk, call, now)
        if trunk.calls and self._grace > 0:
            self._actions.start_timer(trunk.timer, self._grace)
        else:
            self._expire(trunk, now)

    def on_timer(self, key: TrunkTimer, now: float) -> None:
        trunk = self._trunks.get(key.trunk_id)
        if trunk is not None and trunk.session is None and trunk.timer is key:
            self._expire(trunk, now)

    def _expire(self, trunk: Trunk, now: float) -> None:
        """The grace is over and the trunk is still down: its calls end, an inbound trunk is forgotten."""
        for call in list(trunk.calls.values()):
            self._end_leg(trunk, call, now)
        if (trunk.inbound or trunk.node is not None) and self._trunks.get(trunk.id) is trunk:
            del self._trunks[trunk.id]
            if trunk.node is None:
                self._table.remove(trunk.id)
                log.info("Trunk %s removed", trunk.label)

    def _end_leg(self, trunk: Trunk, call: Call, now: float) -> None:
        """End ``call`` because ``trunk`` is lost: the local side hears BUSY (ringing) or HANGUP."""
        if call.aliases:
            # A broadcast here: its listeners behind the trunk leave it.
            for listener in [q for q in call.aliases.values() if q.trunk is trunk]:
                listener.closed = True
                if call.listeners is not None and listener in call.listeners:
                    self._book.leave(listener, call, HangupReason.PEER_DISCONNECTED, now)
            return
        caller, callee = call.caller, call.callee
        if callee is not None and callee.trunk is trunk and call.state is not CallState.CONNECTED:
            if caller is not None:
                self._busy(caller, call.to, BusyReason.UNAVAILABLE, call.call_id)
            self._book.end(call, CallEvent.DISCONNECT, BusyReason.UNAVAILABLE, now)
            return
        proxy = callee if callee is not None and callee.trunk is trunk else caller
        if proxy is None:
            return
        proxy.closed = True
        self._book.leave(proxy, call, HangupReason.PEER_DISCONNECTED, now)

    # ------------------------------------------------------ inbound trunks

    def register(self, s: Session, msg: m.RegisterPbx, now: float) -> None:
        """``REGISTER_PBX`` from ``s``."""
        ex = self._ex
        domain = msg.domain.strip()
        problem = None
        if not domain or len(domain) > MAX_ADDRESS_LENGTH:
            problem = f"domain must be a non-empty string of at most {MAX_ADDRESS_LENGTH} characters"
        elif not msg.routes:
            problem = "routes must be a non-empty array of route patterns"
        elif not all(isinstance(r, str) and r.strip() for r in msg.routes):
            problem = "route entries must be non-empty strings"
        elif s.key is not None:
            problem = "a session that holds an address cannot register a trunk; use a new connection"
        elif s.trunk is not None and not s.trunk.inbound:
            problem = "this connection is this exchange's own trunk to its parent"
        if problem is not None:
            self._error(s, ErrorReason.INVALID_PAYLOAD, "REGISTER_PBX", problem)
            return
        routes = tuple(r.strip() for r in msg.routes)
        refusal = self._tokens.check(msg.auth, list(routes))
        if refusal is not None:
            log.warning(
                "Trunk refused: domain %s (session: %s): %s (%s)",
                domain,
                s.session_id,
                refusal.reason,
                refusal.detail,
            )
            self._send_msg(s, m.RegisterFailed(reason=refusal.reason, detail=refusal.detail))
            s.closed = True
            ex._end_session(s, HangupReason.CLIENT_REQUESTED, now)
            ex._close(s, CloseCode.POLICY_VIOLATION, refusal.reason)
            return
        trunk_id = "in:" + domain.lower()
        current = s.trunk
        if current is not None and current.id != trunk_id:
            self._error(
                s,
                ErrorReason.INVALID_PAYLOAD,
                "REGISTER_PBX",
                f"this trunk is registered as {current.label}; a new domain needs a new connection",
            )
            return
        trunk = self._trunks.get(trunk_id)
        if trunk is None:
            trunk = Trunk(trunk_id, domain, routes, inbound=True)
            self._trunks[trunk_id] = trunk
        trunk.routes = routes
        self._table.add(trunk_id, routes)
        self._bind(trunk, s, now)
        s.last_heartbeat = now
        self._send_msg(s, m.RegisteredPbx(domain=domain))
        log.info("Trunk registered: %s (session: %s, routes: %s)", domain, s.session_id, ", ".join(routes))

    # ---------------------------------------------------- frames from a trunk

    def on_message(self, s: Session, msg: Any, now: float) -> None:
        """A decoded frame (not MSG) from the trunk session ``s``."""
        kind = type(msg)
        if kind is m.Heartbeat:
            self._ex._on_heartbeat(s, msg, now)
        elif kind is m.DialForward:
            self._dial_forward(s, msg, now)
        elif kind is m.Answer:
            self._answer(s, msg, now)
        elif kind is m.Hangup:
            self._hangup(s, msg, now)
        elif kind is m.RegisterPbx:
            self.register(s, msg, now)
        else:
            # Never answered with ERROR: two exchanges must not bounce errors between them.
            warn(s, now, "Trunk %s: %s ignored", _label(s), getattr(msg, "type", kind.__name__))

    def on_raw(self, s: Session, data: bytes, now: float) -> None:
        """A frame from the trunk session ``s`` that is not an endpoint message (RING, BUSY, ERROR...)."""
        try:
            msg = _decode_trunk(data)
        except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
            warn(s, now, "Trunk %s: frame ignored (%s): %s", _label(s), exc, data[:200])
            return
        if isinstance(msg, m.Ring):
            self._ring(s, msg, now)
        elif isinstance(msg, m.Connected):
            self._connected(s, msg, now)
        elif isinstance(msg, m.Busy):
            self._on_busy(s, msg, now)
        elif isinstance(msg, m.Error):
            warn(s, now, "Trunk %s sent ERROR: %s %s: %s", _label(s), msg.reason, msg.context, msg.detail)

    def _leg(self, s: Session, call_id: str, context: str, now: float) -> tuple[Call, Session] | None:
        """The call ``call_id`` and its party behind ``s``'s trunk, or ``None`` (warned)."""
        trunk = s.trunk
        call = trunk.calls.get(call_id) if trunk is not None else None
        if call is not None:
            for p in (call.callee, call.caller):
                if p is not None and p.trunk is trunk and p is not s:
                    return call, p
            listener = call.aliases.get(call_id) if call.aliases else None
            if listener is not None:
                return call, listener  # a listener there of a broadcast here
        warn(s, now, "Trunk %s: %s ignored: no call %s on this trunk", _label(s), context, call_id)
        return None

    def _ring(self, s: Session, msg: m.Ring, now: float) -> None:
        found = self._leg(s, msg.call_id, "RING", now)
        if found is None:
            return
        call, proxy = found
        if proxy is not call.callee or call.state is not CallState.RINGING:
            return
        caller = call.caller
        assert caller is not None
        if caller.trunk is not None:
            # Passing through: the caller's exchange hears the RING in turn.
            self._send_msg(caller, m.Ring(from_=msg.from_ or call.to, call_id=call.call_id))
        # A local caller was told RINGING when the dial went down the trunk.

    def _connected(self, s: Session, msg: m.Connected, now: float) -> None:
        """CONNECTED from a node link: the dialled address is a broadcast there, and this
        call's caller now listens to it (its HANGUP is echoed, as a listener's is)."""
        if s.trunk is None or s.trunk.node is None:
            warn(s, now, "Trunk %s: CONNECTED ignored (only cluster nodes send it)", _label(s))
            return
        found = self._leg(s, msg.call_id, "CONNECTED", now)
        if found is None:
            return
        call, proxy = found
        if proxy is call.callee and call.state is CallState.RINGING:
            call.relayed_broadcast = True
            self._book.on_answer(proxy, m.Answer(call_id=call.call_id), now)

    def _answer(self, s: Session, msg: m.Answer, now: float) -> None:
        found = self._leg(s, msg.call_id, "ANSWER", now)
        if found is None:
            return
        call, proxy = found
        if proxy is call.callee and call.state is CallState.RINGING:
            self._book.on_answer(proxy, msg, now)

    def _on_busy(self, s: Session, msg: m.Busy, now: float) -> None:
        found = self._leg(s, msg.call_id or "", "BUSY", now)
        if found is None:
            return
        call, proxy = found
        if proxy is not call.callee or call.state is CallState.CONNECTED:
            return
        reason = msg.reason or BusyReason.UNAVAILABLE
        if call.caller is not None:
            self._busy(call.caller, call.to, reason, call.call_id)
        self._book.end(call, CallEvent.HANGUP, reason, now)

    def _hangup(self, s: Session, msg: m.Hangup, now: float) -> None:
        found = self._leg(s, msg.call_id, "HANGUP", now)
        if found is None:
            return
        call, proxy = found
        self._book.leave(proxy, call, msg.reason or HangupReason.NORMAL, now)

    # ------------------------------------------------------------- dialling

    def _proxy(self, trunk: Trunk, address: str, now: float) -> Session:
        session = trunk.session
        assert session is not None
        p = Session(session.conn, self._new_id(), now)
        p.remote = True
        p.trunk = trunk
        p.address = address
        p.key = address_key(address) if is_valid_address(address) else address.lower()
        p.addr_json = _encode(address)
        p.calls = trunk.calls
        return p

    def _dial_forward(self, s: Session, msg: m.DialForward, now: float) -> None:
        trunk = s.trunk
        assert trunk is not None
        via = msg.via or []
        hops = msg.hops or 0
        call_id = msg.call_id
        if not call_id or len(call_id) > 256 or not msg.from_ or len(msg.from_) > MAX_ADDRESS_LENGTH:
            self._send_msg(
                s,
                m.Busy(to=msg.to[:MAX_ADDRESS_LENGTH], reason=BusyReason.NO_SUCH_ADDRESS, call_id=call_id),
            )
            return
        if self._book.get(call_id) is not None or self.node_id in via:
            log.warning(
                "Trunk %s: DIAL_FORWARD %s → %s refused: it has been here before (a routing loop)",
                trunk.label,
                call_id,
                msg.to,
            )
            self._send_msg(s, m.Busy(to=msg.to, reason=BusyReason.NO_SUCH_ADDRESS, call_id=call_id))
            return
        caller = self._proxy(trunk, msg.from_, now)
        self._ex._place(caller, msg.to, msg.metadata, now, call_id=call_id, hops=hops, via=via)

    def dial_out(
        self,
        caller: Session,
        to: str,
        key: str,
        metadata: dict[str, Any] | None,
        now: float,
        call_id: str | None,
        hops: int,
        via: list[str],
    ) -> bool:
        """Send ``caller``'s dial of ``to`` down the trunk whose route matches.

        ``False`` when no trunk may take it (no route, the route is the trunk
        the dial came in on, or ``hops``/``via`` forbid sending it on); the
        exchange then answers BUSY no_such_address.
        """
        trunk_id = self._table.match(to)
        if trunk_id is None:
            return False
        trunk = self._trunks[trunk_id]
        came_from = caller.trunk
        if came_from is not None and (trunk is came_from or hops >= MAX_HOPS or self.node_id in via):
            return False
        session = trunk.session
        if session is None:
            log.info("Dial %s → %s: trunk %s is down", caller.address, to, trunk.label)
            self._refuse_dial(caller, to, BusyReason.UNAVAILABLE, now, call_id)
            return True
        callee = self._proxy(trunk, to, now)
        call = Call(call_id or self._new_id(), caller, callee, to, key, metadata, now, CallState.RINGING)
        self._book.add(call)
        self._recorder.call_started(call.call_id, caller.address or "", to, now)
        self._send(
            session.conn,
            _encode(
                m.DialForward(
                    from_=caller.address or "",
                    to=to,
                    call_id=call.call_id,
                    metadata=metadata,
                    hops=hops + 1,
                    via=[*via, self.node_id],
                )
            ),
        )
        if caller.trunk is None:
            # At once, as for a lookup: the caller knows its call id (to hang up), and a
            # BUSY naming the call always follows the RINGING that named it.
            self._send_msg(caller, m.Ringing(call_id=call.call_id, to=to))
            call.ringing = True
        call.rang_at = now
        self._actions.start_timer(call.ring_timer, self._book.call_timeout)
        self._registry.touch(caller)
        log.info(
            "Call forwarded: %s → %s over trunk %s (call: %s)", caller.address, to, trunk.label, call.call_id
        )
        return True

    def rang(self, call: Call) -> None:
        """A local callee rings for a caller behind a trunk; tell the far side (RING)."""
        caller, callee = call.caller, call.callee
        assert caller is not None and callee is not None
        self._send_msg(
            caller, m.Ring(from_=callee.address or call.to, call_id=call.call_id, metadata=call.metadata)
        )

    def answered(self, call: Call, answerer: Session) -> None:
        """``call`` connected and a party is behind a trunk.

        Routes are keyed by the trunk session (MSGs arrive on it); a caller
        behind a trunk is told ``ANSWER {call_id, from}``, the trunk form of
        CONNECTED, a local caller CONNECTED.
        """
        call.routes = routes_for(call)
        caller = call.caller
        assert caller is not None
        if caller.trunk is not None:
            self._send_msg(caller, m.Answer(call_id=call.call_id, from_=answerer.address))
        else:
            self._send_msg(caller, m.Connected(call_id=call.call_id, to=call.to))


def routes_for(call: Call) -> dict[Session, Route]:
    """The MSG routes of connected ``call``, a party behind a trunk keyed by the trunk's session.

    A party whose trunk is down (in its grace) has no route: nothing arrives from it.
    """
    caller, callee = call.caller, call.callee
    assert caller is not None and callee is not None
    routes: dict[Session, Route] = {}
    for sender, peer, tally in ((caller, callee, call.up), (callee, caller, call.down)):
        trunk = sender.trunk
        key = sender if trunk is None else trunk.session
        if key is not None:
            routes[key] = (peer.conn, msg_prefix(call.call_id, sender), tally)
    return routes


def _label(s: Session) -> str:
    trunk = s.trunk
    return trunk.label if trunk is not None else s.session_id
