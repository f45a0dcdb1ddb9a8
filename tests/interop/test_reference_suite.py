"""The reference router's own integration tests, run against SystemX.

The reference ships ``tests/integration/`` (``bun test``): a basic suite
(``server.integration.test.ts``: call lifecycle, peer disconnect, ring
timeout, malformed JSON, bad content type, dial rate limit) and a federation
suite (``federation.integration.test.ts``: a parent on port 18100, a child on
18101 with ``FEDERATION_*`` settings, calls both ways). Each run copies that
directory into the test's scratch directory and replaces its server-start
module (``serverUtils.ts``, same exports) with one generated here that starts,
for each port the suite asks for, either ``systemx serve`` or the reference
itself. Nothing of the reference is kept in this repository: the copy and the
generated module live in the scratch directory only.

The generated module also moves each fixed port to a free one (and rewrites
``ws://...:<port>`` in the settings it passes on), so that runs on a shared
machine do not collide; the suites see no difference.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import run_command, scaled
from tests.interop.conftest import free_port

_STRIPPED_ENV = ("SYSTEMX_", "TLS_", "FEDERATION_")

# The generated replacement for the suites' serverUtils.ts. __SERVERS__ maps each
# port a suite asks for to what to run there.
_SERVER_UTILS = """\
// Generated for one interop run; starts the exchange assigned to each port.
import type { Subprocess } from "bun";

export type ServerHandle = {
  process: Subprocess;
  port: number;
  host: string;
  url: string;
};

type Assigned = {
  name: string;
  port: number;
  cmd: string[];
  cwd: string;
  env: Record<string, string>;
};

const SERVERS: Record<string, Assigned> = __SERVERS__;
const READY_MS = __READY_MS__;
let starts = 0;

function movePorts(value: string): string {
  let out = value;
  for (const [asked, assigned] of Object.entries(SERVERS)) {
    out = out.split(`:${asked}`).join(`:${assigned.port}`);
  }
  return out;
}

function tryOpen(url: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => {
      ws.close();
      reject(new Error("no answer"));
    }, 1_000);
    ws.addEventListener("open", () => {
      clearTimeout(timer);
      ws.close();
      resolve();
    }, { once: true });
    ws.addEventListener("error", () => {
      clearTimeout(timer);
      reject(new Error("refused"));
    }, { once: true });
  });
}

export async function waitForServerReady(url: string, timeoutMs = READY_MS, proc?: Subprocess) {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  while (Date.now() < deadline) {
    if (proc && proc.exitCode !== null) {
      throw new Error(`server exited with status ${proc.exitCode} before ${url} was ready`);
    }
    try {
      await tryOpen(url);
      return;
    } catch (error) {
      last = error;
      await Bun.sleep(50);
    }
  }
  throw new Error(`server at ${url} not ready within ${timeoutMs} ms: ${last}`);
}

export async function startServer(options: {
  port: number;
  host?: string;
  env?: Record<string, string | undefined>;
  logLevel?: string;
}): Promise<ServerHandle> {
  const assigned = SERVERS[String(options.port)];
  if (!assigned) {
    throw new Error(`no server assigned to port ${options.port}`);
  }
  const host = options.host ?? "127.0.0.1";
  const env: Record<string, string | undefined> = {
    ...process.env,
    ...assigned.env,
    SYSTEMX_PORT: String(assigned.port),
    SYSTEMX_HOST: host,
    SYSTEMX_LOG_LEVEL: options.logLevel ?? "error",
  };
  for (const [key, value] of Object.entries(options.env ?? {})) {
    env[key] = value === undefined ? undefined : movePorts(value);
  }
  starts += 1;
  const log = `${assigned.cwd}/${assigned.name}-${starts}`;
  const proc = Bun.spawn({
    cmd: assigned.cmd,
    cwd: assigned.cwd,
    env,
    stdin: "ignore",
    stdout: Bun.file(`${log}.stdout.log`),
    stderr: Bun.file(`${log}.stderr.log`),
  });
  const url = `ws://${host}:${assigned.port}`;
  await waitForServerReady(url, READY_MS, proc);
  return { process: proc, port: assigned.port, host, url };
}

