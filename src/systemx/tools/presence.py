"""``systemx presence``: who is registered, filtered by domain, capability, place and status.

Prints a table (``--json``: one JSON object per entry, one per line). The
exchange answers only registered sessions, so the tool registers a throwaway
address unless ``--as`` names one.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from systemx.client import PresenceEntry, connect
from systemx.tools.common import EXIT_OK, add_connection_args, emit_json, own_address

__all__ = ["add_parser", "run"]

_STATUSES = ("available", "busy", "dnd", "away", "asleep")


def _near(value: str) -> tuple[float, float, float]:
    parts = value.split(",")
    try:
        lat, lon, km = (float(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LAT,LON,KM (e.g. 53.80,-1.55,25), got {value!r}"
        ) from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and km > 0 and math.isfinite(km)):
        raise argparse.ArgumentTypeError(f"LAT in [-90, 90], LON in [-180, 180], KM > 0; got {value!r}")
    return lat, lon, km


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "presence",
        help="list registered addresses (table, or --json lines)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_connection_args(parser, address_required=False)
    parser.add_argument("--domain", help="only addresses of this domain")
    parser.add_argument(
        "--capability",
        dest="capabilities",
        action="append",
        metavar="C",
        help="only addresses with this capability (repeat: all of them)",
    )
    parser.add_argument(
        "--near", type=_near, metavar="LAT,LON,KM", help="within KM of a point, nearest first"
    )
    parser.add_argument("--status", choices=_STATUSES, help="only addresses with this status")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N entries (the exchange caps it)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


async def run(args: argparse.Namespace) -> int:
    async with await connect(args.url, own_address(args.me), auth=args.token) as client:
        entries = await client.presence(
            domain=args.domain,
            capabilities=args.capabilities,
            near=args.near,
            status=args.status,
            limit=args.limit,
        )
    if args.json:
        for entry in entries:
            emit_json({"address": entry.address, "status": entry.status, "metadata": entry.metadata})
    else:
        print(table(entries), flush=True)
    return EXIT_OK


def _capabilities(metadata: dict[str, Any]) -> str:
    caps = metadata.get("capabilities")
    return ",".join(str(c) for c in caps) if isinstance(caps, list) else ""


def _location(metadata: dict[str, Any]) -> str:
    loc = metadata.get("location")
    if (
        isinstance(loc, dict)
        and isinstance(loc.get("lat"), int | float)
        and isinstance(loc.get("lon"), int | float)
    ):
        return f"{loc['lat']:.4f},{loc['lon']:.4f}"
    return ""


def table(entries: list[PresenceEntry]) -> str:
    """Entries as an aligned text table (ADDRESS, STATUS, CAPABILITIES, LOCATION)."""
    rows = [("ADDRESS", "STATUS", "CAPABILITIES", "LOCATION")]
    rows += [(e.address, e.status, _capabilities(e.metadata), _location(e.metadata)) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.append(f"({len(entries)} {'entry' if len(entries) == 1 else 'entries'})")
    return "\n".join(lines)
