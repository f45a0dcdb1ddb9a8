"""The admin listener: metrics, health, a JSON API and the live switchboard page.

An aiohttp server on its own port (``SYSTEMX_ADMIN_HOST``:``SYSTEMX_ADMIN_PORT``,
127.0.0.1:8081 by default), in the exchange's process and event loop. It reads
the exchange only through an :class:`~systemx.server.admin.source.ExchangeView`.

Routes (all GET unless said; JSON unless said):

* ``/`` the switchboard page (HTML); ``/events`` its feed (Server-Sent Events:
  a ``snapshot`` event every second, and within 250 ms of a change, made once
  for all viewers: :class:`Feed`); ``/events?feed=events`` the exchange's
  events one by one as they happen (calls started, answered, ended;
  registrations; refusals: :mod:`systemx.server.admin.events`), which
  ``systemx tail`` follows;
* ``/healthz`` (the process is up) and ``/readyz`` (the exchange takes calls;
  503 while it shuts down), answered without a token;
* ``/metrics`` Prometheus text;
* ``/api/summary``, ``/api/sessions``, ``/api/calls``, ``/api/parties``,
  ``/api/sleepers``, ``DELETE /api/sleepers/{address}``, ``/api/records``.

With ``SYSTEMX_ADMIN_TOKEN`` set, every route but ``/healthz`` and ``/readyz``
asks for ``Authorization: Bearer <token>``, or ``?token=<token>`` (for the page
and its event stream, which a browser opens without headers); anything else is
answered 401. A bad query parameter is answered 400 with ``{"error": ...}``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web

from systemx.core.records import Disposition
from systemx.server.admin.events import KEEPALIVE, EventFeed
from systemx.server.admin.source import ExchangeView, Forget
from systemx.server.metrics import CONTENT_TYPE, MetricsRecorder
from systemx.state.ports import RecordFilter

__all__ = ["MAX_LIMIT", "SNAPSHOT_INTERVAL", "AdminServer", "build_app"]

log = logging.getLogger("systemx.admin")

MAX_LIMIT = 1000
"""The most rows one API answer holds (``limit``); the default is 100."""
SNAPSHOT_INTERVAL = 1.0
"""Seconds between two snapshots on the page's feed when nothing changes."""
_CHANGE_POLL = 0.25
_PAGE_SESSIONS = 200

_OPEN_ROUTES = frozenset({"/healthz", "/readyz"})
_SESSION_SORTS = frozenset(
    {"address", "session_id", "connected_since", "last_heartbeat", "last_activity"}
    | {"queued_bytes", "remote_ip"}
)

_VIEW: web.AppKey[ExchangeView] = web.AppKey("view", ExchangeView)
_METRICS: web.AppKey[MetricsRecorder | None] = web.AppKey("metrics", MetricsRecorder)
_RECORDS: web.AppKey[Any] = web.AppKey("records", object)
_TOKEN: web.AppKey[str] = web.AppKey("token", str)
_FEED: web.AppKey[Feed] = web.AppKey("feed")
_EVENTS: web.AppKey[EventFeed | None] = web.AppKey("events", EventFeed)
_FEEDS = ("snapshots", "events")


class BadRequest(ValueError):
    pass


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be {low}-{high}, got {value}")
    return value


def _float_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number (epoch seconds), got {raw[:40]!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"{name} must be a finite number")
    return value


def _page(request: web.Request, rows: list[dict[str, Any]]) -> dict[str, Any]:
    limit = _int_param(request, "limit", 100, 0, MAX_LIMIT)
    offset = _int_param(request, "offset", 0, 0, 1 << 31)
    return {"total": len(rows), "offset": offset, "limit": limit, "items": rows[offset : offset + limit]}


@web.middleware
async def _guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = request.app[_TOKEN]
    if token and request.path not in _OPEN_ROUTES:
        given = ""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[7:].strip()
        elif "token" in request.query:
            given = request.query["token"]
        if not hmac.compare_digest(given.encode(), token.encode()):
            return web.Response(
                status=401,
                body=b'{"error":"a valid admin token is required (Authorization: Bearer ...)"}',
                content_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, str(exc))


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    status = request.app[_VIEW].summary()["status"]
    return _json({"status": status}, 200 if status == "ok" else 503)


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[_METRICS]
    if metrics is None:
        return _error(404, "metrics are not collected by this exchange")
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


async def _summary(request: web.Request) -> web.Response:
    return _json(request.app[_VIEW].summary())


