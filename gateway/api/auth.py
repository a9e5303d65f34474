"""Bearer-token authentication for the API: `Depends(require(Role.OPERATOR))` in a route.

No or malformed `Authorization` header, an unknown or a revoked token: 401 with
`WWW-Authenticate: Bearer`. A valid token whose role is too small: 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from fastapi import Request

from gateway.api.problems import Problem
from gateway.auth import Principal, Role

__all__ = ["Authenticator", "require"]


class Authenticator(Protocol):
    async def authenticate(self, secret: str) -> Principal | None: ...


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="tgw"'}


def require(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that yields the caller's principal if its role allows `role`."""

    async def dependency(request: Request) -> Principal:
        authenticator: Authenticator = request.app.state.authenticator
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Problem(
                401,
                "not-authenticated",
                "send a token as 'Authorization: Bearer <token>' "
                "(create one with `tgw token create --name NAME --role ROLE`)",
                headers=_CHALLENGE,
            )
        principal = await authenticator.authenticate(secret.strip())
        if principal is None:
            raise Problem(
                401,
                "invalid-token",
                "the token is unknown or was revoked: ask an admin for a new one",
                headers={"WWW-Authenticate": 'Bearer realm="tgw", error="invalid_token"'},
            )
        if not principal.role.allows(role):
            raise Problem(
                403,
                "forbidden",
                f"token {principal.name!r} has role {principal.role.value}; "
                f"this needs {role.value} or higher",
            )
        return principal

    return dependency
