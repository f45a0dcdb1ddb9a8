"""Which wake handlers an exchange accepts, and where a webhook may connect.

Pure checks, used at REGISTER and again when a wake runs:

* :func:`validate_wake_handler` finds *structural* problems (a webhook without a
  well-formed http(s) URL, a spawn handler that names nothing, a non-positive
  timeout). The exchange answers those with ``ERROR invalid_payload``.
* :func:`check_wake_handler` applies the operator's *policy* on top (and repeats
  the structural check, so it is safe on its own). The exchange answers a
  refusal with ``REGISTER_FAILED wake_handler_not_allowed``.

Each returns ``None`` when the handler is fine, or one sentence saying why not.

Spawn
    A client never chooses what the exchange runs. The operator defines named
    programs in ``SYSTEMX_SPAWN_HANDLERS`` (:class:`~systemx.core.config.SpawnHandler`)
    and a REGISTER names one (``{"type": "spawn", "handler": "name"}``). The
    reference router's form, ``{"type": "spawn", "command": [...]}``, is accepted
    only when ``command`` equals a defined handler's ``argv`` exactly. A handler
    may be restricted to address patterns (``*`` is any run of characters, the
    rest literal, whole address, any case). The stored profile keeps the
    handler's *name*; :func:`resolve_spawn_handler` looks it up again in the
    current settings when the wake runs.

Webhook
    A URL is compared in a normalised form (:func:`normalise_url`): lower-case
    scheme and host, the port always explicit, an IP literal in canonical form
    whatever its spelling (``0x7f000001``, ``2130706433``, ``127.1`` and
    ``[::ffff:127.0.0.1]`` are all 127.0.0.1), no user information. Prefixes in
    ``SYSTEMX_WEBHOOK_ALLOW`` and ``SYSTEMX_WEBHOOK_DENY`` are normalised alike,
    so a prefix matches only its own host and port.

    At REGISTER (:func:`check_webhook`): the syntax; deny prefixes; when
    ``SYSTEMX_WEBHOOK_ALLOW`` is set, the URL must match one of its prefixes;
    when it is not, a literal non-public address (or ``localhost``) is refused.
    A host *name* cannot be judged without resolving it, which REGISTER does not
    do: :func:`connect_problem` checks every address the name resolves to, at
    the moment the exchange connects, and that address is the one used.

    Non-public means loopback, private, shared (100.64/10), link-local,
    unique-local, site-local, multicast, unspecified or reserved, IPv4 or IPv6,
    looking through IPv4-mapped, 6to4 and NAT64 IPv6 addresses. A URL under an
    allow prefix may reach such addresses. The exchange's own listener (its port
    on a loopback, unspecified or local address) is never a valid target.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol
from urllib.parse import urlsplit

from systemx.core.actions import StoredHandler, StoredSpawn, StoredWebhook
from systemx.core.config import SpawnHandler
from systemx.protocol.messages import WakeHandler

__all__ = [
    "NormalisedURL",
    "WakeSettings",
    "check_wake_handler",
    "check_webhook",
    "connect_problem",
    "is_public",
    "normalise_url",
    "prefix_problem",
    "resolve_spawn_handler",
    "stored_handler",
    "url_allow_listed",
    "validate_wake_handler",
    "wake_timeout",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WakeSettings(Protocol):
    """What the policy reads: the core's :class:`~systemx.core.config.CoreConfig`, or the
    server's ``Settings`` when a wake runs."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def spawn_handlers(self) -> tuple[SpawnHandler, ...]: ...
    @property
    def webhook_allow(self) -> tuple[str, ...]: ...
    @property
    def webhook_deny(self) -> tuple[str, ...]: ...
    def spawn_handler(self, name: str) -> SpawnHandler | None: ...


