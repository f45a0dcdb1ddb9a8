"""Trunk routes: patterns read as the reference reads them, the most specific wins, containment is exact."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from systemx.core.routes import RouteTable, pattern_within


def _regex(pattern: str) -> re.Pattern[str]:
    """The reference's reading: escape everything, ``*`` -> ``.*``, anchored, case-insensitive."""
    return re.compile("".join(".*" if ch == "*" else re.escape(ch) for ch in pattern), re.I | re.S)


def _table(*entries: tuple[str, list[str]]) -> RouteTable:
    table = RouteTable()
    for trunk, patterns in entries:
        table.add(trunk, patterns)
    return table


# ------------------------------------------------------------------ reading a pattern


@pytest.mark.parametrize(
    ("pattern", "address", "hit"),
    [
        ("*@example.com", "alice@example.com", True),
        ("*@example.com", "alice@EXAMPLE.com", True),  # case-insensitive
        ("*@EXAMPLE.COM", "Alice@example.com", True),
        ("*@example.com", "alice@sub.example.com", False),  # anchored
        ("*@example.com", "alice@example.com.evil", False),
        ("*.agent@example.com", "x.agent@example.com", True),
        ("*.agent@example.com", ".agent@example.com", True),  # "*" matches nothing too
        ("*.agent@example.com", "xagent@example.com", False),  # "." is literal
        ("a?b@x.com", "a?b@x.com", True),  # "?" is literal
        ("a?b@x.com", "acb@x.com", False),
        ("[ab]@x.com", "a@x.com", False),  # "[" is literal
        ("*", "anything@at.all", True),
        ("alice@*", "alice@x.y", True),
        ("alice@*", "bob@x.y", False),
        ("*@*.example.com", "a@b.example.com", True),
        ("*@*.example.com", "a@example.com", False),
        ("a*b*c@x.com", "aXXbYYc@x.com", True),
        ("a*b*c@x.com", "acb@x.com", False),
        ("a*a@x.com", "a@x.com", False),  # the two a's cannot overlap
        ("a**@x.com", "a@x.com", True),
    ],
)
def test_a_pattern_is_read_as_the_reference_reads_it(pattern: str, address: str, hit: bool) -> None:
    table = _table(("t", [pattern]))
    assert (table.match(address) == "t") is hit
    assert bool(_regex(pattern).fullmatch(address)) is hit


_SMALL = st.text(alphabet="ab.@*", min_size=1, max_size=8)
_WORD = st.text(alphabet="abAB.@", max_size=10)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(patterns=st.lists(_SMALL, min_size=1, max_size=6), address=_WORD)
def test_match_agrees_with_the_regex_reading_and_the_specificity_order(
    patterns: list[str], address: str
) -> None:
    # One trunk per pattern, in order: the winner must be the best matching one by
    # (most literals, fewest stars, earliest), as the module docstring defines it.
    table = RouteTable()
    for i, pattern in enumerate(patterns):
        table.add(f"t{i}", [pattern])
    best: tuple[int, int, int] | None = None
    for i, pattern in enumerate(patterns):
        if _regex(pattern).fullmatch(address):
            collapsed = re.sub(r"\*+", "*", pattern)
            rank = (-(len(collapsed) - collapsed.count("*")), collapsed.count("*"), i)
            best = rank if best is None or rank < best else best
    assert table.match(address) == (None if best is None else f"t{best[2]}")


# ------------------------------------------------------------------ most specific wins


def test_the_most_specific_pattern_wins_not_the_first_registered() -> None:
    table = _table(
        ("wide", ["*"]),
        ("domain", ["*@example.com"]),
        ("agents", ["*.agent@example.com"]),
        ("alice", ["alice.agent@example.com"]),
    )
    assert table.match("alice.agent@example.com") == "alice"
    assert table.match("bob.agent@example.com") == "agents"
    assert table.match("bob@example.com") == "domain"
    assert table.match("bob@other.org") == "wide"


def test_an_exact_pattern_beats_a_wildcard_with_as_many_literals() -> None:
    table = _table(("star", ["a*@x.com"]), ("exact", ["a@x.com"]))
    assert table.match("a@x.com") == "exact"


