"""Test data for the insights: telemetry written straight into the database, with the truth.

Two sources:

- `ScriptedCar`: a hand-written day of one car (park, rent, drive so many km, ...), sampled
  like the in-car unit samples (every 5 s moving, every 300 s parked, at once on a change), so a
  test knows the exact trips, utilisation and wear figures to expect.
- `simulate_fleet`: cars driven by device_sim's own `CarBehaviour` (the model `tgw sim fleet`
  runs), sampled the same way, with a ledger of the true trips (ignition on and off, odometer).

`store` writes rows with COPY (telemetry, events, latest_state, vehicles), each with the
`received_at` the test chooses, the way the ingest writes them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from device_sim.driving import CITIES, CarBehaviour
from device_sim.ecu import VehicleState
from device_sim.identity import fleet_vins, make_vin

__all__ = [
    "FIXED_T0",
    "T0",
    "TELEMETRY_COLUMNS",
    "Event",
    "Sample",
    "ScriptedCar",
    "SimulatedFleet",
    "TrueTrip",
    "simulate_fleet",
    "store",
]

FIXED_T0 = datetime(2025, 3, 3, 6, 0, tzinfo=UTC)  # a Monday, 07:00 in Munich: golden files
# Recent data by default: utilisation runs up to now, so old data would make months of idle hours.
# A fixed hour of day (06:00 UTC, three days back) so no test's hours straddle midnight by chance
# of when the suite runs (a week cell of T0 + 2 h once failed at 22:00).
T0 = (datetime.now(UTC) - timedelta(days=3)).replace(hour=6, minute=0, second=0, microsecond=0)
TELEMETRY_COLUMNS = (
    "time", "vin", "boot_id", "seq", "received_at", "lat", "lon", "heading", "speed", "fuel",
    "soc", "odometer", "batt_v", "ignition", "locked", "door_fl_open", "door_fr_open",
    "door_rl_open", "door_rr_open", "trunk_open",
)  # fmt: skip
_SIGNALS = TELEMETRY_COLUMNS[5:]
_STATE_SIGNALS = ("ignition", "locked", "door_fl_open", "door_fr_open", "door_rl_open",
                  "door_rr_open", "trunk_open")  # fmt: skip
_DOOR_NAMES = {"door_fl_open": "fl", "door_fr_open": "fr", "door_rl_open": "rl",
               "door_rr_open": "rr", "trunk_open": "trunk"}  # fmt: skip
_M_PER_DEG_LAT = 111_320.0


@dataclass(slots=True)
class Sample:
    """One telemetry row."""

    time: datetime
    vin: str
    seq: int
    signals: dict[str, Any]
    boot_id: str = "boot-1"

    def row(self, received_at: datetime) -> tuple[Any, ...]:
        values = [self.signals.get(name) for name in _SIGNALS]
        return (self.time, self.vin, self.boot_id, self.seq, received_at, *values)


@dataclass(slots=True)
class Event:
    """One events row."""

    time: datetime
    vin: str
    seq: int
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    boot_id: str = "boot-1"


@dataclass(frozen=True, slots=True)
class TrueTrip:
    """A trip as the car really made it."""

    vin: str
    start: datetime
    end: datetime | None
    km: float


class _Sampler:
    """The in-car unit's sampling policy over a car's changing state (see device_sim.unit)."""

    def __init__(
        self,
        vin: str,
        *,
        energy: str = "fuel",
        driving_interval_s: float = 5.0,
        parked_interval_s: float = 300.0,
    ) -> None:
        self.vin = vin
        self.energy = energy
        self.driving_interval_s = driving_interval_s
        self.parked_interval_s = parked_interval_s
        self.samples: list[Sample] = []
        self.events: list[Event] = []
        self._seq = 0
        self._last_sample: float | None = None
        self._changed = False
        self._previous: dict[str, Any] | None = None

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def observe(self, at: datetime, t: float, signals: dict[str, Any]) -> None:
        """The state at time t (seconds since the start): events for what changed, samples due."""
        previous = self._previous
        if previous is not None:
            for name in _STATE_SIGNALS:
                if signals.get(name) != previous.get(name) and signals.get(name) is not None:
                    self._changed = True
                    self.events.append(_event_for(self.vin, at, self._next_seq(), name, signals))
        self._previous = dict(signals)
        moving = bool(signals.get("ignition")) or (signals.get("speed") or 0) > 0.5
        interval = self.driving_interval_s if moving else self.parked_interval_s
        wanted = 1.0 if self._changed else interval
        if self._last_sample is None or t >= self._last_sample + wanted - 1e-9:
            self.samples.append(Sample(at, self.vin, self._next_seq(), dict(signals)))
            self._last_sample = t
            self._changed = False

    def next_due(self, signals: dict[str, Any]) -> float:
        """The time the next sample is due if nothing changes."""
        if self._last_sample is None:
            return 0.0
        moving = bool(signals.get("ignition")) or (signals.get("speed") or 0) > 0.5
        interval = self.driving_interval_s if moving else self.parked_interval_s
        return self._last_sample + (1.0 if self._changed else interval)


def _event_for(vin: str, at: datetime, seq: int, name: str, signals: dict[str, Any]) -> Event:
    value = signals[name]
    if name == "ignition":
        return Event(at, vin, seq, "ignition_on" if value else "ignition_off")
    if name == "locked":
        return Event(at, vin, seq, "locked" if value else "unlocked", {"source": "unknown"})
    return Event(
        at, vin, seq, "door_opened" if value else "door_closed", {"door": _DOOR_NAMES[name]}
    )


# -- hand-written days ---------------------------------------------------------------------


class ScriptedCar:
    """One car's day, written step by step; every step advances the car's own clock.

    Positions move east along a straight line at the given speed, so a trip's GNSS track and its
    odometer agree; a trip of `km` kilometres adds exactly `km` to the odometer.
    """

    def __init__(
        self,
        vin: str,
        *,
        start: datetime = T0,
        lat: float = 48.137,
        lon: float = 11.575,
        fuel: float | None = 80.0,
        soc: float | None = None,
        odometer: float = 20_000.0,
        model: str = "tgw_generic",
        ignition: bool = True,
        driving_interval_s: float = 5.0,
    ) -> None:
        self.vin = vin
        self.model = model
        self.now = start
        self.start = start
        self.state: dict[str, Any] = {
            "lat": lat,
            "lon": lon,
            "heading": 90.0,
            "speed": 0.0,
            "fuel": fuel,
            "soc": soc,
            "odometer": odometer,
            "batt_v": 12.6,
            "ignition": False if ignition else None,
            "locked": True,
            "door_fl_open": False,
            "door_fr_open": False,
            "door_rl_open": False,
            "door_rr_open": False,
            "trunk_open": False,
        }
        self._sampler = _Sampler(vin, driving_interval_s=driving_interval_s)
        self.trips: list[TrueTrip] = []
        self._trip_start: tuple[datetime, float] | None = None
        self._observe()

    @property
    def samples(self) -> list[Sample]:
        return self._sampler.samples

    @property
    def events(self) -> list[Event]:
        return self._sampler.events

    def _t(self) -> float:
        return (self.now - self.start).total_seconds()

    def _observe(self) -> None:
        self._sampler.observe(self.now, self._t(), self.state)

    def _advance(self, seconds: float) -> None:
        """Let time pass without a change (parked samples fall due)."""
        end = self.now + timedelta(seconds=seconds)
        while True:
            due = self.start + timedelta(seconds=self._sampler.next_due(self.state))
            if due >= end:
                break  # a sample due right at the end is taken with whatever happens then
            self.now = max(due, self.now)
            self._observe()
        self.now = end

    def set(self, **signals: Any) -> ScriptedCar:
        """Change signals now (events and a sample follow as the unit would send them)."""
        self.state.update(signals)
        self._observe()
        return self

    def park(self, minutes: float) -> ScriptedCar:
        self._advance(minutes * 60)
        return self

    def wait(self, seconds: float) -> ScriptedCar:
        self._advance(seconds)
        return self

    def event(self, type_: str, **data: Any) -> ScriptedCar:
        self.events.append(Event(self.now, self.vin, self._sampler._next_seq(), type_, data))
        return self

    def rent(self) -> ScriptedCar:
        """Unlock, a door opens and closes, ignition on (or just unlock, without ignition)."""
        self.set(locked=False)
        if self.state["ignition"] is None:
            self._trip_start = (self.now, self.state["odometer"])
        self.wait(5)
        self.set(door_fl_open=True)
        self.wait(5)
        self.set(door_fl_open=False)
        self.wait(2)
        if self.state["ignition"] is not None:
            self.set(ignition=True, batt_v=14.1)
            self._trip_start = (self.now, self.state["odometer"])
        return self

    def drive(
        self,
        km: float,
        minutes: float,
        *,
        fuel_used: float = 0.0,
        brake_hard_at: Sequence[float] = (),
        accelerate_hard_at: Sequence[float] = (),
        door_ajar_at: Sequence[float] = (),
    ) -> ScriptedCar:
        """Drive `km` in `minutes` at a steady speed, one step per sampling interval.

        Hard braking (from speed to standstill within one second), hard acceleration and a
        door flapping open while moving happen at the given fractions of the drive (0..1).
        """
        steps = max(1, round(minutes * 60 / self._sampler.driving_interval_s))
        dt = minutes * 60 / steps
        speed = km / (minutes / 60)
        lat0, lon0, odometer0 = self.state["lat"], self.state["lon"], self.state["odometer"]
        energy = "fuel" if self.state["fuel"] is not None else "soc"
        level0 = self.state[energy]
        deg_per_km = 1000 / (_M_PER_DEG_LAT * _cos_deg(lat0))
        for i in range(steps):
            fraction = i / steps
            done = (i + 1) / steps
            self.now += timedelta(seconds=dt)
            self.state["odometer"] = round(odometer0 + km * done, 6)
            self.state["lon"] = lon0 + km * done * deg_per_km
            if level0 is not None:
                self.state[energy] = round(level0 - fuel_used * done, 6)
            self.state["speed"] = round(speed, 3)
            if any(abs(fraction - at) < 0.5 / steps for at in door_ajar_at):
                self.state["door_rr_open"] = True
                self._observe()
                self.now += timedelta(seconds=1)
                self.state["door_rr_open"] = False
            if any(abs(fraction - at) < 0.5 / steps for at in brake_hard_at):
                self._observe()
                self.now += timedelta(seconds=1)
                self.state["speed"] = 0.0
                self._sampler._changed = True  # the unit samples at once (a hard stop)
                self._observe()
                self.now += timedelta(seconds=1)
                self.state["speed"] = round(speed, 3)
            if any(abs(fraction - at) < 0.5 / steps for at in accelerate_hard_at):
                self.state["speed"] = 0.0
                self._sampler._changed = True
                self._observe()
                self.now += timedelta(seconds=1)
                self.state["speed"] = round(speed, 3)
                self._sampler._changed = True
            self._observe()
        # Slow to a stop by the next sample (not a hard stop), then stand a second.
        self.state["speed"] = 0.0
        self._advance(self._sampler.driving_interval_s + 1)
        return self

    def return_car(self) -> ScriptedCar:
        """Ignition off (the trip ends), a door opens and closes, lock."""
        self.state["speed"] = 0.0
        if self.state["ignition"] is not None:
            self.set(ignition=False, batt_v=12.6)
            self._end_trip()
        self.wait(5)
        self.set(door_fl_open=True)
        self.wait(5)
        self.set(door_fl_open=False)
        self.wait(5)
        self.set(locked=True)
        if self.state["ignition"] is None:
            self._end_trip()
        return self

    def _end_trip(self) -> None:
        assert self._trip_start is not None
        start, odometer = self._trip_start
        self.trips.append(
            TrueTrip(self.vin, start, self.now, round(self.state["odometer"] - odometer, 6))
        )
        self._trip_start = None


def _cos_deg(degrees: float) -> float:
    import math  # noqa: PLC0415  # only here

    return math.cos(math.radians(degrees))


# -- a simulated fleet -------------------------------------------------------------------------


@dataclass(slots=True)
class SimulatedFleet:
    """What `simulate_fleet` made: rows per car and the ledger of true trips."""

    models: dict[str, str]
    samples: list[Sample]
    events: list[Event]
    trips: list[TrueTrip]


def simulate_fleet(
    cars: int, hours: float, *, seed: int = 3, start: datetime = T0, driving_share: float = 0.35
) -> SimulatedFleet:
    """Cars driven by device_sim's CarBehaviour for `hours`, sampled like the in-car unit."""
    city = CITIES["munich"]
    profiles = ("tgw_generic", "bmw_e8x", "vw_mqb", "tgw_generic_ev")
    models: dict[str, str] = {}
    samples: list[Sample] = []
    events: list[Event] = []
    trips: list[TrueTrip] = []
    duration = hours * 3600
    for index, (vin, profile) in enumerate(fleet_vins(cars, seed, profiles)):
        models[vin] = profile
        energy = "soc" if profile.endswith("_ev") else "fuel"
        rng = random.Random(f"tgw-insights:{seed}:{index}")  # simulation
        state = VehicleState()
        behaviour = CarBehaviour(
            state, city, rng, energy=energy, driving_share=driving_share, start_driving=False
        )
        sampler = _Sampler(vin, energy=energy)
        t = 0.0
        last = 0.0
        next_step = 0.0
        trip_start: tuple[datetime, float] | None = None
        while t < duration:
            if t >= next_step - 1e-9:
                was_on = state.ignition
                wait = behaviour.advance(t - last)
                last = t
                next_step = t + max(wait, 1e-3)
                at = start + timedelta(seconds=round(t, 3))
                if state.ignition and not was_on:
                    trip_start = (at, state.odometer)
                elif was_on and not state.ignition and trip_start is not None:
                    trips.append(
                        TrueTrip(vin, trip_start[0], at, round(state.odometer - trip_start[1], 6))
                    )
                    trip_start = None
            signals = _signals(state, energy)
            at = start + timedelta(seconds=round(t, 3))
            sampler.observe(at, t, signals)
            t = max(min(next_step, sampler.next_due(signals)), t + 1e-3)
        if trip_start is not None:
            trips.append(TrueTrip(vin, trip_start[0], None, 0.0))
        samples += sampler.samples
        events += sampler.events
    return SimulatedFleet(models, samples, events, trips)


