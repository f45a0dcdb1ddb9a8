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
    recorder.refused("REGISTER", "address_in_use", "b@y.com", 122.0)


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
    # One INFO line per call, at its end, naming both parties.
    assert [r.getMessage() for r in caplog.records] == [
        "Call ended: c1 (duration 7.250s, reason normal): a@x.com → b@y.com, answered, ended by caller",
        "Connection registered: b@y.com (session: s-b)",
        "Woken: b@y.com",
        "Asleep: b@y.com (session: s-b, sleep)",
        "Connection unregistered: a@x.com (session: s-a, disconnected)",
    ]


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
        "Call ended: c9 (duration 30.000s, reason timeout): a@x.com → b@y.com, no_answer, ended by exchange"
    )


def test_log_recorder_logs_the_start_of_a_call_at_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.records.exchange")
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        LogRecorder(logger).call_started("c1", "a@x.com", "b@y.com", 100.0)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "Call initiated: a@x.com → b@y.com (call: c1)")
    ]
