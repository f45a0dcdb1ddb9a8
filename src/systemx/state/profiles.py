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
from pathlib import Path
from typing import Any, Protocol

import msgspec

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


def _make_private(path: str) -> None:
    """Create ``path`` with mode 0600 if missing, and narrow it to 0600 if it exists."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


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
        private = self.path != ":memory:"
        if private:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            _make_private(self.path)
        # SQLite creates -wal and -shm with the database file's mode; the umask covers the
        # moment before that, and files left wider by an older version are narrowed below.
        old_umask = os.umask(0o077)
        try:
            # Autocommit mode; transactions are opened explicitly where statements belong together.
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None
            )
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._migrate(self._db)
            except BaseException:
                self._db.close()
                self._db = None
                raise
        finally:
            os.umask(old_umask)
        if private:
            for suffix in ("-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    _make_private(self.path + suffix)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = int(row[0]) if row and row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise ProfileStoreError(
                    f"{self.path} has profile schema version {version}; "
                    f"this SystemX understands up to {SCHEMA_VERSION}"
                )
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    db.execute(statement)
            if version < SCHEMA_VERSION:
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                log.debug("Profile store %s at schema version %d", self.path, SCHEMA_VERSION)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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
