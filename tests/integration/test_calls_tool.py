"""``systemx calls`` against the admin listener of a real ``systemx serve``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from systemx.core.records import Disposition, EndedBy, call_record
from systemx.state.records_sqlite import SqliteRecordStore
from tests.conftest import ServerFactory, run_command
from tests.integration.test_admin import start_admin
from tests.wsclient import TIMEOUT


def prefill(data: Path, now: float) -> None:
    store = SqliteRecordStore(data / "records.db")
    for n, (caller, disposition) in enumerate(
        [("a@example.com", Disposition.ANSWERED), ("b@example.com", Disposition.BUSY)]
    ):
        store.append(
            call_record(
                call_id=f"call-{n}",
                caller=caller,
                callee="c@example.com",
                dialled_at=now - 600 + n * 500,
                ended_at=now - 590 + n * 500,
                disposition=disposition,
                reason="normal" if disposition is Disposition.ANSWERED else "occupied",
                ended_by=EndedBy.CALLER,
                rang_at=now - 599 + n * 500,
                answered_at=now - 597 if disposition is Disposition.ANSWERED else None,
            )
        )
    store.close()


async def calls(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SYSTEMX_")}
    return await run_command(
        sys.executable, "-m", "systemx", "calls", *args, timeout=TIMEOUT, env={**clean, **(env or {})}
    )


async def test_calls_lists_filters_and_prints_json(systemx_server: ServerFactory, tmp_path: Path) -> None:
    now = time.time()
    prefill(tmp_path / "server0" / "data", now)
    _, admin = await start_admin(systemx_server, env={"SYSTEMX_ADMIN_TOKEN": "s3cret"})

    code, out, err = await calls("--admin-url", admin, "--token", "s3cret")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "DIALLED",
        "CALLER",
        "CALLEE",
        "DISPOSITION",
        "REASON",
        "RING_S",
        "TALK_S",
        "CALL_ID",
    ]
    assert "b@example.com" in lines[1] and "busy" in lines[1] and "occupied" in lines[1]
    assert "a@example.com" in lines[2] and "answered" in lines[2] and " 2.0 " in lines[2]
    assert lines[-1] == "(2 calls)"

    # The URL and token from the environment; filters; JSON lines.
    env = {"SYSTEMX_ADMIN_URL": admin, "SYSTEMX_ADMIN_TOKEN": "s3cret"}
    code, out, _ = await calls("--disposition", "answered", "--json", env=env)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["call_id"] for r in records] == ["call-0"]
    assert records[0]["talk_seconds"] == 7.0
    _, out, _ = await calls("--address", "b@EXAMPLE.com", "--json", env=env)
    assert [json.loads(line)["call_id"] for line in out.splitlines()] == ["call-1"]
    _, out, _ = await calls("--since", "5m", "--json", env=env)
    assert [json.loads(line)["call_id"] for line in out.splitlines()] == ["call-1"]
    _, out, _ = await calls("--limit", "1", env=env)
    assert out.splitlines()[-1] == "(1 call)"

    # A wrong token, a bad flag, nobody listening: one clear line each.
    code, out, err = await calls("--admin-url", admin, "--token", "wrong")
    assert code == 4 and out == ""
    assert "HTTP 401" in err and "admin token" in err
    code, _, err = await calls("--since", "yesterday", env=env)
    assert code == 2 and "duration back from now" in err
    code, _, err = await calls("--admin-url", "http://127.0.0.1:1")
    assert code == 4 and "cannot reach the admin listener" in err
    assert "Traceback" not in err
