"""`tgw sim`: run simulated cars and replay CAN logs (mounted by the root CLI via entry points)."""

from __future__ import annotations

import typer

__all__ = ["app"]

app = typer.Typer(
    name="sim",
    help="Simulated cars: one in-car unit, a fleet, or a recorded CAN log.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Simulated cars: one in-car unit, a fleet, or a recorded CAN log."""
