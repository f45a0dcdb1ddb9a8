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
        }
    )
    assert settings.port == 9090
    assert settings.listen_backlog == 512
    assert settings.log_level == "warn"
    assert settings.webhook_allow == ("http://127.0.0.1:9000/", "https://hooks.example.com")
    assert settings.wake_max_profiles == 50
    assert settings.tls_enabled is False
    assert all(hasattr(settings, field) for field, _, _ in ENV_VARS.values())


def test_an_empty_value_keeps_the_default() -> None:
    assert load_settings(env={"SYSTEMX_LISTEN_BACKLOG": ""}).listen_backlog == Settings().listen_backlog


@pytest.mark.parametrize(
    ("var", "value", "complaint"),
    [
        ("SYSTEMX_LISTEN_BACKLOG", "0", "SYSTEMX_LISTEN_BACKLOG must be positive"),
        ("SYSTEMX_LISTEN_BACKLOG", "many", "SYSTEMX_LISTEN_BACKLOG: invalid literal"),
        ("SYSTEMX_READ_BUFFER_BYTES", "-1", "SYSTEMX_READ_BUFFER_BYTES must be positive"),
        ("SYSTEMX_HANDSHAKE_TIMEOUT_MS", "0", "SYSTEMX_HANDSHAKE_TIMEOUT_MS must be positive"),
        ("SYSTEMX_PORT", "70000", "SYSTEMX_PORT must be 0-65535"),
        ("SYSTEMX_PRESENCE_WINDOW_MS", "0", "SYSTEMX_PRESENCE_WINDOW_MS must be positive"),
        ("SYSTEMX_PRESENCE_MAX_RESULT_BYTES", "1023", "_MAX_RESULT_BYTES must be at least 1024"),
        ("TLS_ENABLED", "maybe", "TLS_ENABLED: not a boolean"),
        ("SYSTEMX_WAKE_MAX_PROFILES", "0", "SYSTEMX_WAKE_MAX_PROFILES must be positive"),
        (
            "SYSTEMX_WAKE_MAX_PROFILES_PER_SESSION",
            "-1",
            "SYSTEMX_WAKE_MAX_PROFILES_PER_SESSION must be positive",
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
        ("SYSTEMX_MAX_JSON_DEPTH", "0", "SYSTEMX_MAX_JSON_DEPTH must be 1-256"),
        ("SYSTEMX_MAX_JSON_DEPTH", "257", "SYSTEMX_MAX_JSON_DEPTH must be 1-256"),
        ("SYSTEMX_MAX_VALUE_BYTES", "0", "SYSTEMX_MAX_VALUE_BYTES must be positive"),
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
    with pytest.raises(ConfigError, match=f"{var} is no longer supported: .*SYSTEMX_SPAWN_HANDLERS"):
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
