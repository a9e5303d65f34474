"""`tgw db ...`: migrate the database, show what is applied and the storage mode."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import typer

from gateway.logconfig import configure_logging
from gateway.storage import StorageInfo, apply_migrations, migration_status
from gateway.storage.migrate import describe_dsn

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)

StorageModeOption = Literal["auto", "timescaledb", "postgres"]

_DSN_HELP = "Database URL or libpq string; default: TGW_DATABASE__DSN / the TGW_CONFIG file."


def _dsn(dsn: str | None) -> str:
    if dsn is not None:
        return dsn
    from gateway.cli.gateway_cmd import load_settings  # noqa: PLC0415  # only when needed

    return load_settings().database.dsn.get_secret_value()


def _storage_mode(mode: StorageModeOption | None) -> StorageModeOption:
    if mode is not None:
        return mode
    from gateway.cli.gateway_cmd import load_settings  # noqa: PLC0415  # only when needed

    return load_settings().database.storage_mode


def _describe_storage(info: StorageInfo) -> str:
    if info.mode == "postgres":
        return "postgres (native daily range partitions)"
    edition = f"{info.edition} edition" if info.edition else "edition known once migrated"
    yes_no = {True: "yes", False: "no"}
    return (
        f"timescaledb (TimescaleDB {info.timescaledb_version}, {edition}; "
        f"compression: {yes_no[info.has_compression]}, policies: {yes_no[info.has_policies]})"
    )


@app.command("migrate")
def migrate(
    dsn: Annotated[str | None, typer.Option(help=_DSN_HELP)] = None,
    storage_mode: Annotated[
        StorageModeOption | None,
        typer.Option(
            "--storage-mode",
            help="auto (TimescaleDB when the server preloads it), timescaledb or postgres; "
            "default: TGW_DATABASE__STORAGE_MODE. A migrated database keeps its mode.",
        ),
    ] = None,
) -> None:
    """Apply the pending migrations (safe to run again, and from several hosts at once)."""
    configure_logging("WARNING")
    target = _dsn(dsn)
    applied = asyncio.run(apply_migrations(target, storage_mode=_storage_mode(storage_mode)))
    status = asyncio.run(migration_status(target))
    where = describe_dsn(target)
    if applied:
        print(f"{where}: applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        print(f"{where}: schema up to date, nothing to apply")
    print(f"storage mode: {_describe_storage(status.storage)}")


@app.command("status")
def status(dsn: Annotated[str | None, typer.Option(help=_DSN_HELP)] = None) -> None:
    """Show the storage mode and the applied and pending migrations (changes nothing).

    Exits 1 when the migration files and the database disagree (a changed or unknown file).
    """
    configure_logging("WARNING")
    target = _dsn(dsn)
    report = asyncio.run(migration_status(target))
    print(f"database: {describe_dsn(target)}")
    print(f"storage mode: {_describe_storage(report.storage)}")
    print("applied:" if report.applied else "applied: none")
    for row in report.applied:
        when = row.applied_at.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        print(f"  {row.filename:<40} {when}  {row.duration_ms} ms")
    print("pending:" if report.pending else "pending: none")
    for migration in report.pending:
        print(f"  {migration.filename}")
    if report.pending:
        print("run `tgw db migrate` to apply them")
    if report.problems:
        for problem in report.problems:
            typer.secho(f"problem: {problem}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
