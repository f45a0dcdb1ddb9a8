"""The measurement window, percentiles and the median over repeated runs.

A :class:`Window` is the steady-state part of a run: it opens after a warm-up
(a time or a number of events) and closes after a duration or a number of
counted events. Opening and closing it snapshot the server's CPU clock, the
generator's own CPU time and the wall clock, so every per-unit figure divides
CPU used inside the window by work counted inside the same window.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any

from systemx.bench.procstat import ProcessMeter, host_busy_seconds

__all__ = ["Window", "load_figures", "median_result", "percentile", "summarize_latency"]


class Window:
    """Counts work done while measuring and what it cost the server."""

    def __init__(
        self,
        meter: ProcessMeter | None,
        *,
        warm_count: int = -1,
        target: int = -1,
    ) -> None:
        self.meter = meter
        #: Open the window after this many events (-1: opened by a timer).
        self.warm_count = warm_count
        #: Close the window after this many counted events (-1: closed by a timer).
        self.target = target
        self.measuring = False
        self.seen = 0
        self.count = 0
        self.t0 = self.t1 = 0.0
        self.cpu0 = self.cpu1 = 0.0
        self.gen0 = self.gen1 = 0.0
        self.host0: float | None = None
        #: CPU seconds every process on the machine used inside the window.
        self.host_busy: float | None = None
        self.server_cpu: float | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        if self.measuring or self.closed.done():
            return
        self.gen0 = time.process_time()
        self.host0 = host_busy_seconds()
        self.cpu0 = self.meter.cpu_seconds() if self.meter else 0.0
        self.t0 = time.perf_counter()
        self.measuring = True

    def end(self) -> None:
        if self.closed.done():
            return
        if not self.measuring:
            self.start()
        self.t1 = time.perf_counter()
        self.cpu1 = self.meter.cpu_seconds() if self.meter else 0.0
        self.gen1 = time.process_time()
        host1 = host_busy_seconds()
        self.host_busy = host1 - self.host0 if host1 is not None and self.host0 is not None else None
        self.measuring = False
        self.server_cpu = (self.cpu1 - self.cpu0) if self.meter else None
        self.closed.set_result(None)

    def schedule(self, warmup: float, duration: float) -> None:
        """Open after ``warmup`` seconds (unless counted) and close ``duration`` later."""
        loop = asyncio.get_running_loop()
        if self.warm_count < 0:
            loop.call_later(warmup, self.start)
            loop.call_later(warmup + duration, self.end)
        else:
            loop.call_later(duration, self.end)

    def schedule_at(self, start: float, end: float) -> None:
        """Open and close at ``time.monotonic()`` instants (shared by several processes)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        loop.call_later(max(0.0, start - now), self.start)
        loop.call_later(max(0.0, end - now), self.end)

    @property
    def elapsed(self) -> float:
        return max(self.t1 - self.t0, 1e-9)

    @property
    def gen_cpu(self) -> float:
        return self.gen1 - self.gen0

    def per_unit_us(self, units: int | None = None) -> float | None:
        """Server CPU microseconds per counted event (or per ``units``)."""
        n = self.count if units is None else units
        if self.server_cpu is None or n <= 0:
            return None
        return self.server_cpu / n * 1e6

    def load(self) -> dict[str, float | None]:
        """How busy the server, the generator and everything else were, in CPUs."""
        return load_figures(self.elapsed, self.server_cpu, self.gen_cpu, self.host_busy)


def load_figures(
    elapsed: float, server_cpu: float | None, gen_cpu: float, host_busy: float | None
) -> dict[str, float | None]:
    """Utilisation in CPUs: server, generator, and the rest of the machine.

    ``other_cpu_util`` is every CPU's busy time minus the server's and the
    generator's: loopback network work done in softirq context plus anything
    else running. Well above ~0.3 on an otherwise idle machine means the run
    shared its CPUs and its figures are suspect.
    """
    server = server_cpu / elapsed if server_cpu is not None else None
    gen = gen_cpu / elapsed
    other = None
    if host_busy is not None:
        other = max(0.0, host_busy / elapsed - gen - (server or 0.0))
    return {"server_cpu_util": server, "gen_cpu_util": gen, "other_cpu_util": other, "window_s": elapsed}


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize_latency(samples_ns: Iterable[int], prefix: str = "") -> dict[str, float | None]:
    """p50/p99/max in microseconds of nanosecond samples."""
    values = sorted(samples_ns)
    out: dict[str, float | None] = {}
    for name, p in (("p50", 50.0), ("p99", 99.0)):
        v = percentile(values, p)
        out[f"{prefix}{name}_us"] = v / 1000.0 if v is not None else None
    out[f"{prefix}max_us"] = values[-1] / 1000.0 if values else None
    return out


def median_result(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from repeated runs: the median of every number, the first of anything else."""
    if len(runs) == 1:
        return dict(runs[0])
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if numbers and len(numbers) == len(values):
            med = statistics.median(numbers)
            merged[key] = int(med) if all(isinstance(v, int) for v in numbers) and med == int(med) else med
        elif all(isinstance(v, dict) for v in values):
            merged[key] = median_result([v for v in values if isinstance(v, dict)])
        else:
            merged[key] = values[0]
    return merged
