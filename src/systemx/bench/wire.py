"""The load generator's side of the wire: connections, frame checks, failures.

:class:`Conn` is a picows client listener with two modes. During set-up frames
are queued and read with :meth:`Conn.expect`, which decodes them and fails the
run on anything unexpected. During traffic a scenario installs
:attr:`Conn.on_frame`, a plain callback run for every frame inside the
picows callback (no futures, no tasks), so the generator stays cheap.

Every broken expectation is a :class:`Violation` recorded in the run's
:class:`Failures`; a scenario that sees one stops and the benchmark exits
non-zero with the first violation printed.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

__all__ = [
    "Conn",
    "Corker",
    "Failures",
    "Frame",
    "Violation",
    "close_all",
    "decode_any",
    "decode_frame",
    "encode",
    "keepalive",
    "open_conns",
    "register",
    "wait_closed",
]

T = TypeVar("T")

encode = msgspec.json.Encoder().encode
decode_any = msgspec.json.Decoder().decode

# Frames that may arrive on any connection at any time without breaking a check.
_BACKGROUND = frozenset({"HEARTBEAT_ACK"})


class Frame(msgspec.Struct, gc=False):
    """The fields of every frame a scenario checks on its fast path.

    Scenarios send ``data`` as a JSON string, so it is decoded as ``str``:
    cheaper to compare with what was sent than the raw bytes.
    """

    type: str
    call_id: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    data: str | None = None
    content_type: str | None = None
    party: str | None = None
    reason: str | None = None
    to: str | None = None


decode_frame = msgspec.json.Decoder(Frame).decode


class Violation(Exception):
    """The exchange did something the benchmark's checks do not allow."""


class Failures:
    """The violations of one run; the first one ends the run."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.event = asyncio.Event()

    def fail(self, message: str) -> None:
        if len(self.messages) < 20:
            self.messages.append(message)
        self.event.set()

    @property
    def failed(self) -> bool:
        return bool(self.messages)

    def check(self) -> None:
        if self.messages:
            raise Violation(self.messages[0])

    async def guard(self, aw: Awaitable[T], timeout: float, what: str) -> T:
        """Await ``aw``; raise :class:`Violation` on a recorded failure or after ``timeout``."""
        self.check()
        task: asyncio.Future[T] = asyncio.ensure_future(aw)
        failed: asyncio.Future[Any] = asyncio.ensure_future(self.event.wait())
        waiters: set[asyncio.Future[Any]] = {task, failed}
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
        if task in done:
            return task.result()
        task.cancel()
        self.check()
        raise Violation(f"timed out after {timeout:g} s waiting for {what}")


def _client_header(size: int) -> bytes:
    # FIN + text opcode, mask bit set, then an all-zero masking key.
    if size < 126:
        return bytes((0x81, 0x80 | size, 0, 0, 0, 0))
    if size < 65536:
        return struct.pack("!BBH4x", 0x81, 0xFE, size)
    return struct.pack("!BBQ4x", 0x81, 0xFF, size)


class Corker:
    """Coalesces the frames sent to each connection into one write per event-loop pass.

    A client that sends several MSGs in reaction to one read (as a busy
    endpoint does) can write them with one system call. Frames carry an
    all-zero masking key so the payload goes out unmodified; a server cannot
    tell and unmasks with whatever key a frame carries.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.dirty: list[Conn] = []

    def send(self, conn: Conn, payload: bytes) -> None:
        corked = conn.corked
        if not corked:
            if not self.dirty:
                self.loop.call_soon(self.flush)
            self.dirty.append(conn)
        corked.append(_client_header(len(payload)))
        corked.append(payload)

    def flush(self) -> None:
        for conn in self.dirty:
            data = b"".join(conn.corked)
            conn.corked.clear()
            transport = conn.transport
            if transport is not None and not conn.closing:
                transport.underlying_transport.write(data)
        self.dirty.clear()


