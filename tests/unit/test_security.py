"""Security rules without sockets: patterns, grants, credentials, admission, limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from systemx.core.acl import Grants, compile_patterns, expand, parse_permissions, parse_policy
from systemx.core.auth import AuthError, Identity, JwtVerifier, load_tokens, token_of
from systemx.core.security import Admission, Refusal, Security, Window
from systemx.core.timerkeys import AuthTimer
from systemx.server.limits import CLOSE, REFUSED, WARN, IpGate, RateLimits
from tests.unit.harness import Harness

SECRET = "k" * 32


# ------------------------------------------------------------------ patterns and rules


def test_patterns_are_anchored_case_blind_and_literal_but_for_the_star() -> None:
    rx = compile_patterns(["*@agents.example.com", "a.b@x.com"])
    assert rx is not None
    assert rx.match("bot@agents.example.com") and rx.match("BOT@AGENTS.example.COM")
    assert not rx.match("bot@agents.example.com.evil.org")
    assert not rx.match("axb@x.com")  # the dot is literal
    assert compile_patterns([]) is None


def test_deny_wins_and_an_empty_allow_list_allows_nothing() -> None:
    perms = parse_permissions({"dial": {"allow": ["*@example.com"], "deny": ["ceo@*"]}, "join": []})
    grants = Grants([perms.compile("me@example.com", "example.com")])
    assert grants.permits("dial", "bob@example.com")
    assert not grants.permits("dial", "ceo@example.com")
    assert not grants.permits("dial", "CEO@example.com")
    assert not grants.permits("dial", "bob@example.org")
    assert not grants.permits("join", "room@example.com")
    assert grants.permits("presence", "anything") and not grants.restricts("presence")


def test_every_rule_set_must_permit() -> None:
    token = parse_permissions({"dial": ["*@example.com", "*@example.org"]}).compile("s", "d")
    policy = parse_permissions({"dial": {"deny": ["*@example.org"]}}).compile("s", "d")
    grants = Grants([token, policy])
    assert grants.permits("dial", "a@example.com")
    assert not grants.permits("dial", "a@example.org")


def test_templates_expand_per_identity() -> None:
    assert expand("*@{domain}", "a@x.com", "x.com") == "*@x.com"
    perms = parse_permissions({"register": ["{sub}"]})
    grants = Grants([perms.compile("a@x.com", "x.com")])
    assert grants.permits("register", "a@x.com") and not grants.permits("register", "b@x.com")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"fly": ["*"]}, "unknown action"),
        ({"dial": "x@y.z"}, "list of patterns"),
        ({"dial": {"allow": ["*"], "maybe": []}}, "unknown key"),
        ({"dial": [""]}, "non-empty strings"),
        ({"dial": ["{user}@x.com"]}, "unknown template"),
        ([], "object"),
    ],
)
def test_bad_permissions_are_refused_with_the_reason(data: Any, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_permissions(data)


def test_policy_picks_the_domain_then_the_default() -> None:
    policy = parse_policy({"domains": {"Example.com": {"dial": ["*@example.com"]}}, "default": {"dial": []}})
    assert policy.for_domain("EXAMPLE.COM") is policy.domains["example.com"]
    assert policy.for_domain("other.org") is policy.default
    with pytest.raises(ValueError, match="unknown key"):
        parse_policy({"domain": {}})


# ------------------------------------------------------------------ credentials


def test_token_of_takes_a_string_or_a_token_object() -> None:
    assert token_of("abc") == "abc"
    assert token_of({"token": "abc"}) == "abc"
    for bad in (None, 42, {"token": None}, "", {"tok": "abc"}, "x" * 9000):
        with pytest.raises(AuthError):
            token_of(bad)


def test_tokens_file_json_and_toml(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        '[[tokens]]\ntoken = "0123456789abcdefXYZ"\nsub = "*@x.com"\n'
        '[tokens.permissions]\ndial = ["*@x.com"]\n'
        '[[tokens]]\ntoken = "0123456789abcdef-old"\nsub = "old@x.com"\nexpires_at = 1000\n'
    )
    table = load_tokens(path)
    identity = table.authenticate("0123456789abcdefXYZ", 5.0)
    assert identity.subject == "*@x.com" and identity.permissions is not None
    with pytest.raises(AuthError, match="expired"):
        table.authenticate({"token": "0123456789abcdef-old"}, 1000.0)
    with pytest.raises(AuthError, match="unknown"):
        table.authenticate("0123456789abcdefXY", 5.0)


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        ([{"token": "short", "sub": "a@x.com"}], "at least 16"),
        ([{"token": "0123456789abcdef", "sub": ""}], "sub"),
        ([{"token": "0123456789abcdef", "sub": "a@x.com", "scope": 1}], "unknown key"),
        ([{"token": "0123456789abcdef", "sub": "a@x.com"}] * 2, "twice"),
    ],
)
def test_bad_tokens_files_are_refused(tmp_path: Path, tokens: list[dict[str, Any]], problem: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"tokens": tokens}))
    with pytest.raises(ValueError, match=problem):
        load_tokens(path)


def test_jwt_checks_expiry_against_the_given_time_not_the_clock() -> None:
    verifier = JwtVerifier(secret=SECRET)
    token = jwt.encode({"sub": "a@x.com", "exp": 2000}, SECRET, algorithm="HS256")
    assert verifier.authenticate(token, 1999.0).expires_at == 2000.0
    with pytest.raises(AuthError, match="expired"):
        verifier.authenticate(token, 2000.0)
    early = jwt.encode({"sub": "a@x.com", "exp": 2000, "nbf": 1500}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError, match="nbf"):
        verifier.authenticate(early, 1000.0)


def test_jwt_keys_pin_the_algorithm() -> None:
    assert JwtVerifier(secret=SECRET).algorithms == ["HS256"]
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert JwtVerifier(public_key=rsa_pem).algorithms == ["RS256"]
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert JwtVerifier(public_key=ec_pem).algorithms == ["ES256"]
    with pytest.raises(ValueError, match="at least 32"):
        JwtVerifier(secret="short")
    with pytest.raises(ValueError, match="exactly one"):
        JwtVerifier(secret=SECRET, public_key=rsa_pem)
    with pytest.raises(ValueError, match="PEM"):
        JwtVerifier(public_key=b"not a key")


# ------------------------------------------------------------------ admission


class _Fixed:
    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def authenticate(self, auth: Any, now: float) -> Identity:
        if auth != "good":
            raise AuthError("bad credential")
        return self.identity


def test_admit_authenticates_then_checks_the_subject_and_the_rules() -> None:
    perms = parse_permissions({"dial": ["*@{domain}"]})
    security = Security(_Fixed(Identity("*@x.com", 50.0, perms)), None)
    refused = security.admit("bad", "a@x.com", 1.0)
    assert isinstance(refused, Refusal) and refused.reason == "auth_failed"
    other = security.admit("good", "a@y.com", 1.0)
    assert isinstance(other, Refusal) and other.reason == "forbidden"
    admitted = security.admit("good", "a@x.com", 1.0)
    assert isinstance(admitted, Admission)
    assert admitted.subject == "*@x.com" and admitted.expires_at == 50.0
    assert admitted.grants is not None and not admitted.grants.permits("dial", "b@y.com")


def test_admit_without_authentication_applies_the_policy_to_the_address() -> None:
    policy = parse_policy({"default": {"register": ["{sub}"], "dial": {"deny": ["{sub}"]}}})
    security = Security(None, policy)
    admitted = security.admit(None, "a@x.com", 1.0)
    assert isinstance(admitted, Admission) and admitted.subject is None
    assert admitted.grants is not None and not admitted.grants.permits("dial", "a@x.com")
    assert Security(None, parse_policy({})).admit(None, "a@x.com", 1.0) == Admission(None, None, None)


def test_window_counts_and_says_when_to_retry() -> None:
    window = Window()
    assert window.hit(10.0, 2, 1.0) is None
    assert window.hit(10.2, 2, 1.0) is None
    assert window.hit(10.5, 2, 1.0) == 500
    assert window.hit(11.0, 2, 1.0) is None


# ------------------------------------------------------------------ transport limits


def test_ip_gate_caps_open_connections_per_address() -> None:
    gate = IpGate(max_open=2, rate=0, ban_seconds=10)
    assert gate.admit("a", 0.0) is None and gate.admit("a", 0.0) is None
    assert gate.admit("a", 0.0) == "too_many_connections"
    assert gate.admit("b", 0.0) is None
    gate.release("a")
    assert gate.admit("a", 0.0) is None
    assert gate.open_from("a") == 2


def test_ip_gate_bans_a_flood_until_the_ban_ends() -> None:
    gate = IpGate(max_open=0, rate=3, ban_seconds=10)
    assert [gate.admit("a", 1.0 + i * 0.01) for i in range(4)] == [None, None, None, "flood"]
    assert gate.admit("a", 2.5) == "banned" and gate.banned("a", 2.5)
    assert gate.admit("b", 2.5) is None
    assert gate.admit("a", 11.5) is None


def test_bucket_admits_a_burst_then_warns_drops_and_closes() -> None:
    limits = RateLimits(frames_per_second=10, bytes_per_second=0, burst_seconds=1)
    bucket = limits.bucket(0.0)
    assert [bucket.take(5, 0.0) for _ in range(10)] == [0] * 10
    assert bucket.take(5, 0.0) == WARN and bucket.over() == "frames_per_second"
    assert bucket.retry_after_ms() == 200  # 2 tokens short at 10/s
    assert bucket.take(5, 0.0) == REFUSED
    verdicts = [bucket.take(5, 0.0) for _ in range(9)]
    assert verdicts[-1] == CLOSE
    fresh = limits.bucket(0.0)
    for _ in range(11):
        fresh.take(1, 0.0)
    # After waiting as told, a message passes again.
    assert fresh.take(1, 0.0 + fresh.retry_after_ms() / 1000) == 0


def test_byte_bucket() -> None:
    limits = RateLimits.of(0, 1000, 2)
    assert limits is not None and RateLimits.of(0, 0, 2) is None
    bucket = limits.bucket(0.0)
    assert bucket.take(1500, 0.0) == 0
    assert bucket.take(600, 0.0) == WARN and bucket.over() == "bytes_per_second"
    assert bucket.take(0, 1.0) == 0  # refilled 1000 bytes


# ------------------------------------------------------------------ the exchange's hooks


def _hs(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_wake_profile_records_its_owner_and_refuses_others() -> None:
    h = Harness(auth="jwt", jwt_secret=SECRET, webhook_allow=("https://hooks.example.com/",))
    handler = {"type": "webhook", "url": "https://hooks.example.com/w"}
    owner = _hs({"sub": "agent@x.com", "exp": 5000})
    answer = h.register("a", "agent@x.com", auth=owner, mode="wake_on_ring", wake_handler=handler)
    assert answer["type"] == "REGISTERED"
    assert h.x.profiles()["agent@x.com"].owner == "agent@x.com"
    persisted = h.actions.profiles["agent@x.com"]
    assert persisted is not None and persisted["owner"] == "agent@x.com"
    h.send("a", {"type": "SLEEP_ACK"})
    squatter = _hs({"sub": "*@x.com", "exp": 5000})
    refused = h.register("b", "agent@x.com", auth=squatter, mode="normal")
    assert refused == {"type": "REGISTER_FAILED", "reason": "forbidden", "address": "agent@x.com"}
    assert "agent@x.com" in h.x.profiles()
    assert h.register("c", "agent@x.com", auth=owner)["type"] == "REGISTERED"


def test_without_auth_profiles_have_no_owner() -> None:
    h = Harness(webhook_allow=("https://hooks.example.com/",))
    handler = {"type": "webhook", "url": "https://hooks.example.com/w"}
    h.register("a", "agent@x.com", mode="wake_on_ring", wake_handler=handler)
    assert h.x.profiles()["agent@x.com"].owner is None


def test_credential_timer_warns_then_closes_and_a_refresh_moves_it() -> None:
    h = Harness(auth="jwt", jwt_secret=SECRET, auth_grace_ms=1000)
    s = h.open("a")
    h.register("a", "a@x.com", auth=_hs({"sub": "a@x.com", "exp": 1100}))
    timer = h.timer(AuthTimer, s)
    assert h.actions.timers[timer] == 40.0  # 60 s before expiry
    h.now = 1040.0
    h.x.on_timer(timer, h.now)
    assert h.frames("a") == [{"type": "AUTH_EXPIRING", "expires_at": 1100, "seconds_left": 60}]
    assert h.actions.timers[timer] == 61.0  # expiry + grace
    assert h.register("a", "a@x.com", auth=_hs({"sub": "a@x.com", "exp": 1300}))["type"] == "REGISTERED"
    assert h.actions.timers[timer] == 200.0
    h.now = 1240.0
    h.x.on_timer(timer, h.now)
    h.frames("a")
    h.now = 1301.0
    h.x.on_timer(timer, h.now)
    assert h.actions.closed[-1] == ("a", 4001, "auth_expired")


def test_an_owner_recorded_earlier_is_not_enforced_without_authentication() -> None:
    handler = {"type": "webhook", "url": "https://hooks.example.com/w", "timeout_seconds": 30.0}
    profile = {"address": "agent@x.com", "handler": handler, "metadata": {}, "owner": "agent@x.com"}
    h = Harness(profiles={"agent@x.com": profile}, webhook_allow=("https://hooks.example.com/",))
    assert h.register("a", "agent@x.com")["type"] == "REGISTERED"
    assert h.x.profiles()["agent@x.com"].owner is None
