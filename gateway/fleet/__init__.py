"""The fleet as operators see it: latest state per car, alerts, history, events, dead letters.

- `FleetStore`: the SQL behind the fleet API (both storage modes; downsampling with
  `time_bucket` on TimescaleDB, `date_bin` on plain PostgreSQL).
- `FleetFeed`: one poller per gateway that turns database changes into live updates for every
  console and terminal watching (server-sent events).
- `alerts_for`: which alerts a car's state raises (offline, low fuel/charge, door open while
  parked, low 12 V battery), pure.
"""

from gateway.fleet.alerts import ALERT_KINDS, AlertKind, alerts_for
from gateway.fleet.feed import FleetFeed, FleetUpdate
from gateway.fleet.models import (
    Alert,
    DeadLetter,
    DeadLetterPage,
    EventPage,
    EventRecord,
    TelemetryHistory,
    TelemetryPoint,
    VehicleFilter,
    VehiclePage,
    VehicleState,
)
from gateway.fleet.store import FleetStore, HistoryRange

__all__ = [
    "ALERT_KINDS",
    "Alert",
    "AlertKind",
    "DeadLetter",
    "DeadLetterPage",
    "EventPage",
    "EventRecord",
    "FleetFeed",
    "FleetStore",
    "FleetUpdate",
    "HistoryRange",
    "TelemetryHistory",
    "TelemetryPoint",
    "VehicleFilter",
    "VehiclePage",
    "VehicleState",
    "alerts_for",
]
