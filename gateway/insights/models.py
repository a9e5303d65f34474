"""What the insights API answers with (pydantic models; docs/insights.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DistanceCheck",
    "HourCell",
    "Place",
    "RefreshResult",
    "ServiceItem",
    "ServiceKind",
    "ServiceList",
    "ServiceReason",
    "ServiceRoute",
    "TrackPoint",
    "Trip",
    "TripPage",
    "Utilisation",
    "UtilisationGroup",
    "UtilisationGrouping",
    "UtilisationSort",
    "WearCounts",
    "WearGrouping",
    "WearReport",
    "WearRow",
]

DistanceCheck = Literal["ok", "mismatch", "odometer_only", "gnss_only", "unknown"]
UtilisationGrouping = Literal["car", "model", "cell", "area"]
# The order of `Utilisation.groups`: most rented first, or (per car) longest idle first.
UtilisationSort = Literal["rented", "idle"]
WearGrouping = Literal["car", "model"]
ServiceKind = Literal[
    "low_fuel", "low_charge", "low_battery", "door_open_parked", "not_rented", "offline"
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Place(_Model):
    """A position, WGS 84 degrees."""

    lat: float
    lon: float


class TrackPoint(_Model):
    time: datetime
    lat: float
    lon: float
    speed: float | None = None


class Trip(_Model):
    """One trip: ignition on to off (or unlock to lock, for a car without ignition)."""

    id: str = Field(description="The trip's start as epoch milliseconds: /trips/{id}.")
    vin: str
    model: str | None = None
    start_time: datetime
    end_time: datetime | None = Field(description="None while the trip is under way.")
    in_progress: bool
    detected_by: Literal["ignition", "lock"]
    start: Place | None = None
    end: Place | None = Field(default=None, description="Where it ended (or is now).")
    duration_s: float | None = None
    distance_km: float = Field(description="Odometer difference; the GNSS track's length when "
                               "the car reports no odometer.")  # fmt: skip
    odometer_km: float | None = None
    gnss_km: float
    distance_check: DistanceCheck
    fuel_used_pct: float | None = None
    charge_used_pct: float | None = None
    max_speed: float | None = None
    samples: int
    harsh_brakes: int
    harsh_accels: int
    door_ajar: int
    track: list[TrackPoint] | None = None


class TripPage(_Model):
    items: list[Trip]
    next_cursor: str | None = None


class UtilisationGroup(_Model):
    """Utilisation of one car, model, grid cell or operating area over the range."""

    key: str
    label: str
    cars: float = Field(
        description="A car: 1; a model: the most of its cars present in one hour; a cell or "
        "area: the cars there on average (rented from there or standing there)."
    )
    rented_s: float
    idle_s: float
    rented_share: float | None = Field(description="rented / (rented + idle) time.")
    trips: int
    trips_per_day: float | None = Field(description="Trips per day of the range.")
    trips_per_car_day: float | None = Field(description="Trips per day a car was available.")
    km: float
    # A car's:
    model: str | None = None
    last_trip_end: datetime | None = None
    idle_since_s: float | None = Field(
        default=None, description="Seconds since its last trip ended (0 while rented)."
    )
    # A grid cell's corners: [south, west, north, east].
    bounds: list[float] | None = None


class HourCell(_Model):
    """Utilisation in one local hour of the week (day 1 = Monday ... 7 = Sunday)."""

    day: int
    hour: int
    rented_share: float | None
    trips: int


class Utilisation(_Model):
    start: datetime
    end: datetime
    tz: str
    group_by: UtilisationGrouping
    refreshed_at: datetime | None = Field(description="Figures include data up to this time.")
    total: UtilisationGroup = Field(description="Every group of the selection together.")
    groups_total: int = Field(description="How many groups there are; `groups` is one page.")
    groups: list[UtilisationGroup]
    by_hour: list[HourCell] = Field(description="24 hours, every day of the range together.")
    by_weekday: list[HourCell] = Field(description="7 days, all hours together (hour = -1).")
    week: list[HourCell] = Field(description="7 x 24: day of week by hour of day.")


class ServiceReason(_Model):
    kind: ServiceKind
    message: str


class ServiceItem(_Model):
    """A car that needs the crew, with every reason and where it stands."""

    vin: str
    model: str | None = None
    lat: float | None = None
    lon: float | None = None
    fuel: float | None = None
    soc: float | None = None
    batt_v: float | None = None
    last_seen_at: datetime | None = None
    idle_s: float | None = None
    offline_s: float | None = None
    reasons: list[ServiceReason]
    stop: int | None = Field(default=None, description="Position in the refuelling route (1..).")
    leg_km: float | None = None
    cumulative_km: float | None = None


class ServiceRoute(_Model):
    """The refuelling/charging round: nearest neighbour from `start`, improved by 2-opt."""

    start: Place
    stops: list[str] = Field(description="VINs in driving order.")
    total_km: float


class ServiceList(_Model):
    generated_at: datetime
    thresholds: dict[str, float]
    items: list[ServiceItem] = Field(
        description="Route stops first, in driving order; then the rest, most reasons first."
    )
    route: ServiceRoute | None = None


class WearCounts(_Model):
    door_ajar: int = 0
    low_voltage: int = 0
    harsh_braking: int = 0
    harsh_acceleration: int = 0
    signal_out_of_range: int = 0
    command_failed: int = 0


class WearRow(_Model):
    """Wear and misuse of one car or one model over the range."""

    key: str
    model: str | None = None
    cars: int
    trips: int
    km: float
    counts: WearCounts
    per_1000_km: dict[str, float | None] = Field(description="Each count per 1,000 km driven.")


class WearReport(_Model):
    start: datetime
    end: datetime
    group_by: WearGrouping
    rows: list[WearRow]
    fleet: WearRow


class RefreshResult(_Model):
    """What an on-demand refresh did."""

    skipped: bool
    rebuild: bool
    cars: int
    cars_continued: int = Field(
        description="Of `cars`: open trips continued with only their new samples."
    )
    trips_deleted: int
    trips_written: int
    utilisation_rows: int
    duration_s: float
    refreshed_at: datetime | None
