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
* ``exclude`` drops one entry (the asker).

Entries are identified by a *key*, which ``set_status``, ``remove`` and
``exclude`` name, and show an *address* in results. The exchange keys them by
the address's canonical form (:func:`systemx.protocol.address.address_key`)
and shows the address as last registered, so that one line is one entry
whatever the case of the domain it was registered or updated with. The address
defaults to the key.

Results come in registration order, or by ascending distance (ties in
registration order) when ``near`` is given, truncated to ``limit``.

Registration order is a sequence number given to a key the first time it
is put. Putting a key that is already present updates it *in place* (its shown
address included), like assignment to an existing key of an ordered map in the
reference; to move an entry to the end (a fresh registration), ``remove`` it first.

The port is synchronous because the exchange core is sans-I/O; ``set_status``
and ``remove`` of an unknown key do nothing, so a backend need not read
before it writes.

The memory index answers selective queries without scanning the world: one
ordered bucket per domain and per capability, and a latitude/longitude grid of
``cell_deg`` cells for locations. A query starts from the cheapest candidate
source (the smallest bucket, an intersection of buckets, or the grid cells
under the search circle) and checks the remaining filters per candidate.
Status is such a remaining filter, never a candidate source: it changes twice
per call for both parties (``available`` -> ``busy`` -> ``available``), so
keeping it indexed would cost every call four index moves, to speed up only
queries that filter by status alone.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from itertools import chain, islice
from operator import attrgetter
from typing import Any, Protocol

__all__ = [
    "EARTH_RADIUS_KM",
    "MemoryPresenceIndex",
    "PresenceGather",
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
        key: str,
        *,
        address: str | None = None,
        domain: str,
        capabilities: Iterable[str],
        lat: float | None,
        lon: float | None,
        status: str,
        metadata: dict[str, Any],
    ) -> None:
        """Insert ``key``, or update it in place keeping its registration order.

        ``address`` is what results show for it (default: ``key``).

        ``lat`` and ``lon`` are both given or both ``None``. Raises ``ValueError``
        for only one of them, or a latitude outside [-90, 90] or a longitude outside
        [-180, 180] (which excludes NaN and infinities).
        """

    def set_status(self, key: str, status: str) -> None:
        """Change the status of ``key``; unknown keys are ignored."""

    def remove(self, key: str) -> None:
        """Forget ``key``; unknown keys are ignored."""

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


class PresenceGather(Protocol):
    """Port for presence shared by several exchanges (the nodes of a cluster).

    The index a node's registry writes holds that node's entries; a query that
    must see every node's asks for them here and gets them later, as one index.
    """

    def gather(self, ticket: int) -> None:
        """Collect every node's entries; answer ``Exchange.on_presence_gathered(ticket, index)``.

        ``index`` holds the entries of every live node, in the cluster's
        registration order, or is ``None`` when they could not be read. Every
        ticket gets exactly one answer.
        """


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
    __slots__ = (
        "address",
        "capabilities",
        "cell",
        "cos_lat",
        "domain",
        "key",
        "lat",
        "lon",
        "metadata",
        "row",
        "seq",
        "status",
    )

    def __init__(
        self,
        key: str,
        address: str,
        seq: int,
        domain: str,
        capabilities: frozenset[str],
        lat: float | None,
        lon: float | None,
        cell: int | None,
        status: str,
        metadata: dict[str, Any],
    ) -> None:
        self.key = key
        self.seq = seq
        self.set(address, domain, capabilities, lat, lon, cell, status, metadata)

    def set(
        self,
        address: str,
        domain: str,
        capabilities: frozenset[str],
        lat: float | None,
        lon: float | None,
        cell: int | None,
        status: str,
        metadata: dict[str, Any],
    ) -> None:
        self.address = address
        self.domain = domain
        self.capabilities = capabilities
        # Unlocated entries (``cell is None``) store 0.0, never read.
        self.lat = lat if lat is not None else 0.0
        self.lon = lon if lon is not None else 0.0
        self.cos_lat = math.cos(self.lat * _RAD)
        self.cell = cell
        self.metadata = metadata
        self.set_status(status)

    def set_status(self, status: str) -> None:
        self.status = status
        self.row: PresenceRow = (self.address, status, self.metadata)


_SEQ = attrgetter("seq")

