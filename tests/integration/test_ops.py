"""The server's operations wiring: the recorder it hands the core, and its shutdown order."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from systemx.config import Settings
from systemx.core.records import Disposition, EndedBy, FanoutRecorder, NullRecorder, call_record
from systemx.server.app import Server
from systemx.state.records_sqlite import SqliteRecordStore


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    return dataclasses.replace(
        Settings(), host="127.0.0.1", port=0, data_dir=str(tmp_path), admin_port=0, **changes
    )


async def test_records_given_to_the_recorder_are_written_by_shutdown(tmp_path: Path) -> None:
    server = Server(_settings(tmp_path))
    await server.start()
    recorder = server.recorder
    # Call records, metrics and the live event feed all listen.
    assert isinstance(recorder, FanoutRecorder) and len(recorder.recorders) == 3
    now = time.time()
    for n in range(3):
        recorder.call_ended(
            call_record(
                call_id=f"call-{n}",
                caller="a@example.com",
                callee="b@example.com",
                dialled_at=now - 1,
                ended_at=now,
                disposition=Disposition.NO_ANSWER,
                reason="timeout",
                ended_by=EndedBy.EXCHANGE,
            )
        )
    await server.shutdown()
    store = SqliteRecordStore(tmp_path / "records.db")
    try:
        assert sorted(r.call_id for r in store.query()) == ["call-0", "call-1", "call-2"]
    finally:
        store.close()
    assert (tmp_path / "records.db").stat().st_mode & 0o077 == 0


async def test_everything_off(tmp_path: Path) -> None:
    server = Server(_settings(tmp_path, admin_enabled=False, records_enabled=False))
    await server.start()
    assert isinstance(server.recorder, NullRecorder)
    assert server.ops.admin is None
    await server.shutdown()
    assert not (tmp_path / "records.db").exists()
