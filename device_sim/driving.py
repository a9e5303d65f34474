"""How a simulated shared car lives: rentals and drives on a street grid around a city centre.

Pure and deterministic: `CarBehaviour.advance(dt)` moves one car's `VehicleState` on by
`dt` seconds using only its own random generator, so a fleet with the same seed drives
the same way (given the same steps).

A rental: unlock, a door opens and closes, ignition on, a drive of a few kilometres along
the grid (30 km/h streets, 50 km/h main roads every few blocks, traffic lights), ignition
off, a door (sometimes the trunk) opens and closes, lock. Parked cars wait for the next
rental; the service crew refuels (or charges) cars that run low.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from device_sim.ecu import VehicleState

__all__ = ["CITIES", "CarBehaviour", "City", "Phase"]

_M_PER_DEG_LAT = 111_320.0
_KMH = 1 / 3.6
_FUEL_PCT_PER_KM = 0.14  # 7 l/100 km from a 50 l tank
_SOC_PCT_PER_KM = 0.32  # 16 kWh/100 km from a 50 kWh battery
_IDLE_PCT_PER_S = 0.0002


@dataclass(frozen=True, slots=True)
class City:
    """A square street grid centred on a real city centre.

    Args:
        center: (lat, lon) of the centre.
        block_m: distance between intersections.
        radius_blocks: the grid reaches this many blocks from the centre each way.
        main_every: every n-th street is a main road (50 km/h instead of 30).
    """

    name: str
    center: tuple[float, float]
    block_m: float = 200.0
    radius_blocks: int = 30
    main_every: int = 5

    def position(self, x: float, y: float) -> tuple[float, float]:
        """(lat, lon) of grid coordinates (in blocks east and north of the centre)."""
        lat0, lon0 = self.center
        lat = lat0 + y * self.block_m / _M_PER_DEG_LAT
        lon = lon0 + x * self.block_m / (_M_PER_DEG_LAT * math.cos(math.radians(lat0)))
        return round(lat, 7), round(lon, 7)

    def random_node(self, rng: random.Random) -> tuple[int, int]:
        r = self.radius_blocks
        return rng.randint(-r, r), rng.randint(-r, r)

    def speed_limit_kmh(self, a: tuple[int, int], b: tuple[int, int]) -> float:
        # A street along x keeps y; it is a main road when that y is on the main grid.
        line = a[1] if a[1] == b[1] else a[0]
        return 50.0 if line % self.main_every == 0 else 30.0


CITIES = {"munich": City("munich", center=(48.137154, 11.576124))}  # Marienplatz


class Phase(Enum):
    PARKED = "parked"
    BOARDING = "boarding"
    DRIVING = "driving"
    ALIGHTING = "alighting"


@dataclass(slots=True)
class _Route:
    nodes: list[tuple[int, int]]
    index: int = 0  # driving from nodes[index] to nodes[index + 1]
    progress_m: float = 0.0


class CarBehaviour:
    """The renters and the service crew of one car.

    Args:
        state: the car's state (mutated in place).
        city: where it drives.
        rng: its own random source (seed it for determinism).
        energy: "fuel" or "soc": which level drives and refuels.
        driving_share: long-run share of time spent driving (parking times follow from it).
        start_driving: begin in the middle of a rental (else parked, part-way through a wait).
    """

    def __init__(
        self,
        state: VehicleState,
        city: City,
        rng: random.Random,
        *,
        energy: str = "fuel",
        driving_share: float = 0.35,
        start_driving: bool = False,
    ) -> None:
        self.state = state
        self.city = city
        self.rng = rng
        self.energy = energy
        self.trips = 0
        self._mean_trip_s = 420.0  # what _plan_route's 1-5 km trips take on average
        share = min(max(driving_share, 0.01), 0.99)
        self._mean_parked_s = self._mean_trip_s * (1 - share) / share
        self._script: deque[tuple[float, Callable[[], None]]] = deque()
        self._wait_s = 0.0
        self._route: _Route | None = None
        self._stop_s = 0.0  # waiting at a red light
        self._node = city.random_node(rng)
        lat, lon = city.position(*self._node)
        state.lat, state.lon = lat, lon
        state.heading = 0.0
        state.fuel = rng.uniform(30, 95)
        state.soc = rng.uniform(30, 95)
        state.odometer = round(rng.uniform(5_000, 120_000), 1)
        if start_driving:
            self._start_driving()
            self.phase = Phase.DRIVING
        else:
            self._park(rng.uniform(0, 2 * self._mean_parked_s))

    def advance(self, dt: float) -> float:
        """Move the car on by `dt` seconds; return the seconds until it next needs a step."""
        if self.phase is Phase.DRIVING:
            self._drive(dt)
            return 1.0 if self.phase is Phase.DRIVING else self._wait_s
        self._wait_s -= dt
        while self._wait_s <= 0:
            if self._script:
                delay, action = self._script.popleft()
                action()
                self._wait_s += delay
            elif self.phase is Phase.PARKED:
                self._board()
            else:
                break
            if self.driving:
                return 1.0
        return max(self._wait_s, 0.0)

    @property
    def driving(self) -> bool:
        return self.phase is Phase.DRIVING

    # -- rentals ------------------------------------------------------------------------------

    def _park(self, wait_s: float) -> None:
        self.phase = Phase.PARKED
        self._wait_s = wait_s
        state = self.state
        state.speed = 0.0
        state.batt_v = 12.6
        if self.energy == "fuel" and state.fuel < 15:
            self._script.append((self.rng.uniform(600, 1800), self._refuel))
        if self.energy == "soc" and state.soc < 25:
            self._script.append((self.rng.uniform(600, 1800), self._charge))

    def _refuel(self) -> None:
        self.state.fuel = round(self.rng.uniform(90, 100), 1)

    def _charge(self) -> None:
        self.state.soc = round(self.rng.uniform(80, 95), 1)

    def _board(self) -> None:
        rng, state = self.rng, self.state
        self.phase = Phase.BOARDING
        self._script.clear()
        steps: list[tuple[float, Callable[[], None]]] = [
            (rng.uniform(5, 20), lambda: setattr(state, "locked", False)),
            (rng.uniform(3, 8), lambda: setattr(state, "door_fl_open", True)),
            (rng.uniform(3, 10), lambda: setattr(state, "door_fl_open", False)),
            (0.0, self._start_driving),
        ]
        self._script.extend(steps)
        self._wait_s = 0.0

    def _start_driving(self) -> None:
        state = self.state
        state.locked = False
        state.ignition = True
        state.batt_v = 14.1
        state.immobilized = False
        self.phase = Phase.DRIVING
        self._route = self._plan_route()
        self.trips += 1

    def _alight(self) -> None:
        rng, state = self.rng, self.state
        self.phase = Phase.ALIGHTING
        state.speed = 0.0
        state.ignition = False
        state.batt_v = 12.6
        steps: list[tuple[float, Callable[[], None]]] = [
            (rng.uniform(3, 10), lambda: setattr(state, "door_fl_open", True)),
        ]
        if rng.random() < 0.2:
            steps += [
                (rng.uniform(2, 5), lambda: setattr(state, "trunk_open", True)),
                (rng.uniform(5, 15), lambda: setattr(state, "trunk_open", False)),
            ]
        steps += [
            (rng.uniform(3, 8), lambda: setattr(state, "door_fl_open", False)),
            (rng.uniform(5, 20), self._lock_and_park),
        ]
        self._script.clear()
        self._script.extend(steps)
        self._wait_s = 0.0

    def _lock_and_park(self) -> None:
        self.state.locked = True
        self.state.immobilized = True
        self._park(self.rng.expovariate(1 / self._mean_parked_s))

    # -- driving ------------------------------------------------------------------------------

    def _plan_route(self) -> _Route:
        rng, city = self.rng, self.city
        x, y = self._node
        r = city.radius_blocks
        # A destination 5-25 blocks away (1-5 km), inside the grid.
        while True:
            dx, dy = rng.randint(-25, 25), rng.randint(-25, 25)
            if 5 <= abs(dx) + abs(dy) <= 25 and abs(x + dx) <= r and abs(y + dy) <= r:
                break
        nodes = [(x, y)]
        tx, ty = x + dx, y + dy
        while (x, y) != (tx, ty):
            go_x = x != tx and (y == ty or rng.random() < 0.5)
            if go_x:
                x += 1 if tx > x else -1
            else:
                y += 1 if ty > y else -1
            nodes.append((x, y))
        return _Route(nodes)

    def _drive(self, dt: float) -> None:
        route, state, rng = self._route, self.state, self.rng
        assert route is not None
        self._use_energy(0.0, dt)
        if self._stop_s > 0:
            self._stop_s -= dt
            state.speed = 0.0
            return
        a, b = route.nodes[route.index], route.nodes[route.index + 1]
        limit = self.city.speed_limit_kmh(a, b)
        turning = route.index + 2 < len(route.nodes) and _direction(a, b) != _direction(
            b, route.nodes[route.index + 2]
        )
        slowing = turning or route.index + 2 == len(route.nodes)
        remaining = self.city.block_m - route.progress_m
        target = min(limit, 20.0) if slowing and remaining < 40 else limit
        speed_ms = state.speed * _KMH
        step = max(-3.0 * dt, min(2.0 * dt, target * _KMH - speed_ms))
        speed_ms = max(0.0, speed_ms + step)
        distance = speed_ms * dt
        state.speed = round(speed_ms / _KMH, 2)
        state.heading = _direction(a, b)
        route.progress_m += distance
        state.odometer = round(state.odometer + distance / 1000, 3)
        self._use_energy(distance / 1000, 0.0)
        if route.progress_m >= self.city.block_m:
            route.progress_m -= self.city.block_m
            route.index += 1
            self._node = route.nodes[route.index]
            if route.index + 1 >= len(route.nodes):
                state.lat, state.lon = self.city.position(*self._node)
                self._route = None
                self._alight()
                return
            if rng.random() < 0.25:  # a red light at this intersection
                self._stop_s = rng.uniform(5, 40)
                state.speed = 0.0
                route.progress_m = 0.0
            a, b = route.nodes[route.index], route.nodes[route.index + 1]
        fraction = route.progress_m / self.city.block_m
        state.lat, state.lon = self.city.position(
            a[0] + (b[0] - a[0]) * fraction, a[1] + (b[1] - a[1]) * fraction
        )

    def _use_energy(self, km: float, idle_s: float) -> None:
        state = self.state
        if self.energy == "soc":
            state.soc = max(0.0, state.soc - km * _SOC_PCT_PER_KM)
        else:
            state.fuel = max(0.0, state.fuel - km * _FUEL_PCT_PER_KM - idle_s * _IDLE_PCT_PER_S)


def _direction(a: tuple[int, int], b: tuple[int, int]) -> float:
    if b[1] > a[1]:
        return 0.0
    if b[0] > a[0]:
        return 90.0
    if b[1] < a[1]:
        return 180.0
    return 270.0
