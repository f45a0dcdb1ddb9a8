"""SYSTEMX_PBX_TOKENS: parsing with clear errors, token checks, routes held within the token's patterns."""

from __future__ import annotations

import pytest

from systemx.core.trunkauth import AUTH_FAILED, ROUTE_NOT_ALLOWED, PbxTokens, Refusal, TokenSyntaxError


def test_unset_accepts_every_trunk_and_route() -> None:
    tokens = PbxTokens.open()
    assert tokens.is_open
    assert tokens.check(None, ["*"]) is None
    assert tokens.check({"anything": 1}, ["*@x.com"]) is None


def test_a_bare_token_may_register_any_routes() -> None:
    tokens = PbxTokens.parse("s3cret")
    assert not tokens.is_open and len(tokens) == 1
    assert tokens.check("s3cret", ["*", "*@example.com"]) is None


def test_a_wrong_or_missing_token_is_refused() -> None:
    tokens = PbxTokens.parse("s3cret, other")
    assert tokens.check("S3CRET", ["*@x.com"]) == Refusal(AUTH_FAILED, "unknown trunk token")
    assert tokens.check("", ["*@x.com"]) == Refusal(AUTH_FAILED, "unknown trunk token")
    assert tokens.check("s3cret ", ["*@x.com"]) == Refusal(AUTH_FAILED, "unknown trunk token")
    assert tokens.check("other", ["*@x.com"]) is None


@pytest.mark.parametrize("auth", [None, 42, {"token": "s3cret"}, ["s3cret"], True])
def test_auth_must_be_the_token_as_a_string(auth: object) -> None:
    refusal = PbxTokens.parse("s3cret").check(auth, ["*@x.com"])
    assert refusal is not None and refusal.reason == AUTH_FAILED
    assert "string" in refusal.detail


def test_a_token_with_patterns_may_register_only_routes_within_them() -> None:
    tokens = PbxTokens.parse("open, branch=*@branch.example.com|*.agent@hq.example.com")
    assert tokens.check("branch", ["*@branch.example.com"]) is None
    assert tokens.check("branch", ["alice@BRANCH.example.com", "*.agent@hq.example.com"]) is None
    assert tokens.check("branch", ["x.agent@hq.example.com"]) is None
    refusal = tokens.check("branch", ["*@branch.example.com", "*@hq.example.com"])
    assert refusal is not None
    assert refusal.reason == ROUTE_NOT_ALLOWED
    assert "'*@hq.example.com'" in refusal.detail
    for wide in ("*", "*@example.com", "*@*.example.com"):
        refused = tokens.check("branch", [wide])
        assert refused is not None and refused.reason == ROUTE_NOT_ALLOWED
    assert tokens.check("open", ["*"]) is None


def test_a_refusal_never_repeats_the_offered_token() -> None:
    tokens = PbxTokens.parse("good-token=*@a.com")
    for auth in ("guess-123", "good-token"):
        refusal = tokens.check(auth, ["*"])
        assert refusal is not None
        assert "guess" not in refusal.detail and "token" not in refusal.detail.replace("trunk token", "")


def test_spaces_and_empty_entries_are_ignored_and_a_token_ends_at_the_first_equals() -> None:
    tokens = PbxTokens.parse(" a ,, b = *@b.com | *@c.com ,")
    assert len(tokens) == 2
    assert tokens.check("a", ["*"]) is None
    assert tokens.check("b", ["x@c.com"]) is None
    tokens = PbxTokens.parse("t=*@x.com=y")  # the pattern holds the rest, "=" included
    refusal = tokens.check("t", ["a@x.com"])
    assert refusal is not None and refusal.reason == ROUTE_NOT_ALLOWED
    assert tokens.check("t", ["a@x.com=y"]) is None


def test_non_ascii_tokens_compare_as_utf8() -> None:
    tokens = PbxTokens.parse("clé-☎")
    assert tokens.check("clé-☎", ["*"]) is None
    assert tokens.check("cle-☎", ["*"]) is not None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "lists no token"),
        (" , ,", "lists no token"),
        ("=*@x.com", "entry 1 has an empty token"),
        ("a, =*@x.com", "entry 2 has an empty token"),
        ("a=", "entry 1 has '=' but no route pattern"),
        ("a= | ", "entry 1 has '=' but no route pattern"),
        ("a=*@x.com||*@y.com", "entry 1 has an empty route pattern"),
        ("a,b,a=*@x.com", "entry 3 repeats a token"),
    ],
)
def test_malformed_settings_are_errors_naming_the_setting(text: str, words: str) -> None:
    with pytest.raises(TokenSyntaxError) as caught:
        PbxTokens.parse(text)
    message = str(caught.value)
    assert message.startswith("SYSTEMX_PBX_TOKENS")
    assert words in message
