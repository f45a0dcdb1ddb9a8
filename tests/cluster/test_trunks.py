"""A federation trunk held by one node of a cluster serves DIALs from every node."""

from __future__ import annotations

from tests.cluster.conftest import Cluster
from tests.conftest import SystemXProcess


async def test_a_trunk_on_one_node_serves_dials_from_every_node(cluster: Cluster) -> None:
    hq = SystemXProcess(cluster.workdir / "hq", {})
    cluster.nodes.append(hq)
    await hq.start()
    n0 = await cluster.add(
        {
            "FEDERATION_ENABLED": "true",
            "FEDERATION_PEER_URL": hq.url,
            "FEDERATION_ROUTES": "*@hq.test",
            "FEDERATION_DOMAIN": "branch.test",
            "FEDERATION_PEER_ID": "hq",
            "FEDERATION_RECONNECT_DELAY_MS": "100",
        },
        name="n0",
    )
    await n0.wait_for_log(r"Trunk \S+ up")
    n1 = await cluster.add(name="n1")
    await n1.wait_for_log(r"Trunk routes of other nodes: n0: \*@hq\.test")

    boss = await cluster.client(hq, "boss@hq.test")
    worker = await cluster.client(n1, "worker@branch.test")
    worker.send_json({"type": "DIAL", "to": "boss@hq.test", "ringing": True})
    call_id = (await worker.expect("RINGING", to="boss@hq.test"))["call_id"]
    ring = await boss.expect("RING", from_="worker@branch.test")
    boss.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await worker.expect("CONNECTED", call_id=call_id)
    worker.send_json({"type": "MSG", "call_id": call_id, "data": "up"})
    await boss.expect("MSG", call_id=ring["call_id"], data="up", from_="worker@branch.test")
    boss.send_json({"type": "MSG", "call_id": ring["call_id"], "data": "down"})
    await worker.expect("MSG", call_id=call_id, data="down", from_="boss@hq.test")
    boss.send_json({"type": "HANGUP", "call_id": ring["call_id"]})
    await worker.expect("HANGUP", call_id=call_id)
    # An address no trunk routes is still nobody's.
    worker.send_json({"type": "DIAL", "to": "ghost@nowhere.test", "ringing": True})
    busy = await worker.expect("BUSY", skip=("RINGING",), to="ghost@nowhere.test")
    assert busy["reason"] == "no_such_address"
