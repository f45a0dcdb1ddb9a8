"""Phase 1 rules of the core: registration, calls, MSG relay, liveness, bad input."""

from __future__ import annotations

import msgspec
import pytest

from systemx.core import SWEEP, RingTimer
from systemx.core.timerkeys import TrunkTimer
from tests.unit.harness import Harness


@pytest.fixture
def h() -> Harness:
    return Harness(call_timeout_ms=30_000, heartbeat_timeout_ms=60_000, heartbeat_interval_ms=30_000)


def pair(h: Harness) -> Harness:
    assert h.register("A", "alice@example.com")["type"] == "REGISTERED"
    assert h.register("B", "bob@example.com")["type"] == "REGISTERED"
    return h


# ------------------------------------------------------------------ register


def test_register_answers_registered_with_uuid_session_id(h: Harness) -> None:
    reply = h.register("A", "alice@example.com")
    assert reply["type"] == "REGISTERED"
    assert reply["address"] == "alice@example.com"
    import uuid

    uuid.UUID(reply["session_id"])


@pytest.mark.parametrize("auth", ["token-123", {"token": "t", "scheme": "bearer"}, ["a", 1], 7, None])
def test_register_accepts_any_auth_value_unchecked(h: Harness, auth: object) -> None:
    h.open("A")
    h.send("A", {"type": "REGISTER", "address": "alice@example.com", "auth": auth})
    reply = h.frames("A")[-1]
    assert reply["type"] == "REGISTERED" and reply["address"] == "alice@example.com"


def test_second_register_same_socket_same_address_repeats_registered(h: Harness) -> None:
    first = h.register("A", "alice@example.com")
    second = h.register("A", "alice@example.com")
    assert second == first


@pytest.mark.parametrize(
    "address",
    [
        "alice",
        "alice@example",
        "@example.com",
        "a b@example.com",
        "a@b@example.com",
        "a@.com",
        "a@b.",
        "x" * 250 + "@a.com",
    ],
)
def test_invalid_addresses_are_refused(h: Harness, address: str) -> None:
    reply = h.register("A", address)
    assert reply["type"] == "REGISTER_FAILED"
    assert reply["reason"] == "invalid_address"
    assert h.closes("A") == []


def test_address_in_use_by_other_socket(h: Harness) -> None:
    h.register("A", "alice@example.com")
    reply = h.register("B", "alice@EXAMPLE.com")
    assert reply["type"] == "REGISTER_FAILED" and reply["reason"] == "address_in_use"


def test_domain_is_case_insensitive_local_part_is_not(h: Harness) -> None:
    h.register("A", "alice@example.com")
    assert h.register("B", "Alice@example.com")["type"] == "REGISTERED"
    h.send("B", {"type": "DIAL", "to": "alice@Example.COM", "ringing": True})
    assert h.frames("B")[-1] == {"type": "RINGING", "call_id": "call-1", "to": "alice@Example.COM"}
    assert h.frames("A")[-1]["type"] == "RING"


def test_unregister_frees_address_and_closes(h: Harness) -> None:
    h.register("A", "alice@example.com")
    h.send("A", {"type": "UNREGISTER"})
    assert h.closes("A") == [(4000, "client_requested")]
    h.close("A")
    assert h.register("B", "alice@example.com")["type"] == "REGISTERED"


def test_reregister_new_address_frees_old(h: Harness) -> None:
    h.register("A", "alice@example.com")
    h.register("A", "alicia@example.com")
    assert h.register("B", "alice@example.com")["type"] == "REGISTERED"


def test_register_metadata_validated(h: Harness) -> None:
    h.open("A")
    h.send("A", {"type": "REGISTER", "address": "a@b.co", "metadata": {"location": {"lat": 91, "lon": 0}}})
    err = h.frames("A")[-1]
    assert err["type"] == "REGISTER_FAILED" and err["reason"] == "invalid_payload"
    assert "lat" in err["detail"]
    h.send("A", {"type": "REGISTER", "address": "a@b.co", "metadata": {"capabilities": "chat"}})
    assert h.frames("A")[-1]["type"] == "REGISTER_FAILED"


