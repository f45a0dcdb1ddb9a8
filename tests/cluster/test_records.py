"""A cluster's call records live in Redis: every node's admin API shows every node's calls."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from typing import Any

from tests.cluster.conftest import Cluster
from tests.wsclient import scaled

_ADMIN = re.compile(r"Admin listening on (http://[^\s]+)")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


async def test_records_of_every_node_are_seen_from_any_node(cluster: Cluster) -> None:
    n0, n1 = await cluster.start(2, env={"SYSTEMX_ADMIN": "on", "SYSTEMX_ADMIN_PORT": "0"})
    match = _ADMIN.search(await n0.wait_for_log(_ADMIN))
    assert match is not None
    admin = match.group(1)
    alice = await cluster.client(n0, "alice@example.com")
    bob = await cluster.client(n1, "bob@example.com")
    carol = await cluster.client(n1, "carol@example.com")
    # A call across the nodes, and a call between two parties of n1, each answered.
    alice.send_json({"type": "DIAL", "to": "bob@example.com", "ringing": True})
    call_id = (await alice.expect("RINGING"))["call_id"]
    await bob.expect("RING", call_id=call_id)
    bob.send_json({"type": "ANSWER", "call_id": call_id})
    await alice.expect("CONNECTED", call_id=call_id)
    # MSGs across the node link are counted by the caller's node, each way.
    alice.send_json({"type": "MSG", "call_id": call_id, "data": "up"})
    await bob.expect("MSG", call_id=call_id, data="up")
    for data in ("down", "again"):
        bob.send_json({"type": "MSG", "call_id": call_id, "data": data})
        await alice.expect("MSG", call_id=call_id, data=data)
    alice.send_json({"type": "HANGUP", "call_id": call_id})
    await bob.expect("HANGUP", call_id=call_id)
    bob.send_json({"type": "DIAL", "to": "carol@example.com", "ringing": True})
    local_id = (await bob.expect("RINGING"))["call_id"]
    await carol.expect("RING", call_id=local_id)
    carol.send_json({"type": "ANSWER", "call_id": local_id})
    await bob.expect("CONNECTED", call_id=local_id)
    carol.send_json({"type": "HANGUP", "call_id": local_id})
    await bob.expect("HANGUP", call_id=local_id)

    deadline = time.monotonic() + scaled(10)
    while True:
        items = (await asyncio.to_thread(_get, admin + "/api/records"))["items"]
        if len(items) >= 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    # The cross-node call once (recorded by the caller's node, naming both), and n1's own call.
    answered = [r for r in items if r["call_id"] == call_id]
    assert len(answered) == 1 and answered[0]["disposition"] == "answered", items
    assert (answered[0]["caller_node"], answered[0]["callee_node"]) == ("n0", "n1"), items
    assert (answered[0]["msgs_up"], answered[0]["bytes_up"]) == (1, 4), items
    assert (answered[0]["msgs_down"], answered[0]["bytes_down"]) == (2, 6 + 7), items
    local = [r for r in items if r["call_id"] == local_id]
    assert len(local) == 1 and local[0]["disposition"] == "answered", items
    assert local[0]["ended_by"] == "callee", items
    assert (local[0]["caller_node"], local[0]["callee_node"]) == ("n1", "n1"), items
