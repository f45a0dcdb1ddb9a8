"""Calls between parties on different nodes of one cluster."""

from __future__ import annotations

from tests.cluster.conftest import Cluster


async def test_a_call_between_two_nodes(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    alice = await cluster.client(n0, "alice@example.com")
    bob = await cluster.client(n1, "bob@example.com")
    alice.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
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


async def test_an_address_is_held_by_one_session_in_the_whole_cluster(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    first = await cluster.client(n0, "agent@example.com")
    second = await cluster.client(n1)
    second.send_json({"type": "REGISTER", "address": "agent@EXAMPLE.com"})
    await second.expect("REGISTER_FAILED", reason="address_in_use")
    await first.close()
    # Released when its holder goes (the release reaches Redis just after the close):
    # the other node may claim it now.
    for _ in range(100):
        second.send_json({"type": "REGISTER", "address": "agent@example.com"})
        answer = await second.recv()
        if answer["type"] == "REGISTERED":
            break
        assert answer["reason"] == "address_in_use", answer
    else:
        raise AssertionError("agent@example.com was never released")
    caller = await cluster.client(n0, "caller@example.com")
    caller.send_json({"type": "DIAL", "to": "agent@example.com", "ringing": True})
    call_id = (await caller.expect("RINGING"))["call_id"]
    await second.expect("RING", call_id=call_id, from_="caller@example.com")


async def test_twenty_racing_registers_on_three_nodes_make_one_holder(cluster: Cluster) -> None:
    nodes = await cluster.start(3)
    clients = [await cluster.client(nodes[i % 3]) for i in range(20)]
    for ws in clients:
        ws.send_json({"type": "REGISTER", "address": "race@example.com"})
    answers = [await ws.recv() for ws in clients]
    winners = [a for a in answers if a["type"] == "REGISTERED"]
    losers = [a for a in answers if a["type"] == "REGISTER_FAILED"]
    assert len(winners) == 1, answers
    assert len(losers) == 19 and all(a["reason"] == "address_in_use" for a in losers), answers


async def test_refusals_cross_nodes_with_their_reasons(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    caller = await cluster.client(n0, "caller@example.com")
    dnd = await cluster.client(n1, "dnd@example.com")
    dnd.send_json({"type": "STATUS", "status": "dnd"})
    await dnd.roundtrip()
    caller.send_json({"type": "DIAL", "to": "dnd@example.com", "ringing": True})
    busy = await caller.expect("BUSY", skip=("RINGING",), to="dnd@example.com")
    assert busy["reason"] == "dnd"
    caller.send_json({"type": "DIAL", "to": "nobody@example.com", "ringing": True})
    busy = await caller.expect("BUSY", skip=("RINGING",), to="nobody@example.com")
    assert busy["reason"] == "no_such_address"
    # Occupied: in a call with a party of its own node.
    talker = await cluster.client(n1, "talker@example.com")
    other = await cluster.client(n1, "other@example.com")
    other.send_json({"type": "DIAL", "to": "talker@example.com", "ringing": True})
    call_id = (await talker.expect("RING"))["call_id"]
    talker.send_json({"type": "ANSWER", "call_id": call_id})
    await other.expect("CONNECTED", skip=("RINGING",))
    caller.send_json({"type": "DIAL", "to": "talker@example.com", "ringing": True})
    busy = await caller.expect("BUSY", skip=("RINGING",), to="talker@example.com")
    assert busy["reason"] == "already_in_call"


async def test_caller_cancel_and_callee_reject_across_nodes(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    caller = await cluster.client(n0, "caller@example.com")
    callee = await cluster.client(n1, "callee@example.com")
    caller.send_json({"type": "DIAL", "to": "callee@example.com", "ringing": True})
    call_id = (await caller.expect("RINGING"))["call_id"]
    await callee.expect("RING", call_id=call_id)
    caller.send_json({"type": "HANGUP", "call_id": call_id})
    await callee.expect("HANGUP", call_id=call_id)
    caller.send_json({"type": "DIAL", "to": "callee@example.com", "ringing": True})
    call_id = (await caller.expect("RINGING"))["call_id"]
    await callee.expect("RING", call_id=call_id)
    callee.send_json({"type": "HANGUP", "call_id": call_id, "reason": "declined"})
    hangup = await caller.expect("HANGUP", call_id=call_id)
    assert hangup["reason"] == "declined"
    # Both are free again: a new call connects.
    callee.send_json({"type": "DIAL", "to": "caller@example.com", "ringing": True})
    call_id = (await callee.expect("RINGING"))["call_id"]
    caller.send_json({"type": "ANSWER", "call_id": (await caller.expect("RING"))["call_id"]})
    await callee.expect("CONNECTED", call_id=call_id)


async def test_an_unanswered_call_across_nodes_times_out(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2, env={"SYSTEMX_CALL_TIMEOUT": "1s"})
    caller = await cluster.client(n0, "caller@example.com")
    callee = await cluster.client(n1, "callee@example.com")
    caller.send_json({"type": "DIAL", "to": "callee@example.com", "ringing": True})
    call_id = (await caller.expect("RINGING"))["call_id"]
    await callee.expect("RING", call_id=call_id)
    busy = await caller.expect("BUSY", call_id=call_id)
    assert busy["reason"] == "timeout"
    hangup = await callee.expect("HANGUP", call_id=call_id)
    assert hangup["reason"] == "timeout"


async def test_parallel_callee_takes_calls_from_several_nodes(cluster: Cluster) -> None:
    n0, n1, n2 = await cluster.start(3)
    desk = await cluster.client(n0)
    desk.send_json({"type": "REGISTER", "address": "desk@example.com", "concurrency": "parallel"})
    await desk.expect("REGISTERED")
    callers = [await cluster.client(n, f"c{i}@example.com") for i, n in enumerate((n1, n2))]
    ids = []
    for ws in callers:
        ws.send_json({"type": "DIAL", "to": "desk@example.com", "ringing": True})
        ids.append((await ws.expect("RINGING"))["call_id"])
    rung = {(await desk.expect("RING"))["call_id"] for _ in callers}
    assert rung == set(ids)
    for call_id in ids:
        desk.send_json({"type": "ANSWER", "call_id": call_id})
    for ws, call_id in zip(callers, ids, strict=True):
        await ws.expect("CONNECTED", call_id=call_id)
        desk.send_json({"type": "MSG", "call_id": call_id, "data": call_id})
        await ws.expect("MSG", call_id=call_id, data=call_id, from_="desk@example.com")


async def test_workers_share_one_port_as_one_exchange(cluster: Cluster) -> None:
    import json
    import urllib.request

    from tests.conftest import SystemXProcess

    server = SystemXProcess(
        cluster.workdir / "workers",
        {"SYSTEMX_REDIS_URL": cluster.redis_url, "SYSTEMX_NODE_ID": "pool"},
        ["--workers", "2"],
    )
    cluster.nodes.append(server)
    await server.start()
    # Both workers answer on the one port (the kernel spreads connections) once both listen.
    await server.wait_for_log(r"pool-w0 .*epoch")
    await server.wait_for_log(r"pool-w1 .*epoch")
    first = await server.wait_for_log(r"SystemX listening on")
    await server.wait_for_log(r"SystemX listening on", since=server.logs.index(first) + 1)
    clients = [await cluster.client(server, f"w{i}@example.com") for i in range(12)]
    seen = set()
    for _ in range(40):
        with urllib.request.urlopen(server.http_url + "/healthz", timeout=5) as answer:
            seen.add(json.load(answer)["cluster"]["node"])
    assert seen == {"pool-w0", "pool-w1"}
    # Every client reaches every other, whichever worker each landed on.
    for i, caller in enumerate(clients[:6]):
        callee = clients[11 - i]
        caller.send_json({"type": "DIAL", "to": f"w{11 - i}@example.com", "ringing": True})
        call_id = (await caller.expect("RINGING"))["call_id"]
        await callee.expect("RING", call_id=call_id, from_=f"w{i}@example.com")
        callee.send_json({"type": "ANSWER", "call_id": call_id})
        await caller.expect("CONNECTED", call_id=call_id)
        callee.send_json({"type": "MSG", "call_id": call_id, "data": i})
        await caller.expect("MSG", call_id=call_id, data=i)


async def test_registers_of_one_address_are_limited_across_the_cluster(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2, env={"SYSTEMX_CLUSTER_REGISTER_LIMIT": "4"})
    # Four REGISTERs of one address, alternating nodes and each from a new session: within the limit.
    for i in range(4):
        ws = await cluster.client((n0, n1)[i % 2])
        await ws.register("hopper@example.com")
        await ws.close()
    # The fifth, on either node, is over the cluster-wide limit, though each session is new.
    ws = await cluster.client(n1)
    ws.send_json({"type": "REGISTER", "address": "hopper@example.com"})
    failed = await ws.expect("REGISTER_FAILED", reason="rate_limited")
    assert "retry in" in failed["detail"]
    # Another address is not affected.
    await ws.register("other@example.com")
