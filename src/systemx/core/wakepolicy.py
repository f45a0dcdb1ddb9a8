"""Which wake handlers an exchange accepts at REGISTER.

Two checks, both pure:

* :func:`validate_wake_handler` finds *structural* problems (a webhook without a
  URL, a URL that is not http(s) with a host, a spawn handler without a command,
  an empty argument, a non-positive timeout). The exchange answers those with
  ``ERROR invalid_payload``.
* :func:`check_wake_handler` applies the operator's *policy* on top (and repeats
  the structural check, so it is safe on its own). The exchange answers a
  refusal with ``REGISTER_FAILED wake_handler_not_allowed``.

Each returns ``None`` when the handler is fine, or one sentence saying why not.

Webhooks
    Any ``http``/``https`` URL with a host is accepted unless
    ``SYSTEMX_WEBHOOK_ALLOW`` lists URL prefixes, in which case the URL must start
    with one of them. Two kinds of target are always refused: the exchange's own
    endpoints (a loopback, unspecified or ``settings.host`` address on
    ``settings.port``: a wake that calls the exchange back is a loop, not a
    wake) and any prefix in ``settings.webhook_deny``.

    Prefixes compare with the scheme and host lower-cased, and a prefix that ends
    at the host matches only that host on its default port: ``https://hooks.example``
    matches ``https://hooks.example/wake`` but neither
    ``https://hooks.example.evil.net/`` nor ``https://hooks.example@evil.net/``.
    A prefix must include the scheme.

    SSRF trade-off: by default a registering endpoint chooses where the exchange
    sends a POST, and that includes hosts on the exchange's internal network
    (metadata services, admin ports). This is convenient on a laptop and
    dangerous on a shared server. In production set ``SYSTEMX_WEBHOOK_ALLOW`` to
    the wake services you run. The policy sees only the URL text: it cannot know
    what a host name resolves to, nor every address of an exchange listening on
    ``0.0.0.0``; the allow list is the control that closes those gaps.

Spawn
    Running a program on the exchange's host is off unless the operator turns it
    on. A spawn handler is accepted when its executable is listed in
    ``SYSTEMX_SPAWN_ALLOW_COMMANDS`` (an entry with a ``/`` must equal
    ``command[0]`` exactly; an entry without one matches ``command[0]`` or its
    base name, so list full paths to pin the binary) or when the registering
    address matches a pattern in ``SYSTEMX_SPAWN_ALLOW_ADDRESSES`` (``*`` is any
    run of characters, the rest literal, whole address, any case).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from functools import lru_cache
from typing import Any
from urllib.parse import SplitResult, urlsplit

from systemx.config import Settings
from systemx.protocol.messages import WakeHandler

__all__ = ["check_wake_handler", "validate_wake_handler"]

_SPAWN_DISABLED = (
    "spawn handlers are disabled on this exchange; "
    "set SYSTEMX_SPAWN_ALLOW_COMMANDS or SYSTEMX_SPAWN_ALLOW_ADDRESSES"
)

_LOCAL_NAMES = frozenset({"localhost", "localhost.", "0.0.0.0", "::", "::1", "127.0.0.1"})

_DEFAULT_PORTS = {"http": 80, "https": 443}


def validate_wake_handler(handler: WakeHandler) -> str | None:
    """Return why ``handler`` is malformed, or ``None`` if it is well-formed."""
    kind: Any = handler.type
    timeout: Any = handler.timeout_seconds
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return "wake_handler.timeout_seconds must be a number"
    if not math.isfinite(timeout) or timeout <= 0:
        return "wake_handler.timeout_seconds must be a positive number"
    if kind == "webhook":
        return _validate_url(handler.url)
    if kind == "spawn":
        return _validate_command(handler.command)
    return f"wake_handler.type must be 'webhook' or 'spawn', got {kind!r}"


def check_wake_handler(handler: WakeHandler, address: str, settings: Settings) -> str | None:
    """Return why ``settings`` refuse ``handler`` for ``address``, or ``None`` if allowed."""
    problem = validate_wake_handler(handler)
    if problem is not None:
        return problem
    if handler.type == "webhook":
        assert handler.url is not None
        return _check_webhook(handler.url, settings)
    assert handler.command is not None
    return _check_spawn(handler.command, address, settings)


# --------------------------------------------------------------------------
# Structure


def _validate_url(url: Any) -> str | None:
    if url is None:
        return "a webhook wake_handler needs a url"
    if not isinstance(url, str):
        return "wake_handler.url must be a string"
    parts = _split(url)
    if parts is None:
        return f"wake_handler.url is not a valid URL: {url!r}"
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        return f"wake_handler.url must be an http or https URL, got {url!r}"
    if not parts.hostname:
        return f"wake_handler.url has no host: {url!r}"
    return None


def _validate_command(command: Any) -> str | None:
    if command is None:
        return "a spawn wake_handler needs a command"
    if not isinstance(command, list) or not command:
        return "wake_handler.command must be a non-empty list of strings"
    for arg in command:
        if not isinstance(arg, str) or not arg:
            return "wake_handler.command must contain only non-empty strings"
        if "\x00" in arg:
            return "wake_handler.command must not contain NUL characters"
    return None


def _split(url: str) -> SplitResult | None:
    """``urlsplit`` that also rejects a malformed port, or ``None``."""
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        return None
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return None
    return parts


# --------------------------------------------------------------------------
# Webhook policy


def _check_webhook(url: str, settings: Settings) -> str | None:
    parts = _split(url)
    assert parts is not None and parts.hostname is not None
    if _targets_exchange(parts, settings):
        return f"webhook {url!r} targets the exchange's own endpoints"
    for prefix in settings.webhook_deny:
        if _url_has_prefix(url, prefix):
            return f"webhook {url!r} is refused by this exchange (matches {prefix!r})"
    if settings.webhook_allow and not any(_url_has_prefix(url, p) for p in settings.webhook_allow):
        return f"webhook {url!r} is not under any prefix in SYSTEMX_WEBHOOK_ALLOW"
    return None


def _targets_exchange(parts: SplitResult, settings: Settings) -> bool:
    port = parts.port if parts.port is not None else _DEFAULT_PORTS[parts.scheme.lower()]
    if port != settings.port:
        return False
    host = (parts.hostname or "").lower()
    own = settings.host.strip().lower().strip("[]")
    return host in _LOCAL_NAMES or host == own or _is_local_ip(host)


def _is_local_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _normalise(url: str) -> tuple[str, bool]:
    """The URL with scheme and authority lower-cased, and whether it ends at the authority."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url, False
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return f"{scheme.lower()}://{rest[:end].lower()}{rest[end:]}", end == len(rest) and end > 0


