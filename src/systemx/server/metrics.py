"""Prometheus metrics of one exchange process: :class:`MetricsRecorder`.

Two sources, neither on the MSG path:

* the core's events (the :class:`~systemx.core.records.Recorder` port): calls
  by disposition, ring and talk time, registrations, wakes, refusals. A few
  integer additions per event (plain Python numbers, exported at scrape
  time); no event per MSG;
* integer counters the transport and the exchange keep anyway (connections,
  messages and bytes received, frames sent, slow-consumer cuts, active calls,
  party lines, sleepers), read only when ``/metrics`` is scraped
  (:class:`StatsSource`).

Labels are bounded: a disposition, a message type, a wire reason (anything
else is counted as ``other``); never an address, a call id or a domain. The
metrics live in their own :class:`~prometheus_client.CollectorRegistry`, not
the library's global one, so two exchanges in one process (tests) do not mix.

:class:`LoopLag` measures the event loop's lag: a timer asks to run every
``interval`` seconds and records how late it ran.
"""

from __future__ import annotations

import asyncio
import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

import systemx
from systemx.core.records import CallRecord, Disposition
from systemx.protocol import codes

__all__ = ["CONTENT_TYPE", "LoopLag", "MetricsRecorder", "StatsSource"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_KINDS = frozenset(
    {"REGISTER", "UNREGISTER", "STATUS", "DIAL", "ANSWER", "HANGUP", "MSG", "JOIN", "PARTY_MSG", "LEAVE"}
    | {"PRESENCE", "SLEEP_ACK", "REGISTER_PBX", "DIAL_FORWARD", "HEARTBEAT"}
)
_REASONS = frozenset(
    str(member)
    for enum_type in (
        codes.RegisterFailedReason,
        codes.BusyReason,
        codes.HangupReason,
        codes.ErrorReason,
        codes.JoinFailedReason,
        codes.PartyLeftReason,
        codes.SleepReason,
    )
    for member in enum_type
) | {"disconnected"}

# Seconds: from a local ring (milliseconds) to a call left ringing (SYSTEMX_CALL_TIMEOUT, 30 s).
_RING_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TALK_BUCKETS = (0.1, 1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600)
_WAKE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "other"


class StatsSource(Protocol):
    """Counters read when ``/metrics`` is scraped (plain integers, kept by their owners)."""

    def stats(self) -> dict[str, int]:
        """``connections``, ``connections_opened``, ``connections_closed``, ``msgs_received``,
        ``bytes_received``, ``frames_sent``, ``slow_consumers``, ``registered``, ``calls_ringing``,
        ``calls_connected``, ``calls_waiting``, ``parties``, ``sleepers``, ``internal_errors``,
        and, with call records on, ``records_written``, ``records_dropped``, ``records_failed``,
        ``records_queued``. A key that is missing is not exported."""


# name -> (kind, help); "counter" values are totals since start.
_SCRAPED: dict[str, tuple[str, str, str]] = {
    "connections": ("gauge", "systemx_connections", "Open WebSocket connections"),
    "connections_opened": ("counter", "systemx_connections_opened", "WebSocket connections opened"),
    "connections_closed": ("counter", "systemx_connections_closed", "WebSocket connections closed"),
    "msgs_received": ("counter", "systemx_messages_received", "WebSocket messages received from clients"),
    "bytes_received": ("counter", "systemx_message_bytes_received", "Payload bytes received from clients"),
    "frames_sent": ("counter", "systemx_frames_sent", "WebSocket frames sent to clients"),
    "slow_consumers": (
        "counter",
        "systemx_slow_consumers",
        "Connections closed 1008 slow_consumer (SYSTEMX_MAX_BUFFERED_BYTES)",
    ),
    "registered": ("gauge", "systemx_registrations", "Addresses registered now"),
    "calls_waiting": ("gauge", "systemx_calls_waiting", "Calls waiting for a wake or a busy callee"),
    "calls_ringing": ("gauge", "systemx_calls_ringing", "Calls ringing"),
    "calls_connected": ("gauge", "systemx_calls_connected", "Calls connected"),
    "parties": ("gauge", "systemx_party_lines", "Party lines open"),
    "sleepers": ("gauge", "systemx_sleepers", "Wake-on-ring addresses asleep (not registered)"),
    "internal_errors": ("counter", "systemx_internal_errors", "Frames whose handler failed (internal_error)"),
    "records_written": ("counter", "systemx_records_written", "Call records written to the store"),
    "records_dropped": ("counter", "systemx_records_dropped", "Call records dropped: the store stalled"),
    "records_failed": ("counter", "systemx_records_failed", "Call records the store refused"),
    "records_queued": ("gauge", "systemx_records_queued", "Call records waiting to be written"),
}


class _ScrapeCollector(Collector):
    def __init__(self, source: StatsSource, started: float) -> None:
        self._source = source
        self._started = started

    def collect(self) -> Iterator[Any]:
        stats = self._source.stats()
        for key, (kind, name, doc) in _SCRAPED.items():
            value = stats.get(key)
            if value is None:
                continue
            if kind == "counter":
                yield CounterMetricFamily(name, doc, value=value)
            else:
                yield GaugeMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "systemx_uptime_seconds", "Seconds since the exchange started", value=time.time() - self._started
        )


