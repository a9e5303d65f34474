"""The `tgw` command line: one root with a subcommand group per area.

Groups from packages other than gateway (e.g. `tgw sim` from device_sim) are
found through the `tgw.cli` entry point group, so gateway never imports them.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

from gateway.cli import (
    commands_cmd,
    db,
    demo,
    dev,
    fleet_cmd,
    gateway_cmd,
    insights_cmd,
    keys_cmd,
    pki_cmd,
    provision_cmd,
    report_cmd,
    schemas_cmd,
    token_cmd,
)
from gateway.errors import GatewayError

__all__ = ["app", "main"]

app = typer.Typer(
    name="tgw",
    help="tgw: telematics gateway for shared vehicles.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(gateway_cmd.app, name="gateway", help="Run the gateway; check its health.")
app.add_typer(db.app, name="db", help="Database: migrations and storage mode.")
app.add_typer(dev.app, name="dev", help="Private broker and database for the demo and development.")
app.add_typer(schemas_cmd.app, name="schemas", help="Protocol v1 contract: JSON Schema export.")
app.add_typer(token_cmd.app, name="token", help="API tokens with a role: create, list, revoke.")
app.add_typer(keys_cmd.app, name="keys", help="Command-signing keys (Ed25519).")
app.add_typer(pki_cmd.app, name="pki", help="The project's CA: broker TLS, client certificates.")
app.add_typer(insights_cmd.app, name="insights", help="Trips and utilisation: refresh, rebuild.")
app.add_typer(report_cmd.app, name="report", help="Reports: wear per model for the makers.")
commands_cmd.register(app)  # tgw lock VIN, tgw unlock VIN, ... and tgw commands show ID
provision_cmd.register(app)  # tgw provision / deprovision / rotate VIN
fleet_cmd.register(app)  # tgw vehicles, tgw vehicle VIN, tgw watch
app.command("demo")(demo.demo)  # the whole product on this machine (make demo)


def _mount_plugins() -> None:
    for entry in entry_points(group="tgw.cli"):
        app.add_typer(entry.load(), name=entry.name)


def main() -> None:
    """Console script entry point: user mistakes print a message, never a traceback."""
    _mount_plugins()
    try:
        app()
    except GatewayError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(1)
