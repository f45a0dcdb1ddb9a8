"""The address grammar.

An address is ``local@domain``:

* at most 254 characters in all (the limit of an email path);
* ``local`` is one or more characters, none of them whitespace, a control
  character or ``@``;
* ``domain`` is two or more dot-separated labels, each one or more characters
  with the same exclusions as ``local`` (so ``a@b.c`` is the shortest address,
  ``a@b``, ``a@.b`` and ``a@b.`` are invalid);
* the local part is case-sensitive; the domain is not. Two addresses are the
  same line when their local parts are equal and their domains are equal
  ignoring case. The exchange always echoes the address exactly as it was
  written by whoever registered or dialled it.

This accepts every address the reference router accepts except those it only
accepts by accident (empty labels, control characters, over 254 characters).
"""

from __future__ import annotations

import re

__all__ = ["MAX_ADDRESS_LENGTH", "address_key", "domain_of", "is_valid_address"]

MAX_ADDRESS_LENGTH = 254

_ATOM = r"[^\s@\x00-\x1f\x7f]+"
_ADDRESS_RE = re.compile(rf"{_ATOM}@(?:[^\s@.\x00-\x1f\x7f]+\.)+[^\s@.\x00-\x1f\x7f]+")


def is_valid_address(address: str) -> bool:
    """True when ``address`` follows the grammar above."""
    return len(address) <= MAX_ADDRESS_LENGTH and _ADDRESS_RE.fullmatch(address) is not None


def address_key(address: str) -> str:
    """The lookup key of a valid address: the domain folded to lower case."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def domain_of(address: str) -> str:
    """The domain of a valid address, lower-cased."""
    return address.rpartition("@")[2].lower()
