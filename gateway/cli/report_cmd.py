"""`tgw report makers`: wear and misuse per model for the car makers, a CSV and a chart each."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.errors import StorageError
from gateway.insights import InsightStore
from gateway.insights.report import MakersReport, ReportError, build_makers_report
from gateway.logconfig import configure_logging

__all__ = ["app", "parse_when"]

app = typer.Typer(no_args_is_help=True)

_DSN_HELP = "Database URL or libpq string; default: TGW_DATABASE__DSN / the TGW_CONFIG file."


def parse_when(text: str, option: str) -> datetime:
    """A date or an ISO 8601 time from the command line (no zone: UTC)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ReportError(
            f"{option} {text!r} is not a date or time: write e.g. 2025-03-01 or "
            "2025-03-01T06:00:00+01:00"
        ) from exc
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _dsn(dsn: str | None) -> str:
    if dsn is not None:
        return dsn
    from gateway.cli.gateway_cmd import load_settings  # noqa: PLC0415  # only when needed

    return load_settings().database.dsn.get_secret_value()


async def _report(
    dsn: str, start: datetime, end: datetime, out: Path, *, charts: bool, bar: Progress
) -> MakersReport:
    task = bar.add_task("reading days", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

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
        # The wear queries read plain tables: the storage mode does not matter here.
        store = InsightStore(pool, "postgres")
        return await build_makers_report(
            store, start, end, out, on_progress=progress, charts=charts
        )


@app.command("makers")
def makers(
    start: Annotated[str, typer.Option("--from", help="First day (or ISO time), UTC if no zone.")],
    end: Annotated[str, typer.Option("--to", help="End, exclusive (a date means its midnight).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the CSV and PNG files.")],
    dsn: Annotated[str | None, typer.Option(help=_DSN_HELP)] = None,
    charts: Annotated[bool, typer.Option(help="Also draw one PNG per model.")] = True,
) -> None:
    """Wear and misuse per model over [--from, --to): door ajar, 12 V low, harsh braking and
    acceleration, CAN signals out of range, failed commands; counts and per 1,000 km."""
    configure_logging("WARNING")
    first, last = parse_when(start, "--from"), parse_when(end, "--to")
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ) as bar:
        report = asyncio.run(_report(_dsn(dsn), first, last, out, charts=charts, bar=bar))
    if not report.models:
        typer.echo(f"no trips, events or failed commands from {first:%Y-%m-%d} to {last:%Y-%m-%d}")
        return
    for model, row in report.models.items():
        rates = ", ".join(f"{kind} {rate:.2f}" for kind, rate in row.per_1000_km.items() if rate)
        typer.echo(
            f"{model}: {row.cars} cars, {row.km:,.0f} km; per 1,000 km: {rates or 'nothing'}"
        )
    typer.echo(f"wrote {len(report.files)} file(s) to {out}")