@pytest.mark.parametrize(
    "extra",
    [
        {"max_listeners": 3},
        {"concurrency": "parallel", "max_listeners": 3},
        {"concurrency": "single", "max_sessions": 2},
        {"concurrency": "parallel", "max_sessions": 0},
        {"concurrency": "bogus"},
        {"mode": "sleepy"},
        {"wake_handler": {"type": "webhook", "url": "http://x.example/"}},
        {"mode": "wake_on_ring"},
    ],
)
def test_register_bad_options_fail(h: Harness, extra: dict[str, object]) -> None:
    h.open("A")
    h.send("A", {"type": "REGISTER", "address": "a@b.co", **extra})
    reply = h.frames("A")[-1]
    assert reply["type"] == "REGISTER_FAILED" and reply["reason"] == "invalid_payload"
    assert reply["address"] == "a@b.co" and reply["detail"]
    assert h.x.session_for("a@b.co") is None


# ---------------------------------------------------------------- heartbeat


def test_heartbeat_ack_epoch_ms_even_unregistered(h: Harness) -> None:
    h.open("A")
    h.send("A", {"type": "HEARTBEAT"})
    assert h.frames("A") == [{"type": "HEARTBEAT_ACK", "timestamp": int(h.now * 1000)}]


def test_stale_session_swept(h: Harness) -> None:
    pair(h)
    call_id = h.connect("A", "B")
    h.now += 45
    h.send("B", {"type": "HEARTBEAT"})
    h.fire(SWEEP, advance=20)  # A's last heartbeat is 65 s old, B's 20 s
    assert h.closes("A") == [(4000, "timeout")]
    assert h.closes("B") == []
    assert {"type": "HANGUP", "call_id": call_id, "reason": "timeout"} in h.frames("B")
    assert h.x.session_for("alice@example.com") is None
    assert SWEEP in h.actions.timers


# ---------------------------------------------------------------------- calls


def test_full_call_flow(h: Harness) -> None:
    pair(h)
    h.send("A", {"type": "DIAL", "to": "bob@example.com", "metadata": {"subject": "hi"}, "ringing": True})
    assert h.frames("A") == [{"type": "RINGING", "call_id": "call-1", "to": "bob@example.com"}]
    assert h.frames("B") == [
        {"type": "RING", "from": "alice@example.com", "call_id": "call-1", "metadata": {"subject": "hi"}}
    ]
    assert h.actions.timers[h.timer(RingTimer, "call-1")] == 30.0
    h.send("B", {"type": "ANSWER", "call_id": "call-1"})
    assert h.frames("A") == [{"type": "CONNECTED", "call_id": "call-1", "to": "bob@example.com"}]
    assert h.timer(RingTimer, "call-1") is None
    h.send("A", {"type": "MSG", "call_id": "call-1", "data": "hello", "from": "mallory@evil.com"})
    assert h.frames("B") == [
        {
            "type": "MSG",
            "call_id": "call-1",
            "from": "alice@example.com",
            "data": "hello",
            "content_type": "text",
        }
    ]
    h.send("B", {"type": "MSG", "call_id": "call-1", "data": {"k": [1, 2]}, "content_type": "json"})
    assert h.frames("A") == [
        {
            "type": "MSG",
            "call_id": "call-1",
            "from": "bob@example.com",
            "data": {"k": [1, 2]},
            "content_type": "json",
        }
    ]
    h.send("A", {"type": "MSG", "call_id": "call-1", "data": "AAEC", "content_type": "binary"})
    assert h.frames("B")[-1]["content_type"] == "binary"
    h.send("A", {"type": "HANGUP", "call_id": "call-1"})
    assert h.frames("B") == [{"type": "HANGUP", "call_id": "call-1", "reason": "normal"}]
    assert h.frames("A") == []
    assert h.x.call("call-1") is None


