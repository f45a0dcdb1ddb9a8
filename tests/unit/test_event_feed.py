"""The live event feed: nothing kept while nobody watches, every event for each viewer, slow ones bounded."""

from __future__ import annotations

import json

from systemx.core.records import Disposition, EndedBy, call_record
from systemx.server.admin import events
from systemx.server.admin.events import EventFeed


def _events(chunk: bytes) -> list[tuple[str, dict[str, object]]]:
    out = []
    for block in chunk.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        out.append((name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return out


def test_nothing_is_kept_while_nobody_watches() -> None:
    feed = EventFeed()
    feed.call_started("c1", "a@x.com", "b@y.com", 1.0)
    feed.bound("a@x.com", "s1", 1.0)
    assert feed._parties == {} and feed.viewers == []


def test_each_viewer_gets_every_event_in_order() -> None:
    feed = EventFeed()
    first, second = feed.subscribe(), feed.subscribe()
    feed.bound("a@x.com", "s-a", 1.0)
    feed.call_started("c1", "a@x.com", "b@y.com", 2.0)
    feed.call_answered("c1", 2.5)
    feed.call_ended(
        call_record(
            call_id="c1",
            caller="a@x.com",
            callee="b@y.com",
            dialled_at=2.0,
            rang_at=2.0,
            answered_at=2.5,
            ended_at=4.0,
            disposition=Disposition.ANSWERED,
            reason="normal",
            ended_by=EndedBy.CALLEE,
        )
    )
    feed.refused("DIAL", "busy", "b@y.com", 5.0, session="s-a", by="a@x.com")
    feed.unbound("a@x.com", "s-a", "disconnected", 6.0)
    assert first.ready.is_set()
    got = _events(first.take())
    assert not first.ready.is_set() and first.take() == b""
    assert _events(second.take()) == got
    assert [name for name, _ in got] == [
        "registered",
        "call_started",
        "call_answered",
        "call_ended",
        "refused",
        "unregistered",
    ]
    assert got[2][1] == {
        "event": "call_answered",
        "time": 2.5,
        "call_id": "c1",
        "caller": "a@x.com",
        "callee": "b@y.com",
    }
    ended = got[3][1]
    assert (ended["disposition"], ended["ended_by"], ended["duration_s"]) == ("answered", "callee", 1.5)
    assert got[4][1]["by"] == "a@x.com" and got[4][1]["kind"] == "DIAL"
    feed.unsubscribe(first)
    feed.unsubscribe(second)
    assert feed.viewers == [] and feed._parties == {}


def test_a_slow_viewer_loses_the_oldest_and_is_told() -> None:
    feed = EventFeed()
    viewer = feed.subscribe()
    limit = events.MAX_QUEUED
    for n in range(limit + 5):
        feed.bound(f"u{n}@x.com", f"s{n}", float(n))
    got = _events(viewer.take())
    assert got[0] == ("dropped", {"event": "dropped", "count": 5})
    assert len(got) == limit + 1
    assert got[1][1]["address"] == "u5@x.com"  # the oldest five went
