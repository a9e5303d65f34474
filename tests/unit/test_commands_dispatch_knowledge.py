"""The dispatcher's knowledge of queued commands, from every instance's events (pure logic).

A freed car is dispatched to only if the events say it has a command waiting; while the hub
is not listening the dispatcher cannot tell (the database is asked), and a new LISTEN session
forgets what the old one said (events may have been missed in between).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

from prometheus_client import CollectorRegistry

from gateway.commands.dispatcher import CommandDispatcher
from gateway.commands.events import CommandEventHub
from gateway.commands.lifecycle import Status
from gateway.commands.metrics import CommandMetrics
from gateway.commands.models import CommandEvent
from gateway.config import CommandSettings
from schemas import CommandAction

CAR_A, CAR_B = "WBAUF11080E900001", "WBAUF11080E900002"


def _event(vin: str, command_id: uuid.UUID, status: Status) -> CommandEvent:
    return CommandEvent(
        transition_id=1,
        command_id=command_id,
        vin=vin,
        action=CommandAction.LOCK,
        status=status,
        at=datetime.now(UTC),
    )


def _dispatcher(hub: CommandEventHub | None) -> CommandDispatcher:
    nothing = cast(Any, None)  # store, signer, broker: not used by what is tested here
    metrics = CommandMetrics(CollectorRegistry())
    return CommandDispatcher(nothing, nothing, nothing, CommandSettings(), metrics, hub=hub)


def _listening(hub: CommandEventHub) -> None:
    hub.connections += 1
    hub.connected.set()


def test_a_freed_car_is_dispatched_to_only_with_a_command_waiting() -> None:
    hub = CommandEventHub("postgresql://unused")
    dispatcher = _dispatcher(hub)
    _listening(hub)
    assert dispatcher._which_waiting({CAR_A, CAR_B}) == set()
    first, second = uuid.uuid4(), uuid.uuid4()
    hub.publish(_event(CAR_A, first, Status.QUEUED))
    hub.publish(_event(CAR_A, second, Status.QUEUED))
    assert dispatcher._which_waiting({CAR_A, CAR_B}) == {CAR_A}
    hub.publish(_event(CAR_A, first, Status.SENT))
    assert dispatcher._which_waiting({CAR_A}) == {CAR_A}  # the second still waits
    hub.publish(_event(CAR_A, second, Status.EXPIRED))
    assert dispatcher._which_waiting({CAR_A}) == set()


def test_without_a_listening_hub_it_cannot_tell() -> None:
    assert _dispatcher(None)._which_waiting({CAR_A}) is None
    hub = CommandEventHub("postgresql://unused")
    dispatcher = _dispatcher(hub)
    assert dispatcher._which_waiting({CAR_A}) is None  # not listening yet
    _listening(hub)
    hub.publish(_event(CAR_A, uuid.uuid4(), Status.QUEUED))
    assert dispatcher._which_waiting({CAR_A}) == {CAR_A}
    hub.connected.clear()  # the LISTEN connection is lost: events may be missed
    assert dispatcher._which_waiting({CAR_A}) is None


def test_a_new_listen_session_forgets_what_the_old_one_said() -> None:
    hub = CommandEventHub("postgresql://unused")
    dispatcher = _dispatcher(hub)
    _listening(hub)
    hub.publish(_event(CAR_A, uuid.uuid4(), Status.QUEUED))
    assert dispatcher._which_waiting({CAR_A}) == {CAR_A}
    hub.connected.clear()
    _listening(hub)  # reconnected: its sent (or expiry) may have been missed meanwhile
    assert dispatcher._which_waiting({CAR_A}) == set()
