"""Link messages: every one survives a round trip; loops and hop limits stop a dial; bad bytes say why."""

from __future__ import annotations

import msgspec
import pytest
from msgspec import Raw

from systemx.protocol import link
from systemx.protocol.link import (
    MAX_HOPS,
    Deliver,
    Gone,
    InvalidLinkMessage,
    LegAnswer,
    LegBusy,
    LegDial,
    LegHangup,
    LegRing,
    LinkDown,
    LinkUp,
    PartyDeliver,
    decode,
    deliver_prefix,
    encode,
    forwarded,
)

FRAME = b'{"type":"MSG","call_id":"c1","from":"a@x.com","data":{"k":[1,"\xc3\xa9"]},"content_type":"json"}'


def _dial(**changes: object) -> LegDial:
    dial = LegDial(
        call_id="c1",
        caller="a@x.com",
        caller_session="s-a",
        to="b@Y.com",
        via=["node-1"],
        metadata={"topic": "héllo ☎", "n": [1, 2]},
        wake=True,
    )
    return msgspec.structs.replace(dial, **changes)


EVERY_MESSAGE: list[link.LinkMessage] = [
    _dial(),
    LegDial(call_id="c2", caller="a@x.com", caller_session="s-a", to="b@y.com", via=["n1"]),
    LegRing(call_id="c1"),
    LegRing(call_id="c1", waking=True),
    LegAnswer(call_id="c1", session="s-b"),
    LegAnswer(call_id="c1", session="s-b", from_="B@y.com"),
    LegHangup(call_id="c1", reason="normal"),
    LegHangup(call_id="c1", reason="normal", from_="listener@y.com"),
    LegBusy(call_id="c1", to="b@y.com", reason="already_in_call"),
    Deliver(session="s-b", frame=Raw(FRAME)),
    PartyDeliver(party="room@x.com", exclude=["a@x.com"], frame=Raw(FRAME)),
    Gone(key="b@y.com", session="s-b"),
    LinkUp(node="node-2", started_at=1700000000.25),
    LinkDown(node="node-2", reason="shutdown"),
    link.ProfileSet(key="agent@y.com", profile={"address": "Agent@y.com", "handler": {"type": "webhook"}}),
    link.ProfileSet(key="agent@y.com"),
    link.Woken(address="agent@y.com"),
    link.Slept(address="agent@y.com"),
    link.WakeEnded(address="agent@y.com", reason="wake_failed", detail="HTTP 500"),
]


def _comparable(msg: link.LinkMessage) -> object:
    # Raw compares by identity; compare its bytes instead.
    out = msgspec.structs.asdict(msg)
    return {k: bytes(v) if isinstance(v, Raw) else v for k, v in out.items()}


