"""What `tgw lock` / `tgw unlock` print for a command's final state (pure formatting)."""

from __future__ import annotations

import pytest

from gateway.cli.commands_cmd import _outcome_message
from schemas import Precondition


@pytest.mark.parametrize("precondition", list(Precondition))
def test_every_precondition_says_what_to_do(precondition: Precondition) -> None:
    message = _outcome_message(
        {
            "status": "rejected",
            "reason": "precondition_failed",
            "failed_preconditions": [precondition.value],
        }
    )
    assert message.startswith(f"rejected by the car: precondition_failed ({precondition.value}); ")
    assert "then try again" in message or "try again once" in message


def test_several_failed_preconditions_are_each_explained() -> None:
    message = _outcome_message(
        {
            "status": "rejected",
            "reason": "precondition_failed",
            "failed_preconditions": ["doors_closed", "ignition_off"],
        }
    )
    assert "(doors_closed, ignition_off)" in message
    assert "a door is open" in message
    assert "the ignition is on" in message


def test_other_outcomes_keep_the_cars_detail() -> None:
    assert (
        _outcome_message({"status": "failed", "reason": "can_timeout", "detail": "no echo"})
        == "failed: can_timeout: no echo"
    )
    assert _outcome_message({"status": "expired", "reason": "expired"}) == "expired: expired"
