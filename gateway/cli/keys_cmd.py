"""`tgw keys ...`: the Ed25519 keys that sign commands, and what cars must trust."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer

from gateway.commands import create_key_pair
from gateway.commands.signing import fingerprint, load_public_key, load_signing_key

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)


def _default_key_id() -> str:
    return f"tgw-{datetime.datetime.now(tz=datetime.UTC):%Y-%m}"


@app.command("create")
def create(
    out: Annotated[Path, typer.Option(help="Directory for <key-id>.key (0600) and <key-id>.pub.")],
    key_id: Annotated[
        str | None, typer.Option(help="Name cars know the key by; default tgw-YYYY-MM.")
    ] = None,
) -> None:
    """Create a signing key pair; print the public key for the cars' trust lists."""
    files = create_key_pair(out, key_id or _default_key_id())
    typer.echo(f"private key: {files.private_path} (mode 0600; only the gateway reads it)")
    typer.echo(f"public key:  {files.public_path}")
    typer.echo(f"fingerprint: sha256:{files.fingerprint}")
    typer.echo("")
    typer.echo("gateway settings:")
    typer.echo(f"  TGW_COMMANDS__SIGNING_KEY_FILE={files.private_path.resolve()}")
    typer.echo(f"  TGW_COMMANDS__SIGNING_KEY_ID={files.key_id}")
    typer.echo("")
    typer.echo("every car's trust list (docs/commands.md, 'Keys'):")
    typer.echo("  [commands.trusted_keys]")
    typer.echo(f'  "{files.key_id}" = "{files.public_hex}"')


@app.command("show")
def show(
    path: Annotated[Path, typer.Argument(help="A .key (private) or .pub (public) file.")],
) -> None:
    """Print a key's id, public key and fingerprint (never the private key)."""
    if path.suffix == ".pub":
        public = load_public_key(path)
        key_id = path.stem
    else:
        key = load_signing_key(path)
        public, key_id = key.public_key, key.key_id
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415  # only here

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    typer.echo(f"key id:      {key_id}")
    typer.echo(f"public key:  {raw.hex()}")
    typer.echo(f"fingerprint: sha256:{fingerprint(public)}")
