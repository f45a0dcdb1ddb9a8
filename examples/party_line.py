"""Party lines and presence: agents find each other, then talk in a group call.

Start an exchange first (``make serve``), then::

    .venv/bin/python examples/party_line.py [--url ws://127.0.0.1:8080]

Three agents register with capabilities and locations. A planner asks the
exchange for agents that can ``code`` within 50 km of Leeds, creates a party
line, and the agents it found join it; every PARTY_MSG reaches every other
participant once, and everyone hears who joins and leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import _checkout  # noqa: F401  (a checkout without installing: finds ../src)

from systemx.client import ClientError, ConnectFailed, PartyEvent, PartyMessage, connect

ROOM = "standup@rooms.example.com"
TIMEOUT = 5.0
AGENTS = {
    "ada@agents.example.com": {"capabilities": ["code", "chat"], "location": {"lat": 53.80, "lon": -1.55}},
    "brian@agents.example.com": {"capabilities": ["code"], "location": {"lat": 53.96, "lon": -1.08}},
    "cleo@agents.example.com": {"capabilities": ["code"], "location": {"lat": 51.51, "lon": -0.13}},
}


async def run(url: str) -> None:
    agents = {address: await connect(url, address, metadata=meta) for address, meta in AGENTS.items()}
    planner = await connect(url, "planner@example.com")
    try:
        found = await planner.presence(capabilities=["code"], near=(53.80, -1.55, 50.0))
        print("planner found:", ", ".join(f"{e.address} ({e.status})" for e in found))
        room = await planner.join(ROOM, create=True)
        print(f"planner opened {ROOM}: {room.participants}")
        parties = [await agents[entry.address].join(ROOM, create=False) for entry in found]
        for _ in found:
            event = await room.recv(TIMEOUT)
            assert isinstance(event, PartyEvent)
            print(f"planner hears {event.address} {event.kind}")
        await room.send("Morning! What are you working on?")
        for entry, party in zip(found, parties, strict=True):
            message = await party.recv(TIMEOUT)
            while not isinstance(message, PartyMessage):
                message = await party.recv(TIMEOUT)
            print(f"{entry.address} hears {message.from_}: {message.data!r}")
            await party.send(f"{entry.address.split('@')[0]} here, refactoring the router")
        for _ in found:
            reply = await room.recv(TIMEOUT)
            while not isinstance(reply, PartyMessage):
                reply = await room.recv(TIMEOUT)
            print(f"planner hears {reply.from_}: {reply.data!r}")
        await room.leave()
        print("planner left; the others heard PARTY_LEFT")
    finally:
        await planner.close()
        for client in agents.values():
            await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8080")
    args = parser.parse_args()
    try:
        asyncio.run(run(args.url))
    except ConnectFailed as exc:
        print(f"cannot reach the exchange at {args.url}: {exc}", file=sys.stderr)
        return 2
    except (ClientError, TimeoutError, AssertionError) as exc:
        print(f"failed: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
