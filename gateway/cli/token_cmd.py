"""`tgw token ...`: API bearer tokens with a role (viewer, operator, admin)."""

from __future__ import annotations

import asyncio
import getpass
from typing import Annotated

import typer

from gateway.auth import ApiToken, Role, TokenStore
from gateway.storage import connect

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)

_DSN_HELP = "Database URL or libpq string; default: TGW_DATABASE__DSN / the TGW_CONFIG file."


def _dsn(dsn: str | None) -> str:
    if dsn is not None:
        return dsn
    from gateway.cli.gateway_cmd import load_settings  # noqa: PLC0415  # only when needed

    return load_settings().database.dsn.get_secret_value()


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli:unknown"


def _show(token: ApiToken) -> str:
    last = token.last_used_at.isoformat(timespec="seconds") if token.last_used_at else "never"
    state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.revoked_at else "live"
    return (
        f"{token.name:<24} {token.role.value:<9} {state:<22} "
        f"created {token.created_at:%Y-%m-%d %H:%M} by {token.created_by}, last used {last}"
    )


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who uses it; recorded with every command they send.")],
    role: Annotated[Role, typer.Option(help="viewer: read; operator: + commands; admin: all.")],
    dsn: Annotated[str | None, typer.Option(help=_DSN_HELP)] = None,
) -> None:
    """Create a token and print it ONCE (only its SHA-256 is stored)."""

    async def run() -> str:
        async with await connect(_dsn(dsn)) as conn:
            _, secret = await TokenStore(conn).create(name, role, created_by=_who())
            return secret

    secret = asyncio.run(run())
    typer.echo(secret)
    typer.secho(
        f"token for {name} ({role.value}) created; it is shown only now: "
        "pass it as TGW_API_TOKEN or 'Authorization: Bearer <token>'",
        err=True,
        fg=typer.colors.GREEN,
    )


@app.command("list")
def list_tokens(
    all_tokens: Annotated[bool, typer.Option("--all", help="Include revoked tokens.")] = False,
    dsn: Annotated[str | None, typer.Option(help=_DSN_HELP)] = None,
) -> None:
    """List tokens (never the tokens themselves)."""

    async def run() -> list[ApiToken]:
        async with await connect(_dsn(dsn)) as conn:
            return await TokenStore(conn).list(include_revoked=all_tokens)

    tokens = asyncio.run(run())
    if not tokens:
        typer.echo("no tokens; create one with `tgw token create --name NAME --role ROLE`")
    for token in tokens:
        typer.echo(_show(token))


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The live token's name.")],
    dsn: Annotated[str | None, typer.Option(help=_DSN_HELP)] = None,
) -> None:
    """Revoke a token: it stops working at once."""

    async def run() -> ApiToken:
        async with await connect(_dsn(dsn)) as conn:
            return await TokenStore(conn).revoke(name, revoked_by=_who())

    token = asyncio.run(run())
    typer.echo(f"revoked token {token.name} ({token.role.value})")
