"""``systemx calls``: the call history, from the admin listener's ``GET /api/records``.

Prints a table, newest call first (``--json``: one record per line, as the API
gives it). ``--since`` takes a duration back from now (``90s``, ``15m``, ``2h``,
``1d``) or epoch seconds. The admin token, when the listener asks for one,
comes from ``--token`` or ``$SYSTEMX_ADMIN_TOKEN``.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from datetime import datetime
from typing import Any

from systemx.core.records import Disposition
from systemx.tools.common import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, emit_json, say

__all__ = [
    "DEFAULT_ADMIN_URL",
    "add_admin_args",
    "add_parser",
    "admin_get",
    "default_admin_url",
    "run",
    "table",
]

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"
_DISPOSITIONS = tuple(d.value for d in Disposition)
_AGO = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(value: str) -> float:
    value = value.strip()
    match = _AGO.match(value)
    if match:
        return time.time() - float(match.group(1)) * _UNIT[match.group(2)]
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration back from now (90s, 15m, 2h, 1d) or epoch seconds, got {value!r}"
        ) from None


def _limit(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= 1000:
        raise argparse.ArgumentTypeError(f"expected 0-1000, got {value!r}")
    return n


def default_admin_url() -> str:
    """``$SYSTEMX_ADMIN_URL``, else the listener ``$SYSTEMX_ADMIN_HOST``:``$SYSTEMX_ADMIN_PORT``
    describe (a wildcard host is reached on loopback), else :data:`DEFAULT_ADMIN_URL`."""
    url = os.environ.get("SYSTEMX_ADMIN_URL")
    if url:
        return url
    host = os.environ.get("SYSTEMX_ADMIN_HOST", "").strip() or "127.0.0.1"
    port = os.environ.get("SYSTEMX_ADMIN_PORT", "").strip()
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if not port.isdigit() or port == "0":
        port = "8081"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def add_admin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        "--admin-url",
        dest="admin_url",
        default=default_admin_url(),
        help="the admin listener (default: $SYSTEMX_ADMIN_URL, else http://$SYSTEMX_ADMIN_HOST:"
        f"$SYSTEMX_ADMIN_PORT, else {DEFAULT_ADMIN_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("SYSTEMX_ADMIN_TOKEN") or "",
        help="the admin bearer token (default: $SYSTEMX_ADMIN_TOKEN)",
    )


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "calls",
        help="list past calls from the admin listener (table, or --json lines)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_admin_args(parser)
    parser.add_argument("--address", help="only calls with this address as caller or callee")
    parser.add_argument("--disposition", choices=_DISPOSITIONS, help="only calls that ended this way")
    parser.add_argument("--since", type=_since, metavar="WHEN", help="only calls dialled since WHEN")
    parser.add_argument("--limit", type=_limit, default=50, metavar="N", help="at most N calls (0-1000; 50)")
    parser.add_argument("--json", action="store_true", help="one JSON record per line")


class AdminError(Exception):
    """The admin listener could not be reached or refused the request (the message says why)."""


async def admin_get(url: str, token: str, path: str, params: dict[str, str]) -> Any:
    """GET ``path`` on the admin listener; its JSON answer, or :class:`AdminError`."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.get(url.rstrip("/") + path, params=params, headers=headers) as response,
        ):
            if response.status != 200:
                try:
                    detail = (await response.json())["error"]
                except Exception:
                    detail = response.reason or ""
                raise AdminError(f"{path}: HTTP {response.status}: {detail}")
            return await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise AdminError(f"cannot reach the admin listener at {url}: {exc or type(exc).__name__}") from None


async def run(args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.address:
        params["address"] = args.address
    if args.disposition:
        params["disposition"] = args.disposition
    if args.since is not None:
        params["since"] = repr(args.since)
    try:
        answer = await admin_get(args.admin_url, args.token, "/api/records", params)
    except AdminError as exc:
        say(str(exc))
        return EXIT_USAGE if "HTTP 400" in str(exc) else EXIT_UNREACHABLE
    records: list[dict[str, Any]] = answer.get("items", [])
    if args.json:
        for record in records:
            emit_json(record)
    else:
        print(table(records), flush=True)
    return EXIT_OK


def _when(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return ""
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else ""


def table(records: list[dict[str, Any]]) -> str:
    """Records as an aligned text table."""
    head = ("DIALLED", "CALLER", "CALLEE", "DISPOSITION", "REASON", "RING_S", "TALK_S", "CALL_ID")
    rows = [head]
    rows += [
        (
            _when(r.get("dialled_at")),
            str(r.get("caller", "")),
            str(r.get("callee", "")),
            str(r.get("disposition", "")),
            str(r.get("reason", "")),
            _seconds(r.get("ring_seconds")),
            _seconds(r.get("talk_seconds")),
            str(r.get("call_id", "")),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(f"({len(records)} {'call' if len(records) == 1 else 'calls'})")
    return "\n".join(lines)
