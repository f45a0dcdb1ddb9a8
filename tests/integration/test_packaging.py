"""The wheel installs the ``systemx`` package alone, and ``systemx bench`` runs from it.

The wheel is built from a copy of the project (``pip wheel --no-deps
--no-build-isolation``, so no index is asked), its file list checked, and
``systemx bench`` run from the unpacked wheel by an interpreter that sees the
installed dependencies but neither the repository nor its ``benchmarks``.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import sysconfig
import zipfile
from pathlib import Path

import msgspec
import pytest

from tests.conftest import run_command

ROOT = Path(__file__).resolve().parents[2]


async def _ok(*cmd: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    code, out, err = await run_command(*cmd, cwd=cwd, env=env, timeout=120.0)
    assert code == 0, f"{cmd} exited {code}\n{out}\n{err}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    asyncio.run(_ok(*pip, "-w", str(out), ".", cwd=source))
    (built,) = out.glob("systemx-*.whl")
    return built


def test_the_wheel_holds_only_the_systemx_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"systemx", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "systemx/bench/cli.py" in names
    assert "systemx/py.typed" in names
    assert not [n for n in names if "benchmarks" in n or n.endswith((".js", "bare_relay.py"))]


async def test_systemx_bench_runs_from_the_wheel_without_the_repository(wheel: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    # -S: no site-packages processing, so the editable install of the repository is not seen;
    # the dependencies are still found through PYTHONPATH.
    env = {"PYTHONPATH": f"{unpacked}:{sysconfig.get_paths()['purelib']}:{sysconfig.get_paths()['platlib']}"}
    probe = "import systemx; print(systemx.__file__); import benchmarks"
    _, out, err = await run_command(sys.executable, "-S", "-c", probe, cwd=tmp_path, env=env, timeout=30.0)
    assert out.startswith(str(unpacked)), out
    assert "No module named 'benchmarks'" in err, err

    args = ["relay", "--pairs", "2", "--duration", "0.5", "--warmup", "0.2", "--no-pin"]
    stdout = await _ok(sys.executable, "-S", "-m", "systemx", "bench", *args, cwd=tmp_path, env=env)
    (line,) = [msgspec.json.decode(x) for x in stdout.splitlines() if x.startswith("{")]
    assert line["scenario"] == "relay"
    assert line["ok"] is True, line
    assert line["msgs"] > 0
    assert not [key for key in line if "bare" in key or "bun" in key]
