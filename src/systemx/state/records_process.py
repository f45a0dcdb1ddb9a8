"""Call records written by a child process: :class:`ProcessRecordStore`.

The SQLite record store (:mod:`systemx.state.records_sqlite`) costs about 7 µs
of CPU per record in batches of 4096, most of it SQLite's row and index writes. Run on a thread of
the exchange, that CPU is the exchange's, and the thread holds the GIL while it
builds rows, so the event loop waits for it. :class:`ProcessRecordStore` is the
same :class:`~systemx.state.ports.RecordStore` with the writes moved to a child
process (``python -m systemx.state.records_process``), which on a machine with
more than one core runs beside the exchange instead of inside it:

* ``append_many`` sends the batch to the child's stdin, one record per line
  (msgspec JSON, which never holds a raw newline; the child stores each line as
  it came, see :meth:`SqliteRecordStore.append_encoded`), then an empty line, and
  waits for ``ok`` (or ``err <why>``) once the child has committed it, so a
  batch counted as written is in the file;
* ``prune`` is the line ``!prune <now>``, answered ``ok <removed>``;
* queries read the file through a store of their own in this process (SQLite
  in WAL mode lets one process read while another writes);
* ``close`` closes the child's stdin: it commits what it has and exits. A child
  that died is started again at the next write (the batch that met the dead
  child fails and is counted, as any refused batch is).

The child ignores SIGINT and SIGTERM (a Ctrl-C or a service manager's stop
reaches the whole process group): it ends when its stdin reaches end of file,
when the exchange closes it after its last batch, or when the exchange is gone.
Used from one thread at a time, as every store is.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import IO

import msgspec

from systemx.core.records import CallRecord
from systemx.state.memory import check_retention
from systemx.state.ports import RecordFilter
from systemx.state.records_sqlite import RecordStoreError, SqliteRecordStore

__all__ = ["ProcessRecordStore", "main"]

log = logging.getLogger("systemx.state.records")

_encode = msgspec.json.Encoder().encode


class ProcessRecordStore:
    """A :class:`~systemx.state.ports.RecordStore` whose writes run in a child process."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_records: int | None = None,
        max_age: float | None = None,
    ) -> None:
        check_retention(max_records, max_age)
        self.path = str(path)
        self.max_records = max_records
        self.max_age = max_age
        self._child: subprocess.Popen[bytes] | None = None
        self._spawn()
        # Opened after the child made (or migrated) the file: this one only reads.
        self._reader = SqliteRecordStore(self.path, max_records=max_records, max_age=max_age)

    def _spawn(self) -> None:
        command = [
            sys.executable,
            "-m",
            "systemx.state.records_process",
            self.path,
            "" if self.max_records is None else str(self.max_records),
            "" if self.max_age is None else repr(self.max_age),
        ]
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdout is not None
        ready = child.stdout.readline()
        if ready != b"ready\n":
            child.kill()
            child.wait()
            detail = ready.decode(errors="replace").strip() or f"exit status {child.returncode}"
            raise RecordStoreError(f"the record writer for {self.path} did not start: {detail}")
        self._child = child

    def _ask(self, request: bytes) -> bytes:
        child = self._child
        if child is None or child.poll() is not None:
            log.warning("Call record writer gone (status %s): starting it again", child and child.returncode)
            self._spawn()
            child = self._child
        assert child is not None and child.stdin is not None and child.stdout is not None
        try:
            child.stdin.write(request)
            child.stdin.flush()
            answer = child.stdout.readline()
        except (BrokenPipeError, OSError) as exc:
            raise RecordStoreError(f"the record writer died: {exc}") from exc
        if answer.startswith(b"ok"):
            return answer[2:].strip()
        raise RecordStoreError(answer.decode(errors="replace").strip()[4:] or "the record writer died")

    def append(self, record: CallRecord) -> None:
        self.append_many((record,))

    def append_many(self, records: Iterable[CallRecord]) -> None:
        lines = [_encode(r) for r in records]
        if lines:
            lines.append(b"\n")
            self._ask(b"\n".join(lines))

    def query(
        self, filters: RecordFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[CallRecord]:
        return self._reader.query(filters, limit=limit, offset=offset)

    def prune(self, now: float) -> int:
        return int(self._ask(b"!prune %r\n" % now) or 0)

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            assert child.stdin is not None
            try:
                child.stdin.close()
            except OSError:
                pass
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._reader.close()


def _serve(store: SqliteRecordStore, stdin: IO[bytes], stdout: IO[bytes]) -> None:
    # A record's line is stored as sent (the exchange encoded it): the child reads
    # only the fields that get columns, instead of decoding and encoding it again.
    batch: list[bytes] = []
    for line in stdin:
        if line == b"\n":
            try:
                store.append_encoded(batch)
            except Exception as exc:  # told to the exchange, which counts the batch as failed
                stdout.write(b"err %s\n" % str(exc).replace("\n", " ").encode())
            else:
                stdout.write(b"ok\n")
            stdout.flush()
            batch = []
        elif line.startswith(b"!prune "):
            try:
                removed = store.prune(float(line[7:]))
            except Exception as exc:
                stdout.write(b"err %s\n" % str(exc).replace("\n", " ").encode())
            else:
                stdout.write(b"ok %d\n" % removed)
            stdout.flush()
        else:
            batch.append(line.rstrip(b"\n"))


def main(argv: list[str] | None = None) -> int:
    """The child: ``PATH MAX_RECORDS MAX_AGE`` (empty: no bound); requests on stdin."""
    path, max_records, max_age = (argv if argv is not None else sys.argv[1:])[:3]
    try:
        store = SqliteRecordStore(
            path,
            max_records=int(max_records) if max_records else None,
            max_age=float(max_age) if max_age else None,
        )
    except Exception as exc:
        sys.stdout.buffer.write(f"cannot open {path}: {exc}\n".replace("\n", " ").encode() + b"\n")
        sys.stdout.buffer.flush()
        return 1
    # It ends when the exchange closes its stdin, having written what it was sent: a
    # signal to the whole process group (Ctrl-C, a service manager's stop) must not
    # end it before the exchange's last batch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Not bound to the exchange's CPUs: when the exchange is pinned to a core, its writer
    # should not take turns with it there (the kernel still keeps it within the cgroup).
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except (AttributeError, OSError):
        pass
    sys.stdout.buffer.write(b"ready\n")
    sys.stdout.buffer.flush()
    try:
        _serve(store, sys.stdin.buffer, sys.stdout.buffer)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
