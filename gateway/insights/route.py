"""A sensible order for a service crew: nearest neighbour from the start, then 2-opt.

Distances are great-circle kilometres (the crew drives streets, but the order that is short
as the crow flies is short on the road too, for stops spread over one city). Nearest neighbour
alone leaves crossings; 2-opt removes them until no swap of two legs shortens the route (or a
time budget of passes is used up), which for tens of stops takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.insights.grid import haversine_km

__all__ = ["RouteStop", "plan_route"]

_MAX_PASSES = 50


@dataclass(frozen=True, slots=True)
class RouteStop:
    """One stop of the route, in driving order."""

    index: int  # position of the stop in the input
    leg_km: float  # from the previous stop (or the start)
    cumulative_km: float


def plan_route(
    start: tuple[float, float], stops: Sequence[tuple[float, float]], *, improve: bool = True
) -> list[RouteStop]:
    """Order `stops` (lat, lon) into a short open route beginning at `start`.

    Args:
        start: where the crew sets out (lat, lon).
        stops: the places to visit.
        improve: run 2-opt after nearest neighbour (off: nearest neighbour only).

    Returns:
        Every stop once, in visiting order, with leg and cumulative distances. Ties are broken by
        input order, so the same input always gives the same route.
    """
    if not stops:
        return []
    remaining = list(range(len(stops)))
    order: list[int] = []
    here = start
    while remaining:
        best = min(remaining, key=lambda i: (haversine_km(here, stops[i]), i))
        remaining.remove(best)
        order.append(best)
        here = stops[best]
    if improve:
        order = _two_opt(start, stops, order)
    result: list[RouteStop] = []
    total = 0.0
    here = start
    for index in order:
        leg = haversine_km(here, stops[index])
        total += leg
        result.append(RouteStop(index=index, leg_km=round(leg, 3), cumulative_km=round(total, 3)))
        here = stops[index]
    return result


def _two_opt(
    start: tuple[float, float], stops: Sequence[tuple[float, float]], order: list[int]
) -> list[int]:
    points = [start, *(stops[i] for i in order)]
    ids = [-1, *order]
    count = len(points)

    def dist(a: int, b: int) -> float:
        return haversine_km(points[ids_pos[a]], points[ids_pos[b]])

    ids_pos = list(range(count))  # route position -> index into points
    for _ in range(_MAX_PASSES):
        improved = False
        for i in range(1, count - 1):
            for j in range(i + 1, count):
                # Reverse positions i..j: legs (i-1, i) and (j, j+1) become (i-1, j), (i, j+1).
                before = dist(i - 1, i) + (dist(j, j + 1) if j + 1 < count else 0.0)
                after = dist(i - 1, j) + (dist(i, j + 1) if j + 1 < count else 0.0)
                if after < before - 1e-9:
                    ids_pos[i : j + 1] = reversed(ids_pos[i : j + 1])
                    improved = True
        if not improved:
            break
    return [ids[pos] for pos in ids_pos[1:]]