def test_msg_splices_raw_data_byte_for_byte(h: Harness) -> None:
    pair(h)
    cid = h.connect("A", "B")
    h.send("A", b'{"type":"MSG","call_id":"%s","data":{"b": 1.50, "a":"\\u00e9"}}' % cid.encode())
    raw = h.actions.sent[-1][1]
    assert b'"data":{"b": 1.50, "a":"\\u00e9"},' in raw


def test_hangup_reason_relayed(h: Harness) -> None:
    pair(h)
    cid = h.connect("A", "B")
    h.send("B", {"type": "HANGUP", "call_id": cid, "reason": "done"})
    assert h.frames("A") == [{"type": "HANGUP", "call_id": cid, "reason": "done"}]


def test_second_answer_changes_nothing(h: Harness) -> None:
    pair(h)
    cid = h.connect("A", "B")
    h.send("B", {"type": "ANSWER", "call_id": cid})
    assert h.frames("A") == []
    assert h.frames("B") == []
    call = h.x.call(cid)
    assert call is not None and call.state.value == "connected"


def test_caller_cancels_while_ringing(h: Harness) -> None:
    pair(h)
    h.send("A", {"type": "DIAL", "to": "bob@example.com", "ringing": True})
    cid = h.frames("A")[0]["call_id"]
    h.frames("B")
    h.send("A", {"type": "HANGUP", "call_id": cid})
    assert h.frames("B") == [{"type": "HANGUP", "call_id": cid, "reason": "normal"}]
    assert h.x.call(cid) is None
    h.send("B", {"type": "ANSWER", "call_id": cid})
    assert h.frames("A") == []


def test_callee_rejects_while_ringing(h: Harness) -> None:
    pair(h)
    h.send("A", {"type": "DIAL", "to": "bob@example.com"})
    cid = h.frames("B")[0]["call_id"]
    h.send("B", {"type": "HANGUP", "call_id": cid})
    assert h.frames("A")[-1] == {"type": "HANGUP", "call_id": cid, "reason": "normal"}


def test_ring_timeout(h: Harness) -> None:
    pair(h)
    h.send("A", {"type": "DIAL", "to": "bob@example.com", "ringing": True})
    cid = h.frames("A")[0]["call_id"]
    h.frames("B")
    h.fire(h.timer(RingTimer, cid))
    assert h.frames("A") == [{"type": "BUSY", "to": "bob@example.com", "reason": "timeout", "call_id": cid}]
    assert h.frames("B") == [{"type": "HANGUP", "call_id": cid, "reason": "timeout"}]
    assert h.x.call(cid) is None



def test_ring_timeout_of_a_plain_dial_names_no_call(h: Harness) -> None:
    # The caller never heard the id (no RINGING asked): BUSY timeout without it, as the reference.
    pair(h)
    h.send("A", {"type": "DIAL", "to": "bob@example.com"})
    assert h.frames("A") == []
    (ring,) = h.frames("B")
    h.fire(h.timer(RingTimer, ring["call_id"]))
    assert h.frames("A") == [{"type": "BUSY", "to": "bob@example.com", "reason": "timeout"}]
    assert h.frames("B") == [{"type": "HANGUP", "call_id": ring["call_id"], "reason": "timeout"}]


