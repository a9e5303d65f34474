"""`tgw gateway ...`: run the gateway, ask it how it is."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Annotated

import httpx
import structlog
import typer
from pydantic import ValidationError

from gateway.config import Settings
from gateway.errors import ConfigurationError
from gateway.logconfig import configure_logging

app = typer.Typer(no_args_is_help=True)


def load_settings() -> Settings:
    """Settings from the environment and TGW_CONFIG, with errors a person can act on."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigurationError(
            f"invalid settings ({problems}); set them as TGW_<SECTION>__<NAME> "
            "environment variables or in the TOML file named by TGW_CONFIG"
        ) from exc


@app.command("run")
def run(
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Gateway processes sharing the subscription (about one core each). Worker i "
            "connects as <username>-i with the same password and serves HTTP on port + i - 1; "
            "create those broker accounts first. 1: one process with the configured identity.",
        ),
    ] = 1,
    worker_id: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Run only worker I of a --workers set (its identity: <username>-I, port + I - 1), "
            "e.g. one service unit per worker.",
        ),
    ] = None,
) -> None:
    """Ingest telemetry, events and status until SIGTERM/SIGINT, then flush and stop."""
    settings = load_settings()
    configure_logging(settings.log.level, json=settings.log.json_output)
    if settings.mqtt.password is None:
        raise ConfigurationError(
            "no broker password: set TGW_MQTT__PASSWORD (the gateway account's password)"
        )
    if worker_id is None and workers > 1:
        from gateway.workers import exec_supervisor  # noqa: PLC0415  # keep `tgw --help` fast

        exec_supervisor(workers, settings.log.level, settings.log.json_output)
    from gateway.app import run_gateway  # noqa: PLC0415  # keep `tgw --help` fast

    if worker_id is not None:
        from gateway.workers import worker_settings  # noqa: PLC0415  # keep `tgw --help` fast

        settings = worker_settings(settings, worker_id)
        structlog.contextvars.bind_contextvars(worker=worker_id)
    _tune_garbage_collector()
    asyncio.run(run_gateway(settings))


def _tune_garbage_collector() -> None:
    """Make Python's cyclic garbage collector cheap for a process that ingests all day.

    Ingest allocates several container objects per message, and with the default threshold
    (700) the collector runs hundreds of times a second, each time walking the young objects
    and often the hundreds of thousands of long-lived ones (modules, settings, the messages
    awaiting commit): measured, it doubled the CPU per message (docs/benchmarks.md). Almost
    nothing here is freed by the collector rather than by reference counting, so: freeze what
    start-up made (never scanned again), and collect the young generation 70 times less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


@app.command("health")
def health(
    url: Annotated[
        str | None,
        typer.Option(help="Health endpoint; default: from TGW_HTTP__HOST/PORT."),
    ] = None,
) -> None:
    """Ask a running gateway whether broker and database are reachable and ingest keeps up."""
    if url is None:
        settings = load_settings()
        url = f"http://{settings.http.host}:{settings.http.port}/health"
    try:
        response = httpx.get(url, timeout=5.0)
    except httpx.HTTPError as exc:
        typer.secho(
            f"no gateway answers at {url} ({exc}): is `tgw gateway run` running?",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(2) from exc
    report = response.json()
    print(json.dumps(report, indent=2))
    if response.status_code != 200:
        raise typer.Exit(1)
