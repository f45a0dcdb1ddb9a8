"""WakeRunner against a real HTTP server and real child processes, on asyncio and uvloop.

Spawned children are a small Python script that connects back to a TCP server
the test runs, reports its pid and environment, then obeys ``ping``/``exit N``
lines. A child's death is observed as end-of-file on that connection, so no
test sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from systemx.config import Settings, SpawnHandler
from systemx.core.actions import StoredHandler, WakeRequest
from systemx.server.wake import WakeRunner

TIMEOUT = 10.0 * float(os.environ.get("SYSTEMX_TEST_TIMEOUT_SCALE", "1"))
ADDRESS = "agent@example.com"
ENV_KEYS = [
    "SYSTEMX_URL",
    "SYSTEMX_ADDRESS",
    "SYSTEMX_CALL_ID",
    "SYSTEMX_CALLER",
    "SYSTEMX_WAKE_PAYLOAD",
    "SYSTEMX_TEST_INHERITED",
]

CHILD_SCRIPT = r"""
import json, os, signal, socket, subprocess, sys

port = int(sys.argv[1])
flags = sys.argv[2:]
if "ignore-term" in flags:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if "with-grandchild" in flags:
    subprocess.Popen([sys.executable, __file__, str(port), "grandchild"])
keys = json.loads(os.environ.get("CHILD_ENV_KEYS", "[]"))
conn = socket.create_connection(("127.0.0.1", port))
stream = conn.makefile("rwb", buffering=0)
hello = {"pid": os.getpid(), "flags": flags, "env": {k: os.environ.get(k) for k in keys}}
stream.write(json.dumps(hello).encode() + b"\n")
for line in stream:
    command = line.decode().split()
    if command[0] == "ping":
        stream.write(b"pong\n")
    elif command[0] == "exit":
        os._exit(int(command[1]))
"""

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop
except ImportError:
    pass
else:
    LOOPS["uvloop"] = uvloop.new_event_loop

Scenario = Callable[[], Coroutine[Any, Any, None]]


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    """Run a scenario on a fresh event loop of each kind (the server runs on uvloop)."""

    def _run(scenario: Scenario) -> None:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            runner.run(asyncio.wait_for(scenario(), 3 * TIMEOUT))

    return _run


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    path = tmp_path / "child_agent.py"
    path.write_text(CHILD_SCRIPT)
    return path


async def within(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, TIMEOUT)


@dataclass
class Child:
    hello: dict[str, Any]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def pid(self) -> int:
        return int(self.hello["pid"])

    async def ping(self) -> None:
        self.writer.write(b"ping\n")
        assert await within(self.reader.readline()) == b"pong\n"

    def exit(self, status: int) -> None:
        self.writer.write(f"exit {status}\n".encode())

    async def gone(self) -> None:
        """The child's end of the connection closed: the process is dead."""
        assert await within(self.reader.read()) == b""


