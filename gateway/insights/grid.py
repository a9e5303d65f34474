"""The grid that utilisation is counted on, and distances on the Earth's surface.

Cells are fixed in degrees so that a cell's number never depends on the city or the data:
`floor(lat / CELL_LAT_DEG)`, `floor(lon / CELL_LON_DEG)`. At Munich's latitude a cell is about
1.1 km by 1.1 km. Changing the size needs a rebuild of `utilisation_hourly` (cells are stored).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CELL_LAT_DEG",
    "CELL_LON_DEG",
    "EARTH_RADIUS_KM",
    "Cell",
    "cell_of",
    "haversine_km",
    "point_in_polygon",
]

CELL_LAT_DEG: Final = 0.01
CELL_LON_DEG: Final = 0.015
EARTH_RADIUS_KM: Final = 6371.0088  # mean radius (IUGG)


@dataclass(frozen=True, slots=True)
class Cell:
    """One grid cell: its indices and its corners (WGS 84 degrees)."""

    y: int
    x: int

    @property
    def key(self) -> str:
        """A stable name for the API: `y:x`."""
        return f"{self.y}:{self.x}"

    @property
    def south(self) -> float:
        return round(self.y * CELL_LAT_DEG, 6)

    @property
    def north(self) -> float:
        return round((self.y + 1) * CELL_LAT_DEG, 6)

    @property
    def west(self) -> float:
        return round(self.x * CELL_LON_DEG, 6)

    @property
    def east(self) -> float:
        return round((self.x + 1) * CELL_LON_DEG, 6)

    @property
    def center(self) -> tuple[float, float]:
        """(lat, lon) of the cell's centre."""
        return (self.south + self.north) / 2, (self.west + self.east) / 2


def cell_of(lat: float, lon: float) -> Cell:
    """The cell a position lies in (the same rule as the SQL: floor of degrees / size)."""
    return Cell(math.floor(lat / CELL_LAT_DEG), math.floor(lon / CELL_LON_DEG))


def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lon) points, in km."""
    lat1, lon1 = map(math.radians, a)
    lat2, lon2 = map(math.radians, b)
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def point_in_polygon(lat: float, lon: float, polygon: list[tuple[float, float]]) -> bool:
    """Whether (lat, lon) lies inside `polygon` (vertices [lon, lat], as in the settings)."""
    inside = False
    count = len(polygon)
    for i in range(count):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % count]
        if (y1 > lat) != (y2 > lat):
            crossing = x1 + (lat - y1) * (x2 - x1) / (y2 - y1)
            if lon < crossing:
                inside = not inside
    return inside
