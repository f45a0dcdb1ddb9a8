"""Federation settings: the trunks this exchange opens to parent exchanges.

This exchange is the **child** of each configured peer: it connects to the
peer's WebSocket URL, sends ``REGISTER_PBX`` announcing the routes it serves,
and sends on to the peer the DIALs for addresses matching the peer's routes.
The settings keep the reference router's names, in two forms.

**Environment form** (one peer):

=================================  ========================================================
``FEDERATION_ENABLED``             ``true`` to open the trunk (also ``1``, ``yes``, ``on``;
                                   ``false``, ``0``, ``no``, ``off`` or unset: no trunk)
``FEDERATION_PEER_URL``            the parent's ``ws://`` or ``wss://`` URL (required)
``FEDERATION_ROUTES``              comma list of route patterns sent to the parent
                                   (required, at least one)
``FEDERATION_DOMAIN``              this exchange's domain (default ``local.systemx``)
``FEDERATION_ANNOUNCE_ROUTES``     comma list announced to the parent
                                   (default ``*@<domain>``, see below)
``FEDERATION_PEER_ID``             local name of the trunk (default the URL's ``host``,
                                   with ``:port`` when the port is not the scheme's default)
``FEDERATION_AUTH``                token sent as REGISTER_PBX ``auth`` (default none)
``FEDERATION_RECONNECT_DELAY_MS``  first reconnect delay, ms (default 5000, > 0)
``FEDERATION_HEARTBEAT_MS``        HEARTBEAT interval on the trunk, ms (default 30000, > 0)
=================================  ========================================================

**File form**: ``FEDERATION_CONFIG`` names a JSON file; when it is set, the
file is used and every other ``FEDERATION_*`` variable is ignored, as in the
reference. Its shape::

    {
      "domain": "branch.example.com",            // required, non-empty
      "exportRoutes": ["*@branch.example.com"],  // optional: announced routes
      "heartbeatIntervalMs": 30000,              // optional, every peer
      "peers": [                                 // required, at least one
        {
          "url": "wss://hq.example.com",          // required
          "routes": ["*@example.com"],            // required, non-empty strings
          "id": "hq",                             // optional (default from the URL)
          "auth": "secret",                       // optional string
          "reconnectDelayMs": 5000,               // optional
          "announceRoutes": ["*@branch.example.com"],  // optional: this peer only
          "transport": "websocket"                // optional; the only transport
        }
      ]
    }

A key not listed here is an error, so a misspelt key does not pass unnoticed.

**Announced routes.** By default, ``*@<domain>``; a domain written as
``*@d`` or ``*.d`` is announced as ``*@d``, and one holding ``@`` is announced
as written. A peer's ``announceRoutes`` wins over ``exportRoutes``, which wins
over the default.

**Differences from the reference.** It logs a warning and runs without
federation when the settings are incomplete or wrong, and reads numbers
leniently (``"5000ms"`` is 5000); here every such mistake is an error naming
the setting, and the exchange does not start. Zero or negative intervals are
refused (the reference turns heartbeats off with 0, which gets a child dropped
by its parent's sweep). Two peers with the same id are refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from systemx.config import ConfigError

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_HEARTBEAT_MS",
    "DEFAULT_RECONNECT_DELAY_MS",
    "FederationConfig",
    "PeerConfig",
    "load_federation",
]

DEFAULT_DOMAIN = "local.systemx"
DEFAULT_RECONNECT_DELAY_MS = 5_000
DEFAULT_HEARTBEAT_MS = 30_000

_DEFAULT_PORTS = {"ws": 80, "wss": 443}
_TOP_KEYS = frozenset({"domain", "exportRoutes", "heartbeatIntervalMs", "peers"})
_PEER_KEYS = frozenset({"id", "url", "routes", "auth", "reconnectDelayMs", "announceRoutes", "transport"})


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One outbound trunk to a parent exchange.

    ``id`` names the trunk here (its routes in the local route table);
    ``routes`` are the patterns of addresses sent to the parent;
    ``announce_routes`` are sent in REGISTER_PBX ``routes`` with ``domain``;
    ``auth`` goes in REGISTER_PBX ``auth`` (``None``: the field is left out).
    """

    id: str
    url: str
    routes: tuple[str, ...]
    announce_routes: tuple[str, ...]
    auth: str | None
    domain: str
    reconnect_delay_ms: int = DEFAULT_RECONNECT_DELAY_MS
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS


@dataclass(frozen=True, slots=True)
class FederationConfig:
    """Every trunk to open; ``source`` says where it was read (for the start-up log)."""

    domain: str
    peers: tuple[PeerConfig, ...]
    source: str


def default_announce_routes(domain: str) -> tuple[str, ...]:
    """The routes announced for ``domain`` when none are configured (see the module docstring)."""
    if "@" in domain and not domain.startswith("*@"):
        return (domain,)
    bare = domain.removeprefix("*@").removeprefix("*.")
    return (f"*@{bare}",)


