"""Who may do what: address patterns, allow/deny rules, grants and the policy file.

Pure functions and plain data; nothing here reads a clock or a socket. The
exchange asks one question per operation (``Grants.permits(action, value)``),
answered by at most two compiled regular expressions per rule set.

Actions and what their patterns match:

* ``register`` — the address a REGISTER binds;
* ``dial`` — the address a DIAL calls;
* ``join`` — the name of a party line joined; ``create`` — one created by JOIN;
* ``presence`` — the domain of each entry a PRESENCE query may return.

A rule is ``{"allow": [...], "deny": [...]}`` or a plain list (allow only).
A missing ``allow`` allows everything; a missing ``deny`` denies nothing; a
value matching a deny pattern is refused even if an allow pattern matches it
(deny wins). Patterns use ``*`` for any run of characters (everything else is
literal), are anchored and ignore case, so a deny cannot be dodged by spelling
an address in other case. ``{sub}`` in a pattern is replaced by the identity's
subject and ``{domain}`` by the domain of the address the session registered.

A session may be bound by several rule sets (its token's permissions and the
policy file's rules for its domain): an operation must be permitted by each.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ACTIONS",
    "Grants",
    "Permissions",
    "Policy",
    "Rule",
    "compile_patterns",
    "expand",
    "load_policy",
    "parse_permissions",
    "parse_policy",
    "pattern_matches",
]

ACTIONS = ("register", "dial", "join", "create", "presence")

_TEMPLATE = re.compile(r"\{(sub|domain)\}")
_BAD_TEMPLATE = re.compile(r"\{[^}]*\}")


def compile_patterns(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One anchored, case-insensitive regex matching any of ``patterns`` (``*`` = any run)."""
    parts = ["".join(".*" if c == "*" else re.escape(c) for c in p) for p in patterns]
    if not parts:
        return None
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.IGNORECASE | re.DOTALL)


def pattern_matches(pattern: str, value: str) -> bool:
    """Whether ``value`` matches one ``*`` pattern (anchored, any case)."""
    compiled = compile_patterns((pattern,))
    return compiled is not None and compiled.match(value) is not None


def expand(pattern: str, sub: str, domain: str) -> str:
    """``pattern`` with ``{sub}`` and ``{domain}`` filled in."""
    return _TEMPLATE.sub(lambda mo: sub if mo.group(1) == "sub" else domain, pattern)


@dataclass(frozen=True, slots=True)
class Permissions:
    """Uncompiled rules per action: ``(allow patterns or None for any, deny patterns)``."""

    rules: Mapping[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = field(default_factory=dict)

    def compile(self, sub: str, domain: str) -> dict[str, Rule]:
        """The rules with templates expanded for one identity and registered domain."""
        out: dict[str, Rule] = {}
        for action, (allow, deny) in self.rules.items():
            out[action] = Rule(
                None if allow is None else _compile_or_nothing(expand(p, sub, domain) for p in allow),
                compile_patterns(expand(p, sub, domain) for p in deny),
            )
        return out


_NOTHING = re.compile(r"(?!)")


def _compile_or_nothing(patterns: Iterable[str]) -> re.Pattern[str]:
    # An empty allow list allows nothing (not anything).
    compiled = compile_patterns(patterns)
    return _NOTHING if compiled is None else compiled


@dataclass(frozen=True, slots=True)
class Rule:
    """Compiled allow (None: anything) and deny (None: nothing) patterns of one action."""

    allow: re.Pattern[str] | None
    deny: re.Pattern[str] | None

    def permits(self, value: str) -> bool:
        if self.deny is not None and self.deny.match(value) is not None:
            return False
        return self.allow is None or self.allow.match(value) is not None


class Grants:
    """What one registered session may do: the intersection of its rule sets."""

    __slots__ = ("_rules",)

    def __init__(self, rule_sets: Iterable[Mapping[str, Rule]]) -> None:
        rules: dict[str, list[Rule]] = {}
        for rule_set in rule_sets:
            for action, rule in rule_set.items():
                rules.setdefault(action, []).append(rule)
        self._rules = {action: tuple(rs) for action, rs in rules.items()}

    def permits(self, action: str, value: str) -> bool:
        rules = self._rules.get(action)
        if rules is None:
            return True
        return all(rule.permits(value) for rule in rules)

    def restricts(self, action: str) -> bool:
        """Whether any rule applies to ``action`` (False: everything is permitted)."""
        return action in self._rules


def _pattern_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"{where} must be a list of non-empty strings")
    for p in value:
        stray = [t for t in _BAD_TEMPLATE.findall(p) if not _TEMPLATE.fullmatch(t)]
        if stray:
            raise ValueError(f"{where}: unknown template {stray[0]} (known: {{sub}}, {{domain}})")
    return tuple(value)


def parse_permissions(data: Any, where: str = "permissions") -> Permissions:
    """Validate ``{action: rule}`` (JSON/TOML/JWT claim shape); raises ``ValueError`` naming the problem."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object mapping actions to rules")
    rules: dict[str, tuple[tuple[str, ...] | None, tuple[str, ...]]] = {}
    for action, rule in data.items():
        at = f"{where}.{action}"
        if action not in ACTIONS:
            raise ValueError(f"{at}: unknown action (known: {', '.join(ACTIONS)})")
        if isinstance(rule, list):
            rules[action] = (_pattern_list(rule, at), ())
            continue
        if not isinstance(rule, dict):
            raise ValueError(f"{at} must be a list of patterns or {{allow, deny}}")
        unknown = sorted(set(rule) - {"allow", "deny"})
        if unknown:
            raise ValueError(f"{at}: unknown key(s) {', '.join(unknown)} (known: allow, deny)")
        allow = _pattern_list(rule["allow"], f"{at}.allow") if "allow" in rule else None
        deny = _pattern_list(rule.get("deny", []), f"{at}.deny")
        rules[action] = (allow, deny)
    return Permissions(rules)


@dataclass(frozen=True, slots=True)
class Policy:
    """The policy file: permissions per registered domain, and for every other domain."""

    domains: Mapping[str, Permissions] = field(default_factory=dict)
    default: Permissions | None = None

    def for_domain(self, domain: str) -> Permissions | None:
        found = self.domains.get(domain.lower())
        return self.default if found is None else found


def parse_policy(data: Any) -> Policy:
    """``{"default": {...}, "domains": {"example.com": {...}}}``; raises ``ValueError``."""
    if not isinstance(data, dict):
        raise ValueError("the policy must be an object with 'domains' and/or 'default'")
    unknown = sorted(set(data) - {"default", "domains"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} (known: default, domains)")
    default = parse_permissions(data["default"], "default") if "default" in data else None
    raw_domains = data.get("domains", {})
    if not isinstance(raw_domains, dict):
        raise ValueError("domains must map domain names to permissions")
    domains = {
        name.lower(): parse_permissions(rules, f"domains.{name}") for name, rules in raw_domains.items()
    }
    return Policy(domains, default)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a JSON or TOML (by ``.toml`` suffix) policy file."""
    p = Path(path).expanduser()
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw) if p.suffix.lower() == ".toml" else json.loads(raw)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(
            f"{p.name} is not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'}: {exc}"
        ) from None
    return parse_policy(data)
