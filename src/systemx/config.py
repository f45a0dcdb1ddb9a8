"""Configuration: every setting, its environment variable and its default.

:class:`Settings` is plain data; the core reads only the fields it needs and
never the environment. :func:`load_settings` reads the process environment
(after a ``.env`` file, which never overrides variables already set) and
applies command-line overrides on top.

Every :class:`ConfigError` reads ``NAME: problem``, ``NAME`` being the
variable (or the file) at fault.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from systemx.core.config import CoreConfig, SpawnHandler

__all__ = [
    "ENV_VARS",
    "PLACEHOLDERS",
    "ConfigError",
    "Settings",
    "SpawnHandler",
    "is_loopback_host",
    "load_settings",
    "parse_duration_ms",
    "read_env_file",
]


class ConfigError(ValueError):
    """A configuration value that cannot be used; names the variable."""


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


# argv elements a spawn handler may use; each is replaced by one whole argument.
PLACEHOLDERS = ("{address}", "{call_id}", "{caller}")


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
    spawn_handlers: tuple[SpawnHandler, ...] = ()
    webhook_allow: tuple[str, ...] = ()
    webhook_timeout_ms: int = 5_000
    party_max_participants: int = 5_000
    party_max_per_session: int = 64
    presence_default_limit: int = 100
    presence_max_limit: int = 1_000
    wake_max_profiles: int = 10_000
    wake_max_profiles_per_session: int = 8
    presence_max_result_bytes: int = 262_144
    presence_max_queries: int = 100
    presence_window_ms: int = 10_000
    max_json_depth: int = 32
    max_value_bytes: int = 16_384
    # Trunk tokens (systemx.core.trunkauth); empty: every trunk is accepted.
    pbx_tokens: str = ""
    trunk_grace_ms: int = 2_000
    auth: str = "none"
    auth_tokens_file: str = ""
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_audience: str = ""
    policy_file: str = ""
    auth_grace_ms: int = 15_000
    max_connections_per_ip: int = 0
    connect_rate_per_ip: int = 0
    ban_seconds: int = 300
    max_frames_per_second: int = 0
    max_bytes_per_second: int = 0
    rate_burst_seconds: int = 2
    register_max_renames: int = 30
    register_window_ms: int = 60_000
    join_max_attempts: int = 120
    join_window_ms: int = 60_000
    allowed_origins: tuple[str, ...] = ()
    # URL prefixes a webhook may never target (the exchange's own endpoints).
    webhook_deny: tuple[str, ...] = field(default=())
    admin_enabled: bool = True
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    admin_token: str = ""
    records_enabled: bool = True
    records_max: int = 1_000_000
    records_retention_days: float = 90.0
    log_stream_enabled: bool = True
    # Cluster (systemx.server.cluster): empty redis_url is the single process.
    redis_url: str = ""
    node_id: str = ""
    node_ttl_ms: int = 10_000
    reuse_port: bool = False
    cluster_register_limit: int = 60
    presence_status_delay_ms: int = 100

    @property
    def url(self) -> str:
        """Where a local agent should connect (``SYSTEMX_PUBLIC_URL`` or derived)."""
        if self.public_url:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        scheme = "wss" if self.tls_enabled else "ws"
        return f"{scheme}://{host}:{self.port}"

    def core_config(self) -> CoreConfig:
        """The part of these settings the exchange core reads (durations in seconds)."""
        return CoreConfig(
            call_timeout=self.call_timeout_ms / 1000.0,
            heartbeat_interval=self.heartbeat_interval_ms / 1000.0,
            heartbeat_timeout=self.heartbeat_timeout_ms / 1000.0,
            dial_max_attempts=self.dial_max_attempts,
            dial_window=self.dial_window_ms / 1000.0,
            presence_max_queries=self.presence_max_queries,
            presence_window_ms=self.presence_window_ms,
            presence_default_limit=self.presence_default_limit,
            presence_max_limit=self.presence_max_limit,
            presence_max_result_bytes=self.presence_max_result_bytes,
            party_max_participants=self.party_max_participants,
            party_max_per_session=self.party_max_per_session,
            wake_max_profiles=self.wake_max_profiles,
            wake_max_profiles_per_session=self.wake_max_profiles_per_session,
            max_json_depth=self.max_json_depth,
            max_value_bytes=self.max_value_bytes,
            host=self.host,
            port=self.port,
            spawn_handlers=self.spawn_handlers,
            webhook_allow=self.webhook_allow,
            webhook_deny=self.webhook_deny,
            register_max_renames=self.register_max_renames,
            register_window_ms=self.register_window_ms,
            join_max_attempts=self.join_max_attempts,
            join_window_ms=self.join_window_ms,
            auth=self.auth,
            auth_tokens_file=self.auth_tokens_file,
            jwt_secret=self.jwt_secret,
            jwt_public_key=self.jwt_public_key,
            jwt_audience=self.jwt_audience,
            policy_file=self.policy_file,
            auth_grace_ms=self.auth_grace_ms,
            pbx_tokens=self.pbx_tokens,
            trunk_grace_ms=self.trunk_grace_ms,
        )

    def spawn_handler(self, name: str) -> SpawnHandler | None:
        for handler in self.spawn_handlers:
            if handler.name == name:
                return handler
        return None


# variable -> (field, parser, description)
def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _int(value: str) -> int:
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {value!r}") from None


_DURATION = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(ms|s|m|h)?")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def _duration_ms(value: str) -> int:
    """A duration in milliseconds: a plain number is milliseconds; ``500ms``,
    ``30s``, ``2m`` and ``1h`` (decimals allowed: ``1.5s``) say their unit."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a duration: {value!r} (a number of milliseconds, or e.g. 500ms, 30s, 2m, 1h)")
    number, unit = match.groups()
    ms = float(number) * _UNIT_MS[unit or "ms"]
    if ms != int(ms):
        raise ValueError(f"not a whole number of milliseconds: {value!r}")
    return int(ms)


