"""The outbound trunk: this exchange as the child of a parent exchange.

:class:`TrunkClient` keeps one WebSocket connection to the parent named by a
:class:`systemx.federation.PeerConfig`, registered as a downstream exchange,
and hands every frame the parent sends to the caller's ``on_frame``. It owns
connecting, registering, liveness and reconnecting; it does not look inside
the frames it relays.

**Registering.** Once connected it sends::

    {"type": "REGISTER_PBX", "domain": <domain>, "routes": <announce_routes>,
     "endpoint": "internal", "auth": <auth>}

(``auth`` left out when none is configured) and waits, for at most
``register_timeout`` seconds, for the parent's answer:

* ``REGISTERED_PBX``: the trunk is **up**; ``on_up`` is called and
  :meth:`TrunkClient.send` writes frames from then on;
* ``REGISTER_FAILED`` (or ``REGISTER_PBX_FAILED``, or an ``ERROR`` whose
  ``context`` is ``REGISTER_PBX``, as from a parent without federation): the
  parent **refused** the trunk; the reason is logged once at ERROR (repeats of
  the same reason at DEBUG until a registration succeeds), kept in
  :attr:`TrunkClient.refusal`, and the next attempt waits longer (below).
  Retrying at all lets a parent whose token list was fixed take the trunk
  without a restart here;
* anything else before the answer is dropped (the parent sends nothing for
  the trunk before it has answered).

**Liveness.** While up, the client sends ``{"type":"HEARTBEAT"}`` every
``heartbeat_ms``, so the parent's sweep keeps it (the reference's child never
does, and its parent drops it every sweep). Any frame from the parent proves
it alive; the ``HEARTBEAT_ACK`` answers are only the frames sure to come. When
nothing has arrived for two intervals, the parent is taken for dead: the
connection is dropped and the trunk goes down (reason ``"timeout"``), so a
dead parent is noticed within three intervals. ``HEARTBEAT_ACK`` frames are
consumed here, found without decoding every frame: only a frame shorter than
128 bytes holding ``HEARTBEAT_ACK`` is decoded to check its type.

**Going down.** ``on_down(reason)`` is called once per up period, with
``"closed"`` (the connection was lost or the parent closed it), ``"timeout"``
(the parent went silent) or ``"shutdown"`` (:meth:`TrunkClient.close`). From
then on :meth:`TrunkClient.send` returns ``False``.

**Reconnecting**, after a failed connection or a lost trunk, waits a delay
drawn by :class:`Backoff`: exponential with full jitter, uniform in
``[0, min(cap, reconnect_delay_ms * 2**n)]`` for the ``n``-th attempt in a
row (``n`` from 0), where ``cap`` is ``max(30 s, reconnect_delay_ms)``. Full
jitter spreads the children of a restarted parent over the whole window
instead of sending them back together. A successful registration starts the
count again. After a refusal the delay is uniform in ``[cap/2, cap]``: a
refused child should not hammer the parent, and a fixed token list is picked
up within ``cap``.

**Transport.** picows' ``ws_connect``, the library the server is built on:
one WebSocket implementation, one set of frame and close semantics, and the
same zero-copy frame path. ``wss://`` URLs use ``ssl_context`` (default:
the system's trust store, hostname checked).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any, cast

import msgspec
from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from systemx.federation import PeerConfig

__all__ = ["MAX_BACKOFF_MS", "Backoff", "TrunkClient", "TrunkState"]

log = logging.getLogger("systemx.federation")

#: The least ceiling of the reconnect delay, ms (a larger ``reconnect_delay_ms`` raises it).
MAX_BACKOFF_MS = 30_000

_HEARTBEAT = b'{"type":"HEARTBEAT"}'
_ACK_MARK = b"HEARTBEAT_ACK"
_ACK_MAX = 128


class TrunkState(enum.Enum):
    """Where the trunk is in its life."""

    IDLE = "idle"  # not started
    CONNECTING = "connecting"  # opening the WebSocket
    REGISTERING = "registering"  # REGISTER_PBX sent, waiting for the answer
    UP = "up"  # registered: frames flow
    WAITING = "waiting"  # between attempts
    CLOSED = "closed"  # close() was called


class Backoff:
    """Reconnect delays: exponential with full jitter, capped (see the module docstring)."""

    __slots__ = ("_rng", "attempts", "base_ms", "cap_ms")

    def __init__(self, base_ms: int, cap_ms: int = MAX_BACKOFF_MS, rng: random.Random | None = None) -> None:
        if base_ms <= 0:
            raise ValueError("base_ms must be positive")
        self.base_ms = base_ms
        self.cap_ms = max(cap_ms, base_ms)
        self.attempts = 0
        self._rng = rng or random.Random()

    def ceiling_ms(self) -> float:
        """The upper bound of the next :meth:`next_delay`, in ms."""
        # min() first keeps 2**attempts from growing without bound after a long outage.
        return float(min(self.cap_ms, self.base_ms * 2 ** min(self.attempts, 32)))

    def next_delay(self) -> float:
        """The wait, in seconds, before the next attempt after a failure; counts the attempt."""
        delay = self._rng.uniform(0.0, self.ceiling_ms())
        self.attempts += 1
        return delay / 1000.0

    def refused_delay(self) -> float:
        """The wait, in seconds, after the parent refused the registration."""
        return self._rng.uniform(self.cap_ms / 2, self.cap_ms) / 1000.0

    def reset(self) -> None:
        """A registration succeeded: the next failure starts from ``base_ms`` again."""
        self.attempts = 0


class _Answer(msgspec.Struct):
    """The fields of a parent frame the client reads while registering."""

    type: Any = None
    reason: Any = None
    context: Any = None
    detail: Any = None


_decode_answer = msgspec.json.Decoder(_Answer).decode
_REFUSALS = frozenset({"REGISTER_FAILED", "REGISTER_PBX_FAILED"})


def _answer(data: bytes) -> _Answer | None:
    try:
        return _decode_answer(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class _Link(WSListener):
    """One WebSocket connection of the trunk; a new one per attempt."""

    def __init__(self, client: TrunkClient) -> None:
        self.client = client
        self.transport: WSTransport | None = None
        self.disconnected = asyncio.Event()
        self.answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.last_rx = 0.0
        self.close_info: tuple[int, str] | None = None
        self._frags: list[bytes] | None = None
        self._frag_size = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.last_rx = asyncio.get_running_loop().time()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if (kind is WSMsgType.TEXT or kind is WSMsgType.BINARY) and frame.fin and self._frags is None:
            self.client._on_message(self, frame.get_payload_as_bytes())
            return
        if kind is WSMsgType.CLOSE:
            payload = frame.get_payload_as_bytes()
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.close_info = (code, payload[2:].decode("utf-8", "replace"))
            if not transport.is_close_frame_sent:
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()
            return
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY or kind is WSMsgType.CONTINUATION:
            self._fragment(transport, frame)

    def _fragment(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CONTINUATION:
            if self._frags is None:
                transport.send_close(WSCloseCode.PROTOCOL_ERROR, b"Unexpected continuation frame")
                transport.disconnect()
                return
        elif self._frags is not None:
            transport.send_close(WSCloseCode.PROTOCOL_ERROR, b"Expected continuation frame")
            transport.disconnect()
            return
        else:
            self._frags = []
            self._frag_size = 0
        self._frag_size += frame.payload_size
        if self._frag_size > self.client.max_message_bytes:
            transport.send_close(WSCloseCode.MESSAGE_TOO_BIG, b"Message too big")
            transport.disconnect()
            return
        self._frags.append(frame.get_payload_as_bytes())
        if frame.fin:
            data = b"".join(self._frags)
            self._frags = None
            self.client._on_message(self, data)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.client._on_disconnected(self)
        self.disconnected.set()
        if not self.answer.done():
            self.answer.set_result(None)


class TrunkClient:
    """One outbound trunk to ``peer`` (see the module docstring).

    ``on_frame(data)`` gets every frame of the parent while the trunk is up,
    except ``HEARTBEAT_ACK``, as bytes; ``on_up()`` and ``on_down(reason)``
    mark the up periods. The callbacks run on the event loop and must not
    block; an exception from one is logged and does not affect the trunk.
    Call :meth:`start` once, then :meth:`close` to stop for good.
    """

    def __init__(
        self,
        peer: PeerConfig,
        on_frame: Callable[[bytes], None],
        on_up: Callable[[], None] | None = None,
        on_down: Callable[[str], None] | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        register_timeout: float = 10.0,
        max_backoff_ms: int = MAX_BACKOFF_MS,
        max_message_bytes: int = 1_048_576,
        rng: random.Random | None = None,
    ) -> None:
        self.peer = peer
        self.on_frame = on_frame
        self.on_up = on_up
        self.on_down = on_down
        self.ssl_context = ssl_context
        self.register_timeout = register_timeout
        self.max_message_bytes = max_message_bytes
        self.backoff = Backoff(peer.reconnect_delay_ms, max_backoff_ms, rng)
        #: The reason of the parent's last refusal; ``None`` once a registration succeeds.
        self.refusal: str | None = None
        self._state = TrunkState.IDLE
        self._closed = False
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._down_reason = "closed"
        self._failures = 0
        register: dict[str, Any] = {
            "type": "REGISTER_PBX",
            "domain": peer.domain,
            "routes": list(peer.announce_routes),
            "endpoint": "internal",
        }
        if peer.auth is not None:
            register["auth"] = peer.auth
        self._register = msgspec.json.encode(register)

    def __repr__(self) -> str:
        return f"<TrunkClient {self.peer.id} {self._state.value}>"

    @property
    def state(self) -> TrunkState:
        return self._state

    @property
    def is_up(self) -> bool:
        return self._state is TrunkState.UP

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`close` has stopped the connect loop."""
        return self._task is not None and not self._task.done()

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        """Start connecting; call once, from a running event loop."""
        if self._task is not None:
            raise RuntimeError("TrunkClient.start() called twice")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"trunk {self.peer.id}")

    async def close(self, timeout: float = 2.0) -> None:
        """Stop for good: close the connection (1000 ``shutdown``) and never reconnect.

        Waits at most ``timeout`` seconds for the parent to answer the close,
        then drops the connection. Calling it twice is harmless.
        """
        if self._closed:
            return
        self._closed = True
        was_up = self._state is TrunkState.UP
        self._state = TrunkState.CLOSED
        link = self._link
        if was_up:
            self._down_reason = "shutdown"
            self._call_down()
        if link is not None and link.transport is not None and not link.disconnected.is_set():
            link.transport.send_close(WSCloseCode.OK, b"shutdown")
            try:
                await asyncio.wait_for(link.disconnected.wait(), timeout)
            except TimeoutError:
                link.transport.disconnect(graceful=False)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def send(self, frame: bytes) -> bool:
        """Write one text frame to the parent; ``False`` (frame dropped) when the trunk is not up."""
        link = self._link
        if self._state is not TrunkState.UP or link is None or link.transport is None:
            return False
        link.transport.send(WSMsgType.TEXT, frame)
        return True

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while not self._closed:
            refused = await self._attempt()
            if self._closed:
                return
            delay = self.backoff.refused_delay() if refused else self.backoff.next_delay()
            self._state = TrunkState.WAITING
            log.debug("trunk %s: next attempt in %.3f s", self.peer.id, delay)
            await asyncio.sleep(delay)

    async def _attempt(self) -> bool:
        """One connection, from connecting to its end; True when the parent refused it."""
        self._state = TrunkState.CONNECTING
        try:
            _transport, listener = await ws_connect(
                lambda: _Link(self),
                self.peer.url,
                ssl_context=self.ssl_context,
                websocket_handshake_timeout=self.register_timeout,
                max_frame_size=self.max_message_bytes,
                logger_name="systemx.federation.ws",
            )
        except (OSError, TimeoutError, WSError, ssl.SSLError) as exc:
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(
                level, "trunk %s: cannot connect to %s: %s", self.peer.id, self.peer.url, exc or type(exc)
            )
            return False
        link = cast(_Link, listener)
        self._link = link
        try:
            return await self._registered_life(link)
        finally:
            self._link = None
            if link.transport is not None and not link.disconnected.is_set():
                link.transport.disconnect(graceful=False)

    async def _registered_life(self, link: _Link) -> bool:
        assert link.transport is not None
        if self._closed:
            return False
        self._state = TrunkState.REGISTERING
        link.transport.send(WSMsgType.TEXT, self._register)
        try:
            refusal = await asyncio.wait_for(asyncio.shield(link.answer), self.register_timeout)
        except TimeoutError:
            log.warning(
                "trunk %s: no answer to REGISTER_PBX within %.1f s; reconnecting",
                self.peer.id,
                self.register_timeout,
            )
            return False
        if refusal is not None:
            return True
        if self._state is not TrunkState.UP:
            return False  # lost before the answer
        interval = self.peer.heartbeat_ms / 1000.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(link.disconnected.wait(), interval)
                return False
            except TimeoutError:
                pass
            if loop.time() - link.last_rx > 2 * interval:
                log.warning(
                    "trunk %s: nothing from the parent for %.1f s; reconnecting",
                    self.peer.id,
                    loop.time() - link.last_rx,
                )
                self._down_reason = "timeout"
                self._go_down()
                return False
            link.transport.send(WSMsgType.TEXT, _HEARTBEAT)

    # ------------------------------------------------------------------ events

    def _on_message(self, link: _Link, data: bytes) -> None:
        link.last_rx = asyncio.get_running_loop().time()
        state = self._state
        if state is TrunkState.UP:
            if len(data) < _ACK_MAX and _ACK_MARK in data:
                ack = _answer(data)
                if ack is not None and ack.type == "HEARTBEAT_ACK":
                    return
            try:
                self.on_frame(data)
            except Exception:
                log.exception("trunk %s: on_frame raised", self.peer.id)
            return
        if state is not TrunkState.REGISTERING or link.answer.done():
            return
        answer = _answer(data)
        kind = answer.type if answer is not None else None
        if kind == "REGISTERED_PBX":
            self._state = TrunkState.UP
            self._failures = 0
            self.backoff.reset()
            if self.refusal is not None:
                log.info("trunk %s: the parent accepts the registration again", self.peer.id)
            self.refusal = None
            self._down_reason = "closed"
            log.info("trunk %s: registered with %s", self.peer.id, self.peer.url)
            link.answer.set_result(None)
            if self.on_up is not None:
                try:
                    self.on_up()
                except Exception:
                    log.exception("trunk %s: on_up raised", self.peer.id)
        elif answer is not None and (
            kind in _REFUSALS or (kind == "ERROR" and answer.context == "REGISTER_PBX")
        ):
            reason = str(answer.reason or "unknown")
            detail = f" ({answer.detail})" if isinstance(answer.detail, str) and answer.detail else ""
            level = logging.ERROR if reason != self.refusal else logging.DEBUG
            log.log(
                level,
                "trunk %s: %s refused the registration: %s%s",
                self.peer.id,
                self.peer.url,
                reason,
                detail,
            )
            self.refusal = reason
            link.answer.set_result(reason)
            if link.transport is not None:
                link.transport.send_close(WSCloseCode.OK, b"registration refused")
        else:
            log.debug("trunk %s: dropped a frame received before the registration answer", self.peer.id)

    def _on_disconnected(self, link: _Link) -> None:
        if link is not self._link:
            return
        if self._state is TrunkState.UP:
            info = link.close_info
            log.warning(
                "trunk %s: connection to the parent lost%s",
                self.peer.id,
                f" (close {info[0]} {info[1]!r})" if info else "",
            )
            self._go_down()

    def _go_down(self) -> None:
        """Leave the up state: frames are refused from now on, and ``on_down`` is told once."""
        if self._state is TrunkState.UP:
            self._state = TrunkState.WAITING
            self._call_down()

    def _call_down(self) -> None:
        if self.on_down is not None:
            try:
                self.on_down(self._down_reason)
            except Exception:
                log.exception("trunk %s: on_down raised", self.peer.id)
