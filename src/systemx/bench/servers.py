"""Starting, pinning, watching and stopping the server under test.

:class:`SpawnedServer` runs the exchange (``systemx serve``) or a baseline
(a :class:`Baseline` names its command line; the repository's ``benchmarks``
package has the bare relay and the Bun relay) as a subprocess in a scratch
directory (so no ``.env`` or data directory of the caller leaks in), pins it
to its own CPU, reads its stderr on a thread (keeping the tail for error
reports) and finds its URL. :class:`ExternalServer` describes a server someone
else started (``--url`` and optionally ``--server-pid``).

The reference router (``--ref DIR``: ``bun run src/server.ts`` in a checkout
of the public Bun/TypeScript router of the same protocol) is started the way
its own README starts it, configured through the same ``SYSTEMX_*`` variables
the exchange reads; :func:`reference_problem` says why a directory is not a
usable checkout and :func:`find_bun` finds the ``bun`` that runs it.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from systemx.bench.procstat import ProcessMeter, pin_to_cpus

__all__ = [
    "BUN_ENV",
    "PAIR_KINDS",
    "Baseline",
    "ExternalServer",
    "Reference",
    "ServerError",
    "ServerKind",
    "SpawnedServer",
    "Target",
    "exchange_command",
    "find_bun",
    "reference_problem",
]

ServerKind = Literal["systemx", "bare", "bun", "ref"]
#: The baselines: they speak the PAIR handshake instead of REGISTER and DIAL.
PAIR_KINDS: frozenset[str] = frozenset({"bare", "bun"})

_LISTENING = re.compile(r"listening on (wss?://[^\s,;\"]+)")
# The exchange only prints its "listening on" line at INFO; at quieter levels
# readiness is probed on a port chosen here.
_LINE_LEVELS = frozenset({"debug", "info"})
_STRIPPED_ENV = ("SYSTEMX_", "TLS_", "FEDERATION_")
#: The environment variable naming the ``bun`` executable (Bun baseline, reference router).
BUN_ENV = "SYSTEMX_BENCH_BUN"
#: What a server started for a measurement gets: no sweeps, dial or presence limits in the window.
_QUIET_SERVER_ENV = {
    "SYSTEMX_HEARTBEAT_INTERVAL": "3600000",
    "SYSTEMX_HEARTBEAT_TIMEOUT": "7200000",
    "SYSTEMX_DIAL_MAX_ATTEMPTS": "0",
}
_REFERENCE_PREPARE = "`make reference` prepares one in .bench/reference"


class ServerError(RuntimeError):
    """The server could not start, or died while being measured."""


@dataclass(frozen=True)
class Baseline:
    """A server the exchange is compared with, started from its command line.

    ``command(host)`` is the command that serves on ``host``, any free port,
    and prints ``listening on ws://...`` on stderr; it raises
    :class:`ServerError` when the baseline cannot run. ``missing()`` says why it
    cannot run (and how to fix that), or returns None when it can.
    """

    command: Callable[[str], list[str]]
    missing: Callable[[], str | None] = lambda: None


def find_bun(local: Iterable[Path] = ()) -> str | None:
    """The ``bun`` executable, or None.

    ``$SYSTEMX_BENCH_BUN`` when set (and then only it), else ``bun`` on PATH,
    else the first executable of ``local`` (e.g. ``.bench/node_modules/.bin/bun``,
    where ``make bench-bun-install`` puts it).
    """
    named = os.environ.get(BUN_ENV)
    if named:
        return shutil.which(named)
    on_path = shutil.which("bun")
    if on_path:
        return on_path
    for candidate in local:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def reference_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a checkout of the reference router that can run, or None."""
    root = Path(path)
    needed = {
        "src/server.ts": "not a checkout of the reference router",
        "trimphone/src/transport.ts": "its trimphone submodule is missing (git submodule update --init)",
        "node_modules/zod/package.json": "its dependencies are not installed (bun install)",
    }
    for relative, why in needed.items():
        if not (root / relative).is_file():
            return f"{path}: {why}; {_REFERENCE_PREPARE}"
    return None


@dataclass(frozen=True)
class Reference:
    """The reference router: a checkout (``root``) and the ``bun`` that runs it."""

    root: Path
    bun: str

    @classmethod
    def locate(cls, path: str) -> Reference:
        """The reference in checkout ``path``; :class:`ServerError` says what is missing."""
        root = Path(path).resolve()
        problem = reference_problem(root)
        if problem is not None:
            raise ServerError(problem)
        # `make reference` puts the checkout in .bench/reference and bun in .bench/node_modules.
        local = [root / "node_modules" / ".bin" / "bun", root.parent / "node_modules" / ".bin" / "bun"]
        bun = find_bun(local)
        if bun is None:
            named = os.environ.get(BUN_ENV)
            where = f"${BUN_ENV}={named} is not an executable" if named else "no bun on PATH"
            raise ServerError(
                f"the reference router needs bun: {where} nor at {local[1]}; "
                f"`make bench-bun-install` puts one there (or set ${BUN_ENV})"
            )
        return cls(root, bun)

    def command(self) -> list[str]:
        return [self.bun, "run", str(self.root / "src" / "server.ts")]


