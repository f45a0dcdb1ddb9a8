"""What a cluster does when a node or Redis fails."""

from __future__ import annotations

import time

from tests.cluster.conftest import NODE_TTL_MS, Cluster
from tests.wsclient import WSClient, scaled

# The bound the cluster promises for noticing a dead node.
DEAD_NODE_BOUND = NODE_TTL_MS / 1000 + 1.0


async def _connected(caller: WSClient, callee: WSClient, to: str) -> str:
    caller.send_json({"type": "DIAL", "to": to, "ringing": True})
    call_id: str = (await caller.expect("RINGING"))["call_id"]
    await callee.expect("RING", call_id=call_id)
    callee.send_json({"type": "ANSWER", "call_id": call_id})
    await caller.expect("CONNECTED", call_id=call_id)
    return call_id


async def test_a_killed_node_frees_its_addresses_and_ends_its_calls(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    alice = await cluster.client(n0, "alice@example.com")
    carol = await cluster.client(n0, "carol@example.com")
    bob = await cluster.client(n1, "bob@example.com")
    dave = await cluster.client(n1, "dave@example.com")
    talking = await _connected(alice, bob, "bob@example.com")
    carol.send_json({"type": "DIAL", "to": "dave@example.com", "ringing": True})
    ringing = (await carol.expect("RINGING"))["call_id"]
    await dave.expect("RING", call_id=ringing)

    killed_at = time.monotonic()
    await n1.kill()
    hangup = await alice.expect("HANGUP", scaled(DEAD_NODE_BOUND + 5), call_id=talking)
    assert hangup["reason"] == "peer_disconnected"
    busy = await carol.expect("BUSY", scaled(DEAD_NODE_BOUND + 5), call_id=ringing)
    assert busy["reason"] == "unavailable"
    assert time.monotonic() - killed_at < scaled(DEAD_NODE_BOUND)
    # Its addresses are free: another node takes them.
    bob_again = await cluster.client(n0, "bob@example.com")
    # And a call to it now stays on the surviving node.
    await _connected(alice, bob_again, "bob@example.com")


async def test_a_node_shut_down_hangs_up_its_calls_with_shutdown(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    alice = await cluster.client(n0, "alice@example.com")
    bob = await cluster.client(n1, "bob@example.com")
    call_id = await _connected(alice, bob, "bob@example.com")
    await n1.stop()
    hangup = await alice.expect("HANGUP", call_id=call_id)
    assert hangup["reason"] == "shutdown"
    # Its addresses were released on the way out, at once.
    await cluster.client(n0, "bob@example.com")


async def test_without_redis_local_calls_go_on_and_the_rest_answers_unavailable(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    alice = await cluster.client(n0, "alice@example.com")
    bob = await cluster.client(n0, "bob@example.com")
    far = await cluster.client(n1, "far@example.com")
    call_id = await _connected(alice, bob, "bob@example.com")

    cluster.redis.kill()
    # A call between two sessions of one node does not need Redis.
    for i in range(5):
        alice.send_json({"type": "MSG", "call_id": call_id, "data": i})
        await bob.expect("MSG", call_id=call_id, data=i)
    newcomer = await cluster.client(n0)
    started = time.monotonic()
    newcomer.send_json({"type": "REGISTER", "address": "new@example.com"})
    failed = await newcomer.expect("REGISTER_FAILED", scaled(3))
    assert failed["reason"] == "unavailable"
    assert time.monotonic() - started < scaled(0.5) + 0.3
    started = time.monotonic()
    alice.send_json({"type": "DIAL", "to": "far@example.com", "ringing": True})
    busy = await alice.expect("BUSY", scaled(3), skip=("RINGING",), to="far@example.com")
    assert busy["reason"] == "unavailable"
    assert time.monotonic() - started < scaled(0.5) + 0.3

    # Redis back, and empty: every connected session is claimed again within 5 s.
    cluster.redis.start()
    restarted = time.monotonic()
    await n0.wait_for_log(r"Claimed 2 address\(es\) again", scaled(10))
    await n1.wait_for_log(r"Claimed 1 address\(es\) again", scaled(10))
    assert time.monotonic() - restarted < scaled(5)
    probe = await cluster.client(n1)
    probe.send_json({"type": "REGISTER", "address": "bob@example.com"})
    failed = await probe.expect("REGISTER_FAILED")
    assert failed["reason"] == "address_in_use"
    far.send_json({"type": "DIAL", "to": "alice@example.com", "ringing": True})
    far_call = (await far.expect("RINGING"))["call_id"]
    # alice is still in her call with bob: busy, but found across the cluster.
    busy = await far.expect("BUSY", call_id=far_call)
    assert busy["reason"] == "already_in_call"
