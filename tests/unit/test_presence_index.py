"""MemoryPresenceIndex against a brute-force scan: same rows, same order."""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from systemx.state.presence import EARTH_RADIUS_KM, MemoryPresenceIndex, PresenceRow, haversine_km

STATUSES = ("available", "busy", "dnd", "away", "asleep")


@dataclass(slots=True)
class _Record:
    seq: int
    domain: str
    capabilities: frozenset[str]
    lat: float | None
    lon: float | None
    status: str
    metadata: dict[str, Any]


class _Model:
    """The presence semantics written as plainly as possible: a scan over everything."""

    def __init__(self) -> None:
        self.records: dict[str, _Record] = {}
        self.next_seq = 0

    def put(
        self,
        address: str,
        *,
        domain: str,
        capabilities: Sequence[str],
        lat: float | None,
        lon: float | None,
        status: str,
        metadata: dict[str, Any],
    ) -> None:
        old = self.records.get(address)
        if old is None:
            seq = self.next_seq
            self.next_seq += 1
        else:
            seq = old.seq
        self.records[address] = _Record(seq, domain, frozenset(capabilities), lat, lon, status, metadata)

    def set_status(self, address: str, status: str) -> None:
        if address in self.records:
            self.records[address].status = status

    def remove(self, address: str) -> None:
        self.records.pop(address, None)

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
        wanted = frozenset(capabilities or ())
        dom = domain.lower() if domain is not None else None
        # A scan of everything; the cheap filters first only to keep the test fast.
        matches: Iterable[tuple[str, _Record]] = self.records.items()
        if dom is not None or status is not None:
            matches = [
                (a, r)
                for a, r in matches
                if (dom is None or r.domain == dom) and (status is None or r.status == status)
            ]
        if wanted:
            matches = [(a, r) for a, r in matches if wanted <= r.capabilities]
        if near is not None:
            lat, lon, radius = near
            # A great-circle distance is never shorter than its latitude difference; the
            # millimetre of slack dwarfs rounding, so this skips no point within ``radius``.
            band = (radius + 1e-6) / (EARTH_RADIUS_KM * math.pi / 180.0)
            hits = [
                (d, r.seq, a, r)
                for a, r in matches
                if r.lat is not None
                and r.lon is not None
                and abs(r.lat - lat) <= band
                and (d := haversine_km(lat, lon, r.lat, r.lon)) <= radius
            ]
            hits.sort(key=lambda h: (h[0], h[1]))
            matches = [(a, r) for _, _, a, r in hits]
        rows: list[PresenceRow] = []
        for a, r in matches:
            if len(rows) >= limit:
                break
            if a != exclude:
                rows.append((a, r.status, r.metadata))
        return rows


def _random_location(rng: random.Random, hotspots: list[tuple[float, float]]) -> tuple[float, float] | None:
    roll = rng.random()
    if roll < 0.10:
        return None
    if roll < 0.18:
        # Near a pole, the poles themselves included.
        lat = rng.choice([90.0, -90.0]) if rng.random() < 0.05 else rng.uniform(84.0, 90.0)
        return math.copysign(lat, rng.choice([1.0, -1.0])), rng.uniform(-180.0, 180.0)
    if roll < 0.26:
        # Near the antimeridian, both signs and +-180 themselves.
        lon = 180.0 if rng.random() < 0.05 else rng.uniform(178.0, 180.0)
        return rng.uniform(-89.0, 89.0), math.copysign(lon, rng.choice([1.0, -1.0]))
    if roll < 0.30:
        # Shared points produce exact distance ties, broken by registration order.
        return rng.choice(hotspots)
    return rng.uniform(-90.0, 90.0), rng.uniform(-180.0, 180.0)


