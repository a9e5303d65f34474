"""Remote commands: signed, fresh, one in flight per car, exactly one outcome (docs/commands.md).

- `CommandSystem` (runtime): wires store, dispatcher, result intake, sweeper and live events.
- `CommandService`: what the HTTP API asks (request, read, list, follow).
- `CommandSigner`, `create_key_pair`, `load_signing_key`: Ed25519 keys and signing.
- `lifecycle`: the states and the rules between them, pure.
"""

from gateway.commands.errors import (
    CommandError,
    CommandRefusedError,
    PublishError,
    SigningKeyError,
)
from gateway.commands.lifecycle import FINAL, Status, is_success
from gateway.commands.models import (
    CommandEvent,
    CommandPage,
    CommandRecord,
    NewCommand,
    RateLimits,
)
from gateway.commands.runtime import CommandSystem
from gateway.commands.service import CommandService
from gateway.commands.signing import (
    CommandSigner,
    SigningKey,
    create_key_pair,
    load_signing_key,
)

__all__ = [
    "FINAL",
    "CommandError",
    "CommandEvent",
    "CommandPage",
    "CommandRecord",
    "CommandRefusedError",
    "CommandService",
    "CommandSigner",
    "CommandSystem",
    "NewCommand",
    "PublishError",
    "RateLimits",
    "SigningKey",
    "SigningKeyError",
    "Status",
    "create_key_pair",
    "is_success",
    "load_signing_key",
]
