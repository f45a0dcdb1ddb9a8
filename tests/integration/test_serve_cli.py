"""``systemx serve`` as an operator meets it: configuration errors, a failed start,
settings files, and what plain HTTP gets on the WebSocket port."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import TIMEOUT, SystemXProcess, run_command


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYSTEMX_", "TLS_", "FEDERATION_"))}
    return {**env, **extra}


async def serve(tmp_path: Path, *args: str, **env: str) -> tuple[int, str]:
    code, _out, err = await run_command(
        sys.executable, "-m", "systemx", "serve", "--port", "0", *args,
        cwd=tmp_path, env=_clean_env(**{"SYSTEMX_DATA_DIR": str(tmp_path / "data"), **env}), timeout=TIMEOUT,
    )  # fmt: skip
    return code, err


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"SYSTEMX_PORT": "eighty"}, "SYSTEMX_PORT: not a whole number: 'eighty'"),
        ({"SYSTEMX_LISTEN_BACKLOG": "0"}, "SYSTEMX_LISTEN_BACKLOG: must be positive, got 0"),
        ({"SYSTEMX_CALL_TIMEOUT": "30 secs"}, "SYSTEMX_CALL_TIMEOUT: not a duration: '30 secs' (a number"),
        ({"SYSTEMX_HEARTBEAT_TIMEOUT": "-1s"}, "SYSTEMX_HEARTBEAT_TIMEOUT: must be positive, got -1000"),
        ({"TLS_ENABLED": "perhaps"}, "TLS_ENABLED: not a boolean: 'perhaps'"),
        ({"TLS_ENABLED": "true"}, "TLS_ENABLED: wss needs TLS_CERT_PATH and TLS_KEY_PATH; neither is set"),
        ({"TLS_CERT_PATH": "/etc/c.pem"}, "TLS_KEY_PATH: not set; wss needs both"),
        ({"SYSTEMX_LOG_LEVEL": "loud"}, "SYSTEMX_LOG_LEVEL: must be debug, info, warn or error, got 'loud'"),
        ({"SYSTEMX_LOG_FORMAT": "xml"}, "SYSTEMX_LOG_FORMAT: must be text or json, got 'xml'"),
        ({"SYSTEMX_MAX_JSON_DEPTH": "999"}, "SYSTEMX_MAX_JSON_DEPTH: must be 1-256, got 999"),
        ({"SYSTEMX_SPAWN_HANDLERS": "/no/such.toml"}, "SYSTEMX_SPAWN_HANDLERS: cannot read '/no/such.toml'"),
        ({"SYSTEMX_SPAWN_HANDLERS": "{bad"}, "SYSTEMX_SPAWN_HANDLERS: not valid JSON or TOML"),
        ({"SYSTEMX_WEBHOOK_ALLOW": "example.com"}, "SYSTEMX_WEBHOOK_ALLOW: a URL prefix must be"),
        ({"SYSTEMX_DATA_DIR": "/proc/none"}, "SYSTEMX_DATA_DIR: cannot open /proc/none/systemx.db"),
        ({"SYSTEMX_SPAWN_ALLOW_COMMANDS": "x"}, "SYSTEMX_SPAWN_ALLOW_COMMANDS: no longer supported"),
    ],
)
async def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    code, err = await serve(tmp_path, **env)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"systemx: {line}"), err
    assert "Traceback" not in err and "stopped" not in err


async def test_a_bad_flag_value_is_refused_by_the_parser(tmp_path: Path) -> None:
    code, err = await serve(tmp_path, "--call-timeout", "5x")
    assert code == 2
    expected = "argument --call-timeout: not a duration: '5x' (a number of milliseconds, or e.g. 500ms, 30s"
    assert expected in err and "Traceback" not in err


async def test_a_bad_certificate_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    code, err = await serve(tmp_path, "--tls-cert", str(junk), "--tls-key", str(junk))
    assert code == 2
    assert err.count("\n") == 1
    prefix = f"systemx: TLS_CERT_PATH/TLS_KEY_PATH: cannot load {junk} and {junk}: "
    assert err.startswith(prefix + "not a matching PEM certificate chain and private key")


async def test_a_port_in_use_is_reported_without_a_shutdown_first(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = await serve(tmp_path, "--host", "127.0.0.1", "--port", str(port))
    assert code == 1
    assert "Shutting down" not in err and "stopped" not in err
    assert err.splitlines()[-1].startswith(f"systemx: cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in err


async def test_settings_files_rank_between_the_environment_and_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SYSTEMX_CALL_TIMEOUT=1h\nSYSTEMX_LOG_FORMAT=text\n")
    settings = tmp_path / "systemx.conf"
    settings.write_text("# ring for 250 ms\nSYSTEMX_CALL_TIMEOUT=250ms\nSYSTEMX_LOG_FORMAT=text\n")
    # The environment beats the file (json, not text); the file beats .env (250 ms, not an hour).
    server = SystemXProcess(tmp_path, env={"SYSTEMX_LOG_FORMAT": "json"}, args=["--config", str(settings)])
    await server.start()
    try:
        line = await server.wait_for_log("listening on")
        assert json.loads(line)["msg"].startswith("SystemX listening on")
        caller, callee = await server.connect(), await server.connect()
        await caller.register("a@example.com")
        await callee.register("b@example.com")
        caller.send_json({"type": "DIAL", "to": "b@example.com", "ringing": True})
        busy = await caller.expect("BUSY", skip=("RINGING",))
        assert busy["reason"] == "timeout"
    finally:
        await server.stop()


async def test_a_missing_env_file_is_named(tmp_path: Path) -> None:
    code, err = await serve(tmp_path, "--env-file", "absent.env")
    assert (code, err) == (2, "systemx: absent.env: cannot read: No such file or directory\n")


async def test_a_browser_gets_a_page_pointing_to_the_docs(server: SystemXProcess) -> None:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        headers = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
        async with http.get(server.http_url + "/", headers=headers) as page:
            assert page.status == 200
            assert page.headers["Content-Type"] == "text/html; charset=utf-8"
            body = await page.text()
        assert "PROTOCOL.md" in body and "README.md" in body
        assert "SYSTEMX_ADMIN_PORT" in body and "when enabled" in body
        # Anything else that is not an upgrade still gets 426.
        async with http.get(server.http_url + "/", headers={"Accept": "application/json"}) as other:
            assert other.status == 426


async def test_head_healthz_is_refused_before_the_exchange_sees_it(server: SystemXProcess) -> None:
    # Documented limit: the WebSocket library parses the request and answers 400 to any method but GET.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), TIMEOUT)
    writer.close()
    assert status.startswith(b"HTTP/1.1 400 ")
