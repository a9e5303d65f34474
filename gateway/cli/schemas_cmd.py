"""`tgw schemas ...`: write the JSON Schema files generated from the protocol models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import schemas
from schemas.jsonschema import JSON_SCHEMA_DIR_NAME, generate_json_schemas

app = typer.Typer(no_args_is_help=True)

DEFAULT_DIR = Path(schemas.__file__).parent / JSON_SCHEMA_DIR_NAME


@app.command("export")
def export(
    out_dir: Annotated[Path, typer.Option("--out", help="Directory to write into.")] = DEFAULT_DIR,
    check: Annotated[
        bool,
        typer.Option("--check", help="Write nothing; exit 1 if the files differ from the models."),
    ] = False,
) -> None:
    """Write one JSON Schema file per protocol v1 message into schemas/json/."""
    stale = []
    for relative, text in generate_json_schemas().items():
        target = out_dir / relative
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        stale.append(target)
        if not check:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            print(f"wrote {target}")
    if check and stale:
        names = ", ".join(str(path) for path in stale)
        typer.secho(
            f"out of date: {names}\nrun `tgw schemas export` and commit the result",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(1)
    if not stale:
        print(f"schemas in {out_dir} are up to date")
