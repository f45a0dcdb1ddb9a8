"""The endpoint port's recording implementation, and the events port's recorders."""

from __future__ import annotations

import logging

import msgspec
import pytest

from systemx.core.endpoint import Endpoint, RecordingEndpoint
from systemx.core.records import (
    CallRecord,
    Disposition,
    EndedBy,
    FanoutRecorder,
    LogRecorder,
    NullRecorder,
    Recorder,
    RecordingRecorder,
    call_record,
)

# --------------------------------------------------------------------------
# RecordingEndpoint


def test_recording_endpoint_keeps_frames_in_order_and_decodes_them() -> None:
    ep: Endpoint = RecordingEndpoint("alice")
    ep.send(b'{"type":"RING","from":"b@y.com","call_id":"c1"}')
    ep.send(b'{"type":"HANGUP","call_id":"c1","reason":"normal"}')
    assert isinstance(ep, RecordingEndpoint)
    assert ep.frames == [
        b'{"type":"RING","from":"b@y.com","call_id":"c1"}',
        b'{"type":"HANGUP","call_id":"c1","reason":"normal"}',
    ]
    assert ep.types() == ["RING", "HANGUP"]
    assert ep.of_type("HANGUP") == [{"type": "HANGUP", "call_id": "c1", "reason": "normal"}]
    assert ep.take()[0]["from"] == "b@y.com"
    assert ep.frames == [] and ep.messages() == []


def test_recording_endpoint_drops_frames_after_close() -> None:
    ep = RecordingEndpoint()
    ep.send(b"{}")
    ep.close(4000, "sleep")
    ep.send(b'{"type":"MSG"}')
    assert ep.closed and ep.closes == [(4000, "sleep")]
    assert ep.frames == [b"{}"] and ep.dropped == 1
    assert "closed" in repr(ep)


def test_recording_endpoint_reports_a_frame_that_is_not_json() -> None:
    ep = RecordingEndpoint()
    ep.send(b"{not json")
    with pytest.raises(msgspec.DecodeError):
        ep.messages()


# --------------------------------------------------------------------------
# CallRecord


def test_call_record_derives_ring_and_talk_time() -> None:
    answered = call_record(
        call_id="c1",
        caller="a@x.com",
        callee="b@y.com",
        dialled_at=100.0,
        rang_at=100.5,
        answered_at=103.0,
        ended_at=110.0,
        disposition=Disposition.ANSWERED,
        reason="normal",
        ended_by=EndedBy.CALLEE,
        msgs_up=3,
        bytes_up=120,
    )
    assert (answered.ring_seconds, answered.talk_seconds) == (2.5, 7.0)
    missed = call_record(
        call_id="c2",
        caller="a@x.com",
        callee="b@y.com",
        dialled_at=100.0,
        rang_at=101.0,
        ended_at=131.0,
        disposition=Disposition.NO_ANSWER,
        reason="timeout",
        ended_by=EndedBy.EXCHANGE,
    )
    assert (missed.ring_seconds, missed.talk_seconds) == (30.0, 0.0)
    refused = call_record(
        call_id="c3",
        caller="a@x.com",
        callee="b@y.com",
        dialled_at=100.0,
        ended_at=100.0,
        disposition=Disposition.BUSY,
        reason="dnd",
        ended_by=EndedBy.EXCHANGE,
    )
    assert (refused.ring_seconds, refused.talk_seconds, refused.rang_at) == (0.0, 0.0, None)


def test_call_record_round_trips_as_json() -> None:
    record = call_record(
        call_id="c1",
        caller="a@x.com",
        callee="b@Y.com",
        dialled_at=1.0,
        rang_at=2.0,
        answered_at=3.0,
        ended_at=4.0,
        disposition=Disposition.ANSWERED,
        reason="normal",
        ended_by=EndedBy.CALLER,
        caller_node="n1",
        callee_node="n2",
        msgs_up=1,
        msgs_down=2,
        bytes_up=3,
        bytes_down=4,
        woken=True,
        wake_seconds=0.8,
    )
    data = msgspec.json.encode(record)
    assert msgspec.json.decode(data)["disposition"] == "answered"
    assert msgspec.json.decode(data, type=CallRecord) == record


# --------------------------------------------------------------------------
# Recorders


def _feed(recorder: Recorder, record: CallRecord) -> None:
    recorder.call_started("c1", "a@x.com", "b@y.com", 100.0)
    recorder.call_answered("c1", 103.0)
    recorder.call_ended(record)
    recorder.bound("b@y.com", "s-b", 99.0, woken=True)
    recorder.unbound("b@y.com", "s-b", "sleep", 120.0, asleep=True)
    recorder.unbound("a@x.com", "s-a", "disconnected", 121.0)
    recorder.refused("REGISTER", "address_in_use", "b@y.com", 122.0, session="s-c")


RECORD = call_record(
    call_id="c1",
    caller="a@x.com",
    callee="b@y.com",
    dialled_at=100.0,
    rang_at=100.5,
    answered_at=103.0,
    ended_at=110.25,
    disposition=Disposition.ANSWERED,
    reason="normal",
    ended_by=EndedBy.CALLER,
)


def test_recording_recorder_keeps_every_event() -> None:
    rec = RecordingRecorder()
    _feed(rec, RECORD)
    assert rec.names() == [
        "call_started",
        "call_answered",
        "call_ended",
        "bound",
        "unbound",
        "unbound",
        "refused",
    ]
    assert rec.events[3] == ("bound", "b@y.com", "s-b", 99.0, True)
    assert rec.events[4] == ("unbound", "b@y.com", "s-b", "sleep", 120.0, True)
    assert rec.records == [RECORD]