class _QueueHandler(logging.Handler):
    def __init__(self, queue: asyncio.Queue[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.queue = queue

    def emit(self, record: logging.LogRecord) -> None:
        self.queue.put_nowait(record)


@dataclass
class Harness:
    """A WakeRunner plus everything a wake talks to: a webhook server and a child listener."""

    child_script: Path
    settings: Settings = field(default_factory=Settings)
    kill_grace: float = 2.0
    registered: set[str] = field(default_factory=set)
    failures: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    failed: list[tuple[str, str]] = field(default_factory=list)
    hooks: asyncio.Queue[tuple[str, dict[str, str], Any]] = field(default_factory=asyncio.Queue)
    children: asyncio.Queue[Child] = field(default_factory=asyncio.Queue)
    logs: asyncio.Queue[logging.LogRecord] = field(default_factory=asyncio.Queue)
    seen_logs: list[str] = field(default_factory=list)

    async def __aenter__(self) -> Harness:
        self._release_hang = asyncio.Event()
        app = web.Application()
        app.router.add_post("/ok", self._ok)
        app.router.add_post("/fail", self._fail)
        app.router.add_post("/hang", self._hang)
        app.router.add_post("/redirect", self._redirect)
        self._web = web.AppRunner(app, handle_signals=False)
        await self._web.setup()
        site = web.TCPSite(self._web, "127.0.0.1", 0)
        await site.start()
        self.web_url = f"http://127.0.0.1:{self._web.addresses[0][1]}"
        # The receiver is on loopback: name it, as an operator would.
        allow = (*self.settings.webhook_allow, self.web_url + "/")
        self.runner = WakeRunner(
            dataclasses.replace(self.settings, webhook_allow=allow),
            self._on_failed,
            self.registered.__contains__,
            kill_grace=self.kill_grace,
        )
        self._tcp = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.child_port = self._tcp.sockets[0].getsockname()[1]
        self._writers: list[asyncio.StreamWriter] = []
        self._handler = _QueueHandler(self.logs)
        self._logger = logging.getLogger("systemx.wake")
        self._old_level = self._logger.level
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self._handler)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await within(self.runner.close())
        finally:
            self._release_hang.set()
            self._logger.removeHandler(self._handler)
            self._logger.setLevel(self._old_level)
            for writer in self._writers:
                writer.close()
            self._tcp.close()
            await self._tcp.wait_closed()
            await self._web.cleanup()

    # -- callbacks and servers

    def _on_failed(self, address: str, detail: str) -> None:
        self.failed.append((address, detail))
        self.failures.put_nowait((address, detail))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        hello = msgspec.json.decode(await reader.readline())
        self.children.put_nowait(Child(hello, reader, writer))

    async def _ok(self, request: web.Request) -> web.Response:
        self.hooks.put_nowait((request.path, dict(request.headers), await request.json()))
        return web.Response(status=204)

    async def _fail(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="no agents today")

    async def _hang(self, request: web.Request) -> web.Response:
        self.hooks.put_nowait((request.path, dict(request.headers), await request.json()))
        await self._release_hang.wait()
        return web.Response(status=200)

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/ok")

    # -- helpers

    def define(self, argv: list[str], **options: Any) -> str:
        """Define a spawn handler running ``argv`` (as the operator would); its name."""
        settings = self.runner.settings
        name = f"handler{len(settings.spawn_handlers)}"
        handler = SpawnHandler(name=name, argv=tuple(argv), **options)
        self.runner.settings = dataclasses.replace(
            settings, spawn_handlers=(*settings.spawn_handlers, handler)
        )
        return name

    def wake(self, handler: dict[str, Any], *, address: str = ADDRESS, call_id: str = "call-1") -> None:
        handler = {"timeout_seconds": 30.0, **handler}
        if handler.get("type") == "spawn" and "command" in handler:
            handler["handler"] = self.define(handler.pop("command"))
        self.runner.wake(
            WakeRequest(
                address=address,
                call_id=call_id,
                caller="caller@example.com",
                handler=msgspec.convert(handler, StoredHandler),
                payload=handler.get("payload"),
            )
        )

    def spawn_child(self, *flags: str, address: str = ADDRESS, payload: Any = None) -> None:
        handler: dict[str, Any] = {
            "type": "spawn",
            "command": [sys.executable, str(self.child_script), str(self.child_port), *flags],
            "timeout_seconds": 30.0,
        }
        if payload is not None:
            handler["payload"] = payload
        self.wake(handler, address=address)

    async def child(self) -> Child:
        child: Child = await within(self.children.get())
        return child

    async def failure(self) -> tuple[str, str]:
        failure: tuple[str, str] = await within(self.failures.get())
        return failure

    async def log(self, fragment: str) -> logging.LogRecord:
        """Wait for a ``systemx.wake`` record whose message contains ``fragment``."""

        async def find() -> logging.LogRecord:
            while True:
                record = await self.logs.get()
                self.seen_logs.append(record.getMessage())
                if fragment in record.getMessage():
                    return record

        record: logging.LogRecord = await within(find())
        return record


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------
# Webhooks


def test_webhook_posts_the_wake_as_json(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            handler = {
                "type": "webhook",
                "url": h.web_url + "/ok",
                "timeout_seconds": 5.0,
                "payload": {"job": 7},
            }
            h.wake(handler)
            path, headers, body = await within(h.hooks.get())
            assert path == "/ok"
            assert headers["Content-Type"] == "application/json"
            assert body == {
                "address": ADDRESS,
                "call_id": "call-1",
                "from": "caller@example.com",
                "handler": handler,
                "payload": {"job": 7},
            }
            await h.log("answered 204")
        assert h.failed == []

    run(scenario)


def test_webhook_without_payload_sends_null(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.wake({"type": "webhook", "url": h.web_url + "/ok", "timeout_seconds": 5.0})
            _, _, body = await within(h.hooks.get())
            assert body["payload"] is None
            await h.log("answered 204")
        assert h.failed == []

    run(scenario)


def test_webhook_error_status_fails_the_wake(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.wake({"type": "webhook", "url": h.web_url + "/fail", "timeout_seconds": 5.0})
            address, detail = await h.failure()
            assert address == ADDRESS
            assert "HTTP 500" in detail

    run(scenario)


def test_webhook_redirect_is_not_followed(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.wake({"type": "webhook", "url": h.web_url + "/redirect", "timeout_seconds": 5.0})
            _, detail = await h.failure()
            assert "HTTP 307" in detail
            assert h.hooks.empty()

    run(scenario)


def test_webhook_connection_refused_fails_the_wake(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    async def scenario() -> None:
        # A bound socket that does not listen refuses connections and keeps the port ours.
        with socket.socket() as closed_port:
            closed_port.bind(("127.0.0.1", 0))
            port = closed_port.getsockname()[1]
            async with Harness(child_script) as h:
                h.wake({"type": "webhook", "url": f"http://127.0.0.1:{port}/wake", "timeout_seconds": 5.0})
                address, detail = await h.failure()
                assert address == ADDRESS
                assert f"127.0.0.1:{port}" in detail

    run(scenario)


def test_webhook_timeout_fails_the_wake(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script, settings=Settings(webhook_timeout_ms=200)) as h:
            h.wake({"type": "webhook", "url": h.web_url + "/hang", "timeout_seconds": 5.0})
            await within(h.hooks.get())
            _, detail = await h.failure()
            assert "did not answer within 200 ms" in detail

    run(scenario)


def test_cancelled_webhook_is_not_reported(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script, settings=Settings(webhook_timeout_ms=200)) as h:
            h.wake({"type": "webhook", "url": h.web_url + "/hang", "timeout_seconds": 5.0})
            await within(h.hooks.get())
            h.runner.cancel(ADDRESS)
            # A second wake after the cancelled one fails normally, and alone.
            h.wake({"type": "webhook", "url": h.web_url + "/fail", "timeout_seconds": 5.0}, call_id="call-2")
            _, detail = await h.failure()
            assert "HTTP 500" in detail
        assert [d for _, d in h.failed] == [detail]

    run(scenario)


def test_webhook_to_an_address_the_policy_refuses_is_never_sent(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            # Policy changed since REGISTER: the loopback receiver is no longer allowed.
            h.runner.settings = dataclasses.replace(h.runner.settings, webhook_allow=())
            h.wake({"type": "webhook", "url": h.web_url + "/ok", "timeout_seconds": 5.0})
            _, detail = await h.failure()
            assert "non-public address" in detail
            assert h.hooks.empty()

    run(scenario)


def test_webhook_to_the_exchanges_own_port_is_refused_when_connecting(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            # Pretend the receiver's port is the exchange's: every local address on it is refused.
            port = int(h.web_url.rsplit(":", 1)[1])
            h.runner.settings = dataclasses.replace(h.runner.settings, port=port, host="0.0.0.0")
            host = socket.gethostname()
            h.runner.settings = dataclasses.replace(
                h.runner.settings, webhook_allow=(f"http://{host}:{port}/",)
            )
            h.wake({"type": "webhook", "url": f"http://{host}:{port}/ok", "timeout_seconds": 5.0})
            _, detail = await h.failure()
            assert "is the exchange itself" in detail, detail
            assert h.hooks.empty()

    run(scenario)


def test_spawn_handler_no_longer_defined_fails_the_wake(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.wake({"type": "spawn", "handler": "gone", "timeout_seconds": 5.0})
            _, detail = await h.failure()
            assert "spawn handlers are disabled" in detail

    run(scenario)


def test_an_unknown_handler_type_never_reaches_the_runner() -> None:
    # Handlers are typed: a stored profile naming another type does not load (the server skips it).
    with pytest.raises(msgspec.ValidationError, match="carrier-pigeon"):
        msgspec.convert({"type": "carrier-pigeon", "timeout_seconds": 5.0}, StoredHandler)


# --------------------------------------------------------------------------
# Spawned processes


def test_spawned_process_gets_the_wake_environment(
    run: Callable[[Scenario], None], child_script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEMX_TEST_INHERITED", "yes")
    monkeypatch.setenv("CHILD_ENV_KEYS", msgspec.json.encode(ENV_KEYS).decode())

    async def scenario() -> None:
        settings = Settings(host="127.0.0.1", port=4321)
        async with Harness(child_script, settings=settings) as h:
            h.spawn_child(payload={"job": 7, "text": "héllo"})
            child = await h.child()
            assert child.hello["env"] == {
                "SYSTEMX_URL": "ws://127.0.0.1:4321",
                "SYSTEMX_ADDRESS": ADDRESS,
                "SYSTEMX_CALL_ID": "call-1",
                "SYSTEMX_CALLER": "caller@example.com",
                "SYSTEMX_WAKE_PAYLOAD": msgspec.json.encode({"job": 7, "text": "héllo"}).decode(),
                "SYSTEMX_TEST_INHERITED": "yes",
            }
            h.registered.add(ADDRESS)
            child.exit(0)
            await child.gone()
        assert h.failed == []

    run(scenario)


def test_no_payload_means_no_payload_variable(
    run: Callable[[Scenario], None], child_script: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYSTEMX_WAKE_PAYLOAD", "stale value from the exchange's own environment")
    monkeypatch.setenv("CHILD_ENV_KEYS", msgspec.json.encode(ENV_KEYS).decode())

    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.spawn_child()
            child = await h.child()
            assert child.hello["env"]["SYSTEMX_WAKE_PAYLOAD"] is None
            assert child.hello["env"]["SYSTEMX_URL"] == "ws://127.0.0.1:8080"

    run(scenario)


def test_child_output_goes_to_the_log(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            code = (
                "import sys; print('hello out'); print('hello err', file=sys.stderr); print('tail', end='')"
            )
            h.wake({"type": "spawn", "command": [sys.executable, "-c", code], "timeout_seconds": 5.0})
            out = await h.log("hello out")
            assert out.getMessage() == f"[{ADDRESS}] stdout: hello out"
            assert getattr(out, "address", None) == ADDRESS
            err = await h.log("hello err")
            assert err.getMessage() == f"[{ADDRESS}] stderr: hello err"
            tail = await h.log("tail")
            assert tail.getMessage() == f"[{ADDRESS}] stdout: tail"

    run(scenario)


def test_non_zero_exit_before_registering_fails_the_wake(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.wake(
                {
                    "type": "spawn",
                    "command": [sys.executable, "-c", "raise SystemExit(3)"],
                    "timeout_seconds": 5,
                }
            )
            assert await h.failure() == (ADDRESS, "exit status 3")

    run(scenario)


def test_exit_zero_before_registering_is_left_to_the_timeout(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.wake({"type": "spawn", "command": [sys.executable, "-c", "pass"], "timeout_seconds": 5})
            await h.log("exited with status 0 before registering")
        assert h.failed == []

    run(scenario)


def test_non_zero_exit_after_registering_is_not_a_wake_failure(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.spawn_child()
            child = await h.child()
            h.registered.add(ADDRESS)
            child.exit(1)
            await child.gone()
            await h.log("ended: exit status 1")
        assert h.failed == []

    run(scenario)


def test_missing_executable_fails_the_wake(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            missing = str(child_script.parent / "no-such-agent")
            h.wake({"type": "spawn", "command": [missing, "--serve"], "timeout_seconds": 5})
            address, detail = await h.failure()
            assert address == ADDRESS
            assert missing in detail and "No such file" in detail

    run(scenario)


def test_non_executable_file_fails_the_wake(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            child_script.chmod(0o644)
            h.wake({"type": "spawn", "command": [str(child_script)], "timeout_seconds": 5})
            _, detail = await h.failure()
            assert "Permission denied" in detail

    run(scenario)


def test_arguments_are_not_interpreted_by_a_shell(
    run: Callable[[Scenario], None], child_script: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"

    async def scenario() -> None:
        async with Harness(child_script) as h:
            code = "import sys; print('argv', sys.argv[1:])"
            h.wake(
                {
                    "type": "spawn",
                    "command": [sys.executable, "-c", code, f"; touch {marker}", "$(id)"],
                    "timeout_seconds": 5,
                }
            )
            record = await h.log("argv")
            assert record.getMessage().endswith(f"argv ['; touch {marker}', '$(id)']")

    run(scenario)
    assert not marker.exists()


def test_cancel_stops_a_process_that_never_registered(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    pids: list[int] = []

    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.spawn_child()
            child = await h.child()
            pids.append(child.pid)
            h.runner.cancel(ADDRESS)
            await child.gone()
        assert h.failed == []

    run(scenario)
    # close() reaped it: no zombie is left behind.
    assert not pid_alive(pids[0])


def test_cancel_stops_the_whole_process_group(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.spawn_child("with-grandchild")
            first, second = await h.child(), await h.child()
            assert {tuple(first.hello["flags"]), tuple(second.hello["flags"])} == {
                ("with-grandchild",),
                ("grandchild",),
            }
            h.runner.cancel(ADDRESS)
            await first.gone()
            await second.gone()

    run(scenario)


def test_cancel_kills_a_process_that_ignores_sigterm(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    async def scenario() -> None:
        async with Harness(child_script, kill_grace=0.2) as h:
            h.spawn_child("ignore-term")
            child = await h.child()
            await child.ping()  # the SIGTERM handler is installed before the child connects
            h.runner.cancel(ADDRESS)
            await child.gone()
            await h.log("ignored SIGTERM")
        assert h.failed == []

    run(scenario)


def test_cancel_never_kills_a_registered_agent(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.spawn_child()
            child = await h.child()
            h.registered.add(ADDRESS)
            # cancel() signals synchronously when it stops a process, so a ping answered
            # after it returns proves that none was sent.
            h.runner.cancel(ADDRESS)
            await child.ping()
            child.exit(0)
            await child.gone()
        assert h.failed == []

    run(scenario)


def test_cancel_of_an_unknown_address_is_harmless(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.runner.cancel("nobody@example.com")

    run(scenario)


def test_close_stops_waiting_processes(run: Callable[[Scenario], None], child_script: Path) -> None:
    pids: list[int] = []

    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.spawn_child(address="one@example.com")
            h.spawn_child(address="two@example.com")
            children = [await h.child(), await h.child()]
            pids.extend(c.pid for c in children)
            await within(h.runner.close())
            for child in children:
                await child.gone()
        assert h.failed == []

    run(scenario)
    assert not any(pid_alive(pid) for pid in pids)


def test_close_gives_registered_agents_a_grace_period(
    run: Callable[[Scenario], None], child_script: Path
) -> None:
    async def scenario() -> None:
        async with Harness(child_script, kill_grace=0.2) as h:
            h.spawn_child()
            child = await h.child()
            h.registered.add(ADDRESS)
            await within(h.runner.close())
            await child.gone()
            await h.log("Stopping agent process for")

    run(scenario)


def test_wake_after_close_is_ignored(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            await h.runner.close()
            h.spawn_child()
            await h.log("ignored")
            assert h.children.empty()

    run(scenario)


def test_a_new_wake_replaces_a_stale_one(run: Callable[[Scenario], None], child_script: Path) -> None:
    async def scenario() -> None:
        async with Harness(child_script) as h:
            h.spawn_child()
            old = await h.child()
            h.spawn_child()
            new = await h.child()
            await h.log("replaces one still in flight")
            # The superseded process failing is no longer this address's wake failure ...
            old.exit(4)
            await old.gone()
            await h.log("ended: exit status 4")
            # ... the current one's is.
            new.exit(5)
            assert await h.failure() == (ADDRESS, "exit status 5")
        assert h.failed == [(ADDRESS, "exit status 5")]

    run(scenario)
