"""`tgw pki ...`: the project's CA, the broker's TLS certificate, client certificates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.pki import CertificateAuthority, PkiError, init_pki

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True)


@app.command("init")
def init(
    out: Annotated[
        Path, typer.Option(help="Directory for ca.crt, ca.key, server.crt, server.key.")
    ],
    server_name: Annotated[
        list[str] | None,
        typer.Option(
            "--server-name",
            help="A DNS name or IP address clients use for the broker (repeat it); "
            "default: localhost and 127.0.0.1.",
        ),
    ] = None,
    ca_days: Annotated[int, typer.Option(help="How long the CA is valid.", min=1)] = 3650,
    server_days: Annotated[
        int, typer.Option(help="How long the server certificate is valid.", min=1)
    ] = 397,
) -> None:
    """Create the CA and the broker's server certificate (never over existing files)."""
    files = init_pki(
        out,
        server_names=server_name or ["localhost", "127.0.0.1"],
        ca_days=ca_days,
        server_days=server_days,
    )
    typer.echo(f"CA certificate:     {files.ca_cert} (give it to every car and gateway)")
    typer.echo(f"CA key:             {files.ca_key} (mode 0600; keep it off the broker)")
    typer.echo(f"server certificate: {files.server_cert} for {', '.join(files.server_names)}")
    typer.echo(f"server key:         {files.server_key} (mode 0600; readable by mosquitto only)")
    typer.echo("")
    typer.echo("mosquitto.conf, TLS listener block (uncomment it):")
    typer.echo(f"  cafile {files.ca_cert.resolve()}")
    typer.echo(f"  certfile {files.server_cert.resolve()}")
    typer.echo(f"  keyfile {files.server_key.resolve()}")
    typer.echo("gateway settings:")
    typer.echo(f"  TGW_MQTT__TLS_CA_FILE={files.ca_cert.resolve()}")
    typer.echo(f"  TGW_BROKER__CAR_TLS_CA_FILE={files.ca_cert.resolve()}")
    typer.echo(f"  TGW_BROKER__CA_CERT_FILE={files.ca_cert.resolve()}")
    typer.echo(f"  TGW_BROKER__CA_KEY_FILE={files.ca_key.resolve()}")


@app.command("issue")
def issue(
    name: Annotated[str, typer.Argument(help="Common name: a VIN, or a gateway account name.")],
    *,
    out: Annotated[Path, typer.Option(help="Directory for NAME.crt and NAME.key.")],
    ca_cert: Annotated[Path, typer.Option(help="The CA certificate (ca.crt).")],
    ca_key: Annotated[Path, typer.Option(help="The CA key (ca.key).")],
    days: Annotated[int, typer.Option(help="How long the certificate is valid.", min=1)] = 397,
    server_name: Annotated[
        list[str] | None,
        typer.Option(
            "--server-name",
            help="Issue a server certificate for these DNS names / IP addresses instead "
            "(renewing the broker's: repeat it for each name clients use).",
        ),
    ] = None,
) -> None:
    """Issue a client certificate (for a broker that requires them), or a server certificate."""
    if not name or any(c in name for c in "/\\:+# \n"):
        raise PkiError(f"{name!r} cannot be a certificate name (no / \\ : + # or spaces)")
    authority = CertificateAuthority.load(ca_cert, ca_key)
    issued = authority.issue(name, days=days, server_names=server_name or ())
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    issued.write(cert_path, key_path)
    typer.echo(f"certificate: {cert_path} (valid until {issued.not_after:%Y-%m-%d})")
    typer.echo(f"key:         {key_path} (mode 0600)")
