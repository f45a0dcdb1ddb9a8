"""Sampling the server with py-spy during a run, and summarising the samples.

:class:`PySpy` attaches ``py-spy record --format raw`` (collapsed stacks,
aggregated per function, without pausing the server) to a pid for the length
of a ``with`` block. :func:`top_functions` reads the collapsed stacks and
ranks functions by *own* samples (the leaf Python frame, which includes the C
code it calls) and by *total* samples (anywhere on the stack).
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

__all__ = ["PySpy", "find_py_spy", "format_top", "top_functions"]


def find_py_spy() -> str | None:
    return shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")


class PySpy:
    """``with PySpy(pid, path):`` records the process's stacks to ``path``."""

    def __init__(self, pid: int, path: str | Path, rate: int = 250) -> None:
        exe = find_py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed")
        self.cmd = [
            exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--function",
            "--nonblocking",
            "--rate",
            str(rate),
            "--output",
            str(path),
        ]
        self.path = Path(path)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PySpy:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            # py-spy writes its output when interrupted.
            proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not self.path.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace').strip()[-400:]}")


def _frame_name(frame: str) -> str:
    # "handle (systemx/server/app.py:123)" -> "handle (systemx/server/app.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    return f"{name} ({path or where})"


def top_functions(path: str | Path) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(total samples, [(function, own samples)], [(function, total samples)]), most first."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return total, own.most_common(), inclusive.most_common()


def format_top(path: str | Path, limit: int = 20) -> list[str]:
    """Human-readable lines: the top functions by own and by total samples."""
    total, own, inclusive = top_functions(path)
    if not total:
        return ["  (no samples)"]
    lines = [f"  {total} samples; top functions by own time:"]
    lines += [f"    {n / total * 100:5.1f}%  {name}" for name, n in own[:limit]]
    lines.append("  top functions by total time (self + callees):")
    lines += [f"    {n / total * 100:5.1f}%  {name}" for name, n in inclusive[:limit]]
    return lines