@dataclass
class Target:
    """Where the load goes, and how to measure the process serving it."""

    url: str
    kind: ServerKind
    meter: ProcessMeter | None = None
    spawned: SpawnedServer | None = field(default=None, repr=False)

    def check(self) -> None:
        """Raise :class:`ServerError` if a spawned server has exited."""
        if self.spawned is not None:
            self.spawned.check_alive()


def exchange_command() -> list[str]:
    """The command that runs ``systemx`` from this interpreter's environment."""
    script = shutil.which("systemx", path=os.path.dirname(sys.executable))
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from systemx.cli import main; sys.exit(main())"]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class SpawnedServer:
    """A server subprocess owned by the benchmark."""

    def __init__(
        self,
        kind: ServerKind,
        *,
        baseline: Baseline | None = None,
        reference: Reference | None = None,
        cpu: int | None = 0,
        log_level: str = "warn",
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
    ) -> None:
        self.kind = kind
        self.baseline = baseline
        self.reference = reference
        self.cpu = cpu
        self.log_level = log_level.lower()
        self.extra_env = dict(env or {})
        self.host = host
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.tail: collections.deque[str] = collections.deque(maxlen=60)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    # ------------------------------------------------------------------
    def start(self) -> Target:
        # A baseline that cannot run fails here, before there is anything to clean up.
        baseline = self.baseline.command(self.host) if self.baseline is not None else None
        self._scratch = tempfile.TemporaryDirectory(prefix="systemx-bench-")
        # The caller's exchange settings must not leak into a measured server.
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIPPED_ENV)}
        env.pop("PYTHONASYNCIODEBUG", None)
        port = 0
        # The reference logs to stdout: there, its stderr joins stdout in the one pipe read.
        joined = False
        if self.reference is not None:
            # It prints no URL: it listens on the port it is given, probed until it accepts.
            port = _free_port(self.host)
            env.update(_QUIET_SERVER_ENV)
            env.update(
                {
                    "SYSTEMX_HOST": self.host,
                    "SYSTEMX_PORT": str(port),
                    "SYSTEMX_LOG_LEVEL": self.log_level,
                }
            )
            cmd = self.reference.command()
            joined = True
        elif baseline is None:
            if self.log_level not in _LINE_LEVELS:
                port = _free_port(self.host)
            env.update(_QUIET_SERVER_ENV)
            env.update(
                {
                    "SYSTEMX_LOG_LEVEL": self.log_level,
                    "SYSTEMX_DATA_DIR": os.path.join(self._scratch.name, "data"),
                    "SYSTEMX_PRESENCE_MAX_QUERIES": "0",
                    # On, as by default, on any free port (benchmarks may run side by side).
                    "SYSTEMX_ADMIN_PORT": "0",
                }
            )
            cmd = [*exchange_command(), "serve", "--host", self.host, "--port", str(port)]
        else:
            cmd = baseline
        if self.reference is None:
            env.update(self.extra_env)
        self.proc = subprocess.Popen(
            cmd,
            cwd=self._scratch.name,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if joined else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if joined else subprocess.PIPE,
        )
        if self.cpu is not None:
            pin_to_cpus(self.proc.pid, {self.cpu})
        stream = self.proc.stdout if joined else self.proc.stderr
        assert stream is not None
        self._reader = threading.Thread(target=self._read_stderr, args=(stream,), daemon=True)
        self._reader.start()
        self._wait_ready(port)
        if self.cpu is not None:
            # Threads started during start-up inherit the mask, but re-pin to be sure.
            pin_to_cpus(self.proc.pid, {self.cpu})
        return Target(url=self.url, kind=self.kind, meter=ProcessMeter(self.proc.pid), spawned=self)

    def _read_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if not self._ready.is_set():
                m = _LISTENING.search(line)
                if m:
                    self.url = m.group(1).replace("0.0.0.0", "127.0.0.1")
                    self._ready.set()

    def _wait_ready(self, port: int) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._ready.wait(0.02):
                return
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.kind} server exited with {self.proc.returncode}:\n{self.stderr_tail()}"
                )
            if port:
                try:
                    with socket.create_connection((self.host, port), timeout=0.5):
                        self.url = f"ws://{self.host}:{port}"
                        return
                except OSError:
                    continue
        self.stop()
        raise ServerError(
            f"{self.kind} server not ready after {self.start_timeout:.0f} s:\n{self.stderr_tail()}"
        )

    # ------------------------------------------------------------------
    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(list(self.tail)[-lines:])

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerError(f"{self.kind} server died with {self.proc.returncode}:\n{self.stderr_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(2.0)
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
        return proc.returncode

    def __enter__(self) -> Target:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class ExternalServer:
    """A server the benchmark did not start: ``--url`` and maybe ``--server-pid``."""

    url: str
    pid: int | None = None
    kind: ServerKind = "systemx"

    def __enter__(self) -> Target:
        meter = ProcessMeter(self.pid) if self.pid else None
        return Target(url=self.url, kind=self.kind, meter=meter)

    def __exit__(self, *exc: object) -> None:
        return None