def parse_duration_ms(value: str) -> int:
    """:func:`_duration_ms` for command-line flags (argparse reports its ``ValueError``)."""
    return _duration_ms(value)


def _str(value: str) -> str:
    return value.strip()


def _float(value: str) -> float:
    number = float(value.strip())
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


_HANDLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HANDLER_KEYS = frozenset({"argv", "cwd", "env", "timeout_seconds", "addresses"})


def _spawn_handlers(value: str) -> tuple[SpawnHandler, ...]:
    """Parse ``SYSTEMX_SPAWN_HANDLERS``: inline JSON, or the path of a JSON or TOML file.

    A relative ``cwd`` in a file is relative to the file's directory; in inline
    JSON it is relative to the exchange's working directory.
    """
    text = value.strip()
    base: Path | None = None
    try:
        if text.startswith("{"):
            data: Any = json.loads(text)
        else:
            path = Path(text).expanduser()
            raw = path.read_text(encoding="utf-8")
            data = tomllib.loads(raw) if path.suffix.lower() == ".toml" else json.loads(raw)
            base = path.resolve().parent
    except OSError as exc:
        raise ValueError(f"cannot read {text!r}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"not valid JSON or TOML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("must be an object mapping handler names to handlers")
    return tuple(_spawn_handler(name, spec, base) for name, spec in data.items())


def _spawn_handler(name: str, spec: Any, base: Path | None) -> SpawnHandler:
    where = f"handler {name!r}"
    if not _HANDLER_NAME.fullmatch(name):
        raise ValueError(f"{where}: a name is 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be an object")
    unknown = sorted(set(spec) - _HANDLER_KEYS)
    if unknown:
        known = ", ".join(sorted(_HANDLER_KEYS))
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {known}")
    argv = spec.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
        raise ValueError(f"{where}: argv must be a non-empty list of non-empty strings")
    for arg in argv:
        if "\x00" in arg:
            raise ValueError(f"{where}: argv must not contain NUL characters")
        if arg not in PLACEHOLDERS and any(p in arg for p in PLACEHOLDERS):
            raise ValueError(
                f"{where}: a placeholder must be a whole argument ({', '.join(PLACEHOLDERS)}), got {arg!r}"
            )
    if argv[0] in PLACEHOLDERS:
        raise ValueError(f"{where}: argv[0] (the program) cannot be a placeholder")
    cwd = spec.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd:
            raise ValueError(f"{where}: cwd must be a non-empty string")
        if base is not None:
            cwd = str(base / cwd)
    env = spec.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(k, str) and k and "=" not in k for k in env):
        raise ValueError(f"{where}: env must map variable names to strings")
    if not all(isinstance(v, str) for v in env.values()):
        raise ValueError(f"{where}: env values must be strings")
    timeout = spec.get("timeout_seconds", 30.0)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 < timeout <= 3600
    ):
        raise ValueError(f"{where}: timeout_seconds must be a number in (0, 3600]")
    addresses = spec.get("addresses", [])
    if not isinstance(addresses, list) or not all(isinstance(a, str) and a for a in addresses):
        raise ValueError(f"{where}: addresses must be a list of address patterns")
    return SpawnHandler(
        name=name,
        argv=tuple(argv),
        cwd=cwd,
        env=tuple(env.items()),
        timeout_seconds=float(timeout),
        addresses=tuple(addresses),
    )


