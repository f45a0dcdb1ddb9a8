"""A thin, corked Redis connection: one ``asyncio.Protocol``, ``hiredis.Reader``, a FIFO of futures.

Every Redis backend of the cluster talks through :class:`RedisConnection`.
It does what the exchange needs and nothing more:

* **Corked writes.** :meth:`RedisConnection.execute` encodes the command,
  appends it to one ``bytearray`` and returns a future; the buffer is written
  once per event-loop pass (``loop.call_soon``), so every command issued in one
  pass costs one ``transport.write`` and Redis answers them as one pipeline.
  :meth:`RedisConnection.send_nowait` is the same without a future (the reply
  is read and dropped; an error reply is counted and logged), and
  :meth:`RedisConnection.send_packed` takes a command already encoded, for a
  caller that builds its own prefix once (the bus).
* **Order.** Redis answers a connection's commands in the order they were
  sent, so replies are matched to a FIFO of futures, and two commands issued
  on one connection run in Redis in the order they were issued, even when
  nobody awaits the first.
* **Scripts.** :meth:`RedisConnection.evalsha` runs a :class:`Script` by its
  SHA1; every script registered with :meth:`RedisConnection.register` is
  loaded when the connection (re)connects, and a ``NOSCRIPT`` answer (someone
  ran ``SCRIPT FLUSH``) loads it and retries once.
* **Timeouts.** A command that gets no reply within ``timeout`` (default
  0.5 s), whether Redis is slow, the connection hangs or it is being
  re-established, fails with :class:`RedisUnavailable`. One timer per
  connection watches the oldest unanswered command; there is no per-command
  timer. When the timer fires with a command overdue, every command waiting on
  the connection fails and the connection is dropped and re-established.
* **Reconnect.** A dropped connection is re-established with jittered
  exponential backoff from 50 ms up to 2 s, for as long as the connection is
  open. Commands sent before the drop and not answered fail at once with
  :class:`RedisUnavailable` (Redis may or may not have run them); commands
  issued while reconnecting wait in the buffer and go out after the
  handshake, or fail when they are ``timeout`` old.
* **Restart and data loss.** The handshake reads ``run_id`` from
  ``INFO server``. A different ``run_id`` after a reconnect means another
  Redis process answers (a restart or a failover), and every callback added
  with :meth:`RedisConnection.on_restart` is called with the old and new id.
  A restart without persistence loses the data; a failover keeps most of it.
  To tell which, a backend writes a sentinel key when it starts and checks it
  after a restart (:class:`systemx.state.redis.directory.RedisDirectory`
  does).
* **Blocking reads** (``XREAD BLOCK``) need a connection of their own, made
  with a ``timeout`` longer than the block, since nothing else can be answered
  on it meanwhile (:class:`systemx.state.redis.bus.RedisBus` does this).

**Measured cost** (``python -m benchmarks.redis_conn``, this 2-vCPU machine
shared with other work (load average ~5), Redis 7.0 on loopback, uvloop;
client-process CPU per command, 100 commands issued per loop pass, best of 3
rounds; read the figures as ratios):

================================================  ===========
path                                              µs/command
================================================  ===========
``send_packed`` (pre-encoded XADD, the bus)       2.3
``send_nowait`` (encode + cork, no future)        3.5
``execute`` (encode + cork + future)              3.9
``RedisDirectory.claim`` (EVALSHA, one by one)    83
redis-py 8.1 asyncio + hiredis, pipeline of 100   37
redis-py 8.1 asyncio + hiredis, one by one        208
================================================  ===========

redis-py is not used: the control plane (janitor sweeps, SCAN reloads,
profile loads) is a handful of commands per operation, and the same connection
gives it the same timeout, reconnect and restart detection as the data path,
where a second client would bring a second pool with its own retry rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import hiredis

__all__ = [
    "DEFAULT_TIMEOUT",
    "RedisConnection",
    "RedisError",
    "RedisUnavailable",
    "ReplyError",
    "Script",
    "pack",
]

log = logging.getLogger("systemx.state.redis")

#: Seconds a command may wait for its reply before :class:`RedisUnavailable`.
DEFAULT_TIMEOUT: Final = 0.5
#: Reconnect backoff: first delay and ceiling, seconds; each delay is jittered to 50-100 %.
BACKOFF_FIRST: Final = 0.05
BACKOFF_MAX: Final = 2.0

Arg = bytes | str | int | float

#: Encode one command in RESP (``hiredis.pack_command``): bytes, str (UTF-8), int and float arguments.
pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


class RedisError(Exception):
    """Base of every error this package raises about Redis."""


class RedisUnavailable(RedisError):
    """Redis did not answer: not reachable, connection lost, or no reply within the timeout.

    ``detail`` says which. Whether a command that failed this way ran in Redis
    is unknown.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(f"Redis unavailable: {detail}")
        self.detail = detail


