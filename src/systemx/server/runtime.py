"""The effects of the core: :class:`Runtime` executes the exchange's ``Actions``.

The sans-I/O :class:`~systemx.core.exchange.Exchange` asks for every effect
through its :class:`~systemx.core.actions.Actions` port. :class:`Runtime` is
that port in the server: frames and closes go to the session's
:class:`~systemx.core.endpoint.Endpoint` (a :class:`~systemx.server.transport.Connection`),
timers to :class:`~systemx.server.timers.Timers`, wakes to the wake runner
(``systemx.server.wake``, built on first use), wake profiles to the profile
store (Redis in a cluster), and directory lookups are answered (the embedded
exchange has no directory beyond its own registry).

:class:`ExchangeFactory` is the exchange's constructor as the server calls it,
so the type checker holds :class:`Runtime` to the ``Actions`` port: a missing or
misnamed method is an error in ``mypy --strict``, not at the first call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from time import time as _now
from typing import TYPE_CHECKING, Any, Protocol

from systemx.config import Settings
from systemx.core.actions import Actions, WakeProfile, WakeRequest
from systemx.core.config import CoreConfig
from systemx.core.endpoint import Endpoint
from systemx.core.records import Recorder
from systemx.server.timers import Timers
from systemx.state.ports import Directory
from systemx.state.presence import PresenceGather, PresenceIndex
from systemx.state.profiles import ProfileStore

if TYPE_CHECKING:
    from systemx.server.cluster import Cluster

__all__ = [
    "ExchangeFactory",
    "ExchangeLike",
    "ProfileStoreFactory",
    "Runtime",
    "WakeRunnerFactory",
    "WakeRunnerLike",
]

log = logging.getLogger("systemx.server")


class ExchangeLike(Protocol):
    """The part of :class:`systemx.core.exchange.Exchange` the server calls."""

    def start(self, now: float) -> None: ...
    def on_open(self, conn: Endpoint, now: float) -> Any: ...
    def on_data(self, session: Any, data: bytes, now: float) -> None: ...
    def on_close(self, session: Any, now: float) -> None: ...
    def on_timer(self, key: Hashable, now: float) -> None: ...
    def on_wake_failed(self, address: str, detail: str, now: float) -> None: ...
    def on_lookup_result(self, address: str, conn: Endpoint | None, now: float) -> Any: ...
    def is_registered(self, address: str) -> bool: ...
    def shutdown(self, now: float) -> None: ...
    def health(self) -> dict[str, Any]: ...
    def use_recorder(self, recorder: Recorder) -> None: ...


class ExchangeFactory(Protocol):
    """Builds the exchange (``Exchange`` itself): the effects go to ``actions``."""

    def __call__(
        self,
        config: CoreConfig,
        actions: Actions,
        *,
        profiles: Mapping[str, WakeProfile] | None = ...,
        directory: bool = ...,
        claims: Directory | None = ...,
        node_id: str | None = ...,
        presence: PresenceIndex | None = ...,
        presence_gather: PresenceGather | None = ...,
    ) -> ExchangeLike: ...


class WakeRunnerLike(Protocol):
    """Runs wake handlers (``systemx.server.wake.WakeRunner``)."""

    def wake(self, request: WakeRequest) -> None: ...
    def cancel(self, address: str) -> None: ...
    async def close(self) -> None: ...


ProfileStoreFactory = Callable[[Path], ProfileStore]
WakeRunnerFactory = Callable[[Settings, Callable[[str, str], None], Callable[[str], bool]], WakeRunnerLike]


def default_wake_runner(
    settings: Settings, on_failed: Callable[[str, str], None], is_registered: Callable[[str], bool]
) -> WakeRunnerLike:
    # Imported when first used, so a deployment without its dependencies fails only when it wakes.
    from systemx.server.wake import WakeRunner

    return WakeRunner(settings, on_failed, is_registered)


class Runtime:
    """Executes the core's actions on the event loop (see the module docstring).

    Built before the exchange (which takes it as its ``actions``); :meth:`attach`
    then gives it the exchange to report timers, wake failures and lookups to.
    """

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        *,
        profiles: ProfileStore | None,
        wake_runner_factory: WakeRunnerFactory = default_wake_runner,
    ) -> None:
        self.settings = settings
        self.loop = loop
        self.timers = Timers(loop, self._fire_timer)
        self.profiles = profiles
        self._wake_runner_factory = wake_runner_factory
        self._wake_runner: WakeRunnerLike | None = None
        self._exchange: ExchangeLike | None = None
        self._profiles_missing_logged = False
        # Set once shutdown has begun: a wake failure is no longer reported to the core.
        self.stopping = False
        #: This node's cluster (``SYSTEMX_REDIS_URL``), which answers lookups; None: one process.
        self.cluster: Cluster | None = None

    def attach(self, exchange: ExchangeLike) -> None:
        self._exchange = exchange

    @property
    def exchange(self) -> ExchangeLike:
        if self._exchange is None:
            raise RuntimeError("server not started")
        return self._exchange

    async def stop(self) -> None:
        """Drop every timer, then close the wake runner and the profile store."""
        self.stopping = True
        self.timers.clear()
        if self._wake_runner is not None:
            try:
                await self._wake_runner.close()
            except Exception:
                log.exception("Wake runner close failed")
        if self.profiles is not None:
            try:
                self.profiles.close()
            except Exception:
                log.exception("Profile store close failed")
            self.profiles = None

    # -- Actions -------------------------------------------------------------

    def send(self, conn: Endpoint, data: bytes) -> None:
        conn.send(data)

    def close(self, conn: Endpoint, code: int, reason: str) -> None:
        conn.close(code, reason)

    def start_timer(self, key: Hashable, delay: float) -> None:
        self.timers.start(key, delay)

    def cancel_timer(self, key: Hashable) -> None:
        self.timers.cancel(key)

    def wake(self, request: WakeRequest) -> None:
        if self.cluster is not None:
            # One wake cluster-wide: the handler runs here only if this node wins the wake lock.
            self.cluster.wake(request, self._run_wake)
            return
        self._run_wake(request)

    def _run_wake(self, request: WakeRequest) -> None:
        try:
            runner = self._runner()
            runner.wake(request)
        except Exception as exc:
            log.exception("Cannot wake %s", request.address)
            # The core is mid-action: report the failure after it returns.
            self.loop.call_soon(self._wake_failed, request.address, f"wake runner failed: {exc}")

    def cancel_wake(self, address: str) -> None:
        if self._wake_runner is not None:
            self._wake_runner.cancel(address)
        if self.cluster is not None:
            self.cluster.wake_over(address)

    def woke(self, address: str) -> None:
        if self.cluster is not None:
            self.cluster.woke(address)

    def slept(self, address: str) -> None:
        if self.cluster is not None:
            self.cluster.slept(address)

    def persist_profile(self, key: str, profile: WakeProfile | None) -> None:
        if self.cluster is not None:
            # A cluster keeps its profiles in Redis, shared by every node.
            self.cluster.persist_profile(key, profile)
            return
        store = self.profiles
        if store is None:
            if not self._profiles_missing_logged:
                self._profiles_missing_logged = True
                log.warning("Wake profile of %s not persisted: no profile store", key)
            return
        try:
            if profile is None:
                store.delete(key)
            else:
                store.put(key, profile.stored())
        except Exception:
            log.exception("Persisting the wake profile of %s failed", key)

    def lookup(self, address: str) -> None:
        if self.cluster is not None:
            self.cluster.lookup(address)
            return
        # The embedded exchange has no directory beyond its own registry.
        self.loop.call_soon(self._lookup_missed, address)

    # -- reports to the core -------------------------------------------------

    def _fire_timer(self, key: Hashable) -> None:
        try:
            self.exchange.on_timer(key, _now())
        except Exception:
            log.exception("Timer %r failed", key)

    def _lookup_missed(self, address: str) -> None:
        self.exchange.on_lookup_result(address, None, _now())

    def _runner(self) -> WakeRunnerLike:
        if self._wake_runner is None:
            self._wake_runner = self._wake_runner_factory(
                self.settings, self._wake_failed, self.exchange.is_registered
            )
        return self._wake_runner

    def _wake_failed(self, address: str, detail: str) -> None:
        if self.stopping:
            return
        if self.cluster is not None:
            self.cluster.wake_failed(address, detail)
        self.exchange.on_wake_failed(address, detail, _now())
