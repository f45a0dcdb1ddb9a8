"""Settings from the environment, a .env file and command-line overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from systemx.config import ENV_VARS, ConfigError, Settings, SpawnHandler, load_settings


def test_empty_environment_gives_the_defaults() -> None:
    assert load_settings(env={}) == Settings()


def test_every_variable_is_read_into_its_field() -> None:
    settings = load_settings(
        env={
            "SYSTEMX_PORT": "9090",
            "SYSTEMX_LISTEN_BACKLOG": "512",
            "SYSTEMX_LOG_LEVEL": "warn",
            "SYSTEMX_WEBHOOK_ALLOW": " http://127.0.0.1:9000/ , https://hooks.example.com ,",
            "SYSTEMX_WAKE_MAX_PROFILES": "50",
            "TLS_ENABLED": "false",
            "SYSTEMX_PBX_TOKENS": "s3cret=*@branch.test",
            "SYSTEMX_TRUNK_GRACE_MS": "0",
        }
    )
    assert settings.port == 9090
    assert settings.listen_backlog == 512
    assert settings.log_level == "warn"
    assert settings.webhook_allow == ("http://127.0.0.1:9000/", "https://hooks.example.com")
    assert settings.wake_max_profiles == 50
    assert settings.tls_enabled is False
    assert settings.pbx_tokens == "s3cret=*@branch.test"
    assert settings.trunk_grace_ms == 0
    assert all(hasattr(settings, field) for field, _, _ in ENV_VARS.values())


def test_an_empty_value_keeps_the_default() -> None:
    assert load_settings(env={"SYSTEMX_LISTEN_BACKLOG": ""}).listen_backlog == Settings().listen_backlog


@pytest.mark.parametrize(
    ("var", "value", "complaint"),
    [
        ("SYSTEMX_LISTEN_BACKLOG", "0", "SYSTEMX_LISTEN_BACKLOG: must be positive"),
        ("SYSTEMX_LISTEN_BACKLOG", "many", "SYSTEMX_LISTEN_BACKLOG: not a whole number: 'many'"),
        ("SYSTEMX_READ_BUFFER_BYTES", "-1", "SYSTEMX_READ_BUFFER_BYTES: must be positive"),
        ("SYSTEMX_HANDSHAKE_TIMEOUT_MS", "0", "SYSTEMX_HANDSHAKE_TIMEOUT_MS: must be positive"),
        ("SYSTEMX_PORT", "70000", "SYSTEMX_PORT: must be 0-65535"),
        ("SYSTEMX_PRESENCE_WINDOW_MS", "0", "SYSTEMX_PRESENCE_WINDOW_MS: must be positive"),
        ("SYSTEMX_PRESENCE_MAX_RESULT_BYTES", "1023", "_MAX_RESULT_BYTES: must be at least 1024"),
        ("TLS_ENABLED", "maybe", "TLS_ENABLED: not a boolean"),
        ("SYSTEMX_WAKE_MAX_PROFILES", "0", "SYSTEMX_WAKE_MAX_PROFILES: must be positive"),
        (
            "SYSTEMX_WAKE_MAX_PROFILES_PER_SESSION",
            "-1",
            "SYSTEMX_WAKE_MAX_PROFILES_PER_SESSION: must be positive",
        ),
        ("SYSTEMX_WEBHOOK_ALLOW", "127.0.0.1:9000", "SYSTEMX_WEBHOOK_ALLOW: a URL prefix must be an http"),
        ("SYSTEMX_WEBHOOK_ALLOW", "http://u@127.0.0.1/", "SYSTEMX_WEBHOOK_ALLOW: .*user information"),
        ("SYSTEMX_WEBHOOK_DENY", "ftp://x.example", "SYSTEMX_WEBHOOK_DENY: a URL prefix must be an http"),
        ("SYSTEMX_SPAWN_HANDLERS", "{not json", "SYSTEMX_SPAWN_HANDLERS: not valid JSON"),
        ("SYSTEMX_SPAWN_HANDLERS", "/no/such/handlers.toml", "SYSTEMX_SPAWN_HANDLERS: cannot read"),
        ("SYSTEMX_SPAWN_HANDLERS", '{"a": {"argv": []}}', "handler 'a': argv must be a non-empty list"),
        ("SYSTEMX_SPAWN_HANDLERS", '{"a": {"args": ["x"]}}', "handler 'a': unknown key.*args"),
        ("SYSTEMX_SPAWN_HANDLERS", '{"a b": {"argv": ["x"]}}', "handler 'a b': a name is"),
        ("SYSTEMX_SPAWN_HANDLERS", '{"a": {"argv": ["{address}"]}}', "argv.0. .the program. cannot be"),
        ("SYSTEMX_SPAWN_HANDLERS", '{"a": {"argv": ["x", "--to={address}"]}}', "must be a whole argument"),
        ("SYSTEMX_SPAWN_HANDLERS", '{"a": {"argv": ["x"], "timeout_seconds": 0}}', "timeout_seconds must be"),
        ("SYSTEMX_SPAWN_HANDLERS", '{"a": {"argv": ["x"], "env": {"K": 1}}}', "env values must be strings"),
        ("SYSTEMX_SPAWN_HANDLERS", '{"a": {"argv": ["x"], "addresses": "*"}}', "addresses must be a list"),
        ("SYSTEMX_MAX_JSON_DEPTH", "0", "SYSTEMX_MAX_JSON_DEPTH: must be 1-256"),
        ("SYSTEMX_MAX_JSON_DEPTH", "257", "SYSTEMX_MAX_JSON_DEPTH: must be 1-256"),
        ("SYSTEMX_MAX_VALUE_BYTES", "0", "SYSTEMX_MAX_VALUE_BYTES: must be positive"),
        (
            "SYSTEMX_CALL_TIMEOUT",
            "5x",
            r"SYSTEMX_CALL_TIMEOUT: not a duration: '5x' \(a number of milliseconds",
        ),
        ("SYSTEMX_CALL_TIMEOUT", "30 sec", "SYSTEMX_CALL_TIMEOUT: not a duration"),
        ("SYSTEMX_DIAL_WINDOW_MS", "0.5ms", "SYSTEMX_DIAL_WINDOW_MS: not a whole number of milliseconds"),
        ("SYSTEMX_HEARTBEAT_TIMEOUT", "-2s", "SYSTEMX_HEARTBEAT_TIMEOUT: must be positive, got -2000"),
        ("TLS_ENABLED", "true", "TLS_ENABLED: wss needs TLS_CERT_PATH and TLS_KEY_PATH; neither is set"),
        ("TLS_CERT_PATH", "/etc/cert.pem", "TLS_KEY_PATH: not set; wss needs both"),
        ("SYSTEMX_PBX_TOKENS", ",,", "SYSTEMX_PBX_TOKENS is set but lists no token"),
        ("SYSTEMX_PBX_TOKENS", "a=x||y", "SYSTEMX_PBX_TOKENS: entry 1 has an empty route pattern"),
        ("SYSTEMX_TRUNK_GRACE_MS", "-1", "SYSTEMX_TRUNK_GRACE_MS: must be 0 or more"),
        ("SYSTEMX_ADMIN_PORT", "65536", "SYSTEMX_ADMIN_PORT: must be 0-65535"),
        ("SYSTEMX_ADMIN", "sometimes", "SYSTEMX_ADMIN: not a boolean"),
        ("SYSTEMX_ADMIN_HOST", "0.0.0.0", "SYSTEMX_ADMIN_TOKEN: required .*0.0.0.0"),
        ("SYSTEMX_ADMIN_HOST", "example.com", "SYSTEMX_ADMIN_TOKEN: required"),
        ("SYSTEMX_RECORDS_MAX", "-1", "SYSTEMX_RECORDS_MAX: must be 0 or more"),
        ("SYSTEMX_RECORDS_RETENTION", "-2", "SYSTEMX_RECORDS_RETENTION: must be 0 or more"),
        ("SYSTEMX_RECORDS_RETENTION", "nan", "SYSTEMX_RECORDS_RETENTION: not a finite number"),
        ("SYSTEMX_RECORDS_RETENTION", "week", "SYSTEMX_RECORDS_RETENTION: could not convert"),
    ],
)
def test_a_bad_value_names_its_variable(var: str, value: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_settings(env={var: value})


def test_overrides_win_over_the_environment() -> None:
    settings = load_settings(env={"SYSTEMX_PORT": "9090"}, overrides={"port": 7070, "host": None})
    assert settings.port == 7070
    assert settings.host == Settings().host


def test_dotenv_fills_in_but_never_overrides_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SYSTEMX_LISTEN_BACKLOG=256\nSYSTEMX_PORT=9191\n")
    monkeypatch.setenv("SYSTEMX_PORT", "9292")
    monkeypatch.delenv("SYSTEMX_LISTEN_BACKLOG", raising=False)
    assert "SYSTEMX_PORT" in os.environ
    settings = load_settings(env_file=env_file)
    assert settings.listen_backlog == 256
    assert settings.port == 9292


@pytest.mark.parametrize("var", ["SYSTEMX_SPAWN_ALLOW_COMMANDS", "SYSTEMX_SPAWN_ALLOW_ADDRESSES"])
def test_a_removed_spawn_setting_stops_the_start_and_names_the_replacement(var: str) -> None:
    with pytest.raises(ConfigError, match=f"{var}: no longer supported: .*SYSTEMX_SPAWN_HANDLERS"):
        load_settings(env={var: "*@agents.example.com"})
    # An empty value, as an old .env.example had, is harmless.
    assert load_settings(env={var: ""}) == Settings()


def test_spawn_handlers_inline_json() -> None:
    settings = load_settings(
        env={
            "SYSTEMX_SPAWN_HANDLERS": (
                '{"bot": {"argv": ["/opt/bot", "--address", "{address}"], "cwd": "/srv", '
                '"env": {"BOT_MODE": "prod"}, "timeout_seconds": 12, "addresses": ["*@bots.example.com"]}}'
            )
        }
    )
    assert settings.spawn_handlers == (
        SpawnHandler(
            name="bot",
            argv=("/opt/bot", "--address", "{address}"),
            cwd="/srv",
            env=(("BOT_MODE", "prod"),),
            timeout_seconds=12.0,
            addresses=("*@bots.example.com",),
        ),
    )
    assert settings.spawn_handler("bot") is settings.spawn_handlers[0]
    assert settings.spawn_handler("other") is None


def test_spawn_handlers_from_a_toml_file_resolve_cwd_next_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "handlers.toml"
    path.parent.mkdir()
    path.write_text('[bot]\nargv = ["bin/bot", "{call_id}"]\ncwd = ".."\n\n[other]\nargv = ["/bin/true"]\n')
    settings = load_settings(env={"SYSTEMX_SPAWN_HANDLERS": str(path)})
    bot, other = settings.spawn_handlers
    assert (bot.name, bot.argv, Path(bot.cwd or "").resolve()) == ("bot", ("bin/bot", "{call_id}"), tmp_path)
    assert (other.name, other.cwd, other.timeout_seconds, other.addresses) == ("other", None, 30.0, ())


def test_spawn_handlers_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "handlers.json"
    path.write_text('{"bot": {"argv": ["/opt/bot"], "cwd": "/abs"}}')
    (bot,) = load_settings(env={"SYSTEMX_SPAWN_HANDLERS": str(path)}).spawn_handlers
    assert bot.cwd == "/abs"


def test_presence_rate_limit_may_be_disabled() -> None:
    assert load_settings(env={"SYSTEMX_PRESENCE_MAX_QUERIES": "0"}).presence_max_queries == 0


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("45000", 45_000),
        ("500ms", 500),
        ("30s", 30_000),
        ("1.5s", 1_500),
        ("2m", 120_000),
        ("1h", 3_600_000),
        (" 10 s ", 10_000),
        ("0.25m", 15_000),
    ],
)
def test_durations_accept_units_and_plain_numbers_stay_milliseconds(value: str, ms: int) -> None:
    duration_vars = {
        "SYSTEMX_HEARTBEAT_INTERVAL": "heartbeat_interval_ms",
        "SYSTEMX_HEARTBEAT_TIMEOUT": "heartbeat_timeout_ms",
        "SYSTEMX_CALL_TIMEOUT": "call_timeout_ms",
        "SYSTEMX_DIAL_WINDOW_MS": "dial_window_ms",
        "SYSTEMX_HANDSHAKE_TIMEOUT_MS": "handshake_timeout_ms",
        "SYSTEMX_SHUTDOWN_TIMEOUT": "shutdown_timeout_ms",
        "SYSTEMX_WEBHOOK_TIMEOUT_MS": "webhook_timeout_ms",
        "SYSTEMX_PRESENCE_WINDOW_MS": "presence_window_ms",
        "SYSTEMX_TRUNK_GRACE_MS": "trunk_grace_ms",
    }
    for var, field in duration_vars.items():
        assert getattr(load_settings(env={var: value}), field) == ms, var


def test_every_duration_setting_takes_units() -> None:
    # Every *_MS, timeout and interval setting is a duration.
    names = [var for var in ENV_VARS if var.endswith(("_MS", "_TIMEOUT", "_INTERVAL"))]
    assert len(names) == 14
    for var in names:
        field = ENV_VARS[var][0]
        assert getattr(load_settings(env={var: "3s"}), field) == 3000, var


def test_files_rank_below_the_environment_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SYSTEMX_PORT", "SYSTEMX_CALL_TIMEOUT", "SYSTEMX_LISTEN_BACKLOG", "SYSTEMX_HOST"):
        monkeypatch.delenv(var, raising=False)
    dotenv = tmp_path / ".env"
    dotenv.write_text("SYSTEMX_PORT=1111\nSYSTEMX_LISTEN_BACKLOG=11\nSYSTEMX_HOST=10.0.0.1\n")
    first = tmp_path / "first.env"
    first.write_text("# comment\nSYSTEMX_PORT=2222\nSYSTEMX_CALL_TIMEOUT=2m\nSYSTEMX_HOST=10.0.0.2\n")
    second = tmp_path / "second.env"
    second.write_text('SYSTEMX_HOST="10.0.0.3"\n')
    monkeypatch.setenv("SYSTEMX_CALL_TIMEOUT", "45s")
    settings = load_settings(env_file=dotenv, config_files=(first, second), overrides={"port": 3333})
    assert settings.port == 3333  # flag > file
    assert settings.call_timeout_ms == 45_000  # environment > file
    assert settings.host == "10.0.0.3"  # a later file > an earlier one
    assert settings.listen_backlog == 11  # .env fills in what nothing else sets
    assert load_settings(env_file=dotenv, config_files=(first,)).port == 2222  # file > .env


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.env: cannot read: No such file"):
        load_settings(env_file=None, config_files=(tmp_path / "nope.env",))


def test_a_certificate_and_key_enable_tls_from_the_environment_as_from_flags() -> None:
    paths = {"TLS_CERT_PATH": "/c.pem", "TLS_KEY_PATH": "/k.pem"}
    assert load_settings(env=paths).tls_enabled is True
    assert load_settings(env={}, overrides={"tls_cert_path": "/c.pem", "tls_key_path": "/k.pem"}).tls_enabled
    # An explicit TLS_ENABLED=false keeps plain ws; a flag overrides it.
    assert load_settings(env={**paths, "TLS_ENABLED": "false"}).tls_enabled is False
    assert load_settings(
        env={**paths, "TLS_ENABLED": "false"}, overrides={"tls_cert_path": "/c.pem"}
    ).tls_enabled


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_the_admin_listener_needs_no_token_on_loopback(host: str) -> None:
    assert load_settings(env={"SYSTEMX_ADMIN_HOST": host}).admin_host == host


def test_the_admin_listener_beyond_loopback_with_a_token_or_off() -> None:
    with_token = load_settings(env={"SYSTEMX_ADMIN_HOST": "0.0.0.0", "SYSTEMX_ADMIN_TOKEN": "t"})
    assert with_token.admin_token == "t"
    off = load_settings(env={"SYSTEMX_ADMIN_HOST": "0.0.0.0", "SYSTEMX_ADMIN": "off"})
    assert off.admin_enabled is False


def test_records_settings() -> None:
    settings = load_settings(
        env={"SYSTEMX_RECORDS": "off", "SYSTEMX_RECORDS_MAX": "0", "SYSTEMX_RECORDS_RETENTION": "0.5"}
    )
    assert not settings.records_enabled
    assert (settings.records_max, settings.records_retention_days) == (0, 0.5)


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"SYSTEMX_AUTH": "password"}, "none, tokens or jwt"),
        ({"SYSTEMX_AUTH": "tokens"}, "SYSTEMX_AUTH_TOKENS_FILE"),
        ({"SYSTEMX_AUTH": "tokens", "SYSTEMX_AUTH_TOKENS_FILE": "/nonexistent/tokens.json"}, "cannot read"),
        ({"SYSTEMX_AUTH": "jwt"}, "exactly one"),
        ({"SYSTEMX_AUTH": "jwt", "SYSTEMX_JWT_SECRET": "short"}, "at least 32"),
        ({"SYSTEMX_JWT_SECRET": "x" * 40}, "SYSTEMX_AUTH is not jwt"),
        ({"SYSTEMX_POLICY_FILE": "/nonexistent/policy.json"}, "SYSTEMX_POLICY_FILE"),
        ({"SYSTEMX_MAX_CONNECTIONS_PER_IP": "-1"}, "or positive"),
        ({"SYSTEMX_MAX_BYTES_PER_SECOND": "1000"}, "SYSTEMX_MAX_MESSAGE_BYTES"),
        ({"SYSTEMX_ALLOWED_ORIGINS": "https://app.example.com/"}, "not an origin"),
        ({"SYSTEMX_AUTH_GRACE_MS": "0"}, "positive"),
    ],
)
def test_security_settings_are_checked_at_start(env: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_settings(env=env)


def test_a_policy_file_with_an_unknown_action_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[domains."example.com"]\nsing = ["*"]\n')
    with pytest.raises(ConfigError, match="unknown action"):
        load_settings(env={"SYSTEMX_POLICY_FILE": str(path)})
    path.write_text('[domains."example.com"]\ndial = ["*@example.com"]\n')
    assert load_settings(env={"SYSTEMX_POLICY_FILE": str(path)}).policy_file == str(path)
