"""`tgw insights refresh | rebuild`: bring the derived trips and utilisation up to date.

The gateway refreshes them every minute by itself; these are for a database without a running
gateway, and for a rebuild after data arrived later than the refresher's overlap allows for.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import psycopg
import typer
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.cli.report_cmd import parse_when
from gateway.errors import StorageError
from gateway.insights import InsightRefresher, RefreshReport
from gateway.logconfig import configure_logging
from gateway.storage import detect_storage_mode

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)

_DSN_HELP = "Database URL or libpq string; default: TGW_DATABASE__DSN / the TGW_CONFIG file."


def _dsn(dsn: str | None) -> str:
    if dsn is not None:
        return dsn
    from gateway.cli.gateway_cmd import load_settings  # noqa: PLC0415  # only when needed

    return load_settings().database.dsn.get_secret_value()


async def _run(dsn: str, action: str, **kwargs: Any) -> RefreshReport:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=2, open=False, kwargs={"connect_timeout": 10}
    )
    try:
        await pool.open(wait=True, timeout=15)
    except PoolTimeout as exc:
        await pool.close()
        raise StorageError(
            f"cannot reach the database: check --dsn / TGW_DATABASE__DSN ({exc})"
        ) from exc
    async with pool:
        async with pool.connection() as conn:
            try:
                mode = (await detect_storage_mode(conn)).mode
            except psycopg.Error as exc:
                raise StorageError(f"cannot read the storage mode: {exc}") from exc
        refresher = InsightRefresher(pool, mode)
        if action == "refresh":
            return await refresher.refresh()
        return await refresher.rebuild(**kwargs)


def _print(report: RefreshReport) -> None:
    if report.skipped:
        typer.echo("another gateway is refreshing right now: nothing done (try again shortly)")
        return
    typer.echo(
        f"{'rebuilt' if report.rebuild else 'refreshed'}: {report.cars} car(s) "
        f"({report.cars_continued} open trip(s) continued), "
        f"{report.trips_written} trip(s) written ({report.trips_deleted} replaced), "
        f"{report.utilisation_rows} utilisation row(s), in {report.duration_s:.1f} s"
    )


@app.command("refresh")
def refresh(dsn: Annotated[str | None, typer.Option(help=_DSN_HELP)] = None) -> None:
    """Derive what arrived since the last refresh (the first time: everything)."""
    configure_logging("WARNING")
    _print(asyncio.run(_run(_dsn(dsn), "refresh")))


@app.command("rebuild")
def rebuild(
    vin: Annotated[
        list[str] | None, typer.Option("--vin", help="Only this car (repeat for more).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only from this day (or ISO time) on.")
    ] = None,
    dsn: Annotated[str | None, typer.Option(help=_DSN_HELP)] = None,
) -> None:
    """Derive trips and utilisation again from the stored telemetry (all cars, or --vin)."""
    configure_logging("WARNING")
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ) as bar:
        task = bar.add_task("cars", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = asyncio.run(
            _run(
                _dsn(dsn),
                "rebuild",
                vins=[v.upper() for v in vin] if vin else None,
                since=parse_when(since, "--since") if since else None,
                on_progress=progress,
            )
        )
    _print(report)