ENV_VARS: dict[str, tuple[str, Any, str]] = {
    "SYSTEMX_HOST": ("host", _str, "Interface to listen on"),
    "SYSTEMX_PORT": ("port", _int, "TCP port for WebSocket and GET /healthz"),
    "SYSTEMX_HEARTBEAT_INTERVAL": (
        "heartbeat_interval_ms",
        _duration_ms,
        "How often (ms) stale sessions are swept",
    ),
    "SYSTEMX_HEARTBEAT_TIMEOUT": (
        "heartbeat_timeout_ms",
        _duration_ms,
        "A session with no HEARTBEAT for this long (ms) is closed",
    ),
    "SYSTEMX_CALL_TIMEOUT": ("call_timeout_ms", _duration_ms, "How long (ms) a call may ring unanswered"),
    "SYSTEMX_PBX_TOKENS": (
        "pbx_tokens",
        _str,
        "Tokens a trunk must present in REGISTER_PBX auth (TOKEN or TOKEN=PATTERN|..., comma list)",
    ),
    "SYSTEMX_TRUNK_GRACE_MS": (
        "trunk_grace_ms",
        _duration_ms,
        "How long (ms) connected calls over a dropped trunk wait for it to come back",
    ),
    "SYSTEMX_DIAL_MAX_ATTEMPTS": (
        "dial_max_attempts",
        _int,
        "DIALs allowed per window per session (<=0 disables)",
    ),
    "SYSTEMX_DIAL_WINDOW_MS": ("dial_window_ms", _duration_ms, "Length (ms) of the dial rate-limit window"),
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
        _duration_ms,
        "A connection that has not completed its HTTP upgrade after this long (ms) is dropped "
        "(checked every quarter of it, at most every second)",
    ),
    "SYSTEMX_SHUTDOWN_TIMEOUT": (
        "shutdown_timeout_ms",
        _duration_ms,
        "Bound (ms) on the graceful shutdown wait",
    ),
    "TLS_ENABLED": (
        "tls_enabled",
        _bool,
        "Serve wss:// (needs TLS_CERT_PATH and TLS_KEY_PATH); unset: on when both paths are set",
    ),
    "TLS_CERT_PATH": ("tls_cert_path", _str, "PEM certificate chain"),
    "TLS_KEY_PATH": ("tls_key_path", _str, "PEM private key"),
    "SYSTEMX_DATA_DIR": ("data_dir", _str, "Directory for durable state (wake profiles, SQLite)"),
    "SYSTEMX_PUBLIC_URL": ("public_url", _str, "URL given to spawned agents (default ws://127.0.0.1:<port>)"),
    "SYSTEMX_SPAWN_HANDLERS": (
        "spawn_handlers",
        _spawn_handlers,
        "Programs a spawn wake handler may name: inline JSON or a .json/.toml file (empty: spawn refused)",
    ),
    "SYSTEMX_WEBHOOK_ALLOW": (
        "webhook_allow",
        _split,
        "Comma list of URL prefixes webhooks may target, internal hosts included (empty: public hosts only)",
    ),
    "SYSTEMX_WEBHOOK_DENY": ("webhook_deny", _split, "Comma list of URL prefixes webhooks may never target"),
    "SYSTEMX_WEBHOOK_TIMEOUT_MS": (
        "webhook_timeout_ms",
        _duration_ms,
        "Timeout (ms) of one wake webhook POST",
    ),
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
    "SYSTEMX_WAKE_MAX_PROFILES": ("wake_max_profiles", _int, "Wake profiles the exchange stores in total"),
    "SYSTEMX_WAKE_MAX_PROFILES_PER_SESSION": (
        "wake_max_profiles_per_session",
        _int,
        "Wake profiles one session may create (re-REGISTERing under new addresses)",
    ),
    "SYSTEMX_PRESENCE_MAX_RESULT_BYTES": (
        "presence_max_result_bytes",
        _int,
        "Largest PRESENCE_RESULT frame (bytes); entries past it are left out and the result says truncated",
    ),
    "SYSTEMX_PRESENCE_MAX_QUERIES": (
        "presence_max_queries",
        _int,
        "PRESENCE queries allowed per window per session (<=0 disables)",
    ),
    "SYSTEMX_PRESENCE_WINDOW_MS": (
        "presence_window_ms",
        _duration_ms,
        "Length (ms) of the presence rate-limit window",
    ),
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
    "SYSTEMX_ADMIN": (
        "admin_enabled",
        _bool,
        "Run the admin listener (metrics, API, switchboard page); off disables",
    ),
    "SYSTEMX_ADMIN_HOST": ("admin_host", _str, "Interface of the admin listener"),
    "SYSTEMX_REDIS_URL": (
        "redis_url",
        _str,
        "redis://[user:password@]host[:port][/db]: join the cluster that shares this Redis",
    ),
    "SYSTEMX_NODE_ID": (
        "node_id",
        _str,
        "This node's name in the cluster (default: host, port and a random part)",
    ),
    "SYSTEMX_NODE_TTL_MS": (
        "node_ttl_ms",
        _duration_ms,
        "A cluster node silent this long (ms) is dead: its addresses are freed, its calls end",
    ),
    "SYSTEMX_CLUSTER_REGISTER_LIMIT": (
        "cluster_register_limit",
        _int,
        "In a cluster: REGISTERs of one address allowed per minute, counted on every node (0: no limit)",
    ),
    "SYSTEMX_PRESENCE_STATUS_DELAY_MS": (
        "presence_status_delay_ms",
        _duration_ms,
        "In a cluster: how long (ms) the status changes calls make (busy, available) may wait to be "
        "written to Redis together (0: at once; STATUS and registrations are written at once)",
    ),
    "SYSTEMX_REUSE_PORT": (
        "reuse_port",
        _bool,
        "Listen with SO_REUSEPORT, sharing the port with other processes (set by --workers)",
    ),
    "SYSTEMX_ADMIN_PORT": ("admin_port", _int, "TCP port of the admin listener (0: any free port)"),
    "SYSTEMX_ADMIN_TOKEN": (
        "admin_token",
        _str,
        "Bearer token the admin listener asks for; required when SYSTEMX_ADMIN_HOST is not loopback",
    ),
    "SYSTEMX_RECORDS": (
        "records_enabled",
        _bool,
        "Keep call records in SYSTEMX_DATA_DIR/records.db; off disables",
    ),
    "SYSTEMX_RECORDS_MAX": ("records_max", _int, "Call records kept; the oldest go first (0: no bound)"),
    "SYSTEMX_RECORDS_RETENTION": (
        "records_retention_days",
        _float,
        "Days a call record is kept (0: no bound; fractions allowed)",
    ),
    "SYSTEMX_AUTH": (
        "auth",
        _str,
        "Who may REGISTER which address: none (anyone, anything), tokens or jwt (see docs/security.md)",
    ),
    "SYSTEMX_AUTH_TOKENS_FILE": (
        "auth_tokens_file",
        _str,
        "With SYSTEMX_AUTH=tokens: JSON or TOML file of tokens and what each may do (SIGHUP reloads)",
    ),
    "SYSTEMX_JWT_SECRET": ("jwt_secret", _str, "With SYSTEMX_AUTH=jwt: HS256 secret (32 characters or more)"),
    "SYSTEMX_JWT_PUBLIC_KEY": (
        "jwt_public_key",
        _str,
        "With SYSTEMX_AUTH=jwt: path of a PEM public key, RSA (RS256) or EC P-256 (ES256)",
    ),
    "SYSTEMX_JWT_AUDIENCE": ("jwt_audience", _str, "With SYSTEMX_AUTH=jwt: required aud claim (empty: none)"),
    "SYSTEMX_AUTH_GRACE_MS": (
        "auth_grace_ms",
        _duration_ms,
        "How long (ms) a session may outlive its credential's expiry before it is closed (4001)",
    ),
    "SYSTEMX_POLICY_FILE": (
        "policy_file",
        _str,
        "JSON or TOML file of allow/deny rules per domain for register, dial, join, create, presence",
    ),
    "SYSTEMX_MAX_CONNECTIONS_PER_IP": (
        "max_connections_per_ip",
        _int,
        "Open connections allowed from one IP address (0: no limit)",
    ),
    "SYSTEMX_CONNECT_RATE_PER_IP": (
        "connect_rate_per_ip",
        _int,
        "New connections per second from one IP address; more bans it (0: no limit)",
    ),
    "SYSTEMX_BAN_SECONDS": (
        "ban_seconds",
        _int,
        "How long (s) an IP address over SYSTEMX_CONNECT_RATE_PER_IP is refused",
    ),
    "SYSTEMX_MAX_FRAMES_PER_SECOND": (
        "max_frames_per_second",
        _int,
        "Messages per second one connection may send (0: no limit)",
    ),
    "SYSTEMX_MAX_BYTES_PER_SECOND": (
        "max_bytes_per_second",
        _int,
        "Message bytes per second one connection may send (0: no limit)",
    ),
    "SYSTEMX_RATE_BURST_SECONDS": (
        "rate_burst_seconds",
        _int,
        "Burst allowed above the per-connection rates, in seconds of the rate",
    ),
    "SYSTEMX_REGISTER_MAX_RENAMES": (
        "register_max_renames",
        _int,
        "REGISTERs of a new address per window per session (<=0 disables)",
    ),
    "SYSTEMX_REGISTER_WINDOW_MS": (
        "register_window_ms",
        _duration_ms,
        "Length (ms) of the REGISTER rename rate-limit window",
    ),
    "SYSTEMX_JOIN_MAX_ATTEMPTS": (
        "join_max_attempts",
        _int,
        "JOINs allowed per window per session (<=0 disables)",
    ),
    "SYSTEMX_JOIN_WINDOW_MS": ("join_window_ms", _duration_ms, "Length (ms) of the JOIN rate-limit window"),
    "SYSTEMX_ALLOWED_ORIGINS": (
        "allowed_origins",
        _split,
        "Comma list of browser origins allowed to upgrade (scheme://host[:port]; empty: any)",
    ),
    "SYSTEMX_LOG_STREAM": (
        "log_stream_enabled",
        _bool,
        "Serve the exchange's log to callers of logs@system.local; off disables",
    ),
}