def test_with_equal_literals_fewer_stars_win_then_the_earliest_registration() -> None:
    table = _table(("two", ["*a*@x.com"]), ("one", ["a*@x.com"]))
    assert table.match("ab@x.com") == "one"
    table = _table(("first", ["*@x.com"]), ("second", ["*@X.COM"]))
    assert table.match("a@x.com") == "first"
    # Registering again makes the trunk the latest.
    table.add("first", ["*@x.com"])
    assert table.match("a@x.com") == "second"


def test_exact_duplicates_go_to_the_earliest_and_survive_a_removal() -> None:
    table = _table(("a", ["bob@x.com"]), ("b", ["BOB@x.com"]))
    assert table.match("bob@x.com") == "a"
    table.remove("a")
    assert table.match("bob@x.com") == "b"
    table.remove("b")
    assert table.match("bob@x.com") is None


# ------------------------------------------------------------------ add and remove


def test_add_replaces_a_trunks_routes_and_remove_forgets_them() -> None:
    table = _table(("t", ["*@a.com", "x@b.com", "*", "*@*.c.com"]))
    assert len(table) == 1 and "t" in table
    assert table.routes("t") == ("*@a.com", "x@b.com", "*", "*@*.c.com")
    table.add("t", ["*@d.com"])
    assert table.match("u@a.com") is None
    assert table.match("u@d.com") == "t"
    table.remove("t")
    assert table.match("u@d.com") is None
    assert len(table) == 0 and "t" not in table
    table.remove("t")  # harmless


def test_removing_one_trunk_keeps_the_others_in_shared_buckets() -> None:
    table = _table(("a", ["*@x.com", "*"]), ("b", ["*.y@x.com", "*"]), ("c", ["*@x.com"]))
    table.remove("a")
    assert table.match("q.y@x.com") == "b"
    assert table.match("q@x.com") == "c"
    assert table.match("q@z.org") == "b"


@pytest.mark.parametrize("patterns", [[], [""], ["*@x.com", ""]])
def test_bad_patterns_are_refused_and_change_nothing(patterns: list[str]) -> None:
    table = _table(("t", ["*@x.com"]))
    with pytest.raises(ValueError):
        table.add("t", patterns)
    assert table.match("a@x.com") == "t"


def test_match_takes_any_string() -> None:
    table = _table(("t", ["*"]), ("u", ["*.com"]))
    assert table.match("") == "t"
    assert table.match("no-at-sign.com") == "u"
    assert table.match("@@..") == "t"


# ------------------------------------------------------------------ containment


@pytest.mark.parametrize(
    ("route", "allowed", "within"),
    [
        ("*.agent@sub.example.com", "*@sub.example.com", True),
        ("alice@sub.example.com", "*@sub.example.com", True),
        ("*@sub.example.com", "*@*.example.com", True),
        ("*@SUB.example.com", "*@sub.EXAMPLE.com", True),
        ("*@example.com", "*.agent@example.com", False),
        ("*@example.com", "*@sub.example.com", False),
        ("*", "*@example.com", False),
        ("*", "*", True),
        ("*@x.com", "*", True),
        ("a*b@x.com", "a*@x.com", True),
        ("a*b@x.com", "*b@x.com", True),
        ("a*@x.com", "a*b@x.com", False),
        ("**@x.com", "*@x.com", True),
    ],
)
def test_pattern_within(route: str, allowed: str, within: bool) -> None:
    assert pattern_within(route, allowed) is within


def _brute_within(route: str, allowed: str) -> bool:
    # Words over the patterns' letters plus one they do not use ("c"): if route is not
    # within allowed, route with "c" for each "*" is a counter-example no longer than route.
    r, a = _regex(route), _regex(allowed)
    for n in range(len(route) + 1):
        for letters in itertools.product("abc", repeat=n):
            word = "".join(letters)
            if r.fullmatch(word) and not a.fullmatch(word):
                return False
    return True


_GLOB = st.text(alphabet="ab*", min_size=1, max_size=7)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(route=_GLOB, allowed=_GLOB)
def test_pattern_within_agrees_with_brute_force(route: str, allowed: str) -> None:
    assert pattern_within(route, allowed) is _brute_within(route, allowed)


@settings(max_examples=200)
@given(route=_GLOB)
def test_every_pattern_is_within_itself_and_within_star(route: str) -> None:
    assert pattern_within(route, route)
    assert pattern_within(route, "*")