export async function stopServer(handle: ServerHandle | null | undefined) {
  if (!handle) {
    return;
  }
  try {
    handle.process.kill();
  } catch {
    // already gone
  }
  try {
    await handle.process.exited;
  } catch {
    // already reaped
  }
}
"""

_RESULT = re.compile(r"^\((pass|fail|skip|todo)\) (.*?)(?: \[[\d.]+m?s\])?$", re.MULTILINE)


def _systemx(workdir: Path, port: int, name: str) -> dict[str, object]:
    return {
        "name": name,
        "port": port,
        "cmd": [sys.executable, "-m", "systemx", "serve"],
        "cwd": str(workdir),
        "env": {"SYSTEMX_DATA_DIR": str(workdir / f"{name}-data"), "PYTHONUNBUFFERED": "1"},
    }


def _reference(workdir: Path, port: int, name: str, bun: str, reference_dir: Path) -> dict[str, object]:
    return {
        "name": name,
        "port": port,
        "cmd": [bun, "run", str(reference_dir / "src" / "server.ts")],
        "cwd": str(workdir),
        "env": {},
    }


async def _run_suite(
    suite: str, assignment: dict[int, str], bun: str, reference_dir: Path, tmp_path: Path
) -> tuple[int, str, dict[str, str]]:
    """Run one reference suite with ``assignment`` (asked port -> "systemx" or "reference")."""
    copy = tmp_path / "suite"
    shutil.copytree(reference_dir / "tests" / "integration", copy / "tests" / "integration")
    workdir = tmp_path / "servers"
    workdir.mkdir()
    servers: dict[str, dict[str, object]] = {}
    for asked, kind in assignment.items():
        name = f"{kind}-{asked}"
        port = free_port()
        if kind == "systemx":
            servers[str(asked)] = _systemx(workdir, port, name)
        else:
            servers[str(asked)] = _reference(workdir, port, name, bun, reference_dir)
    source = _SERVER_UTILS.replace("__SERVERS__", json.dumps(servers, indent=2)).replace(
        "__READY_MS__", str(int(scaled(20_000)))
    )
    (copy / "tests" / "integration" / "serverUtils.ts").write_text(source)

    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV)}
    test_timeout = str(int(scaled(30_000)))
    status, out, err = await run_command(
        bun,
        "test",
        "--timeout",
        test_timeout,
        f"./tests/integration/{suite}",
        cwd=copy,
        env=env,
        timeout=240,
    )
    output = out + err
    results = {name: verdict for verdict, name in _RESULT.findall(output)}
    logs = "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for log in sorted(workdir.glob("*.log"))
    )
    return status, output + "\n" + logs, results


def _summary(results: dict[str, str]) -> str:
    return "\n".join(f"  {verdict}: {name}" for name, verdict in results.items())


# The "control" cases run the suites against the reference itself: they pass when the
# replaced server-start module is faithful, so a failure elsewhere is SystemX's.


@pytest.mark.parametrize("server", ["systemx", "reference"], ids=["systemx", "control"])
async def test_basic_suite(server: str, bun: str, reference_dir: Path, tmp_path: Path) -> None:
    """The reference's server.integration.test.ts passes against one ``systemx serve``."""
    status, output, results = await _run_suite(
        "server.integration.test.ts", {18080: server}, bun, reference_dir, tmp_path
    )
    print(_summary(results))
    assert results, f"no test results in the bun output:\n{output}"
    assert status == 0 and all(v == "pass" for v in results.values()), (
        f"reference basic suite against {server}:\n{_summary(results)}\n\n{output}"
    )


@pytest.mark.parametrize(
    ("parent", "child"),
    [
        ("systemx", "systemx"),
        ("systemx", "reference"),
        ("reference", "systemx"),
        ("reference", "reference"),
    ],
    ids=["both-systemx", "systemx-parent", "systemx-child", "control"],
)
async def test_federation_suite(
    parent: str, child: str, bun: str, reference_dir: Path, tmp_path: Path
) -> None:
    """The reference's federation.integration.test.ts passes with SystemX as parent, child or both."""
    status, output, results = await _run_suite(
        "federation.integration.test.ts", {18100: parent, 18101: child}, bun, reference_dir, tmp_path
    )
    print(_summary(results))
    assert results, f"no test results in the bun output:\n{output}"
    assert status == 0 and all(v == "pass" for v in results.values()), (
        f"reference federation suite, parent {parent}, child {child}:\n{_summary(results)}\n\n{output}"
    )
