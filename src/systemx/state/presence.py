"""The presence index: who is online, filtered by domain, capabilities, place and status.

:class:`PresenceIndex` is the port the exchange queries to answer PRESENCE;
:class:`MemoryPresenceIndex` is the in-process implementation. Semantics follow
the reference router:

* filters AND together; an absent filter (``None``) does not restrict;
* ``domain`` matches exactly, case-insensitively;
* ``capabilities``: an entry matches when it has *all* the requested ones;
* ``near=(lat, lon, radius_km)``: great-circle distance by the haversine formula
  with R = 6371 km, ``distance <= radius_km``; entries without a location never match;
* ``status`` matches the current status exactly;
* ``exclude`` drops one address (the asker).

Results come in registration order, or by ascending distance (ties in
registration order) when ``near`` is given, truncated to ``limit``.

Registration order is a sequence number given to an address the first time it
is put. Putting an address that is already present updates it *in place*, like
assignment to an existing key of an ordered map in the reference; to move an
address to the end (a fresh registration), ``remove`` it first.

The memory index answers selective queries without scanning the world: one
ordered bucket per domain, capability and status, and a latitude/longitude grid
for locations. A query starts from the smallest candidate source and checks the
remaining filters per candidate.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from itertools import chain, islice
from typing import Any, Protocol

__all__ = [
    "EARTH_RADIUS_KM",
    "MemoryPresenceIndex",
    "PresenceIndex",
    "PresenceRow",
    "haversine_km",
]

EARTH_RADIUS_KM = 6371.0

PresenceRow = tuple[str, str, dict[str, Any]]
"""One query result: ``(address, status, metadata)``."""

_RAD = math.pi / 180.0
# Slack added to every geometric bound so that rounding in the bounds and in the
# haversine evaluation can only add candidate cells, never lose a match; the exact
# distance check per candidate decides.
_PAD_RAD = 1e-6
_PAD_DEG = _PAD_RAD / _RAD


class PresenceIndex(Protocol):
    """Port for the presence index; every backend implements these semantics."""

    def put(
        self,
        address: str,
        *,
        domain: str,
        capabilities: Iterable[str],
        lat: float | None,
        lon: float | None,
        status: str,
        metadata: dict[str, Any],
    ) -> None:
        """Insert ``address``, or update it in place keeping its registration order.

        ``lat`` and ``lon`` are both given or both ``None``. Raises ``ValueError``
        for only one of them, or a latitude outside [-90, 90] or a longitude outside
        [-180, 180] (which excludes NaN and infinities).
        """

    def set_status(self, address: str, status: str) -> None:
        """Change the status of ``address``; unknown addresses are ignored."""

    def remove(self, address: str) -> None:
        """Forget ``address``; unknown addresses are ignored."""

    def query(
        self,
        *,
        domain: str | None = None,
        capabilities: Sequence[str] | None = None,
        near: tuple[float, float, float] | None = None,
        status: str | None = None,
        exclude: str | None = None,
        limit: int,
    ) -> list[PresenceRow]:
        """Entries matching every given filter, ordered as described in the module docs.

        Raises ``ValueError`` when ``near`` has a coordinate out of the ranges
        ``put`` accepts, or a negative or NaN radius (an infinite one is fine).
        """

    def __len__(self) -> int:
        """Number of entries."""


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees."""
    return _haversine(lat1, lon1, math.cos(lat1 * _RAD), lat2, lon2, math.cos(lat2 * _RAD))


def _haversine(lat1: float, lon1: float, cos1: float, lat2: float, lon2: float, cos2: float) -> float:
    # The one distance formula: the index and haversine_km must agree to the last bit,
    # so that boundaries and distance ties resolve identically everywhere.
    s_lat = math.sin((lat2 - lat1) * _RAD / 2.0)
    s_lon = math.sin((lon2 - lon1) * _RAD / 2.0)
    a = s_lat * s_lat + cos1 * cos2 * s_lon * s_lon
    if a > 1.0:
        a = 1.0
    return EARTH_RADIUS_KM * 2.0 * math.atan2(math.sqrt(a), math.sqrt(1.0 - a))


def _check_location(lat: float, lon: float) -> None:
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise ValueError(f"need -90 <= lat <= 90 and -180 <= lon <= 180, got lat={lat!r} lon={lon!r}")


