"""The asyncio client library (``systemx.client``) against a real ``systemx serve``."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from systemx.client import (
    BusyError,
    Call,
    CallEnded,
    CallRejected,
    Client,
    ConnectFailed,
    ConnectionClosed,
    DialTimeout,
    Disconnected,
    ExchangeError,
    JoinFailed,
    Message,
    PartyEvent,
    PartyMessage,
    Reconnected,
    RegisterFailed,
    SleepPending,
    connect,
)
from systemx.protocol.messages import Hangup, Ring
from tests.conftest import TIMEOUT, ServerFactory, SystemXProcess, run_command

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "simple_client.py"
# Never called (these agents are not dialled while asleep); a host name passes REGISTER unresolved.
WAKE_HANDLER = {"type": "webhook", "url": "https://hooks.example.com/wake", "timeout_seconds": 5}

OpenClient = Callable[..., Awaitable[Client]]


@pytest.fixture(autouse=True)
def no_stray_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No unretrieved future exceptions, destroyed pending tasks or dispatch failures."""
    yield
    gc.collect()
    errors = [
        r.getMessage()
        for phase in ("setup", "call", "teardown")
        for r in caplog.get_records(phase)
        if r.name in ("asyncio", "systemx.client") and r.levelno >= logging.ERROR
    ]
    assert errors == []


@pytest.fixture
async def open_client(server: SystemXProcess) -> AsyncIterator[OpenClient]:
    """``await open_client(address, server=None, **options)`` -> a registered client, closed at the end."""
    clients: list[Client] = []

    async def open_(address: str, server_: SystemXProcess | None = None, **options: Any) -> Client:
        client = await Client.connect((server_ or server).url, address, **options)
        clients.append(client)
        return client

    yield open_
    for client in clients:
        await client.close()


async def connected_pair(
    caller: Client, callee: Client, metadata: dict[str, Any] | None = None
) -> tuple[Call, Call]:
    dialling = asyncio.create_task(caller.dial(callee.address, metadata, timeout=TIMEOUT))
    incoming = await callee.next_call(TIMEOUT)
    callee_call = await incoming.answer()
    return await dialling, callee_call


# --------------------------------------------------------------------- register


async def test_register_returns_session(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    assert alice.address == "alice@example.com"
    assert isinstance(alice.session_id, str) and alice.session_id
    assert not alice.closed
    assert await alice.ping() > 0


async def test_register_failures_are_typed(server: SystemXProcess, open_client: OpenClient) -> None:
    await open_client("alice@example.com")
    with pytest.raises(RegisterFailed) as in_use:
        await Client.connect(server.url, "alice@example.com")
    assert in_use.value.reason == "address_in_use"
    with pytest.raises(RegisterFailed) as invalid:
        await Client.connect(server.url, "not an address")
    assert invalid.value.reason == "invalid_address"
    with pytest.raises(RegisterFailed) as refused:
        await Client.connect(server.url, "x@example.com", max_listeners=3)
    assert refused.value.reason == "invalid_payload"
    assert refused.value.detail == "max_listeners requires concurrency broadcast"


async def test_connect_failed_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectFailed) as failed:
        await Client.connect(f"ws://127.0.0.1:{port}", "alice@example.com", connect_timeout=TIMEOUT)
    assert failed.value.url == f"ws://127.0.0.1:{port}"


async def test_connect_as_context_manager_closes_cleanly(server: SystemXProcess) -> None:
    before = asyncio.all_tasks()
    async with (
        await connect(server.url, "alice@example.com") as alice,
        connect(server.url, "bob@example.com") as bob,
    ):
        await connected_pair(alice, bob)
    assert alice.closed and bob.closed
    assert alice.close_info is not None and alice.close_info.code == 1000
    assert asyncio.all_tasks() == before