class _Histogram:
    """Bucket counts and a sum, kept as plain numbers; exported at scrape time."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


class _EventCollector(Collector):
    """Exports what :class:`MetricsRecorder` counted, when scraped."""

    def __init__(self, recorder: MetricsRecorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[Any]:
        r = self._recorder
        yield CounterMetricFamily(
            "systemx_registered", "Addresses bound to a session (woken ones included)", value=r.registrations
        )
        yield _labelled(
            "systemx_unregistered", "Addresses given up, by reason", ["reason"], r.unregistrations
        )
        yield CounterMetricFamily("systemx_calls_started", "Calls dialled", value=r.calls_started)
        yield CounterMetricFamily("systemx_calls_answered", "Calls answered", value=r.calls_answered)
        yield _labelled("systemx_calls", "Calls ended, by disposition", ["disposition"], r.calls)
        yield r.ring_seconds.family(
            "systemx_call_ring_seconds", "Time a call rang before the answer or the end"
        )
        yield r.setup_seconds.family("systemx_call_setup_seconds", "DIAL to answer, answered calls")
        yield r.talk_seconds.family("systemx_call_talk_seconds", "Answer to end, answered calls")
        msgs, data = r.call_msgs, r.call_bytes
        if msgs[0] or msgs[1]:
            yield _labelled(
                "systemx_call_messages",
                "MSGs relayed in ended calls, by direction",
                ["direction"],
                {"up": msgs[0], "down": msgs[1]},
            )
            yield _labelled(
                "systemx_call_message_bytes",
                "MSG bytes relayed in ended calls",
                ["direction"],
                {"up": data[0], "down": data[1]},
            )
        yield _labelled("systemx_wakes", "Wakes by outcome (woken, failed)", ["result"], r.wakes)
        yield r.wake_seconds.family("systemx_wake_seconds", "DIAL to the woken agent's REGISTER")
        yield _labelled(
            "systemx_refusals", "Requests refused, by message type and reason", ["kind", "reason"], r.refusals
        )
        yield r.loop_lag.family("systemx_event_loop_lag_seconds", "How late a periodic event-loop timer ran")


def _labelled(name: str, doc: str, labels: list[str], values: dict[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values.items():
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


class MetricsRecorder:
    """A :class:`~systemx.core.records.Recorder` that counts for Prometheus.

    The core's events are counted in plain integers and lists (an event costs a
    few additions, no lock, no allocation), turned into Prometheus metrics only
    when ``/metrics`` is scraped: prometheus-client's own counters and
    histograms cost several microseconds per update, tens per call.
    """

    def __init__(self, source: StatsSource | None = None) -> None:
        registry = self.registry = CollectorRegistry(auto_describe=True)
        self.started = time.time()
        if source is not None:
            registry.register(_ScrapeCollector(source, self.started))
        info = Gauge("systemx_build_info", "SystemX version", ["version"], registry=registry)
        info.labels(getattr(systemx, "__version__", "unknown")).set(1)
        self.registrations = 0
        self.unregistrations: dict[str, int] = {}
        self.calls_started = 0
        self.calls_answered = 0
        self.calls: dict[str, int] = {str(d): 0 for d in Disposition}
        self.ring_seconds = _Histogram(_RING_BUCKETS)
        self.setup_seconds = _Histogram(_RING_BUCKETS)
        self.talk_seconds = _Histogram(_TALK_BUCKETS)
        # [up, down]
        self.call_msgs = [0, 0]
        self.call_bytes = [0, 0]
        self.wakes: dict[str, int] = {}
        self.wake_seconds = _Histogram(_WAKE_BUCKETS)
        self.refusals: dict[tuple[str, str], int] = {}
        self.loop_lag = _Histogram(_LAG_BUCKETS)
        registry.register(_EventCollector(self))

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    # -- Recorder ------------------------------------------------------------

    def call_started(self, call_id: str, caller: str, to: str, now: float) -> None:
        self.calls_started += 1

    def call_answered(self, call_id: str, now: float) -> None:
        self.calls_answered += 1

    def call_ended(self, record: CallRecord) -> None:
        calls = self.calls
        disposition = record.disposition.value
        if disposition in calls:
            calls[disposition] += 1
        else:
            calls["other"] = calls.get("other", 0) + 1
        if record.rang_at is not None:
            self.ring_seconds.observe(record.ring_seconds)
        answered_at = record.answered_at
        if answered_at is not None:
            self.setup_seconds.observe(max(answered_at - record.dialled_at, 0.0))
            self.talk_seconds.observe(record.talk_seconds)
        if record.msgs_up or record.msgs_down:
            msgs, data = self.call_msgs, self.call_bytes
            msgs[0] += record.msgs_up
            msgs[1] += record.msgs_down
            data[0] += record.bytes_up
            data[1] += record.bytes_down
        if record.reason == _WAKE_FAILED:
            self.wakes["failed"] = self.wakes.get("failed", 0) + 1
        if record.woken and record.wake_seconds is not None:
            self.wake_seconds.observe(record.wake_seconds)

    def bound(self, address: str, session_id: str, now: float, *, woken: bool = False) -> None:
        self.registrations += 1
        if woken:
            self.wakes["woken"] = self.wakes.get("woken", 0) + 1

    def unbound(
        self, address: str, session_id: str, reason: str, now: float, *, asleep: bool = False
    ) -> None:
        key = _bounded(reason, _REASONS)
        self.unregistrations[key] = self.unregistrations.get(key, 0) + 1

    def refused(
        self,
        kind: str,
        reason: str,
        address: str | None,
        now: float,
        *,
        session: str = "",
        by: str | None = None,
    ) -> None:
        key = (_bounded(kind, _KINDS), _bounded(reason, _REASONS))
        self.refusals[key] = self.refusals.get(key, 0) + 1


_WAKE_FAILED = str(codes.BusyReason.WAKE_FAILED)


_DISPOSITIONS = frozenset(str(d) for d in Disposition)


class LoopLag:
    """Observes the event loop's lag into ``histogram`` every ``interval`` seconds."""

    def __init__(self, observe: Any, interval: float = 0.5) -> None:
        self._observe = observe
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        #: The last lag measured, seconds.
        self.last = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arm()

    def _arm(self) -> None:
        self._due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        self.last = max(self._loop.time() - self._due, 0.0)
        self._observe(self.last)
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def scraped_names() -> Iterable[str]:
    """The metric names read from a :class:`StatsSource` (for the docs and tests)."""
    return (name for _kind, name, _doc in _SCRAPED.values())