def test_msg_while_ringing_ignored_and_foreign_ids_ignored(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    pair(h)
    h.register("C", "carol@example.com")
    h.send("A", {"type": "DIAL", "to": "bob@example.com", "ringing": True})
    cid = h.frames("A")[0]["call_id"]
    h.frames("B")
    h.send("A", {"type": "MSG", "call_id": cid, "data": "early"})
    assert h.frames("B") == []
    h.send("B", {"type": "ANSWER", "call_id": cid})
    h.frames("A")
    for frame in (
        {"type": "MSG", "call_id": cid, "data": "intrude"},
        {"type": "HANGUP", "call_id": cid},
        {"type": "ANSWER", "call_id": cid},
        {"type": "MSG", "call_id": "nope", "data": "x"},
    ):
        h.send("C", frame)
    assert h.frames("A") == [] and h.frames("B") == [] and h.frames("C") == []
    assert h.x.call(cid) is not None
    assert "ignored" in caplog.text


def test_disconnect_mid_call_and_while_ringing(h: Harness) -> None:
    pair(h)
    h.register("C", "carol@example.com")
    cid = h.connect("A", "B")
    h.close("A")
    assert h.frames("B") == [{"type": "HANGUP", "call_id": cid, "reason": "peer_disconnected"}]
    h.send("C", {"type": "DIAL", "to": "bob@example.com", "ringing": True})
    cid2 = h.frames("C")[0]["call_id"]
    h.close("B")
    assert h.frames("C") == [{"type": "HANGUP", "call_id": cid2, "reason": "peer_disconnected"}]
    assert list(h.x.calls) == []


@pytest.mark.parametrize(("status", "reason"), [("dnd", "dnd"), ("away", "away"), ("busy", "busy")])
def test_status_gates_dial(h: Harness, status: str, reason: str) -> None:
    pair(h)
    h.send("B", {"type": "STATUS", "status": status})
    assert h.frames("B") == []
    h.send("A", {"type": "DIAL", "to": "bob@example.com"})
    assert h.frames("A") == [{"type": "BUSY", "to": "bob@example.com", "reason": reason}]


def test_bad_status_is_error(h: Harness) -> None:
    pair(h)
    h.send("B", {"type": "STATUS", "status": "sleeping"})
    assert h.frames("B")[-1]["type"] == "ERROR"


def test_busy_reasons(h: Harness) -> None:
    pair(h)
    h.register("C", "carol@example.com")
    h.send("A", {"type": "DIAL", "to": "nobody@example.com"})
    assert h.frames("A")[-1]["reason"] == "no_such_address"
    h.send("A", {"type": "DIAL", "to": "not an address"})
    assert h.frames("A")[-1]["reason"] == "no_such_address"
    h.send("A", {"type": "DIAL", "to": "alice@example.com"})
    assert h.frames("A")[-1]["reason"] == "already_in_call"
    h.connect("A", "B")
    h.send("C", {"type": "DIAL", "to": "bob@example.com"})
    assert h.frames("C")[-1] == {"type": "BUSY", "to": "bob@example.com", "reason": "already_in_call"}


def test_status_restored_after_call(h: Harness) -> None:
    pair(h)
    h.register("C", "carol@example.com")
    cid = h.connect("A", "B")
    h.send("A", {"type": "HANGUP", "call_id": cid})
    h.send("C", {"type": "DIAL", "to": "bob@example.com", "ringing": True})
    assert h.frames("C")[-1]["type"] == "RINGING"


def test_dial_unregistered_is_error(h: Harness) -> None:
    h.open("A")
    h.send("A", {"type": "DIAL", "to": "bob@example.com"})
    assert h.frames("A") == [
        {
            "type": "ERROR",
            "reason": "not_registered",
            "context": "DIAL",
            "detail": "REGISTER an address before DIAL",
        }
    ]


def test_dial_rate_limit_fixed_window() -> None:
    h = Harness(dial_max_attempts=3, dial_window_ms=10_000)
    pair(h)
    for _ in range(3):
        h.send("A", {"type": "DIAL", "to": "nobody@example.com"})
    assert [f["type"] for f in h.frames("A")] == ["BUSY"] * 3
    h.send("A", {"type": "DIAL", "to": "nobody@example.com"})
    assert h.frames("A") == [
        {"type": "ERROR", "reason": "rate_limited", "context": "DIAL", "detail": "Too many dial attempts"}
    ]
    h.now += 10
    h.send("A", {"type": "DIAL", "to": "nobody@example.com"})
    assert h.frames("A")[-1]["type"] == "BUSY"


def test_parallel_mode_max_sessions() -> None:
    h = Harness()
    h.register("S", "svc@example.com", concurrency="parallel", max_sessions=2)
    for n in "ABC":
        h.register(n, f"{n.lower()}@example.com")
    h.send("A", {"type": "DIAL", "to": "svc@example.com"})
    h.send("B", {"type": "DIAL", "to": "svc@example.com"})
    h.send("C", {"type": "DIAL", "to": "svc@example.com"})
    assert h.frames("C")[-1]["reason"] == "max_sessions_reached"
    rings = h.frames("S")
    assert [r["from"] for r in rings] == ["a@example.com", "b@example.com"]
    assert len({r["call_id"] for r in rings}) == 2


def test_broadcast_mode() -> None:
    h = Harness()
    h.register("S", "radio@example.com", concurrency="broadcast", max_listeners=2)
    for n in "ABC":
        h.register(n, f"{n.lower()}@example.com")
    h.send("A", {"type": "DIAL", "to": "radio@example.com"})
    con = h.frames("A")[-1]
    assert con["type"] == "CONNECTED"
    cid = con["call_id"]
    assert h.frames("S")[-1] == {"type": "RING", "from": "a@example.com", "call_id": cid}
    h.send("B", {"type": "DIAL", "to": "radio@example.com"})
    assert h.frames("B")[-1] == {"type": "CONNECTED", "call_id": cid, "to": "radio@example.com"}
    h.send("C", {"type": "DIAL", "to": "radio@example.com"})
    assert h.frames("C")[-1]["reason"] == "max_listeners_reached"
    h.send("A", {"type": "DIAL", "to": "radio@example.com"})
    assert h.frames("A")[-1]["type"] == "CONNECTED"
    h.frames("S")
    h.send("S", {"type": "MSG", "call_id": cid, "data": "news"})
    for n in "AB":
        assert h.frames(n) == [
            {
                "type": "MSG",
                "call_id": cid,
                "from": "radio@example.com",
                "data": "news",
                "content_type": "text",
            }
        ]
    h.send("A", {"type": "MSG", "call_id": cid, "data": "q"})
    assert h.frames("S")[-1]["from"] == "a@example.com" and h.frames("B") == []
    h.send("A", {"type": "HANGUP", "call_id": cid})
    assert h.frames("A") == [{"type": "HANGUP", "call_id": cid, "reason": "normal"}]
    assert h.frames("S") == [{"type": "HANGUP", "call_id": cid, "reason": "normal", "from": "a@example.com"}]
    h.send("S", {"type": "HANGUP", "call_id": cid})
    assert h.frames("B") == [{"type": "HANGUP", "call_id": cid, "reason": "normal"}]
    assert h.x.call(cid) is None
    h.send("C", {"type": "DIAL", "to": "radio@example.com"})
    assert h.frames("C")[-1]["call_id"] != cid


def test_last_listener_ends_broadcast() -> None:
    h = Harness()
    h.register("S", "radio@example.com", concurrency="broadcast")
    h.register("A", "a@example.com")
    h.send("A", {"type": "DIAL", "to": "radio@example.com"})
    cid = h.frames("A")[-1]["call_id"]
    h.close("A")
    assert h.frames("S")[-1] == {
        "type": "HANGUP",
        "call_id": cid,
        "reason": "peer_disconnected",
        "from": "a@example.com",
    }
    assert h.x.call(cid) is None


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("frame", "context", "detail_part"),
    [
        (b"[]", "UNKNOWN", "Unsupported message type: undefined (expected a JSON object, got list)"),
        (b"{}", "UNKNOWN", "Unsupported message type: undefined"),
        (b"null", "UNKNOWN", "Unsupported message type: undefined (expected a JSON object, got null)"),
        (b'"x"', "UNKNOWN", "Unsupported message type: undefined (expected a JSON object, got str)"),
        (b'{"type":null}', "UNKNOWN", "Unsupported message type: null"),
        (b'{"type":"FROB"}', "UNKNOWN", "Unsupported message type: FROB"),
        (b'{"type":"DIAL"}', "DIAL", "to"),
        (b'{"type":"DIAL","to":5}', "DIAL", "str"),
        (b'{"type":"MSG","call_id":"x","data":"y","content_type":"video"}', "MSG", "content_type"),
        (b'{"type":"ANSWER"}', "ANSWER", "call_id"),
    ],
)
def test_invalid_frames_get_error_and_session_survives(
    h: Harness, frame: bytes, context: str, detail_part: str
) -> None:
    h.register("A", "alice@example.com")
    h.send("A", frame)
    err = h.frames("A")[-1]
    assert err["type"] == "ERROR" and err["reason"] == "invalid_payload"
    assert err["context"] == context and detail_part in err["detail"]
    assert h.closes("A") == []
    h.send("A", {"type": "HEARTBEAT"})
    assert h.frames("A")[-1]["type"] == "HEARTBEAT_ACK"


