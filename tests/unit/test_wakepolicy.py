"""Wake handler validation and the operator's webhook/spawn policy."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from systemx.config import Settings, SpawnHandler
from systemx.core.wakepolicy import (
    check_wake_handler,
    connect_problem,
    normalise_url,
    resolve_spawn_handler,
    stored_handler,
    validate_wake_handler,
    wake_timeout,
)
from systemx.protocol.messages import WakeHandler

ADDRESS = "agent@example.com"
SPAWN_DISABLED = (
    "spawn handlers are disabled on this exchange; the operator defines them in SYSTEMX_SPAWN_HANDLERS"
)
AGENT = SpawnHandler(name="agent", argv=("/usr/bin/agent", "--serve"), timeout_seconds=12.0)


def webhook(url: Any) -> WakeHandler:
    return WakeHandler(type="webhook", url=url)


def spawn(command: Any = None, name: Any = None) -> WakeHandler:
    return WakeHandler(type="spawn", command=command, handler=name)


def settings(**kwargs: Any) -> Settings:
    return Settings(**kwargs)


# --------------------------------------------------------------------------
# Structure


@pytest.mark.parametrize(
    ("handler", "fragment"),
    [
        (WakeHandler(type="webhook"), "needs a url"),
        (webhook(42), "must be a string"),
        (webhook(""), "http or https"),
        (webhook("ftp://files.example.com/wake"), "http or https"),
        (webhook("file:///etc/passwd"), "http or https"),
        (webhook("hooks.example.com/wake"), "http or https"),
        (webhook("https:///wake"), "no host"),
        (webhook("http://hooks.example.com:99999/"), "not a valid URL"),
        (webhook("http://hooks.example.com:port/"), "not a valid URL"),
        (webhook("http://hooks.example.com/a b"), "not a valid URL"),
        (webhook("http://hooks.example.com/\nHost: evil"), "not a valid URL"),
        (WakeHandler(type="spawn"), "needs a handler name"),
        (spawn(name=""), "name of a spawn handler"),
        (spawn(name="x" * 65), "name of a spawn handler"),
        (webhook("http://user:pw@hooks.example.com/"), "user information"),
        (webhook("http://127.0.0.1:9000@evil.example/"), "user information"),
        (webhook("http://127.0.0.1:9000.evil.com/"), "not a valid URL"),
        (webhook("http://ex%61mple.com/"), "invalid host"),
        (webhook("http://bücher.example/"), "invalid host"),
        (spawn([]), "non-empty list"),
        (spawn("agent --serve"), "non-empty list"),
        (spawn(["agent", ""]), "non-empty strings"),
        (spawn(["agent", 3]), "non-empty strings"),
        (spawn(["agent\x00"]), "NUL"),
        (WakeHandler(type="webhook", url="https://h.example.com", timeout_seconds=0), "positive"),
        (WakeHandler(type="webhook", url="https://h.example.com", timeout_seconds=-1), "positive"),
        (WakeHandler(type="webhook", url="https://h.example.com", timeout_seconds=float("nan")), "positive"),
        (WakeHandler(type="webhook", url="https://h.example.com", timeout_seconds=float("inf")), "positive"),
        (WakeHandler(type="webhook", url="https://h.example.com", timeout_seconds=True), "a number"),
        (WakeHandler(type="carrier-pigeon", url="https://h.example.com"), "'webhook' or 'spawn'"),  # type: ignore[arg-type]
    ],
)
def test_malformed_handlers_are_reported(handler: WakeHandler, fragment: str) -> None:
    problem = validate_wake_handler(handler)
    assert problem is not None and fragment in problem
    # The policy check repeats the structural one, so it is safe on its own.
    assert check_wake_handler(handler, ADDRESS, settings(spawn_handlers=(AGENT,))) == problem


@pytest.mark.parametrize(
    "handler",
    [
        webhook("https://hooks.example.com/wake"),
        webhook("HTTP://Hooks.Example.COM:8443/wake?x=1"),
        webhook("http://[2001:db8::1]/wake"),
        spawn(["/usr/bin/agent", "--serve"]),
        spawn(name="agent"),
        WakeHandler(type="webhook", url="https://h.example.com", timeout_seconds=0.1, payload={"k": [1]}),
    ],
)
def test_well_formed_handlers_pass_validation(handler: WakeHandler) -> None:
    assert validate_wake_handler(handler) is None


def test_decoded_register_handler_validates() -> None:
    handler = msgspec.json.decode(
        b'{"type":"webhook","url":"https://hooks.example.com/w","timeout_seconds":5,"payload":{"a":1}}',
        type=WakeHandler,
    )
    assert validate_wake_handler(handler) is None
    assert check_wake_handler(handler, ADDRESS, settings()) is None


# --------------------------------------------------------------------------
# Webhook URLs, normalised


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTP://Hooks.Example.COM/wake", "http://hooks.example.com:80/wake"),
        ("https://hooks.example.com.", "https://hooks.example.com:443/"),
        ("https://hooks.example.com?x=1#frag", "https://hooks.example.com:443/?x=1"),
        ("http://0x7f000001:9000/", "http://127.0.0.1:9000/"),
        ("http://2130706433:9000/", "http://127.0.0.1:9000/"),
        ("http://127.1:9000/", "http://127.0.0.1:9000/"),
        ("http://0177.0.0.1/", "http://127.0.0.1:80/"),
        ("http://[::FFFF:127.0.0.1]/", "http://[::ffff:7f00:1]:80/"),
        ("http://[2001:DB8::1]:8443/a", "http://[2001:db8::1]:8443/a"),
    ],
)
def test_urls_are_normalised(url: str, normal: str) -> None:
    assert str(normalise_url(url)) == normal


# --------------------------------------------------------------------------
# Webhook policy at REGISTER


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/wake",
        "http://203.0.114.7:9000/wake",
        "http://[2606:4700::1111]/wake",
        "http://internal.corp/wake",  # a name: judged when the wake resolves it
    ],
)
def test_public_and_named_urls_are_allowed_by_default(url: str) -> None:
    assert check_wake_handler(webhook(url), ADDRESS, settings()) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.7:9000/wake",
        "http://127.0.0.1:9000/wake",
        "http://0x7f000001:9000/",
        "http://2130706433:9000/",
        "http://127.1:9000/",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://192.168.1.1/",
        "http://172.16.0.1/",
        "http://224.0.1.1/",
        "http://0.0.0.0:9000/",
        "http://240.0.0.1/",
        "http://[::1]:9000/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[ff02::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::ffff:127.0.0.1]:9000/",
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
        "http://localhost:9000/",
        "http://api.localhost/",
    ],
)
def test_non_public_literal_addresses_are_refused_by_default(url: str) -> None:
    problem = check_wake_handler(webhook(url), ADDRESS, settings())
    assert problem is not None and "SYSTEMX_WEBHOOK_ALLOW" in problem, url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/healthz",
        "http://localhost:8080/",
        "http://LOCALHOST:8080",
        "https://localhost.:8080/",
        "http://[::1]:8080/",
        "http://0.0.0.0:8080/",
        "http://[::]:8080/",
        "http://127.8.9.10:8080/",
        "http://[::ffff:127.0.0.1]:8080/",
        "http://0x7f000001:8080/",
        "http://2130706433:8080/",
        "http://127.1:8080/",
        "http://0:8080/",
    ],
)
def test_the_exchanges_own_listener_is_refused_however_spelled(url: str) -> None:
    s = settings(port=8080, webhook_allow=("http://127.0.0.1:8080/", "http://localhost:8080/"))
    problem = check_wake_handler(webhook(url), ADDRESS, s)
    assert problem is not None and "the exchange's own endpoints" in problem, url


def test_own_listener_uses_the_configured_host_and_default_ports() -> None:
    s = settings(host="exchange.internal", port=80)
    assert check_wake_handler(webhook("http://exchange.internal/wake"), ADDRESS, s) is not None
    assert check_wake_handler(webhook("http://EXCHANGE.internal:80/"), ADDRESS, s) is not None
    assert check_wake_handler(webhook("http://exchange.internal:81/"), ADDRESS, s) is None
    s443 = settings(host="10.1.2.3", port=443, webhook_allow=("https://10.1.2.3/", "http://10.1.2.3/"))
    assert check_wake_handler(webhook("https://10.1.2.3/wake"), ADDRESS, s443) is not None
    assert check_wake_handler(webhook("http://10.1.2.3/wake"), ADDRESS, s443) is None


def test_deny_prefixes_are_refused() -> None:
    s = settings(webhook_deny=("http://hooks.example.com/admin", "https://admin.example.com/private/"))
    refused = [
        "http://hooks.example.com/admin/x",
        "HTTP://HOOKS.example.com:80/admin",
        "https://admin.example.com/private/x",
    ]
    for url in refused:
        problem = check_wake_handler(webhook(url), ADDRESS, s)
        assert problem is not None and "refused" in problem, url
    for url in ["https://admin.example.com/public", "http://hooks.example.com:8080/admin"]:
        assert check_wake_handler(webhook(url), ADDRESS, s) is None, url


def test_allow_list_restricts_webhooks_to_its_prefixes() -> None:
    s = settings(
        webhook_allow=(
            "https://hooks.example.com/wake/",
            "https://spawner.example.org",
            "http://127.0.0.1:9000/",
        )
    )
    allowed = [
        "https://hooks.example.com/wake/agent",
        "https://HOOKS.example.com/wake/agent",
        "https://hooks.example.com:443/wake/agent",
        "https://spawner.example.org",
        "https://spawner.example.org/",
        "https://spawner.example.org/any/path",
        "https://spawner.example.org?q=1",
        "http://127.0.0.1:9000/wake",  # internal, but listed
        "http://0x7f000001:9000/wake",  # the same address, spelled otherwise
    ]
    for url in allowed:
        assert check_wake_handler(webhook(url), ADDRESS, s) is None, url
    refused = [
        "https://hooks.example.com/other",
        "http://hooks.example.com/wake/agent",  # scheme is part of the prefix
        "https://hooks.example.com/WAKE/agent",  # paths are case-sensitive
        "https://spawner.example.org.evil.net/",
        "https://spawner.example.org:8443/",
        "https://spawner.example.organic/",
        "http://127.0.0.1:9001/",
        "http://127.0.0.1:90/",
        "http://10.0.0.7/wake",
        "https://public.example.net/",
    ]
    for url in refused:
        problem = check_wake_handler(webhook(url), ADDRESS, s)
        assert problem is not None and "SYSTEMX_WEBHOOK_ALLOW" in problem, url
    for url in ["http://127.0.0.1:9000@evil.example/", "https://spawner.example.org@evil.net/"]:
        problem = check_wake_handler(webhook(url), ADDRESS, s)
        assert problem is not None and "user information" in problem, url


def test_deny_wins_over_allow() -> None:
    s = settings(
        webhook_allow=("https://hooks.example.com/",), webhook_deny=("https://hooks.example.com/admin",)
    )
    assert check_wake_handler(webhook("https://hooks.example.com/wake"), ADDRESS, s) is None
    assert check_wake_handler(webhook("https://hooks.example.com/admin/x"), ADDRESS, s) is not None


# --------------------------------------------------------------------------
# Webhook policy when connecting


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "fe80::1%2",
        "0.0.0.0",
    ],
)
def test_connecting_to_a_non_public_address_needs_the_allow_list(address: str) -> None:
    s = settings(port=8080)
    problem = connect_problem(address, 9000, s, allow_listed=False)
    assert problem is not None and "not a public address" in problem
    assert connect_problem(address, 9000, s, allow_listed=True) is None


def test_connecting_to_a_public_address_is_allowed() -> None:
    assert connect_problem("203.0.114.7", 443, settings(), allow_listed=False) is None
    assert connect_problem("2606:4700::1111", 443, settings(), allow_listed=False) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "0.0.0.0", "::"])
def test_connecting_to_the_exchange_itself_is_never_allowed(address: str) -> None:
    problem = connect_problem(address, 8080, settings(port=8080), allow_listed=True)
    assert problem is not None and "the exchange itself" in problem


# --------------------------------------------------------------------------
# Spawn policy


def test_spawn_is_refused_when_no_handler_is_defined() -> None:
    assert check_wake_handler(spawn(name="agent"), ADDRESS, settings()) == SPAWN_DISABLED
    assert check_wake_handler(spawn(["/usr/bin/agent", "--serve"]), ADDRESS, settings()) == SPAWN_DISABLED


def test_a_named_handler_is_accepted_and_stored_by_name() -> None:
    s = settings(spawn_handlers=(AGENT,))
    handler = WakeHandler(type="spawn", handler="agent", timeout_seconds=99, payload={"job": 1})
    assert check_wake_handler(handler, ADDRESS, s) is None
    stored = stored_handler(handler, ADDRESS, s)
    assert msgspec.to_builtins(stored) == {
        "type": "spawn",
        "handler": "agent",
        "timeout_seconds": 12.0,
        "payload": {"job": 1},
    }
    assert wake_timeout(stored, s) == 12.0  # the operator's timeout, not the client's


def test_an_unknown_name_is_refused() -> None:
    problem = check_wake_handler(spawn(name="shell"), ADDRESS, settings(spawn_handlers=(AGENT,)))
    assert problem == "no spawn handler named 'shell' is defined on this exchange"


@pytest.mark.parametrize(
    "command",
    [
        ["/bin/sh", "-c", "echo pwned"],
        ["/usr/bin/agent"],  # a prefix of the argv is not the argv
        ["/usr/bin/agent", "--serve", "--extra"],
        ["agent", "--serve"],  # no base-name matching
        ["/usr/bin/../bin/agent", "--serve"],
    ],
)
def test_a_command_must_equal_a_defined_argv(command: list[str]) -> None:
    problem = check_wake_handler(spawn(command), ADDRESS, settings(spawn_handlers=(AGENT,)))
    assert problem is not None and "matches no spawn handler" in problem


def test_the_reference_command_form_is_stored_as_the_matching_handler() -> None:
    s = settings(spawn_handlers=(AGENT,))
    handler = spawn(["/usr/bin/agent", "--serve"])
    assert check_wake_handler(handler, ADDRESS, s) is None
    assert msgspec.to_builtins(stored_handler(handler, ADDRESS, s)) == {
        "type": "spawn",
        "handler": "agent",
        "timeout_seconds": 12.0,
    }


def test_name_and_command_must_agree() -> None:
    s = settings(spawn_handlers=(AGENT,))
    assert check_wake_handler(spawn(["/usr/bin/agent", "--serve"], name="agent"), ADDRESS, s) is None
    problem = check_wake_handler(spawn(["/bin/sh"], name="agent"), ADDRESS, s)
    assert problem is not None and "differs from the argv" in problem


@pytest.mark.parametrize(
    ("patterns", "address", "ok"),
    [
        (("*@agents.example.com",), "bot@agents.example.com", True),
        (("*@agents.example.com",), "BOT@Agents.Example.COM", True),  # case-insensitive
        (("*@agents.example.com",), "bot@agents.example.com.evil.net", False),  # anchored at the end
        (("*@agents.example.com",), "bot@xagents.example.com", False),
        (("bot@*",), "bot@anything.example", True),
        (("bot@*",), "robot@anything.example", False),  # anchored at the start
        (("a.b@c.d",), "aXb@c.d", False),  # only * is special
        ((), "anyone@anywhere.example", True),  # no patterns: any address
        (("x@y.z", "*@trusted.example"), "me@trusted.example", True),
        (("bot-*-prod@*.example",), "bot-7-prod@eu.example", True),
    ],
)
def test_a_handler_can_be_restricted_to_address_patterns(
    patterns: tuple[str, ...], address: str, ok: bool
) -> None:
    s = settings(spawn_handlers=(SpawnHandler(name="bot", argv=("/opt/bot",), addresses=patterns),))
    for handler in (spawn(name="bot"), spawn(["/opt/bot"])):
        problem = check_wake_handler(handler, address, s)
        if ok:
            assert problem is None
        else:
            assert problem == f"spawn handler 'bot' is not available to {address!r}"


def test_a_handler_removed_from_the_configuration_no_longer_resolves() -> None:
    stored = {"type": "spawn", "handler": "agent", "timeout_seconds": 12.0}
    assert resolve_spawn_handler(stored, ADDRESS, settings(spawn_handlers=(AGENT,))) is AGENT
    other = SpawnHandler(name="other", argv=("/bin/true",))
    assert resolve_spawn_handler(stored, ADDRESS, settings(spawn_handlers=(other,))) == (
        "no spawn handler named 'agent' is defined on this exchange"
    )
    # A profile stored by an older version with a client-chosen command runs only if it is defined.
    legacy = {"type": "spawn", "command": ["/bin/sh", "-c", "id"], "timeout_seconds": 5.0}
    problem = resolve_spawn_handler(legacy, ADDRESS, settings(spawn_handlers=(AGENT,)))
    assert isinstance(problem, str) and "matches no spawn handler" in problem


def test_spawn_handlers_do_not_affect_webhooks() -> None:
    s = settings(spawn_handlers=(AGENT,))
    assert check_wake_handler(webhook("https://hooks.example.com/"), ADDRESS, s) is None
