"""Insights refresh time with every car in a long open trip: continued, or derived again.

    python -m bench.insights_open_trips [--cars 2000] [--minutes 30] [--hz 1]
        [--modes continued,rederived] [--storage auto] [--keep]

On a private PostgreSQL/TimescaleDB in a temporary directory (removed unless --keep), each mode
in a database of its own: every car stands parked (one sample), then starts a trip that does not
end within the run. Every simulated minute the minute's samples arrive (`--hz` per car, each
received a second after it was taken, written straight with SQL) and one incremental refresh
runs, with the gateway's defaults (overlap 10 minutes). The clock is simulated (the refresher
reads the simulated time instead of the database's `now()`): a minute passes as soon as its
refresh is done, and the refresher's window holds what it would hold at that time of a real
run (the last 11 minutes' samples), not everything written in the last 10 minutes of wall time.
`continued` is the refresher as it is (`RefreshOptions.continue_open_trips`);
`rederived` turns continuing off: every refresh derives each open trip again from its start (the
refresher before migration 0007). The modes take turns minute by minute, so that both see the
same load on a shared machine.

Progress goes to stdout; the last line is one JSON object: per mode the refresh seconds of every
minute, the first and last five minutes' means, and the maximum.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from bench._harness import work_dir
from gateway.devstack import PostgresServer
from gateway.insights import InsightRefresher, RefreshOptions
from gateway.insights import refresher as refresher_module
from gateway.logconfig import configure_logging
from gateway.storage import apply_migrations, detect_storage_mode

__all__ = ["main"]

# Sample s of car c (s = -1: parked before the trip): moving north at about 40 km/h at 1 Hz.
_SAMPLES = """
INSERT INTO telemetry (time, vin, boot_id, seq, received_at, lat, lon, heading, speed, fuel,
                       odometer, batt_v,
                       ignition, locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open,
                       trunk_open)
SELECT x.time, 'TGWLNG' || lpad(c::text, 11, '0'), 'boot-1', s + 1, x.time + interval '1 second',
       48.10 + (c %% 50) * 0.002 + greatest(s, 0) * 0.0001 / %(hz)s,
       11.50 + (c / 50) * 0.003, 0,
       CASE WHEN s < 0 THEN 0 ELSE 40 + 15 * sin(s / (30.0 * %(hz)s) + c) END,
       80 - greatest(s, 0) * 0.0002 / %(hz)s,
       20000 + greatest(s, 0) * 0.0111 / %(hz)s, 12.6,
       s >= 0, s < 0, false, false, false, false, false
