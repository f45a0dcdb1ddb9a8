"""What the admin listener may read of a running exchange: the :class:`ExchangeView` port.

The admin handlers never touch the core's objects: they get plain dicts and
lists (JSON-ready) from an :class:`ExchangeView`. :class:`ExchangeSource`
implements it over the exchange's public introspection (``sessions``,
``calls``, ``parties``, ``profiles()``, ``health()``, ``is_registered``) and
the transport's :class:`~systemx.server.transport.Hub` counters. Everything
runs on the event loop, between the exchange's events, so a snapshot is
consistent.

Forgetting a sleeping agent (:meth:`ExchangeView.forget_sleeper`) goes through
the exchange's public door, as an agent would: a short-lived internal session
sends ``REGISTER {mode: "normal"}`` for the address (which drops the wake
profile and its stored copy) and goes away. It is refused while the agent is
connected (it holds the address; it forgets its own profile) or while calls
wait for its wake.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

import msgspec

from systemx.core.actions import WakeProfile
from systemx.core.calls import CallState
from systemx.protocol import messages as m
from systemx.protocol.address import address_key, domain_of, is_valid_address
from systemx.server.transport import Hub, remote_ip

__all__ = ["ExchangeSource", "ExchangeView", "Forget"]


class Forget(enum.StrEnum):
    """The outcome of :meth:`ExchangeView.forget_sleeper`."""

    FORGOTTEN = "forgotten"
    INVALID_ADDRESS = "invalid_address"
    NOT_FOUND = "not_found"
    REGISTERED = "registered"
    CALLS_WAITING = "calls_waiting"
    FAILED = "failed"


class ExchangeView(Protocol):
    """A read-only view of one exchange, in plain data, plus one operator action."""

    def summary(self) -> dict[str, Any]:
        """Counts: sessions, registered, calls (by state), parties, sleepers, status."""

    def sessions(self, newest: int | None = None) -> list[dict[str, Any]]:
        """Every session, or the ``newest`` most recently opened (newest first):
        ``session_id``, ``address`` (None before REGISTER), ``domain``,
        ``remote_ip``, ``connected_since``, ``last_heartbeat``, ``last_activity`` (the last
        request; a MSG counts), ``rtt`` (None: not measured),
        ``queued_bytes``, ``status``, ``calls``, ``parties``. Times are epoch seconds."""

    def calls(self) -> list[dict[str, Any]]:
        """Every active call: ``call_id``, ``caller``, ``callee``, ``state`` (waiting, ringing,
        connected), ``since`` (dialled), ``connected_at``, ``listeners``."""

    def parties(self) -> list[dict[str, Any]]:
        """Every party line: ``name``, ``members`` (count), ``addresses``."""

    def sleepers(self) -> list[dict[str, Any]]:
        """Every wake-on-ring address not registered now: ``address``, ``handler`` (its type),
        ``calls_waiting``."""

    def stats(self) -> dict[str, int]:
        """The counters :class:`systemx.server.metrics.StatsSource` describes, and
        ``calls_seen``: calls this view has seen in its listings so far."""

    def forget_sleeper(self, address: str, now: float) -> Forget:
        """Drop the wake profile of a sleeping ``address``."""


class _Blackhole:
    """The endpoint of the internal session :meth:`ExchangeSource.forget_sleeper` opens."""

    __slots__ = ()

    def send(self, data: bytes) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass


_encode = msgspec.json.Encoder().encode


class ExchangeSource:
    """:class:`ExchangeView` over a :class:`~systemx.core.exchange.Exchange` and its transport."""

    def __init__(self, exchange: Any, hub: Hub | None = None, records: Any = None) -> None:
        self._exchange = exchange
        self._hub = hub
        self._records = records
        self._seen: set[str] = set()
        self._seen_total = 0

    def _call_states(self) -> dict[str, int]:
        counts = {state.value: 0 for state in CallState if state is not CallState.ENDED}
        ids: set[str] = set()
        for call in self._exchange.calls:
            ids.add(call.call_id)
            if call.state.value in counts:
                counts[call.state.value] += 1
        # Calls started since the last look (a call that came and went between two looks is missed).
        self._seen_total += len(ids - self._seen)
        self._seen = ids
        return counts

    def summary(self) -> dict[str, Any]:
        health = self._exchange.health()
        return {
            "status": health.get("status", "ok"),
            "sessions": health.get("sessions", 0),
            "registered": health.get("registered", 0),
            "calls": self._call_states(),
            "parties": health.get("parties", 0),
            "sleepers": health.get("asleep", 0),
            "waking": health.get("waking", 0),
            "internal_errors": health.get("internal_errors", 0),
        }

    def sessions(self, newest: int | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        sessions = self._exchange.sessions
        if newest is not None:
            # The exchange keeps its sessions in the order they opened.
            sessions = reversed(sessions)
        for s in sessions:
            if newest is not None and len(out) >= newest:
                break
            if getattr(s, "remote", False):
                continue
            conn = s.conn
            address = s.address
            out.append(
                {
                    "session_id": s.session_id,
                    "address": address,
                    "domain": domain_of(address) if address else None,
                    "remote_ip": remote_ip(conn),
                    "connected_since": getattr(conn, "opened_at", None) or None,
                    "last_heartbeat": s.last_heartbeat,
                    "last_activity": s.last_activity,
                    "rtt": None,
                    "queued_bytes": _queued_bytes(conn),
                    "status": s.status,
                    "calls": len(s.calls),
                    "parties": len(s.parties),
                }
            )
        return out

    def calls(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for call in self._exchange.calls:
            caller = call.caller
            listeners = call.listeners
            out.append(
                {
                    "call_id": call.call_id,
                    "caller": caller.address if caller is not None else None,
                    "callee": call.to,
                    "state": call.state.value,
                    "since": call.created,
                    "connected_at": call.connected_at,
                    "listeners": len(listeners) if listeners is not None else 0,
                }
            )
        return out

    def parties(self) -> list[dict[str, Any]]:
        return [
            {
                "name": line.name,
                "members": len(line.members),
                "addresses": sorted(set(line.members.values())),
            }
            for line in self._exchange.parties
        ]

    def sleepers(self) -> list[dict[str, Any]]:
        waiting: dict[str, int] = {}
        for call in self._exchange.calls:
            if call.state is CallState.WAITING:
                waiting[call.callee_key] = waiting.get(call.callee_key, 0) + 1
        out: list[dict[str, Any]] = []
        profiles: dict[str, WakeProfile] = self._exchange.profiles()
        for key, profile in profiles.items():
            address = profile.address
            if self._exchange.is_registered(address):
                continue
            out.append(
                {
                    "address": address,
                    "handler": type(profile.handler).__struct_config__.tag,
                    "calls_waiting": waiting.get(key, 0),
                }
            )
        return out

    def stats(self) -> dict[str, int]:
        health = self._exchange.health()
        states = self._call_states()
        stats: dict[str, int] = {
            "registered": int(health.get("registered", 0)),
            "calls_waiting": states.get("waiting", 0),
            "calls_ringing": states.get("ringing", 0),
            "calls_connected": states.get("connected", 0),
            "parties": int(health.get("parties", 0)),
            "sleepers": int(health.get("asleep", 0)),
            "internal_errors": int(health.get("internal_errors", 0)),
            "calls_seen": self._seen_total,
        }
        hub = self._hub
        if hub is not None:
            stats.update(
                connections=len(hub),
                connections_opened=hub.opened_total,
                connections_closed=hub.closed_total,
                msgs_received=hub.msgs_received,
                bytes_received=hub.bytes_received,
                frames_sent=hub.frames_sent,
                slow_consumers=hub.slow_consumers,
            )
        records = self._records
        if records is not None:
            stats.update(
                records_written=records.written,
                records_dropped=records.dropped,
                records_failed=records.failed,
                records_queued=records.queued,
            )
        return stats

    def forget_sleeper(self, address: str, now: float) -> Forget:
        if not is_valid_address(address):
            return Forget.INVALID_ADDRESS
        key = address_key(address)
        exchange = self._exchange
        profile: WakeProfile | None = exchange.profiles().get(key)
        if profile is None:
            return Forget.NOT_FOUND
        if exchange.is_registered(address):
            return Forget.REGISTERED
        if any(call.callee_key == key for call in exchange.calls):
            return Forget.CALLS_WAITING
        session = exchange.on_open(_Blackhole(), now)
        try:
            register = m.Register(address=profile.address, mode="normal")
            exchange.on_data(session, _encode(register), now)
        finally:
            exchange.on_close(session, now)
        return Forget.FAILED if key in exchange.profiles() else Forget.FORGOTTEN


def _queued_bytes(conn: Any) -> int:
    queued = 0
    out = getattr(conn, "out", None)
    if out:
        queued += sum(map(len, out))
    raw = getattr(conn, "raw", None)
    if raw is not None:
        try:
            queued += int(raw.get_write_buffer_size())
        except Exception:
            pass
    return queued