class _Entry:
    __slots__ = ("capabilities", "cell", "cos_lat", "domain", "lat", "lon", "metadata", "seq", "status")

    def __init__(
        self,
        seq: int,
        domain: str,
        capabilities: frozenset[str],
        lat: float | None,
        lon: float | None,
        cell: int | None,
        status: str,
        metadata: dict[str, Any],
    ) -> None:
        self.seq = seq
        self.domain = domain
        self.capabilities = capabilities
        # Unlocated entries (``cell is None``) store 0.0, never read.
        self.lat = lat if lat is not None else 0.0
        self.lon = lon if lon is not None else 0.0
        self.cos_lat = math.cos(self.lat * _RAD)
        self.cell = cell
        self.status = status
        self.metadata = metadata


class _Bucket:
    """Addresses sharing one attribute value, kept in registration order.

    Appends arrive in sequence order except when an existing entry changes
    attribute (it keeps its older sequence number); such an insert marks the
    bucket unsorted and the next ordered read restores the order once.
    """

    __slots__ = ("members", "sorted", "tail")

    def __init__(self) -> None:
        self.members: dict[str, None] = {}
        self.tail = -1
        self.sorted = True

    def __len__(self) -> int:
        return len(self.members)

    def add(self, address: str, seq: int) -> None:
        self.members[address] = None
        if seq > self.tail:
            self.tail = seq
        else:
            self.sorted = False


