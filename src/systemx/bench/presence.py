"""PRESENCE query cost against many registrations (``presence``).

``registrations`` connections REGISTER generated metadata: about 20
addresses per domain, three capabilities each from a pool sized so one
capability matches about 20 addresses, and a location uniform over latitudes
-60..60. A querier then sends selective PRESENCE queries, ``inflight`` in
flight, one kind per window: ``domain``, ``capability`` (one capability) and
``near`` (a radius sized for about 20 matches). The generator computes every
query's answer itself, so each PRESENCE_RESULT is checked: every entry
matches the filter, carries the metadata it registered and status
``available``, nothing is repeated, and the count is the full match count (or
the limit). Figures: queries/s and server CPU per query, per kind and overall.

Registering 100,000 real connections is beyond one machine's open-file
limits, so the 100,000-entry index figure comes from the repository's
``benchmarks/presence_core.py`` (the index alone, in process), which
``python -m benchmarks presence`` runs and reports next to the wire figures.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import math
import random
import resource
import time
from typing import Any

import msgspec
from picows import WSMsgType

from systemx.bench.common import Options, run_loop, run_tag
from systemx.bench.servers import Target
from systemx.bench.stats import Window, summarize_latency
from systemx.bench.wire import Conn, Failures, Violation, close_all, encode, open_conns, register, wait_closed
from systemx.bench.wire import keepalive as start_keepalive

__all__ = ["World", "effective_registrations", "run_presence"]

EARTH_RADIUS_KM = 6371.0
KINDS = ("domain", "capability", "near")
_PER_KEY = 20
_QUERIES_PER_KIND = 128
# Distances this close to the radius may round either way on the server.
_EPSILON_KM = 1e-6


def effective_registrations(requested: int, reserve: int = 256) -> int:
    """``requested``, reduced to fit under the open-file limit.

    Server and generator each hold one socket per registration.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft - reserve))


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