# Settings that are no longer read; a value for one stops the exchange from starting.
REMOVED_VARS: dict[str, str] = {
    "SYSTEMX_SPAWN_ALLOW_COMMANDS": (
        "clients no longer choose the command; define named spawn handlers in SYSTEMX_SPAWN_HANDLERS"
    ),
    "SYSTEMX_SPAWN_ALLOW_ADDRESSES": (
        'define named spawn handlers in SYSTEMX_SPAWN_HANDLERS and restrict each with its "addresses" list'
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
        "SYSTEMX_WAKE_MAX_PROFILES": s.wake_max_profiles,
        "SYSTEMX_WAKE_MAX_PROFILES_PER_SESSION": s.wake_max_profiles_per_session,
        "SYSTEMX_PRESENCE_MAX_RESULT_BYTES": s.presence_max_result_bytes,
        "SYSTEMX_PRESENCE_WINDOW_MS": s.presence_window_ms,
        "SYSTEMX_MAX_VALUE_BYTES": s.max_value_bytes,
        "SYSTEMX_REGISTER_WINDOW_MS": s.register_window_ms,
        "SYSTEMX_JOIN_WINDOW_MS": s.join_window_ms,
        "SYSTEMX_RATE_BURST_SECONDS": s.rate_burst_seconds,
        "SYSTEMX_AUTH_GRACE_MS": s.auth_grace_ms,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name}: must be positive, got {value}")
    not_negative = {
        "SYSTEMX_MAX_CONNECTIONS_PER_IP": s.max_connections_per_ip,
        "SYSTEMX_CONNECT_RATE_PER_IP": s.connect_rate_per_ip,
        "SYSTEMX_BAN_SECONDS": s.ban_seconds,
        "SYSTEMX_MAX_FRAMES_PER_SECOND": s.max_frames_per_second,
        "SYSTEMX_MAX_BYTES_PER_SECOND": s.max_bytes_per_second,
    }
    for name, value in not_negative.items():
        if value < 0:
            raise ConfigError(f"{name}: must be 0 (no limit) or positive, got {value}")
    if 0 < s.max_bytes_per_second * s.rate_burst_seconds < s.max_message_bytes:
        raise ConfigError(
            "SYSTEMX_MAX_BYTES_PER_SECOND: times SYSTEMX_RATE_BURST_SECONDS must be at least "
            f"SYSTEMX_MAX_MESSAGE_BYTES ({s.max_message_bytes}), or the largest message could never pass"
        )
    for origin in s.allowed_origins:
        if origin != origin.rstrip("/") or "://" not in origin:
            raise ConfigError(
                f"SYSTEMX_ALLOWED_ORIGINS: {origin!r} is not an origin (scheme://host[:port], no path)"
            )
    _validate_security(s)
    if s.presence_max_result_bytes < 1024:
        raise ConfigError(
            f"SYSTEMX_PRESENCE_MAX_RESULT_BYTES: must be at least 1024, got {s.presence_max_result_bytes}"
        )
    if not 1 <= s.max_json_depth <= _MAX_JSON_DEPTH:
        # Deeper values could not be encoded again inside an outgoing message.
        raise ConfigError(f"SYSTEMX_MAX_JSON_DEPTH: must be 1-{_MAX_JSON_DEPTH}, got {s.max_json_depth}")
    if s.trunk_grace_ms < 0:
        raise ConfigError(f"SYSTEMX_TRUNK_GRACE_MS: must be 0 or more, got {s.trunk_grace_ms}")
    if s.pbx_tokens.strip():
        from systemx.core.trunkauth import PbxTokens, TokenSyntaxError

        try:
            PbxTokens.parse(s.pbx_tokens)
        except TokenSyntaxError as exc:
            raise ConfigError(str(exc)) from None
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"SYSTEMX_PORT: must be 0-65535, got {s.port}")
    if not 0 <= s.admin_port <= 65535:
        raise ConfigError(f"SYSTEMX_ADMIN_PORT: must be 0-65535, got {s.admin_port}")
    if s.admin_enabled and not s.admin_token and not is_loopback_host(s.admin_host):
        raise ConfigError(
            f"SYSTEMX_ADMIN_TOKEN: required when the admin listener is bound beyond loopback "
            f"(SYSTEMX_ADMIN_HOST={s.admin_host!r}); set a token, bind it to 127.0.0.1 "
            "or set SYSTEMX_ADMIN=off"
        )
    if s.redis_url:
        from systemx.state.redis.url import parse_redis_url

        try:
            parse_redis_url(s.redis_url)
        except ValueError as exc:
            raise ConfigError(f"SYSTEMX_REDIS_URL: {exc}") from None
    if s.node_id and (len(s.node_id) > 128 or any(c in s.node_id for c in "{}\n\r \t")):
        raise ConfigError(
            f"SYSTEMX_NODE_ID: at most 128 characters, no spaces or braces, got {s.node_id!r}"
        )
    if not 0 <= s.presence_status_delay_ms <= 10_000:
        raise ConfigError(
            f"SYSTEMX_PRESENCE_STATUS_DELAY_MS: must be 0-10000 (10s), got {s.presence_status_delay_ms}"
        )
    if s.node_ttl_ms < 1000:
        raise ConfigError(f"SYSTEMX_NODE_TTL_MS: must be at least 1000 (1s), got {s.node_ttl_ms}")
    if s.records_max < 0:
        raise ConfigError(f"SYSTEMX_RECORDS_MAX: must be 0 or more, got {s.records_max}")
    if s.records_retention_days < 0:
        raise ConfigError(f"SYSTEMX_RECORDS_RETENTION: must be 0 or more, got {s.records_retention_days}")
    if s.log_level.lower() not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"SYSTEMX_LOG_LEVEL: must be debug, info, warn or error, got {s.log_level!r}")
    if s.log_format not in ("text", "json"):
        raise ConfigError(f"SYSTEMX_LOG_FORMAT: must be text or json, got {s.log_format!r}")
    if s.tls_enabled and not (s.tls_cert_path and s.tls_key_path):
        if not (s.tls_cert_path or s.tls_key_path):
            raise ConfigError("TLS_ENABLED: wss needs TLS_CERT_PATH and TLS_KEY_PATH; neither is set")
        missing = "TLS_KEY_PATH" if s.tls_cert_path else "TLS_CERT_PATH"
        raise ConfigError(f"{missing}: not set; wss needs both TLS_CERT_PATH and TLS_KEY_PATH")
    from systemx.core.wakepolicy import prefix_problem

    lists = (("SYSTEMX_WEBHOOK_ALLOW", s.webhook_allow), ("SYSTEMX_WEBHOOK_DENY", s.webhook_deny))
    for var, prefixes in lists:
        for prefix in prefixes:
            problem = prefix_problem(prefix)
            if problem is not None:
                raise ConfigError(f"{var}: {problem}")


