"""Who is registering: the credential in REGISTER ``auth``, checked into an :class:`Identity`.

Two authenticators (``SYSTEMX_AUTH``):

* :class:`TokenTable` (``tokens``): static tokens from a file, each with the
  address pattern it may register (``sub``) and optional permissions;
* :class:`JwtVerifier` (``jwt``): signed JSON Web Tokens, HS256 with a shared
  secret, or RS256/ES256 with a public key. The algorithm list is pinned by the
  key: ``alg: none`` is never accepted, and no HMAC token is accepted when a
  public key is configured (no algorithm confusion).

The credential is ``auth`` itself when it is a string, or ``auth.token``. Every
failure raises :class:`AuthError` whose text is for the server log only; the
wire answer never says why (``REGISTER_FAILED auth_failed``).

Time comes in as ``now`` (epoch seconds); expiry and not-before are checked
here against it, not against a clock read by the token library.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from systemx.core.acl import Permissions, parse_permissions

__all__ = [
    "MIN_SECRET_CHARS",
    "MIN_TOKEN_CHARS",
    "AuthError",
    "Authenticator",
    "Identity",
    "JwtVerifier",
    "TokenTable",
    "load_tokens",
    "token_of",
]

MIN_TOKEN_CHARS = 16
MIN_SECRET_CHARS = 32
_MAX_CREDENTIAL_CHARS = 8192


class AuthError(Exception):
    """A credential that is refused; the text says why, for the log only."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The holder of a valid credential.

    ``subject`` is an address or an address pattern (``*@agents.example.com``):
    what the holder may register. ``expires_at`` is epoch seconds, or None.
    """

    subject: str
    expires_at: float | None = None
    permissions: Permissions | None = None


class Authenticator(Protocol):
    def authenticate(self, auth: Any, now: float) -> Identity: ...


def token_of(auth: Any) -> str:
    """The credential in a REGISTER's ``auth``: the string itself or ``auth["token"]``."""
    if isinstance(auth, dict):
        auth = auth.get("token")
    if auth is None:
        raise AuthError("no credential (auth missing)")
    if not isinstance(auth, str) or not auth:
        raise AuthError("auth is neither a non-empty string nor {token: string}")
    if len(auth) > _MAX_CREDENTIAL_CHARS:
        raise AuthError(f"credential over {_MAX_CREDENTIAL_CHARS} characters")
    return auth


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Static tokens (``SYSTEMX_AUTH_TOKENS_FILE``), looked up by their SHA-256.

    Looking up the digest rather than the token means the comparison time says
    nothing about how much of a guessed token was right.
    """

    def __init__(self, entries: Mapping[bytes, Identity]) -> None:
        self._entries = dict(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, auth: Any, now: float) -> Identity:
        identity = self._entries.get(_digest(token_of(auth)))
        if identity is None:
            raise AuthError("unknown token")
        if identity.expires_at is not None and now >= identity.expires_at:
            raise AuthError(f"token for {identity.subject} expired")
        return identity


_TOKEN_KEYS = frozenset({"token", "sub", "permissions", "expires_at"})


def load_tokens(path: str | Path) -> TokenTable:
    """Read a tokens file: ``{"tokens": [{token, sub, permissions?, expires_at?}]}`` in JSON or TOML."""
    p = Path(path).expanduser()
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    try:
        data: Any = tomllib.loads(raw) if p.suffix.lower() == ".toml" else json.loads(raw)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{p.name} is not valid JSON or TOML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
        raise ValueError('a tokens file is {"tokens": [...]} (TOML: [[tokens]] tables)')
    entries: dict[bytes, Identity] = {}
    for n, item in enumerate(data["tokens"]):
        where = f"tokens[{n}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object")
        unknown = sorted(set(item) - _TOKEN_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
        token, sub = item.get("token"), item.get("sub")
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"{where}: token must be a string of at least {MIN_TOKEN_CHARS} characters")
        if not isinstance(sub, str) or not sub:
            raise ValueError(f"{where}: sub must be an address or address pattern")
        expires = item.get("expires_at")
        if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)):
            raise ValueError(f"{where}: expires_at must be epoch seconds")
        perms = (
            parse_permissions(item["permissions"], f"{where}.permissions") if "permissions" in item else None
        )
        digest = _digest(token)
        if digest in entries:
            raise ValueError(f"{where}: the same token appears twice")
        entries[digest] = Identity(sub, None if expires is None else float(expires), perms)
    return TokenTable(entries)


class JwtVerifier:
    """JSON Web Tokens: HS256 with ``secret``, or RS256/ES256 with a PEM ``public_key``.

    Claims: ``sub`` (required: an address or pattern), ``exp`` (required),
    ``nbf`` (optional), ``aud`` (checked against ``audience``; a token carrying
    ``aud`` is refused when no audience is configured), ``permissions``
    (optional, see :mod:`systemx.core.acl`).
    """

    def __init__(
        self, *, secret: str | None = None, public_key: bytes | None = None, audience: str | None = None
    ) -> None:
        import jwt  # imported here: only the jwt mode needs it

        self._jwt = jwt
        self._audience = audience or None
        if (secret is None) == (public_key is None):
            raise ValueError("give exactly one of a secret (HS256) and a public key (RS256/ES256)")
        self._key: Any
        if secret is not None:
            if len(secret) < MIN_SECRET_CHARS:
                raise ValueError(f"an HS256 secret must be at least {MIN_SECRET_CHARS} characters")
            self._key = secret
            self.algorithms = ["HS256"]
        else:
            assert public_key is not None
            self._key, self.algorithms = _public_key(public_key)

    def authenticate(self, auth: Any, now: float) -> Identity:
        token = token_of(auth)
        jwt = self._jwt
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self.algorithms,
                audience=self._audience,
                options={"require": ["exp", "sub"], "verify_exp": False, "verify_nbf": False},
            )
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        sub, exp, nbf = claims.get("sub"), claims.get("exp"), claims.get("nbf")
        if not isinstance(sub, str) or not sub:
            raise AuthError("invalid token: sub is not an address or pattern")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise AuthError("invalid token: exp is not a number")
        if now >= exp:
            raise AuthError(f"token for {sub} expired")
        if nbf is not None and (isinstance(nbf, bool) or not isinstance(nbf, int | float) or now < nbf):
            raise AuthError(f"token for {sub} is not valid yet (nbf)")
        perms = None
        if "permissions" in claims:
            try:
                perms = parse_permissions(claims["permissions"])
            except ValueError as exc:
                raise AuthError(f"invalid token: {exc}") from None
        return Identity(sub, float(exp), perms)


def _public_key(pem: bytes) -> tuple[Any, list[str]]:
    """The loaded key and the one algorithm it may verify."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"an RSA key must have at least 2048 bits, this one has {key.key_size}")
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, ["ES256"]
    raise ValueError("the public key must be RSA (RS256) or EC P-256 (ES256)")
