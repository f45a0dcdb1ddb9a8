"""``systemx party NAME --as ME [--create]``: sit on a party line from the terminal.

Each line of standard input is sent as one PARTY_MSG; messages, joins and
leaves print to standard output (``--json``: one JSON object per line). When
input ends the tool LEAVEs and exits 0. Without ``--create`` a line that does
not exist is refused (``JOIN_FAILED no_such_party``, exit 3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from systemx.client import ClientError, Party, PartyEvent, connect
from systemx.tools.common import (
    EXIT_ABNORMAL,
    EXIT_OK,
    add_connection_args,
    emit_json,
    format_data,
    say,
    stdin_lines,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "party",
        help="join a party line: stdin lines become PARTY_MSGs; joins, leaves and messages print",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="the party line, e.g. standup@rooms.example.com")
    add_connection_args(parser, address_required=True)
    parser.add_argument("--create", action="store_true", help="create the line when it does not exist")
    parser.add_argument("--json", action="store_true", help="print each event as one JSON line")


async def run(args: argparse.Namespace) -> int:
    async with await connect(args.url, args.me, auth=args.token) as client:
        party = await client.join(args.name, create=args.create)
        if args.json:
            emit_json({"type": "JOINED", "party": party.name, "participants": party.participants})
        else:
            say(f"joined {party.name}: {', '.join(party.participants)}")
        done = asyncio.create_task(_send_input(party))
        reader = asyncio.create_task(_print_events(party, args.json))
        await asyncio.wait({done, reader}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():  # removed from the line, or the connection closed
            done.cancel()
            say(f"off the line: {party.left.result() if party.left.done() else 'closed'}")
            return EXIT_ABNORMAL
        with contextlib.suppress(ClientError):
            await party.leave()
        await reader
        return EXIT_OK


async def _send_input(party: Party) -> None:
    lines = stdin_lines()
    with contextlib.suppress(ClientError):
        while (line := await lines.get()) is not None:
            await party.send(line)


async def _print_events(party: Party, as_json: bool) -> None:
    async for event in party:
        if isinstance(event, PartyEvent):
            if as_json:
                kind = "PARTY_JOINED" if event.kind == "joined" else "PARTY_LEFT"
                frame = {"type": kind, "party": event.party, "address": event.address}
                if event.reason is not None:
                    frame["reason"] = event.reason
                emit_json(frame)
            elif event.kind == "joined":
                print(f"* {event.address} joined", flush=True)
            else:
                print(f"* {event.address} left ({event.reason})", flush=True)
        elif as_json:
            emit_json(
                {
                    "type": "PARTY_MSG",
                    "party": event.party,
                    "from": event.from_,
                    "data": event.data,
                    "content_type": event.content_type,
                }
            )
        else:
            print(f"<{event.from_}> {format_data(event.data, event.content_type)}", flush=True)
