"""CPU time and memory of a process, read from the kernel without psutil.

CPU time comes from the process-wide CPU-time clock (``clock_gettime`` on the
clock id Linux derives from a pid: nanosecond resolution, user + system time of
every thread); when that clock cannot be read it falls back to ``utime + stime``
of ``/proc/<pid>/stat`` (clock-tick resolution, usually 10 ms). Resident memory
is ``VmRSS`` of ``/proc/<pid>/status``.
"""

from __future__ import annotations

import os
import resource
import time

__all__ = ["ProcessMeter", "host_busy_seconds", "pin_to_cpus", "raise_fd_limit"]

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# CPUCLOCK_SCHED (2) on the process (not thread) clock of ``pid``: see clock_getcpuclockid(3).
_CPUCLOCK_SCHED = 2


def _process_clock_id(pid: int) -> int:
    return ((~pid) << 3) | _CPUCLOCK_SCHED


class ProcessMeter:
    """Reads the CPU seconds and resident kilobytes of one process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._clock: int | None = _process_clock_id(pid)
        try:
            time.clock_gettime(self._clock)
        except OSError:
            self._clock = None

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far."""
        if self._clock is not None:
            try:
                return time.clock_gettime(self._clock)
            except OSError:
                self._clock = None
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            stat = f.read()
        # The command name may contain spaces and parentheses: split after the last ")".
        fields = stat[stat.rindex(b")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / _CLOCK_TICKS

    def rss_kb(self) -> int:
        """Resident set size in KiB."""
        with open(f"/proc/{self.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def alive(self) -> bool:
        return os.path.exists(f"/proc/{self.pid}")


def host_busy_seconds() -> float | None:
    """CPU seconds all CPUs have spent not idle (user, system, irq, softirq, steal) since boot."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit; return it.

    Child processes inherit the raised limit, which is how a spawned server
    gets enough descriptors for thousands of connections.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pin_to_cpus(pid: int, cpus: set[int]) -> bool:
    """Pin every thread of ``pid`` (0 = this process) to ``cpus``; False if unsupported."""
    if not hasattr(os, "sched_setaffinity") or not cpus:
        return False
    target = os.getpid() if pid == 0 else pid
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{target}/task")]
    except OSError:
        tids = [target]
    pinned = False
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
            pinned = True
        except OSError:
            continue
    return pinned
