"""Wake handler validation and the operator's webhook/spawn policy."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from systemx.config import Settings
from systemx.core.wakepolicy import check_wake_handler, validate_wake_handler
from systemx.protocol.messages import WakeHandler

ADDRESS = "agent@example.com"
SPAWN_DISABLED = (
    "spawn handlers are disabled on this exchange; "
    "set SYSTEMX_SPAWN_ALLOW_COMMANDS or SYSTEMX_SPAWN_ALLOW_ADDRESSES"
)


def webhook(url: Any) -> WakeHandler:
    return WakeHandler(type="webhook", url=url)


def spawn(command: Any) -> WakeHandler:
    return WakeHandler(type="spawn", command=command)


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
        (WakeHandler(type="spawn"), "needs a command"),
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
    assert check_wake_handler(handler, ADDRESS, settings(spawn_allow_addresses=("*",))) == problem


@pytest.mark.parametrize(
    "handler",
    [
        webhook("https://hooks.example.com/wake"),
        webhook("HTTP://Hooks.Example.COM:8443/wake?x=1"),
        webhook("http://[2001:db8::1]/wake"),
        spawn(["/usr/bin/agent", "--serve"]),
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
# Webhook policy


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/wake",
        "http://10.0.0.7:9000/wake",  # internal hosts are allowed by default (see SSRF note)
        "http://127.0.0.1:9000/wake",  # loopback on another port is not the exchange
        "http://localhost/wake",
    ],
)
def test_any_http_url_is_allowed_by_default(url: str) -> None:
    assert check_wake_handler(webhook(url), ADDRESS, settings()) is None


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
    ],
)
def test_the_exchanges_own_listener_is_refused(url: str) -> None:
    problem = check_wake_handler(webhook(url), ADDRESS, settings(port=8080))
    assert problem is not None and "the exchange's own endpoints" in problem


def test_own_listener_uses_the_configured_host_and_default_ports() -> None:
    s = settings(host="exchange.internal", port=80)
    assert check_wake_handler(webhook("http://exchange.internal/wake"), ADDRESS, s) is not None
    assert check_wake_handler(webhook("http://EXCHANGE.internal:80/"), ADDRESS, s) is not None
    assert check_wake_handler(webhook("http://exchange.internal:81/"), ADDRESS, s) is None
    s443 = settings(host="10.1.2.3", port=443)
    assert check_wake_handler(webhook("https://10.1.2.3/wake"), ADDRESS, s443) is not None
    assert check_wake_handler(webhook("http://10.1.2.3/wake"), ADDRESS, s443) is None


def test_own_listener_is_refused_even_when_allow_listed() -> None:
    s = settings(port=8080, webhook_allow=("http://127.0.0.1:8080/",))
    assert check_wake_handler(webhook("http://127.0.0.1:8080/wake"), ADDRESS, s) is not None


def test_deny_prefixes_are_refused() -> None:
    s = settings(webhook_deny=("http://169.254.169.254", "https://admin.example.com/private/"))
    refused = [
        "http://169.254.169.254/latest/meta-data",
        "HTTP://169.254.169.254",
        "https://admin.example.com/private/x",
    ]
    for url in refused:
        problem = check_wake_handler(webhook(url), ADDRESS, s)
        assert problem is not None and "refused" in problem, url
    for url in ["https://admin.example.com/public", "http://169.254.169.2545/"]:
        assert check_wake_handler(webhook(url), ADDRESS, s) is None, url


def test_allow_list_restricts_webhooks_to_its_prefixes() -> None:
    s = settings(webhook_allow=("https://hooks.example.com/wake/", "https://spawner.example.org"))
    allowed = [
        "https://hooks.example.com/wake/agent",
        "https://HOOKS.example.com/wake/agent",
        "https://spawner.example.org",
        "https://spawner.example.org/",
        "https://spawner.example.org/any/path",
        "https://spawner.example.org?q=1",
    ]
    for url in allowed:
        assert check_wake_handler(webhook(url), ADDRESS, s) is None, url
    refused = [
        "https://hooks.example.com/other",
        "http://hooks.example.com/wake/agent",  # scheme is part of the prefix
        "https://hooks.example.com/WAKE/agent",  # paths are case-sensitive
        "https://spawner.example.org.evil.net/",
        "https://spawner.example.org@evil.net/",
        "https://spawner.example.org:8443/",
        "https://spawner.example.organic/",
        "http://10.0.0.7/wake",
    ]
    for url in refused:
        problem = check_wake_handler(webhook(url), ADDRESS, s)
        assert problem is not None and "SYSTEMX_WEBHOOK_ALLOW" in problem, url


def test_deny_wins_over_allow() -> None:
    s = settings(
        webhook_allow=("https://hooks.example.com/",), webhook_deny=("https://hooks.example.com/admin",)
    )
    assert check_wake_handler(webhook("https://hooks.example.com/wake"), ADDRESS, s) is None
    assert check_wake_handler(webhook("https://hooks.example.com/admin/x"), ADDRESS, s) is not None


# --------------------------------------------------------------------------
# Spawn policy


def test_spawn_is_refused_when_nothing_is_allowed() -> None:
    assert check_wake_handler(spawn(["agent"]), ADDRESS, settings()) == SPAWN_DISABLED


@pytest.mark.parametrize(
    ("allowed", "executable", "ok"),
    [
        (("agent",), "agent", True),
        (("agent",), "/opt/agents/bin/agent", True),  # an entry without a slash matches the base name
        (("agent",), "./agent", True),
        (("agent",), "agent2", False),
        (("agent",), "/opt/agent/other", False),
        (("/opt/bin/agent",), "/opt/bin/agent", True),  # an entry with a slash must match exactly
        (("/opt/bin/agent",), "agent", False),
        (("/opt/bin/agent",), "/usr/bin/agent", False),
        (("/opt/bin/agent",), "/opt/bin/../bin/agent", False),
        (("python3", "/usr/bin/node"), "/usr/bin/node", True),
        (("Agent",), "agent", False),
    ],
)
def test_spawn_command_allow_list(allowed: tuple[str, ...], executable: str, ok: bool) -> None:
    s = settings(spawn_allow_commands=allowed)
    problem = check_wake_handler(spawn([executable, "--flag"]), ADDRESS, s)
    if ok:
        assert problem is None
    else:
        assert problem is not None
        assert "SYSTEMX_SPAWN_ALLOW_COMMANDS" in problem and executable in problem


def test_only_the_executable_is_matched_not_the_arguments() -> None:
    s = settings(spawn_allow_commands=("agent",))
    assert check_wake_handler(spawn(["/bin/sh", "agent"]), ADDRESS, s) is not None


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
        (("*",), "anyone@anywhere.example", True),
        (("x@y.z", "*@trusted.example"), "me@trusted.example", True),
        (("bot-*-prod@*.example",), "bot-7-prod@eu.example", True),
    ],
)
def test_spawn_address_patterns(patterns: tuple[str, ...], address: str, ok: bool) -> None:
    problem = check_wake_handler(spawn(["anything"]), address, settings(spawn_allow_addresses=patterns))
    if ok:
        assert problem is None
    else:
        assert problem is not None and "SYSTEMX_SPAWN_ALLOW_ADDRESSES" in problem


def test_either_list_is_enough_for_spawn() -> None:
    s = settings(spawn_allow_commands=("agent",), spawn_allow_addresses=("*@trusted.example",))
    assert check_wake_handler(spawn(["agent"]), "x@untrusted.example", s) is None
    assert check_wake_handler(spawn(["other"]), "x@trusted.example", s) is None
    assert check_wake_handler(spawn(["other"]), "x@untrusted.example", s) is not None


def test_spawn_lists_do_not_affect_webhooks() -> None:
    s = settings(spawn_allow_commands=("agent",))
    assert check_wake_handler(webhook("https://hooks.example.com/"), ADDRESS, s) is None
