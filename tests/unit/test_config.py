"""Settings from the environment, a .env file and command-line overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from systemx.config import ENV_VARS, ConfigError, Settings, load_settings


def test_empty_environment_gives_the_defaults() -> None:
    assert load_settings(env={}) == Settings()


def test_every_variable_is_read_into_its_field() -> None:
    settings = load_settings(
        env={
            "SYSTEMX_PORT": "9090",
            "SYSTEMX_LISTEN_BACKLOG": "512",
            "SYSTEMX_LOG_LEVEL": "warn",
            "SYSTEMX_SPAWN_ALLOW_COMMANDS": " python3 , node ,",
            "TLS_ENABLED": "false",
        }
    )
    assert settings.port == 9090
    assert settings.listen_backlog == 512
    assert settings.log_level == "warn"
    assert settings.spawn_allow_commands == ("python3", "node")
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
        ("TLS_ENABLED", "maybe", "TLS_ENABLED: not a boolean"),
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