def read_env_file(path: str | Path) -> dict[str, str]:
    """The variables of a dotenv file (``NAME=value`` lines, ``#`` comments, optional quotes)."""
    from dotenv import dotenv_values

    file = Path(path)
    try:
        with file.open(encoding="utf-8") as stream:
            values = dotenv_values(stream=stream)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return {k: v for k, v in values.items() if v is not None}


def is_loopback_host(host: str) -> bool:
    """True when ``host`` (a name or an address) names only this machine's loopback interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _validate_security(s: Settings) -> None:
    if s.auth not in ("none", "tokens", "jwt"):
        raise ConfigError(f"SYSTEMX_AUTH: must be none, tokens or jwt, got {s.auth!r}")
    if s.auth == "tokens" and not s.auth_tokens_file:
        raise ConfigError("SYSTEMX_AUTH_TOKENS_FILE: required with SYSTEMX_AUTH=tokens")
    if s.auth == "jwt" and bool(s.jwt_secret) == bool(s.jwt_public_key):
        raise ConfigError(
            "SYSTEMX_AUTH=jwt needs exactly one of SYSTEMX_JWT_SECRET and SYSTEMX_JWT_PUBLIC_KEY"
        )
    if s.auth != "jwt" and (s.jwt_secret or s.jwt_public_key):
        raise ConfigError("SYSTEMX_JWT_SECRET / SYSTEMX_JWT_PUBLIC_KEY are set but SYSTEMX_AUTH is not jwt")
    from systemx.core.acl import load_policy
    from systemx.core.security import authenticator_from_settings

    var = {"tokens": "SYSTEMX_AUTH_TOKENS_FILE", "jwt": "SYSTEMX_JWT_SECRET/SYSTEMX_JWT_PUBLIC_KEY"}
    try:
        authenticator_from_settings(s.core_config())
    except ValueError as exc:
        raise ConfigError(f"{var.get(s.auth, 'SYSTEMX_AUTH')}: {exc}") from None
    if s.policy_file:
        try:
            load_policy(s.policy_file)
        except ValueError as exc:
            raise ConfigError(f"SYSTEMX_POLICY_FILE: {exc}") from None


def load_settings(
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env_file: str | Path | None = ".env",
    config_files: tuple[str | Path, ...] = (),
) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ`` plus files).

    Without ``env``, the sources are, weakest first: ``env_file`` (``.env``,
    when it exists), each of ``config_files`` (dotenv format, must exist; a later
    one wins), the process environment. ``overrides`` maps field names to values
    (command-line flags) and wins over all of them.
    """
    if env is None:
        merged: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            merged.update(read_env_file(env_file))
        for path in config_files:
            merged.update(read_env_file(path))
        merged.update(os.environ)
        env = merged
    for var, replacement in REMOVED_VARS.items():
        if env.get(var, "").strip():
            raise ConfigError(f"{var}: no longer supported: {replacement} (see README, wake-on-ring)")
    values: dict[str, Any] = {}
    for var, (name, parse, _doc) in ENV_VARS.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{var}: {exc}") from None
    explicit_tls = "tls_enabled" in values
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            explicit_tls = explicit_tls and name not in ("tls_cert_path", "tls_key_path")
            if name == "tls_enabled":
                explicit_tls = True
    if not explicit_tls and (values.get("tls_cert_path") or values.get("tls_key_path")):
        # A certificate or key given (flag or variable) without TLS_ENABLED (or with
        # TLS_ENABLED overridden by a --tls-cert/--tls-key flag) means wss.
        values["tls_enabled"] = True
    settings = dataclasses.replace(Settings(), **values)
    _validate(settings)
    return settings
