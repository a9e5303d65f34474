"""`tgw provision`, `tgw deprovision`, `tgw rotate`: a car's identity, from birth to removal.

Settings: the `broker` section (password file, reload, admin account), `mqtt` (where the tool
connects), `commands` (signing keys), `database` (docs/security.md, "Provisioning").
"""

from __future__ import annotations

import asyncio
import csv
import getpass
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.provisioning.errors import ProvisioningError
from gateway.provisioning.reload import ReloadOutcome
from gateway.provisioning.service import CarRequest, Provisioner

__all__ = ["read_cars_csv", "register"]


def _who() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli:unknown"


def _provisioner() -> Provisioner:
    from gateway.cli.gateway_cmd import load_settings  # noqa: PLC0415  # only when needed

    return Provisioner(load_settings(), actor=_who())


def read_cars_csv(path: Path) -> list[tuple[str, str]]:
    """(VIN, model) rows of a CSV `vin,model` (an optional header; `#` lines are comments).

    Raises:
        ProvisioningError: unreadable, or a row is not two fields.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from exc
    rows: list[tuple[str, str]] = []
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if [cell.lower() for cell in cells] == ["vin", "model"]:
            continue
        if len(cells) != 2 or not all(cells):
            raise ProvisioningError(f"{path}:{number}: expected 'vin,model', got {row!r}")
        rows.append((cells[0].upper(), cells[1]))
    if not rows:
        raise ProvisioningError(f"{path} lists no cars (expected lines 'vin,model')")
    return rows


def _reload_note(outcome: ReloadOutcome) -> str:
    if outcome.confirmed:
        return f"the broker took the change ({outcome.waited_s:.2f} s)"
    return "broker.reload is 'none': reload the broker now (SIGHUP) for the change to apply"


def provision(
    vin: Annotated[str | None, typer.Argument(help="The car's VIN (or use --csv).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Its profile, e.g. bmw_e8x, vw_mqb, tgw_generic.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where the car's configuration goes: a file for one car, a directory for "
            "--csv (one <VIN>.toml each). Mode 0600: it holds the car's password."
        ),
    ] = None,
    csv_file: Annotated[
        Path | None, typer.Option("--csv", help="Provision every 'vin,model' line of this CSV.")
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="Issue new credentials for cars provisioned already.")
    ] = False,
) -> None:
    """Register a car: broker password, subscribe ACL, command-signing trust, its config file."""
    if out is None:
        raise ProvisioningError("--out is required: where the car's configuration goes")
    if (vin is None) == (csv_file is None):
        raise ProvisioningError("give either a VIN (with --model) or --csv FILE")
    if csv_file is not None:
        rows = read_cars_csv(csv_file)
        requests = [CarRequest(v, m, out / f"{v}.toml") for v, m in rows]
    else:
        assert vin is not None
        if model is None:
            raise ProvisioningError("--model is required with a VIN (e.g. --model bmw_e8x)")
        requests = [CarRequest(vin.upper(), model, out)]
    provisioner = _provisioner()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=len(requests) == 1,
    ) as bar:
        task = bar.add_task("provisioning", total=len(requests))

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        result = asyncio.run(provisioner.provision(requests, replace=replace, progress=progress))
    for car_vin, path in zip(result.vins, result.config_paths, strict=True):
        keys = ", ".join(result.key_ids[car_vin])
        typer.echo(f"{car_vin}: {path} (trusts {keys})")
    typer.echo(f"provisioned {len(result.vins)} car(s); {_reload_note(result.reload)}")


def deprovision(
    vin: Annotated[str, typer.Argument(help="The car's VIN.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Remove a car: its password (it is disconnected), subscribe ACL, keys and registration."""
    if not yes:
        typer.confirm(f"remove {vin} from the broker and the gateway?", abort=True)
    result = asyncio.run(_provisioner().deprovision(vin))
    if result.registration.deleted:
        registration = "registration deleted"
    elif result.registration.commands_kept:
        registration = (
            f"registration kept: {result.registration.commands_kept} command(s) refer to it "
            "(the audit trail)"
        )
    else:
        registration = "it was not registered"
    typer.echo(
        f"{result.vin}: broker password {'removed' if result.had_password else 'was absent'}, "
        f"subscribe ACL removed, {result.key_files_removed} key file(s) deleted, {registration}; "
        f"{_reload_note(result.reload)}"
    )


def rotate(
    vin: Annotated[str, typer.Argument(help="The car's VIN.")],
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            help="The car's current configuration (written by tgw provision); replaced.",
        ),
    ],
    finish: Annotated[
        bool,
        typer.Option(
            "--finish",
            help="Step 2, once the car has the staged configuration: activate the new "
            "credentials and drop the old ones.",
        ),
    ] = False,
) -> None:
    """Replace a car's password and keys in two steps, without locking it out.

    Step 1 (`tgw rotate VIN --config FILE`) stages: the file gets the new password with the old
    one as fallback, and trusts the old and the new signing key. Deliver it to the car. Step 2
    (`--finish`) makes the broker and the gateway switch, and writes the final file.
    """
    provisioner = _provisioner()
    if finish:
        result = asyncio.run(provisioner.finish_rotation(vin, config))
        assert result.reload is not None
        typer.echo(
            f"{result.vin}: new credentials active, trusts {', '.join(result.trusted_key_ids)}; "
            f"{_reload_note(result.reload)}. Deliver {result.config_path} to the car."
        )
        return
    result = asyncio.run(provisioner.rotate(vin, config))
    typer.echo(
        f"{result.vin}: rotation staged in {result.config_path} (new password, old one as "
        f"fallback; trusts {', '.join(result.trusted_key_ids)}). Deliver it to the car, then run "
        f"`tgw rotate {result.vin} --config {result.config_path} --finish`."
    )


def register(app: typer.Typer) -> None:
    """Mount `tgw provision`, `tgw deprovision` and `tgw rotate` on the root app."""
    app.command("provision")(provision)
    app.command("deprovision")(deprovision)
    app.command("rotate")(rotate)