class MemoryPresenceIndex:
    """In-process :class:`PresenceIndex` with domain, capability, status and grid indexes.

    ``cell_deg`` is the side of a grid cell in degrees; it must divide 180.
    Returned metadata dicts are the stored objects, not copies: callers must not
    mutate them.
    """

    def __init__(self, *, cell_deg: float = 1.0) -> None:
        rows = round(180.0 / cell_deg) if cell_deg > 0 else 0
        if rows < 1 or abs(rows * cell_deg - 180.0) > 1e-9:
            raise ValueError(f"cell_deg must divide 180, got {cell_deg!r}")
        self._cell_deg = cell_deg
        self._n_rows = rows
        self._n_cols = 2 * rows
        self._next_seq = 0
        # Ordered by sequence: new keys get increasing numbers, updates keep the key's slot.
        self._entries: dict[str, _Entry] = {}
        self._seq_of: dict[str, int] = {}
        self._domains: dict[str, _Bucket] = {}
        self._capabilities: dict[str, _Bucket] = {}
        self._statuses: dict[str, _Bucket] = {}
        self._cells: dict[int, set[str]] = {}
        self._located: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, address: object) -> bool:
        return address in self._entries

    # -- updates ---------------------------------------------------------------

    def put(
        self,
        address: str,
        *,
        domain: str,
        capabilities: Iterable[str],
        lat: float | None,
        lon: float | None,
        status: str,
        metadata: dict[str, Any],
    ) -> None:
        if (lat is None) != (lon is None):
            raise ValueError("lat and lon must both be given or both be None")
        cell: int | None = None
        if lat is not None and lon is not None:
            _check_location(lat, lon)
            cell = self._cell_of(lat, lon)
        domain = domain.lower()
        caps = frozenset(capabilities)
        old = self._entries.get(address)
        if old is None:
            seq = self._next_seq
            self._next_seq += 1
            entry = _Entry(seq, domain, caps, lat, lon, cell, status, metadata)
            self._entries[address] = entry
            self._seq_of[address] = seq
            self._bucket_add(self._domains, domain, address, seq)
            for cap in caps:
                self._bucket_add(self._capabilities, cap, address, seq)
            self._bucket_add(self._statuses, status, address, seq)
            if cell is not None:
                self._cell_add(cell, address)
            return

        seq = old.seq
        if old.domain != domain:
            self._bucket_discard(self._domains, old.domain, address)
            self._bucket_add(self._domains, domain, address, seq)
        if False:
            for cap in old.capabilities - caps:
                self._bucket_discard(self._capabilities, cap, address)
            for cap in caps - old.capabilities:
                self._bucket_add(self._capabilities, cap, address, seq)
        if old.status != status:
            self._bucket_discard(self._statuses, old.status, address)
            self._bucket_add(self._statuses, status, address, seq)
        if old.cell != cell:
            if old.cell is not None:
                self._cell_discard(old.cell, address)
            if cell is not None:
                self._cell_add(cell, address)
        self._entries[address] = _Entry(seq, domain, caps, lat, lon, cell, status, metadata)

    def set_status(self, address: str, status: str) -> None:
        entry = self._entries.get(address)
        if entry is None or entry.status == status:
            return
        self._bucket_discard(self._statuses, entry.status, address)
        self._bucket_add(self._statuses, status, address, entry.seq)
        entry.status = status

    def remove(self, address: str) -> None:
        entry = self._entries.pop(address, None)
        if entry is None:
            return
        del self._seq_of[address]
        self._bucket_discard(self._domains, entry.domain, address)
        for cap in entry.capabilities:
            self._bucket_discard(self._capabilities, cap, address)
        self._bucket_discard(self._statuses, entry.status, address)
        if entry.cell is not None:
            self._cell_discard(entry.cell, address)

    @staticmethod
    def _bucket_add(index: dict[str, _Bucket], key: str, address: str, seq: int) -> None:
        bucket = index.get(key)
        if bucket is None:
            bucket = index[key] = _Bucket()
        bucket.add(address, seq)

    @staticmethod
    def _bucket_discard(index: dict[str, _Bucket], key: str, address: str) -> None:
        bucket = index[key]
        del bucket.members[address]
        if not bucket.members:
            del index[key]

    def _cell_add(self, cell: int, address: str) -> None:
        members = self._cells.get(cell)
        if members is None:
            members = self._cells[cell] = set()
        members.add(address)
        self._located[address] = None

    def _cell_discard(self, cell: int, address: str) -> None:
        members = self._cells[cell]
        members.discard(address)
        if not members:
            del self._cells[cell]
        del self._located[address]

    # -- grid ------------------------------------------------------------------

    def _row(self, lat: float) -> int:
        return min(max(math.floor((lat + 90.0) / self._cell_deg), 0), self._n_rows - 1)

    def _col(self, lon: float) -> int:
        # Unbounded on purpose: callers reduce modulo the column count, which is
        # how ranges crossing the antimeridian wrap.
        return math.floor((lon + 180.0) / self._cell_deg)

    def _cell_of(self, lat: float, lon: float) -> int:
        return self._row(lat) * self._n_cols + self._col(lon) % self._n_cols

    def _near_span(self, lat: float, lon: float, radius_km: float) -> tuple[range, Sequence[int]] | None:
        """Grid rows and columns that can hold a point within ``radius_km``; ``None``: all."""
        delta = radius_km / EARTH_RADIUS_KM + _PAD_RAD
        if delta >= math.pi:
            return None
        delta_deg = delta / _RAD
        lat_lo = lat - delta_deg
        lat_hi = lat + delta_deg
        rows = range(self._row(max(lat_lo, -90.0)), self._row(min(lat_hi, 90.0)) + 1)
        every_col = range(self._n_cols)
        if lat_lo <= -90.0 or lat_hi >= 90.0:
            # The cap holds a pole, so it spans every longitude.
            return rows, every_col
        ratio = math.sin(delta) / math.cos(lat * _RAD)
        if ratio >= 1.0 - 1e-12:
            return rows, every_col
        # Widest longitude offset of a spherical cap that holds no pole.
        half = math.asin(ratio) / _RAD + _PAD_DEG
        first = self._col(lon - half)
        last = self._col(lon + half)
        if last - first + 1 >= self._n_cols:
            return rows, every_col
        return rows, [c % self._n_cols for c in range(first, last + 1)]

    # -- queries ---------------------------------------------------------------

    def query(
        self,
        *,
        domain: str | None = None,
        capabilities: Sequence[str] | None = None,
        near: tuple[float, float, float] | None = None,
        status: str | None = None,
        exclude: str | None = None,
        limit: int,
    ) -> list[PresenceRow]:
        if near is not None:
            n_lat, n_lon, radius = near
            _check_location(n_lat, n_lon)
            if not radius >= 0.0:
                raise ValueError(f"radius_km must be >= 0, got {radius!r}")
        if limit <= 0:
            return []

        buckets: list[_Bucket] = []
        if domain is not None:
            bucket = self._domains.get(domain.lower())
            if bucket is None:
                return []
            buckets.append(bucket)
        for cap in set(capabilities or ()):
            bucket = self._capabilities.get(cap)
            if bucket is None:
                return []
            buckets.append(bucket)
        if status is not None:
            bucket = self._statuses.get(status)
            if bucket is None:
                return []
            buckets.append(bucket)
        buckets.sort(key=len)

        if near is None:
            return self._query_ordered(buckets, exclude, limit)
        return self._query_near([b.members for b in buckets], near, exclude, limit)

    def _ordered(self, bucket: _Bucket) -> dict[str, None]:
        if not bucket.sorted:
            bucket.members = dict.fromkeys(sorted(bucket.members, key=self._seq_of.__getitem__))
            bucket.sorted = True
        return bucket.members

    def _rows(self, addresses: Iterable[str], limit: int) -> list[PresenceRow]:
        entries = self._entries
        out: list[PresenceRow] = []
        for address in islice(addresses, limit):
            entry = entries[address]
            out.append((address, entry.status, entry.metadata))
        return out

    def _query_ordered(self, buckets: list[_Bucket], exclude: str | None, limit: int) -> list[PresenceRow]:
        source: Iterable[str]
        if not buckets:
            source = self._entries
        elif len(buckets) == 1:
            source = self._ordered(buckets[0])
        else:
            matches = _intersect([b.members for b in buckets])
            if exclude is not None:
                matches.discard(exclude)
            if len(matches) <= 4 * limit:
                return self._rows(sorted(matches, key=self._seq_of.__getitem__), limit)
            # Walking the smallest bucket in order stops after ``limit`` hits.
            return self._rows(filter(matches.__contains__, self._ordered(buckets[0])), limit)
        if exclude is not None:
            source = (a for a in source if a != exclude)
        return self._rows(source, limit)

    def _query_near(
        self,
        buckets: list[dict[str, None]],
        near: tuple[float, float, float],
        exclude: str | None,
        limit: int,
    ) -> list[PresenceRow]:
        lat, lon, radius = near
        located = self._located
        span = self._near_span(lat, lon, radius)
        n_cells = len(span[0]) * len(span[1]) if span is not None else math.inf
        smallest = len(buckets[0]) if buckets else math.inf
        # Cost units: one candidate checked in Python ~ eight grid cells visited
        # ~ sixteen members matched by a set intersection in C.
        candidates: Iterable[str]
        if span is None or n_cells >= len(located):
            candidates = located if not buckets else _matching(buckets) & located.keys()
        elif smallest * 8 <= n_cells:
            candidates = _matching(buckets)
        else:
            grid = self._cells
            width = self._n_cols
            rows, cols = span
            cell_sets = [grid[cell] for r in rows for c in cols if (cell := r * width + c) in grid]
            geo_size = sum(map(len, cell_sets))
            if not buckets:
                candidates = chain.from_iterable(cell_sets)
            elif geo_size * 16 <= smallest:
                candidates = [a for members in cell_sets for a in members if all(a in b for b in buckets)]
            else:
                matching = _matching(buckets)
                if len(matching) <= geo_size:
                    candidates = matching
                else:
                    candidates = chain.from_iterable([matching & members for members in cell_sets])

        entries = self._entries
        cos0 = math.cos(lat * _RAD)
        haversine = _haversine
        hits: list[tuple[float, int, str]] = []
        for address in candidates:
            entry = entries[address]
            if entry.cell is None or address == exclude:
                continue
            d = haversine(lat, lon, cos0, entry.lat, entry.lon, entry.cos_lat)
            if d <= radius:
                hits.append((d, entry.seq, address))

        ranked = heapq.nsmallest(limit, hits) if len(hits) > limit else sorted(hits)
        return [(a, entries[a].status, entries[a].metadata) for _, _, a in ranked]


def _matching(buckets: list[dict[str, None]]) -> AbstractSet[str]:
    """Addresses in every bucket; ``buckets`` is sorted by size, smallest first."""
    return buckets[0].keys() if len(buckets) == 1 else _intersect(buckets)


def _intersect(buckets: list[dict[str, None]]) -> set[str]:
    """Addresses in every bucket (at least two), sorted by size, smallest first."""
    # Intersecting two key views iterates the smaller one in C.
    matches: set[str] = buckets[0].keys() & buckets[1].keys()
    for members in buckets[2:]:
        if not matches:
            break
        matches = set(filter(members.__contains__, matches))
    return matches