def _signals(state: VehicleState, energy: str) -> dict[str, Any]:
    values = state.wire_values()
    if energy == "soc":
        values["fuel"] = None
    else:
        values["soc"] = None
    return values


# -- writing -----------------------------------------------------------------------------------


async def store(
    dsn: str,
    samples: Iterable[Sample],
    events: Iterable[Event] = (),
    *,
    models: dict[str, str] | None = None,
    received_at: datetime | None = None,
    latest: bool = True,
) -> None:
    """Write rows as the ingest would (duplicates skipped); `received_at` defaults to the
    sample's own time plus a second. Updates latest_state and registers the cars."""
    samples = list(samples)
    events = list(events)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.cursor() as cur:
            await cur.execute(
                "CREATE TEMP TABLE stage_t (LIKE telemetry) ON COMMIT DROP; "
                "CREATE TEMP TABLE stage_e (LIKE events) ON COMMIT DROP"
            )
            async with cur.copy(
                f"COPY stage_t ({', '.join(TELEMETRY_COLUMNS)}) FROM STDIN"  # constant columns
            ) as copy:
                for sample in samples:
                    await copy.write_row(
                        sample.row(received_at or sample.time + timedelta(seconds=1))
                    )
            async with cur.copy(
                "COPY stage_e (time, vin, boot_id, seq, type, data, received_at) FROM STDIN"
            ) as copy:
                for event in events:
                    await copy.write_row(
                        (
                            event.time,
                            event.vin,
                            event.boot_id,
                            event.seq,
                            event.type,
                            json.dumps(event.data),
                            received_at or event.time + timedelta(seconds=1),
                        )
                    )
            await cur.execute(
                "INSERT INTO telemetry SELECT * FROM stage_t ON CONFLICT DO NOTHING; "
                "INSERT INTO events SELECT * FROM stage_e ON CONFLICT DO NOTHING"
            )
            vins = sorted({s.vin for s in samples} | set(models or {}))
            for vin in vins:
                await cur.execute(
                    "INSERT INTO vehicles (vin, model, online, last_seen_at, online_changed_at) "
                    "VALUES (%s, %s, true, now(), now()) ON CONFLICT (vin) DO UPDATE "
                    "SET model = coalesce(EXCLUDED.model, vehicles.model)",
                    (vin, (models or {}).get(vin)),
                )
            if latest:
                await _latest(cur)
        await conn.commit()


async def _latest(cur: psycopg.AsyncCursor[Any]) -> None:
    # The newest sample per car with every signal's newest non-null value, like the ingest.
    signals = ", ".join(
        f"(array_agg({name} ORDER BY time DESC) FILTER (WHERE {name} IS NOT NULL))[1]"
        for name in _SIGNALS
    )
    await cur.execute(
        f"""
        INSERT INTO latest_state (vin, time, boot_id, seq, {", ".join(_SIGNALS)})
        SELECT vin, max(time), (array_agg(boot_id ORDER BY time DESC))[1],
               (array_agg(seq ORDER BY time DESC))[1], {signals}
        FROM telemetry GROUP BY vin
        ON CONFLICT (vin) DO UPDATE SET
            time = EXCLUDED.time, boot_id = EXCLUDED.boot_id, seq = EXCLUDED.seq,
            {", ".join(f"{name} = EXCLUDED.{name}" for name in _SIGNALS)}
        """  # constant column names
    )


def vin(seed: int) -> str:
    """A valid made-up VIN, the same for the same seed."""
    return make_vin(random.Random(seed))  # test data
