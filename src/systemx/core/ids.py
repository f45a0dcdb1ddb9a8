"""Identifiers the core makes: session ids and call ids (random version-4 UUID strings)."""

from __future__ import annotations

import os

__all__ = ["uuid4"]


class _UUIDs:
    """Random version-4 UUID strings, drawing entropy from the OS in blocks.

    ``uuid.uuid4()`` makes one ``os.urandom`` system call per id; call setup
    needs one id per call, so 256 are drawn at a time.
    """

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def __call__(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool = os.urandom(16 * 256)
            at = 0
        self._at = at + 16
        h = self._pool[at : at + 16].hex()
        # Version nibble 4; variant bits 10xx (RFC 9562).
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


uuid4 = _UUIDs()