def test_unparsable_json_closes_1003(h: Harness) -> None:
    h.register("A", "alice@example.com")
    h.send("A", b"{nope")
    assert h.closes("A") == [(1003, "Invalid JSON")]


def test_invalid_utf8_closes_1007(h: Harness) -> None:
    pair(h)
    cid = h.connect("A", "B")
    h.send("A", b'{"type":"MSG","call_id":"%s","data":"\xff\xfe"}' % cid.encode())
    assert h.closes("A") == [(1007, "Invalid UTF-8")]
    assert h.frames("B") == []
    h.send("B", b'{"type":"HEARTBEAT","x":"\xc3"}')
    assert h.closes("B") == [(1007, "Invalid UTF-8")]


def test_shutdown_hangs_up_and_closes(h: Harness) -> None:
    pair(h)
    cid = h.connect("A", "B")
    h.x.shutdown(h.now)
    assert h.frames("A") == [{"type": "HANGUP", "call_id": cid, "reason": "shutdown"}]
    assert h.frames("B") == [{"type": "HANGUP", "call_id": cid, "reason": "shutdown"}]
    assert h.closes("A") == [(1001, "shutdown")] and h.closes("B") == [(1001, "shutdown")]


def test_health_counts(h: Harness) -> None:
    pair(h)
    h.connect("A", "B")
    health = h.x.health()
    assert health["status"] == "ok" and health["sessions"] == 2 and health["registered"] == 2
    assert health["calls"] == 1


