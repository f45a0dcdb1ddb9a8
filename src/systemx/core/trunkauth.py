"""Who may register a trunk, and which routes: ``SYSTEMX_PBX_TOKENS``.

The setting is a comma-separated list of entries, each one of:

* ``TOKEN``: a trunk presenting ``TOKEN`` may register any domain and any
  routes;
* ``TOKEN=PATTERN|PATTERN...``: a trunk presenting ``TOKEN`` may register only
  routes each within one of the patterns (:func:`systemx.core.routes.pattern_within`):
  with ``t1=*@sub.example.com``, ``*.agent@sub.example.com`` and
  ``alice@sub.example.com`` are allowed, ``*@example.com`` and ``*`` are not.
  A route within the union of several patterns but within none of them alone
  is refused.

Spaces around entries, tokens and patterns are ignored, and so are empty
entries (``a,,b``). A token is everything before the first ``=``, so it cannot
hold ``,`` or ``=``; a pattern cannot hold ``,`` or ``|``. An empty token, an
entry ``TOKEN=`` with no pattern, an empty pattern (``a=x||y``) and a token
listed twice are errors.

**The token travels as REGISTER_PBX ``auth``**, a JSON string. The reference
router's trunk client sends its configured secret there as a string, and
nothing else is accepted: an object such as ``{"token": ...}``, a number or an
absent ``auth`` is refused like a wrong token, so there is one form to get
right.

**Comparison.** Tokens are compared as SHA-256 digests with
:func:`hmac.compare_digest`, against every configured token whatever matched
before, so the time taken tells neither how much of a token was right nor its
length nor which entry it was.

With the setting unset, :meth:`PbxTokens.open` accepts every trunk with every
route (as the reference does); the caller logs a warning at start.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from systemx.core.routes import pattern_within

__all__ = ["AUTH_FAILED", "ROUTE_NOT_ALLOWED", "PbxTokens", "Refusal", "TokenSyntaxError"]

SETTING = "SYSTEMX_PBX_TOKENS"

#: The refusal reasons, as they go in REGISTER_FAILED ``reason``.
AUTH_FAILED = "auth_failed"
ROUTE_NOT_ALLOWED = "route_not_allowed"


class TokenSyntaxError(ValueError):
    """``SYSTEMX_PBX_TOKENS`` cannot be read; the message names the setting and the entry."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a REGISTER_PBX is refused: ``reason`` for the wire, ``detail`` for the wire and the log.

    ``detail`` never contains the offered token.
    """

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes
    # None: any route.
    allowed: tuple[str, ...] | None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class PbxTokens:
    """The parsed setting; build with :meth:`parse` or :meth:`open`."""

    __slots__ = ("_entries", "_open")

    def __init__(self, entries: tuple[_Entry, ...], *, open_: bool) -> None:
        self._entries = entries
        self._open = open_

    @classmethod
    def open(cls) -> PbxTokens:
        """Accept every trunk and every route: the setting is unset."""
        return cls((), open_=True)

    @classmethod
    def parse(cls, text: str) -> PbxTokens:
        """Read the setting's value; raise :class:`TokenSyntaxError` for a malformed one.

        A value with no entry at all (empty or only commas and spaces) is an
        error too: it would refuse every trunk, which an operator would rather
        say by not enabling trunks.
        """
        entries: list[_Entry] = []
        seen: set[bytes] = set()
        for number, raw in enumerate(text.split(","), start=1):
            entry = raw.strip()
            if not entry:
                continue
            token, sep, rest = entry.partition("=")
            token = token.strip()
            if not token:
                raise TokenSyntaxError(f"{SETTING}: entry {number} has an empty token")
            allowed: tuple[str, ...] | None = None
            if sep:
                patterns = tuple(p.strip() for p in rest.split("|"))
                if not any(patterns):
                    raise TokenSyntaxError(f"{SETTING}: entry {number} has '=' but no route pattern after it")
                if not all(patterns):
                    raise TokenSyntaxError(
                        f"{SETTING}: entry {number} has an empty route pattern (two '|' in a row?)"
                    )
                allowed = patterns
            digest = _digest(token)
            if digest in seen:
                raise TokenSyntaxError(f"{SETTING}: entry {number} repeats a token listed before it")
            seen.add(digest)
            entries.append(_Entry(digest, allowed))
        if not entries:
            raise TokenSyntaxError(f"{SETTING} is set but lists no token")
        return cls(tuple(entries), open_=False)

    @property
    def is_open(self) -> bool:
        """True when every trunk is accepted (the setting is unset)."""
        return self._open

    def __len__(self) -> int:
        """The number of configured tokens."""
        return len(self._entries)

    def __repr__(self) -> str:
        return "<PbxTokens open>" if self._open else f"<PbxTokens {len(self._entries)} tokens>"

    def check(self, auth: object, routes: list[str]) -> Refusal | None:
        """``None`` when a trunk presenting ``auth`` may register ``routes``, else why not.

        ``auth`` is REGISTER_PBX's ``auth`` as decoded (any JSON value).
        """
        if self._open:
            return None
        if not isinstance(auth, str):
            return Refusal(AUTH_FAILED, "auth must be the trunk's token as a string")
        offered = _digest(auth)
        found: _Entry | None = None
        for entry in self._entries:
            # No early exit: every entry is compared whichever one matches.
            if hmac.compare_digest(offered, entry.digest):
                found = entry
        if found is None:
            return Refusal(AUTH_FAILED, "unknown trunk token")
        if found.allowed is None:
            return None
        for route in routes:
            if not any(pattern_within(route, allowed) for allowed in found.allowed):
                return Refusal(
                    ROUTE_NOT_ALLOWED,
                    f"route {route!r} is not within {' | '.join(found.allowed)}",
                )
        return None
