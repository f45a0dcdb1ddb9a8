"""Admission of a REGISTER: the credential, the address it may bind, and the session's grants.

:class:`Security` joins the authenticator (``SYSTEMX_AUTH``) and the policy
file (``SYSTEMX_POLICY_FILE``). The exchange calls :meth:`Security.admit` once
per REGISTER and keeps the resulting :class:`Admission` on the session; later
checks (DIAL, JOIN, PRESENCE) are one :meth:`~systemx.core.acl.Grants.permits`
call each. With ``SYSTEMX_AUTH=none`` and no policy file there is no
``Security`` at all and nothing is checked.

:class:`Window` is the fixed-window counter of the per-session operation rates
(REGISTER renames, JOIN).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from systemx.core.acl import Grants, Policy, Rule, load_policy, pattern_matches
from systemx.core.auth import Authenticator, AuthError, JwtVerifier, TokenTable, load_tokens
from systemx.core.config import CoreConfig
from systemx.protocol.address import domain_of
from systemx.protocol.codes import RegisterFailedReason

__all__ = ["Admission", "Refusal", "Security", "Window", "authenticator_from_settings"]

log = logging.getLogger("systemx.security")


@dataclass(frozen=True, slots=True)
class Admission:
    """A REGISTER let in: who (``subject``, None without authentication), until when, may do what."""

    subject: str | None
    expires_at: float | None
    grants: Grants | None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A REGISTER kept out: the wire reason, and why (for the log only)."""

    reason: str
    why: str


def authenticator_from_settings(settings: CoreConfig) -> Authenticator | None:
    """The authenticator ``SYSTEMX_AUTH`` names (reads its files); raises ``ValueError``."""
    if settings.auth == "tokens":
        return load_tokens(settings.auth_tokens_file)
    if settings.auth == "jwt":
        public_key = None
        if settings.jwt_public_key:
            path = Path(settings.jwt_public_key).expanduser()
            try:
                public_key = path.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        return JwtVerifier(
            secret=settings.jwt_secret or None, public_key=public_key, audience=settings.jwt_audience or None
        )
    return None


class Security:
    """The authenticator and the policy; see the module docstring."""

    def __init__(
        self,
        authenticator: Authenticator | None,
        policy: Policy | None,
        *,
        settings: CoreConfig | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.policy = policy
        self._settings = settings

    @classmethod
    def from_settings(cls, settings: CoreConfig) -> Security | None:
        """None when nothing is to be checked (``SYSTEMX_AUTH=none``, no policy file)."""
        if settings.auth == "none" and not settings.policy_file:
            return None
        policy = load_policy(settings.policy_file) if settings.policy_file else None
        return cls(authenticator_from_settings(settings), policy, settings=settings)

    @property
    def authenticates(self) -> bool:
        return self.authenticator is not None

    def reload(self) -> str:
        """Re-read the tokens file and the policy file (SIGHUP); on any error keep the old ones.

        Returns what was done, for the log. Sessions already registered keep the
        grants they were admitted with until they REGISTER again.
        """
        settings = self._settings
        if settings is None:
            return "nothing to reload"
        try:
            authenticator = self.authenticator
            if isinstance(authenticator, TokenTable):
                authenticator = load_tokens(settings.auth_tokens_file)
            policy = load_policy(settings.policy_file) if settings.policy_file else None
        except ValueError as exc:
            return f"reload failed, previous files kept: {exc}"
        self.authenticator, self.policy = authenticator, policy
        parts = []
        if isinstance(authenticator, TokenTable):
            parts.append(f"{len(authenticator)} token(s)")
        if policy is not None:
            parts.append(f"policy with {len(policy.domains)} domain(s)")
        return "reloaded " + (", ".join(parts) or "nothing")

    def admit(self, auth: Any, address: str, now: float) -> Admission | Refusal:
        """Check one REGISTER of (valid) ``address`` with credential ``auth``."""
        expires_at: float | None = None
        subject: str | None = None
        rule_sets: list[dict[str, Rule]] = []
        domain = domain_of(address)
        if self.authenticator is not None:
            try:
                identity = self.authenticator.authenticate(auth, now)
            except AuthError as exc:
                return Refusal(RegisterFailedReason.AUTH_FAILED, str(exc))
            subject, expires_at = identity.subject, identity.expires_at
            if not pattern_matches(subject, address):
                return Refusal(
                    RegisterFailedReason.FORBIDDEN, f"credential for {subject} may not register {address}"
                )
            if identity.permissions is not None:
                rule_sets.append(identity.permissions.compile(subject, domain))
        if self.policy is not None:
            permissions = self.policy.for_domain(domain)
            if permissions is not None:
                rule_sets.append(permissions.compile(subject or address, domain))
        grants = Grants(rule_sets) if rule_sets else None
        if grants is not None and not grants.permits("register", address):
            return Refusal(RegisterFailedReason.FORBIDDEN, f"{subject or address} may not register {address}")
        return Admission(subject, expires_at, grants)


class Window:
    """A fixed-window counter: at most ``limit`` hits per ``length`` seconds."""

    __slots__ = ("count", "start")

    def __init__(self) -> None:
        self.start = 0.0
        self.count = 0

    def hit(self, now: float, limit: int, length: float) -> int | None:
        """Count one hit; None when allowed, else the milliseconds until the window restarts."""
        if self.count == 0 or now - self.start >= length:
            self.start = now
            self.count = 1
            return None
        self.count += 1
        if self.count <= limit:
            return None
        return max(1, math.ceil((self.start + length - now) * 1000))
