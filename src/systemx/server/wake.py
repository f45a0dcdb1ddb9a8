"""Running wake handlers: the webhook POST and the spawned agent process.

The core decides *when* to wake a sleeping address and whether the wake timed
out; :class:`WakeRunner` does the I/O. ``wake()`` and ``cancel()`` are called
from the driver while it executes the core's actions, so neither blocks and
neither calls back into the core: ``on_failed`` only ever runs later, from a
task on the event loop, and the core ignores a failure for an address it is no
longer waking.

Webhook
    One POST of ``{"address", "call_id", "from", "handler", "payload"}`` as
    JSON, bounded by ``SYSTEMX_WEBHOOK_TIMEOUT_MS``. The URL is checked again
    against the current policy, then each wake gets its own HTTP session whose
    socket factory checks every address the host resolved to just before
    connecting to it (:func:`~systemx.core.wakepolicy.connect_problem`): the
    address checked is the address used, so a DNS answer that changes between
    the check and the connection cannot redirect the POST. Redirects are not
    followed, so an allowed URL cannot bounce the request to a host the policy
    refused. A non-2xx answer, a refused or unreachable address, a network error
    or the timeout is a failure.

Spawn
    The handler names a program the operator defined in
    ``SYSTEMX_SPAWN_HANDLERS``; it is looked up again now (so a handler removed
    from the configuration no longer runs). Its ``argv`` is executed directly
    (never through a shell), with ``{address}``, ``{call_id}`` and ``{caller}``
    arguments replaced whole, in its ``cwd``, in a new process group, with the
    exchange's environment plus the handler's ``env`` and ``SYSTEMX_URL``,
    ``SYSTEMX_ADDRESS``, ``SYSTEMX_CALL_ID``, ``SYSTEMX_CALLER`` and, when the
    handler has a payload, ``SYSTEMX_WAKE_PAYLOAD`` (JSON). Each line the
    process writes to stdout or stderr is logged under ``systemx.wake``. A
    process that cannot start, or exits non-zero before its address is
    registered, is a failure; exiting 0 first is not (the wake timeout
    decides). The process is reaped whenever it ends and is never killed once
    its address is registered, except by :meth:`WakeRunner.close` after a grace
    period.

Stopping a process sends SIGTERM to its group and SIGKILL after ``kill_grace``
seconds, so helpers it started (a shell script's children) go with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from systemx import __version__
from systemx.config import Settings, SpawnHandler
from systemx.core.actions import StoredSpawn, StoredWebhook, WakeRequest
from systemx.core.wakepolicy import (
    check_webhook,
    connect_problem,
    normalise_url,
    resolve_spawn_handler,
    url_allow_listed,
)

__all__ = ["WakeRunner"]

log = logging.getLogger("systemx.wake")

_POSIX = sys.platform != "win32"
# Longest child output line copied into one log record.
_MAX_LOG_LINE = 4096
_STREAM_LIMIT = 64 * 1024


@dataclass(eq=False, slots=True)
class _Wake:
    """One wake in flight; identity tells a current wake from a superseded one."""

    request: WakeRequest
    task: asyncio.Task[None] | None = None
    process: asyncio.subprocess.Process | None = None
    # Set when the wake ends without success; a process still starting is then stopped.
    cancelled: bool = False


@dataclass(eq=False, slots=True)
class _Child:
    """A spawned process the runner supervises until it is reaped."""

    address: str
    process: asyncio.subprocess.Process
    stopping: asyncio.Task[None] | None = None


class WakeRunner:
    """Executes :class:`~systemx.core.actions.WakeRequest` s for the driver.

    ``on_failed(address, detail)`` reports a wake that cannot succeed;
    ``is_registered(address)`` tells whether an agent holds the address now.
    """

    def __init__(
        self,
        settings: Settings,
        on_failed: Callable[[str, str], None],
        is_registered: Callable[[str], bool],
        *,
        kill_grace: float = 2.0,
    ) -> None:
        # Public so that a test (or a reload) can swap it; read at each wake.
        self.settings = settings
        self._on_failed = on_failed
        self._is_registered = is_registered
        self._kill_grace = kill_grace
        self._current: dict[str, _Wake] = {}
        self._children: dict[asyncio.subprocess.Process, _Child] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # ----------------------------------------------------------------- public

    def wake(self, request: WakeRequest) -> None:
        """Start waking ``request.address``; must be called on the running loop."""
        loop = asyncio.get_running_loop()
        if self._closed:
            log.warning("Wake of %s ignored: the exchange is stopping", request.address)
            return
        address = request.address
        previous = self._current.get(address)
        if previous is not None:
            # The core ends a wake before it starts the next, so the old one is stale.
            log.warning("Wake of %s replaces one still in flight", address)
            self._detach(previous, stop=False)
        wake = _Wake(request)
        self._current[address] = wake
        wake.task = self._spawn_task(loop, self._run(wake), f"wake {address}")

    def cancel(self, address: str) -> None:
        """The wake of ``address`` is over (registered or timed out): stop it unless registered."""
        wake = self._current.pop(address, None)
        if wake is None:
            return
        self._detach(wake)
        process = wake.process
        if process is not None and process.returncode is None and not self._is_registered(address):
            log.warning("Stopping wake process for %s (pid %d): wake timed out", address, process.pid)
            self._stop(process)

    async def close(self) -> None:
        """Cancel webhooks, stop spawned processes and release the HTTP session.

        Processes still waiting for their address to register are stopped at
        once. Agents that did register lose their output pipe with the
        exchange, so they get ``kill_grace`` seconds to leave on their own and
        are then stopped too: nothing is left running unreaped.
        """
        self._closed = True
        for wake in list(self._current.values()):
            self._detach(wake)
        registered: list[_Child] = []
        for child in list(self._children.values()):
            if self._is_registered(child.address):
                registered.append(child)
            else:
                self._stop(child.process)
        if registered:
            exits = [asyncio.ensure_future(c.process.wait()) for c in registered]
            _, late = await asyncio.wait(exits, timeout=self._kill_grace)
            for fut in late:
                fut.cancel()
            for child in registered:
                if child.process.returncode is None:
                    log.warning("Stopping agent process for %s (pid %d)", child.address, child.process.pid)
                    self._stop(child.process)
        if self._tasks:
            # Watchers end when their process is reaped, pumps at end of output.
            await asyncio.wait(set(self._tasks), timeout=self._kill_grace + 1.0)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for child in self._children.values():
            _signal(child.process, signal.SIGKILL if _POSIX else signal.SIGTERM)
        self._children.clear()

    # ------------------------------------------------------------ bookkeeping

    def _spawn_task(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
        task = loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _detach(self, wake: _Wake, *, stop: bool = True) -> None:
        """Stop reporting for ``wake``; an HTTP request in flight no longer matters."""
        wake.cancelled = stop
        if self._current.get(wake.request.address) is wake:
            del self._current[wake.request.address]
        if wake.task is not None and isinstance(wake.request.handler, StoredWebhook):
            wake.task.cancel()

    def _fail(self, wake: _Wake, detail: str) -> None:
        address = wake.request.address
        if self._current.get(address) is not wake:
            log.debug("Ignoring failure of a finished wake of %s: %s", address, detail)
            return
        del self._current[address]
        log.warning("Wake failed for %s: %s", address, detail, extra={"address": address})
        try:
            self._on_failed(address, detail)
        except Exception:
            log.exception("Wake failure callback raised for %s", address)

    def _finish(self, wake: _Wake) -> None:
        if self._current.get(wake.request.address) is wake:
            del self._current[wake.request.address]

    async def _run(self, wake: _Wake) -> None:
        handler = wake.request.handler
        try:
            if isinstance(handler, StoredWebhook):
                await self._run_webhook(wake, handler)
            elif isinstance(handler, StoredSpawn):
                await self._run_spawn(wake, handler)
            else:
                self._fail(wake, f"unknown wake handler {handler!r}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("Wake of %s crashed", wake.request.address)
            self._fail(wake, f"internal error: {exc!r}")

    # ---------------------------------------------------------------- webhook

    async def _run_webhook(self, wake: _Wake, handler: StoredWebhook) -> None:
        request = wake.request
        url = handler.url
        settings = self.settings
        # The policy may have changed since REGISTER (or the profile predates it).
        problem = check_webhook(url, settings)
        parsed = normalise_url(url)
        if problem is not None or isinstance(parsed, str):
            self._fail(wake, problem or str(parsed))
            return
        guard = _ConnectGuard(settings, allow_listed=url_allow_listed(parsed, settings))
        body = msgspec.json.encode(
            {
                "address": request.address,
                "call_id": request.call_id,
                "from": request.caller,
                "handler": request.handler,
                "payload": _payload(request),
            }
        )
        timeout_ms = settings.webhook_timeout_ms
        log.info("Wake webhook for %s: POST %s", request.address, url, extra={"address": request.address})
        connector = aiohttp.TCPConnector(use_dns_cache=False, force_close=True, socket_factory=guard)
        try:
            async with (
                aiohttp.ClientSession(
                    connector=connector, headers={"User-Agent": f"systemx/{__version__}"}
                ) as http,
                http.post(
                    url,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000),
                    allow_redirects=False,
                ) as response,
            ):
                status = response.status
        except TimeoutError:
            self._fail(wake, f"webhook {url} did not answer within {timeout_ms} ms")
            return
        except (aiohttp.ClientError, ValueError) as exc:
            if guard.refused:
                self._fail(wake, f"webhook {url} refused: {'; '.join(guard.refused)}")
            else:
                self._fail(wake, f"webhook {url} failed: {str(exc) or type(exc).__name__}")
            return
        if 200 <= status < 300:
            log.debug("Wake webhook for %s answered %d", request.address, status)
            self._finish(wake)
        else:
            self._fail(wake, f"webhook {url} answered HTTP {status}")

    # ------------------------------------------------------------------ spawn

    def _environment(self, request: WakeRequest, spawn: SpawnHandler) -> dict[str, str]:
        env = dict(os.environ)
        env.update(spawn.env)
        env["SYSTEMX_URL"] = self.settings.url
        env["SYSTEMX_ADDRESS"] = request.address
        env["SYSTEMX_CALL_ID"] = request.call_id
        env["SYSTEMX_CALLER"] = request.caller
        payload = _payload(request)
        if payload is None:
            env.pop("SYSTEMX_WAKE_PAYLOAD", None)
        else:
            env["SYSTEMX_WAKE_PAYLOAD"] = msgspec.json.encode(payload).decode()
        return env

    async def _run_spawn(self, wake: _Wake, handler: StoredSpawn) -> None:
        request = wake.request
        address = request.address
        spawn = resolve_spawn_handler(
            {"handler": handler.handler, "command": handler.command}, address, self.settings
        )
        if isinstance(spawn, str):
            self._fail(wake, spawn)
            return
        values = {"{address}": address, "{call_id}": request.call_id, "{caller}": request.caller}
        command = [values.get(arg, arg) for arg in spawn.argv]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=spawn.cwd,
                env=self._environment(request, spawn),
                start_new_session=_POSIX,
                limit=_STREAM_LIMIT,
            )
        except OSError as exc:
            self._fail(wake, f"cannot run {command[0]!r}: {exc.strerror or exc}")
            return
        wake.process = process
        child = _Child(address, process)
        self._children[process] = child
        log.info(
            "Wake process for %s started (pid %d): handler %s, %s",
            address,
            process.pid,
            spawn.name,
            command[0],
            extra={"address": address},
        )
        loop = asyncio.get_running_loop()
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr)):
            if stream is not None:
                self._spawn_task(loop, _pump(stream, address, name), f"{name} of {address}")
        if wake.cancelled and not self._is_registered(address):
            # The wake timed out (or the runner closed) while the process was starting.
            self._stop(process)
        # On cancellation the child stays listed so that close() can still kill it.
        status = await process.wait()
        self._children.pop(process, None)
        if self._current.get(address) is not wake:
            log.info("Wake process for %s (pid %d) ended: %s", address, process.pid, _describe(status))
            return
        if self._is_registered(address):
            log.info("Agent process for %s (pid %d) ended: %s", address, process.pid, _describe(status))
            self._finish(wake)
        elif status == 0:
            log.info(
                "Wake process for %s exited with status 0 before registering; the wake timeout decides",
                address,
                extra={"address": address},
            )
            self._finish(wake)
        else:
            self._fail(wake, _describe(status))

    def _stop(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM now (so the caller knows it was sent), SIGKILL after the grace period."""
        child = self._children.get(process)
        if child is not None and child.stopping is not None:
            return
        _signal(process, signal.SIGTERM)
        task = self._spawn_task(asyncio.get_running_loop(), self._kill_later(process), f"stop {process.pid}")
        if child is not None:
            child.stopping = task

    async def _kill_later(self, process: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(process.wait(), self._kill_grace)
        except TimeoutError:
            log.warning("Process %d ignored SIGTERM; killing it", process.pid)
            _signal(process, signal.SIGKILL if _POSIX else signal.SIGTERM)
            await process.wait()


class _ConnectGuard:
    """aiohttp socket factory that refuses addresses the webhook policy forbids.

    aiohappyeyeballs calls it with each resolved address in turn; raising
    ``OSError`` makes it try the next, and the request fails when none is left.
    """

    def __init__(self, settings: Settings, *, allow_listed: bool) -> None:
        self._settings = settings
        self._allow_listed = allow_listed
        self.refused: list[str] = []

    def __call__(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        problem = connect_problem(
            str(sockaddr[0]), int(sockaddr[1]), self._settings, allow_listed=self._allow_listed
        )
        if problem is not None:
            self.refused.append(problem)
            raise OSError(problem)
        return socket.socket(family=family, type=type_, proto=proto)


def _payload(request: WakeRequest) -> Any:
    return request.payload if request.payload is not None else request.handler.payload


def _describe(status: int) -> str:
    if status < 0:
        return f"killed by signal {-status}"
    return f"exit status {status}"


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    if process.returncode is not None:
        return
    try:
        if _POSIX:
            # The child leads its own group; signalling the group reaches its helpers too.
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _pump(stream: asyncio.StreamReader, address: str, name: str) -> None:
    """Copy each line of a child's ``stream`` to the log until end of file."""
    while True:
        try:
            line = await stream.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                _log_line(address, name, exc.partial)
            return
        except asyncio.LimitOverrunError as exc:
            line = await stream.readexactly(exc.consumed)
        _log_line(address, name, line)


def _log_line(address: str, name: str, line: bytes) -> None:
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if len(text) > _MAX_LOG_LINE:
        text = text[:_MAX_LOG_LINE] + "..."
    log.info("[%s] %s: %s", address, name, text, extra={"address": address, "stream": name})
