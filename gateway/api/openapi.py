"""The OpenAPI document states the API's shared conventions, for every route at once.

FastAPI describes each route's success; what all `/v1` routes share is added here, so that the
published document (`/v1/openapi.json`) tells clients the truth and generated tests can hold the
API to it:

- bearer-token security (`Authorization: Bearer tgw_...`), and 401 / 403 on every `/v1` route;
- every error as `application/problem+json` with the `Problem` schema (RFC 9457), including
  FastAPI's own 422 for invalid parameters, and 503 when the database cannot answer;
- 404 on routes that name a resource in their path;
- the VIN format on every `vin` parameter (the server checks it with schemas.parse_vin).
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

__all__ = ["PROBLEM_SCHEMA", "VIN_PATTERN", "install_openapi_conventions"]

VIN_PATTERN: Final = "^[A-HJ-NPR-Z0-9]{17}$"
PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "title": "Problem",
    "description": "An error (RFC 9457 problem details).",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "description": "Stable identifier of the kind of problem."},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What went wrong and what to do."},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "Invalid parameters (422 only).",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_PROBLEM_CONTENT: Final = {
    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
}
_SHARED_ERRORS: Final = {
    "401": "No token, or an unknown or revoked one",
    "403": "The token's role is too small",
    "422": "Invalid parameters or body",
    "503": "The database cannot answer right now",
}
_HTTP_METHODS: Final = {"get", "post", "put", "patch", "delete"}


def install_openapi_conventions(app: FastAPI) -> None:
    """Make `app.openapi()` return the document with the shared conventions added."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            add_conventions(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def add_conventions(document: dict[str, Any]) -> None:
    """Add security, problem responses and the VIN format to an OpenAPI document in place."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    components.setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from `tgw token create --name NAME --role ROLE`.",
    }
    for path, item in document.get("paths", {}).items():
        if not path.startswith("/v1/") or path.endswith("openapi.json"):
            continue
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            operation["security"] = [{"bearerAuth": []}]
            responses = operation.setdefault("responses", {})
            for status, description in _SHARED_ERRORS.items():
                responses.setdefault(status, {"description": description})
            if "{" in path:
                responses.setdefault("404", {"description": "No such resource"})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = dict(_PROBLEM_CONTENT)
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "vin":
                    schema = parameter.setdefault("schema", {})
                    _add_vin_pattern(schema)


def _add_vin_pattern(schema: dict[str, Any]) -> None:
    # Optional parameters are `anyOf: [string, null]`; the pattern belongs on the string.
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string":
            option.setdefault("pattern", VIN_PATTERN)
