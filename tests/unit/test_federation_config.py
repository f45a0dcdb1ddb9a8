"""Federation settings: environment and file forms, the reference's defaults, errors naming the setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from systemx.config import ConfigError
from systemx.federation import (
    DEFAULT_HEARTBEAT_MS,
    DEFAULT_RECONNECT_DELAY_MS,
    PeerConfig,
    default_announce_routes,
    default_peer_id,
    load_federation,
)

BASE = {
    "FEDERATION_ENABLED": "true",
    "FEDERATION_PEER_URL": "wss://hq.example.com",
    "FEDERATION_ROUTES": "*@example.com",
}


def _env(**changes: str) -> dict[str, str]:
    return {**BASE, **changes}


# ------------------------------------------------------------------ environment form


@pytest.mark.parametrize("flag", [None, "", "false", "0", "no", "OFF"])
def test_federation_is_off_unless_enabled(flag: str | None) -> None:
    env = dict(BASE)
    if flag is None:
        del env["FEDERATION_ENABLED"]
    else:
        env["FEDERATION_ENABLED"] = flag
    assert load_federation(env) is None
    assert load_federation({}) is None


def test_the_environment_form_with_defaults() -> None:
    config = load_federation(BASE)
    assert config is not None
    assert config.source == "environment"
    assert config.domain == "local.systemx"
    assert config.peers == (
        PeerConfig(
            id="hq.example.com",
            url="wss://hq.example.com",
            routes=("*@example.com",),
            announce_routes=("*@local.systemx",),
            auth=None,
            domain="local.systemx",
            reconnect_delay_ms=DEFAULT_RECONNECT_DELAY_MS,
            heartbeat_ms=DEFAULT_HEARTBEAT_MS,
        ),
    )


def test_the_environment_form_with_every_setting() -> None:
    config = load_federation(
        _env(
            FEDERATION_ENABLED="TRUE",
            FEDERATION_PEER_URL="ws://10.0.0.1:9000/trunk",
            FEDERATION_ROUTES=" *@example.com , *.agent@hq.example.com ,",
            FEDERATION_DOMAIN="branch.example.com",
            FEDERATION_ANNOUNCE_ROUTES="*@branch.example.com,bob@x.org",
            FEDERATION_PEER_ID="hq",
            FEDERATION_AUTH="s3cret",
            FEDERATION_RECONNECT_DELAY_MS="250",
            FEDERATION_HEARTBEAT_MS=" 1000 ",
        )
    )
    assert config is not None
    (peer,) = config.peers
    assert peer == PeerConfig(
        id="hq",
        url="ws://10.0.0.1:9000/trunk",
        routes=("*@example.com", "*.agent@hq.example.com"),
        announce_routes=("*@branch.example.com", "bob@x.org"),
        auth="s3cret",
        domain="branch.example.com",
        reconnect_delay_ms=250,
        heartbeat_ms=1000,
    )


@pytest.mark.parametrize(
    ("url", "peer_id"),
    [
        ("ws://hq.example.com", "hq.example.com"),
        ("ws://hq.example.com:80/x", "hq.example.com"),
        ("wss://hq.example.com:443", "hq.example.com"),
        ("ws://hq.example.com:443", "hq.example.com:443"),
        ("wss://HQ.example.com:8443", "hq.example.com:8443"),
        ("ws://[::1]:9000", "[::1]:9000"),
        ("ws://user:pw@hq.example.com:9000", "hq.example.com:9000"),
    ],
)
def test_the_peer_id_defaults_to_the_urls_host(url: str, peer_id: str) -> None:
    assert default_peer_id(url) == peer_id


@pytest.mark.parametrize(
    ("domain", "routes"),
    [
        ("branch.example.com", ("*@branch.example.com",)),
        ("*@branch.example.com", ("*@branch.example.com",)),
        ("*.branch.example.com", ("*@branch.example.com",)),
        ("ops@branch.example.com", ("ops@branch.example.com",)),
    ],
)
def test_the_announced_routes_default_from_the_domain(domain: str, routes: tuple[str, ...]) -> None:
    assert default_announce_routes(domain) == routes
    config = load_federation(_env(FEDERATION_DOMAIN=domain))
    assert config is not None and config.peers[0].announce_routes == routes


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"FEDERATION_ENABLED": "maybe"}, "FEDERATION_ENABLED must be true or false"),
        ({"FEDERATION_PEER_URL": ""}, "FEDERATION_PEER_URL is not set"),
        ({"FEDERATION_PEER_URL": "http://hq.example.com"}, "FEDERATION_PEER_URL must be a ws:// or wss://"),
        ({"FEDERATION_PEER_URL": "hq.example.com:9000"}, "FEDERATION_PEER_URL must be a ws:// or wss://"),
        ({"FEDERATION_PEER_URL": "ws:///path"}, "FEDERATION_PEER_URL has no host"),
        ({"FEDERATION_PEER_URL": "ws://hq:99999"}, "FEDERATION_PEER_URL is not a valid URL"),
        ({"FEDERATION_ROUTES": ""}, "FEDERATION_ROUTES lists no route"),
        ({"FEDERATION_ROUTES": " , "}, "FEDERATION_ROUTES lists no route"),
        ({"FEDERATION_RECONNECT_DELAY_MS": "5000ms"}, "FEDERATION_RECONNECT_DELAY_MS must be a whole number"),
        ({"FEDERATION_RECONNECT_DELAY_MS": "0"}, "FEDERATION_RECONNECT_DELAY_MS must be positive"),
        ({"FEDERATION_HEARTBEAT_MS": "-5"}, "FEDERATION_HEARTBEAT_MS must be positive"),
        ({"FEDERATION_HEARTBEAT_MS": "1.5"}, "FEDERATION_HEARTBEAT_MS must be a whole number"),
    ],
)
def test_environment_errors_name_the_setting(changes: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("/", r"\/").replace("?", r"\?")):
        load_federation(_env(**changes))


# ------------------------------------------------------------------ file form


def _write(tmp_path: Path, data: Any) -> dict[str, str]:
    path = tmp_path / "federation.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return {"FEDERATION_CONFIG": str(path)}


def test_the_file_form_in_the_references_shape(tmp_path: Path) -> None:
    env = _write(
        tmp_path,
        {
            "domain": "branch.example.com",
            "exportRoutes": ["*@branch.example.com", "*.bot@branch.example.com"],
            "heartbeatIntervalMs": 2000,
            "peers": [
                {"url": "wss://hq.example.com", "routes": ["*@example.com"], "auth": "t1"},
                {
                    "id": "eu",
                    "url": "ws://eu.example.com:8080",
                    "routes": ["*@eu.example.com"],
                    "reconnectDelayMs": 100,
                    "announceRoutes": ["*@only-eu.example.com"],
                    "transport": "websocket",
                },
            ],
        },
    )
    config = load_federation(env)
    assert config is not None
    assert config.domain == "branch.example.com"
    assert config.source == f"FEDERATION_CONFIG {tmp_path / 'federation.json'}"
    hq, eu = config.peers
    assert hq == PeerConfig(
        id="hq.example.com",
        url="wss://hq.example.com",
        routes=("*@example.com",),
        announce_routes=("*@branch.example.com", "*.bot@branch.example.com"),
        auth="t1",
        domain="branch.example.com",
        reconnect_delay_ms=DEFAULT_RECONNECT_DELAY_MS,
        heartbeat_ms=2000,
    )
    assert eu == PeerConfig(
        id="eu",
        url="ws://eu.example.com:8080",
        routes=("*@eu.example.com",),
        announce_routes=("*@only-eu.example.com",),
        auth=None,
        domain="branch.example.com",
        reconnect_delay_ms=100,
        heartbeat_ms=2000,
    )


def test_the_file_wins_over_the_environment_form(tmp_path: Path) -> None:
    env = {
        **BASE,
        "FEDERATION_HEARTBEAT_MS": "1",
        **_write(tmp_path, {"domain": "d.example", "peers": [{"url": "ws://p.example", "routes": ["*"]}]}),
    }
    config = load_federation(env)
    assert config is not None
    (peer,) = config.peers
    assert peer.url == "ws://p.example"
    assert peer.announce_routes == ("*@d.example",)
    assert peer.heartbeat_ms == DEFAULT_HEARTBEAT_MS
    # ... even with FEDERATION_ENABLED false, as in the reference.
    assert load_federation({**env, "FEDERATION_ENABLED": "false"}) == config


_PEER = {"url": "ws://p.example", "routes": ["*@x.com"]}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ("{not json", "is not valid JSON"),
        ([], "must hold a JSON object"),
        ({"peers": [_PEER]}, "needs 'domain'"),
        ({"domain": " ", "peers": [_PEER]}, "needs 'domain'"),
        ({"domain": "d"}, "needs 'peers', a non-empty array"),
        ({"domain": "d", "peers": []}, "needs 'peers', a non-empty array"),
        ({"domain": "d", "peers": ["ws://p"]}, r"peers\[0\] must be an object"),
        ({"domain": "d", "peers": [{"routes": ["*"]}]}, r"peers\[0\] needs 'url'"),
        ({"domain": "d", "peers": [{"url": "tcp://p", "routes": ["*"]}]}, "must be a ws:// or wss://"),
        ({"domain": "d", "peers": [{"url": "ws://p"}]}, r"peers\[0\] 'routes' must be a non-empty array"),
        ({"domain": "d", "peers": [{"url": "ws://p", "routes": []}]}, "'routes' must be a non-empty array"),
        ({"domain": "d", "peers": [{"url": "ws://p", "routes": ["*", ""]}]}, "only non-empty strings"),
        ({"domain": "d", "peers": [{"url": "ws://p", "routes": [1]}]}, "only non-empty strings"),
        ({"domain": "d", "peers": [{**_PEER, "auth": {"token": "x"}}]}, "'auth' must be a string"),
        ({"domain": "d", "peers": [{**_PEER, "id": ""}]}, "'id' must be a non-empty string"),
        ({"domain": "d", "peers": [{**_PEER, "reconnectDelayMs": 0}]}, "'reconnectDelayMs' must be positive"),
        ({"domain": "d", "peers": [{**_PEER, "reconnectDelayMs": "5s"}]}, "must be a whole number"),
        ({"domain": "d", "peers": [{**_PEER, "reconnectDelayMs": True}]}, "must be a whole number"),
        (
            {"domain": "d", "heartbeatIntervalMs": 0, "peers": [_PEER]},
            "'heartbeatIntervalMs' must be positive",
        ),
        ({"domain": "d", "exportRoutes": [], "peers": [_PEER]}, "'exportRoutes' must be a non-empty array"),
        ({"domain": "d", "peers": [{**_PEER, "transport": "tcp"}]}, "'transport' must be \"websocket\""),
        (
            {"domain": "d", "peers": [{**_PEER, "protocols": ["x"]}]},
            r"peers\[0\] has unknown key\(s\) 'protocols'",
        ),
        ({"domain": "d", "peer": [_PEER]}, r"has unknown key\(s\) 'peer'"),
        ({"domain": "d", "peers": [_PEER, _PEER]}, "two peers with id 'p.example'"),
    ],
)
def test_file_errors_name_the_setting_and_the_key(tmp_path: Path, data: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        load_federation(_write(tmp_path, data))
    assert str(caught.value).startswith("FEDERATION_CONFIG (")


def test_a_missing_file_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"FEDERATION_CONFIG \(.*nope.json\) cannot be read"):
        load_federation({"FEDERATION_CONFIG": str(tmp_path / "nope.json")})


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(b'{"domain": "\xff"}')
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_federation({"FEDERATION_CONFIG": str(path)})
