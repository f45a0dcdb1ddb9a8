"""Durable wake profiles: what the exchange must remember about a sleeping address.

A profile is the JSON object the core builds for a ``wake_on_ring`` address
(its wake handler and metadata); the store keeps it across restarts so a dial
can still wake an agent that went to sleep before the exchange restarted.

:class:`ProfileStore` is the port. Backends:

* :class:`MemoryProfileStore`: in-process, for tests and throwaway exchanges;
* :class:`SqliteProfileStore`: one SQLite file (WAL, ``synchronous=NORMAL``),
  readable by the exchange's user only (mode 0600, with its ``-wal`` and
  ``-shm`` files): profiles hold webhook URLs and payloads.

Every backend keeps profiles as JSON, so a value that JSON cannot carry is
refused at ``put`` (``TypeError``) by all of them alike, and what ``load_all``
returns is always a fresh copy. A store is used from one thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import Any, Protocol

import msgspec

from systemx.state.sqlite import migrate, open_private

__all__ = ["MemoryProfileStore", "ProfileStore", "ProfileStoreError", "SqliteProfileStore"]

log = logging.getLogger("systemx.state.profiles")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class ProfileStoreError(RuntimeError):
    """The store cannot be used as it is (for example a newer schema)."""


class ProfileStore(Protocol):
    def load_all(self) -> dict[str, dict[str, Any]]:
        """Every stored profile, by address."""

    def put(self, address: str, profile: dict[str, Any]) -> None:
        """Store ``profile`` for ``address``, replacing any earlier one."""

    def delete(self, address: str) -> None:
        """Forget ``address`` (no error if it has no profile)."""

    def close(self) -> None:
        """Release the backend; calling it twice is harmless."""


def _to_json(profile: dict[str, Any]) -> bytes:
    if not isinstance(profile, dict):
        raise TypeError(f"a profile must be a dict, got {type(profile).__name__}")
    return _encode(profile)


class MemoryProfileStore:
    """Profiles in a dict of JSON documents; gone when the process ends."""

    def __init__(self) -> None:
        self._docs: dict[str, bytes] = {}

    def load_all(self) -> dict[str, dict[str, Any]]:
        return {address: _decode(doc) for address, doc in self._docs.items()}

    def put(self, address: str, profile: dict[str, Any]) -> None:
        self._docs[address] = _to_json(profile)

    def delete(self, address: str) -> None:
        self._docs.pop(address, None)

    def close(self) -> None:
        pass


# Each entry upgrades the schema from the version before it; index 0 creates version 1.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE wake_profiles (
            address    TEXT PRIMARY KEY NOT NULL,
            profile    TEXT NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


class SqliteProfileStore:
    """Profiles in one SQLite database file, created (with its directory) if missing."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        self._db: sqlite3.Connection | None = open_private(self.path, self._migrate, narrow_existing=True)

    def _migrate(self, db: sqlite3.Connection) -> None:
        migrate(
            db,
            _MIGRATIONS,
            version_table="schema_version",
            what="profile",
            store="Profile store",
            path=self.path,
            error=ProfileStoreError,
            log=log,
        )

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ProfileStoreError(f"profile store {self.path} is closed")
        return self._db

    def load_all(self) -> dict[str, dict[str, Any]]:
        profiles: dict[str, dict[str, Any]] = {}
        for address, text in self._conn.execute("SELECT address, profile FROM wake_profiles ORDER BY rowid"):
            try:
                profiles[address] = _decode(text)
            except msgspec.DecodeError as exc:
                # One damaged row must not stop the exchange from starting.
                log.error("Skipping unreadable wake profile of %s in %s: %s", address, self.path, exc)
        return profiles

    def put(self, address: str, profile: dict[str, Any]) -> None:
        text = _to_json(profile).decode()
        self._conn.execute(
            "INSERT INTO wake_profiles (address, profile, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (address) DO UPDATE SET "
            "profile = excluded.profile, updated_at = excluded.updated_at",
            (address, text, time.time()),
        )

    def delete(self, address: str) -> None:
        self._conn.execute("DELETE FROM wake_profiles WHERE address = ?", (address,))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