async def _sessions(request: web.Request) -> web.Response:
    rows = request.app[_VIEW].sessions()
    address = request.query.get("address", "").lower()
    if address:
        rows = [r for r in rows if r["address"] is not None and address in r["address"].lower()]
    domain = request.query.get("domain", "").lower()
    if domain:
        rows = [r for r in rows if r["domain"] is not None and r["domain"].lower() == domain]
    sort = request.query.get("sort", "connected_since")
    reverse = sort.startswith("-")
    field = sort.lstrip("-")
    if field not in _SESSION_SORTS:
        raise BadRequest(f"sort must be one of {', '.join(sorted(_SESSION_SORTS))} (prefix - for descending)")
    # None (an unregistered session's address) sorts first.
    rows.sort(key=lambda r: (r[field] is not None, r[field] if r[field] is not None else 0), reverse=reverse)
    return _json(_page(request, rows))


async def _calls(request: web.Request) -> web.Response:
    rows = request.app[_VIEW].calls()
    state = request.query.get("state")
    if state:
        rows = [r for r in rows if r["state"] == state]
    rows.sort(key=lambda r: r["since"])
    return _json(_page(request, rows))


async def _parties(request: web.Request) -> web.Response:
    rows = sorted(request.app[_VIEW].parties(), key=lambda r: r["name"])
    return _json(_page(request, rows))


async def _sleepers(request: web.Request) -> web.Response:
    rows = sorted(request.app[_VIEW].sleepers(), key=lambda r: r["address"])
    return _json(_page(request, rows))


_FORGET_STATUS = {
    Forget.FORGOTTEN: (200, "forgotten"),
    Forget.INVALID_ADDRESS: (400, "not a valid address"),
    Forget.NOT_FOUND: (404, "no wake profile for this address"),
    Forget.REGISTERED: (409, "the agent is connected; it forgets its profile with REGISTER mode normal"),
    Forget.CALLS_WAITING: (409, "calls are waiting for this agent's wake; try again when they have ended"),
    Forget.FAILED: (500, "the profile could not be removed"),
}


async def _forget_sleeper(request: web.Request) -> web.Response:
    address = request.match_info["address"]
    outcome = request.app[_VIEW].forget_sleeper(address, time.time())
    status, text = _FORGET_STATUS[outcome]
    if outcome is Forget.FORGOTTEN:
        log.info("Admin: wake profile of %s forgotten", address)
        return _json({"address": address, "result": text})
    return _json({"address": address[:300], "error": text, "result": outcome.value}, status)


async def _records(request: web.Request) -> web.Response:
    records = request.app[_RECORDS]
    if records is None:
        return _error(404, "call records are off (SYSTEMX_RECORDS=off)")
    limit = _int_param(request, "limit", 100, 0, MAX_LIMIT)
    offset = _int_param(request, "offset", 0, 0, 1 << 31)
    disposition: Disposition | None = None
    raw = request.query.get("disposition")
    if raw:
        try:
            disposition = Disposition(raw)
        except ValueError:
            raise BadRequest(
                f"disposition must be one of {', '.join(d.value for d in Disposition)}"
            ) from None
    filters = RecordFilter(
        address=request.query.get("address") or None,
        disposition=disposition,
        since=_float_param(request, "since"),
        until=_float_param(request, "until"),
    )
    try:
        rows = await records.query(filters, limit=limit, offset=offset)
    except Exception as exc:
        from systemx.state.redis.conn import RedisError

        if isinstance(exc, RedisError):  # a cluster's records live in Redis
            return _error(503, f"call records unavailable: {exc}")
        raise
    return _json({"offset": offset, "limit": limit, "items": [msgspec.to_builtins(r) for r in rows]})


async def _index(request: web.Request) -> web.Response:
    page = resources.files("systemx.server.admin").joinpath("switchboard.html").read_bytes()
    return web.Response(body=page, content_type="text/html", charset="utf-8")


