"""What the terminal tools share: connection options, stdin lines, output and exit statuses."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import secrets
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from systemx.client import (
    BusyError,
    CallRejected,
    ClientError,
    ConnectFailed,
    ConnectionClosed,
    DialTimeout,
    ExchangeError,
    JoinFailed,
    RegisterFailed,
)

__all__ = [
    "EXIT_ABNORMAL",
    "EXIT_NOT_CONNECTED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "add_connection_args",
    "emit_json",
    "failure",
    "format_data",
    "run_tool",
    "say",
    "send_lines",
    "stdin_lines",
    "tool_parser",
]

DEFAULT_URL = "ws://127.0.0.1:8080"

#: The call (or session) ended normally: HANGUP ``normal`` from either side, or end of input.
EXIT_OK = 0
#: The call ended any other way (timeout, the peer's socket closed, the exchange went away).
EXIT_ABNORMAL = 1
#: Bad command line.
EXIT_USAGE = 2
#: The dialled call never connected: BUSY, rejected, no answer in time, or the request was refused.
EXIT_NOT_CONNECTED = 3
#: The exchange could not be reached, or refused the registration.
EXIT_UNREACHABLE = 4


def tool_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, *, help: str, doc: str | None
) -> argparse.ArgumentParser:
    """The sub-command ``name``, described by its module's ``doc`` as written."""
    return commands.add_parser(
        name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_connection_args(parser: argparse.ArgumentParser, *, address_required: bool) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("SYSTEMX_URL") or DEFAULT_URL,
        help=f"exchange to connect to (default: $SYSTEMX_URL or {DEFAULT_URL})",
    )
    parser.add_argument("--token", help="sent as REGISTER auth")
    parser.add_argument(
        "--as",
        dest="me",
        metavar="ADDRESS",
        required=address_required,
        help="the address to register"
        + ("" if address_required else " (default: a random cli-…@systemx.local)"),
    )


def own_address(me: str | None) -> str:
    return me or f"cli-{secrets.token_hex(4)}@systemx.local"


def say(text: str) -> None:
    """A status line, on stderr so that stdout carries only what was received."""
    print(f"systemx: {text}", file=sys.stderr, flush=True)


def format_data(data: Any, content_type: str | None) -> str:
    """One received payload as one line of text: text as is, JSON compact, binary base64."""
    if isinstance(data, str) and content_type in (None, "text"):
        return data
    if isinstance(data, bytes | bytearray):
        return base64.b64encode(data).decode("ascii")
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def emit_json(frame: dict[str, Any]) -> None:
    """One frame as one JSON line on stdout (binary data base64-encoded)."""
    data = frame.get("data")
    if isinstance(data, bytes | bytearray):
        frame = {**frame, "data": base64.b64encode(data).decode("ascii")}
    print(json.dumps(frame, separators=(",", ":"), ensure_ascii=False), flush=True)


def stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of standard input (without their end of line), then ``None`` at its end.

    A daemon thread reads, so that pipes, terminals and files all work; it is
    left blocked in ``read`` when the tool exits first.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(item: str | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: the tool is exiting
            pass

    def read() -> None:
        # os.read on the descriptor, not sys.stdin: a thread left blocked in a
        # buffered read would hold its lock and abort the interpreter's exit.
        pending = b""
        try:
            while chunk := os.read(0, 65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    put(raw.decode("utf-8", "replace").rstrip("\r"))
        except OSError:
            pass
        if pending:
            put(pending.decode("utf-8", "replace").rstrip("\r"))
        put(None)

    threading.Thread(target=read, name="systemx-stdin", daemon=True).start()
    return queue


async def send_lines(lines: asyncio.Queue[str | None], send: Callable[[str], Awaitable[object]]) -> None:
    """Pass each line from ``lines`` to ``send`` until their end (``None``)."""
    while (line := await lines.get()) is not None:
        await send(line)


def failure(exc: BaseException) -> int:
    """Report ``exc`` in one line and return the exit status it means."""
    say(str(exc) or type(exc).__name__)
    if isinstance(exc, ConnectFailed | RegisterFailed):
        return EXIT_UNREACHABLE
    if isinstance(exc, BusyError | CallRejected | DialTimeout | JoinFailed | ExchangeError):
        return EXIT_NOT_CONNECTED
    if isinstance(exc, ConnectionClosed):
        return EXIT_ABNORMAL
    return EXIT_ABNORMAL


def run_tool(main: Callable[[], Awaitable[int]], interrupted: int = 130) -> int:
    """Run a tool's coroutine; client errors become one line and an exit status, Ctrl-C exits
    ``interrupted`` (130, or 0 for a tool that runs until stopped)."""

    # The tools report in their own words; the library's log lines would repeat them.
    logging.getLogger("systemx.client").addHandler(logging.NullHandler())

    async def guarded() -> int:
        try:
            return await main()
        except ClientError as exc:
            return failure(exc)

    try:
        return asyncio.run(guarded())
    except KeyboardInterrupt:
        return interrupted