@pytest.mark.parametrize("msg", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_round_trip(msg: link.LinkMessage) -> None:
    data = encode(msg)
    back = decode(data)
    assert type(back) is type(msg)
    assert _comparable(back) == _comparable(msg)
    assert encode(back) == data


def test_each_message_has_its_own_short_op() -> None:
    ops = [msgspec.json.decode(encode(m))["op"] for m in EVERY_MESSAGE]
    distinct = set(ops)
    assert distinct == {
        "dial",
        "ring",
        "answer",
        "hangup",
        "busy",
        "deliver",
        "party",
        "gone",
        "up",
        "down",
        "profile",
        "woken",
        "slept",
        "wakefail",
    }
    assert all(op.islower() and len(op) <= 8 for op in distinct)


def test_from_is_the_wire_name() -> None:
    data = encode(LegHangup(call_id="c1", reason="normal", from_="l@y.com"))
    assert msgspec.json.decode(data) == {
        "op": "hangup",
        "call_id": "c1",
        "reason": "normal",
        "from": "l@y.com",
    }


def test_frame_is_spliced_unchanged() -> None:
    data = encode(Deliver(session="s-b", frame=Raw(FRAME)))
    assert FRAME in data
    back = decode(data)
    assert isinstance(back, Deliver)
    assert bytes(back.frame) == FRAME


def test_deliver_prefix_builds_the_same_bytes_as_encode() -> None:
    for session in ("s-b", 'odd "quoted" \\ id ☎'):
        spliced = deliver_prefix(session) + FRAME + b"}"
        assert spliced == encode(Deliver(session=session, frame=Raw(FRAME)))
        back = decode(spliced)
        assert isinstance(back, Deliver) and back.session == session and bytes(back.frame) == FRAME


def test_unknown_fields_are_ignored() -> None:
    back = decode(b'{"op":"ring","call_id":"c1","waking":true,"added_later":{"x":1}}')
    assert back == LegRing(call_id="c1", waking=True)


# --------------------------------------------------------------------------
# forwarded: loops and hops


def test_forwarded_appends_the_exchange_and_counts_a_hop() -> None:
    dial = _dial()
    once = forwarded(dial, "node-2")
    assert once is not None
    assert once.via == ["node-1", "node-2"] and once.hops == 1
    assert (once.call_id, once.caller, once.to, once.metadata, once.wake) == (
        dial.call_id,
        dial.caller,
        dial.to,
        dial.metadata,
        dial.wake,
    )
    assert dial.via == ["node-1"] and dial.hops == 0, "the original dial is unchanged"
    twice = forwarded(once, "trunk-z")
    assert twice is not None and twice.via == ["node-1", "node-2", "trunk-z"] and twice.hops == 2


def test_forwarded_refuses_a_loop() -> None:
    dial = _dial()
    assert forwarded(dial, "node-1") is None, "back to the exchange that placed it"
    once = forwarded(dial, "node-2")
    assert once is not None
    again = forwarded(once, "node-3")
    assert again is not None
    assert forwarded(again, "node-2") is None


def test_forwarded_refuses_when_hops_are_exhausted() -> None:
    dial: LegDial | None = _dial()
    sent_on = 0
    while True:
        assert dial is not None
        nxt = forwarded(dial, f"hop-{sent_on}")
        if nxt is None:
            break
        dial, sent_on = nxt, sent_on + 1
    assert sent_on == MAX_HOPS
    assert dial is not None and dial.hops == MAX_HOPS and len(dial.via) == MAX_HOPS + 1
    # The longest dial forwarded() can make still decodes; one hop more does not.
    assert decode(encode(dial)) == dial
    too_far = encode(msgspec.structs.replace(dial, hops=MAX_HOPS + 1))
    with pytest.raises(InvalidLinkMessage, match="hops"):
        decode(too_far)


def test_hops_bound_the_path_even_without_via() -> None:
    # A dial that crossed a translator keeping only the count: via is short, hops is not.
    dial = _dial(hops=MAX_HOPS, via=["trunk-in"])
    assert forwarded(dial, "node-9") is None


# --------------------------------------------------------------------------
# Invalid input


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b"[]", "Expected `object`"),
        (b"null", "Expected `object`"),
        (b'{"call_id":"c1"}', "missing required field `op`"),
        (b'{"op":"teleport","call_id":"c1"}', "Invalid value 'teleport'"),
        (b'{"op":"ring"}', "missing required field `call_id`"),
        (b'{"op":"ring","call_id":7}', "Expected `str`, got `int` - at `$.call_id`"),
        (b'{"op":"ring","call_id":""}', "at `$.call_id`"),
        (b'{"op":"ring","call_id":"' + b"x" * 257 + b'"}', "at `$.call_id`"),
        (
            b'{"op":"dial","call_id":"c","caller":"a@x.com","caller_session":"s","to":"b@y.com","via":[]}',
            "at `$.via`",
        ),
        (
            b'{"op":"dial","call_id":"c","caller":"a@x.com","caller_session":"s","to":"b@y.com",'
            b'"via":["n"],"hops":-1}',
            "at `$.hops`",
        ),
        (
            b'{"op":"dial","call_id":"c","caller":"' + b"a" * 250 + b'@x.com","caller_session":"s",'
            b'"to":"b@y.com","via":["n"]}',
            "at `$.caller`",
        ),
        (b'{"op":"deliver","session":"s"}', "missing required field `frame`"),
        (b'{"op":"deliver","session":"s","frame":{"a":}', "not JSON"),
        (b'{"op":"party","party":"p","exclude":"a@x.com","frame":{}}', "at `$.exclude`"),
        (b'{"op":"up","node":"n","started_at":"yesterday"}', "at `$.started_at`"),
    ],
)
def test_invalid_input_raises_a_clear_error(data: bytes, detail: str) -> None:
    with pytest.raises(InvalidLinkMessage) as caught:
        decode(data)
    assert detail in caught.value.detail
    assert str(caught.value).startswith("invalid link message: ")
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value.__cause__, msgspec.DecodeError)