class World:
    """The generated registrations and the answers to queries about them."""

    def __init__(self, n: int, tag: str, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.n = n
        self.domains = max(1, n // _PER_KEY)
        self.caps = max(8, 3 * n // _PER_KEY)
        # Radius for about _PER_KEY matches in the -60..60 band (area 2*pi*R^2*(2 sin 60)).
        band_km2 = 2 * math.pi * EARTH_RADIUS_KM**2 * 2 * math.sin(math.radians(60))
        self.radius_km = math.sqrt(_PER_KEY * band_km2 / (math.pi * n))
        self.addresses: list[str] = []
        self.metadata: dict[str, dict[str, Any]] = {}
        self.by_domain: dict[str, list[str]] = collections.defaultdict(list)
        self.by_cap: dict[str, list[str]] = collections.defaultdict(list)
        points: list[tuple[float, float, str]] = []
        for i in range(n):
            domain = f"d{i % self.domains}.pres.bench"
            address = f"r{i}.{tag}@{domain}"
            caps = [f"cap{k}" for k in rng.sample(range(self.caps), 3)]
            lat = round(rng.uniform(-60.0, 60.0), 4)
            lon = round(rng.uniform(-180.0, 180.0), 4)
            meta = {"capabilities": caps, "location": {"lat": lat, "lon": lon}, "status": "available"}
            self.addresses.append(address)
            self.metadata[address] = meta
            self.by_domain[domain].append(address)
            for cap in caps:
                self.by_cap[cap].append(address)
            points.append((lat, lon, address))
        points.sort()
        self._points = points
        self._lats = [p[0] for p in points]

    def near(self, lat: float, lon: float, radius: float) -> tuple[set[str], set[str]]:
        """(surely within, possibly within) the radius: the second allows rounding at the edge."""
        span = (radius + 1.0) / 111.0
        lo = bisect.bisect_left(self._lats, lat - span)
        hi = bisect.bisect_right(self._lats, lat + span)
        strict: set[str] = set()
        loose: set[str] = set()
        for plat, plon, address in self._points[lo:hi]:
            d = haversine_km(lat, lon, plat, plon)
            if d <= radius + _EPSILON_KM:
                loose.add(address)
                if d <= radius - _EPSILON_KM:
                    strict.add(address)
        return strict, loose

    def queries(self, kind: str, rng: random.Random) -> list[tuple[dict[str, Any], set[str], set[str]]]:
        """Queries of ``kind`` with their (surely, possibly) matching addresses."""
        out: list[tuple[dict[str, Any], set[str], set[str]]] = []
        for _ in range(_QUERIES_PER_KIND):
            if kind == "domain":
                domain = f"d{rng.randrange(self.domains)}.pres.bench"
                match = set(self.by_domain.get(domain, ()))
                out.append(({"domain": domain}, match, match))
            elif kind == "capability":
                cap = f"cap{rng.randrange(self.caps)}"
                match = set(self.by_cap.get(cap, ()))
                out.append(({"capabilities": [cap]}, match, match))
            else:
                lat, lon = round(rng.uniform(-55.0, 55.0), 4), round(rng.uniform(-180.0, 180.0), 4)
                radius = round(self.radius_km, 3)
                strict, loose = self.near(lat, lon, radius)
                out.append(({"near": {"lat": lat, "lon": lon, "radius_km": radius}}, strict, loose))
        return out


class _Entry(msgspec.Struct):
    address: str
    status: str
    metadata: dict[str, Any]


class _Result(msgspec.Struct):
    type: str
    addresses: list[_Entry] = []


_decode_result = msgspec.json.Decoder(_Result).decode


class _Querier:
    """Keeps ``inflight`` PRESENCE queries outstanding and checks each answer."""

    def __init__(self, conn: Conn, world: World, limit: int, inflight: int) -> None:
        self.conn = conn
        self.world = world
        self.limit = limit
        self.inflight = inflight
        self.pending: collections.deque[tuple[int, set[str], set[str]]] = collections.deque()
        self.queries: list[tuple[bytes, set[str], set[str]]] = []
        self.next_query = 0
        self.window: Window | None = None
        self.stopping = False
        self.lat: list[int] = []
        self.rows = 0
        self.drained: asyncio.Future[None] | None = None
        conn.on_frame = self.on_frame

    def load(self, queries: list[tuple[dict[str, Any], set[str], set[str]]], window: Window) -> None:
        self.queries = [
            (encode({"type": "PRESENCE", "query": q, "limit": self.limit}), strict, loose)
            for q, strict, loose in queries
        ]
        self.next_query = 0
        self.window = window
        self.stopping = False
        self.lat = []
        self.rows = 0
        self.drained = asyncio.get_running_loop().create_future()

    def send_one(self) -> None:
        frame, strict, loose = self.queries[self.next_query % len(self.queries)]
        self.next_query += 1
        self.pending.append((time.perf_counter_ns(), strict, loose))
        transport = self.conn.transport
        assert transport is not None
        transport.send(WSMsgType.TEXT, frame)

    def stop(self) -> None:
        self.stopping = True
        if not self.pending and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def on_frame(self, payload: bytes) -> None:
        now = time.perf_counter_ns()
        result = _decode_result(payload)
        if result.type != "PRESENCE_RESULT":
            if result.type == "HEARTBEAT_ACK":
                return
            raise Violation(f"unexpected frame: {payload[:300]!r}")
        if not self.pending:
            raise Violation("PRESENCE_RESULT without a query")
        sent_at, strict, loose = self.pending.popleft()
        self._check(result, strict, loose, payload)
        window = self.window
        assert window is not None
        if window.measuring:
            window.count += 1
            self.lat.append(now - sent_at)
            self.rows += len(result.addresses)
        if not self.stopping:
            self.send_one()
        elif not self.pending and self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _check(self, result: _Result, strict: set[str], loose: set[str], payload: bytes) -> None:
        seen: set[str] = set()
        metadata = self.world.metadata
        for entry in result.addresses:
            address = entry.address
            if address not in loose:
                raise Violation(f"PRESENCE_RESULT lists {address!r}, which does not match: {payload[:300]!r}")
            if address in seen:
                raise Violation(f"PRESENCE_RESULT lists {address!r} twice")
            seen.add(address)
            if entry.status != "available":
                raise Violation(f"{address} has status {entry.status!r}, registered 'available'")
            if entry.metadata != metadata[address]:
                raise Violation(f"{address} metadata {entry.metadata!r}, registered {metadata[address]!r}")
        want = min(self.limit, len(strict))
        if len(loose) <= self.limit:
            missing = strict - seen
            if missing:
                raise Violation(
                    f"PRESENCE_RESULT misses {len(missing)} matching addresses, e.g. {min(missing)!r}"
                )
        elif len(seen) < want:
            raise Violation(
                f"PRESENCE_RESULT has {len(seen)} entries; {len(strict)} match, limit {self.limit}"
            )


async def _presence(target: Target, opts: Options) -> dict[str, Any]:
    failures = Failures()
    tag = run_tag()
    n = opts.registrations
    world = World(n, tag)
    meter = target.meter

    async def hello(conn: Conn, i: int) -> None:
        address = world.addresses[i]
        await register(conn, address, world.metadata[address])

    cpu0 = meter.cpu_seconds() if meter else 0.0
    rss0 = meter.rss_kb() if meter else None
    t0 = time.perf_counter()
    conns = await open_conns(
        target.url, failures, n, f"pres-{tag}-", concurrency=opts.concurrency, read_buffer=2048, on_open=hello
    )
    t1 = time.perf_counter()
    cpu1 = meter.cpu_seconds() if meter else 0.0
    rss1 = meter.rss_kb() if meter else None
    querier_conns: list[Conn] = []
    ticker = start_keepalive(conns, 15.0) if opts.keepalive else None
    out: dict[str, Any] = {
        "registrations": n,
        "limit": opts.limit,
        "register_s": t1 - t0,
        "server_cpu_us_per_registration": (cpu1 - cpu0) / n * 1e6 if meter else None,
        "rss_kb_per_registration": (rss1 - rss0) / n if rss0 is not None and rss1 is not None else None,
        "near_radius_km": round(world.radius_km, 3),
    }
    try:
        querier_conns = await open_conns(target.url, failures, 1, f"querier-{tag}-")
        querier_conn = querier_conns[0]
        await register(querier_conn, f"querier.{tag}@query.bench.local")
        querier = _Querier(querier_conn, world, opts.limit, opts.inflight)
        rng = random.Random(11)
        total_queries = 0
        total_cpu = 0.0
        total_elapsed = 0.0
        all_lat: list[int] = []
        per_kind = max(opts.duration / len(KINDS), 0.2)
        warm = opts.warmup / len(KINDS)
        for kind in KINDS:
            window = Window(meter)
            querier.load(world.queries(kind, rng), window)
            window.schedule(warm, per_kind)
            for _ in range(opts.inflight):
                querier.send_one()
            await failures.guard(window.closed, 3600.0, f"the {kind} window")
            querier.stop()
            assert querier.drained is not None
            await failures.guard(querier.drained, 30.0, "outstanding PRESENCE queries")
            failures.check()
            count = window.count
            out[f"{kind}_queries_per_s"] = count / window.elapsed
            out[f"{kind}_server_cpu_us_per_query"] = window.per_unit_us()
            out[f"{kind}_rows_per_query"] = querier.rows / count if count else None
            out[f"{kind}_other_cpu_util"] = window.load()["other_cpu_util"]
            out.update(summarize_latency(querier.lat, f"{kind}_"))
            total_queries += count
            total_elapsed += window.elapsed
            total_cpu += window.server_cpu or 0.0
            all_lat.extend(querier.lat)
        target.check()
    finally:
        if ticker is not None:
            ticker.cancel()
        close_all(querier_conns)
        close_all(conns)
    await wait_closed(conns + querier_conns, 30.0)
    out["queries_per_s"] = total_queries / max(total_elapsed, 1e-9)
    out["server_cpu_us_per_query"] = total_cpu / total_queries * 1e6 if meter and total_queries else None
    out.update(summarize_latency(all_lat))
    return out


def run_presence(target: Target, opts: Options) -> dict[str, Any]:
    """One ``presence`` run (single generator process)."""
    result: dict[str, Any] = run_loop(_presence(target, opts))
    return result
