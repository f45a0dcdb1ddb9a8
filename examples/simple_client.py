"""The Phase 1 walk-through: two endpoints register, dial, answer, exchange MSGs and hang up.

Start an exchange first (``make serve``, or ``.venv/bin/systemx serve``), then::

    .venv/bin/python examples/simple_client.py [--url ws://127.0.0.1:8080]

(``make example`` runs it too.)

Each step is printed as it happens. The exit status is 0 when every step
worked, 1 when one failed and 2 when the exchange could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import _checkout  # noqa: F401  (a checkout without installing: finds ../src)

from systemx.client import ClientError, ConnectFailed, connect

ALICE = "alice@example.com"
BOB = "bob@example.com"
STEP_TIMEOUT = 5.0


def step(text: str) -> None:
    print(text, flush=True)


async def run(url: str) -> None:
    async with await connect(url, ALICE) as alice, await connect(url, BOB) as bob:
        step(f"1. {ALICE} registered (session {alice.session_id})")
        step(f"2. {BOB} registered (session {bob.session_id})")

        step(f"3. {ALICE} dials {BOB}")
        dialling = asyncio.create_task(alice.dial(BOB, {"subject": "Phase 1 demo"}, timeout=STEP_TIMEOUT))

        incoming = await bob.next_call(timeout=STEP_TIMEOUT)
        step(f"4. {BOB} hears RING from {incoming.from_} (call {incoming.call_id}, {incoming.metadata})")
        bob_call = await incoming.answer()
        step(f"5. {BOB} answers")

        alice_call = await dialling
        step(f"6. {ALICE} is CONNECTED to {alice_call.peer} (call {alice_call.call_id})")

        await alice_call.send("Hello Bob, can you hear me?")
        message = await bob_call.recv(STEP_TIMEOUT)
        step(f"7. {BOB} receives MSG ({message.content_type}) from {message.from_}: {message.data!r}")

        await bob_call.send_json({"reply": "Loud and clear", "signal": 5})
        message = await alice_call.recv(STEP_TIMEOUT)
        step(f"8. {ALICE} receives MSG ({message.content_type}) from {message.from_}: {message.data!r}")

        await alice_call.hangup()
        step(f"9. {ALICE} hangs up")

        async with asyncio.timeout(STEP_TIMEOUT):
            reason = await bob_call.ended
        step(f"10. {BOB} hears HANGUP (reason: {reason})")
    step("Done: both clients disconnected cleanly.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="SystemX Phase 1 walk-through with two clients.")
    parser.add_argument("--url", default="ws://127.0.0.1:8080", help="exchange URL (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args.url))
    except ConnectFailed as exc:
        hint = "Is the exchange running? Start it with: make serve (or .venv/bin/systemx serve)"
        print(f"error: {exc}\n{hint}", file=sys.stderr)
        return 2
    except (ClientError, TimeoutError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
