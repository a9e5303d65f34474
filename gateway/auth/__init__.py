"""Who may use the operator API: bearer tokens with a role (viewer, operator, admin)."""

from gateway.auth.tokens import (
    ApiToken,
    Principal,
    Role,
    TokenAuthenticator,
    TokenError,
    TokenStore,
    hash_token,
)

__all__ = [
    "ApiToken",
    "Principal",
    "Role",
    "TokenAuthenticator",
    "TokenError",
    "TokenStore",
    "hash_token",
]