class Conn(WSListener):
    """One client WebSocket connection of the load generator."""

    def __init__(self, failures: Failures, name: str) -> None:
        self.failures = failures
        self.name = name
        self.address = ""
        self.transport: WSTransport | None = None
        self.on_frame: Callable[[bytes], None] | None = None
        self.closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._queue: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._fragments: list[bytes] | None = None
        #: Frames waiting for :meth:`Corker.flush`.
        self.corked: list[bytes] = []
        self.disconnected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # picows callbacks ----------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type is WSMsgType.TEXT or msg_type is WSMsgType.BINARY:
            if frame.fin and self._fragments is None:
                payload = frame.get_payload_as_bytes()
            else:
                self._fragments = [frame.get_payload_as_bytes()]
                return
        elif msg_type is WSMsgType.CONTINUATION:
            if self._fragments is None:
                self.failures.fail(f"{self.name}: continuation frame without a first frame")
                return
            self._fragments.append(frame.get_payload_as_bytes())
            if not frame.fin:
                return
            payload = b"".join(self._fragments)
            self._fragments = None
        elif msg_type is WSMsgType.CLOSE:
            self.close_code = frame.get_close_code().value
            self.close_reason = frame.get_close_reason()
            if not self.closing:
                self.failures.fail(
                    f"{self.name} ({self.address}): closed by the server, code {self.close_code} "
                    f"{self.close_reason!r}"
                )
            self.closing = True
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        else:
            return
        handler = self.on_frame
        if handler is None:
            self._queue.append(payload)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        try:
            handler(payload)
        except Violation as exc:
            self.failures.fail(f"{self.name} ({self.address}): {exc}")
        except Exception as exc:
            self.failures.fail(f"{self.name} ({self.address}): {exc!r} on frame {payload[:300]!r}")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closing:
            self.failures.fail(f"{self.name} ({self.address}): connection dropped by the server")
        self.closing = True
        if not self.disconnected.done():
            self.disconnected.set_result(None)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # set-up helpers --------------------------------------------------------
    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            raise Violation(f"{self.name}: send before connect")
        transport.send(WSMsgType.TEXT, data)

    def send_obj(self, obj: Any) -> None:
        self.send(encode(obj))

    async def recv(self, timeout: float = 10.0) -> bytes:
        """The next queued frame (set-up mode only)."""
        while not self._queue:
            if self.disconnected.done():
                raise Violation(f"{self.name} ({self.address}): disconnected while waiting for a frame")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self.failures.guard(self._waiter, timeout, f"a frame on {self.name} ({self.address})")
            finally:
                self._waiter = None
        return self._queue.popleft()

    async def expect(self, type_: str, timeout: float = 10.0, skip: Iterable[str] = ()) -> dict[str, Any]:
        """Read frames until one that is not background noise; it must be ``type_``."""
        skipped = _BACKGROUND.union(skip)
        while True:
            raw = await self.recv(timeout)
            msg = decode_any(raw)
            if not isinstance(msg, dict):
                raise Violation(f"{self.name}: frame is not a JSON object: {raw[:200]!r}")
            kind = msg.get("type")
            if kind == type_:
                return msg
            if kind in skipped:
                continue
            raise Violation(f"{self.name} ({self.address}): expected {type_}, got {raw[:300]!r}")

    def drain(self) -> list[bytes]:
        """Take every queued frame (set-up mode only)."""
        frames = list(self._queue)
        self._queue.clear()
        return frames

    def close(self) -> None:
        self.closing = True
        transport = self.transport
        if transport is not None and not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()


async def open_conns(
    url: str,
    failures: Failures,
    count: int,
    prefix: str,
    *,
    concurrency: int = 64,
    read_buffer: int = 4096,
    on_open: Callable[[Conn, int], Awaitable[None]] | None = None,
) -> list[Conn]:
    """Open ``count`` connections, ``concurrency`` handshakes at a time.

    ``on_open(conn, i)`` runs for each connection right after its handshake
    (e.g. REGISTER), still inside the concurrency limit.
    """
    sem = asyncio.Semaphore(concurrency)
    conns: list[Conn | None] = [None] * count

    async def one(i: int) -> None:
        async with sem:
            failures.check()
            name = f"{prefix}{i}"
            _, listener = await ws_connect(
                lambda: Conn(failures, name),
                url,
                read_buffer_init_size=read_buffer,
                websocket_handshake_timeout=30,
            )
            assert isinstance(listener, Conn)
            conns[i] = listener
            if on_open is not None:
                await on_open(listener, i)

    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]
    try:
        await failures.guard(asyncio.gather(*tasks), 60.0 + count / 50, f"{count} connections")
    except BaseException:
        for t in tasks:
            t.cancel()
        close_all([c for c in conns if c is not None])
        raise
    return [c for c in conns if c is not None]


async def register(conn: Conn, address: str, metadata: dict[str, Any] | None = None, **extra: Any) -> str:
    """REGISTER ``address``; check REGISTERED; return the session id."""
    msg: dict[str, Any] = {"type": "REGISTER", "address": address, **extra}
    if metadata is not None:
        msg["metadata"] = metadata
    conn.send_obj(msg)
    reply = await conn.expect("REGISTERED", 30.0)
    if reply.get("address") != address:
        raise Violation(f"{conn.name}: REGISTERED for {reply.get('address')!r}, wanted {address!r}")
    session_id = reply.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise Violation(f"{conn.name}: REGISTERED without a session_id: {reply!r}")
    conn.address = address
    return session_id


def close_all(conns: Iterable[Conn]) -> None:
    for conn in conns:
        conn.close()


async def wait_closed(conns: list[Conn], timeout: float = 10.0) -> None:
    pending = [c.disconnected for c in conns if not c.disconnected.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


def keepalive(conns: list[Conn], interval: float) -> asyncio.Task[None]:
    """Send HEARTBEAT on every connection every ``interval`` seconds until cancelled.

    Only needed against a server that keeps its own heartbeat timeout; the
    fast-path checks accept HEARTBEAT_ACK anywhere.
    """

    async def beat() -> None:
        frame = encode({"type": "HEARTBEAT"})
        while True:
            await asyncio.sleep(interval)
            for conn in conns:
                if not conn.closing:
                    conn.send(frame)

    return asyncio.ensure_future(beat())
