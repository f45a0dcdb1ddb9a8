"""What the core needs to know of the process configuration, and nothing more.

The server builds a :class:`CoreConfig` from its ``Settings``
(``Settings.core_config()``), so the core never imports the process configuration, never sees TLS
paths, the data directory or log settings, and a test or tool builds one
directly. Durations are in seconds here (the settings spell them in
milliseconds), converted once.

:class:`SpawnHandler` lives here because the wake policy
(:mod:`systemx.core.wakepolicy`) reads it; the process configuration re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CoreConfig", "SpawnHandler"]


@dataclass(frozen=True, slots=True)
class SpawnHandler:
    """A program the operator lets wake-on-ring agents name (``SYSTEMX_SPAWN_HANDLERS``)."""

    name: str
    argv: tuple[str, ...]
    cwd: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    timeout_seconds: float = 30.0
    # Address patterns (``*`` wildcard, any case) allowed to use it; empty: any address.
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """The exchange's limits and timeouts; the defaults are the settings' defaults.

    ``host``, ``port``, ``spawn_handlers``, ``webhook_allow`` and ``webhook_deny``
    are the wake policy's (:class:`systemx.core.wakepolicy.WakeSettings`): the
    exchange's own listener is never a webhook target.
    """

    call_timeout: float = 30.0
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 60.0
    dial_max_attempts: int = 10
    dial_window: float = 60.0
    presence_max_queries: int = 100
    presence_window_ms: int = 10_000
    presence_default_limit: int = 100
    presence_max_limit: int = 1_000
    presence_max_result_bytes: int = 262_144
    party_max_participants: int = 5_000
    party_max_per_session: int = 64
    wake_max_profiles: int = 10_000
    wake_max_profiles_per_session: int = 8
    max_json_depth: int = 32
    max_value_bytes: int = 16_384
    host: str = "0.0.0.0"
    port: int = 8080
    spawn_handlers: tuple[SpawnHandler, ...] = ()
    webhook_allow: tuple[str, ...] = ()
    webhook_deny: tuple[str, ...] = ()
    register_max_renames: int = 30
    register_window_ms: int = 60_000
    join_max_attempts: int = 120
    join_window_ms: int = 60_000
    auth: str = "none"
    auth_tokens_file: str = ""
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_audience: str = ""
    policy_file: str = ""
    auth_grace_ms: int = 15_000
    pbx_tokens: str = ""
    trunk_grace_ms: int = 2_000

    def spawn_handler(self, name: str) -> SpawnHandler | None:
        for handler in self.spawn_handlers:
            if handler.name == name:
                return handler
        return None
