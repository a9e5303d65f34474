"""Write the console's offline base layer: a simplified sketch of Munich as GeoJSON.

    .venv/bin/python scripts/make_munich_basemap.py   # -> gateway/web/static/munich.json

No tile server and no download: the waypoints below are drawn by hand from general knowledge of
the city (the Isar, the Altstadtring, the Mittlerer Ring, the main radial roads, the railway
west of the Hauptbahnhof, the large parks, district names). They are approximate (about 100 to
300 m), good enough to orient an operator, not for navigation. Lines are smoothed with Chaikin's
corner cutting and rounded to 5 decimals (about 1 m) to keep the file small.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "gateway" / "web" / "static" / "munich.json"

LatLon = tuple[float, float]

# (name, kind, closed, [(lat, lon), ...])
LINES: list[tuple[str, str, bool, list[LatLon]]] = [
    (
        "Isar",
        "river",
        False,
        [
            (48.0600, 11.5460),
            (48.0760, 11.5500),
            (48.0900, 11.5530),
            (48.0990, 11.5560),
            (48.1080, 11.5590),
            (48.1170, 11.5660),
            (48.1250, 11.5760),
            (48.1300, 11.5830),
            (48.1340, 11.5880),
            (48.1380, 11.5930),
            (48.1440, 11.5960),
            (48.1530, 11.6020),
            (48.1620, 11.6080),
            (48.1720, 11.6150),
            (48.1850, 11.6210),
            (48.2000, 11.6300),
        ],
    ),
    (
        "Altstadtring",
        "ring",
        True,
        [
            (48.1390, 11.5655),
            (48.1340, 11.5670),
            (48.1318, 11.5745),
            (48.1345, 11.5830),
            (48.1385, 11.5855),
            (48.1428, 11.5858),
            (48.1447, 11.5800),
            (48.1442, 11.5720),
            (48.1420, 11.5680),
        ],
    ),
    (
        "Mittlerer Ring",
        "ring",
        True,
        [
            (48.1775, 11.5300),
            (48.1782, 11.5480),
            (48.1780, 11.5650),
            (48.1745, 11.5830),
            (48.1690, 11.5950),
            (48.1640, 11.6020),
            (48.1560, 11.6150),
            (48.1450, 11.6180),
            (48.1340, 11.6150),
            (48.1240, 11.6180),
            (48.1130, 11.6150),
            (48.1070, 11.6050),
            (48.1050, 11.5850),
            (48.1080, 11.5650),
            (48.1120, 11.5450),
            (48.1150, 11.5250),
            (48.1230, 11.5150),
            (48.1350, 11.5140),
            (48.1480, 11.5230),
            (48.1620, 11.5300),
        ],
    ),
    (
        "Ludwigstraße / Leopoldstraße",
        "main",
        False,
        [
            (48.1425, 11.5775),
            (48.1480, 11.5800),
            (48.1525, 11.5820),
            (48.1617, 11.5862),
            (48.1700, 11.5880),
            (48.1780, 11.5900),
            (48.1900, 11.5930),
        ],
    ),
    (
        "Landsberger Straße",
        "main",
        False,
        [
            (48.1400, 11.5560),
            (48.1410, 11.5360),
            (48.1420, 11.5150),
            (48.1425, 11.5000),
            (48.1440, 11.4800),
            (48.1450, 11.4650),
        ],
    ),
    (
        "Nymphenburger Straße",
        "main",
        False,
        [
            (48.1460, 11.5600),
            (48.1500, 11.5450),
            (48.1530, 11.5330),
            (48.1560, 11.5180),
            (48.1580, 11.5050),
        ],
    ),
    (
        "Dachauer Straße",
        "main",
        False,
        [
            (48.1440, 11.5610),
            (48.1530, 11.5500),
            (48.1620, 11.5400),
            (48.1720, 11.5280),
            (48.1820, 11.5180),
            (48.1950, 11.5100),
        ],
    ),
    (
        "Schleißheimer Straße",
        "main",
        False,
        [
            (48.1470, 11.5650),
            (48.1560, 11.5660),
            (48.1660, 11.5660),
            (48.1760, 11.5640),
            (48.1880, 11.5600),
        ],
    ),
    (
        "Lindwurmstraße",
        "main",
        False,
        [
            (48.1340, 11.5670),
            (48.1290, 11.5570),
            (48.1240, 11.5470),
            (48.1180, 11.5370),
            (48.1100, 11.5270),
            (48.1020, 11.5180),
        ],
    ),
    (
        "Rosenheimer Straße",
        "main",
        False,
        [
            (48.1330, 11.5870),
            (48.1290, 11.5950),
            (48.1250, 11.6050),
            (48.1200, 11.6180),
            (48.1150, 11.6320),
            (48.1090, 11.6500),
        ],
    ),
    (
        "Prinzregentenstraße",
        "main",
        False,
        [
            (48.1435, 11.5830),
            (48.1428, 11.5900),
            (48.1420, 11.5950),
            (48.1400, 11.6050),
            (48.1385, 11.6180),
            (48.1375, 11.6320),
        ],
    ),
    (
        "Tegernseer Landstraße",
        "main",
        False,
        [
            (48.1300, 11.5830),
            (48.1220, 11.5830),
            (48.1120, 11.5800),
            (48.1000, 11.5790),
            (48.0880, 11.5800),
            (48.0750, 11.5850),
        ],
    ),
    (
        "Wasserburger Landstraße",
        "main",
        False,
        [
            (48.1250, 11.6180),
            (48.1230, 11.6350),
            (48.1210, 11.6550),
        ],
    ),
    (
        "Ungererstraße",
        "main",
        False,
        [
            (48.1617, 11.5862),
            (48.1700, 11.5950),
            (48.1800, 11.6020),
            (48.1920, 11.6080),
        ],
    ),
    (
        "Fürstenrieder Straße",
        "main",
        False,
        [
            (48.1420, 11.5000),
            (48.1300, 11.5010),
            (48.1180, 11.5030),
            (48.1050, 11.5060),
        ],
    ),
    (
        "Railway",
        "rail",
        False,
        [
            (48.1405, 11.5600),
            (48.1415, 11.5450),
            (48.1425, 11.5300),
            (48.1440, 11.5100),
            (48.1470, 11.4850),
            (48.1500, 11.4620),
        ],
    ),
]

AREAS: list[tuple[str, str, list[LatLon]]] = [
    (
        "Englischer Garten",
        "park",
        [
            (48.1435, 11.5830),
            (48.1430, 11.5900),
            (48.1500, 11.5960),
            (48.1600, 11.6030),
            (48.1700, 11.6080),
            (48.1800, 11.6100),
            (48.1880, 11.6050),
            (48.1860, 11.5980),
            (48.1750, 11.5950),
            (48.1650, 11.5920),
            (48.1550, 11.5890),
            (48.1480, 11.5850),
        ],
    ),
    (
        "Theresienwiese",
        "park",
        [
            (48.1345, 11.5440),
            (48.1345, 11.5530),
            (48.1320, 11.5560),
            (48.1290, 11.5530),
            (48.1285, 11.5460),
            (48.1310, 11.5430),
        ],
    ),
    (
        "Olympiapark",
        "park",
        [
            (48.1700, 11.5420),
            (48.1700, 11.5600),
            (48.1780, 11.5620),
            (48.1800, 11.5450),
        ],
    ),
    (
        "Schlosspark Nymphenburg",
        "park",
        [
            (48.1540, 11.4930),
            (48.1560, 11.5040),
            (48.1640, 11.5040),
            (48.1650, 11.4800),
            (48.1560, 11.4790),
        ],
    ),
    (
        "Westpark",
        "park",
        [
            (48.1240, 11.5000),
            (48.1240, 11.5300),
            (48.1195, 11.5300),
            (48.1200, 11.5000),
        ],
    ),
    (
        "Hirschgarten",
        "park",
        [
            (48.1520, 11.5080),
            (48.1520, 11.5200),
            (48.1480, 11.5200),
            (48.1480, 11.5080),
        ],
    ),
    (
        "Ostpark",
        "park",
        [
            (48.1150, 11.6220),
            (48.1150, 11.6380),
            (48.1080, 11.6380),
            (48.1080, 11.6220),
        ],
    ),
    (
        "Luitpoldpark",
        "park",
        [
            (48.1720, 11.5680),
            (48.1720, 11.5780),
            (48.1670, 11.5780),
            (48.1670, 11.5680),
        ],
    ),
]

LABELS: list[tuple[str, str, LatLon]] = [
    ("Marienplatz", "place", (48.1374, 11.5755)),
    ("Maxvorstadt", "district", (48.1500, 11.5700)),
    ("Schwabing", "district", (48.1650, 11.5800)),
    ("Haidhausen", "district", (48.1300, 11.6000)),
    ("Au", "district", (48.1240, 11.5850)),
    ("Giesing", "district", (48.1100, 11.5850)),
    ("Sendling", "district", (48.1180, 11.5400)),
    ("Westend", "district", (48.1350, 11.5350)),
    ("Neuhausen", "district", (48.1550, 11.5350)),
    ("Bogenhausen", "district", (48.1500, 11.6150)),
    ("Isarvorstadt", "district", (48.1280, 11.5700)),
    ("Laim", "district", (48.1380, 11.5050)),
    ("Milbertshofen", "district", (48.1850, 11.5650)),
    ("Berg am Laim", "district", (48.1280, 11.6350)),
    ("Thalkirchen", "district", (48.0950, 11.5450)),
]


def chaikin(points: list[LatLon], closed: bool, rounds: int = 2) -> list[LatLon]:
    """Smooth a polyline by cutting its corners (each round doubles the points)."""
    for _ in range(rounds):
        following = points[1:] + points[:1] if closed else points[1:]
        pairs = list(zip(points[: len(following)], following, strict=True))
        smoothed: list[LatLon] = [] if closed else [points[0]]
        for (a_lat, a_lon), (b_lat, b_lon) in pairs:
            smoothed.append((0.75 * a_lat + 0.25 * b_lat, 0.75 * a_lon + 0.25 * b_lon))
            smoothed.append((0.25 * a_lat + 0.75 * b_lat, 0.25 * a_lon + 0.75 * b_lon))
        if not closed:
            smoothed.append(points[-1])
        points = smoothed
    return points


def _xy(points: list[LatLon]) -> list[list[float]]:
    # GeoJSON orders coordinates lon, lat.
    return [[round(lon, 5), round(lat, 5)] for lat, lon in points]


def build() -> dict[str, Any]:
    features: list[dict[str, Any]] = []
    for name, kind, area in AREAS:
        ring = _xy(chaikin(area, closed=True))
        features.append(_feature(name, kind, "Polygon", [[*ring, ring[0]]]))
    for name, kind, closed, points in LINES:
        line = _xy(chaikin(points, closed=closed))
        features.append(_feature(name, kind, "LineString", [*line, line[0]] if closed else line))
    for name, kind, (lat, lon) in LABELS:
        features.append(_feature(name, kind, "Point", [round(lon, 5), round(lat, 5)]))
    return {
        "type": "FeatureCollection",
        "name": "munich-sketch",
        "description": "Hand-drawn sketch of Munich, approximate; scripts/make_munich_basemap.py",
        "features": features,
    }


def _feature(name: str, kind: str, geometry: str, coordinates: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"name": name, "kind": kind},
        "geometry": {"type": geometry, "coordinates": coordinates},
    }


def main() -> None:
    OUT.write_text(json.dumps(build(), separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB)")  # noqa: T201  # a script's output


if __name__ == "__main__":
    main()
