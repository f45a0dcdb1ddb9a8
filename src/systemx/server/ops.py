"""Operations around a running exchange: call records, metrics, the admin listener.

:class:`Operations` is started by the server once the exchange is built and
stopped after the exchange has shut down:

* ``SYSTEMX_RECORDS`` (on by default): a
  :class:`~systemx.server.callrecords.RecordsRecorder` over the SQLite record
  store at ``SYSTEMX_DATA_DIR/records.db``, bounded by ``SYSTEMX_RECORDS_MAX``
  and ``SYSTEMX_RECORDS_RETENTION``;
* ``SYSTEMX_ADMIN`` (on by default): a
  :class:`~systemx.server.metrics.MetricsRecorder`, the event-loop lag timer,
  the live event feed (:class:`~systemx.server.admin.events.EventFeed`) and
  the admin listener (:mod:`systemx.server.admin.app`) on
  ``SYSTEMX_ADMIN_HOST``:``SYSTEMX_ADMIN_PORT``.

:attr:`Operations.recorder` feeds both recorders; it is the
:class:`~systemx.core.records.Recorder` the core's events go to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from systemx.config import ConfigError, Settings
from systemx.core.records import FanoutRecorder, NullRecorder, Recorder
from systemx.server.callrecords import RECORDS_DB, RecordsRecorder
from systemx.server.transport import Hub

if TYPE_CHECKING:
    from systemx.state.redis.conn import RedisConnection

__all__ = ["Operations"]

log = logging.getLogger("systemx.server")

_DAY = 86_400.0


class Operations:
    """The call-record writer, the metrics and the admin listener of one server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.records: RecordsRecorder | None = None
        #: A cluster node's Redis connection: call records go there instead of SQLite.
        self.redis: RedisConnection | None = None
        self.node_id: str | None = None
        self.metrics: Any = None
        self.admin: Any = None
        self._lag: Any = None
        self._recorders: list[Recorder] = []

    @property
    def recorder(self) -> Recorder:
        """Where the core's events go: every recorder that is on."""
        if not self._recorders:
            return NullRecorder()
        if len(self._recorders) == 1:
            return self._recorders[0]
        return FanoutRecorder(*self._recorders)

    @property
    def recorders(self) -> tuple[Recorder, ...]:
        """Every recorder that is on, to feed side by side with others (no nested fan-out)."""
        return tuple(self._recorders)

    @property
    def recording(self) -> bool:
        """Whether any recorder is on (call records or metrics)."""
        return bool(self._recorders)

    async def start(self, exchange: Any, hub: Hub) -> None:
        settings = self.settings
        if settings.records_enabled:
            await self._start_records()
        if not settings.admin_enabled:
            return
        # Imported only when on: aiohttp's server side and prometheus-client.
        from systemx.server.admin.app import AdminServer, build_app
        from systemx.server.admin.events import EventFeed
        from systemx.server.admin.source import ExchangeSource
        from systemx.server.metrics import LoopLag, MetricsRecorder

        source = ExchangeSource(exchange, hub, self.records)
        metrics = self.metrics = MetricsRecorder(source)
        events = EventFeed()
        self._recorders += [metrics, events]
        lag = self._lag = LoopLag(metrics.loop_lag.observe)
        lag.start(hub.loop)
        app = build_app(
            source, metrics=metrics, records=self.records, token=settings.admin_token, events=events
        )
        admin = AdminServer(app, settings.admin_host, settings.admin_port)
        try:
            await admin.start()
        except OSError as exc:
            # The exchange itself still starts: several exchanges on one machine (a
            # federation, a test run) must not stop each other over the admin port.
            log.warning("Admin listener not started: %s", exc.strerror or exc)
            lag.stop()
            self._lag = None
            self._recorders.remove(metrics)
            self._recorders.remove(events)
            self.metrics = None
            return
        self.admin = admin
        log.info("Admin listening on %s", admin.url, extra={"admin_port": admin.port})

    async def _start_records(self) -> None:
        settings = self.settings
        if self.redis is not None:
            # A cluster node: the records of every node in one Redis stream.
            from systemx.server.clusterrecords import CLUSTER_RECORDS_MAX, RedisRecordsRecorder

            cap = min(settings.records_max or CLUSTER_RECORDS_MAX, CLUSTER_RECORDS_MAX)
            cluster_records = RedisRecordsRecorder(
                self.redis,
                max_records=cap,
                max_age=settings.records_retention_days * _DAY or None,
                node_id=self.node_id,
            )
            await cluster_records.start()
            self.records = cluster_records  # type: ignore[assignment]
            self._recorders.append(cluster_records)
            return
        path = Path(settings.data_dir) / RECORDS_DB
        max_records = settings.records_max or None
        max_age = settings.records_retention_days * _DAY or None

        def open_store() -> Any:
            # Written by a child process: the SQLite work (about 7 µs a record) runs
            # beside the exchange, not on its CPU or under its GIL.
            from systemx.state.records_process import ProcessRecordStore

            return ProcessRecordStore(path, max_records=max_records, max_age=max_age)

        records = RecordsRecorder(open_store)
        try:
            await records.start()
        except Exception as exc:
            await records.close()
            raise ConfigError(f"SYSTEMX_DATA_DIR: cannot open the call records in {path}: {exc}") from exc
        self.records = records
        self._recorders.append(records)

    async def stop(self) -> None:
        """Stop the admin listener, then write the queued call records and close their store."""
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        if self._lag is not None:
            self._lag.stop()
            self._lag = None
        if self.records is not None:
            await self.records.close()
