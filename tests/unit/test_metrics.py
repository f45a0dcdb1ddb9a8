"""The metrics recorder: what each event counts, bounded labels, scrape-time counters, loop lag."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from systemx.core.records import Disposition, EndedBy, call_record
from systemx.server.metrics import LoopLag, MetricsRecorder
from tests.wsclient import TIMEOUT


def _samples(metrics: MetricsRecorder) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


class Stats:
    def __init__(self) -> None:
        self.values = {"connections": 3, "msgs_received": 41, "bytes_received": 999, "calls_ringing": 1}

    def stats(self) -> dict[str, int]:
        return dict(self.values)


def test_call_events_count_by_disposition_with_times() -> None:
    metrics = MetricsRecorder()
    metrics.call_started("c1", "a@example.com", "b@example.com", 100.0)
    metrics.call_answered("c1", 100.5)
    metrics.call_ended(
        call_record(
            call_id="c1",
            caller="a@example.com",
            callee="b@example.com",
            dialled_at=100.0,
            rang_at=100.1,
            answered_at=100.5,
            ended_at=112.5,
            disposition=Disposition.ANSWERED,
            reason="normal",
            ended_by=EndedBy.CALLER,
            msgs_up=7,
            msgs_down=2,
            bytes_up=70,
            bytes_down=20,
        )
    )
    metrics.call_ended(
        call_record(
            call_id="c2",
            caller="a@example.com",
            callee="z@example.com",
            dialled_at=101.0,
            ended_at=101.0,
            disposition=Disposition.BUSY,
            reason="no_such_address",
            ended_by=EndedBy.EXCHANGE,
        )
    )
    s = _samples(metrics)
    assert s[("systemx_calls_started_total", ())] == 1
    assert s[("systemx_calls_answered_total", ())] == 1
    assert s[("systemx_calls_total", (("disposition", "answered"),))] == 1
    assert s[("systemx_calls_total", (("disposition", "busy"),))] == 1
    assert s[("systemx_calls_total", (("disposition", "no_answer"),))] == 0
    # Rang 0.4 s, talked 12 s; only the call that rang has a ring time.
    assert s[("systemx_call_ring_seconds_count", ())] == 1
    assert abs(s[("systemx_call_ring_seconds_sum", ())] - 0.4) < 1e-9
    assert s[("systemx_call_talk_seconds_sum", ())] == 12.0
    assert s[("systemx_call_setup_seconds_sum", ())] == 0.5
    assert s[("systemx_call_messages_total", (("direction", "up"),))] == 7
    assert s[("systemx_call_message_bytes_total", (("direction", "down"),))] == 20


def test_labels_are_bounded_and_never_an_address() -> None:
    metrics = MetricsRecorder()
    metrics.bound("a@example.com", "s1", 1.0)
    metrics.bound("w@example.com", "s2", 2.0, woken=True)
    metrics.unbound("a@example.com", "s1", "disconnected", 3.0)
    metrics.unbound("a@example.com", "s1", "made-up reason a@example.com", 3.0)
    metrics.refused("DIAL", "rate_limited", "b@example.com", 4.0)
    metrics.refused("NOT_A_TYPE", "whatever", "b@example.com", 4.0)
    text = metrics.exposition().decode()
    assert "example.com" not in text
    s = _samples(metrics)
    assert s[("systemx_registered_total", ())] == 2
    assert s[("systemx_wakes_total", (("result", "woken"),))] == 1
    assert s[("systemx_unregistered_total", (("reason", "disconnected"),))] == 1
    assert s[("systemx_unregistered_total", (("reason", "other"),))] == 1
    assert s[("systemx_refusals_total", (("kind", "DIAL"), ("reason", "rate_limited")))] == 1
    assert s[("systemx_refusals_total", (("kind", "other"), ("reason", "other")))] == 1


def test_scrape_time_counters_and_a_registry_of_its_own() -> None:
    source = Stats()
    metrics = MetricsRecorder(source)
    s = _samples(metrics)
    assert s[("systemx_connections", ())] == 3
    assert s[("systemx_messages_received_total", ())] == 41
    assert s[("systemx_calls_ringing", ())] == 1
    # Keys the source does not give are not exported.
    assert ("systemx_records_queued", ()) not in s
    source.values["msgs_received"] = 50
    assert _samples(metrics)[("systemx_messages_received_total", ())] == 50
    # Two recorders in one process do not collide, and the global registry stays clean.
    MetricsRecorder(source)
    assert REGISTRY.get_sample_value("systemx_connections") is None


async def test_loop_lag_is_measured() -> None:
    seen: list[float] = []
    got = asyncio.Event()

    def observe(value: float) -> None:
        seen.append(value)
        got.set()

    lag = LoopLag(observe, interval=0.01)
    lag.start(asyncio.get_running_loop())
    try:
        # Keep the loop busy past the timer's due time: it runs late by about that much.
        time.sleep(0.1)
        await asyncio.wait_for(got.wait(), TIMEOUT)
    finally:
        lag.stop()
    assert seen[0] >= 0.05


def test_histograms_count_into_cumulative_le_buckets() -> None:
    metrics = MetricsRecorder()
    for lag in (0.001, 0.0011, 0.3, 7.0):  # on a bound, just past it, inside, past the last
        metrics.loop_lag.observe(lag)
    s = _samples(metrics)
    bucket = "systemx_event_loop_lag_seconds_bucket"
    assert s[(bucket, (("le", "0.001"),))] == 1  # a value equal to a bound is in its bucket
    assert s[(bucket, (("le", "0.0025"),))] == 2
    assert s[(bucket, (("le", "0.25"),))] == 2
    assert s[(bucket, (("le", "0.5"),))] == 3
    assert s[(bucket, (("le", "2.5"),))] == 3
    assert s[(bucket, (("le", "+Inf"),))] == 4
    assert s[("systemx_event_loop_lag_seconds_count", ())] == 4
    assert abs(s[("systemx_event_loop_lag_seconds_sum", ())] - 7.3021) < 1e-9
    # Histograms nobody observed are exported empty, counters at zero.
    assert s[("systemx_wake_seconds_count", ())] == 0
    assert s[("systemx_calls_started_total", ())] == 0