FROM generate_series(1, %(cars)s) c, generate_series(%(lo)s, %(hi)s - 1) s
CROSS JOIN LATERAL (
    SELECT %(t0)s::timestamptz + make_interval(secs => s::float8 / %(hz)s) AS time
) x
"""
# What autosummarize (migration 0004) and autovacuum do in the background as rows come in.
_UPKEEP = (
    "SELECT brin_summarize_new_values(c.oid) FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
    "WHERE a.amname = 'brin' AND c.relkind = 'i'",
    "ANALYZE telemetry",
)


def _set_clock(at: datetime) -> None:
    """The refresher's `now()`: the simulated time (see the module docstring)."""
    state = (
        f"SELECT timestamptz '{at.isoformat()}', received_watermark, refreshed_at "
        "FROM insight_state FOR UPDATE"
    )
    setattr(refresher_module, "_STATE", state)  # noqa: B010  # a Final constant, bench only


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def _run(dsns: dict[str, str], mode: Any, options: argparse.Namespace) -> dict[str, Any]:
    """Both modes minute by minute, one after the other, so that both see the same load."""
    hz = options.hz
    # Everything in the past: the trips' utilisation runs up to the simulated now.
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=options.minutes + 15)
    params = {"t0": t0, "hz": hz, "cars": options.cars}
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name in dsns}
    async with contextlib.AsyncExitStack() as stack:
        refreshers: dict[str, InsightRefresher] = {}
        conns: dict[str, psycopg.AsyncConnection[Any]] = {}
        for name, dsn in dsns.items():
            pool = await stack.enter_async_context(
                AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False)
            )
            refreshers[name] = InsightRefresher(
                pool, mode, RefreshOptions(continue_open_trips=name == "continued")
            )
            conns[name] = await stack.enter_async_context(
                await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            )
            await conns[name].execute(_SAMPLES, params | {"lo": -1, "hi": 0})
            _set_clock(t0 + timedelta(seconds=2))
            await refreshers[name].refresh()  # the first: a rebuild
        for minute in range(options.minutes):
            lo = minute * 60 * hz
            line = []
            for name in dsns:
                conn = conns[name]
                await conn.execute(_SAMPLES, params | {"lo": lo, "hi": lo + 60 * hz})
                for statement in _UPKEEP:
                    await conn.execute(statement)
                _set_clock(t0 + timedelta(minutes=minute + 1, seconds=2))
                started = time.perf_counter()
                report = await refreshers[name].refresh()
                seconds = time.perf_counter() - started
                figures[name].append(
                    {"refresh_s": round(seconds, 3), "continued": report.cars_continued}
                )
                line.append(
                    f"{name} {seconds:6.2f} s ({report.cars_continued}/{report.cars} continued)"
                )
            say(f"  minute {minute + 1:>3}: " + ",  ".join(line))
        result: dict[str, Any] = {}
        for name, conn in conns.items():
            rows = await (await conn.execute("SELECT count(*) FROM telemetry")).fetchone()
            trips = await (
                await conn.execute("SELECT count(*), sum(samples) FROM trips")
            ).fetchone()
            times = [f["refresh_s"] for f in figures[name]]
            result[name] = {
                "telemetry_rows": rows[0] if rows else 0,
                "trips": trips[0] if trips else 0,
                "trip_samples": int(trips[1]) if trips and trips[1] is not None else 0,
                "first5_mean_s": round(statistics.mean(times[:5]), 3),
                "last5_mean_s": round(statistics.mean(times[-5:]), 3),
                "max_s": max(times),
                "refresh_s": times,
                "continued": [f["continued"] for f in figures[name]],
            }
    return result


def run(options: argparse.Namespace, directory: Path) -> dict[str, Any]:
    server = PostgresServer(
        directory / "pg",
        timescaledb=None if options.storage == "auto" else options.storage == "timescaledb",
        durable=False,
    )
    result: dict[str, Any] = {"cars": options.cars, "minutes": options.minutes, "hz": options.hz}
    with server:
        dsns: dict[str, str] = {}
        for name in options.modes.split(","):
            dsn = server.create_database(f"tgw_open_trips_{name}")
            asyncio.run(apply_migrations(dsn, storage_mode=options.storage))
            mode = asyncio.run(_mode(dsn))
            if mode == "postgres":
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(
                        "SELECT tgw_ensure_partitions('telemetry', now() - interval '2 days', "
                        "now() + interval '2 days')"
                    )
            dsns[name] = dsn
        result["storage_mode"] = mode
        say(f"{options.cars} cars, {options.minutes} minutes at {options.hz} Hz: {options.modes}")
        result |= asyncio.run(_run(dsns, mode, options))
    return result


async def _mode(dsn: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return (await detect_storage_mode(conn)).mode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cars", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--hz", type=int, default=1, help="samples per second per car")
    parser.add_argument("--modes", default="continued,rederived")
    parser.add_argument("--storage", choices=("auto", "timescaledb", "postgres"), default="auto")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work dir (the database)")
    options = parser.parse_args()
    if any(m not in ("continued", "rederived") for m in options.modes.split(",")):
        parser.error("--modes: a comma-separated list of continued, rederived")
    configure_logging("WARNING")
    with work_dir(options.work_dir, options.keep, "tgw-bench-open-trips-") as directory:
        result = run(options, directory)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