async def test_connect_without_await_names_the_fix(server: SystemXProcess) -> None:
    pending = connect(server.url, "alice@example.com")
    with pytest.raises(AttributeError, match=r"await connect\(\.\.\.\)") as forgot:
        pending.dial("bob@example.com")  # type: ignore[attr-defined]
    assert "async with connect(...)" in str(forgot.value)
    with pytest.raises(TypeError, match=r"async with connect\(\.\.\.\)"), pending:  # type: ignore[attr-defined]
        pass
    # Nothing was opened: the exchange does not know the address.
    async with connect(server.url, "bob@example.com") as bob:
        with pytest.raises(BusyError):
            await bob.dial("alice@example.com", timeout=TIMEOUT)


# ------------------------------------------------------------------------ calls


async def test_dial_answer_messages_and_hangup(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    dialling = asyncio.create_task(alice.dial("bob@example.com", {"subject": "hi"}, timeout=TIMEOUT))
    incoming = await bob.next_call(TIMEOUT)
    assert incoming.from_ == "alice@example.com"
    assert incoming.metadata == {"subject": "hi"}
    bob_call = await incoming.answer()
    alice_call = await dialling
    assert alice_call.call_id == bob_call.call_id == incoming.call_id
    assert (alice_call.peer, bob_call.peer) == ("bob@example.com", "alice@example.com")
    assert alice_call.outgoing and not bob_call.outgoing
    assert alice.calls == {alice_call.call_id: alice_call}

    await alice_call.send("hello")
    await alice_call.send_json({"n": [1, 2], "s": "x"})
    await alice_call.send_bytes(b"\x00\xffbin")
    got = [await bob_call.recv(TIMEOUT) for _ in range(3)]
    assert got == [
        Message("alice@example.com", "hello", "text", bob_call.call_id),
        Message("alice@example.com", {"n": [1, 2], "s": "x"}, "json", bob_call.call_id),
        Message("alice@example.com", b"\x00\xffbin", "binary", bob_call.call_id),
    ]

    await bob_call.send("one")
    await bob_call.send_json([True, None])
    await bob_call.hangup()
    assert bob_call.hangup_reason == "normal" and not bob_call.active
    # Messages sent before the hangup are still delivered, then iteration stops.
    received = [m async for m in alice_call]
    assert [(m.from_, m.data) for m in received] == [
        ("bob@example.com", "one"),
        ("bob@example.com", [True, None]),
    ]
    assert await asyncio.wait_for(alice_call.ended, TIMEOUT) == "normal"
    assert alice.calls == {}
    with pytest.raises(CallEnded) as ended:
        await alice_call.send("too late")
    assert ended.value.reason == "normal"
    with pytest.raises(CallEnded):
        await alice_call.recv(TIMEOUT)


async def test_hangup_reason_is_relayed(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    alice_call, bob_call = await connected_pair(alice, bob)
    await alice_call.hangup("client_requested")
    assert await asyncio.wait_for(bob_call.ended, TIMEOUT) == "client_requested"
    assert bob_call.hangup_reason == "client_requested"


async def test_busy_reasons_raise_busy_error(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    carol = await open_client("carol@example.com")

    with pytest.raises(BusyError) as nobody:
        await alice.dial("nobody@example.com", timeout=TIMEOUT)
    assert (nobody.value.to, nobody.value.reason) == ("nobody@example.com", "no_such_address")
    assert isinstance(nobody.value, CallRejected)
    # Not "is busy": nobody is there.
    assert str(nobody.value) == (
        "nobody@example.com: no such address (nobody is registered there and it has no wake profile)"
    )

    with pytest.raises(BusyError) as self_dial:
        await alice.dial("alice@example.com", timeout=TIMEOUT)
    assert self_dial.value.reason == "already_in_call"

    await bob.set_status("dnd")
    with pytest.raises(BusyError) as dnd:
        await alice.dial("bob@example.com", timeout=TIMEOUT)
    assert dnd.value.reason == "dnd"
    assert str(dnd.value) == "bob@example.com does not want to be disturbed (status dnd)"
    await bob.set_status("away")
    with pytest.raises(BusyError) as away:
        await alice.dial("bob@example.com", timeout=TIMEOUT)
    assert away.value.reason == "away"
    await bob.set_status("available")

    await connected_pair(alice, bob)
    with pytest.raises(BusyError) as in_call:
        await carol.dial("bob@example.com", timeout=TIMEOUT)
    assert in_call.value.reason == "already_in_call"
    assert str(in_call.value) == "bob@example.com is busy: already in a call"


async def test_a_dial_timeout_says_so_and_hangs_up(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    with pytest.raises(DialTimeout) as timed_out:
        await alice.dial("bob@example.com", timeout=0.3)
    assert isinstance(timed_out.value, TimeoutError)
    assert str(timed_out.value) == "no answer from bob@example.com within 0.3 s; the call was hung up"
    incoming = await bob.next_call(TIMEOUT)
    assert await asyncio.wait_for(incoming.ended, TIMEOUT) == "normal"


async def test_ring_timeout_is_busy_timeout(systemx_server: ServerFactory, open_client: OpenClient) -> None:
    server = await systemx_server(env={"SYSTEMX_CALL_TIMEOUT": "200"})
    alice = await open_client("alice@example.com", server)
    bob = await open_client("bob@example.com", server)
    dialling = asyncio.create_task(alice.dial("bob@example.com", timeout=TIMEOUT))
    incoming = await bob.next_call(TIMEOUT)
    with pytest.raises(BusyError) as busy:
        await dialling
    assert busy.value.reason == "timeout"
    assert busy.value.call_id == incoming.call_id
    assert await asyncio.wait_for(incoming.ended, TIMEOUT) == "timeout"
    with pytest.raises(CallEnded):
        await incoming.answer()


async def test_reject_raises_call_rejected(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    dialling = asyncio.create_task(alice.dial("bob@example.com", timeout=TIMEOUT))
    incoming = await bob.next_call(TIMEOUT)
    await incoming.reject("declined")
    with pytest.raises(CallRejected) as rejected:
        await dialling
    assert not isinstance(rejected.value, BusyError)
    assert rejected.value.reason == "declined"
    assert rejected.value.call_id == incoming.call_id
    assert incoming.hangup_reason == "declined"
    # Both are free again.
    await connected_pair(alice, bob)


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_caller_giving_up_while_ringing_hangs_up(open_client: OpenClient, how: str) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    if how == "cancel":
        dialling = asyncio.create_task(alice.dial("bob@example.com"))
        incoming = await bob.next_call(TIMEOUT)
        dialling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dialling
    else:
        dialling = asyncio.create_task(alice.dial("bob@example.com", timeout=0.05))
        incoming = await bob.next_call(TIMEOUT)
        with pytest.raises(TimeoutError):
            await dialling
    assert await asyncio.wait_for(incoming.ended, TIMEOUT) == "normal"
    with pytest.raises(CallEnded):
        await incoming.answer()
    assert alice.calls == {}
    await connected_pair(alice, bob)


async def test_cancel_before_ringing_arrives_still_hangs_up(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    dialling = asyncio.create_task(alice.dial("bob@example.com"))
    await asyncio.sleep(0)  # one loop turn: the DIAL goes out, no answer can have been read yet
    dialling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dialling
    incoming = await bob.next_call(TIMEOUT)
    assert await asyncio.wait_for(incoming.ended, TIMEOUT) == "normal"


async def test_concurrent_dials_are_matched_to_their_callees(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com", concurrency="parallel")
    callees = [await open_client(f"user{i}@example.com") for i in range(4)]

    async def answer(callee: Client) -> Call:
        return await (await callee.next_call(TIMEOUT)).answer()

    answering = [asyncio.create_task(answer(c)) for c in callees]
    calls = await asyncio.gather(*(alice.dial(c.address, timeout=TIMEOUT) for c in callees))
    answered = await asyncio.gather(*answering)
    assert [c.peer for c in calls] == [c.address for c in callees]
    assert [c.call_id for c in calls] == [c.call_id for c in answered]
    for call, other in zip(calls, answered, strict=True):
        await other.send(other.peer)
        message = await call.recv(TIMEOUT)
        assert message.data == "alice@example.com" and message.from_ == call.peer


async def test_incoming_iterator(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")

    async def take_one() -> Call:
        async for incoming in bob.incoming():
            return await incoming.answer()
        raise AssertionError("incoming() ended")

    taking = asyncio.create_task(take_one())
    alice_call = await alice.dial("bob@example.com", timeout=TIMEOUT)
    bob_call = await asyncio.wait_for(taking, TIMEOUT)
    assert bob_call.call_id == alice_call.call_id


async def test_dial_rate_limit_is_exchange_error(
    systemx_server: ServerFactory, open_client: OpenClient
) -> None:
    server = await systemx_server(env={"SYSTEMX_DIAL_MAX_ATTEMPTS": "1"})
    alice = await open_client("alice@example.com", server)
    with pytest.raises(BusyError):
        await alice.dial("nobody@example.com", timeout=TIMEOUT)
    with pytest.raises(ExchangeError) as limited:
        await alice.dial("nobody@example.com", timeout=TIMEOUT)
    assert (limited.value.reason, limited.value.context) == ("rate_limited", "DIAL")


async def test_broadcast_ends_with_its_last_listener(open_client: OpenClient) -> None:
    caster = await open_client("radio@example.com", concurrency="broadcast")
    one = await open_client("one@example.com")
    two = await open_client("two@example.com")
    events = caster.events()
    call_one = await one.dial("radio@example.com", timeout=TIMEOUT)
    caster_call = await (await caster.next_call(TIMEOUT)).answer()
    call_two = await two.dial("radio@example.com", timeout=TIMEOUT)
    assert call_one.call_id == call_two.call_id == caster_call.call_id
    joined = await asyncio.wait_for(anext(events), TIMEOUT)
    assert isinstance(joined, Ring) and joined.from_ == "two@example.com"

    await caster_call.send("on air")
    assert (await call_one.recv(TIMEOUT)).data == "on air"
    assert (await call_two.recv(TIMEOUT)).data == "on air"

    await call_one.hangup()
    left = await asyncio.wait_for(anext(events), TIMEOUT)
    assert isinstance(left, Hangup) and left.from_ == "one@example.com"
    assert caster_call.active
    await call_two.send("still here")
    assert (await caster_call.recv(TIMEOUT)).data == "still here"

    await call_two.hangup()
    left = await asyncio.wait_for(anext(events), TIMEOUT)
    assert isinstance(left, Hangup) and left.from_ == "two@example.com"
    assert await asyncio.wait_for(caster_call.ended, TIMEOUT) == "normal"
    assert caster.calls == {}


# ------------------------------------------------------------------ party lines


async def test_party_join_message_leave(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    with pytest.raises(JoinFailed) as missing:
        await alice.join("room@example.com", create=False)
    assert (missing.value.party, missing.value.reason) == ("room@example.com", "no_such_party")

    alice_room = await alice.join("room@example.com")
    assert alice_room.participants == ["alice@example.com"]
    bob_room = await bob.join("room@example.com", create=False)
    assert bob_room.participants == ["alice@example.com", "bob@example.com"]
    assert await alice_room.recv(TIMEOUT) == PartyEvent("room@example.com", "joined", "bob@example.com")
    assert alice_room.participants == ["alice@example.com", "bob@example.com"]
    assert await bob.join("room@example.com") is bob_room

    await bob_room.send("hi all")
    await bob_room.send_json({"k": 1})
    await bob_room.send_bytes(b"\x01")
    assert await alice_room.recv(TIMEOUT) == PartyMessage(
        "room@example.com", "bob@example.com", "hi all", "text"
    )
    assert await alice_room.recv(TIMEOUT) == PartyMessage(
        "room@example.com", "bob@example.com", {"k": 1}, "json"
    )
    assert await alice_room.recv(TIMEOUT) == PartyMessage(
        "room@example.com", "bob@example.com", b"\x01", "binary"
    )

    await bob_room.leave()
    assert await asyncio.wait_for(bob_room.left, TIMEOUT) == "left"
    assert [event async for event in bob_room] == []
    assert bob.parties == {}
    assert await alice_room.recv(TIMEOUT) == PartyEvent("room@example.com", "left", "bob@example.com", "left")
    assert alice_room.participants == ["alice@example.com"]


async def test_party_errors_are_exchange_errors(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    room = await alice.join("room@example.com")
    await room.leave()
    await room.leave()  # already off the line: nothing to do
    with pytest.raises(JoinFailed) as invalid:
        await alice.join("not a party")
    assert invalid.value.reason == "invalid_address"


async def test_each_join_gets_the_answer_to_its_own_party(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    await alice.join("room@Example.com")
    # In flight together: a name the exchange refuses and echoes cut to 300 characters, and
    # the same line under another spelling of its domain, answered with the creator's spelling.
    long_name = "x" * 400
    refused, joined = await asyncio.gather(
        bob.join(long_name, create=False, timeout=TIMEOUT),
        bob.join("room@example.com", create=False, timeout=TIMEOUT),
        return_exceptions=True,
    )
    assert isinstance(refused, JoinFailed), refused
    assert (refused.party, refused.reason) == ("x" * 300, "invalid_address")
    assert not isinstance(joined, BaseException), joined
    assert joined.name == "room@Example.com"
    assert joined.participants == ["alice@example.com", "bob@example.com"]


async def test_leaving_one_line_twice_does_not_answer_the_leave_of_another(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    first = await alice.join("first@example.com")
    second = await alice.join("second@example.com")
    results = await asyncio.gather(
        first.leave(TIMEOUT), first.leave(TIMEOUT), second.leave(TIMEOUT), return_exceptions=True
    )
    assert list(results) == [None, None, None]
    assert await asyncio.wait_for(second.left, TIMEOUT) == "left"
    assert alice.parties == {}
    # Nothing unanswered is left over: the next request gets its own answer.
    assert await alice.ping(TIMEOUT) > 0


# --------------------------------------------------------------------- presence


async def test_presence_filters(open_client: OpenClient) -> None:
    asker = await open_client("asker@example.com")
    await open_client(
        "leeds@example.com",
        metadata={"capabilities": ["chat", "code"], "location": {"lat": 53.8, "lon": -1.55}},
    )
    await open_client(
        "paris@other.org", metadata={"capabilities": ["chat"], "location": {"lat": 48.86, "lon": 2.35}}
    )
    dnd = await open_client("quiet@example.com")
    await dnd.set_status("dnd")

    def addresses(entries: list[Any]) -> set[str]:
        return {e.address for e in entries}

    everyone = await asker.presence()
    assert addresses(everyone) == {"leeds@example.com", "paris@other.org", "quiet@example.com"}
    leeds = next(e for e in everyone if e.address == "leeds@example.com")
    assert leeds.status == "available" and leeds.metadata["capabilities"] == ["chat", "code"]
    assert addresses(await asker.presence(domain="example.com")) == {"leeds@example.com", "quiet@example.com"}
    assert addresses(await asker.presence(capabilities=["chat"])) == {"leeds@example.com", "paris@other.org"}
    assert addresses(await asker.presence(capabilities=["code", "chat"])) == {"leeds@example.com"}
    assert addresses(await asker.presence(near=(53.7, -1.8, 50))) == {"leeds@example.com"}
    assert addresses(await asker.presence(status="dnd")) == {"quiet@example.com"}
    assert len(await asker.presence(limit=1)) == 1


# ------------------------------------------------------------ sleep, heartbeats


async def test_sleep_closes_with_4000(open_client: OpenClient) -> None:
    plain = await open_client("plain@example.com")
    with pytest.raises(ExchangeError) as refused:
        await plain.sleep()
    assert (refused.value.reason, refused.value.context) == ("not_wake_on_ring", "SLEEP_ACK")

    agent = await open_client("agent@example.com", mode="wake_on_ring", wake_handler=WAKE_HANDLER)
    peer = await open_client("peer@example.com")
    peer_call, agent_call = await connected_pair(peer, agent)
    closed = await agent.sleep(TIMEOUT)
    assert (closed.code, closed.reason) == (4000, "sleep")
    assert agent.closed and agent_call.hangup_reason == "connection_closed"
    assert await asyncio.wait_for(peer_call.ended, TIMEOUT) == "sleep"


async def test_auto_sleep_warns_then_closes(open_client: OpenClient) -> None:
    agent = await open_client("agent@example.com", mode="wake_on_ring", wake_handler=WAKE_HANDLER)
    hooked: list[SleepPending] = []
    agent.on_sleep_pending = hooked.append
    await agent.set_status(auto_sleep={"idle_timeout_seconds": 0.1, "wake_on_ring": True})
    event = await asyncio.wait_for(anext(agent.events()), TIMEOUT)
    assert isinstance(event, SleepPending) and event.reason == "idle_timeout"
    assert hooked == [event]
    closed = await asyncio.wait_for(agent.wait_closed(), TIMEOUT)
    assert (closed.code, closed.reason) == (4000, "sleep")
    assert [e async for e in agent.events()] == []


async def test_automatic_heartbeats_keep_the_session(
    systemx_server: ServerFactory, open_client: OpenClient
) -> None:
    server = await systemx_server(
        env={"SYSTEMX_HEARTBEAT_INTERVAL": "50", "SYSTEMX_HEARTBEAT_TIMEOUT": "300"}
    )
    beating = await open_client("beating@example.com", server, heartbeat_interval=0.05)
    silent = await open_client("silent@example.com", server, heartbeat_interval=None)
    closed = await asyncio.wait_for(silent.wait_closed(), TIMEOUT)
    assert (closed.code, closed.reason) == (4000, "timeout")
    # Connected together, outlived the one that sent nothing.
    assert not beating.closed
    assert await beating.ping(TIMEOUT) > 0
    with pytest.raises(ConnectionClosed) as gone:
        await silent.dial("beating@example.com")
    assert gone.value.code == 4000


async def test_set_status_error_is_raised(open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    with pytest.raises(ExchangeError) as bad:
        await alice.set_status("asleep")  # type: ignore[arg-type]
    assert (bad.value.reason, bad.value.context) == ("invalid_payload", "STATUS")
    await alice.set_status("available")


# --------------------------------------------------------------- server closing


async def test_server_shutdown_ends_calls_and_iterators(
    server: SystemXProcess, open_client: OpenClient
) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    carol = await open_client("carol@example.com")
    dave = await open_client("dave@example.com")
    alice_call, _bob_call = await connected_pair(alice, bob)
    room = await carol.join("room@example.com")
    ringing = asyncio.create_task(carol.dial("dave@example.com"))
    await dave.next_call(TIMEOUT)

    async def drain(iterator: Any) -> list[Any]:
        return [item async for item in iterator]

    iterators = [
        asyncio.create_task(drain(alice_call)),
        asyncio.create_task(drain(alice.incoming())),
        asyncio.create_task(drain(alice.events())),
        asyncio.create_task(drain(room)),
        asyncio.create_task(drain(carol.incoming())),
    ]
    next_call = asyncio.create_task(bob.next_call())

    assert await server.stop() == 0
    results = await asyncio.wait_for(asyncio.gather(*iterators), TIMEOUT)
    assert results == [[], [], [], [], []]
    assert alice_call.hangup_reason == "shutdown"
    assert await asyncio.wait_for(room.left, TIMEOUT) == "connection_closed"
    for client in (alice, bob, carol, dave):
        closed = await asyncio.wait_for(client.wait_closed(), TIMEOUT)
        assert (closed.code, closed.reason) == (1001, "shutdown")
    with pytest.raises(CallRejected) as rejected:
        await asyncio.wait_for(ringing, TIMEOUT)
    assert rejected.value.reason == "shutdown"
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(next_call, TIMEOUT)
    with pytest.raises(ConnectionClosed):
        await alice.dial("bob@example.com")
    with pytest.raises(CallEnded):  # the exchange hung the call up before closing
        await alice_call.recv()


async def test_abrupt_server_death_is_1006(server: SystemXProcess, open_client: OpenClient) -> None:
    alice = await open_client("alice@example.com")
    bob = await open_client("bob@example.com")
    alice_call, _ = await connected_pair(alice, bob)
    await server.kill()
    closed = await asyncio.wait_for(alice.wait_closed(), TIMEOUT)
    assert closed.code == 1006
    assert await asyncio.wait_for(alice_call.ended, TIMEOUT) == "connection_closed"
    with pytest.raises(ConnectionClosed):
        await alice_call.send("anyone?")


# ---------------------------------------------------------------------- reconnect


@pytest.mark.parametrize("how", ["killed", "restarted"])
async def test_reconnects_after_the_exchange_comes_back(
    server: SystemXProcess, open_client: OpenClient, how: str
) -> None:
    seen: list[Disconnected | Reconnected] = []
    bob = await open_client(
        "bob@example.com",
        reconnect=True,
        reconnect_delay=(0.05, 0.5),
        metadata={"capabilities": ["echo"]},
        on_connection_change=seen.append,
    )
    alice = await open_client("alice@example.com")
    _alice_call, bob_call = await connected_pair(alice, bob)
    events = bob.events()

    if how == "killed":
        await server.kill()
        await server.start()
    else:
        await server.restart()

    dropped = await asyncio.wait_for(anext(events), TIMEOUT)
    expected = (1006, "") if how == "killed" else (1001, "shutdown")
    assert isinstance(dropped, Disconnected) and (dropped.code, dropped.reason) == expected
    # The call in progress ended with an error that says what happened.
    assert await asyncio.wait_for(bob_call.ended, TIMEOUT) in ("connection_closed", "shutdown")
    with pytest.raises((ConnectionClosed, CallEnded)):
        await bob_call.send("still there?")
    back = await asyncio.wait_for(anext(events), TIMEOUT * 2)
    assert isinstance(back, Reconnected) and back.attempts >= 1
    assert back.session_id == bob.session_id and bob.connected and not bob.closed
    assert seen == [dropped, back]

    # Registered again with the same options, and reachable.
    carol = await open_client("carol@example.com", server)
    (entry,) = await carol.presence(capabilities=["echo"])
    assert entry.address == "bob@example.com"
    carol_call, bob_again = await connected_pair(carol, bob)
    await carol_call.send("hello again")
    assert (await bob_again.recv(TIMEOUT)).data == "hello again"
    await alice.close()


class _Proxy:
    """A TCP relay to the exchange whose client side can be cut while the
    exchange's side stays open: a network that fails without telling the exchange."""

    def __init__(self, port: int) -> None:
        self.upstream_port = port
        self.client_sides: list[asyncio.StreamWriter] = []
        self.server_sides: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.client_sides.append(writer)
        self.server_sides.append(up_writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
            except ConnectionError:
                pass

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut_client_sides(self) -> None:
        for writer in self.client_sides:
            writer.transport.abort()
        self.client_sides.clear()

    async def close(self) -> None:
        for writer in self.server_sides + self.client_sides:
            writer.transport.abort()
        if self.server is not None:
            self.server.close()


async def test_reconnect_waits_out_address_in_use_after_a_network_drop(
    systemx_server: ServerFactory, open_client: OpenClient
) -> None:
    # The exchange still holds the old session (it never saw the drop) until its heartbeats stop.
    server = await systemx_server(
        env={"SYSTEMX_HEARTBEAT_TIMEOUT": "1s", "SYSTEMX_HEARTBEAT_INTERVAL": "100ms"}
    )
    proxy = _Proxy(server.port)
    await proxy.start()
    try:
        bob = await Client.connect(
            f"ws://127.0.0.1:{proxy.port}",
            "bob@example.com",
            reconnect=True,
            reconnect_delay=(0.05, 0.2),
            heartbeat_interval=0.2,
        )
        events = bob.events()
        proxy.cut_client_sides()
        dropped = await asyncio.wait_for(anext(events), TIMEOUT)
        assert isinstance(dropped, Disconnected) and dropped.code == 1006
        back = await asyncio.wait_for(anext(events), TIMEOUT * 2)
        assert isinstance(back, Reconnected)
        assert back.attempts > 1  # address_in_use was retried until the old session expired
        alice = await open_client("alice@example.com", server)
        alice_call, bob_call = await connected_pair(alice, bob)
        await bob_call.send("through again")
        assert (await alice_call.recv(TIMEOUT)).data == "through again"
        await bob.close()
    finally:
        await proxy.close()


async def test_requests_while_reconnecting_fail_clearly(
    server: SystemXProcess, open_client: OpenClient
) -> None:
    bob = await open_client("bob@example.com", reconnect=True, reconnect_delay=(5.0, 5.0))
    events = bob.events()
    await server.kill()
    assert isinstance(await asyncio.wait_for(anext(events), TIMEOUT), Disconnected)
    with pytest.raises(ConnectionClosed) as down:
        await bob.dial("alice@example.com")
    assert down.value.reconnecting
    assert "connection lost" in str(down.value) and "reconnecting" in str(down.value)
    # close() stops the attempts and ends the iterators.
    await asyncio.wait_for(bob.close(), TIMEOUT)
    assert bob.closed
    assert [event async for event in events] == []


async def test_no_reconnect_after_a_close_the_client_asked_for(open_client: OpenClient) -> None:
    bob = await open_client("bob@example.com", reconnect=True, reconnect_delay=(0.01, 0.01))
    closed = await bob.unregister()
    assert (closed.code, closed.reason) == (4000, "client_requested")
    assert bob.closed and not bob.connected


# ---------------------------------------------------------------------- example


async def run_example(url: str) -> tuple[int, str, str]:
    return await run_command(sys.executable, str(EXAMPLE), "--url", url, timeout=10.0)


async def test_simple_client_example(server: SystemXProcess) -> None:
    code, out, err = await run_example(server.url)
    assert code == 0, err
    expected = [
        "alice@example.com registered",
        "bob@example.com registered",
        "alice@example.com dials bob@example.com",
        "bob@example.com hears RING from alice@example.com",
        "bob@example.com answers",
        "alice@example.com is CONNECTED to bob@example.com",
        "bob@example.com receives MSG (text) from alice@example.com: 'Hello Bob, can you hear me?'",
        "alice@example.com receives MSG (json) from bob@example.com: "
        "{'reply': 'Loud and clear', 'signal': 5}",
        "alice@example.com hangs up",
        "bob@example.com hears HANGUP (reason: normal)",
    ]
    lines = out.splitlines()
    assert len(lines) == len(expected) + 1
    for number, (line, text) in enumerate(zip(lines, expected, strict=False), start=1):
        assert line.startswith(f"{number}. {text}"), line
    assert lines[-1].startswith("Done")


async def test_simple_client_example_without_exchange() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = await run_example(f"ws://127.0.0.1:{port}")
    assert code == 2
    assert out == ""
    assert "cannot connect" in err and "systemx serve" in err
