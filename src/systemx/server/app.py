"""The server process: start, signals, shutdown.

:class:`Server` puts the parts together around the sans-I/O
:class:`~systemx.core.exchange.Exchange`:

* ``systemx.server.accept`` listens (picows on uvloop) and ``systemx.server.http``
  answers what is not a WebSocket upgrade (``/healthz``, 426, 503);
* ``systemx.server.transport`` runs each socket (:class:`~systemx.server.transport.Connection`,
  an ``Endpoint``), corks writes and drops slow consumers;
* ``systemx.server.runtime`` executes the core's ``Actions`` (timers, wakes,
  profiles, lookups).

Limits: a connection that has not completed its HTTP upgrade within
``SYSTEMX_HANDSHAKE_TIMEOUT_MS`` (5 s) is dropped. The listening socket's
accept queue is ``SYSTEMX_LISTEN_BACKLOG`` (default 4096, capped by the
kernel's ``net.core.somaxconn``) so that thousands of clients connecting at
once are queued rather than dropped, and :func:`serve` raises the process's
soft open-file limit to its hard limit (every connection is a file
descriptor; many systems start programs at 1024). Past the limit the event
loop refuses new connections without a word, so the server warns once when
its connections reach 90% of the descriptors left at start, and again only
after they have fallen back below 80% of that.

Operations (:mod:`systemx.server.ops`): call records written behind the calls
(``SYSTEMX_RECORDS``), Prometheus metrics, and the admin listener
(``SYSTEMX_ADMIN``); :attr:`Server.recorder` is what the core's events go to.

Shutdown (:meth:`Server.shutdown`): stop accepting, ``Exchange.shutdown``
(HANGUP ``shutdown`` to every call, close 1001 for every session), wait for the
sockets to go, bounded by ``SYSTEMX_SHUTDOWN_TIMEOUT``, abort the rest, then
close the wake runner and the profile store, write the queued call records and
stop the admin listener.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import ssl
from pathlib import Path
from time import time as _now
from typing import TYPE_CHECKING, Any

import msgspec
from picows import WSUpgradeRequest, WSUpgradeResponseWithListener

from systemx.config import ConfigError, Settings
from systemx.core.actions import WakeProfile
from systemx.core.exchange import Exchange
from systemx.core.records import FanoutRecorder, LogRecorder, Recorder
from systemx.protocol.codes import CloseCode, CloseReason
from systemx.server.accept import SwitchingProtocols, create_server
from systemx.server.http import forbidden_origin, http_answer, is_upgrade, origin_allowed, shutting_down
from systemx.server.limits import IpGate, RateLimits
from systemx.server.logstream import LogStream, start_log_stream
from systemx.server.ops import Operations
from systemx.server.runtime import (
    ExchangeFactory,
    ExchangeLike,
    ProfileStoreFactory,
    Runtime,
    WakeRunnerFactory,
    default_wake_runner,
)
from systemx.server.timers import Timers
from systemx.server.transport import Connection, Hub, PicowsLog
from systemx.state.profiles import ProfileStore

if TYPE_CHECKING:
    from systemx.server.cluster import Cluster
    from systemx.server.federation import Federation

try:
    import resource
except ImportError:  # not on Windows: no open-file limits to manage
    resource = None  # type: ignore[assignment]

__all__ = ["GC_GEN0_THRESHOLD", "Server", "connection_capacity", "raise_open_file_limit", "run", "serve"]

log = logging.getLogger("systemx.server")

_PROFILE_DB = "systemx.db"


def _default_profile_store(path: Path) -> ProfileStore:
    # Imported when first used, so a deployment without SQLite fails only when it needs it.
    from systemx.state.profiles import SqliteProfileStore

    return SqliteProfileStore(path)


class Server:
    """The exchange behind a picows WebSocket server."""

    def __init__(
        self,
        settings: Settings,
        *,
        exchange_factory: ExchangeFactory | None = None,
        profile_store_factory: ProfileStoreFactory | None = None,
        wake_runner_factory: WakeRunnerFactory | None = None,
        use_aiofastnet: bool = False,
    ) -> None:
        self.settings = settings
        # uvloop's own transports: aiofastnet's cost ~5 KB more per idle socket for no
        # measurable CPU gain on the relay path.
        self._use_aiofastnet = use_aiofastnet
        self._exchange_factory: ExchangeFactory = exchange_factory or Exchange
        self._profile_store_factory = profile_store_factory or _default_profile_store
        self._wake_runner_factory = wake_runner_factory or default_wake_runner
        self._exchange: ExchangeLike | None = None
        self._runtime: Runtime | None = None
        self._hub: Hub | None = None
        self._server: asyncio.Server | None = None
        # True when connections are accepted by systemx.server.accept's lean protocol.
        self.lean_accept = False
        self._federation: Federation | None = None
        #: This node's cluster membership (``SYSTEMX_REDIS_URL``), or None.
        self.cluster: Cluster | None = None
        self._stopping = False
        self.port = 0
        self.log_stream: LogStream | None = None
        self.ops = Operations(settings)
        self._origins = frozenset(o.lower() for o in settings.allowed_origins)
        self.ip_gate: IpGate | None = None
        if settings.max_connections_per_ip > 0 or settings.connect_rate_per_ip > 0:
            self.ip_gate = IpGate(
                settings.max_connections_per_ip, settings.connect_rate_per_ip, settings.ban_seconds
            )

    @property
    def exchange(self) -> ExchangeLike:
        if self._exchange is None:
            raise RuntimeError("server not started")
        return self._exchange

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("server not started")
        return self._runtime

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            raise RuntimeError("server not started")
        return self._hub

    @property
    def recorder(self) -> Recorder:
        """The recorder the exchange's events go to: call records and metrics, when on."""
        return self.ops.recorder

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.hub.loop

    @property
    def timers(self) -> Timers:
        return self.runtime.timers

    @property
    def url(self) -> str:
        scheme = "wss" if self.settings.tls_enabled else "ws"
        host = self.settings.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def connections(self) -> int:
        return 0 if self._hub is None else len(self._hub)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Open the profile store, build the exchange, bind the socket and arm the core's timers."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        hub = self._hub = Hub(loop, settings.max_message_bytes, settings.max_buffered_bytes)
        hub.rate_limits = RateLimits.of(
            settings.max_frames_per_second, settings.max_bytes_per_second, settings.rate_burst_seconds
        )
        ssl_context = self._ssl_context() if settings.tls_enabled else None
        # A cluster's wake profiles live in Redis (read once the node has joined, below).
        store, profiles = (None, {}) if settings.redis_url else self._open_profiles()
        runtime = self._runtime = Runtime(
            settings, loop, profiles=store, wake_runner_factory=self._wake_runner_factory
        )
        self._server, self.lean_accept = await create_server(
            self._accept,
            settings.host,
            settings.port,
            ssl=ssl_context,
            max_frame_size=settings.max_message_bytes,
            read_buffer_init_size=settings.read_buffer_bytes,
            backlog=settings.listen_backlog,
            handshake_timeout=settings.handshake_timeout_ms / 1000,
            logger=PicowsLog(logging.getLogger("picows.server"), {}),
            use_aiofastnet=self._use_aiofastnet,
            gate=self.ip_gate,
            reuse_port=settings.reuse_port,
            # Accepting starts once the exchange is attached (below): with a cluster, joining
            # it takes a few round trips to Redis, and a worker sharing the port through
            # SO_REUSEPORT is handed connections as soon as it listens.
            start_serving=False,
        )
        sockets = self._server.sockets
        self.port = sockets[0].getsockname()[1] if sockets else settings.port
        self.settings = runtime.settings = dataclasses.replace(settings, port=self.port)
        # Built after binding so that it knows the real port (with --port 0) when it
        # refuses webhooks aimed at the exchange itself. The socket accepts nothing
        # until start_serving below, so no connection meets a half-built server.
        cluster = None
        if settings.redis_url:
            from systemx.server.cluster import Cluster, default_node_id
            from systemx.state.redis.conn import RedisError

            cluster = self.cluster = Cluster(self.settings, settings.node_id or default_node_id(self.port))
            try:
                await cluster.start()
                profiles = await cluster.load_profiles()
            except RedisError as exc:
                self.cluster = None
                await cluster.stop()
                raise ConfigError(str(exc)) from None
            exchange = self._exchange = self._exchange_factory(
                self.settings.core_config(),
                runtime,
                profiles=profiles,
                directory=True,
                claims=cluster.claims,
                node_id=cluster.node_id,
                presence=cluster.presence,
                presence_gather=cluster.presence,
            )
            runtime.cluster = cluster
            cluster.attach(exchange)  # type: ignore[arg-type]
        else:
            exchange = self._exchange = self._exchange_factory(
                self.settings.core_config(), runtime, profiles=profiles
            )
        runtime.attach(exchange)
        hub.attach(exchange)
        exchange.start(_now())
        self.log_stream = start_log_stream(self)  # logs@system.local; ends with the exchange's shutdown
        if cluster is not None:
            self.ops.redis = cluster.cmd
            self.ops.node_id = cluster.node_id
        await self.ops.start(exchange, hub)
        if self.ops.recording:
            # The exchange's INFO lines, and the call records and metrics.
            exchange.use_recorder(FanoutRecorder(LogRecorder(), *self.ops.recorders))
        # Federation hook: outbound trunks (server/federation.py).
        from systemx.server.federation import start_federation

        self._federation = start_federation(self)
        # Connections are accepted from here on, with every part in place (a cluster
        # node connects to Redis between the bind and this line).
        await self._server.start_serving()
        capacity = connection_capacity()
        hub.near_fd_limit = None if capacity is None else max(int(capacity * 0.9), 1)
        log.info("SystemX listening on %s", self.url, extra={"port": self.port})
        if settings.auth == "none":
            log.warning(
                "SYSTEMX_AUTH=none: anyone who can reach this port may register any address "
                "and call anyone (see docs/security.md)"
            )

    def reload_security(self) -> None:
        """SIGHUP: re-read the tokens and policy files (a bad file keeps the old ones)."""
        reload = getattr(self._exchange, "reload_security", None)
        if reload is not None:
            log.info("SIGHUP: %s", reload())

    async def shutdown(self) -> None:
        """Stop accepting, end every call and session, wait (bounded), then release everything."""
        if self._stopping:
            return
        self._stopping = True
        if self._runtime is not None:
            self._runtime.stopping = True
        hub = self._hub
        # A start that failed before binding (port in use, bad certificate) releases
        # what it opened without reporting a shutdown of a server that never ran.
        started = self._server is not None
        if started:
            log.info("Shutting down: %d connection(s)", self.connections)
        if self._server is not None:
            self._server.close()
        if self._exchange is not None:
            try:
                self._exchange.shutdown(_now())
            except Exception:
                log.exception("Exchange shutdown failed")
        if hub is not None:
            hub.close_all(CloseCode.GOING_AWAY, CloseReason.SHUTDOWN)
            await hub.wait_all_closed(self.settings.shutdown_timeout_ms / 1000)
        if self._federation is not None:  # federation hook: close the outbound trunks
            await self._federation.close()
        if hub is not None and hub.conns:
            log.warning("Shutdown timeout: aborting %d connection(s)", len(hub.conns))
            hub.abort_all()
            await hub.wait_all_closed(1.0)
        if self.cluster is not None:
            await self.cluster.stop()
        if self._runtime is not None:
            await self._runtime.stop()
        await self.ops.stop()
        if started:
            log.info("SystemX stopped")

    def _health(self) -> dict[str, Any]:
        """``/healthz``: the exchange's counts, without the log stream's internal session."""
        health = self.exchange.health()
        if self.cluster is not None:
            health["cluster"] = self.cluster.health()
        stream = self.log_stream
        if stream is not None and not stream.closed:
            health["sessions"] -= 1
            if stream.holds_address:
                health["registered"] -= 1
        return health

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.settings.tls_cert_path, self.settings.tls_key_path)
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, ssl.SSLError):
                detail = f"not a matching PEM certificate chain and private key ({exc.reason or exc})"
            else:
                detail = exc.strerror or str(exc)
            raise ConfigError(
                f"TLS_CERT_PATH/TLS_KEY_PATH: cannot load {self.settings.tls_cert_path} and "
                f"{self.settings.tls_key_path}: {detail}"
            ) from None
        return context

    def _open_profiles(self) -> tuple[ProfileStore | None, dict[str, WakeProfile]]:
        path = Path(self.settings.data_dir) / _PROFILE_DB
        store: ProfileStore | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            store = self._profile_store_factory(path)
            stored = store.load_all()
        except ImportError as exc:
            log.warning("Wake profiles will not persist: no profile store (%s)", exc)
            return store, {}
        except Exception as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ConfigError(f"SYSTEMX_DATA_DIR: cannot open {path}: {detail}") from exc
        profiles: dict[str, WakeProfile] = {}
        for key, doc in stored.items():
            try:
                profiles[key] = msgspec.convert(doc, WakeProfile)
            except msgspec.ValidationError as exc:
                # One damaged profile must not stop the exchange from starting.
                log.error("Skipping unreadable wake profile of %s in %s: %s", key, path, exc)
        if profiles:
            log.info("Loaded %d wake profile(s) from %s", len(profiles), path)
        return store, profiles

    def _accept(self, request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
        if not is_upgrade(request):
            return WSUpgradeResponseWithListener(http_answer(request, self._health), None)
        if self._stopping:
            return WSUpgradeResponseWithListener(shutting_down(), None)
        if self._origins and not origin_allowed(request, self._origins):
            return WSUpgradeResponseWithListener(forbidden_origin(), None)
        return WSUpgradeResponseWithListener(SwitchingProtocols(), Connection(self.hub))


GC_GEN0_THRESHOLD = 7000
"""Allocations between young-generation collections (CPython's default is 700)."""


def _tune_gc() -> None:
    """Keep the cycle collector off the hot path of a long-running exchange.

    Everything alive once the server has started (modules, settings, the
    exchange itself) lives until exit: ``gc.freeze`` moves it out of every
    collection's reach. A higher young-generation threshold lets the many
    short-lived objects of each event die before a collection looks at them.
    Measured on ``connect`` (8,000 registrations): the collector's share of the
    server's CPU fell from 6.8% to 2.7%.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


_NR_OPEN = Path("/proc/sys/fs/nr_open")


def raise_open_file_limit() -> None:
    """Raise this process's soft open-file limit to its hard limit (logged).

    Every connection is a file descriptor, and many systems start programs with
    a soft limit of 1024 (the hard limit is usually far higher): past it, the
    exchange could not accept another connection. Nothing to do where there
    are no such limits (no ``resource`` module).
    """
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # Linux refuses a soft limit above fs.nr_open even when the hard one is unlimited.
        try:
            target = int(_NR_OPEN.read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("Open files: cannot raise the limit of %d (%s)", soft, exc)
        else:
            log.info("Open files: limit raised from %d to %d", soft, target)


def connection_capacity() -> int | None:
    """About how many more sockets this process can open, or None when unlimited.

    The soft open-files limit minus the descriptors open now (the listening
    socket, the event loop's, stdio, the profile store...).
    """
    if resource is None:
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        in_use = len(os.listdir("/proc/self/fd")) - 1  # less the one listdir opened
    except OSError:
        in_use = 0
    return max(soft - in_use, 1)


async def serve(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run a :class:`Server` until SIGTERM/SIGINT (or ``stop`` is set), then shut it down."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):
            pass
    raise_open_file_limit()
    server = Server(settings)
    try:
        await server.start()
        try:
            loop.add_signal_handler(signal.SIGHUP, server.reload_security)
            installed.append(signal.SIGHUP)
        except (NotImplementedError, RuntimeError, AttributeError):
            pass
        _tune_gc()
        await stop.wait()
    finally:
        await server.shutdown()
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(settings: Settings) -> int:
    """Serve on uvloop (where available) until a signal; the process exit status."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
    return 0
