"""``systemx tail``: follow the exchange's events as they happen.

Reads the admin listener's live event stream (``GET /events?feed=events``,
Server-Sent Events) and prints one line per event: calls started, answered and
ended, addresses registered and unregistered, requests refused. ``--json``
prints each event's JSON as the stream gives it, one per line. ``--address``
keeps the events naming that address (as caller, callee, the address
registered or refused, or the refused asker); ``--kind`` keeps one kind
(``call``, ``registration``, ``refused``, or an event name such as
``call_ended``); both may be repeated.

If the stream drops after it was open the tool reconnects (and says so on
stderr), waiting up to 5 s between attempts; events in between are missed.
Ctrl-C exits 0. The exchange's log lines are not on this stream: dial
``logs@system.local`` for them (``systemx dial logs@system.local``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime
from typing import Any

from systemx.tools.calls import add_admin_args
from systemx.tools.common import EXIT_UNREACHABLE, EXIT_USAGE, say, tool_parser

__all__ = ["KINDS", "add_parser", "describe", "matches", "run"]

_EVENT_NAMES = (
    "call_started",
    "call_answered",
    "call_ended",
    "registered",
    "unregistered",
    "refused",
    "dropped",
)
#: What ``--kind`` accepts: a family or one event name (``dropped`` is always shown).
KINDS: dict[str, frozenset[str]] = {
    "call": frozenset({"call_started", "call_answered", "call_ended"}),
    "registration": frozenset({"registered", "unregistered"}),
    **{name: frozenset({name}) for name in _EVENT_NAMES if name != "dropped"},
}
_RETRY_MAX = 5.0
# A stream silent this long is taken for dead (the listener sends a comment every 15 s).
_READ_TIMEOUT = 45.0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = tool_parser(
        commands, "tail", help="follow calls, registrations and refusals as they happen", doc=__doc__
    )
    add_admin_args(parser)
    parser.add_argument(
        "--address", action="append", default=[], help="only events naming this address (repeatable)"
    )
    parser.add_argument(
        "--kind",
        action="append",
        default=[],
        choices=sorted(KINDS),
        help="only events of this kind (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="each event's JSON, one per line")


def matches(event: dict[str, Any], kinds: frozenset[str] | None, addresses: frozenset[str]) -> bool:
    """Whether ``event`` passes the ``--kind`` and ``--address`` filters."""
    name = event.get("event")
    if name == "dropped":
        return True  # always told: the viewer missed events
    if kinds is not None and name not in kinds:
        return False
    if addresses:
        named = {event.get(key) for key in ("caller", "callee", "address", "by")}
        return any(isinstance(a, str) and a.lower() in addresses for a in named)
    return True


def _clock(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return "--:--:--.---"
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S.%f")[:-3]


def describe(event: dict[str, Any]) -> str:
    """One event as one line of text."""
    name = event.get("event")
    when = _clock(event.get("time"))
    get = event.get
    if name == "call_started":
        text = f"call started   {get('caller')} → {get('callee')} (call {get('call_id')})"
    elif name == "call_answered":
        parties = f"{get('caller')} → {get('callee')} " if get("caller") else ""
        text = f"call answered  {parties}(call {get('call_id')})"
    elif name == "call_ended":
        text = (
            f"call ended     {get('caller')} → {get('callee')} (call {get('call_id')}): "
            f"{get('disposition')}, {get('reason')}, {get('duration_s', 0):.3f}s, "
            f"ended by {get('ended_by')}"
        )
    elif name == "registered":
        woken = ", woken" if get("woken") else ""
        text = f"registered     {get('address')} (session {get('session')}{woken})"
    elif name == "unregistered":
        state = "asleep" if get("asleep") else "unregistered"
        text = f"{state:<14s} {get('address')} (session {get('session')}, {get('reason')})"
    elif name == "refused":
        who = get("by") or (f"session {get('session')}" if get("session") else "?")
        target = f" {get('address')}" if get("address") else ""
        text = f"refused        {get('kind')}{target} by {who}: {get('reason')}"
    elif name == "dropped":
        text = f"dropped        {get('count')} event(s): this viewer fell behind"
    else:
        text = f"{name} {json.dumps(event, separators=(',', ':'))}"
    return f"{when} {text}"


class _Fatal(Exception):
    """A refusal that a retry cannot mend (a bad token, a bad request)."""


async def _follow(args: argparse.Namespace, on_open: Any, on_event: Any) -> None:
    """Read the stream until it ends; ``on_open()`` once open, ``on_event(name, data)`` per event."""
    import aiohttp

    headers = {"Authorization": f"Bearer {args.token}", "Accept": "text/event-stream"}
    if not args.token:
        del headers["Authorization"]
    url = args.admin_url.rstrip("/") + "/events"
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=_READ_TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.get(url, params={"feed": "events"}, headers=headers) as response,
    ):
        if response.status != 200:
            try:
                detail = (await response.json())["error"]
            except Exception:
                detail = response.reason or ""
            error = f"/events: HTTP {response.status}: {detail}"
            if response.status in (400, 401, 403, 404):
                raise _Fatal(error)
            raise aiohttp.ClientResponseError(
                response.request_info, (), status=response.status, message=error
            )
        on_open()
        name, data = "message", ""
        async for raw in response.content:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if data:
                    on_event(name, data)
                name, data = "message", ""
            elif line.startswith(":"):
                continue
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].lstrip(" ")


async def run(args: argparse.Namespace) -> int:
    import aiohttp

    kinds: frozenset[str] | None = None
    if args.kind:
        kinds = frozenset().union(*(KINDS[k] for k in args.kind))
    addresses = frozenset(a.lower() for a in args.address)
    opened = False
    delay = 0.5

    def on_open() -> None:
        nonlocal opened, delay
        say(("following" if not opened else "following again") + f" {args.admin_url}")
        opened = True
        delay = 0.5

    def on_event(name: str, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict) or not matches(event, kinds, addresses):
            return
        print(data if args.json else describe(event), flush=True)

    while True:
        try:
            await _follow(args, on_open, on_event)
            problem = "the stream ended"
        except _Fatal as exc:
            say(str(exc))
            return EXIT_USAGE if "HTTP 400" in str(exc) else EXIT_UNREACHABLE
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            problem = str(exc) or type(exc).__name__
            if not opened:
                say(f"cannot reach the admin listener at {args.admin_url}: {problem}")
                return EXIT_UNREACHABLE
        say(f"{problem}; reconnecting")
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RETRY_MAX)
