"""The command endpoints of the operator API (docs/commands.md, "API").

POST /v1/vehicles/{vin}/commands      operator  queue a command -> 202
GET  /v1/vehicles/{vin}/commands      viewer    a car's commands, newest first, paginated
GET  /v1/commands/{id}                viewer    one command with its transitions
GET  /v1/commands/{id}/events         viewer    its transitions live (server-sent events)
GET  /v1/commands/events              viewer    every command's transitions live (SSE)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.auth import require
from gateway.api.problems import Problem
from gateway.api.ratelimit import CommandRateLimiter
from gateway.auth import Principal, Role
from gateway.commands import (
    CommandEvent,
    CommandPage,
    CommandRecord,
    CommandRefusedError,
    CommandService,
    NewCommand,
)
from schemas import MAX_COMMAND_TTL_MS, CommandAction, VinError, parse_vin

__all__ = ["CommandRequest", "commands_router"]

HEARTBEAT_S = 15.0

VinPath = Annotated[str, Path(description="The car's VIN (17 characters, ISO 3779).")]


class CommandRequest(BaseModel):
    """Body of `POST /v1/vehicles/{vin}/commands`."""

    model_config = ConfigDict(extra="forbid")

    action: CommandAction
    ttl_s: int | None = Field(
        default=None,
        ge=2,
        le=MAX_COMMAND_TTL_MS // 1000,
        description="Seconds the car may still take it; default per action (unlock: 30).",
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[\x21-\x7e]+$",
        description="The same key (per operator) returns the same command, never a second one. "
        "The Idempotency-Key header works too.",
    )


def _vin(vin: str) -> str:
    try:
        return parse_vin(vin)
    except VinError as exc:
        raise Problem(422, "invalid-vin", str(exc)) from exc


def _refused(exc: CommandRefusedError) -> Problem:
    headers = None
    if exc.retry_after_s is not None:
        headers = {"Retry-After": str(exc.retry_after_s)}
    return Problem(exc.status, exc.kind, str(exc), headers=headers)


def _sse(event: CommandEvent | None) -> bytes:
    if event is None:
        return b": keep-alive\n\n"
    data = event.model_dump_json()
    return f"id: {event.transition_id}\nevent: transition\ndata: {data}\n\n".encode()


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def commands_router(service: CommandService) -> APIRouter:
    """The routes, bound to the running gateway's command service."""
    router = APIRouter(tags=["commands"])

    @router.post(
        "/v1/vehicles/{vin}/commands",
        status_code=202,
        response_model=CommandRecord,
        summary="Send a command to a car (operator)",
        responses={
            401: {"description": "No or invalid token"},
            403: {"description": "Role below operator"},
            404: {"description": "Unknown vehicle"},
            409: {"description": "Car cannot do it, is busy, or the key was reused"},
            429: {"description": "Too many commands from this operator or to this car"},
            503: {"description": "This gateway has no signing key"},
        },
    )
    async def post_command(
        vin: VinPath,
        body: CommandRequest,
        *,
        request: Request,
        principal: Annotated[Principal, Depends(require(Role.OPERATOR))],
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ) -> Response:
        key = body.idempotency_key or idempotency_key
        new = NewCommand(
            vin=_vin(vin),
            action=body.action,
            requested_by=principal.name,
            ttl_s=body.ttl_s,
            idempotency_key=key,
        )
        limiter: CommandRateLimiter | None = request.app.state.command_rate_limiter
        try:
            # The rate limits are counted in the transaction that creates the command.
            record, created = await service.request(
                new, limits=limiter.limits if limiter is not None else None
            )
        except CommandRefusedError as exc:
            raise _refused(exc) from exc
        headers = {"Location": f"/v1/commands/{record.command_id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        # Serialized once: returned as a model, FastAPI would validate it again and dump it
        # through its encoder (the response_model above still documents it).
        return Response(
            record.model_dump_json(), 202, headers=headers, media_type="application/json"
        )

    @router.get(
        "/v1/vehicles/{vin}/commands",
        response_model=CommandPage,
        summary="A car's commands, newest first (viewer)",
    )
    async def list_commands(
        vin: VinPath,
        _: Annotated[Principal, Depends(require(Role.VIEWER))],
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> CommandPage:
        try:
            return await service.list_for_vehicle(_vin(vin), limit=limit, cursor=cursor)
        except CommandRefusedError as exc:
            raise _refused(exc) from exc

    @router.get(
        "/v1/vehicles/{vin}/rental-end-check",
        summary="May the rental end now? Each failing condition named (viewer)",
    )
    async def rental_end_check(
        vin: VinPath, _: Annotated[Principal, Depends(require(Role.VIEWER))]
    ) -> dict[str, Any]:
        try:
            report = await service.rental_end_check(_vin(vin))
        except CommandRefusedError as exc:
            raise _refused(exc) from exc
        return report.as_dict()

    @router.get(
        "/v1/commands/events",
        summary="Every command's state changes, live (server-sent events; viewer)",
        response_class=StreamingResponse,
    )
    async def all_events(
        _: Annotated[Principal, Depends(require(Role.VIEWER))],
        vin: Annotated[str | None, Query(description="Only this car's commands.")] = None,
    ) -> StreamingResponse:
        selected = _vin(vin) if vin is not None else None

        async def stream() -> AsyncIterator[bytes]:
            async for events in service.follow_all(vin=selected, heartbeat_s=HEARTBEAT_S):
                # What came together goes out as one chunk: one write, not one per event.
                yield b"".join(map(_sse, events)) if events else _sse(None)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=_SSE_HEADERS)

    @router.get(
        "/v1/commands/{command_id}",
        response_model=CommandRecord,
        summary="One command with its transitions (viewer)",
    )
    async def get_command(
        command_id: UUID, _: Annotated[Principal, Depends(require(Role.VIEWER))]
    ) -> CommandRecord:
        record = await service.get(command_id)
        if record is None:
            raise Problem(404, "unknown-command", f"no command {command_id}")
        return record

    @router.get(
        "/v1/commands/{command_id}/events",
        summary="A command's transitions so far, then live until it is final (SSE; viewer)",
        response_class=StreamingResponse,
    )
    async def command_events(
        command_id: UUID, request: Request, _: Annotated[Principal, Depends(require(Role.VIEWER))]
    ) -> StreamingResponse:
        if await service.get(command_id) is None:
            raise Problem(404, "unknown-command", f"no command {command_id}")

        async def stream() -> AsyncIterator[bytes]:
            async for event in service.follow(command_id, heartbeat_s=HEARTBEAT_S):
                yield _sse(event)
            yield b"event: end\ndata: {}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=_SSE_HEADERS)

    return router