def default_peer_id(url: str) -> str:
    """The URL's host, with ``:port`` when the port is given and not the scheme's default."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        return f"{host}:{port}"
    return host


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _check_url(url: str, where: str) -> str:
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ConfigError(f"{where} is not a valid URL ({exc}): {url!r}") from None
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        raise ConfigError(f"{where} must be a ws:// or wss:// URL, got {url!r}")
    if not parts.hostname:
        raise ConfigError(f"{where} has no host: {url!r}")
    return url


def _positive_ms(raw: object, where: str) -> int:
    if isinstance(raw, str):
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{where} must be a whole number of milliseconds, got {raw!r}") from None
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        raise ConfigError(f"{where} must be a whole number of milliseconds, got {raw!r}")
    if value <= 0:
        raise ConfigError(f"{where} must be positive, got {value}")
    return value


def _enabled(raw: str | None) -> bool:
    value = (raw or "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"FEDERATION_ENABLED must be true or false, got {raw!r}")


def _non_empty(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def load_federation(env: Mapping[str, str] | None = None) -> FederationConfig | None:
    """The trunks configured in ``env`` (default ``os.environ``); ``None`` when federation is off.

    Raises :class:`systemx.config.ConfigError` naming the setting (and, for
    the file form, the key) for anything that cannot be used.
    """
    if env is None:
        env = os.environ
    path = _non_empty(env, "FEDERATION_CONFIG")
    if path is not None:
        return _from_file(Path(path))
    if not _enabled(env.get("FEDERATION_ENABLED")):
        return None
    url = _non_empty(env, "FEDERATION_PEER_URL")
    if url is None:
        raise ConfigError("FEDERATION_ENABLED is true but FEDERATION_PEER_URL is not set")
    url = _check_url(url, "FEDERATION_PEER_URL")
    routes = _split(env.get("FEDERATION_ROUTES", ""))
    if not routes:
        raise ConfigError(
            "FEDERATION_ENABLED is true but FEDERATION_ROUTES lists no route "
            "(a comma list of patterns such as *@example.com)"
        )
    domain = _non_empty(env, "FEDERATION_DOMAIN") or DEFAULT_DOMAIN
    announce = _split(env.get("FEDERATION_ANNOUNCE_ROUTES", "")) or default_announce_routes(domain)
    reconnect = env.get("FEDERATION_RECONNECT_DELAY_MS", "").strip()
    heartbeat = env.get("FEDERATION_HEARTBEAT_MS", "").strip()
    auth = env.get("FEDERATION_AUTH")
    peer = PeerConfig(
        id=_non_empty(env, "FEDERATION_PEER_ID") or default_peer_id(url),
        url=url,
        routes=routes,
        announce_routes=announce,
        auth=auth if auth else None,
        domain=domain,
        reconnect_delay_ms=(
            _positive_ms(reconnect, "FEDERATION_RECONNECT_DELAY_MS")
            if reconnect
            else DEFAULT_RECONNECT_DELAY_MS
        ),
        heartbeat_ms=_positive_ms(heartbeat, "FEDERATION_HEARTBEAT_MS")
        if heartbeat
        else DEFAULT_HEARTBEAT_MS,
    )
    return FederationConfig(domain=domain, peers=(peer,), source="environment")


def _routes(raw: object, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where} must be a non-empty array of route patterns")
    for item in raw:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where} must hold only non-empty strings, got {item!r}")
    return tuple(item.strip() for item in raw)


def _unknown_keys(obj: dict[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}")


def _from_file(path: Path) -> FederationConfig:
    where = f"FEDERATION_CONFIG ({path})"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a JSON object")
    _unknown_keys(data, _TOP_KEYS, where)
    domain = data.get("domain")
    if not isinstance(domain, str) or not domain.strip():
        raise ConfigError(f"{where} needs 'domain', a non-empty string")
    domain = domain.strip()
    if "exportRoutes" in data:
        announce = _routes(data["exportRoutes"], f"{where} 'exportRoutes'")
    else:
        announce = default_announce_routes(domain)
    heartbeat = DEFAULT_HEARTBEAT_MS
    if "heartbeatIntervalMs" in data:
        heartbeat = _positive_ms(data["heartbeatIntervalMs"], f"{where} 'heartbeatIntervalMs'")
    peers_raw = data.get("peers")
    if not isinstance(peers_raw, list) or not peers_raw:
        raise ConfigError(f"{where} needs 'peers', a non-empty array")
    peers: list[PeerConfig] = []
    for index, raw in enumerate(peers_raw):
        at = f"{where} peers[{index}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{at} must be an object")
        _unknown_keys(raw, _PEER_KEYS, at)
        url = raw.get("url")
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(f"{at} needs 'url', a non-empty string")
        url = _check_url(url, f"{at} 'url'")
        transport = raw.get("transport", "websocket")
        if transport != "websocket":
            raise ConfigError(f"{at} 'transport' must be \"websocket\", got {transport!r}")
        peer_id = raw.get("id")
        if peer_id is None:
            peer_id = default_peer_id(url)
        elif not isinstance(peer_id, str) or not peer_id.strip():
            raise ConfigError(f"{at} 'id' must be a non-empty string")
        auth = raw.get("auth")
        if auth is not None and not isinstance(auth, str):
            raise ConfigError(f"{at} 'auth' must be a string")
        peers.append(
            PeerConfig(
                id=peer_id.strip(),
                url=url,
                routes=_routes(raw.get("routes"), f"{at} 'routes'"),
                announce_routes=(
                    _routes(raw["announceRoutes"], f"{at} 'announceRoutes'")
                    if "announceRoutes" in raw
                    else announce
                ),
                auth=auth if auth else None,
                domain=domain,
                reconnect_delay_ms=(
                    _positive_ms(raw["reconnectDelayMs"], f"{at} 'reconnectDelayMs'")
                    if "reconnectDelayMs" in raw
                    else DEFAULT_RECONNECT_DELAY_MS
                ),
                heartbeat_ms=heartbeat,
            )
        )
    ids = [p.id for p in peers]
    for peer_id in ids:
        if ids.count(peer_id) > 1:
            raise ConfigError(f"{where} has two peers with id {peer_id!r}; give each an 'id'")
    return FederationConfig(domain=domain, peers=tuple(peers), source=f"FEDERATION_CONFIG {path}")
