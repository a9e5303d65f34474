"""The command lifecycle as pure rules: states, which moves are allowed, what a car's answer does.

```
queued --PUBACK--> sent --accepted--> accepted --executed--> executed --telemetry--> verified
  |                 |  \\--rejected--> rejected   |--failed--> failed
  |                 |                            \\--no answer in time--> timed_out
  |--deadline-----> expired <--deadline + grace, no answer from the car
```

Final states: rejected, failed, expired, timed_out, executed and verified. `executed` may still
become `verified` (telemetry confirms the lock state); nothing else leaves a final state. A car's
answer that comes after the gateway decided (expired, timed out) is kept as a late outcome and
never changes the final state.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schemas import CommandAction, CommandOutcome

__all__ = [
    "ACTIVE",
    "FINAL",
    "IN_FLIGHT",
    "ResultEffect",
    "Status",
    "allowed_sources",
    "effect_of_result",
    "expected_lock_state",
    "is_success",
    "stream_ends",
    "target_status",
]


class Status(StrEnum):
    """The states of the `command_status` domain (migration 0001)."""

    QUEUED = "queued"
    SENT = "sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EXECUTED = "executed"
    FAILED = "failed"
    VERIFIED = "verified"
    EXPIRED = "expired"
    TIMED_OUT = "timed_out"


IN_FLIGHT = frozenset({Status.SENT, Status.ACCEPTED})
"""At most one command per car is in one of these (the car may be working on it)."""
ACTIVE = frozenset({Status.QUEUED, *IN_FLIGHT})
"""Not final yet."""
FINAL = frozenset(Status) - ACTIVE


def is_success(status: Status) -> bool:
    """Did the car do it? (executed, and perhaps confirmed by telemetry since)."""
    return status in (Status.EXECUTED, Status.VERIFIED)


def expected_lock_state(action: CommandAction) -> bool | None:
    """The `locked` value telemetry must show to verify `action`; None: nothing to verify."""
    if action in (CommandAction.LOCK, CommandAction.LOCK_AND_DISABLE_DRIVING):
        return True
    if action in (CommandAction.UNLOCK, CommandAction.UNLOCK_AND_ENABLE_DRIVING):
        return False
    return None


def stream_ends(status: Status, action: CommandAction) -> bool:
    """Whether a live stream of this command has nothing more to tell."""
    if status is Status.EXECUTED:
        return expected_lock_state(action) is None
    return status in FINAL


class ResultEffect(StrEnum):
    """What a car's answer does to a command in a given state."""

    APPLY = "apply"  # move to the answer's state
    DUPLICATE = "duplicate"  # the same answer again (MQTT redelivery): nothing to do
    STALE = "stale"  # an answer overtaken by a later one (e.g. accepted after executed)
    LATE = "late"  # the gateway had already given up (expired, timed out): record, do not move
    CONFLICT = "conflict"  # contradicts a final answer the car gave before: record, do not move


@dataclass(frozen=True, slots=True)
class _Rule:
    apply_from: frozenset[Status]
    target: Status


_RULES: dict[CommandOutcome, _Rule] = {
    # From queued too: a gateway may die between the broker's PUBACK and its own commit.
    CommandOutcome.ACCEPTED: _Rule(frozenset({Status.QUEUED, Status.SENT}), Status.ACCEPTED),
    CommandOutcome.REJECTED: _Rule(frozenset({Status.QUEUED, Status.SENT}), Status.REJECTED),
    CommandOutcome.EXECUTED: _Rule(frozenset(ACTIVE), Status.EXECUTED),
    CommandOutcome.FAILED: _Rule(frozenset(ACTIVE), Status.FAILED),
}
_GAVE_UP = frozenset({Status.EXPIRED, Status.TIMED_OUT})


def effect_of_result(current: Status, outcome: CommandOutcome) -> ResultEffect:
    """Decide what the car's `outcome` does to a command now in `current`."""
    rule = _RULES[outcome]
    if current in rule.apply_from:
        return ResultEffect.APPLY
    if current is rule.target or (current is Status.VERIFIED and rule.target is Status.EXECUTED):
        return ResultEffect.DUPLICATE
    if current in _GAVE_UP:
        return ResultEffect.LATE
    if outcome is CommandOutcome.ACCEPTED and current in (
        Status.EXECUTED,
        Status.FAILED,
        Status.VERIFIED,
    ):
        # Results can overtake each other (two gateway instances share the results).
        return ResultEffect.STALE
    return ResultEffect.CONFLICT


def allowed_sources(outcome: CommandOutcome) -> frozenset[Status]:
    """The states `outcome` may move a command out of (for conditional updates)."""
    return _RULES[outcome].apply_from


def target_status(outcome: CommandOutcome) -> Status:
    return _RULES[outcome].target