# Every index maps key -> entry, so that a candidate found in any of them
# needs no second lookup, and returned rows are prebuilt tuples.
_Members = dict[str, _Entry]


class _Bucket:
    """Entries sharing one attribute value, kept in registration order.

    Appends arrive in sequence order except when an existing entry changes
    attribute (it keeps its older sequence number); such an insert marks the
    bucket unsorted and the next ordered read restores the order once.
    """

    __slots__ = ("members", "sorted", "tail")

    def __init__(self) -> None:
        self.members: _Members = {}
        self.tail = -1
        self.sorted = True

    def __len__(self) -> int:
        return len(self.members)

    def add(self, entry: _Entry) -> None:
        self.members[entry.key] = entry
        if entry.seq > self.tail:
            self.tail = entry.seq
        else:
            self.sorted = False

    def ordered(self) -> _Members:
        if not self.sorted:
            self.members = {e.key: e for e in sorted(self.members.values(), key=_SEQ)}
            self.sorted = True
        return self.members


class MemoryPresenceIndex:
    """In-process :class:`PresenceIndex` with domain, capability and grid indexes.

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
        self._entries: _Members = {}
        self._domains: dict[str, _Bucket] = {}
        self._capabilities: dict[str, _Bucket] = {}
        # A flat row-major list, so that a run of cells in one row is a C-level slice;
        # an empty cell is None or an empty dict, both skipped by ``filter(None, ...)``.
        self._grid: list[_Members | None] = [None] * (self._n_rows * self._n_cols)
        self._located: _Members = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    # -- updates ---------------------------------------------------------------

    def put(
        self,
        key: str,
        *,
        address: str | None = None,
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
        if address is None:
            address = key
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(key, address, self._next_seq, domain, caps, lat, lon, cell, status, metadata)
            self._next_seq += 1
            self._entries[key] = entry
            _bucket_add(self._domains, domain, entry)
            for cap in caps:
                _bucket_add(self._capabilities, cap, entry)
            if cell is not None:
                self._cell_add(cell, entry)
            return

        if entry.domain != domain:
            _bucket_discard(self._domains, entry.domain, key)
            _bucket_add(self._domains, domain, entry)
        if entry.capabilities != caps:
            for cap in entry.capabilities - caps:
                _bucket_discard(self._capabilities, cap, key)
            for cap in caps - entry.capabilities:
                _bucket_add(self._capabilities, cap, entry)
        if entry.cell != cell:
            if entry.cell is not None:
                self._cell_discard(entry.cell, key)
            if cell is not None:
                self._cell_add(cell, entry)
        entry.set(address, domain, caps, lat, lon, cell, status, metadata)

    def set_status(self, key: str, status: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.status != status:
            entry.set_status(status)

    def remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        _bucket_discard(self._domains, entry.domain, key)
        for cap in entry.capabilities:
            _bucket_discard(self._capabilities, cap, key)
        if entry.cell is not None:
            self._cell_discard(entry.cell, key)

    def _cell_add(self, cell: int, entry: _Entry) -> None:
        members = self._grid[cell]
        if members is None:
            members = self._grid[cell] = {}
        members[entry.key] = entry
        self._located[entry.key] = entry

    def _cell_discard(self, cell: int, key: str) -> None:
        members = self._grid[cell]
        assert members is not None
        del members[key]
        if not members:
            self._grid[cell] = None
        del self._located[key]

    # -- grid ------------------------------------------------------------------

    def _row(self, lat: float) -> int:
        return min(max(math.floor((lat + 90.0) / self._cell_deg), 0), self._n_rows - 1)

    def _col(self, lon: float) -> int:
        # Unbounded on purpose: callers reduce modulo the column count, which is
        # how ranges crossing the antimeridian wrap.
        return math.floor((lon + 180.0) / self._cell_deg)

    def _cell_of(self, lat: float, lon: float) -> int:
        return self._row(lat) * self._n_cols + self._col(lon) % self._n_cols

    def _near_cells(
        self, lat: float, lon: float, radius_km: float, enough: float = math.inf
    ) -> tuple[int, list[_Members]] | None:
        """The non-empty cells that can hold a point within ``radius_km`` of (lat, lon).

        Returns the number of cells of the bounding box (the callers' cost measure)
        and the non-empty cells the cap reaches, or ``None`` when visiting them would
        cost more than checking every located entry. From ``enough`` covered cells
        on, the cells are not gathered (the list is empty): the caller has a cheaper
        source of candidates.
        """
        delta = radius_km / EARTH_RADIUS_KM + _PAD_RAD
        if delta >= math.pi:
            return None
        delta_deg = delta / _RAD
        lat_lo = lat - delta_deg
        lat_hi = lat + delta_deg
        width = self._n_cols
        cell = self._cell_deg
        first_row = self._row(max(lat_lo, -90.0))
        last_row = self._row(min(lat_hi, 90.0))
        full = [(0, width)]
        # Column spans per row: the whole row when the cap holds a pole, else the
        # longitudes the cap reaches within that row's band of latitudes.
        row_spans: list[list[tuple[int, int]]] = [full] * (last_row - first_row + 1)
        sin0 = math.sin(lat * _RAD)
        cos0 = math.cos(lat * _RAD)
        # Below 1 the cap holds no pole: its widest longitude offset is asin(ratio).
        ratio = math.sin(delta) / cos0 if lat_lo > -90.0 and lat_hi < 90.0 else 1.0
        box_cols = width
        if ratio < 1.0 - 1e-12:
            widest_half = math.asin(ratio) / _RAD + _PAD_DEG
            box_cols = min(self._col(lon + widest_half) + 1 - self._col(lon - widest_half), width)
        covered = len(row_spans) * box_cols
        if covered * 2 > len(self._grid) or covered > 15 * len(self._located):
            return None
        if covered >= enough:
            return covered, []
        if ratio < 1.0 - 1e-12:
            cos_delta = math.cos(delta)
            # The cap is widest at this latitude, and narrows monotonically away from it,
            # so within a band it is widest at the band's latitude nearest to it.
            widest = math.asin(max(-1.0, min(1.0, sin0 / cos_delta))) / _RAD
            for i in range(len(row_spans)):
                band_lo = max((first_row + i) * cell - 90.0, lat_lo)
                band_hi = min((first_row + i + 1) * cell - 90.0, lat_hi)
                p = min(max(widest, band_lo), band_hi) * _RAD
                # cos(dlon) bound of the cap at latitude p, nudged down so that
                # rounding can only widen the span.
                bound = (cos_delta - math.sin(p) * sin0) / (math.cos(p) * cos0) - 1e-12
                if bound <= -1.0:
                    continue
                half = math.acos(min(bound, 1.0)) / _RAD + _PAD_DEG
                first = self._col(lon - half)
                last = self._col(lon + half) + 1
                if (count := last - first) < width:
                    first %= width
                    last = first + count
                    row_spans[i] = [(first, last)] if last <= width else [(first, width), (0, last - width)]
        grid = self._grid
        found: list[_Members] = []
        for i, spans in enumerate(row_spans):
            base = (first_row + i) * width
            for a, b in spans:
                found.extend(filter(None, grid[base + a : base + b]))
        return covered, found

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
        buckets.sort(key=len)

        if near is None:
            return self._query_ordered(buckets, status, exclude, limit)
        return self._query_near([b.members for b in buckets], near, status, exclude, limit)

    def _query_ordered(
        self, buckets: list[_Bucket], status: str | None, exclude: str | None, limit: int
    ) -> list[PresenceRow]:
        source: Iterable[_Entry]
        if not buckets:
            source = self._entries.values()
        elif len(buckets) == 1:
            source = self._in_order(buckets[0], limit)
        else:
            matches = _intersect([b.members for b in buckets])
            if exclude is not None:
                matches.discard(exclude)
                exclude = None  # applied: every entry below comes from ``matches``
            if len(matches) <= 4 * limit:
                first = buckets[0].members
                source = sorted(map(first.__getitem__, matches), key=_SEQ)
            else:
                # Walking the smallest bucket in order stops after ``limit`` hits.
                source = (e for e in self._in_order(buckets[0], limit) if e.key in matches)
        if exclude is not None:
            source = (e for e in source if e.key != exclude)
        if status is not None:
            source = (e for e in source if e.status == status)
        return [e.row for e in islice(source, limit)]

    def _in_order(self, bucket: _Bucket, limit: int) -> Iterable[_Entry]:
        """``bucket``'s entries in registration order, cheaply enough for a query.

        A bucket is put out of order when an entry already present joins it (a
        re-REGISTER that changes domain or capabilities); re-sorting a large one
        on each query under such churn would cost O(n log n) per query. When the
        bucket holds a large share of all entries, walking the (always ordered)
        entry table and stopping after ``limit`` hits is cheaper.
        """
        if bucket.sorted:
            return bucket.members.values()
        size = len(bucket)
        expected_scan = limit * len(self._entries) / size
        if expected_scan < size * max(math.log2(size), 1.0):
            members = bucket.members
            return (e for e in self._entries.values() if e.key in members)
        return bucket.ordered().values()

    def _query_near(
        self,
        buckets: list[_Members],
        near: tuple[float, float, float],
        status: str | None,
        exclude: str | None,
        limit: int,
    ) -> list[PresenceRow]:
        lat, lon, radius = near
        located = self._located
        # Measured relative costs with cold caches: visiting a grid cell ~ 1,
        # testing one address for membership ~ 4, the distance of a candidate ~ 15.
        smallest = len(buckets[0]) if buckets else math.inf
        near_cells = self._near_cells(lat, lon, radius, smallest * 15)
        candidates: Iterable[_Entry]
        if near_cells is None:
            if buckets:
                candidates = map(located.__getitem__, _matching(buckets) & located.keys())
            else:
                candidates = located.values()
        elif smallest * 15 <= near_cells[0]:
            candidates = _matching_entries(buckets)
        else:
            cells = near_cells[1]
            if not buckets:
                candidates = chain.from_iterable([members.values() for members in cells])
            else:
                geo_size = sum(map(len, cells))
                if len(buckets) == 1:
                    first = buckets[0]
                    if len(first) * 10 <= geo_size:
                        candidates = first.values()
                    else:
                        candidates = [e for members in cells for a, e in members.items() if a in first]
                elif geo_size * 2 <= smallest:
                    candidates = [e for members in cells for a, e in members.items() if _in_all(a, buckets)]
                else:
                    matching = _intersect(buckets)
                    if len(matching) * 10 <= geo_size:
                        candidates = map(buckets[0].__getitem__, matching)
                    else:
                        candidates = [e for members in cells for a, e in members.items() if a in matching]

        if status is not None:
            candidates = [e for e in candidates if e.status == status]
        cos0 = math.cos(lat * _RAD)
        haversine = _haversine
        hits: list[tuple[float, int, _Entry]] = []
        for entry in candidates:
            if entry.cell is not None:
                d = haversine(lat, lon, cos0, entry.lat, entry.lon, entry.cos_lat)
                if d <= radius:
                    hits.append((d, entry.seq, entry))
        if exclude is not None:
            hits = [hit for hit in hits if hit[2].key != exclude]

        ranked = heapq.nsmallest(limit, hits) if len(hits) > limit else sorted(hits)
        return [e.row for _, _, e in ranked]


def _bucket_add(index: dict[str, _Bucket], value: str, entry: _Entry) -> None:
    bucket = index.get(value)
    if bucket is None:
        bucket = index[value] = _Bucket()
    bucket.add(entry)


def _bucket_discard(index: dict[str, _Bucket], value: str, key: str) -> None:
    bucket = index[value]
    del bucket.members[key]
    if not bucket.members:
        del index[value]


def _in_all(key: str, buckets: list[_Members]) -> bool:
    return all(key in members for members in buckets)


def _matching(buckets: list[_Members]) -> AbstractSet[str]:
    """Keys in every bucket; ``buckets`` is sorted by size, smallest first."""
    return buckets[0].keys() if len(buckets) == 1 else _intersect(buckets)


def _matching_entries(buckets: list[_Members]) -> Iterable[_Entry]:
    if len(buckets) == 1:
        return buckets[0].values()
    return map(buckets[0].__getitem__, _intersect(buckets))


def _intersect(buckets: list[_Members]) -> set[str]:
    """Keys in every bucket (at least two), sorted by size, smallest first."""
    # Intersecting two key views iterates the smaller one in C.
    matches: set[str] = buckets[0].keys() & buckets[1].keys()
    for members in buckets[2:]:
        if not matches:
            break
        matches = set(filter(members.__contains__, matches))
    return matches
