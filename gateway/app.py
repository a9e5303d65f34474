"""Composition root of `tgw gateway run`: wires broker, database, ingest and HTTP.

Start order: database pool -> broker session -> tasks (ingest, HTTP, upkeep).
SIGTERM/SIGINT: ingest stops taking batches, commits and acknowledges what it
has, then HTTP and upkeep stop, the broker session closes, the pool closes.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from gateway.api.app import create_app
from gateway.api.health import HealthProbe
from gateway.api.ratelimit import CommandRateLimiter
from gateway.api.server import EmbeddedHttpServer
from gateway.commands import CommandSystem
from gateway.config import Settings
from gateway.errors import StorageError
from gateway.fleet import FleetFeed, FleetStore
from gateway.ingest.maintenance import last_seen_resolution_s, run_maintenance
from gateway.ingest.metrics import IngestMetrics
from gateway.ingest.mqtt_source import MqttIngestSource
from gateway.ingest.pipeline import IngestPipeline
from gateway.ingest.writer import BatchWriter
from gateway.insights import InsightRefresher, InsightStore
from gateway.storage import StorageInfo, detect_storage_mode, log_storage_mode
from schemas import TopicKind

__all__ = ["run_gateway"]

log = structlog.get_logger(__name__)

INGEST_KINDS = (TopicKind.TELEMETRY, TopicKind.EVENTS, TopicKind.STATUS)
SHUTDOWN_TIMEOUT_S = 30.0


class _IngestProgress:
    """Adapts the source and the pipeline to what `/health` reports."""

    def __init__(self, source: MqttIngestSource, pipeline: IngestPipeline) -> None:
        self._source = source
        self._pipeline = pipeline

    @property
    def broker_connected(self) -> bool:
        return self._source.connected

    @property
    def pending_messages(self) -> int:
        return self._source.pending

    @property
    def oldest_pending_age_s(self) -> float | None:
        oldest = self._source.oldest_pending_received_ms
        return None if oldest is None else max(time.time() - oldest / 1000, 0.0)

    @property
    def last_commit_age_s(self) -> float | None:
        last = self._pipeline.last_commit_monotonic
        return None if last is None else time.monotonic() - last


async def run_gateway(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    shutdown: asyncio.Event | None = None,
) -> None:
    """Run the gateway until SIGTERM or SIGINT (or `shutdown`), then shut down gracefully.

    Args:
        settings: the process's settings.
        ready: set once the gateway takes messages (tests and the demo wait on it).
        shutdown: when given, setting it stops the gateway and no signal handlers are
            installed (the caller owns the process's signals).
    """
    if shutdown is None:
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, shutdown.set)
    metrics = IngestMetrics()
    database = settings.database
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database.dsn.get_secret_value(),
        min_size=database.pool_min_size,
        max_size=database.pool_max_size,
        timeout=database.pool_timeout_s,
        open=False,
        configure=BatchWriter.prepare_connection,
        kwargs={"connect_timeout": int(database.connect_timeout_s)},
        name="tgw-gateway",
    )
    try:
        await pool.open(wait=True, timeout=database.connect_timeout_s)
    except PoolTimeout as exc:
        await pool.close()
        raise StorageError(
            f"cannot reach the database: check TGW_DATABASE__DSN and that PostgreSQL is up ({exc})"
        ) from exc
    async with pool:
        storage = await _log_storage(pool, database.storage_mode)
        # Built before the broker session: command results arrive on that same connection.
        commands = CommandSystem(settings, pool, metrics.registry)
        async with MqttIngestSource(settings.mqtt, INGEST_KINDS, routes=commands.routes) as source:
            resolution_s = last_seen_resolution_s(settings.ingest.stale_after_s)
            writer = BatchWriter(pool, last_seen_resolution_s=resolution_s)
            pipeline = IngestPipeline(source, writer, settings.ingest, metrics)
            health = HealthProbe(pool, _IngestProgress(source, pipeline))
            fleet = FleetFeed(FleetStore(pool, storage.mode))
            refresher = InsightRefresher(pool, storage.mode)
            insights = InsightStore(pool, storage.mode, settings.commands.operating_areas)
            app = create_app(
                health,
                metrics.registry,
                authenticator=commands.authenticator,
                commands=commands.service,
                fleet=(fleet.store, fleet),
                rate_limiter=CommandRateLimiter(pool, settings.commands),
                insights=(insights, refresher),
            )
            http = EmbeddedHttpServer(app, settings.http.host, settings.http.port)
            async with asyncio.TaskGroup() as tasks:
                ingest = tasks.create_task(pipeline.run(), name="ingest")
                serving = tasks.create_task(http.serve(), name="http")
                helpers = [
                    serving,
                    tasks.create_task(
                        run_maintenance(pool, settings.ingest.stale_after_s, resolution_s),
                        name="maintenance",
                    ),
                    tasks.create_task(_watch_broker(source, metrics), name="broker-watch"),
                    tasks.create_task(fleet.run(), name="fleet-feed"),
                    tasks.create_task(refresher.run(), name="insights-refresh"),
                ]
                helpers += commands.start(tasks, broker=source)
                log.info(
                    "gateway.started",
                    broker=f"{settings.mqtt.host}:{settings.mqtt.port}",
                    http=f"{settings.http.host}:{settings.http.port}",
                )
                if ready is not None:
                    await http.wait_started(serving)
                    ready.set()
                await shutdown.wait()
                log.info("gateway.stopping")
                pipeline.stop()
                try:
                    await asyncio.wait_for(asyncio.shield(ingest), SHUTDOWN_TIMEOUT_S)
                except TimeoutError:
                    # Uncommitted messages stay unacknowledged at the broker: not lost.
                    log.warning("gateway.flush_timeout", timeout_s=SHUTDOWN_TIMEOUT_S)
                    ingest.cancel()
                commands.close_streams()
                fleet.close()
                http.stop()
                for task in helpers[1:]:
                    task.cancel()
    log.info("gateway.stopped")


async def _log_storage(pool: AsyncConnectionPool[Any], setting: Any) -> StorageInfo:
    async with pool.connection() as conn:
        try:
            info = await detect_storage_mode(conn, setting)
        except psycopg.Error as exc:
            raise StorageError(f"cannot read the storage mode: {exc}") from exc
    log_storage_mode(info)
    return info


async def _watch_broker(source: MqttIngestSource, metrics: IngestMetrics) -> None:
    while True:
        metrics.broker_connected.set(1 if source.connected else 0)
        await asyncio.sleep(1.0)
