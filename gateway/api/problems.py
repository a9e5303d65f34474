"""Errors as problem details (RFC 9457): `application/problem+json`, with a message to act on.

Every error the API answers, its own and FastAPI's (validation, 404 of unknown paths, 405),
has this shape:

    {"type": "https://tgw.invalid/problems/unknown-vehicle", "title": "Unknown vehicle",
     "status": 404, "detail": "vehicle WBA... is unknown: ...", "instance": "/v1/..."}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.errors import StorageError

__all__ = ["PROBLEM_TYPE_BASE", "Problem", "install_problem_handlers", "problem_response"]

log = structlog.get_logger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
# The database is down, restarting or out of connections: worth asking again shortly.
_DATABASE_UNAVAILABLE = (psycopg.OperationalError, PoolTimeout, StorageError)
_DATABASE_RETRY_AFTER_S = 5
# `.invalid` never resolves (RFC 2606): the type is an identifier, documented in docs/commands.md.
PROBLEM_TYPE_BASE = "https://tgw.invalid/problems/"

_TITLES = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    422: "Invalid request",
    503: "Unavailable",
}


class Problem(Exception):  # noqa: N818  # named for the RFC's term
    """Raise in a route to answer with a problem document.

    Args:
        status: HTTP status.
        kind: stable slug appended to PROBLEM_TYPE_BASE (e.g. `unknown-vehicle`).
        detail: what went wrong and what to do, for a person.
        headers: extra response headers (e.g. WWW-Authenticate).
    """

    def __init__(
        self, status: int, kind: str, detail: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})


def problem_response(
    request: Request,
    status: int,
    kind: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + kind,
        "title": _TITLES.get(status, kind.replace("-", " ").capitalize()),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    body.update(extra or {})
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error response of `app` a problem document."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(request, exc.status, exc.kind, exc.detail, headers=exc.headers)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = _TITLES.get(exc.status_code, "error").lower().replace(" ", "-")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem_response(request, exc.status_code, kind, detail, headers=exc.headers)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": ".".join(str(p) for p in error["loc"]), "message": error["msg"]}
            for error in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem_response(request, 422, "invalid-request", detail, extra={"errors": errors})

    async def on_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # Not the caller's mistake and not a bug: one line for the operator, no traceback.
        log.warning("api.database_unavailable", path=request.url.path, error=str(exc))
        return problem_response(
            request,
            503,
            "database-unavailable",
            "the database cannot answer right now (unreachable, restarting or out of "
            f"connections): try again in {_DATABASE_RETRY_AFTER_S} seconds; send a command "
            "again with the same Idempotency-Key, so that it is never queued twice",
            headers={"Retry-After": str(_DATABASE_RETRY_AFTER_S)},
        )

    app.add_exception_handler(Problem, on_problem)
    for unavailable in _DATABASE_UNAVAILABLE:
        app.add_exception_handler(unavailable, on_database_unavailable)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
