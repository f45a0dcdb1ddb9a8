"""The deployment files, checked statically (no container runtime here)."""

from __future__ import annotations

import configparser
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_dockerfile_runs_systemx_serve_as_a_non_root_user() -> None:
    instructions = _instructions(ROOT / "Dockerfile")
    assert instructions[0] == ("FROM", "python:3.11-slim")
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    # USER comes before what runs: CMD and HEALTHCHECK.
    order = [keyword for keyword, _ in instructions]
    assert order.index("USER") < order.index("CMD") and order.index("USER") < order.index("HEALTHCHECK")
    (cmd,) = [args for keyword, args in instructions if keyword == "CMD"]
    assert cmd == '["systemx", "serve"]'
    (healthcheck,) = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    volumes = [args for keyword, args in instructions if keyword == "VOLUME"]
    assert volumes == ['["/data"]']
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "SYSTEMX_DATA_DIR=/data" in env


def test_compose_runs_two_exchanges_and_redis() -> None:
    text = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    assert "cluster mode" in text.lower()
    if importlib.util.find_spec("yaml") is None:
        pytest.skip("pyyaml is not installed: compose.yaml not parsed")
    import yaml  # type: ignore[import-untyped]

    compose = yaml.safe_load(text)
    services = compose["services"]
    exchanges = [s for s in services.values() if s.get("build") == "."]
    assert len(exchanges) == 2
    assert all(s["environment"]["SYSTEMX_REDIS_URL"].startswith("redis://redis:") for s in exchanges)
    assert services["redis"]["image"].startswith("redis:")


def test_systemd_unit_is_hardened() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "deploy" / "systemx.service", encoding="utf-8")
    service = unit["Service"]
    assert shlex.split(service["ExecStart"])[1:3] == ["serve", "--env-file"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "systemx"
    assert service["Environment"] == "SYSTEMX_DATA_DIR=/var/lib/systemx"
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["RestartPreventExitStatus"] == "2"
