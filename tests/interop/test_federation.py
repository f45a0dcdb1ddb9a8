"""Federation between SystemX and the Bun reference router, over real trunks.

Two topologies, each with a call placed from either side (RING, ANSWER,
CONNECTED, MSG both ways, HANGUP):

* SystemX is the **child**: ``systemx serve`` with the reference's
  ``FEDERATION_*`` settings opens a trunk to a reference parent.
* SystemX is the **parent**: a reference child opens its trunk
  (``REGISTER_PBX``) to ``systemx serve``.

The parent serves ``*@cloud.test`` to its own clients; the child announces
``*@home.test`` and sends ``*@cloud.test`` up the trunk, as in the reference's
own federation suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import ServerFactory, SystemXProcess, scaled
from tests.interop.conftest import ReferenceFactory, ReferenceProcess
from tests.wsclient import WSClient

# The reference child's log line once its parent answered REGISTERED_PBX.
_REFERENCE_REGISTERED = r"Federation parent acknowledged registration"
_REFERENCE_TRUNK_CLOSED = r"Federation peer connection closed"
# SystemX's log line once its parent accepted the trunk.
_SYSTEMX_REGISTERED = r"trunk \S+: registered with"

Opener = Callable[[], Awaitable[WSClient]]


def child_settings(parent_url: str, **extra: str) -> dict[str, str]:
    return {
        "FEDERATION_ENABLED": "true",
        "FEDERATION_PEER_URL": parent_url,
        "FEDERATION_DOMAIN": "home.test",
        "FEDERATION_ROUTES": "*@cloud.test",
        "FEDERATION_ANNOUNCE_ROUTES": "*@home.test",
        **extra,
    }


@pytest.fixture
async def clients() -> AsyncIterator[list[WSClient]]:
    """Clients opened by a test, disconnected at its end."""
    opened: list[WSClient] = []
    yield opened
    for client in opened:
        client.transport.disconnect()


async def _registered(open_client: Opener, opened: list[WSClient], address: str) -> WSClient:
    client = await open_client()
    opened.append(client)
    await client.register(address)
    return client


async def _call(caller: WSClient, callee: WSClient, caller_address: str, callee_address: str) -> None:
    """One call across the trunk, from ``caller`` to ``callee``; the caller hangs up."""
    timeout = scaled(10)
    metadata: dict[str, Any] = {"subject": f"{caller_address} to {callee_address}"}
    caller.send_json({"type": "DIAL", "to": callee_address, "metadata": metadata})
    ring = await callee.expect("RING", timeout, from_=caller_address, metadata=metadata)
    call_id = ring["call_id"]
    assert isinstance(call_id, str) and call_id, ring

    callee.send_json({"type": "ANSWER", "call_id": call_id})
    # Before CONNECTED, a reference parent relays the child's RING to the caller, and a
    # SystemX exchange sends its caller RINGING (PROTOCOL.md, compatibility).
    await caller.expect("CONNECTED", timeout, skip=("RING", "RINGING"), call_id=call_id, to=callee_address)

    caller.send_json({"type": "MSG", "call_id": call_id, "data": "down the line", "content_type": "text"})
    await callee.expect(
        "MSG", timeout, call_id=call_id, from_=caller_address, data="down the line", content_type="text"
    )
    callee.send_json({"type": "MSG", "call_id": call_id, "data": {"n": 1}, "content_type": "json"})
    await caller.expect(
        "MSG", timeout, call_id=call_id, from_=callee_address, data={"n": 1}, content_type="json"
    )

    caller.send_json({"type": "HANGUP", "call_id": call_id})
    await callee.expect("HANGUP", timeout, call_id=call_id, reason="normal")
    # Both ends are free again: nothing else arrives first.
    await caller.roundtrip(timeout)
    await callee.roundtrip(timeout)


async def _calls_both_ways(parent: Opener, child: Opener, opened: list[WSClient]) -> None:
    alice = await _registered(parent, opened, "alice@cloud.test")
    charlie = await _registered(child, opened, "charlie@home.test")
    await _call(alice, charlie, "alice@cloud.test", "charlie@home.test")
    await _call(charlie, alice, "charlie@home.test", "alice@cloud.test")


async def _systemx_child_of(
    reference: ReferenceProcess, systemx_server: ServerFactory, **extra: str
) -> SystemXProcess:
    child = await systemx_server(env=child_settings(reference.url, **extra))
    try:
        await child.wait_for_log(_SYSTEMX_REGISTERED, scaled(10))
    except (TimeoutError, EOFError):
        pytest.fail("SystemX did not open its trunk to the reference parent:\n" + "\n".join(child.logs))
    return child


async def _reference_child_of(
    parent: SystemXProcess, reference_server: ReferenceFactory, **extra: str
) -> ReferenceProcess:
    child = await reference_server(env=child_settings(parent.url, **extra))
    try:
        await child.wait_for_log(_REFERENCE_REGISTERED, scaled(10))
    except (TimeoutError, EOFError):
        pytest.fail(
            "SystemX did not accept the reference child's trunk.\nreference child:\n"
            + "\n".join(child.logs)
            + "\nSystemX parent:\n"
            + "\n".join(parent.logs)
        )
    return child


async def test_systemx_child_of_reference_parent(
    reference_server: ReferenceFactory, systemx_server: ServerFactory, clients: list[WSClient]
) -> None:
    parent = await reference_server()
    child = await _systemx_child_of(parent, systemx_server)
    await _calls_both_ways(parent.connect, child.connect, clients)


async def test_systemx_parent_of_reference_child(
    reference_server: ReferenceFactory, systemx_server: ServerFactory, clients: list[WSClient]
) -> None:
    parent = await systemx_server()
    child = await _reference_child_of(parent, reference_server)
    await _calls_both_ways(parent.connect, child.connect, clients)


async def test_reference_child_trunk_outlives_the_parent_sweep(
    reference_server: ReferenceFactory, systemx_server: ServerFactory, clients: list[WSClient]
) -> None:
    """A reference child that heartbeats its trunk is not swept by a SystemX parent.

    The parent sweeps every 200 ms and drops what was silent for 1 s; the
    child heartbeats its trunk every 300 ms. Once the sweep has dropped a
    silent client, the trunk must still be up and carry a call.
    """
    parent = await systemx_server(
        env={"SYSTEMX_HEARTBEAT_INTERVAL": "200", "SYSTEMX_HEARTBEAT_TIMEOUT": "1000"}
    )
    child = await _reference_child_of(parent, reference_server, FEDERATION_HEARTBEAT_MS="300")
    silent = await parent.connect()
    clients.append(silent)
    code, reason = await silent.expect_close(scaled(10))
    assert (code, reason) == (4000, "timeout")
    assert not any(_REFERENCE_TRUNK_CLOSED in line for line in child.logs), child.logs

    # The clients of this call heartbeat through roundtrip(); registering and
    # calling at once keeps them inside the 1 s window.
    await _calls_both_ways(parent.connect, child.connect, clients)
    assert not any(_REFERENCE_TRUNK_CLOSED in line for line in child.logs), child.logs


async def test_reference_child_reconnecting_its_trunk_is_accepted_again(
    reference_server: ReferenceFactory, systemx_server: ServerFactory, clients: list[WSClient]
) -> None:
    """A reference child drops and reopens its trunk; the SystemX parent takes it back.

    The reference child never heartbeats its own end of the trunk, so its sweep
    closes the trunk (4000 ``timeout``) once its heartbeat timeout has passed,
    and it reconnects and sends REGISTER_PBX for the same domain again. The
    parent must accept that registration and route over the new trunk.
    """
    parent = await systemx_server()
    child = await _reference_child_of(
        parent,
        reference_server,
        SYSTEMX_HEARTBEAT_INTERVAL="500",
        SYSTEMX_HEARTBEAT_TIMEOUT="1000",
        FEDERATION_RECONNECT_DELAY_MS="200",
    )
    # The reference sweeps every 5 s at the least.
    await child.wait_for_log(_REFERENCE_TRUNK_CLOSED, scaled(15))
    closed = next(i for i, line in enumerate(child.logs) if _REFERENCE_TRUNK_CLOSED in line)
    try:
        await child.wait_for_log(_REFERENCE_REGISTERED, scaled(10), since=closed + 1)
    except TimeoutError:
        pytest.fail(
            "SystemX did not accept the reference child's trunk again.\nreference child:\n"
            + "\n".join(child.logs)
            + "\nSystemX parent:\n"
            + "\n".join(parent.logs)
        )
    # Within the child's next sweep (5 s), which drops its own clients too.
    await _calls_both_ways(parent.connect, child.connect, clients)


async def test_control_reference_parent_of_reference_child(
    reference_server: ReferenceFactory, clients: list[WSClient]
) -> None:
    """The same calls between two reference routers: the expectations above are the reference's."""
    parent = await reference_server()
    child = await reference_server(env=child_settings(parent.url))
    await child.wait_for_log(_REFERENCE_REGISTERED, scaled(10))
    await _calls_both_ways(parent.connect, child.connect, clients)