def test_encoded_frames_are_valid_json(h: Harness) -> None:
    pair(h)
    h.connect("A", "B")
    for _, data in h.actions.sent:
        msgspec.json.decode(data)


def test_generated_ids_are_random_version_4_uuids() -> None:
    import uuid

    from systemx.core.ids import uuid4 as _uuid4

    ids = [_uuid4() for _ in range(600)]  # crosses the 256-id entropy blocks
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


def test_repeated_bad_input_warnings_are_rate_limited(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.register("A", "alice@example.com")
    for _ in range(50):
        h.send("A", {"type": "MSG", "call_id": "nope", "data": "x"})
    assert caplog.text.count("MSG ignored") == 1
    h.now += 1.5
    h.send("A", {"type": "MSG", "call_id": "nope", "data": "x"})
    assert caplog.text.count("MSG ignored") == 2
    assert "(49 similar warnings suppressed)" in caplog.text


# ---------------------------------------------------------------- federation


def test_register_pbx_makes_a_trunk(h: Harness) -> None:
    h.open("P")
    h.send("P", {"type": "REGISTER_PBX", "domain": "sub.example.com", "routes": ["*@sub.example.com"]})
    assert h.frames("P") == [{"type": "REGISTERED_PBX", "domain": "sub.example.com"}]
    assert h.x.health()["trunks"] == 1


def test_register_pbx_without_routes_is_refused(h: Harness) -> None:
    h.open("P")
    h.send(
        "P",
        {"type": "REGISTER_PBX", "domain": "sub.example.com", "routes": [], "auth": {"token": "t"}},
    )
    (error,) = h.frames("P")
    assert error["type"] == "ERROR" and error["context"] == "REGISTER_PBX"
    assert "routes" in error["detail"]
    assert h.closes("P") == [] and h.x.health()["trunks"] == 0


def test_dial_forward_needs_a_trunk(h: Harness) -> None:
    h.open("P")
    h.send("P", {"type": "DIAL_FORWARD", "from": "a@x.example.com", "to": "b@example.com", "call_id": "c1"})
    assert h.frames("P") == [
        {
            "type": "ERROR",
            "reason": "invalid_payload",
            "context": "DIAL_FORWARD",
            "detail": "DIAL_FORWARD is for trunks: send REGISTER_PBX on this connection first",
        }
    ]
    assert h.closes("P") == []


def test_call_from_a_trunk_to_a_local_callee_and_back(h: Harness) -> None:
    h.register("B", "bob@example.com")
    h.frames("B")
    h.open("P")
    h.send("P", {"type": "REGISTER_PBX", "domain": "sub.example.com", "routes": ["*@sub.example.com"]})
    h.frames("P")
    h.send(
        "P", {"type": "DIAL_FORWARD", "from": "a@sub.example.com", "to": "bob@example.com", "call_id": "c1"}
    )
    assert [f["type"] for f in h.frames("B")] == ["RING"]
    assert h.frames("P") == [{"type": "RING", "call_id": "c1", "from": "bob@example.com"}]
    h.send("B", {"type": "ANSWER", "call_id": "c1"})
    assert h.frames("P") == [{"type": "ANSWER", "call_id": "c1", "from": "bob@example.com"}]
    # A MSG from the trunk carries the leg's address, whatever "from" the trunk wrote.
    h.send("P", {"type": "MSG", "call_id": "c1", "from": "mallory@example.com", "data": "hi"})
    (msg,) = h.frames("B")
    assert msg["from"] == "a@sub.example.com" and msg["data"] == "hi"
    h.send("B", {"type": "MSG", "call_id": "c1", "data": "yo"})
    (back,) = h.frames("P")
    assert back["from"] == "bob@example.com"
    h.send("P", {"type": "HANGUP", "call_id": "c1"})
    assert [f["type"] for f in h.frames("B")] == ["HANGUP"]
    assert h.x.health()["calls"] == 0


def test_local_dial_goes_down_a_trunk(h: Harness) -> None:
    h.register("A", "alice@example.com")
    h.frames("A")
    h.open("P")
    h.send("P", {"type": "REGISTER_PBX", "domain": "sub.example.com", "routes": ["*@sub.example.com"]})
    h.frames("P")
    h.send("A", {"type": "DIAL", "to": "carol@sub.example.com", "ringing": True})
    (fwd,) = h.frames("P")
    assert fwd["type"] == "DIAL_FORWARD" and fwd["from"] == "alice@example.com"
    assert fwd["to"] == "carol@sub.example.com" and fwd["hops"] == 1 and len(fwd["via"]) == 1
    call_id = fwd["call_id"]
    assert h.frames("A") == [{"type": "RINGING", "call_id": call_id, "to": "carol@sub.example.com"}]
    # The far side's RING (the reference's form) is not relayed as a RING.
    h.send("P", {"type": "RING", "call_id": call_id, "from": "carol@sub.example.com"})
    assert h.frames("A") == []
    h.send("P", {"type": "ANSWER", "call_id": call_id, "from": "carol@sub.example.com"})
    assert h.frames("A") == [{"type": "CONNECTED", "call_id": call_id, "to": "carol@sub.example.com"}]
    h.close("P")
    assert h.frames("A") == []
    h.fire(h.timer(TrunkTimer, "in:sub.example.com"))
    assert h.frames("A") == [{"type": "HANGUP", "call_id": call_id, "reason": "peer_disconnected"}]


def test_malformed_federation_frame_gets_the_shape_error_first(h: Harness) -> None:
    h.open("P")
    h.send("P", {"type": "REGISTER_PBX", "routes": ["*"]})
    (error,) = h.frames("P")
    assert error["type"] == "ERROR" and error["context"] == "REGISTER_PBX"
    assert "domain" in error["detail"]