def test_null_recorder_accepts_every_event() -> None:
    _feed(NullRecorder(), RECORD)


class _Broken(NullRecorder):
    def call_ended(self, record: CallRecord) -> None:
        raise RuntimeError("sink is down")


def test_fanout_feeds_each_recorder_and_survives_a_failing_one(caplog: pytest.LogCaptureFixture) -> None:
    first, last = RecordingRecorder(), RecordingRecorder()
    fanout = FanoutRecorder(first, _Broken(), last)
    with caplog.at_level(logging.ERROR, logger="systemx.records"):
        _feed(fanout, RECORD)
    assert first.events == last.events and len(last.events) == 7
    assert last.records == [RECORD]
    failures = [r for r in caplog.records if r.name == "systemx.records"]
    assert len(failures) == 1
    assert "failed on call_ended" in failures[0].getMessage() and failures[0].exc_info is not None


def test_log_recorder_writes_the_exchange_lines(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.records.exchange")
    with caplog.at_level(logging.INFO, logger=logger.name):
        _feed(LogRecorder(logger), RECORD)
    # A call's INFO lines: its answer and its end, both naming both parties.
    assert [r.getMessage() for r in caplog.records] == [
        "Call answered: a@x.com → b@y.com (call: c1)",
        "Call ended: a@x.com → b@y.com (call: c1, answered, duration 7.250s, reason normal, ended by caller)",
        "Connection registered: b@y.com (session: s-b)",
        "Woken: b@y.com",
        "Asleep: b@y.com (session: s-b, sleep)",
        "Connection unregistered: a@x.com (session: s-a, disconnected)",
        "Registration refused: b@y.com (session: s-c, address_in_use)",
    ]
    # The facts ride along as fields, for the JSON format.
    fields = [
        {k: getattr(r, k, None) for k in ("event", "address", "to", "call_id", "session")}
        for r in caplog.records
    ]
    assert fields[0] == {
        "event": "call_answered",
        "address": "a@x.com",
        "to": "b@y.com",
        "call_id": "c1",
        "session": None,
    }
    ended = caplog.records[1]
    assert (ended.event, ended.disposition, ended.duration_s, ended.reason, ended.ended_by) == (  # type: ignore[attr-defined]
        "call_ended",
        "answered",
        7.25,
        "normal",
        "caller",
    )
    assert [f["event"] for f in fields[2:]] == [
        "registered",
        "woken",
        "asleep",
        "unregistered",
        "register_refused",
    ]
    assert caplog.records[-1].reason == "address_in_use"  # type: ignore[attr-defined]


def test_log_recorder_times_an_unanswered_call_from_the_dial(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.records.exchange")
    missed = call_record(
        call_id="c9",
        caller="a@x.com",
        callee="b@y.com",
        dialled_at=100.0,
        rang_at=100.0,
        ended_at=130.0,
        disposition=Disposition.NO_ANSWER,
        reason="timeout",
        ended_by=EndedBy.EXCHANGE,
    )
    with caplog.at_level(logging.INFO, logger=logger.name):
        LogRecorder(logger).call_ended(missed)
    assert caplog.records[0].getMessage() == (
        "Call ended: a@x.com → b@y.com (call: c9, no_answer, duration 30.000s, reason timeout, "
        "ended by exchange)"
    )


def test_log_recorder_tells_refused_calls_and_registrations_once_a_second_per_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.records.exchange")
    rec = LogRecorder(logger)
    with caplog.at_level(logging.INFO, logger=logger.name):
        for i in range(5):  # a flood from one session: one line, the rest held back
            rec.refused("DIAL", "no_such_address", "x@y.com", 10.0 + i / 10, session="s-a", by="a@x.com")
        rec.refused("DIAL", "busy", "b@y.com", 10.5, session="s-b", by="b@x.com")  # another session
        rec.refused("DIAL", "occupied", "c@y.com", 11.2, session="s-a", by="a@x.com")
        # Told at WARN by the core already, or not a REGISTER/DIAL: not repeated here.
        rec.refused("DIAL", "forbidden", "c@y.com", 20.0, session="s-c", by="c@x.com")
        rec.refused("REGISTER", "rate_limited", "c@y.com", 20.0, session="s-d")
        rec.refused("JOIN", "forbidden", "room@y.com", 20.0, session="s-e", by="e@x.com")
    assert [r.getMessage() for r in caplog.records] == [
        "Call refused: a@x.com → x@y.com (session: s-a, no_such_address)",
        "Call refused: b@x.com → b@y.com (session: s-b, busy)",
        "Call refused: a@x.com → c@y.com (session: s-a, occupied; 4 similar line(s) held back)",
    ]
    first = caplog.records[0]
    assert (first.event, first.address, first.to, first.reason) == (  # type: ignore[attr-defined]
        "call_refused",
        "a@x.com",
        "x@y.com",
        "no_such_address",
    )


def test_log_recorder_refusal_table_stays_bounded() -> None:
    rec = LogRecorder(logging.getLogger("test.records.quiet"))
    logging.getLogger("test.records.quiet").setLevel(logging.INFO)
    logging.getLogger("test.records.quiet").propagate = False
    for i in range(10_000):
        rec.refused("DIAL", "busy", "b@y.com", i * 0.001, session=f"s-{i}")
    assert len(rec._refusals) <= 4096


def test_log_recorder_logs_the_start_of_a_call_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.records.exchange")
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        LogRecorder(logger).call_started("c1", "a@x.com", "b@y.com", 100.0)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "Call initiated: a@x.com → b@y.com (call: c1)")
    ]
