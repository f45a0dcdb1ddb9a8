"""A wake-on-ring agent: asleep (and costing nothing) until someone dials it.

Run an exchange that defines the ``sleepy`` spawn handler (this script; see
``examples/spawn_handlers.toml``)::

    SYSTEMX_SPAWN_HANDLERS=examples/spawn_handlers.toml make serve

then, in another terminal, the whole story in one command::

    .venv/bin/python examples/sleepy_agent.py --demo

What happens:

1. ``sleepy_agent.py`` registers ``sleepy@agents.example.com`` with
   ``mode: "wake_on_ring"`` and the spawn handler ``sleepy``, which the
   operator defined to run this very script, then sends SLEEP_ACK: the
   exchange closes the socket (4000 ``sleep``) and keeps the wake profile. The
   address now shows as ``asleep``.
2. ``--demo`` then plays a caller and dials the sleeping address. The exchange
   answers RINGING ``waking: true`` and runs the handler: this script starts
   again with ``SYSTEMX_URL``, ``SYSTEMX_ADDRESS`` and ``SYSTEMX_CALL_ID`` in its
   environment.
3. The woken agent connects, registers, receives the held RING (same call id),
   answers, reads the caller's MSG, replies, hangs up and goes back to sleep.

Without ``--demo`` the script only does step 1 (or step 3 when woken), so
you can dial it from any client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import _checkout  # noqa: F401  (a checkout without installing: finds ../src)

from systemx.client import ClientError, ConnectFailed, connect

ADDRESS = "sleepy@agents.example.com"
TIMEOUT = 15.0


def say(who: str, text: str) -> None:
    print(f"[{who}] {text}", flush=True)


async def go_to_sleep(url: str, address: str) -> None:
    # The exchange runs only what its operator defined; the agent names it.
    handler = {"type": "spawn", "handler": "sleepy"}
    client = await connect(url, address, mode="wake_on_ring", wake_handler=handler)
    say("agent", f"registered {address} with a spawn wake handler; going to sleep")
    closed = await client.sleep()
    say("agent", f"asleep (exchange closed the socket: {closed.code} {closed.reason})")


async def woken(url: str, address: str, call_id: str) -> None:
    say("agent", f"woken for call {call_id}; registering {address}")
    async with await connect(url, address) as client:
        incoming = await client.next_call(timeout=TIMEOUT)
        say("agent", f"RING from {incoming.from_} (call {incoming.call_id})")
        call = await incoming.answer()
        message = await call.recv(TIMEOUT)
        say("agent", f"heard: {message.data!r}")
        await call.send(f"Good morning {message.from_}, I was asleep until you rang.")
        await call.hangup()
        say("agent", "hung up; back to sleep")
        await client.sleep()


async def demo(url: str) -> None:
    await go_to_sleep(url, ADDRESS)
    async with await connect(url, "caller@example.com") as caller:
        [entry] = await caller.presence(domain="agents.example.com")
        say("caller", f"{entry.address} is {entry.status}; dialling")
        call = await caller.dial(ADDRESS, {"subject": "wake up"}, timeout=TIMEOUT * 2)
        say("caller", f"CONNECTED to {call.peer} (call {call.call_id})")
        await call.send("Are you awake?")
        reply = await call.recv(TIMEOUT)
        say("caller", f"reply: {reply.data!r}")
        async with asyncio.timeout(TIMEOUT):
            reason = await call.ended
        say("caller", f"HANGUP ({reason})")
        [entry] = await caller.presence(domain="agents.example.com")
        while entry.status != "asleep":
            # The agent's SLEEP_ACK may land just after its HANGUP; ask until it has.
            async with asyncio.timeout(TIMEOUT):
                [entry] = await caller.presence(domain="agents.example.com")
        say("caller", f"{entry.address} is {entry.status} again")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=os.environ.get("SYSTEMX_URL", "ws://127.0.0.1:8080"))
    parser.add_argument("--address", default=os.environ.get("SYSTEMX_ADDRESS", ADDRESS))
    parser.add_argument("--demo", action="store_true", help="sleep, then dial the agent and talk to it")
    args = parser.parse_args()
    call_id = os.environ.get("SYSTEMX_CALL_ID")
    try:
        if call_id:
            asyncio.run(woken(args.url, args.address, call_id))
        elif args.demo:
            asyncio.run(demo(args.url))
        else:
            asyncio.run(go_to_sleep(args.url, args.address))
    except ConnectFailed as exc:
        print(f"cannot reach the exchange at {args.url}: {exc}", file=sys.stderr)
        return 2
    except (ClientError, TimeoutError) as exc:
        print(f"failed: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