_SPAWN_DISABLED = (
    "spawn handlers are disabled on this exchange; the operator defines them in SYSTEMX_SPAWN_HANDLERS"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def validate_wake_handler(handler: WakeHandler) -> str | None:
    """Return why ``handler`` is malformed, or ``None`` if it is well-formed."""
    kind: Any = handler.type
    timeout: Any = handler.timeout_seconds
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return "wake_handler.timeout_seconds must be a number"
    if not math.isfinite(timeout) or timeout <= 0:
        return "wake_handler.timeout_seconds must be a positive number"
    if kind == "webhook":
        url: Any = handler.url
        if url is None:
            return "a webhook wake_handler needs a url"
        if not isinstance(url, str):
            return "wake_handler.url must be a string"
        parsed = normalise_url(url)
        return parsed if isinstance(parsed, str) else None
    if kind == "spawn":
        return _validate_spawn(handler.handler, handler.command)
    return f"wake_handler.type must be 'webhook' or 'spawn', got {kind!r}"


def check_wake_handler(handler: WakeHandler, address: str, settings: WakeSettings) -> str | None:
    """Return why ``settings`` refuse ``handler`` for ``address``, or ``None`` if allowed."""
    problem = validate_wake_handler(handler)
    if problem is not None:
        return problem
    if handler.type == "webhook":
        assert handler.url is not None
        return check_webhook(handler.url, settings)
    found = resolve_spawn_handler({"handler": handler.handler, "command": handler.command}, address, settings)
    return found if isinstance(found, str) else None


def stored_handler(handler: WakeHandler, address: str, settings: WakeSettings) -> StoredHandler:
    """The form of an accepted ``handler`` kept in the wake profile.

    A spawn handler is kept by name with the operator's timeout; the client's
    ``command``, if it sent one, is not kept.
    """
    if handler.type != "spawn":
        assert handler.url is not None
        return StoredWebhook(
            url=handler.url, timeout_seconds=float(handler.timeout_seconds), payload=handler.payload
        )
    found = resolve_spawn_handler({"handler": handler.handler, "command": handler.command}, address, settings)
    assert not isinstance(found, str), found
    return StoredSpawn(handler=found.name, timeout_seconds=found.timeout_seconds, payload=handler.payload)


def wake_timeout(handler: StoredHandler, settings: WakeSettings) -> float:
    """Seconds a woken agent has to REGISTER (a named spawn handler's own timeout)."""
    if isinstance(handler, StoredSpawn) and handler.handler is not None:
        spawn = settings.spawn_handler(handler.handler)
        if spawn is not None:
            return max(spawn.timeout_seconds, 0.1)
    value = handler.timeout_seconds
    return max(float(value), 0.1) if value > 0 else 30.0


# --------------------------------------------------------------------------
# Spawn


def _validate_spawn(name: Any, command: Any) -> str | None:
    if name is None and command is None:
        return "a spawn wake_handler needs a handler name"
    if name is not None and (not isinstance(name, str) or not name or len(name) > 64):
        return "wake_handler.handler must be the name of a spawn handler (1-64 characters)"
    if command is not None:
        if not isinstance(command, list) or not command:
            return "wake_handler.command must be a non-empty list of strings"
        for arg in command:
            if not isinstance(arg, str) or not arg:
                return "wake_handler.command must contain only non-empty strings"
            if "\x00" in arg:
                return "wake_handler.command must not contain NUL characters"
    return None


def resolve_spawn_handler(
    handler: Mapping[str, Any], address: str, settings: WakeSettings
) -> SpawnHandler | str:
    """The operator's handler that ``handler`` names for ``address``, or why there is none."""
    name = handler.get("handler")
    command = handler.get("command")
    if not settings.spawn_handlers:
        return _SPAWN_DISABLED
    if isinstance(name, str):
        found = settings.spawn_handler(name)
        if found is None:
            return f"no spawn handler named {name!r} is defined on this exchange"
        if command is not None and list(command) != list(found.argv):
            return f"wake_handler.command differs from the argv of spawn handler {name!r}"
        if not _address_allowed(found, address):
            return f"spawn handler {name!r} is not available to {address!r}"
        return found
    if not isinstance(command, list):
        return "a spawn wake_handler needs a handler name"
    matches = [h for h in settings.spawn_handlers if list(h.argv) == command]
    if not matches:
        return (
            "wake_handler.command matches no spawn handler defined on this exchange; "
            "name one with wake_handler.handler"
        )
    for found in matches:
        if _address_allowed(found, address):
            return found
    return f"spawn handler {matches[0].name!r} is not available to {address!r}"


def _address_allowed(handler: SpawnHandler, address: str) -> bool:
    return not handler.addresses or any(_address_pattern(p).fullmatch(address) for p in handler.addresses)


@lru_cache(maxsize=256)
def _address_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.IGNORECASE | re.DOTALL)


# --------------------------------------------------------------------------
# Webhook URLs


@dataclass(frozen=True, slots=True)
class NormalisedURL:
    scheme: str
    host: str
    port: int
    # The path (``/`` when empty) and ``?query``; the fragment is dropped.
    rest: str
    ip: IPAddress | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.rest}"