def _url_has_prefix(url: str, prefix: str) -> bool:
    text, _ = _normalise(url)
    start, ends_at_host = _normalise(prefix)
    if not start or not text.startswith(start):
        return False
    if not ends_at_host:
        return True
    # A prefix naming a host must not match a longer host, a port or a userinfo trick.
    rest = text[len(start) :]
    return rest == "" or rest[0] in "/?#"


# --------------------------------------------------------------------------
# Spawn policy


def _check_spawn(command: list[str], address: str, settings: Settings) -> str | None:
    commands = settings.spawn_allow_commands
    patterns = settings.spawn_allow_addresses
    if not commands and not patterns:
        return _SPAWN_DISABLED
    if _command_allowed(command[0], commands):
        return None
    if any(_address_pattern(p).fullmatch(address) for p in patterns):
        return None
    return (
        f"spawn command {command[0]!r} is not in SYSTEMX_SPAWN_ALLOW_COMMANDS "
        f"and address {address!r} does not match SYSTEMX_SPAWN_ALLOW_ADDRESSES"
    )


def _command_allowed(executable: str, allowed: tuple[str, ...]) -> bool:
    base = os.path.basename(executable)
    for entry in allowed:
        if "/" in entry:
            if executable == entry:
                return True
        elif entry in (executable, base):
            return True
    return False


@lru_cache(maxsize=256)
def _address_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.IGNORECASE | re.DOTALL)