class Feed:
    """The page's snapshots, made once for every viewer.

    While at least one viewer is connected, one task looks at the exchange's
    counts every 250 ms and makes a snapshot when they changed, or after
    :data:`SNAPSHOT_INTERVAL` seconds in any case. Each viewer sends the newest
    snapshot when it can: a slow viewer skips snapshots, it never queues them.
    """

    def __init__(self, view: ExchangeView) -> None:
        self._view = view
        self._viewers = 0
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self.version = 0
        self.latest = b""
        self._rates = {"calls_per_s": 0.0, "msgs_per_s": 0.0}

    def _snapshot(self, rates: dict[str, float]) -> bytes:
        view = self._view
        summary = view.summary()
        snap = {
            "time": time.time(),
            "summary": summary,
            "sessions": view.sessions(newest=_PAGE_SESSIONS),
            "sessions_total": summary["sessions"],
            "calls": sorted(view.calls(), key=lambda r: r["since"]),
            "parties": sorted(view.parties(), key=lambda r: r["name"]),
            "sleepers": sorted(view.sleepers(), key=lambda r: r["address"]),
            "rates": rates,
        }
        return b"event: snapshot\ndata: " + json.dumps(snap).encode() + b"\n\n"

    def _counts(self) -> tuple[int, ...]:
        stats = self._view.stats()
        return tuple(stats.get(key, 0) for key in _WATCHED)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_counts: tuple[int, ...] | None = None
        last_made = -SNAPSHOT_INTERVAL
        last_rate_at = loop.time()
        last_msgs = last_started = -1
        while True:
            now = loop.time()
            counts = self._counts()
            if counts != last_counts or now - last_made >= SNAPSHOT_INTERVAL:
                stats = self._view.stats()
                msgs = stats.get("msgs_received", 0)
                started = stats.get("calls_seen", 0)
                elapsed = max(now - last_rate_at, 1e-3)
                rates = {
                    "calls_per_s": 0.0 if last_started < 0 else (started - last_started) / elapsed,
                    "msgs_per_s": 0.0 if last_msgs < 0 else (msgs - last_msgs) / elapsed,
                }
                if now - last_rate_at >= SNAPSHOT_INTERVAL or last_msgs < 0:
                    last_rate_at, last_msgs, last_started = now, msgs, started
                    self._rates = rates
                self.latest = self._snapshot(self._rates)
                self.version += 1
                last_counts, last_made = counts, now
                async with self._changed:
                    self._changed.notify_all()
            await asyncio.sleep(_CHANGE_POLL)

    async def serve(self, response: web.StreamResponse) -> None:
        """Write snapshots to ``response`` until the viewer goes."""
        self._viewers += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="systemx-admin-feed")
        try:
            sent = 0
            while True:
                async with self._changed:
                    while self.version == sent:
                        await self._changed.wait()
                sent = self.version
                await response.write(self.latest)
        finally:
            self._viewers -= 1
            if not self._viewers and self._task is not None:
                self._task.cancel()
                self._task = None


# Counts whose change sends a snapshot at once.
_WATCHED = (
    "connections_opened",
    "connections_closed",
    "registered",
    "calls_seen",
    "calls_waiting",
    "calls_ringing",
    "calls_connected",
    "parties",
    "sleepers",
)


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: the page's snapshots (see :class:`Feed`), or with
    ``feed=events`` the exchange's events as they happen (see :class:`EventFeed`)."""
    feed = request.query.get("feed") or "snapshots"
    if feed not in _FEEDS:
        raise BadRequest(f"feed must be one of {', '.join(_FEEDS)}, got {feed[:40]!r}")
    events = request.app[_EVENTS]
    if feed == "events" and events is None:
        return _error(404, "this exchange does not stream its events")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    try:
        if events is not None and feed == "events":
            await _serve_events(events, response)
        else:
            await request.app[_FEED].serve(response)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return response


async def _serve_events(events: EventFeed, response: web.StreamResponse) -> None:
    """Write ``events`` to ``response`` as they come, batched per wake-up, until the viewer goes."""
    viewer = events.subscribe()
    try:
        # A comment first: the viewer knows the stream is open before any event.
        await response.write(b": events of this exchange\n\n")
        while True:
            try:
                await asyncio.wait_for(viewer.ready.wait(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            await response.write(viewer.take())
    finally:
        events.unsubscribe(viewer)


def build_app(
    view: ExchangeView,
    *,
    metrics: MetricsRecorder | None = None,
    records: Any = None,
    token: str = "",
    events: EventFeed | None = None,
) -> web.Application:
    """The admin application; ``records`` is a :class:`~systemx.server.callrecords.RecordsRecorder`,
    ``events`` the feed of the exchange's events (``/events?feed=events``)."""
    app = web.Application(middlewares=[_guard])
    app[_VIEW] = view
    app[_METRICS] = metrics
    app[_RECORDS] = records
    app[_TOKEN] = token
    app[_FEED] = Feed(view)
    app[_EVENTS] = events
    app.router.add_get("/", _index)
    app.router.add_get("/events", _events)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/summary", _summary)
    app.router.add_get("/api/sessions", _sessions)
    app.router.add_get("/api/calls", _calls)
    app.router.add_get("/api/parties", _parties)
    app.router.add_get("/api/sleepers", _sleepers)
    app.router.add_delete("/api/sleepers/{address}", _forget_sleeper)
    app.router.add_get("/api/records", _records)
    return app


class AdminServer:
    """Runs :func:`build_app` on ``host``:``port`` until :meth:`stop`."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        runner = self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self._runner = None
            raise OSError(
                exc.errno,
                f"SYSTEMX_ADMIN_HOST/SYSTEMX_ADMIN_PORT: cannot listen on {self.host}:{self.port} "
                f"({exc.strerror or exc}); choose another SYSTEMX_ADMIN_PORT or set SYSTEMX_ADMIN=off",
            ) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        runner = self._runner
        self._runner = None
        if runner is not None:
            await runner.cleanup()