class ReplyError(RedisError):
    """Redis answered a command with an error reply (its text is the message)."""


class Script:
    """A Lua script, known by its SHA1 (computed here, so no round trip is needed to learn it)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"<Script {self.name} {self.sha[:8]}>"


# A FIFO slot: a future to resolve, or None for a reply nobody waits for.
_Slot = asyncio.Future[Any] | None


class _Protocol(asyncio.Protocol):
    """Feeds bytes to hiredis and hands each reply to the owning connection."""

    __slots__ = ("_owner", "_reader", "transport")

    def __init__(self, owner: RedisConnection) -> None:
        self._owner = owner
        self._reader = hiredis.Reader(replyError=ReplyError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            reply = reader.gets()
            if reply is False:
                return
            owner = self._owner
            while reply is not False:
                owner._reply(reply)
                reply = reader.gets()
            owner._progress_at = owner._loop.time()
        except hiredis.ProtocolError as exc:
            log.error("Redis %s sent bytes that are not RESP: %s", self._owner.name, exc)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._lost(self, exc)


class RedisConnection:
    """One Redis connection, re-established when it drops, until :meth:`close`.

    ``name`` shows in logs and in ``CLIENT LIST`` (``CLIENT SETNAME``).
    ``password``/``username`` are sent with ``AUTH``, ``db`` with ``SELECT``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        name: str = "systemx",
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.host = host
        self.port = port
        self.name = name
        self.db = db
        self.username = username
        self.password = password
        self.timeout = timeout
        #: ``run_id`` of the Redis process this connection last handshook with.
        self.run_id: str | None = None
        #: Error replies to :meth:`send_nowait` commands, and connections re-established.
        self.dropped_errors = 0
        self.reconnects = 0
        self._loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self._proto: _Protocol | None = None
        self._ready = False  # handshake answered; buffered commands may go out
        self._closed = False
        self._started = False  # a connect succeeded once; from then on drops are re-established
        self._buf = bytearray()
        self._fifo: deque[_Slot] = deque()
        self._written = 0  # FIFO slots whose command went out on the current transport
        self._flush_handle: asyncio.Handle | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._progress_at = 0.0
        self._scripts: dict[str, Script] = {}
        self._restart_hooks: list[Callable[[str | None, str], None]] = []
        self._connected = asyncio.Event()
        self._reconnect_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "ready" if self._ready else "connecting"
        return f"<RedisConnection {self.name} {self.host}:{self.port} {state}>"

    # ------------------------------------------------------------------
    # Life cycle

    @property
    def closed(self) -> bool:
        """:meth:`close` was called."""
        return self._closed

    @property
    def connected(self) -> bool:
        """The connection is up and its handshake done."""
        return self._ready

    def register(self, *scripts: Script) -> None:
        """Load ``scripts`` on every (re)connect, so :meth:`evalsha` seldom meets ``NOSCRIPT``."""
        for script in scripts:
            self._scripts[script.sha] = script

    def on_restart(self, callback: Callable[[str | None, str], None]) -> None:
        """Call ``callback(old_run_id, new_run_id)`` when a reconnect reaches another Redis process."""
        self._restart_hooks.append(callback)

    async def connect(self) -> None:
        """Connect and handshake; raise :class:`RedisUnavailable` if that fails within ``timeout``.

        After a successful connect the connection re-establishes itself
        whenever it drops, until :meth:`close`.
        """
        if self._closed:
            raise RedisUnavailable(f"{self.name}: connection closed")
        try:
            await asyncio.wait_for(self._open(), self.timeout)
        except (TimeoutError, OSError, RedisError) as exc:
            self._drop_transport()
            raise RedisUnavailable(
                f"{self.name}: cannot connect to {self.host}:{self.port}: {exc!r}"
            ) from exc

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the connection to be up; whether it is."""
        if self._ready:
            return True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self._ready

    async def close(self) -> None:
        """Close for good: fail every waiting command and stop reconnecting. Harmless twice."""
        if self._closed:
            return
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
            self._reconnect_task = None
        self._fail_all(RedisUnavailable(f"{self.name}: connection closed"))
        self._drop_transport()
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def kill_transport(self) -> None:
        """Drop the TCP connection now, as a network failure would (for tests and operators)."""
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.abort()

    async def _open(self) -> None:
        _, proto = await self._loop.create_connection(lambda: _Protocol(self), self.host, self.port)
        self._proto = proto
        self._written = 0
        # The handshake goes before anything buffered while the connection was down.
        hello: list[tuple[Arg, ...]] = []
        if self.password is not None:
            auth: tuple[Arg, ...] = (
                (self.password,) if self.username is None else (self.username, self.password)
            )
            hello.append(("AUTH", *auth))
        if self.db:
            hello.append(("SELECT", self.db))
        hello.append(("CLIENT", "SETNAME", self.name.replace(" ", "_")))
        hello.extend(("SCRIPT", "LOAD", s.source) for s in self._scripts.values())
        hello.append(("INFO", "server"))
        futures: list[asyncio.Future[Any]] = [self._loop.create_future() for _ in hello]
        self._fifo.extendleft(reversed(futures))
        self._written = len(futures)
        assert proto.transport is not None
        proto.transport.write(b"".join(pack(cmd) for cmd in hello))
        self._progress_at = self._loop.time()
        if self._watch is None:
            self._arm_watch()
        try:
            replies = await asyncio.gather(*futures)
        except BaseException:
            # Take the handshake's unanswered slots out of the FIFO; the caller drops the transport.
            pending = set(map(id, futures))
            while self._fifo and id(self._fifo[0]) in pending:
                self._fifo.popleft()
            for fut in futures:
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    fut.exception()  # retrieved, so it is not reported as lost
            raise
        self._started = True
        run_id = _run_id(replies[-1])
        old, self.run_id = self.run_id, run_id
        self._ready = True
        self._connected.set()
        if self._buf:
            self._flush()
        if old is not None and old != run_id:
            log.warning(
                "Redis %s:%s restarted or failed over (run_id %s -> %s)", self.host, self.port, old, run_id
            )
            for hook in list(self._restart_hooks):
                self._loop.call_soon(hook, old, run_id)

    def _drop_transport(self) -> None:
        proto, self._proto = self._proto, None
        self._ready = False
        self._connected.clear()
        if proto is not None and proto.transport is not None:
            proto.transport.abort()

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        self._ready = False
        self._connected.clear()
        # What went out unanswered may or may not have run: fail it. What is still buffered waits.
        lost = RedisUnavailable(f"{self.name}: connection lost ({exc!r})")
        for _ in range(min(self._written, len(self._fifo))):
            slot = self._fifo.popleft()
            if slot is not None and not slot.done():
                slot.set_exception(lost)
        self._written = 0
        if not self._closed and self._started and self._reconnect_task is None:
            log.warning(
                "Redis connection %s to %s:%s lost: %r; reconnecting", self.name, self.host, self.port, exc
            )
            self._reconnect_task = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = BACKOFF_FIRST
        try:
            while not self._closed:
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                try:
                    await asyncio.wait_for(self._open(), self.timeout)
                except (TimeoutError, OSError, RedisError) as exc:
                    self._drop_transport()
                    self._written = 0
                    log.debug("Redis %s reconnect failed: %r", self.name, exc)
                    delay = min(delay * 2, BACKOFF_MAX)
                    continue
                self.reconnects += 1
                log.info("Redis connection %s re-established", self.name)
                return
        finally:
            self._reconnect_task = None

    # ------------------------------------------------------------------
    # Commands

    def execute(self, *args: Arg) -> asyncio.Future[Any]:
        """Send one command (corked); the future gets its reply.

        An error reply raises :class:`ReplyError`; no reply within ``timeout``
        raises :class:`RedisUnavailable`. Replies are bytes, ints, lists or None,
        as hiredis parses them.
        """
        fut = self._loop.create_future()
        self._enqueue(pack(args), fut)
        return fut

    def send_nowait(self, *args: Arg) -> None:
        """Send one command (corked) whose reply nobody needs; an error reply is counted and logged."""
        self._enqueue(pack(args), None)

    def send_packed(self, command: bytes) -> None:
        """Send one command already encoded in RESP, as :meth:`send_nowait` does."""
        self._enqueue(command, None)

    def _enqueue(self, command: bytes, slot: _Slot) -> None:
        if self._closed:
            if slot is not None:
                slot.set_exception(RedisUnavailable(f"{self.name}: connection closed"))
            return
        fifo = self._fifo
        if not fifo:
            self._progress_at = self._loop.time()
            if self._watch is None:
                self._arm_watch()
        fifo.append(slot)
        self._buf += command
        if self._flush_handle is None and self._ready:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        proto = self._proto
        if not self._buf or proto is None or proto.transport is None or not self._ready:
            return
        proto.transport.write(bytes(self._buf))
        self._buf.clear()
        self._written = len(self._fifo)

    def _reply(self, reply: Any) -> None:
        if not self._fifo:
            log.error("Redis %s: a reply no command waits for: %r", self.name, reply)
            return
        slot = self._fifo.popleft()
        self._written -= 1
        if slot is None:
            if type(reply) is ReplyError:
                self.dropped_errors += 1
                log.error("Redis %s: error reply to a command sent without waiting: %s", self.name, reply)
        elif not slot.done():
            if type(reply) is ReplyError:
                slot.set_exception(reply)
            else:
                slot.set_result(reply)

    async def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run ``script`` with ``keys`` and ``args``; on ``NOSCRIPT`` load it and retry once."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.execute("SCRIPT", "LOAD", script.source)
        return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    # ------------------------------------------------------------------
    # Timeout watch: one timer, at the oldest unanswered command's deadline.

    def _arm_watch(self) -> None:
        self._watch = self._loop.call_at(self._progress_at + self.timeout, self._check)

    def _check(self) -> None:
        self._watch = None
        if not self._fifo or self._closed:
            return
        if self._loop.time() < self._progress_at + self.timeout:
            self._arm_watch()  # replies came meanwhile; watch the new oldest
            return
        waited = self._loop.time() - self._progress_at
        log.warning(
            "Redis %s: no reply for %.0f ms; failing %d commands", self.name, waited * 1000, len(self._fifo)
        )
        self._fail_all(RedisUnavailable(f"{self.name}: no reply within {self.timeout * 1000:.0f} ms"))
        if self._proto is not None:
            # A connection that stopped answering is dropped; _lost starts the reconnect.
            self.kill_transport()

    def _fail_all(self, exc: RedisUnavailable) -> None:
        fifo, self._fifo = self._fifo, deque()
        self._buf.clear()
        self._written = 0
        if self._proto is not None:
            # Replies still on their way belong to the failed commands: drop them with the connection.
            proto, self._proto = self._proto, None
            self._ready = False
            self._connected.clear()
            if proto.transport is not None:
                proto.transport.abort()
            if not self._closed and self._started and self._reconnect_task is None:
                self._reconnect_task = self._loop.create_task(self._reconnect())
        for slot in fifo:
            if slot is not None and not slot.done():
                slot.set_exception(exc)


def _run_id(info: Any) -> str:
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("run_id:"):
            return line[7:].strip()
    raise RedisError("INFO server has no run_id")
