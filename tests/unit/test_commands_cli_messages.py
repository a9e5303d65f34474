"""What `tgw lock` / `tgw unlock` print for a command's final state (pure formatting).

The events are built as the API sends them (`CommandEvent`, JSON), so the advice the CLI
prints is the API's `advice` field, the one source the console shows too.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.cli.commands_cmd import _outcome_message
from gateway.commands.lifecycle import Status
from gateway.commands.models import PRECONDITION_ADVICE, CommandEvent
from schemas import CommandAction, Precondition


def _rejected(*preconditions: str) -> dict[str, Any]:
    event = CommandEvent(
        transition_id=7,
        command_id=uuid.uuid4(),
        vin="WBAUF11080E900001",
        action=CommandAction.LOCK,
        status=Status.REJECTED,
        at=datetime.now(UTC),
        reason="precondition_failed",
        failed_preconditions=list(preconditions),
    )
    return event.model_dump(mode="json")


def test_the_api_advises_on_every_precondition() -> None:
    assert set(PRECONDITION_ADVICE) == {p.value for p in Precondition}


@pytest.mark.parametrize("precondition", list(Precondition))
def test_every_precondition_says_what_to_do(precondition: Precondition) -> None:
    message = _outcome_message(_rejected(precondition.value))
    assert message.startswith(f"rejected by the car: precondition_failed ({precondition.value}); ")
    assert "then try again" in message or "try again once" in message


def test_several_failed_preconditions_are_each_explained() -> None:
    message = _outcome_message(_rejected("doors_closed", "ignition_off"))
    assert "(doors_closed, ignition_off)" in message
    assert "a door is open" in message
    assert "the ignition is on" in message


def test_other_outcomes_keep_the_cars_detail() -> None:
    assert (
        _outcome_message({"status": "failed", "reason": "can_timeout", "detail": "no echo"})
        == "failed: can_timeout: no echo"
    )
    assert _outcome_message({"status": "expired", "reason": "expired"}) == "expired: expired"
