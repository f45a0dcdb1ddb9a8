"""``systemx answer --as ME [--exec CMD]``: take calls from the terminal, or bridge each to a program.

Without ``--exec``, each call is answered in turn: received MSGs print to
standard output, standard input lines are sent to the current call.

With ``--exec CMD``, each call starts ``CMD`` (through ``/bin/sh -c``) and is
bridged to it: every MSG received is written to its standard input as one line
(text as is, JSON compact, binary base64) and every line it writes to standard
output is sent as one MSG. The program's exit hangs the call up (``normal`` for
status 0, ``exit status N`` otherwise); the caller's HANGUP closes its standard
input and, if it has not exited ``--grace`` seconds later, terminates it (SIGTERM,
then SIGKILL after as long again). The program finds ``SYSTEMX_CALL_ID``,
``SYSTEMX_CALLER``, ``SYSTEMX_ADDRESS`` and ``SYSTEMX_URL`` in its environment.

The address reconnects by itself when the exchange restarts (``--no-reconnect``
to exit instead). ``--once`` exits after the first call, with 0 when it ended
``normal`` and 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from typing import Any

from systemx.client import Call, Client, ClientError, ConnectionEvent, Disconnected, connect
from systemx.tools.common import (
    EXIT_ABNORMAL,
    EXIT_OK,
    add_connection_args,
    format_data,
    say,
    stdin_lines,
)

__all__ = ["add_parser", "run"]

# Longest line read from an --exec program (the exchange's default largest message).
_LINE_LIMIT = 1_048_576


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "answer",
        help="wait for calls; with --exec, bridge each call to a new process's stdin/stdout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_args(parser, address_required=True)
    parser.add_argument("--exec", dest="exec_command", metavar="CMD", help="run CMD (sh -c) for each call")
    parser.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after a HANGUP, how long the program may run on before it is terminated (default 5)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        metavar="N",
        help="take up to N calls at once (REGISTER concurrency parallel; useful with --exec)",
    )
    parser.add_argument("--once", action="store_true", help="exit after the first call")
    parser.add_argument("--no-reconnect", action="store_true", help="exit when the connection drops")


def _connection_change(event: ConnectionEvent) -> None:
    if isinstance(event, Disconnected):
        say(f"disconnected ({event.code}{' ' + event.reason if event.reason else ''}); reconnecting")
    else:
        say(f"reconnected after {event.attempts} attempt(s), {event.downtime:.1f} s; waiting for calls")


async def run(args: argparse.Namespace) -> int:
    parallel = args.parallel is not None and args.parallel > 1
    client = await connect(
        args.url,
        args.me,
        auth=args.token,
        concurrency="parallel" if parallel else None,
        max_sessions=args.parallel if parallel else None,
        reconnect=not args.no_reconnect,
        on_connection_change=_connection_change,
    )
    async with client:
        say(f"{client.address} waiting for calls on {args.url}")
        lines = None if args.exec_command else stdin_lines()
        bridges: set[asyncio.Task[int]] = set()
        try:
            async for incoming in client.incoming():
                try:
                    call = await incoming.answer()
                except ClientError as exc:
                    say(f"call from {incoming.from_} not answered: {exc}")
                    continue
                say(f"call from {call.peer} (call {call.call_id})")
                if args.exec_command:
                    task = asyncio.create_task(_bridge(client, call, args.exec_command, args.grace, args.url))
                    bridges.add(task)
                    task.add_done_callback(bridges.discard)
                    if args.once:
                        return await task
                    if not parallel:
                        await task
                else:
                    assert lines is not None
                    status = await _converse(call, lines)
                    if args.once:
                        return status
        finally:
            for task in list(bridges):
                task.cancel()
            await asyncio.gather(*bridges, return_exceptions=True)
        closed = client.close_info
        say(f"connection closed: {closed}" if closed is not None else "connection closed")
        return EXIT_ABNORMAL


def _ended(call: Call) -> int:
    reason = call.hangup_reason or "normal"
    say(f"call {call.call_id} with {call.peer} ended: {reason}")
    return EXIT_OK if reason == "normal" else EXIT_ABNORMAL


async def _converse(call: Call, lines: asyncio.Queue[str | None]) -> int:
    """One call at the terminal: MSGs to stdout, stdin lines to the call."""

    async def send() -> None:
        with contextlib.suppress(ClientError):
            while (line := await lines.get()) is not None:
                await call.send(line)
            # Input ended: nothing more to say, but the call goes on until a HANGUP.
            lines.put_nowait(None)

    sender = asyncio.create_task(send())
    try:
        async for message in call:
            print(format_data(message.data, message.content_type), flush=True)
    finally:
        sender.cancel()
    return _ended(call)


async def _bridge(client: Client, call: Call, command: str, grace: float, url: str) -> int:
    """Run ``command`` for ``call``: MSGs to its stdin, its stdout lines to MSGs; its exit hangs up."""
    env = dict(
        os.environ,
        SYSTEMX_CALL_ID=call.call_id,
        SYSTEMX_CALLER=call.peer,
        SYSTEMX_ADDRESS=client.address,
        SYSTEMX_URL=url,
    )
    try:
        proc = await asyncio.create_subprocess_shell(
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,
            env=env,
            limit=_LINE_LIMIT,
        )
    except OSError as exc:
        say(f"cannot run {command!r}: {exc}")
        await call.hangup("cannot start the program")
        return _ended(call)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def to_program() -> None:
        with contextlib.suppress(ConnectionError):
            async for message in call:
                stdin.write(format_data(message.data, message.content_type).encode() + b"\n")
                await stdin.drain()
        # The call ended (or the program stopped reading): no more input.
        with contextlib.suppress(ConnectionError):
            stdin.close()

    async def from_program() -> None:
        while True:
            try:
                raw = await stdout.readline()
            except ValueError:  # a line past the limit: dropped, the rest still flows
                say(
                    f"call {call.call_id}: dropped an output line over {_LINE_LIMIT} bytes"
                )
                continue
            if not raw:
                return
            if call.active:
                with contextlib.suppress(ClientError):
                    await call.send(raw.decode("utf-8", "replace").rstrip("\r\n"))

    reader = asyncio.create_task(from_program())
    writer = asyncio.create_task(to_program())
    exited = asyncio.create_task(proc.wait())
    try:
        waits: set[asyncio.Future[Any]] = {exited, call.ended}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            # HANGUP: the program's stdin is closed by to_program; give it the grace period.
            await writer
            await _stop(proc, exited, grace)
        # What it wrote before exiting is still sent (bounded: a child it left behind may hold stdout).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), grace)
        status = exited.result()
        if call.active:
            await call.hangup("normal" if status == 0 else f"exit status {status}")
    finally:
        for task in (reader, writer, exited):
            task.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return _ended(call)


async def _stop(proc: asyncio.subprocess.Process, exited: asyncio.Task[int], grace: float) -> None:
    for signal_it in (proc.terminate, proc.kill):
        try:
            await asyncio.wait_for(asyncio.shield(exited), grace)
            return
        except TimeoutError:
            if proc.returncode is None:
                signal_it()
    await exited
