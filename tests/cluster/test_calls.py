"""Calls between parties on different nodes of one cluster."""

from __future__ import annotations

from tests.cluster.conftest import Cluster


async def test_a_call_between_two_nodes(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    alice = await cluster.client(n0, "alice@example.com")
    bob = await cluster.client(n1, "bob@example.com")
    alice.send_json({"type": "DIAL", "to": "bob@example.com"})
    ringing = await alice.expect("RINGING", to="bob@example.com")
    call_id = ringing["call_id"]
    await bob.expect("RING", from_="alice@example.com", call_id=call_id)
    bob.send_json({"type": "ANSWER", "call_id": call_id})
    await alice.expect("CONNECTED", call_id=call_id, to="bob@example.com")
    for i in range(20):
        alice.send_json({"type": "MSG", "call_id": call_id, "data": {"n": i}})
    for i in range(20):
        await bob.expect("MSG", call_id=call_id, from_="alice@example.com", data={"n": i})
    bob.send_json({"type": "MSG", "call_id": call_id, "data": "hi", "from": "mallory@example.com"})
    await alice.expect("MSG", call_id=call_id, from_="bob@example.com", data="hi")
    alice.send_json({"type": "HANGUP", "call_id": call_id})
    await bob.expect("HANGUP", call_id=call_id)
