"""A broadcast address with listeners on several nodes behaves as in one process."""

from __future__ import annotations

from tests.cluster.conftest import Cluster
from tests.wsclient import WSClient


async def _listen(ws: WSClient, to: str) -> str:
    ws.send_json({"type": "DIAL", "to": to, "ringing": True})
    connected = await ws.expect("CONNECTED", skip=("RINGING",), to=to)
    call_id: str = connected["call_id"]
    return call_id


async def test_listeners_on_two_nodes_hear_the_broadcaster(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    caster = await cluster.client(n0)
    caster.send_json(
        {"type": "REGISTER", "address": "radio@example.com", "concurrency": "broadcast", "max_listeners": 3}
    )
    await caster.expect("REGISTERED")
    near = await cluster.client(n0, "near@example.com")
    far1 = await cluster.client(n1, "far1@example.com")
    far2 = await cluster.client(n1, "far2@example.com")
    ids = {}
    for ws, name in ((near, "near"), (far1, "far1"), (far2, "far2")):
        ids[name] = await _listen(ws, "radio@example.com")
        ring = await caster.expect("RING", from_=f"{name}@example.com")
        broadcast_id = ring["call_id"]
    # The listener limit counts every node.
    extra = await cluster.client(n1, "extra@example.com")
    extra.send_json({"type": "DIAL", "to": "radio@example.com", "ringing": True})
    busy = await extra.expect("BUSY", skip=("RINGING",), to="radio@example.com")
    assert busy["reason"] == "max_listeners_reached"

    for i in range(5):
        caster.send_json({"type": "MSG", "call_id": broadcast_id, "data": i})
    for ws, name in ((near, "near"), (far1, "far1"), (far2, "far2")):
        for i in range(5):
            await ws.expect("MSG", call_id=ids[name], data=i, from_="radio@example.com")
    # A listener's MSG goes to the broadcaster only, from that listener.
    far1.send_json({"type": "MSG", "call_id": ids["far1"], "data": "hello", "from": "spoof@example.com"})
    await caster.expect("MSG", call_id=broadcast_id, data="hello", from_="far1@example.com")
    # A listener's HANGUP is echoed to it; the broadcaster hears who left.
    far1.send_json({"type": "HANGUP", "call_id": ids["far1"]})
    await far1.expect("HANGUP", call_id=ids["far1"])
    left = await caster.expect("HANGUP", call_id=broadcast_id)
    assert left["from"] == "far1@example.com"
    caster.send_json({"type": "MSG", "call_id": broadcast_id, "data": "still here"})
    await far2.expect("MSG", call_id=ids["far2"], data="still here")
    await near.expect("MSG", call_id=ids["near"], data="still here")
    # The broadcaster's HANGUP ends it for everyone, wherever they are.
    caster.send_json({"type": "HANGUP", "call_id": broadcast_id})
    await far2.expect("HANGUP", call_id=ids["far2"])
    await near.expect("HANGUP", call_id=ids["near"])
    # And nothing is left behind: far1 listens again and is connected afresh.
    await _listen(far1, "radio@example.com")


async def test_a_killed_listener_node_leaves_the_broadcast(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    caster = await cluster.client(n0)
    caster.send_json({"type": "REGISTER", "address": "radio@example.com", "concurrency": "broadcast"})
    await caster.expect("REGISTERED")
    far = await cluster.client(n1, "far@example.com")
    near = await cluster.client(n0, "near@example.com")
    await _listen(far, "radio@example.com")
    broadcast_id = (await caster.expect("RING", from_="far@example.com"))["call_id"]
    near_id = await _listen(near, "radio@example.com")
    await caster.expect("RING", from_="near@example.com")
    await n1.kill()
    left = await caster.expect("HANGUP", call_id=broadcast_id, timeout=10)
    assert left["from"] == "far@example.com" and left["reason"] == "peer_disconnected"
    caster.send_json({"type": "MSG", "call_id": broadcast_id, "data": "on air"})
    await near.expect("MSG", call_id=near_id, data="on air")
