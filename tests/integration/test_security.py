"""Attacks on a real exchange over real sockets: credentials, permissions, owners, floods.

Each test plays the attacker (or the careless client) against ``systemx serve``
and checks what the exchange answers, and that nobody else is disturbed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import signal
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import ServerFactory, SystemXProcess
from tests.wsclient import WSClient, scaled

SECRET = "s" * 40
OTHER_SECRET = "x" * 40
ALICE_TOKEN = "alice-token-0123456789"
BOB_TOKEN = "bob-token-0123456789ab"
WILD_TOKEN = "wildcard-token-0123456789"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT built by hand: unsigned (``alg: none``) or HMAC-SHA256 with any key bytes."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if hmac_key is None:
        return signing_input + "."
    signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode({"exp": int(time.time()) + 3600, **claims}, secret, algorithm="HS256")


def tokens_file(tmp_path: Path, entries: list[dict[str, Any]]) -> str:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": entries}))
    return str(path)


async def refused(client: WSClient, address: str, auth: Any, reason: str) -> dict[str, Any]:
    client.send_json({"type": "REGISTER", "address": address, "auth": auth})
    answer = await client.expect("REGISTER_FAILED", reason=reason, address=address)
    # The wire never says why a credential was refused.
    assert answer.get("detail") is None, answer
    return answer


async def connected_pair(
    server: SystemXProcess, a: str, b: str, auth_a: Any = None, auth_b: Any = None
) -> tuple[WSClient, WSClient, str]:
    """Two registered clients in a connected call (AUTH_EXPIRING is kept in ``skipped``)."""
    caller, callee = await server.connect(), await server.connect()
    await caller.register(a, auth=auth_a)
    await callee.register(b, auth=auth_b)
    caller.send_json({"type": "DIAL", "to": b, "ringing": True})
    skip = ("AUTH_EXPIRING",)
    ring = await callee.expect("RING", skip=skip)
    callee.send_json({"type": "ANSWER", "call_id": ring["call_id"]})
    await caller.expect("RINGING", skip=skip)
    await caller.expect("CONNECTED", skip=skip)
    return caller, callee, ring["call_id"]


async def usable(server: SystemXProcess, source: str) -> bool:
    """Whether a connection from ``source`` is accepted and answered (left open if so)."""
    try:
        client = await WSClient.connect(server.url, source=source, timeout=scaled(2))
        client.send_json({"type": "HEARTBEAT"})
        await client.expect("HEARTBEAT_ACK", timeout=scaled(2))
    except Exception:
        # Reset during the handshake (picows reports it in more than one way), or closed.
        return False
    return True


async def relays(sender: WSClient, receiver: WSClient, call_id: str, text: str) -> None:
    sender.send_json({"type": "MSG", "call_id": call_id, "data": text})
    await receiver.expect("MSG", call_id=call_id, data=text)


# ------------------------------------------------------------------ SYSTEMX_AUTH=none


async def test_auth_none_warns_at_start_that_anyone_may_register_anything(server: SystemXProcess) -> None:
    line = await server.wait_for_log("SYSTEMX_AUTH=none")
    assert "anyone" in line


# ------------------------------------------------------------------ tokens


async def test_tokens_file_admits_its_tokens_and_nothing_else(
    systemx_server: ServerFactory, tmp_path: Path
) -> None:
    path = tokens_file(
        tmp_path,
        [
            {"token": ALICE_TOKEN, "sub": "alice@example.com"},
            {"token": WILD_TOKEN, "sub": "*@agents.example.com"},
        ],
    )
    server = await systemx_server(env={"SYSTEMX_AUTH": "tokens", "SYSTEMX_AUTH_TOKENS_FILE": path})
    client = await server.connect()
    await refused(client, "alice@example.com", None, "auth_failed")
    await refused(client, "alice@example.com", "guessed-token-000000000", "auth_failed")
    await refused(client, "alice@example.com", ALICE_TOKEN[:-1], "auth_failed")
    await refused(client, "alice@example.com", {"token": 42}, "auth_failed")
    # A valid token for another address or domain.
    await refused(client, "bob@example.com", ALICE_TOKEN, "forbidden")
    await refused(client, "x@example.org", WILD_TOKEN, "forbidden")
    await refused(client, "x@agents.example.com.evil.org", WILD_TOKEN, "forbidden")
    # Nothing was registered by the refusals.
    client.send_json({"type": "DIAL", "to": "someone@example.com"})
    await client.expect("ERROR", reason="not_registered")
    await client.register("alice@example.com", auth=ALICE_TOKEN)
    other = await server.connect()
    await other.register("bot7@agents.example.com", auth={"token": WILD_TOKEN})
    log = "\n".join(server.logs)
    # The log says why (the first refusal; further lines within a second are held back).
    assert "no credential" in log


async def test_sighup_reloads_the_tokens_file(systemx_server: ServerFactory, tmp_path: Path) -> None:
    path = tokens_file(tmp_path, [{"token": ALICE_TOKEN, "sub": "alice@example.com"}])
    server = await systemx_server(env={"SYSTEMX_AUTH": "tokens", "SYSTEMX_AUTH_TOKENS_FILE": path})
    alice = await server.connect()
    await alice.register("alice@example.com", auth=ALICE_TOKEN)
    bob = await server.connect()
    await refused(bob, "bob@example.com", BOB_TOKEN, "auth_failed")
    tokens_file(tmp_path, [{"token": BOB_TOKEN, "sub": "bob@example.com"}])
    mark = len(server.logs)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    await server.wait_for_log("SIGHUP: reloaded 1 token", since=mark)
    await bob.register("bob@example.com", auth=BOB_TOKEN)
    await refused(await server.connect(), "alice@example.com", ALICE_TOKEN, "auth_failed")
    # The session admitted before the reload keeps its registration.
    await alice.roundtrip()
    # A broken file is refused and the tokens in force stay.
    Path(path).write_text("{not json")
    mark = len(server.logs)
    server.proc.send_signal(signal.SIGHUP)
    await server.wait_for_log("reload failed", since=mark)
    late = await server.connect()
    late.send_json({"type": "REGISTER", "address": "bob@example.com", "auth": BOB_TOKEN})
    await late.expect("REGISTER_FAILED", reason="address_in_use")


# ------------------------------------------------------------------ JWT


async def test_jwt_hs256_refuses_forged_expired_unsigned_and_foreign_tokens(
    systemx_server: ServerFactory,
) -> None:
    server = await systemx_server(env={"SYSTEMX_AUTH": "jwt", "SYSTEMX_JWT_SECRET": SECRET})
    client = await server.connect()
    now = int(time.time())
    await refused(client, "a@example.com", hs256({"sub": "a@example.com"}, OTHER_SECRET), "auth_failed")
    await refused(client, "a@example.com", hs256({"sub": "a@example.com", "exp": now - 5}), "auth_failed")
    await refused(client, "a@example.com", hs256({"sub": "a@example.com", "exp": None}), "auth_failed")
    unsigned = forge({"alg": "none", "typ": "JWT"}, {"sub": "a@example.com", "exp": now + 600}, None)
    await refused(client, "a@example.com", unsigned, "auth_failed")
    # Claims altered after signing (a@ -> *@): the signature no longer matches.
    good = hs256({"sub": "a@example.com"})
    head, _, sig = good.split(".")
    tampered = f"{head}.{_b64(json.dumps({'sub': '*@example.com', 'exp': now + 600}).encode())}.{sig}"
    await refused(client, "b@example.com", tampered, "auth_failed")
    # An audience the exchange was not configured for.
    await refused(client, "a@example.com", hs256({"sub": "a@example.com", "aud": "other"}), "auth_failed")
    # A valid token for another domain.
    await refused(client, "a@example.org", hs256({"sub": "*@example.com"}), "forbidden")
    await client.register("a@example.com", auth={"token": hs256({"sub": "*@example.com"})})
    log = "\n".join(server.logs)
    # The log says why (the first refusal; further lines within a second are held back).
    assert "Signature verification failed" in log


async def test_jwt_rs256_refuses_hmac_tokens_signed_with_the_public_key(
    systemx_server: ServerFactory, tmp_path: Path
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "jwt.pem").write_bytes(public_pem)
    server = await systemx_server(
        env={
            "SYSTEMX_AUTH": "jwt",
            "SYSTEMX_JWT_PUBLIC_KEY": str(tmp_path / "jwt.pem"),
            "SYSTEMX_JWT_AUDIENCE": "exchange.example.com",
        }
    )
    client = await server.connect()
    claims = {"sub": "a@example.com", "exp": int(time.time()) + 600, "aud": "exchange.example.com"}
    # Algorithm confusion: HS256 keyed with the (public) PEM, which anyone can read.
    confused = forge({"alg": "HS256", "typ": "JWT"}, claims, public_pem)
    await refused(client, "a@example.com", confused, "auth_failed")
    await refused(client, "a@example.com", forge({"alg": "none"}, claims, None), "auth_failed")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await refused(client, "a@example.com", jwt.encode(claims, other, algorithm="RS256"), "auth_failed")
    no_aud = {k: v for k, v in claims.items() if k != "aud"}
    await refused(client, "a@example.com", jwt.encode(no_aud, key, algorithm="RS256"), "auth_failed")
    await client.register("a@example.com", auth=jwt.encode(claims, key, algorithm="RS256"))


async def test_jwt_es256(systemx_server: ServerFactory, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "es.pem").write_bytes(pem)
    server = await systemx_server(
        env={"SYSTEMX_AUTH": "jwt", "SYSTEMX_JWT_PUBLIC_KEY": str(tmp_path / "es.pem")}
    )
    client = await server.connect()
    claims = {"sub": "a@example.com", "exp": int(time.time()) + 600}
    await refused(client, "a@example.com", forge({"alg": "HS256"}, claims, pem), "auth_failed")
    await client.register("a@example.com", auth=jwt.encode(claims, key, algorithm="ES256"))


async def test_expiring_credential_warns_refreshes_without_dropping_calls_then_closes_4001(
    systemx_server: ServerFactory,
) -> None:
    server = await systemx_server(
        env={"SYSTEMX_AUTH": "jwt", "SYSTEMX_JWT_SECRET": SECRET, "SYSTEMX_AUTH_GRACE_MS": "300"}
    )
    soon = int(time.time()) + 3
    short_a = hs256({"sub": "a@example.com", "exp": soon})
    short_c = hs256({"sub": "c@example.com", "exp": soon})
    long_b = hs256({"sub": "b@example.com"})
    long_d = hs256({"sub": "d@example.com"})
    a, b, call_ab = await connected_pair(server, "a@example.com", "b@example.com", short_a, long_b)
    c, d, call_cd = await connected_pair(server, "c@example.com", "d@example.com", short_c, long_d)
    # Less than a minute left: the warning comes at once (while the calls were set up).
    for client in (a, c):
        await client.roundtrip()
        (warning,) = [m for m in client.skipped if m["type"] == "AUTH_EXPIRING"]
        assert warning["expires_at"] == soon and 0 <= warning["seconds_left"] <= 3
    assert not [m for m in b.skipped + d.skipped if m["type"] == "AUTH_EXPIRING"]
    # a presents a fresh credential: same address, same session, the call goes on.
    registered = await a.register("a@example.com", auth=hs256({"sub": "a@example.com"}))
    # c presents a bad one: refused, and its old credential still runs out.
    c.send_json(
        {
            "type": "REGISTER",
            "address": "c@example.com",
            "auth": hs256({"sub": "c@example.com"}, OTHER_SECRET),
        }
    )
    await c.expect("REGISTER_FAILED", reason="auth_failed")
    assert await c.expect_close(timeout=scaled(8)) == (4001, "auth_expired")
    await d.expect("HANGUP", call_id=call_cd, timeout=scaled(3))
    await relays(a, b, call_ab, "still here")
    await relays(b, a, call_ab, "and back")
    b.send_json({"type": "HEARTBEAT"})
    await b.expect("HEARTBEAT_ACK")
    assert registered["session_id"]
    assert a.closed is None


# ------------------------------------------------------------------ permissions


POLICY = {
    "domains": {
        "example.com": {
            "dial": {"allow": ["*@example.com", "*@partners.example.net"], "deny": ["ceo@example.com"]},
            "join": ["*@rooms.example.com"],
            "create": {"allow": ["*@rooms.example.com"], "deny": ["all-hands@rooms.example.com"]},
            "presence": ["{domain}"],
        },
    },
    "default": {"register": {"deny": ["admin@*"]}},
}


async def test_policy_file_refuses_dial_join_create_register_and_hides_presence(
    systemx_server: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY))
    server = await systemx_server(env={"SYSTEMX_POLICY_FILE": str(path)})
    ceo, guest, partner = await server.connect(), await server.connect(), await server.connect()
    await ceo.register("ceo@example.com")
    await guest.register("guest@example.org")
    await partner.register("p@partners.example.net", metadata={"capabilities": ["x"]})
    alice = await server.connect()
    await alice.register("alice@example.com", metadata={"capabilities": ["x"]})
    # register: denied by the default rules for other domains.
    await refused(await server.connect(), "admin@example.org", None, "forbidden")
    # dial: deny wins over allow; outside the allow list is refused, inside goes through.
    for to in ("ceo@example.com", "guest@example.org", "CEO@example.com"):
        alice.send_json({"type": "DIAL", "to": to, "ringing": True})
        await alice.expect("BUSY", to=to, reason="forbidden")
    alice.send_json({"type": "DIAL", "to": "p@partners.example.net", "ringing": True})
    await alice.expect("RINGING")
    await partner.expect("RING", from_="alice@example.com")
    await ceo.roundtrip()  # the CEO heard nothing of the refused dials
    assert not ceo.skipped
    # join / create
    alice.send_json({"type": "JOIN", "party": "secret@example.org", "create_if_missing": True})
    await alice.expect("JOIN_FAILED", reason="forbidden", party="secret@example.org")
    alice.send_json({"type": "JOIN", "party": "all-hands@rooms.example.com", "create_if_missing": True})
    await alice.expect("JOIN_FAILED", reason="forbidden")
    alice.send_json({"type": "JOIN", "party": "team@rooms.example.com", "create_if_missing": True})
    await alice.expect("JOINED", party="team@rooms.example.com")
    # guest (no rules for example.org besides register) may create anything.
    guest.send_json({"type": "JOIN", "party": "all-hands@rooms.example.com", "create_if_missing": True})
    await guest.expect("JOINED")
    # presence: alice sees example.com only, whatever the query asks.
    alice.send_json({"type": "PRESENCE", "query": {}})
    seen = await alice.expect("PRESENCE_RESULT")
    assert {e["address"] for e in seen["addresses"]} == {"ceo@example.com"}
    alice.send_json({"type": "PRESENCE", "query": {"capabilities": ["x"]}})
    assert (await alice.expect("PRESENCE_RESULT"))["addresses"] == []
    alice.send_json({"type": "PRESENCE", "query": {"domain": "partners.example.net"}})
    await alice.expect("ERROR", reason="forbidden", context="PRESENCE")
    guest.send_json({"type": "PRESENCE", "query": {"capabilities": ["x"]}})
    assert len((await guest.expect("PRESENCE_RESULT"))["addresses"]) == 2


async def test_token_permissions_with_templates(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_AUTH": "jwt", "SYSTEMX_JWT_SECRET": SECRET})
    perms = {"dial": {"allow": ["*@{domain}"], "deny": ["boss@{domain}"]}, "presence": ["{domain}"]}
    a = await server.connect()
    token = hs256({"sub": "*@tenant1.example.com", "permissions": perms})
    await a.register("a@tenant1.example.com", auth=token)
    b, c, boss = await server.connect(), await server.connect(), await server.connect()
    await b.register("b@tenant1.example.com", auth=hs256({"sub": "b@tenant1.example.com"}))
    await c.register("c@tenant2.example.com", auth=hs256({"sub": "c@tenant2.example.com"}))
    await boss.register("boss@tenant1.example.com", auth=hs256({"sub": "boss@tenant1.example.com"}))
    for to in ("c@tenant2.example.com", "boss@tenant1.example.com"):
        a.send_json({"type": "DIAL", "to": to})
        await a.expect("BUSY", reason="forbidden", to=to)
    a.send_json({"type": "PRESENCE", "query": {}})
    result = await a.expect("PRESENCE_RESULT")
    assert sorted(e["address"] for e in result["addresses"]) == [
        "b@tenant1.example.com",
        "boss@tenant1.example.com",
    ]
    a.send_json({"type": "DIAL", "to": "b@tenant1.example.com"})
    await b.expect("RING", from_="a@tenant1.example.com")
    # A permissions claim that is not valid refuses the token.
    bad = hs256({"sub": "d@tenant1.example.com", "permissions": {"fly": ["*"]}})
    await refused(await server.connect(), "d@tenant1.example.com", bad, "auth_failed")


# ------------------------------------------------------------------ wake profile owner


async def test_squatter_cannot_take_or_forget_a_sleeping_agents_address(
    systemx_server: ServerFactory, tmp_path: Path
) -> None:
    path = tokens_file(
        tmp_path,
        [
            {"token": ALICE_TOKEN, "sub": "agent@example.com"},
            {"token": WILD_TOKEN, "sub": "*@example.com"},
        ],
    )
    server = await systemx_server(
        env={
            "SYSTEMX_AUTH": "tokens",
            "SYSTEMX_AUTH_TOKENS_FILE": path,
            "SYSTEMX_WEBHOOK_ALLOW": "https://hooks.example.com/",
        }
    )
    handler = {"type": "webhook", "url": "https://hooks.example.com/wake"}
    owner = await server.connect()
    await owner.register("agent@example.com", auth=ALICE_TOKEN, mode="wake_on_ring", wake_handler=handler)
    owner.send_json({"type": "SLEEP_ACK"})
    assert await owner.expect_close() == (4000, "sleep")
    squatter = await server.connect()
    for extra in (
        {},
        {"mode": "normal"},
        {"mode": "wake_on_ring", "wake_handler": {**handler, "url": "https://hooks.example.com/evil"}},
    ):
        squatter.send_json({"type": "REGISTER", "address": "agent@example.com", "auth": WILD_TOKEN, **extra})
        answer = await squatter.expect("REGISTER_FAILED", reason="forbidden")
        assert answer.get("detail") is None
    # The profile survived: the owner's own credential takes the address back.
    back = await server.connect()
    await back.register("agent@example.com", auth=ALICE_TOKEN)
    # The squatter may still register other addresses its token covers.
    await squatter.register("other@example.com", auth=WILD_TOKEN)


# ------------------------------------------------------------------ limits


async def test_connections_per_ip_are_capped_and_other_ips_are_not(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_MAX_CONNECTIONS_PER_IP": "3"})
    mine = [await server.connect(source="127.0.0.2") for _ in range(3)]
    assert not await usable(server, "127.0.0.2")
    other = await server.connect(source="127.0.0.3")
    await other.register("other@example.com")
    await mine[0].close()
    await mine[0].wait_disconnected()
    # The server has seen the close (a roundtrip on another socket orders it): room again.
    await other.roundtrip()
    assert await usable(server, "127.0.0.2")
    await server.wait_for_log("SYSTEMX_MAX_CONNECTIONS_PER_IP reached")


async def test_connection_flood_from_one_ip_is_banned_while_others_keep_their_calls(
    systemx_server: ServerFactory,
) -> None:
    server = await systemx_server(env={"SYSTEMX_CONNECT_RATE_PER_IP": "5", "SYSTEMX_BAN_SECONDS": "60"})
    a, b, call_id = await connected_pair(server, "a@example.com", "b@example.com")
    outcomes = [await usable(server, "127.0.0.9") for _ in range(20)]
    # At least the rate is let in; once refused (banned), every later attempt is refused.
    assert False in outcomes
    first_refused = outcomes.index(False)
    assert first_refused >= 5
    assert not any(outcomes[first_refused:])
    await server.wait_for_log("Connection flood from 127.0.0.9: banned")
    # (That the ban outlasts the one-second window is covered without waiting in
    # tests/unit/test_security.py.)
    await relays(a, b, call_id, "unbothered")
    await relays(b, a, call_id, "indeed")


async def test_message_rate_per_connection_errors_then_closes_1008(systemx_server: ServerFactory) -> None:
    server = await systemx_server(
        env={"SYSTEMX_MAX_FRAMES_PER_SECOND": "5", "SYSTEMX_RATE_BURST_SECONDS": "1"}
    )
    a, b, call_id = await connected_pair(server, "a@example.com", "b@example.com")
    flooder = await server.connect()
    for _ in range(8):
        flooder.send_json({"type": "HEARTBEAT"})
    acks = 0
    while True:
        message = await flooder.recv()
        if message["type"] == "HEARTBEAT_ACK":
            acks += 1
            continue
        assert message["type"] == "ERROR", message
        break
    assert 5 <= acks < 8  # the burst, and at most what refilled while they were read
    assert message["reason"] == "rate_limited" and message["context"] == "frames_per_second"
    assert message["limit"] == 5 and message["retry_after_ms"] >= 1
    assert "SYSTEMX_MAX_FRAMES_PER_SECOND" in message["detail"]
    for _ in range(20):
        flooder.send_json({"type": "HEARTBEAT"})
    assert await flooder.expect_close() == (1008, "rate_limited")
    assert [m["type"] for m in flooder.skipped] == []
    await relays(a, b, call_id, "fine")


async def test_message_rate_counts_a_fragmented_message_once(systemx_server: ServerFactory) -> None:
    server = await systemx_server(
        env={"SYSTEMX_MAX_FRAMES_PER_SECOND": "3", "SYSTEMX_RATE_BURST_SECONDS": "1"}
    )
    client = await server.connect()
    for _ in range(5):
        client.send_fragmented(b'{"type":"HEARTBEAT"}', 4)
    error = await client.expect("ERROR", skip=("HEARTBEAT_ACK",))
    assert error["reason"] == "rate_limited" and error["context"] == "frames_per_second"
    assert 3 <= len(client.skipped) < 5


async def test_byte_rate_per_connection(systemx_server: ServerFactory) -> None:
    server = await systemx_server(
        env={
            "SYSTEMX_MAX_BYTES_PER_SECOND": "4096",
            "SYSTEMX_RATE_BURST_SECONDS": "2",
            "SYSTEMX_MAX_MESSAGE_BYTES": "8192",
        }
    )
    client = await server.connect()
    padding = "x" * 3000
    for _ in range(4):
        client.send_json({"type": "HEARTBEAT", "pad": padding})
    error = await client.expect("ERROR", skip=("HEARTBEAT_ACK",))
    assert error["context"] == "bytes_per_second" and error["limit"] == 4096
    assert len(client.skipped) == 2


async def test_register_renames_and_joins_are_rate_limited(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_REGISTER_MAX_RENAMES": "2", "SYSTEMX_JOIN_MAX_ATTEMPTS": "2"})
    client = await server.connect()
    await client.register("one@example.com")
    await client.register("two@example.com")
    # Re-REGISTERing the address held is not a rename.
    await client.register("two@example.com", metadata={"status": "busy"})
    client.send_json({"type": "REGISTER", "address": "three@example.com"})
    failed = await client.expect("REGISTER_FAILED", reason="rate_limited")
    assert "retry in" in failed["detail"]
    for n in range(2):
        client.send_json({"type": "JOIN", "party": f"room{n}@example.com", "create_if_missing": True})
        await client.expect("JOINED")
    client.send_json({"type": "JOIN", "party": "room9@example.com", "create_if_missing": True})
    error = await client.expect("ERROR", reason="rate_limited", context="JOIN")
    assert error["limit"] == 2 and error["retry_after_ms"] > 0


async def _upgrade(server: SystemXProcess, origin: str | None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    lines = [
        "GET / HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    status = await asyncio.wait_for(reader.readline(), scaled(5))
    writer.close()
    return status


async def test_browser_origin_allow_list(systemx_server: ServerFactory) -> None:
    server = await systemx_server(env={"SYSTEMX_ALLOWED_ORIGINS": "https://app.example.com"})
    assert b" 403 " in await _upgrade(server, "https://evil.example.org")
    assert b" 403 " in await _upgrade(server, "null")
    assert b" 101 " in await _upgrade(server, "https://APP.example.com")
    assert b" 101 " in await _upgrade(server, None)


async def test_client_library_refreshes_on_auth_expiring_and_keeps_its_registration(
    systemx_server: ServerFactory,
) -> None:
    from systemx.client import BusyError, connect
    from systemx.protocol.messages import AuthExpiring

    server = await systemx_server(
        env={"SYSTEMX_AUTH": "jwt", "SYSTEMX_JWT_SECRET": SECRET, "SYSTEMX_AUTH_GRACE_MS": "200"}
    )
    soon = int(time.time()) + 2
    client = await connect(
        server.url,
        "agent@example.com",
        auth=hs256({"sub": "agent@example.com", "exp": soon}),
        metadata={"capabilities": ["chat"]},
        concurrency="parallel",
    )
    # A client holding a token that expires at the same time and is not refreshed.
    lapsed = await server.connect()
    await lapsed.register("lapsed@example.com", auth=hs256({"sub": "lapsed@example.com", "exp": soon}))
    try:
        notice = await asyncio.wait_for(anext(client.events()), scaled(5))
        assert isinstance(notice, AuthExpiring) and notice.expires_at == soon
        await client.refresh_auth(hs256({"sub": "agent@example.com"}))
        assert await lapsed.expect_close(timeout=scaled(8)) == (4001, "auth_expired")
        # Past the old expiry and its grace, the refreshed session is there, as registered.
        peer = await server.connect()
        await peer.register("peer@example.com", auth=hs256({"sub": "peer@example.com"}))
        peer.send_json({"type": "PRESENCE", "query": {"capabilities": ["chat"]}})
        (entry,) = (await peer.expect("PRESENCE_RESULT"))["addresses"]
        assert entry["address"] == "agent@example.com"
        assert not client.closed
        with pytest.raises(BusyError):
            await client.dial("nobody@example.com", timeout=scaled(5))
    finally:
        await client.close()