def normalise_url(url: str) -> NormalisedURL | str:
    """``url`` in normalised form, or why it is not a usable webhook URL."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return f"wake_handler.url is not a valid URL: {url!r}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"wake_handler.url is not a valid URL: {url!r}"
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        return f"wake_handler.url must be an http or https URL, got {url!r}"
    if "@" in parts.netloc:
        return f"wake_handler.url must not contain user information: {url!r}"
    host = parts.hostname
    if not host:
        return f"wake_handler.url has no host: {url!r}"
    ip = _literal_ip(host, bracketed=parts.netloc.startswith("["))
    if ip is None:
        if not host.isascii() or not _NAME.fullmatch(host):
            return f"wake_handler.url has an invalid host (use the ASCII/punycode form): {url!r}"
        host = host.rstrip(".")
    else:
        host = str(ip)
    if port is None:
        port = _DEFAULT_PORTS[scheme]
    rest = parts.path or "/"
    if parts.query:
        rest += "?" + parts.query
    return NormalisedURL(scheme, host, port, rest, ip)


def _literal_ip(host: str, *, bracketed: bool) -> IPAddress | None:
    """The address an IP literal in any spelling the system resolver accepts denotes."""
    if bracketed:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def prefix_problem(prefix: str) -> str | None:
    """Why ``prefix`` cannot be a webhook allow/deny prefix, or ``None``."""
    parsed = normalise_url(prefix)
    if isinstance(parsed, str):
        return parsed.replace("wake_handler.url", "a URL prefix")
    return None


def _has_prefix(url: NormalisedURL, prefix: str) -> bool:
    start = normalise_url(prefix)
    return not isinstance(start, str) and str(url).startswith(str(start))


def url_allow_listed(url: NormalisedURL, settings: WakeSettings) -> bool:
    return any(_has_prefix(url, p) for p in settings.webhook_allow)


def check_webhook(url: str, settings: WakeSettings) -> str | None:
    """The REGISTER-time check of a webhook ``url``: ``None`` if it may be stored."""
    parsed = normalise_url(url)
    if isinstance(parsed, str):
        return parsed
    if _names_own_listener(parsed, settings):
        return f"webhook {url!r} targets the exchange's own endpoints"
    for prefix in settings.webhook_deny:
        if _has_prefix(parsed, prefix):
            return f"webhook {url!r} is refused by this exchange (matches {prefix!r})"
    if settings.webhook_allow:
        if not url_allow_listed(parsed, settings):
            return f"webhook {url!r} is not under any prefix in SYSTEMX_WEBHOOK_ALLOW"
        return None
    if parsed.ip is not None and not is_public(parsed.ip):
        return (
            f"webhook {url!r} targets a non-public address ({parsed.ip}); "
            "the operator can allow it with SYSTEMX_WEBHOOK_ALLOW"
        )
    if parsed.host == "localhost" or parsed.host.endswith(".localhost"):
        return f"webhook {url!r} targets this host; the operator can allow it with SYSTEMX_WEBHOOK_ALLOW"
    return None


def _names_own_listener(url: NormalisedURL, settings: WakeSettings) -> bool:
    if url.port != settings.port:
        return False
    if url.ip is not None:
        return _is_own_address(url.ip, settings)
    own = settings.host.strip().lower().strip("[]").rstrip(".")
    return url.host == own or url.host == "localhost" or url.host.endswith(".localhost")


def connect_problem(address: str, port: int, settings: WakeSettings, *, allow_listed: bool) -> str | None:
    """Why the exchange must not connect to ``address``:``port`` for a webhook, or ``None``.

    Called with each address a webhook host resolved to, just before the
    connection is made to it.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address} is not an IP address"
    if port == settings.port and _is_own_address(ip, settings, probe=True):
        return f"{address} port {port} is the exchange itself"
    if not allow_listed and not is_public(ip):
        return f"{address} is not a public address; the operator can allow the URL with SYSTEMX_WEBHOOK_ALLOW"
    return None


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def is_public(ip: IPAddress) -> bool:
    """Whether ``ip`` is a globally routed unicast address (looking through embedded IPv4)."""
    for candidate in {ip, _embedded_ipv4(ip)}:
        if (
            not candidate.is_global
            or candidate.is_private
            or candidate.is_multicast
            or candidate.is_reserved
            or candidate.is_loopback
            or candidate.is_link_local
            or candidate.is_unspecified
            or (isinstance(candidate, ipaddress.IPv6Address) and candidate.is_site_local)
        ):
            return False
    return True


def _is_own_address(ip: IPAddress, settings: WakeSettings, *, probe: bool = False) -> bool:
    """Whether a connection to ``ip`` on the exchange's port could reach the exchange."""
    ip = _embedded_ipv4(ip)
    if ip.is_loopback or ip.is_unspecified:
        return True
    try:
        if ip == ipaddress.ip_address(settings.host.strip("[]")):
            return True
    except ValueError:
        pass
    return probe and _is_local(ip)


def _is_local(ip: IPAddress) -> bool:
    """Whether ``ip`` is assigned to this host: only then can a socket bind to it."""
    family = socket.AF_INET6 if isinstance(ip, ipaddress.IPv6Address) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True
