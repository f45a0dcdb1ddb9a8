"""``systemx dial ADDRESS --as ME``: call an address from the terminal.

Each line of standard input is sent as one MSG; each MSG received is printed
as one line on standard output (``--json``: every frame as one JSON line).
When input ends the call is hung up (``--wait``: wait for the other side to
hang up instead). Exit status: 0 for a call that ended ``normal``, 1 for any
other end, 3 when it never connected (BUSY and its reason, rejected, no answer
within ``--timeout``), 4 when the exchange is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio

from systemx.client import BusyError, Call, CallRejected, ClientError, DialTimeout, connect
from systemx.tools.common import (
    EXIT_ABNORMAL,
    EXIT_NOT_CONNECTED,
    EXIT_OK,
    add_connection_args,
    emit_json,
    format_data,
    own_address,
    say,
    stdin_lines,
)

__all__ = ["add_parser", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "dial",
        help="call an address: stdin lines become MSGs, received MSGs print to stdout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", help="the address to dial, e.g. bob@example.com")
    add_connection_args(parser, address_required=False)
    parser.add_argument("--json", action="store_true", help="print every frame as one JSON line")
    parser.add_argument(
        "--wait", action="store_true", help="when stdin ends, wait for the other side to hang up"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up when not connected within this long (default 60; the ring timeout may end it first)",
    )


async def run(args: argparse.Namespace) -> int:
    me = own_address(args.me)
    async with await connect(args.url, me, auth=args.token) as client:
        try:
            call = await client.dial(args.address, timeout=args.timeout)
        except BusyError as exc:
            if args.json:
                emit_json({"type": "BUSY", "to": exc.to, "reason": exc.reason, "call_id": exc.call_id})
            say(str(exc))
            return EXIT_NOT_CONNECTED
        except (CallRejected, DialTimeout) as exc:
            if args.json and isinstance(exc, CallRejected):
                emit_json({"type": "HANGUP", "call_id": exc.call_id, "reason": exc.reason})
            say(str(exc))
            return EXIT_NOT_CONNECTED
        if args.json:
            emit_json({"type": "CONNECTED", "call_id": call.call_id, "to": call.peer})
        else:
            say(f"connected to {call.peer} (call {call.call_id})")
        sender = asyncio.create_task(_send_input(call, args.wait))
        try:
            async for message in call:
                if args.json:
                    emit_json(
                        {
                            "type": "MSG",
                            "call_id": message.call_id,
                            "from": message.from_,
                            "data": message.data,
                            "content_type": message.content_type,
                        }
                    )
                else:
                    print(format_data(message.data, message.content_type), flush=True)
        finally:
            sender.cancel()
            if call.active:  # interrupted (Ctrl-C): hang up rather than just drop the socket
                await call.hangup()
        reason = call.hangup_reason or "normal"
        if args.json:
            emit_json({"type": "HANGUP", "call_id": call.call_id, "reason": reason})
        say(f"call ended: {reason}")
        return EXIT_OK if reason == "normal" else EXIT_ABNORMAL


async def _send_input(call: Call, wait: bool) -> None:
    lines = stdin_lines()
    try:
        while (line := await lines.get()) is not None:
            await call.send(line)
        if not wait:
            await call.hangup()
    except ClientError:
        pass  # the call ended first: the reader reports how