def _populate(n: int, seed: int) -> tuple[MemoryPresenceIndex, _Model, random.Random, list[str]]:
    rng = random.Random(seed)
    domains = [f"d{i}.example" for i in range(50)]
    # Small domains of sizes from ~0 to ~200, for plans that start from a tiny bucket.
    rare = [f"rare{i}.example" for i in range(10)]
    caps = [f"cap{i}" for i in range(30)]
    hotspots = [(rng.uniform(-80.0, 80.0), rng.uniform(-180.0, 180.0)) for _ in range(20)]
    index = MemoryPresenceIndex()
    model = _Model()

    def put(address: str) -> None:
        loc = _random_location(rng, hotspots)
        fields: dict[str, Any] = {
            "domain": rng.choices(rare, weights=[2**i for i in range(10)])[0]
            if rng.random() < 0.004
            else rng.choice(domains),
            "capabilities": rng.sample(caps, rng.randint(1, 4)),
            "lat": loc[0] if loc else None,
            "lon": loc[1] if loc else None,
            "status": rng.choices(STATUSES, weights=(60, 15, 5, 15, 5))[0],
            "metadata": {"n": address},
        }
        index.put(address, **fields)
        model.put(address, **fields)

    addresses = [f"user{i}@{rng.choice(domains)}" for i in range(n)]
    for address in addresses:
        put(address)
    # Churn after the build so buckets hold out-of-order members and holes.
    for address in rng.sample(addresses, n // 50):
        put(address)
    for address in rng.sample(addresses, n // 20):
        status = rng.choice(STATUSES)
        index.set_status(address, status)
        model.set_status(address, status)
    for address in rng.sample(addresses, n // 100):
        index.remove(address)
        model.remove(address)
    for i in range(n // 100):
        put(f"late{i}@{rng.choice(domains)}")
    return index, model, rng, domains + rare


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[MemoryPresenceIndex, _Model, random.Random, list[str]]]:
    built = _populate(100_000, seed=20240607)
    # Every scan allocates ~100k tuples; without this each full collection walks the
    # whole world again and dominates the run time.
    gc.collect()
    gc.freeze()
    try:
        yield built
    finally:
        gc.unfreeze()


def _random_query(rng: random.Random, model: _Model, domains: list[str]) -> dict[str, Any]:
    query: dict[str, Any] = {"limit": rng.choice([1, 7, 50, 500, 1_000_000])}
    if rng.random() < 0.5:
        domain = rng.choice([*domains, "nowhere.example"])
        query["domain"] = domain.upper() if rng.random() < 0.2 else domain
    if rng.random() < 0.5:
        query["capabilities"] = rng.sample([f"cap{i}" for i in range(31)], rng.randint(0, 3))
    if rng.random() < 0.3:
        query["status"] = rng.choice(STATUSES)
    if rng.random() < 0.5:
        radius = rng.choice([0.0, 0.0, 1.0, 30.0, 300.0, 1000.0, 3000.0, 10_000.0, 20_000.0, math.inf])
        if rng.random() < 0.5:
            radius = rng.uniform(0.0, 20_000.0) ** rng.choice([1.0, 0.5, 0.7])
        center = rng.random()
        located = [r for r in rng.sample(list(model.records.values()), 5) if r.lat is not None]
        if center < 0.3 and located:
            r = located[0]
            assert r.lat is not None and r.lon is not None
            lat, lon = r.lat, r.lon
        elif center < 0.45:
            lat, lon = rng.choice([90.0, -90.0, 89.99, -89.5]), rng.uniform(-180.0, 180.0)
        elif center < 0.6:
            lat, lon = rng.uniform(-60.0, 60.0), rng.choice([180.0, -180.0, 179.99, -179.95])
        else:
            lat, lon = rng.uniform(-90.0, 90.0), rng.uniform(-180.0, 180.0)
        query["near"] = (lat, lon, radius)
    if rng.random() < 0.5:
        query["exclude"] = rng.choice(list(model.records)[:2000])
    return query


def test_random_queries_match_brute_force(
    world: tuple[MemoryPresenceIndex, _Model, random.Random, list[str]],
) -> None:
    index, model, rng, domains = world
    assert len(index) == len(model.records)
    nonempty = 0
    for _ in range(200):
        query = _random_query(rng, model, domains)
        expected = model.query(**query)
        assert index.query(**query) == expected, query
        nonempty += bool(expected)
    assert nonempty > 60


@pytest.mark.parametrize(("pick", "radius"), [("common", 2000.0), ("rare", 2000.0), ("rare", 300.0)])
def test_every_filter_combination_matches_brute_force(
    world: tuple[MemoryPresenceIndex, _Model, random.Random, list[str]],
    pick: str,
    radius: float,
) -> None:
    index, model, _, _ = world
    located = [(a, r) for a, r in model.records.items() if r.lat is not None]
    if pick == "common":
        address, r = located[10_000]
    else:
        address, r = next((a, r) for a, r in located if r.domain.startswith("rare"))
    assert r.lat is not None and r.lon is not None
    filters: dict[str, Any] = {
        "domain": r.domain,
        "capabilities": sorted(r.capabilities)[:2],
        "near": (r.lat, r.lon, radius),
        "status": r.status,
        "exclude": address,
    }
    names = sorted(filters)
    for mask in range(1 << len(names)):
        query = {name: filters[name] for i, name in enumerate(names) if mask >> i & 1}
        query["limit"] = 3 if mask % 3 == 0 else 1_000_000
        assert index.query(**query) == model.query(**query), query


# -- property test -----------------------------------------------------------------

_ADDRESSES = [f"a{i}@{d}" for i in range(6) for d in ("x.org", "y.org")]
_LOCATIONS = [
    None,
    (0.0, 0.0),
    (0.0, 0.0),
    (90.0, 0.0),
    (-90.0, 123.0),
    (89.99, -45.0),
    (0.0, 179.9),
    (0.0, -179.9),
    (0.0, 180.0),
    (51.5, -0.12),
    (48.85, 2.35),
]
_locations = st.sampled_from(_LOCATIONS) | st.tuples(st.floats(-90.0, 90.0), st.floats(-180.0, 180.0))
_caps = st.lists(st.sampled_from(["chat", "voice", "video", "llm"]), max_size=3)
_put_op = st.tuples(
    st.just("put"),
    st.sampled_from(_ADDRESSES),
    st.sampled_from(["x.org", "y.org", "z.org"]),
    _caps,
    _locations,
    st.sampled_from(STATUSES),
)
_status_op = st.tuples(st.just("set_status"), st.sampled_from(_ADDRESSES), st.sampled_from(STATUSES))
_remove_op = st.tuples(st.just("remove"), st.sampled_from(_ADDRESSES))
_query = st.fixed_dictionaries(
    {"limit": st.integers(0, 10)},
    optional={
        "domain": st.sampled_from(["x.org", "Y.ORG", "z.org", "w.org"]),
        "capabilities": _caps,
        "near": st.builds(
            lambda centre, radius: (*centre, radius),
            st.sampled_from([loc for loc in _LOCATIONS if loc])
            | st.tuples(
                st.sampled_from([0.0, 90.0, -90.0, 51.5, 45.0]),
                st.sampled_from([0.0, 179.95, -180.0, -0.12, 100.0]),
            ),
            st.sampled_from([0.0, 1.0, 20.0, 500.0, 5000.0, 20_015.1, 30_000.0]) | st.floats(0.0, 25_000.0),
        ),
        "status": st.sampled_from(STATUSES),
        "exclude": st.sampled_from(_ADDRESSES),
    },
)
_ops = st.lists(
    st.one_of(_put_op, _put_op, _status_op, _remove_op, st.tuples(st.just("query"), _query)), max_size=40
)


@settings(max_examples=250, deadline=None)
@given(ops=_ops, cell_deg=st.sampled_from([0.5, 1.0, 15.0, 90.0, 180.0]))
def test_operation_sequences_match_model(ops: list[tuple[Any, ...]], cell_deg: float) -> None:
    index = MemoryPresenceIndex(cell_deg=cell_deg)
    model = _Model()
    for i, op in enumerate(ops):
        match op:
            case ("put", address, domain, caps, loc, status):
                fields: dict[str, Any] = {
                    "domain": domain,
                    "capabilities": caps,
                    "lat": loc[0] if loc else None,
                    "lon": loc[1] if loc else None,
                    "status": status,
                    "metadata": {"op": i},
                }
                index.put(address, **fields)
                model.put(address, **fields)
            case ("set_status", address, status):
                index.set_status(address, status)
                model.set_status(address, status)
            case ("remove", address):
                index.remove(address)
                model.remove(address)
            case ("query", query):
                assert index.query(**query) == model.query(**query)
        assert len(index) == len(model.records)
    assert index.query(limit=100) == model.query(limit=100)


# -- edge cases --------------------------------------------------------------------


def _put(
    index: MemoryPresenceIndex,
    address: str,
    *,
    domain: str = "example.com",
    capabilities: Sequence[str] = (),
    at: tuple[float, float] | None = None,
    status: str = "available",
) -> None:
    index.put(
        address,
        domain=domain,
        capabilities=capabilities,
        lat=at[0] if at else None,
        lon=at[1] if at else None,
        status=status,
        metadata={"who": address},
    )


def _addresses(rows: list[PresenceRow]) -> list[str]:
    return [address for address, _, _ in rows]


def test_haversine_known_distances() -> None:
    assert haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(343.5, abs=0.5)
    assert haversine_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert haversine_km(90.0, 0.0, -90.0, 0.0) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert haversine_km(90.0, 10.0, 90.0, -170.0) == pytest.approx(0.0, abs=1e-9)
    assert haversine_km(12.5, 33.0, 12.5, 33.0) == 0.0


def test_radius_zero_matches_the_exact_point_only() -> None:
    index = MemoryPresenceIndex()
    _put(index, "here@example.com", at=(53.7, -1.8))
    _put(index, "next@example.com", at=(53.7, -1.8000001))
    _put(index, "nowhere@example.com")
    assert _addresses(index.query(near=(53.7, -1.8, 0.0), limit=10)) == ["here@example.com"]


def test_antimeridian() -> None:
    index = MemoryPresenceIndex()
    _put(index, "east@example.com", at=(0.0, 179.9))
    _put(index, "west@example.com", at=(0.0, -179.9))
    _put(index, "far@example.com", at=(0.0, 170.0))
    gap = haversine_km(0.0, 179.9, 0.0, -179.9)
    assert gap == pytest.approx(22.24, abs=0.01)
    assert _addresses(index.query(near=(0.0, -179.9, gap), limit=10)) == [
        "west@example.com",
        "east@example.com",
    ]
    assert _addresses(index.query(near=(0.0, 179.9, 20.0), limit=10)) == ["east@example.com"]
    both = _addresses(index.query(near=(0.0, 180.0, 12.0), limit=10))
    assert sorted(both) == ["east@example.com", "west@example.com"]


def test_pole() -> None:
    index = MemoryPresenceIndex()
    for i, lon in enumerate((-180.0, -90.0, 0.0, 45.0, 135.0, 180.0)):
        _put(index, f"p{i}@example.com", at=(89.9, lon))
    _put(index, "pole@example.com", at=(90.0, 77.0))
    _put(index, "south@example.com", at=(-89.9, 0.0))
    # Rounding in cos(90 degrees) separates the equal distances by an ulp, so only the set is exact.
    north = _addresses(index.query(near=(90.0, 0.0, 11.2), limit=10))
    assert north[0] == "pole@example.com"
    assert sorted(north[1:]) == [f"p{i}@example.com" for i in range(6)]
    # Across the pole: from lon 0 to lon 180 at 89.9 is 0.2 degrees of arc.
    across = _addresses(index.query(near=(89.9, 0.0, 22.3), limit=10))
    assert set(across) == {*(f"p{i}@example.com" for i in range(6)), "pole@example.com"}
    assert _addresses(index.query(near=(-90.0, 0.0, 12.0), limit=10)) == ["south@example.com"]


def test_reput_replaces_in_place_and_remove_then_put_moves_to_the_end() -> None:
    index = MemoryPresenceIndex()
    _put(index, "a@x.org", domain="x.org", capabilities=["chat"], at=(10.0, 10.0))
    _put(index, "b@x.org", domain="x.org", capabilities=["chat"], at=(10.0, 10.0))
    _put(index, "a@x.org", domain="y.org", capabilities=["voice"], at=(-40.0, 100.0), status="busy")

    assert _addresses(index.query(capabilities=["chat"], limit=10)) == ["b@x.org"]
    assert _addresses(index.query(capabilities=["voice"], domain="y.org", limit=10)) == ["a@x.org"]
    assert _addresses(index.query(near=(10.0, 10.0, 1.0), limit=10)) == ["b@x.org"]
    assert _addresses(index.query(near=(-40.0, 100.0, 1.0), limit=10)) == ["a@x.org"]
    assert index.query(domain="y.org", limit=10) == [("a@x.org", "busy", {"who": "a@x.org"})]
    assert _addresses(index.query(limit=10)) == ["a@x.org", "b@x.org"]

    _put(index, "a@x.org")  # no location any more
    assert index.query(near=(-40.0, 100.0, 20_000.0), limit=10) == [
        ("b@x.org", "available", {"who": "b@x.org"})
    ]

    index.remove("a@x.org")
    assert _addresses(index.query(limit=10)) == ["b@x.org"]
    assert index.query(domain="example.com", limit=10) == []
    _put(index, "a@x.org")
    assert _addresses(index.query(limit=10)) == ["b@x.org", "a@x.org"]
    assert len(index) == 2


def test_moved_entries_are_found_only_at_their_new_place() -> None:
    index = MemoryPresenceIndex()
    # Enough located entries elsewhere that small-radius queries go through the grid.
    for i in range(400):
        _put(index, f"filler{i}@x.org", at=(-60.0 + i % 20, -120.0 + i // 20))
    _put(index, "a@x.org", at=(10.0, 10.0))
    _put(index, "a@x.org", at=(-40.0, 100.0))
    assert _addresses(index.query(near=(10.0, 10.0, 50.0), limit=10)) == []
    assert _addresses(index.query(near=(-40.0, 100.0, 0.0), limit=10)) == ["a@x.org"]
    _put(index, "a@x.org", at=(-40.0, 100.5))
    assert _addresses(index.query(near=(-40.0, 100.5, 0.0), limit=10)) == ["a@x.org"]
    index.remove("a@x.org")
    assert _addresses(index.query(near=(-40.0, 100.5, 50.0), limit=10)) == []
    _put(index, "a@x.org", at=(10.0, 10.0))
    assert _addresses(index.query(near=(10.0, 10.0, 0.0), limit=10)) == ["a@x.org"]
    assert len(index) == 401


def test_remove_and_set_status_ignore_unknown_addresses() -> None:
    index = MemoryPresenceIndex()
    _put(index, "a@x.org", domain="x.org")
    index.remove("ghost@x.org")
    index.set_status("ghost@x.org", "busy")
    index.remove("a@x.org")
    index.remove("a@x.org")
    assert len(index) == 0
    assert index.query(limit=10) == []
    assert index.query(domain="x.org", capabilities=["chat"], near=(0.0, 0.0, 1e9), limit=10) == []


def test_status_changes_keep_registration_order() -> None:
    index = MemoryPresenceIndex()
    for name in "abcd":
        _put(index, f"{name}@x.org", status="busy")
    index.set_status("c@x.org", "available")
    index.set_status("a@x.org", "available")
    assert _addresses(index.query(status="available", limit=10)) == ["a@x.org", "c@x.org"]
    assert index.query(status="dnd", limit=10) == []
    assert index.query(limit=10)[0] == ("a@x.org", "available", {"who": "a@x.org"})


def test_contains_and_len() -> None:
    index = MemoryPresenceIndex()
    _put(index, "a@x.org")
    assert "a@x.org" in index
    assert "b@x.org" not in index
    assert len(index) == 1


def test_filters_and_together_with_case_insensitive_domain_and_exclude() -> None:
    index = MemoryPresenceIndex()
    _put(index, "a@x.org", domain="X.org", capabilities=["chat", "voice"])
    _put(index, "b@x.org", domain="x.org", capabilities=["chat"])
    _put(index, "c@y.org", domain="y.org", capabilities=["chat", "voice"])
    assert _addresses(index.query(domain="X.ORG", limit=10)) == ["a@x.org", "b@x.org"]
    assert _addresses(index.query(domain="x.org", capabilities=["voice", "chat"], limit=10)) == ["a@x.org"]
    assert _addresses(index.query(capabilities=["chat"], exclude="a@x.org", limit=10)) == [
        "b@x.org",
        "c@y.org",
    ]
    assert _addresses(index.query(capabilities=[], limit=10)) == ["a@x.org", "b@x.org", "c@y.org"]
    assert index.query(capabilities=["chat", "fax"], limit=10) == []


def test_limit() -> None:
    index = MemoryPresenceIndex()
    for i in range(20):
        _put(index, f"u{i}@x.org", at=(0.0, i / 100))
    assert _addresses(index.query(limit=3)) == ["u0@x.org", "u1@x.org", "u2@x.org"]
    assert _addresses(index.query(near=(0.0, 0.2, 1e4), limit=2)) == ["u19@x.org", "u18@x.org"]
    assert _addresses(index.query(exclude="u0@x.org", limit=1)) == ["u1@x.org"]
    assert index.query(limit=0) == []


@pytest.mark.parametrize(
    ("lat", "lon"),
    [(91.0, 0.0), (-90.5, 0.0), (0.0, 180.5), (math.nan, 0.0), (0.0, math.inf), (0.0, None), (None, 0.0)],
)
def test_put_rejects_bad_coordinates(lat: float | None, lon: float | None) -> None:
    index = MemoryPresenceIndex()
    with pytest.raises(ValueError):
        index.put("a@x.org", domain="x.org", capabilities=(), lat=lat, lon=lon, status="busy", metadata={})
    assert len(index) == 0


@pytest.mark.parametrize(
    "near", [(95.0, 0.0, 1.0), (0.0, -200.0, 1.0), (0.0, 0.0, -1.0), (0.0, 0.0, math.nan)]
)
def test_query_rejects_bad_near(near: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError):
        MemoryPresenceIndex().query(near=near, limit=1)


def test_cell_size_must_divide_180() -> None:
    with pytest.raises(ValueError):
        MemoryPresenceIndex(cell_deg=0.7)
    with pytest.raises(ValueError):
        MemoryPresenceIndex(cell_deg=0.0)


def _unlocated(n: int) -> MemoryPresenceIndex:
    """``n`` available entries ``a0@x.example``... without location or metadata."""
    index = MemoryPresenceIndex()
    for i in range(n):
        index.put(
            f"a{i}@x.example",
            domain="x.example",
            capabilities=(),
            lat=None,
            lon=None,
            status="available",
            metadata={},
        )
    return index


def test_status_churn_keeps_registration_order_and_filters() -> None:
    # Calls move addresses between "available" and "busy" all the time; a status
    # query still answers in registration order, with the current statuses.
    index = _unlocated(5_000)
    index.set_status("a1@x.example", "busy")
    index.set_status("a4@x.example", "busy")
    rows = index.query(status="available", limit=3)
    assert [address for address, _, _ in rows] == ["a0@x.example", "a2@x.example", "a3@x.example"]
    assert index.query(status="busy", limit=5) == [("a1@x.example", "busy", {}), ("a4@x.example", "busy", {})]
    assert index.query(domain="x.example", status="busy", limit=1) == [("a1@x.example", "busy", {})]
    index.set_status("a1@x.example", "available")
    rows = index.query(status="available", limit=3)
    assert [address for address, _, _ in rows] == ["a0@x.example", "a1@x.example", "a2@x.example"]
    assert index.query(status="dnd", limit=5) == []


def test_domain_churn_query_walks_the_ordered_table() -> None:
    # An address re-registered into a big bucket puts it out of order; a query on it
    # must not re-sort it each time (O(n log n) a query).
    index = _unlocated(5_000)
    for domain in ("y.example", "x.example"):  # away, then back: out of order
        index.put(
            "a1@x.example",
            domain=domain,
            capabilities=(),
            lat=None,
            lon=None,
            status="available",
            metadata={},
        )
    rows = index.query(domain="x.example", limit=3)
    assert [address for address, _, _ in rows] == ["a0@x.example", "a1@x.example", "a2@x.example"]
    assert index._domains["x.example"].sorted is False  # answered without sorting


def test_entries_are_keyed_apart_from_the_address_they_show() -> None:
    index = MemoryPresenceIndex()
    meta: dict[str, Any] = {"capabilities": ["chat"]}
    fields: dict[str, Any] = {"capabilities": ["chat"], "lat": 1.0, "lon": 2.0, "metadata": meta}
    index.put("a@x.org", address="a@x.org", domain="x.org", status="available", **fields)
    index.put("b@x.org", domain="x.org", status="available", **fields)
    # The same key shown with another spelling: updated in place, never a second row.
    index.put("a@x.org", address="a@X.ORG", domain="X.ORG", status="available", **fields)
    assert index.query(limit=10) == [("a@X.ORG", "available", meta), ("b@x.org", "available", meta)]
    index.set_status("a@x.org", "busy")
    assert index.query(status="busy", limit=10) == [("a@X.ORG", "busy", meta)]
    chat = ["chat"]
    for query in ({}, {"domain": "x.org"}, {"capabilities": chat}, {"domain": "x.org", "capabilities": chat}):
        assert _addresses(index.query(exclude="a@x.org", limit=10, **query)) == ["b@x.org"]
        assert _addresses(index.query(exclude="a@X.ORG", limit=10, **query)) == ["a@X.ORG", "b@x.org"]
    assert _addresses(index.query(near=(1.0, 2.0, 1.0), exclude="a@x.org", limit=10)) == ["b@x.org"]
    index.remove("a@x.org")
    assert _addresses(index.query(limit=10)) == ["b@x.org"]
    assert "a@x.org" not in index and len(index) == 1
