"""Insights benchmark: a month of a 2,000-car fleet, trips and utilisation derived, API timed.

    python -m bench.insights [--cars 2000] [--days 30] [--driving-interval 10] [--storage auto]
    (make bench-insights BENCH_ARGS="...")

Steps, on a private PostgreSQL/TimescaleDB in a temporary directory (removed unless --keep):

1. load: the fleet's telemetry generated straight into the database (bench/_insights_data.py),
   up to an hour before now, each row received a second after it was taken;
2. trips_full_s: everything derived from scratch (`InsightRefresher.rebuild`: trips, per-car
   hourly utilisation, the per-model/cell rollup);
3. incremental_hour_s: the last hour arrives (received now) and one incremental refresh runs;
4. p95_ms: the utilisation API (per model, per grid cell, per car, per operating area; last 7
   days; as the API answers by default and as the console asks) and the service list, through
   HTTP on the real app, N requests each after a warm-up: the slower of the utilisation and
   service-list p95s. Also timed, outside p95_ms: every car in one page
   (`utilisation_car_all`, limit 10,000; the default page is 500 groups).

Progress goes to stdout; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool

from bench._harness import work_dir
from bench._insights_data import load_fleet, plan_fleet, write_latest_state, write_span
from gateway.api.app import create_app
from gateway.api.health import HealthProbe
from gateway.api.insights import MAX_GROUPS
from gateway.api.server import EmbeddedHttpServer
from gateway.auth import Role, TokenAuthenticator, TokenStore
from gateway.devstack import PostgresServer
from gateway.insights import InsightRefresher, InsightStore, RefreshOptions
from gateway.logconfig import configure_logging
from gateway.storage import apply_migrations, detect_storage_mode

__all__ = ["main"]

MUNICH = [(11.45, 48.06), (11.72, 48.06), (11.72, 48.22), (11.45, 48.22)]
CENTRE = [(11.54, 48.12), (11.61, 48.12), (11.61, 48.16), (11.54, 48.16)]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class _NoIngest:
    broker_connected = True
    pending_messages = 0
    oldest_pending_age_s = None
    last_commit_age_s = None


# A page as large as the API allows: every cell of the heat map (as the console asks), and
# every car in one answer (timed, but not part of p95_ms: the API's default page is 500).
ALL_GROUPS = MAX_GROUPS
_EVERY_CAR = "utilisation_car_all"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def _api_latency(
    dsn: str, mode: Any, requests: int, week: tuple[datetime, datetime]
) -> dict[str, dict[str, float]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        _, token = await TokenStore(conn).create("bench", Role.VIEWER, created_by="bench")
    async with AsyncConnectionPool(dsn, min_size=2, max_size=8, open=False) as pool:
        areas = {"munich": MUNICH, "centre": CENTRE}
        app = create_app(
            HealthProbe(pool, _NoIngest()),
            __import__("prometheus_client").CollectorRegistry(),
            authenticator=TokenAuthenticator(pool),
            insights=(InsightStore(pool, mode, areas), None),
        )
        server = EmbeddedHttpServer(app, "127.0.0.1", 0)
        serving = asyncio.create_task(server.serve())
        await server.wait_started(serving)
        base = f"http://127.0.0.1:{server.bound_port}"
        window = {"from": week[0].isoformat(), "to": week[1].isoformat()}
        calls = {
            "utilisation_model": ("/v1/insights/utilisation", window | {"group": "model"}),
            "utilisation_cell": (
                "/v1/insights/utilisation",
                window | {"group": "cell", "limit": str(ALL_GROUPS)},
            ),
            "utilisation_car": ("/v1/insights/utilisation", window | {"group": "car"}),
            "utilisation_car_idle": (  # the console's list of the longest idle cars
                "/v1/insights/utilisation",
                window | {"group": "car", "sort": "idle", "limit": "8"},
            ),
            _EVERY_CAR: (
                "/v1/insights/utilisation",
                window | {"group": "car", "limit": str(ALL_GROUPS)},
            ),
            "utilisation_area": (
                "/v1/insights/utilisation",
                window | {"group": "area", "tz": "Europe/Berlin"},
            ),
            "service": ("/v1/insights/service", {"from": "48.137,11.576"}),
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        try:
            async with httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as client:
                for _ in range(3):  # warm-up: plans, caches
                    for path, params in calls.values():
                        (await client.get(path, params=params)).raise_for_status()
                for _ in range(requests):
                    for name, (path, params) in calls.items():
                        started = time.perf_counter()
                        response = await client.get(path, params=params)
                        times[name].append((time.perf_counter() - started) * 1000)
                        response.raise_for_status()
        finally:
            server.stop()
            await serving
    return {
        name: {
            "p50_ms": round(statistics.median(values), 1),
            "p95_ms": round(_percentile(values, 0.95), 1),
        }
        for name, values in times.items()
    }


async def _refresh(dsn: str, mode: Any, action: str) -> tuple[float, Any]:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        refresher = InsightRefresher(pool, mode, RefreshOptions(rebuild_batch_cars=100))
        started = time.perf_counter()
        if action == "rebuild":
            last = [0.0]

            def progress(done: int, total: int) -> None:
                if time.perf_counter() - last[0] > 10 or done == total:
                    last[0] = time.perf_counter()
                    say(f"  derived {done}/{total} cars")

            report = await refresher.rebuild(on_progress=progress)
        else:
            report = await refresher.refresh()
        return time.perf_counter() - started, report


def run(options: argparse.Namespace, directory: Path) -> dict[str, Any]:
    server = PostgresServer(
        directory / "pg",
        timescaledb=None if options.storage == "auto" else options.storage == "timescaledb",
        durable=False,
    )
    with server:
        # A server sized like a small production one, not the tiny defaults.
        with psycopg.connect(server.dsn("postgres"), autocommit=True) as conn:
            for setting, value in (
                ("shared_buffers", "2GB"),
                ("max_wal_size", "16GB"),
                ("checkpoint_timeout", "30min"),
                ("effective_cache_size", "12GB"),
                ("max_parallel_workers_per_gather", "2"),
            ):
                conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
        server.restart()
        dsn = server.create_database("tgw_insights_bench")
        asyncio.run(apply_migrations(dsn, storage_mode=options.storage))
        with psycopg.connect(dsn) as conn:
            mode = asyncio.run(_mode(dsn))
            now = datetime.now(UTC).replace(microsecond=0)
            start = (now - timedelta(days=options.days)).replace(minute=0, second=0)
            cut = now - timedelta(hours=1)
            say(f"plan: {options.cars} cars, {options.days} days, storage mode {mode}")
            plan = plan_fleet(options.cars, start, now, seed=options.seed)
            say(f"  {len(plan.trips)} trips planned")
            loading = time.perf_counter()

            def day_done(day: int, days: int, rows: int) -> None:
                rate = rows / (time.perf_counter() - loading)
                say(f"  loaded day {day}/{days}: {rows:,} rows ({rate:,.0f} rows/s)")

            _prepare_bulk_load(conn, mode, start, now)
            rows = load_fleet(
                conn,
                plan,
                cut=cut,
                driving_interval_s=options.driving_interval,
                parked_interval_s=options.parked_interval,
                on_day=day_done,
            )
            say("building the telemetry indexes")
            _finish_bulk_load(conn)
            load_s = time.perf_counter() - loading
            write_latest_state(conn)
            say("vacuum analyze (what autovacuum does over time)")
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE telemetry")
            conn.autocommit = False
        size = _database_size(dsn)
        say(f"loaded {rows:,} rows in {load_s:.0f} s; database {size}")

        say("deriving everything from scratch")
        full_s, full = asyncio.run(_refresh(dsn, mode, "rebuild"))
        say(
            f"  {full.trips_written:,} trips, {full.utilisation_rows:,} utilisation rows "
            f"in {full_s:.1f} s"
        )

        with psycopg.connect(dsn) as conn:
            hour_rows = write_span(
                conn,
                plan,
                lo=start.timestamp(),
                hi=now.timestamp() + 1,
                cut=(cut, now),
                driving_interval_s=options.driving_interval,
                parked_interval_s=options.parked_interval,
                received_now=True,
            )
            write_latest_state(conn)
        say(f"the last hour arrives: {hour_rows:,} rows; one incremental refresh")
        hour_s, hour = asyncio.run(_refresh(dsn, mode, "refresh"))
        say(
            f"  {hour.cars} cars re-derived, {hour.trips_written} trips written, "
            f"{hour.utilisation_rows} utilisation rows in {hour_s:.2f} s"
        )
        with psycopg.connect(dsn) as conn:
            trips = conn.execute("SELECT count(*) FROM trips").fetchone()
            planned = sum(1 for t in plan.trips if cast(float, t[1]) < now.timestamp())

        # What the console asks for: the last 7 days as whole UTC days up to now.
        week_start = (now - timedelta(days=6)).replace(hour=0, minute=0, second=0)
        say(f"API: {options.requests} requests per call, {week_start:%Y-%m-%d} to now")
        latency = asyncio.run(_api_latency(dsn, mode, options.requests, (week_start, now)))
        for name, figures in latency.items():
            say(f"  {name:<20} p50 {figures['p50_ms']:>7.1f} ms   p95 {figures['p95_ms']:>7.1f} ms")
    utilisation_p95 = max(
        v["p95_ms"] for k, v in latency.items() if k.startswith("utilisation") and k != _EVERY_CAR
    )
    return {
        "cars": options.cars,
        "days": options.days,
        "storage_mode": mode,
        "telemetry_rows": rows + hour_rows,
        "database_size": size,
        "load_s": round(load_s, 1),
        "trips": trips[0] if trips else 0,
        "trips_planned": planned,
        "trips_full_s": round(full_s, 2),
        "incremental_hour_rows": hour_rows,
        "incremental_hour_s": round(hour_s, 3),
        "utilisation_p95_ms": utilisation_p95,
        "service_p95_ms": latency["service"]["p95_ms"],
        "p95_ms": max(utilisation_p95, latency["service"]["p95_ms"]),
        "api": latency,
    }


def _prepare_bulk_load(
    conn: psycopg.Connection[Any], mode: Any, start: datetime, end: datetime
) -> None:
    # A bulk load, not the ingest (bench.ingest measures that): indexes are built once at the
    # end, with the same names and definitions as migrations 0002 and 0004.
    if mode == "postgres":
        conn.execute(
            "SELECT tgw_ensure_partitions('telemetry', %s, %s)", (start, end + timedelta(days=2))
        )
    conn.execute("ALTER TABLE telemetry DROP CONSTRAINT telemetry_idempotency_key")
    conn.execute("DROP INDEX telemetry_time_idx")
    conn.execute("DROP INDEX telemetry_received_at_brin")
    conn.commit()


def _finish_bulk_load(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute(
        "ALTER TABLE telemetry ADD CONSTRAINT telemetry_idempotency_key "
        "UNIQUE (vin, time, boot_id, seq)"
    )
    conn.execute("CREATE INDEX telemetry_time_idx ON telemetry (time DESC)")
    conn.execute(
        "CREATE INDEX telemetry_received_at_brin ON telemetry USING brin (received_at) "
        "WITH (pages_per_range = 32, autosummarize = on)"
    )
    conn.commit()


async def _mode(dsn: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return (await detect_storage_mode(conn)).mode


def _database_size(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
    return str(row[0]) if row else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cars", type=int, default=2000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--driving-interval", type=int, default=10, help="seconds between samples while driving"
    )
    parser.add_argument("--parked-interval", type=int, default=300)
    parser.add_argument("--requests", type=int, default=100, help="per API call")
    parser.add_argument("--storage", choices=("auto", "timescaledb", "postgres"), default="auto")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (the database)")
    options = parser.parse_args()
    configure_logging("WARNING")
    with work_dir(options.work_dir, options.keep, "tgw-bench-insights-") as directory:
        result = run(options, directory)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
