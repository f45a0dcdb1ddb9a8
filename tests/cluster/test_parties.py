"""Party lines whose members sit on different nodes of one cluster."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from tests.cluster.conftest import NODE_TTL_MS, Cluster
from tests.wsclient import WSClient, scaled

PARTY = "standup@team.example.com"


async def join_all(party: str, members: list[tuple[WSClient, str]]) -> None:
    """Join each member in turn; each JOINED lists everyone so far, and everyone before hears of it."""
    for i, (ws, address) in enumerate(members):
        ws.send_json({"type": "JOIN", "party": party, "create_if_missing": True})
        await ws.expect("JOINED", party=party, participants=[a for _, a in members[: i + 1]])
        for earlier, _ in members[:i]:
            await earlier.expect("PARTY_JOINED", party=party, address=address)


async def collect(ws: WSClient, senders: set[str]) -> Counter[tuple[str, Any]]:
    """PARTY_MSGs until every one of ``senders`` sent its final marker: (from, data) -> how often."""
    seen: Counter[tuple[str, Any]] = Counter()
    done: set[str] = set()
    while done != senders:
        msg = await ws.expect("PARTY_MSG", party=PARTY)
        if msg["data"] == "end":
            done.add(msg["from"])
        else:
            seen[(msg["from"], msg["data"])] += 1
    return seen


async def test_every_party_msg_reaches_every_other_member_once_across_three_nodes(cluster: Cluster) -> None:
    nodes = await cluster.start(3)
    members = []
    for i in range(6):
        address = f"m{i}@example.com"
        members.append((await cluster.client(nodes[i % 3], address), address))
    await join_all(PARTY, members)
    for ws, _ in members:
        for n in range(10):
            # A "from" of the sender's own is ignored: the sender's node writes it.
            ws.send_json({"type": "PARTY_MSG", "party": PARTY, "data": n, "from": "mallory@example.com"})
        ws.send_json({"type": "PARTY_MSG", "party": PARTY, "data": "end"})
    everyone = {address for _, address in members}
    results = await asyncio.gather(*(collect(ws, everyone - {address}) for ws, address in members))
    for (ws, address), seen in zip(members, results, strict=True):
        expected = Counter({(other, n): 1 for other in everyone - {address} for n in range(10)})
        assert seen == expected, address  # once each, none of its own
        ws.send_json({"type": "HEARTBEAT"})
        await ws.expect("HEARTBEAT_ACK")  # nothing else came


async def test_join_and_leave_notices_span_nodes(cluster: Cluster) -> None:
    n0, n1, n2 = await cluster.start(3)
    alice = await cluster.client(n0, "alice@example.com")
    bob = await cluster.client(n1, "bob@example.com")
    carol = await cluster.client(n2, "carol@example.com")
    # No line yet, anywhere.
    bob.send_json({"type": "JOIN", "party": PARTY})
    await bob.expect("JOIN_FAILED", party=PARTY, reason="no_such_party")
    # A line's name may not be an address registered on another node.
    alice.send_json({"type": "JOIN", "party": "carol@example.com", "create_if_missing": True})
    await alice.expect("JOIN_FAILED", party="carol@example.com", reason="address_in_use")

    alice.send_json({"type": "JOIN", "party": PARTY, "create_if_missing": True})
    await alice.expect("JOINED", party=PARTY, participants=["alice@example.com"])
    # The line exists on another node: joining without create_if_missing works.
    bob.send_json({"type": "JOIN", "party": "standup@Team.Example.COM"})
    await bob.expect("JOINED", party=PARTY, participants=["alice@example.com", "bob@example.com"])
    await alice.expect("PARTY_JOINED", party=PARTY, address="bob@example.com")
    carol.send_json({"type": "JOIN", "party": PARTY})
    everyone = ["alice@example.com", "bob@example.com", "carol@example.com"]
    await carol.expect("JOINED", party=PARTY, participants=everyone)
    await alice.expect("PARTY_JOINED", party=PARTY, address="carol@example.com")
    await bob.expect("PARTY_JOINED", party=PARTY, address="carol@example.com")
    # Joining again: JOINED with every node's members, and nobody hears of it.
    alice.send_json({"type": "JOIN", "party": PARTY})
    await alice.expect("JOINED", party=PARTY, participants=everyone)

    bob.send_json({"type": "LEAVE", "party": PARTY})
    await bob.expect("LEFT", party=PARTY)
    for ws in (alice, carol):
        await ws.expect("PARTY_LEFT", party=PARTY, address="bob@example.com", reason="left")
    bob.send_json({"type": "PARTY_MSG", "party": PARTY, "data": "hi"})
    await bob.expect("ERROR", reason="not_in_party")

    # A session that ends on its node: the others hear PARTY_LEFT disconnected.
    carol.transport.disconnect()
    await alice.expect("PARTY_LEFT", party=PARTY, address="carol@example.com", reason="disconnected")
    dave = await cluster.client(n2, "dave@example.com")
    dave.send_json({"type": "JOIN", "party": PARTY})
    await dave.expect("JOINED", party=PARTY, participants=["alice@example.com", "dave@example.com"])
    await alice.expect("PARTY_JOINED", party=PARTY, address="dave@example.com")
    # The last member of a node leaving ends nothing elsewhere; the line's last member closes it.
    dave.send_json({"type": "LEAVE", "party": PARTY})
    await dave.expect("LEFT", party=PARTY)
    await alice.expect("PARTY_LEFT", party=PARTY, address="dave@example.com", reason="left")
    alice.send_json({"type": "LEAVE", "party": PARTY})
    await alice.expect("LEFT", party=PARTY)
    bob.send_json({"type": "JOIN", "party": PARTY})
    await bob.expect("JOIN_FAILED", party=PARTY, reason="no_such_party")


async def test_a_killed_nodes_members_leave(cluster: Cluster) -> None:
    n0, n1, n2 = await cluster.start(3)
    members = [
        (await cluster.client(n0, "a@example.com"), "a@example.com"),
        (await cluster.client(n1, "b@example.com"), "b@example.com"),
        (await cluster.client(n2, "c@example.com"), "c@example.com"),
        (await cluster.client(n2, "d@example.com"), "d@example.com"),
    ]
    await join_all(PARTY, members)
    (a, _), (b, _) = members[:2]
    loop = asyncio.get_running_loop()
    killed = loop.time()
    await n2.kill()
    budget = scaled(NODE_TTL_MS / 1000 + 1 + 1)
    for ws in (a, b):
        left = {(await ws.expect("PARTY_LEFT", budget, party=PARTY, reason="disconnected"))["address"]}
        left.add((await ws.expect("PARTY_LEFT", budget, party=PARTY, reason="disconnected"))["address"])
        assert left == {"c@example.com", "d@example.com"}
    elapsed = loop.time() - killed
    print(f"members of the killed node left after {elapsed:.2f} s (node TTL {NODE_TTL_MS} ms)")
    assert elapsed < scaled(NODE_TTL_MS / 1000 + 1 + 0.5), elapsed
    # The line goes on between the nodes left, and nothing is sent to the dead node any more.
    a.send_json({"type": "PARTY_MSG", "party": PARTY, "data": "still here"})
    await b.expect("PARTY_MSG", party=PARTY, from_="a@example.com", data="still here")


async def test_the_participant_limit_holds_across_nodes(cluster: Cluster) -> None:
    nodes = await cluster.start(3, env={"SYSTEMX_PARTY_MAX_PARTICIPANTS": "3"})
    members = [(await cluster.client(nodes[i], f"m{i}@example.com"), f"m{i}@example.com") for i in range(3)]
    await join_all(PARTY, members)
    for i, node in enumerate(nodes):
        late = await cluster.client(node, f"late{i}@example.com")
        late.send_json({"type": "JOIN", "party": PARTY})
        await late.expect("JOIN_FAILED", party=PARTY, reason="party_full")
    # A place freed on one node is taken on another.
    members[1][0].send_json({"type": "LEAVE", "party": PARTY})
    await members[1][0].expect("LEFT", party=PARTY)
    await members[0][0].expect("PARTY_LEFT", party=PARTY, address="m1@example.com")
    await members[2][0].expect("PARTY_LEFT", party=PARTY, address="m1@example.com")
    late = await cluster.client(nodes[2], "later@example.com")
    late.send_json({"type": "JOIN", "party": PARTY})
    await late.expect(
        "JOINED", party=PARTY, participants=["m0@example.com", "m2@example.com", "later@example.com"]
    )


async def test_a_stopping_nodes_members_leave(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2)
    members = [
        (await cluster.client(n0, "a@example.com"), "a@example.com"),
        (await cluster.client(n1, "b@example.com"), "b@example.com"),
    ]
    await join_all(PARTY, members)
    await n1.stop()
    a = members[0][0]
    await a.expect("PARTY_LEFT", party=PARTY, address="b@example.com", reason="disconnected")
    a.send_json({"type": "JOIN", "party": PARTY})
    await a.expect("JOINED", party=PARTY, participants=["a@example.com"])
