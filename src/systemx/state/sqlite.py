"""What the SQLite stores share: opening a private database file and migrating its schema.

A store's schema grows by an ordered migrations tuple (index 0 creates version
1); the version is kept in a one-column table of the store's own, and a newer
schema than the code knows is refused with the store's error class.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

__all__ = ["migrate", "open_private"]


def _make_private(path: str, *, narrow_existing: bool) -> None:
    """Create ``path`` with mode 0600 if missing (a umask cannot widen it).

    With ``narrow_existing`` a file that exists already is narrowed to 0600 too.
    """
    if not narrow_existing:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return
        os.close(fd)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def open_private(
    path: str, migrate_db: Callable[[sqlite3.Connection], None], *, narrow_existing: bool
) -> sqlite3.Connection:
    """Open (creating it and its directory if missing) the database at ``path``.

    The file is made readable by its owner only; SQLite gives its ``-wal`` and
    ``-shm`` files the database file's mode. With ``narrow_existing`` files
    left wider by an older version are narrowed as well. The connection is in
    autocommit mode (transactions are opened explicitly), WAL with
    ``synchronous=NORMAL``, and ``migrate_db`` has run on it.
    """
    private = path != ":memory:"
    if private:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _make_private(path, narrow_existing=narrow_existing)
    # The umask covers the moment before -wal and -shm take the database file's mode.
    old_umask = os.umask(0o077) if narrow_existing else None
    try:
        db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            migrate_db(db)
        except BaseException:
            db.close()
            raise
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    if private and narrow_existing:
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + suffix):
                _make_private(path + suffix, narrow_existing=True)
    return db


def migrate(
    db: sqlite3.Connection,
    migrations: tuple[tuple[str, ...], ...],
    *,
    version_table: str,
    what: str,
    store: str,
    path: str,
    error: type[Exception],
    log: logging.Logger,
) -> None:
    """Bring the schema up to ``len(migrations)`` in one transaction.

    ``what`` names the schema in the error (``"profile"``), ``store`` the
    store in the log line (``"Profile store"``); a newer version than ``migrations`` knows raises ``error``.
    """
    latest = len(migrations)
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(f"CREATE TABLE IF NOT EXISTS {version_table} (version INTEGER NOT NULL)")
        row = db.execute(f"SELECT MAX(version) FROM {version_table}").fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        if version > latest:
            raise error(
                f"{path} has {what} schema version {version}; this SystemX understands up to {latest}"
            )
        for step in migrations[version:]:
            for statement in step:
                db.execute(statement)
        if version < latest:
            db.execute(f"DELETE FROM {version_table}")
            db.execute(f"INSERT INTO {version_table} (version) VALUES (?)", (latest,))
            log.debug("%s %s at schema version %d", store, path, latest)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
