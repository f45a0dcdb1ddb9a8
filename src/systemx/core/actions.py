"""The actions the core asks its driver to perform.

The core never does I/O. Every effect it wants is a call on an
:class:`Actions` port, which the driver (``systemx.server``) executes and the
unit tests record (:class:`RecordingActions`). A method call instead of an
allocated action object keeps the MSG relay path to a dict lookup and a send.

``conn`` is whatever the driver attached to a session when it opened it: a
local socket, or later a route to an endpoint on another router process or
behind a federation trunk. The core never looks inside it.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

__all__ = [
    "Actions",
    "RecordingActions",
    "StoredHandler",
    "StoredSpawn",
    "StoredWebhook",
    "WakeProfile",
    "WakeRequest",
]


class StoredWebhook(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="webhook", tag_field="type"
):
    """A webhook wake handler as a profile keeps it (the URL was checked at REGISTER)."""

    url: str
    timeout_seconds: float
    payload: Any = None


class StoredSpawn(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag="spawn", tag_field="type"
):
    """A spawn wake handler as a profile keeps it: the operator's handler by ``handler`` name,
    with its timeout. ``command`` is only found in profiles stored by older versions."""

    handler: str | None = None
    command: list[str] | None = None
    timeout_seconds: float
    payload: Any = None


#: A stored wake handler; encoded with its ``"type"``, as the client wrote it.
StoredHandler = StoredWebhook | StoredSpawn


class WakeProfile(msgspec.Struct, frozen=True, kw_only=True):
    """What makes an address wake-on-ring: the address as last registered, its handler and
    the metadata presence shows while it sleeps, and the identity that registered it (only
    it may register the address again; None without authentication). Stored by the driver
    (as JSON)."""

    address: str
    handler: StoredHandler
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    owner: str | None = None

    def stored(self) -> dict[str, Any]:
        """The JSON form the driver stores (``owner`` only when there is one)."""
        doc: dict[str, Any] = msgspec.to_builtins(self)
        if doc.get("owner") is None:
            doc.pop("owner", None)
        return doc


@dataclass(frozen=True, slots=True)
class WakeRequest:
    """Wake the sleeping ``address`` because ``caller`` dialled it."""

    address: str
    call_id: str
    caller: str
    handler: StoredHandler
    payload: Any = None
    metadata: dict[str, Any] | None = None


class Actions(Protocol):
    def send(self, conn: Any, data: bytes) -> None:
        """Send one text frame to the endpoint behind ``conn``."""

    def close(self, conn: Any, code: int, reason: str) -> None:
        """Close ``conn`` with a WebSocket close code and reason text."""

    def start_timer(self, key: Hashable, delay: float) -> None:
        """Call ``Exchange.on_timer(key, now)`` after ``delay`` seconds.

        Starting a timer whose key is already running replaces it.
        """

    def cancel_timer(self, key: Hashable) -> None:
        """Forget the timer ``key`` (no error if it is not running)."""

    def wake(self, request: WakeRequest) -> None:
        """Run the wake handler; report ``Exchange.on_wake_failed`` on failure."""

    def cancel_wake(self, address: str) -> None:
        """The wake of ``address`` is over: the agent registered, or the wake timed out.

        Stop tracking it, and stop a spawned process whose address is not registered
        (a woken agent that registered is never stopped).
        """

    def persist_profile(self, key: str, profile: WakeProfile | None) -> None:
        """Store (or with ``None`` delete) the durable wake profile under ``key``
        (the address with its domain lower-cased; the profile holds the address as written)."""

    def woke(self, address: str) -> None:
        """``address``, which has a wake profile, registered here. A cluster tells its other
        nodes, which send the calls they hold for it here. Only asked when the exchange
        was built with ``directory=True``."""

    def slept(self, address: str) -> None:
        """``address``, which has a wake profile, went to sleep here. A cluster tells its
        other nodes (presence shows it asleep there again). Only asked with ``directory=True``."""

    def lookup(self, address: str) -> None:
        """Ask the directory who holds ``address`` elsewhere (another router process,
        a federation trunk); answer with ``Exchange.on_lookup_result``. Only asked
        when the exchange was built with ``directory=True``.
        """


@dataclass
class RecordingActions:
    """An :class:`Actions` that records every call, for tests and tools.

    ``profiles`` keeps each persisted profile in its stored (JSON) form.
    """

    sent: list[tuple[Any, bytes]] = field(default_factory=list)
    closed: list[tuple[Any, int, str]] = field(default_factory=list)
    timers: dict[Hashable, float] = field(default_factory=dict)
    wakes: list[WakeRequest] = field(default_factory=list)
    cancelled_wakes: list[str] = field(default_factory=list)
    profiles: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)
    slept_: list[str] = field(default_factory=list)

    def send(self, conn: Any, data: bytes) -> None:
        self.sent.append((conn, data))

    def close(self, conn: Any, code: int, reason: str) -> None:
        self.closed.append((conn, code, reason))

    def start_timer(self, key: Hashable, delay: float) -> None:
        self.timers[key] = delay

    def cancel_timer(self, key: Hashable) -> None:
        self.timers.pop(key, None)

    def wake(self, request: WakeRequest) -> None:
        self.wakes.append(request)

    def cancel_wake(self, address: str) -> None:
        self.cancelled_wakes.append(address)

    def persist_profile(self, key: str, profile: WakeProfile | None) -> None:
        self.profiles[key] = None if profile is None else profile.stored()

    def woke(self, address: str) -> None:
        self.woken.append(address)

    def slept(self, address: str) -> None:
        self.slept_.append(address)

    def lookup(self, address: str) -> None:
        self.lookups.append(address)
