"""Wake-on-ring: addresses that sleep when absent, and waking them when dialled.

:class:`Wake` is the only writer of the wake profiles (address key -> profile),
of the set of addresses being woken with their wake timers, and of auto-sleep
(a session's idle and sleep timers). When a woken agent registers, or its wake
fails or times out, it asks the :class:`~systemx.core.calls.CallBook` to ring
or fail the calls waiting for the address; it never touches a call itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from systemx.core.actions import Actions, StoredHandler, WakeProfile, WakeRequest
from systemx.core.calls import CallBook, CallEvent
from systemx.core.config import CoreConfig
from systemx.core.records import Recorder
from systemx.core.registry import Registry
from systemx.core.session import Sender, Session
from systemx.core.timerkeys import IdleTimer, SleepTimer, WakeTimer
from systemx.core.wakepolicy import check_wake_handler, stored_handler, validate_wake_handler, wake_timeout
from systemx.protocol import messages as m
from systemx.protocol.address import address_key, is_valid_address
from systemx.protocol.codes import (
    BusyReason,
    ErrorReason,
    RegisterFailedReason,
    SleepReason,
    Status,
)
from systemx.quicklog import get_logger

__all__ = ["Wake"]

log = get_logger("systemx.exchange")


class Wake(Sender):
    """Wake profiles, wakes in flight and auto-sleep. See the module docstring."""

    def __init__(
        self,
        actions: Actions,
        registry: Registry,
        book: CallBook,
        recorder: Recorder,
        cfg: CoreConfig,
        sleep: Callable[[Session, float], None],
    ) -> None:
        super().__init__(actions.send)
        self._actions = actions
        self._registry = registry
        self._book = book
        self._recorder = recorder
        self._cfg = cfg
        self._sleep = sleep
        # key -> profile: addresses that sleep when absent
        self._profiles: dict[str, WakeProfile] = {}
        # key -> (the address a running wake handler was asked to wake, as the profile wrote it; its timer)
        self._waking: dict[str, tuple[str, WakeTimer]] = {}
        # Keys registered on another node of a cluster, as last told, and that node (shown awake there).
        self._elsewhere: dict[str, str] = {}
        #: Whether an address key has a wake profile / is being woken (C-level: asked on
        #: every REGISTER and session end).
        self.has_profile: Callable[[str], bool] = self._profiles.__contains__
        self.is_waking: Callable[[str], bool] = self._waking.__contains__

    # ------------------------------------------------------------- accessors

    def owner(self, key: str) -> str | None:
        """The identity that owns ``key``'s wake profile (None: no profile, or no identity)."""
        profile = self._profiles.get(key)
        return profile.owner if profile is not None else None

    def profiles(self) -> dict[str, WakeProfile]:
        return dict(self._profiles)

    def waking(self) -> list[str]:
        return list(self._waking)

    def asleep(self) -> int:
        return sum(1 for k in self._profiles if k not in self._registry and k not in self._elsewhere)

    # -------------------------------------------------------------- profiles

    def load(self, profile: WakeProfile) -> None:
        """A stored profile: its address is dialable, asleep unless registered."""
        address = profile.address
        key = address_key(address)
        self._profiles[key] = profile
        if key not in self._registry and key not in self._elsewhere:
            self._registry.publish(key, address, profile.metadata, Status.ASLEEP)

    def awake_elsewhere(self, key: str, node: str | None) -> None:
        """Node ``node`` of the cluster holds ``key`` now, or (None) it went to sleep there:
        presence here shows it asleep only while it sleeps (its holder's node shows it awake)."""
        awake = node is not None
        if node is not None:
            self._elsewhere[key] = node
        else:
            self._elsewhere.pop(key, None)
        profile = self._profiles.get(key)
        if profile is None or key in self._registry:
            return
        if awake:
            self._registry.unpublish(key)
        else:
            self.load(profile)

    def node_gone(self, node: str) -> None:
        """Node ``node`` of the cluster is gone: what was registered there sleeps."""
        for key in [k for k, n in self._elsewhere.items() if n == node]:
            self.awake_elsewhere(key, None)

    def forget(self, key: str) -> None:
        """Another node of the cluster deleted ``key``'s profile: it no longer sleeps here either."""
        if self._profiles.pop(key, None) is not None:
            self._registry.unpublish(key)

    def accept_handler(
        self, s: Session, msg: m.Register, key: str, address: str, now: float
    ) -> tuple[bool, StoredHandler | None]:
        """Check a wake_on_ring REGISTER's handler: ``(ok, handler to store or None)``.

        Not ok: REGISTER_FAILED has been sent.
        """
        handler = msg.wake_handler
        if handler is None:
            if key in self._profiles:
                return True, None
            problem: str | None = "mode wake_on_ring requires a wake_handler"
        else:
            problem = validate_wake_handler(handler)
            if problem is None:
                refusal = check_wake_handler(handler, address, self._cfg)
                if refusal is not None:
                    log.warning("Wake handler refused for %s: %s", address, refusal)
                    self._register_failed(
                        s, RegisterFailedReason.WAKE_HANDLER_NOT_ALLOWED, address, refusal, now
                    )
                    return False, None
                return True, stored_handler(handler, address, self._cfg)
        self._register_failed(s, RegisterFailedReason.INVALID_PAYLOAD, address, problem, now)
        return False, None

    def admit(self, s: Session, key: str, address: str, now: float) -> bool:
        """``s`` may create the profile of ``key`` (counted); else REGISTER_FAILED is sent."""
        if key in self._profiles:
            return True
        per_session = self._cfg.wake_max_profiles_per_session
        if s.wake_profiles_created >= per_session:
            refusal = (
                f"this session has already created {per_session} wake profiles "
                "(SYSTEMX_WAKE_MAX_PROFILES_PER_SESSION)"
            )
        elif len(self._profiles) >= self._cfg.wake_max_profiles:
            refusal = (
                f"the exchange stores its maximum of {self._cfg.wake_max_profiles} wake profiles "
                "(SYSTEMX_WAKE_MAX_PROFILES)"
            )
        else:
            s.wake_profiles_created += 1
            return True
        log.warning("Wake profile refused for %s: %s", address, refusal)
        self._register_failed(s, RegisterFailedReason.WAKE_PROFILE_LIMIT, address, refusal, now)
        return False

    def registered(
        self,
        key: str,
        address: str,
        mode: str | None,
        handler: StoredHandler | None,
        metadata_given: bool,
        meta: dict[str, Any],
        owner: str | None = None,
    ) -> None:
        """``key`` registered with ``mode``: create, update or delete its profile (and persist).

        ``owner`` is the identity that registered it (None without authentication).
        """
        self._elsewhere.pop(key, None)
        if mode == "normal":
            if self._profiles.pop(key, None) is not None:
                self._actions.persist_profile(key, None)
            return
        old = self._profiles.get(key)
        profile: WakeProfile | None = None
        if handler is not None:
            profile = WakeProfile(address=address, handler=handler, metadata=meta, owner=owner)
        elif old is not None and metadata_given:
            profile = WakeProfile(address=address, handler=old.handler, metadata=meta, owner=owner)
        elif old is not None and (old.address != address or old.owner != owner):
            # The line re-registered with its domain in another case, or by the identity
            # now owning it: wake it as now written.
            profile = msgspec.structs.replace(old, address=address, owner=owner)
        if profile is not None:
            self._profiles[key] = profile
            self._actions.persist_profile(key, profile)

    def unbound(self, key: str, asleep: bool, now: float) -> None:
        """``key``'s holder gave it up (``asleep``: it sleeps). Asked only when ``key``
        has a profile or calls wait for it: the next wake starts, or they fail."""
        profile = self._profiles.get(key)
        if profile is not None and not asleep:
            # Renamed away: the profile stays, and presence shows it asleep again.
            self.load(profile)
        first = self._book.first_waiting(key)
        if first is not None:
            if profile is not None:
                self.start(key, first, now)
            else:
                self._book.fail_waiting(key, BusyReason.TIMEOUT, CallEvent.DISCONNECT, now)

    # ----------------------------------------------------------------- wakes

    def start(self, key: str, call: Any, now: float) -> None:
        """Run the wake handler of ``key`` for ``call``, the first call waiting for it."""
        profile = self._profiles[key]
        handler = profile.handler
        address = profile.address
        old = self._waking.get(key)
        if old is not None:
            self._actions.cancel_timer(old[1])
        timer = WakeTimer(key)
        self._waking[key] = (address, timer)
        self._actions.start_timer(timer, wake_timeout(handler, self._cfg))
        caller = call.caller
        log.info("Waking %s for %s (call: %s)", address, caller.address if caller else "?", call.call_id)
        self._actions.wake(
            WakeRequest(
                address=address,
                call_id=call.call_id,
                caller=(caller.address or "") if caller else "",
                handler=handler,
                payload=handler.payload,
                metadata=call.metadata,
            )
        )

    def woken(self, key: str) -> bool:
        """``key`` registered: if it was being woken, the wake is over (True)."""
        waking = self._waking.pop(key, None)
        if waking is None:
            return False
        address, timer = waking
        self._actions.cancel_timer(timer)
        # The wake was started under the profile's spelling, which may differ in case.
        self._actions.cancel_wake(address)
        return True

    def on_wake_timer(self, key: WakeTimer, now: float) -> None:
        waking = self._waking.get(key.key)
        if waking is not None and waking[1] is key:
            self._ended(key.key, BusyReason.TIMEOUT, now)

    def on_wake_failed(self, address: str, detail: str, now: float) -> None:
        key = address_key(address) if is_valid_address(address) else address
        if key in self._waking:
            log.warning("Wake failed: %s (%s)", address, detail)
            self._ended(key, BusyReason.WAKE_FAILED, now)

    def _ended(self, key: str, reason: str, now: float) -> None:
        """The wake of ``key`` failed or timed out: every waiting caller hears BUSY."""
        waking = self._waking.pop(key, None)
        if waking is None:
            return
        address, timer = waking
        self._actions.cancel_timer(timer)
        if reason == BusyReason.TIMEOUT:
            self._actions.cancel_wake(address)
            log.warning("Wake timeout: %s", address)
        event = CallEvent.TIMEOUT if reason == BusyReason.TIMEOUT else CallEvent.WAKE_FAILED
        self._book.fail_waiting(key, reason, event, now)

    # ------------------------------------------------------------ auto-sleep

    def on_sleep_ack(self, s: Session, msg: m.SleepAck, now: float) -> None:
        if s.key is None or s.key not in self._profiles:
            self._error(
                s,
                ErrorReason.NOT_WAKE_ON_RING,
                "SLEEP_ACK",
                "SLEEP_ACK needs a registration with mode wake_on_ring",
            )
            return
        self._sleep(s, now)

    def auto_sleep(self, s: Session, idle: float) -> None:
        """STATUS auto_sleep: sleep after ``idle`` seconds without activity (0 or less: never)."""
        if idle <= 0:
            self.cancel_sleep(s)
            return
        s.auto_sleep = max(idle, 0.1)
        s.sleep_pending_at = None
        if s.idle_timer is None:
            s.idle_timer = IdleTimer(s)
            s.sleep_timer = SleepTimer(s)
        else:
            assert s.sleep_timer is not None
            self._actions.cancel_timer(s.sleep_timer)
        self._actions.start_timer(s.idle_timer, s.auto_sleep)

    def cancel_sleep(self, s: Session) -> None:
        """Auto-sleep off for ``s``, its timers cancelled."""
        s.auto_sleep = None
        if s.idle_timer is not None:
            self._actions.cancel_timer(s.idle_timer)
        if s.sleep_timer is not None:
            self._actions.cancel_timer(s.sleep_timer)

    def on_idle_timer(self, key: IdleTimer, now: float) -> None:
        s = key.session
        idle = s.auto_sleep
        if s.closed or idle is None:
            return
        remaining = s.last_activity + idle - now
        if s.calls or remaining > 0.001:
            self._actions.start_timer(key, max(remaining, 0.05) if not s.calls else idle)
            return
        grace = min(max(idle, 0.2), 5.0)
        s.sleep_pending_at = now
        self._send_msg(s, m.SleepPending(reason=SleepReason.IDLE_TIMEOUT, seconds_until_sleep=int(grace)))
        assert s.sleep_timer is not None
        self._actions.start_timer(s.sleep_timer, grace)

    def on_sleep_timer(self, key: SleepTimer, now: float) -> None:
        s = key.session
        pending = s.sleep_pending_at
        if s.closed or pending is None or s.auto_sleep is None:
            return
        s.sleep_pending_at = None
        if s.last_activity > pending or s.calls:
            assert s.idle_timer is not None
            self._actions.start_timer(s.idle_timer, s.auto_sleep)
            return
        self._sleep(s, now)
