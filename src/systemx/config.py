"""Configuration: every setting, its environment variable and its default.

:class:`Settings` is plain data; the core reads only the fields it needs and
never the environment. :func:`load_settings` reads the process environment
(after a ``.env`` file, which never overrides variables already set) and
applies command-line overrides on top.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ENV_VARS", "ConfigError", "Settings", "load_settings"]


class ConfigError(ValueError):
    """A configuration value that cannot be used; names the variable."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    heartbeat_interval_ms: int = 30_000
    heartbeat_timeout_ms: int = 60_000
    call_timeout_ms: int = 30_000
    dial_max_attempts: int = 10
    dial_window_ms: int = 60_000
    log_level: str = "info"
    log_format: str = "text"
    max_message_bytes: int = 1_048_576
    max_buffered_bytes: int = 4 * 1_048_576
    read_buffer_bytes: int = 2048
    listen_backlog: int = 4096
    handshake_timeout_ms: int = 5_000
    shutdown_timeout_ms: int = 5_000
    tls_enabled: bool = False
    tls_cert_path: str = ""
    tls_key_path: str = ""
    data_dir: str = "./data"
    public_url: str = ""
    spawn_allow_commands: tuple[str, ...] = ()
    spawn_allow_addresses: tuple[str, ...] = ()
    webhook_allow: tuple[str, ...] = ()
    webhook_timeout_ms: int = 5_000
    party_max_participants: int = 5_000
    party_max_per_session: int = 64
    presence_default_limit: int = 100
    presence_max_limit: int = 1_000
    max_json_depth: int = 32
    max_value_bytes: int = 16_384
    # URL prefixes a webhook may never target (the exchange's own endpoints).
    webhook_deny: tuple[str, ...] = field(default=())

    @property
    def url(self) -> str:
        """Where a local agent should connect (``SYSTEMX_PUBLIC_URL`` or derived)."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        scheme = "wss" if self.tls_enabled else "ws"
        return f"{scheme}://{host}:{self.port}"


# variable -> (field, parser, description)
def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _int(value: str) -> int:
    return int(value.strip())


def _str(value: str) -> str:
    return value.strip()


ENV_VARS: dict[str, tuple[str, Any, str]] = {
    "SYSTEMX_HOST": ("host", _str, "Interface to listen on"),
    "SYSTEMX_PORT": ("port", _int, "TCP port for WebSocket and GET /healthz"),
    "SYSTEMX_HEARTBEAT_INTERVAL": ("heartbeat_interval_ms", _int, "How often (ms) stale sessions are swept"),
    "SYSTEMX_HEARTBEAT_TIMEOUT": (
        "heartbeat_timeout_ms",
        _int,
        "A session with no HEARTBEAT for this long (ms) is closed",
    ),
    "SYSTEMX_CALL_TIMEOUT": ("call_timeout_ms", _int, "How long (ms) a call may ring unanswered"),
    "SYSTEMX_DIAL_MAX_ATTEMPTS": (
        "dial_max_attempts",
        _int,
        "DIALs allowed per window per session (<=0 disables)",
    ),
    "SYSTEMX_DIAL_WINDOW_MS": ("dial_window_ms", _int, "Length (ms) of the dial rate-limit window"),
    "SYSTEMX_LOG_LEVEL": ("log_level", _str, "debug, info, warn, error"),
    "SYSTEMX_LOG_FORMAT": ("log_format", _str, "text or json (one JSON object per line)"),
    "SYSTEMX_MAX_MESSAGE_BYTES": (
        "max_message_bytes",
        _int,
        "Largest accepted message (bytes); larger closes with 1009",
    ),
    "SYSTEMX_MAX_BUFFERED_BYTES": (
        "max_buffered_bytes",
        _int,
        "Unsent bytes a slow receiver may queue before it is closed (1008)",
    ),
    "SYSTEMX_READ_BUFFER_BYTES": (
        "read_buffer_bytes",
        _int,
        "Initial per-connection read buffer (grows on demand)",
    ),
    "SYSTEMX_LISTEN_BACKLOG": (
        "listen_backlog",
        _int,
        "Connections the kernel queues before they are accepted (capped by net.core.somaxconn)",
    ),
    "SYSTEMX_HANDSHAKE_TIMEOUT_MS": (
        "handshake_timeout_ms",
        _int,
        "A connection that has not completed its HTTP upgrade after this long (ms) is dropped",
    ),
    "SYSTEMX_SHUTDOWN_TIMEOUT": ("shutdown_timeout_ms", _int, "Bound (ms) on the graceful shutdown wait"),
    "TLS_ENABLED": ("tls_enabled", _bool, "Serve wss:// (needs TLS_CERT_PATH and TLS_KEY_PATH)"),
    "TLS_CERT_PATH": ("tls_cert_path", _str, "PEM certificate chain"),
    "TLS_KEY_PATH": ("tls_key_path", _str, "PEM private key"),
    "SYSTEMX_DATA_DIR": ("data_dir", _str, "Directory for durable state (wake profiles, SQLite)"),
    "SYSTEMX_PUBLIC_URL": ("public_url", _str, "URL given to spawned agents (default ws://127.0.0.1:<port>)"),
    "SYSTEMX_SPAWN_ALLOW_COMMANDS": (
        "spawn_allow_commands",
        _split,
        "Comma list of executables a spawn handler may run (empty: spawn refused)",
    ),
    "SYSTEMX_SPAWN_ALLOW_ADDRESSES": (
        "spawn_allow_addresses",
        _split,
        "Comma list of address patterns (* wildcard) allowed to use spawn",
    ),
    "SYSTEMX_WEBHOOK_ALLOW": (
        "webhook_allow",
        _split,
        "Comma list of URL prefixes webhooks may target (empty: any http(s))",
    ),
    "SYSTEMX_WEBHOOK_DENY": ("webhook_deny", _split, "Comma list of URL prefixes webhooks may never target"),
    "SYSTEMX_WEBHOOK_TIMEOUT_MS": ("webhook_timeout_ms", _int, "Timeout (ms) of one wake webhook POST"),
    "SYSTEMX_PARTY_MAX_PARTICIPANTS": (
        "party_max_participants",
        _int,
        "Participants allowed in one party line",
    ),
    "SYSTEMX_PARTY_MAX_PER_SESSION": ("party_max_per_session", _int, "Party lines one session may be in"),
    "SYSTEMX_PRESENCE_DEFAULT_LIMIT": (
        "presence_default_limit",
        _int,
        "PRESENCE results when no limit is given",
    ),
    "SYSTEMX_PRESENCE_MAX_LIMIT": ("presence_max_limit", _int, "Largest PRESENCE limit honoured"),
    "SYSTEMX_MAX_JSON_DEPTH": (
        "max_json_depth",
        _int,
        "Nesting levels allowed in REGISTER metadata, wake_handler.payload and DIAL metadata (1-256)",
    ),
    "SYSTEMX_MAX_VALUE_BYTES": (
        "max_value_bytes",
        _int,
        "Encoded size (bytes) allowed for REGISTER metadata, wake_handler.payload and DIAL metadata",
    ),
}


_MAX_JSON_DEPTH = 256


def _validate(s: Settings) -> None:
    positive = {
        "SYSTEMX_HEARTBEAT_INTERVAL": s.heartbeat_interval_ms,
        "SYSTEMX_HEARTBEAT_TIMEOUT": s.heartbeat_timeout_ms,
        "SYSTEMX_CALL_TIMEOUT": s.call_timeout_ms,
        "SYSTEMX_DIAL_WINDOW_MS": s.dial_window_ms,
        "SYSTEMX_MAX_MESSAGE_BYTES": s.max_message_bytes,
        "SYSTEMX_MAX_BUFFERED_BYTES": s.max_buffered_bytes,
        "SYSTEMX_READ_BUFFER_BYTES": s.read_buffer_bytes,
        "SYSTEMX_LISTEN_BACKLOG": s.listen_backlog,
        "SYSTEMX_HANDSHAKE_TIMEOUT_MS": s.handshake_timeout_ms,
        "SYSTEMX_PARTY_MAX_PARTICIPANTS": s.party_max_participants,
        "SYSTEMX_PARTY_MAX_PER_SESSION": s.party_max_per_session,
        "SYSTEMX_PRESENCE_DEFAULT_LIMIT": s.presence_default_limit,
        "SYSTEMX_PRESENCE_MAX_LIMIT": s.presence_max_limit,
        "SYSTEMX_MAX_VALUE_BYTES": s.max_value_bytes,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if not 1 <= s.max_json_depth <= _MAX_JSON_DEPTH:
        # Deeper values could not be encoded again inside an outgoing message.
        raise ConfigError(f"SYSTEMX_MAX_JSON_DEPTH must be 1-{_MAX_JSON_DEPTH}, got {s.max_json_depth}")
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"SYSTEMX_PORT must be 0-65535, got {s.port}")
    if s.log_level.lower() not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"SYSTEMX_LOG_LEVEL must be debug, info, warn or error, got {s.log_level!r}")
    if s.log_format not in ("text", "json"):
        raise ConfigError(f"SYSTEMX_LOG_FORMAT must be text or json, got {s.log_format!r}")
    if s.tls_enabled and not (s.tls_cert_path and s.tls_key_path):
        raise ConfigError("TLS_ENABLED needs TLS_CERT_PATH and TLS_KEY_PATH")


def load_settings(
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env_file: str | Path | None = ".env",
) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ`` plus ``.env``).

    ``overrides`` maps field names to values (command-line flags) and wins.
    """
    if env is None:
        merged: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            from dotenv import dotenv_values

            merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        merged.update(os.environ)
        env = merged
    values: dict[str, Any] = {}
    for var, (name, parse, _doc) in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{var}: {exc}") from None
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    settings = dataclasses.replace(Settings(), **values)
    _validate(settings)
    return settings
