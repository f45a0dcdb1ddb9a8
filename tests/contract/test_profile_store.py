"""Every wake profile store behaves the same; run against each backend."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from systemx.state.profiles import (
    MemoryProfileStore,
    ProfileStore,
    ProfileStoreError,
    SqliteProfileStore,
)

Opener = Callable[[], ProfileStore]

PROFILE: dict[str, Any] = {
    "address": "agent@example.com",
    "handler": {"type": "webhook", "url": "https://hooks.example.com/w", "timeout_seconds": 5.0},
    "metadata": {"capabilities": ["chat"], "location": {"lat": 52.5, "lon": 13.4}, "note": "héllo ☎"},
}


def _memory(tmp_path: Path) -> Opener:
    store = MemoryProfileStore()
    return lambda: store


def _sqlite(tmp_path: Path) -> Opener:
    path = tmp_path / "nested" / "dir" / "profiles.db"
    return lambda: SqliteProfileStore(path)


BACKENDS: dict[str, Callable[[Path], Opener]] = {"memory": _memory, "sqlite": _sqlite}
# Backends that keep profiles after close() and a fresh open.
DURABLE = ["sqlite"]


@pytest.fixture(params=list(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProfileStore]:
    opened = BACKENDS[request.param](tmp_path)()
    yield opened
    opened.close()


@pytest.fixture(params=DURABLE)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return BACKENDS[request.param](tmp_path)


def test_starts_empty(store: ProfileStore) -> None:
    assert store.load_all() == {}


def test_put_then_load(store: ProfileStore) -> None:
    store.put("agent@example.com", PROFILE)
    store.put("other@example.com", {"address": "other@example.com", "handler": {"type": "spawn"}})
    loaded = store.load_all()
    assert loaded == {
        "agent@example.com": PROFILE,
        "other@example.com": {"address": "other@example.com", "handler": {"type": "spawn"}},
    }


def test_put_overwrites(store: ProfileStore) -> None:
    store.put("agent@example.com", PROFILE)
    store.put("agent@example.com", {"address": "agent@example.com", "handler": {"type": "spawn"}})
    assert store.load_all() == {
        "agent@example.com": {"address": "agent@example.com", "handler": {"type": "spawn"}}
    }


def test_delete(store: ProfileStore) -> None:
    store.put("agent@example.com", PROFILE)
    store.put("other@example.com", PROFILE)
    store.delete("agent@example.com")
    assert list(store.load_all()) == ["other@example.com"]
    store.delete("agent@example.com")  # absent: no error
    store.delete("never@example.com")
    assert list(store.load_all()) == ["other@example.com"]


def test_addresses_are_kept_exactly(store: ProfileStore) -> None:
    store.put("Agent@Example.com", {"n": 1})
    store.put("agent@example.com", {"n": 2})
    assert store.load_all() == {"Agent@Example.com": {"n": 1}, "agent@example.com": {"n": 2}}


def test_stored_profiles_are_copies(store: ProfileStore) -> None:
    profile: dict[str, Any] = {"handler": {"type": "webhook"}, "metadata": {"tags": ["a"]}}
    store.put("agent@example.com", profile)
    profile["metadata"]["tags"].append("changed-after-put")
    loaded = store.load_all()
    assert loaded["agent@example.com"]["metadata"]["tags"] == ["a"]
    loaded["agent@example.com"]["metadata"]["tags"].append("changed-after-load")
    assert store.load_all()["agent@example.com"]["metadata"]["tags"] == ["a"]


def test_values_json_cannot_carry_are_refused(store: ProfileStore) -> None:
    with pytest.raises(TypeError):
        store.put("agent@example.com", {"when": object()})
    assert store.load_all() == {}


def test_close_twice_is_harmless(store: ProfileStore) -> None:
    store.close()
    store.close()


def test_profiles_survive_reopen(opener: Opener) -> None:
    first = opener()
    first.put("agent@example.com", PROFILE)
    first.put("gone@example.com", PROFILE)
    first.put("changed@example.com", {"v": 1})
    first.delete("gone@example.com")
    first.put("changed@example.com", {"v": 2})
    first.close()
    second = opener()
    try:
        assert second.load_all() == {"agent@example.com": PROFILE, "changed@example.com": {"v": 2}}
        second.put("late@example.com", {"v": 3})
    finally:
        second.close()
    third = opener()
    try:
        assert set(third.load_all()) == {"agent@example.com", "changed@example.com", "late@example.com"}
    finally:
        third.close()


# --------------------------------------------------------------------------
# SQLite specifics


def test_sqlite_creates_parent_directories_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "profiles.db"
    store = SqliteProfileStore(path)
    store.put("agent@example.com", PROFILE)
    store.close()
    assert path.is_file()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        (text,) = db.execute("SELECT profile FROM wake_profiles").fetchone()
        assert '"url":"https://hooks.example.com/w"' in text
    finally:
        db.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    SqliteProfileStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    with pytest.raises(ProfileStoreError, match="schema version 99"):
        SqliteProfileStore(path)


def test_sqlite_skips_an_unreadable_row(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    store = SqliteProfileStore(path)
    store.put("good@example.com", {"v": 1})
    store.close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO wake_profiles VALUES ('bad@example.com', '{not json', 0)")
    db.commit()
    db.close()
    store = SqliteProfileStore(path)
    try:
        assert store.load_all() == {"good@example.com": {"v": 1}}
    finally:
        store.close()


def test_sqlite_closed_store_says_so(tmp_path: Path) -> None:
    store = SqliteProfileStore(tmp_path / "profiles.db")
    store.close()
    with pytest.raises(ProfileStoreError, match="closed"):
        store.put("agent@example.com", PROFILE)


def test_sqlite_in_memory(tmp_path: Path) -> None:
    store = SqliteProfileStore(":memory:")
    try:
        store.put("agent@example.com", PROFILE)
        assert store.load_all() == {"agent@example.com": PROFILE}
    finally:
        store.close()


def test_sqlite_files_are_private_to_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "data" / "systemx.db"
    store = SqliteProfileStore(path)
    try:
        store.put("agent@example.com", PROFILE)
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()


def test_sqlite_narrows_a_file_left_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "systemx.db"
    SqliteProfileStore(path).close()
    path.chmod(0o644)
    store = SqliteProfileStore(path)
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
