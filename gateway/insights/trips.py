"""Trips derived from stored telemetry, incrementally and idempotently (docs/insights.md).

A trip is a run of samples during which the car is *in use*: the ignition is on, or, for a car
that does not report its ignition, it is unlocked. It starts at the first sample in use and
ends at the first sample after it that is not (the ignition-off or lock sample, which the unit
sends at once). Samples that carry neither signal keep the state of the sample before them.

Idempotent by construction: a car's trips are a function of its stored telemetry alone. The
refresher recomputes each car whose telemetry changed from an *anchor* onwards (the earliest
new sample, moved back to the start of the trip that sample falls in), deleting and
re-inserting that car's trips from the anchor in one transaction. Before the anchor the car was
parked (a stored trip would otherwise contain the anchor), so the recomputation starts from a
known state, and the trips it writes are the ones a computation from scratch would write:
restarts and late data (a car's backlog after a dead zone) can neither duplicate nor split a
trip. Trips are keyed by (vin, start_time).
"""

from __future__ import annotations

from typing import Final

from gateway.insights.grid import EARTH_RADIUS_KM

__all__ = [
    "ALL_CARS",
    "CREATE_TRIP_SCOPE",
    "DELETE_SCOPED_TRIPS",
    "DERIVE_TRIPS",
    "DISTANCE_TOLERANCE_KM",
    "DISTANCE_TOLERANCE_SHARE",
    "DOOR_AJAR_SPEED_KMH",
    "HARSH_ACCEL_MS2",
    "HARSH_BRAKE_MS2",
    "HARSH_MAX_GAP_S",
    "SCOPE_NEW_TELEMETRY",
    "SCOPE_VINS",
    "UPDATE_FIRST_SEEN",
]

HARSH_BRAKE_MS2: Final = 3.5
"""Slowing down faster than this between two samples is harsh braking (about 0.36 g)."""
HARSH_ACCEL_MS2: Final = 3.0
"""Speeding up faster than this between two samples is harsh acceleration (about 0.31 g)."""
HARSH_MAX_GAP_S: Final = 10
"""Samples further apart than this say nothing about braking (the average hides the peak)."""
DOOR_AJAR_SPEED_KMH: Final = 5.0
"""A door or the trunk reported open while the car moves faster than this is ajar."""
DISTANCE_TOLERANCE_KM: Final = 0.3
DISTANCE_TOLERANCE_SHARE: Final = 0.15
"""Odometer and GNSS track disagree when they differ by more than both of these (the track,
sampled every few seconds, cuts corners, so it reads a little short)."""

CREATE_TRIP_SCOPE: Final = """
CREATE TEMP TABLE IF NOT EXISTS tgw_trip_scope (
    vin         text        PRIMARY KEY,
    anchor      timestamptz NOT NULL,
    first_new   timestamptz NOT NULL,
    by_ignition boolean     NOT NULL
) ON COMMIT DELETE ROWS
"""

# Cars with telemetry received since %(since)s (received_at has a BRIN index); a sample is never
# older than max_past_age when it arrives, which bounds the chunks/partitions to look at.
SCOPE_NEW_TELEMETRY: Final = """
INSERT INTO tgw_trip_scope (vin, anchor, first_new, by_ignition)
SELECT d.vin,
       LEAST(d.first_new, (SELECT min(t.start_time) FROM trips t
                           WHERE t.vin = d.vin
                             AND (t.end_time IS NULL OR t.end_time >= d.first_new))),
       d.first_new,
       COALESCE(ls.ignition IS NOT NULL, false) OR d.any_ignition
FROM (
    SELECT vin, min(time) AS first_new, bool_or(ignition IS NOT NULL) AS any_ignition
    FROM telemetry
    WHERE received_at >= %(since)s AND time >= %(oldest)s
    GROUP BY vin
) d
LEFT JOIN latest_state ls ON ls.vin = d.vin
"""

# A rebuild: the cars in %(vins)s from their first sample at or after %(since)s ('-infinity':
# everything), moved back to the start of the trip under way then.
SCOPE_VINS: Final = """
INSERT INTO tgw_trip_scope (vin, anchor, first_new, by_ignition)
SELECT c.vin,
       LEAST(f.time, (SELECT min(t.start_time) FROM trips t
                      WHERE t.vin = c.vin AND (t.end_time IS NULL OR t.end_time >= f.time))),
       f.time,
       COALESCE(ls.ignition IS NOT NULL, false) OR f.ignition IS NOT NULL
FROM unnest(%(vins)s::text[]) AS c (vin)
CROSS JOIN LATERAL (
    SELECT time, ignition FROM telemetry t
    WHERE t.vin = c.vin AND t.time >= %(since)s
    ORDER BY time LIMIT 1
) f
LEFT JOIN latest_state ls ON ls.vin = c.vin
"""
# Every car the insights know of or that has a latest state, in VIN order.
ALL_CARS: Final = """
SELECT vin FROM latest_state UNION SELECT vin FROM insight_vehicles ORDER BY vin
"""

UPDATE_FIRST_SEEN: Final = """
INSERT INTO insight_vehicles AS iv (vin, first_seen)
SELECT vin, first_new FROM tgw_trip_scope
ON CONFLICT (vin) DO UPDATE SET first_seen = LEAST(iv.first_seen, EXCLUDED.first_seen)
WHERE EXCLUDED.first_seen < iv.first_seen
"""

DELETE_SCOPED_TRIPS: Final = """
DELETE FROM trips t USING tgw_trip_scope s
WHERE t.vin = s.vin AND t.start_time >= s.anchor
"""


def _haversine(lat1: str, lon1: str, lat2: str, lon2: str) -> str:
    return (
        f"2 * {EARTH_RADIUS_KM} * asin(least(1.0, sqrt("
        f"power(sin(radians({lat2} - {lat1}) / 2), 2) + cos(radians({lat1})) * "
        f"cos(radians({lat2})) * power(sin(radians({lon2} - {lon1}) / 2), 2))))"
    )


_ORDER = "PARTITION BY vin ORDER BY time, boot_id, seq"
_STEP_KM = _haversine("prev_lat", "prev_lon", "lat", "lon")

# One ordered pass per car over its samples from the anchor on; every window below shares the
# same partition and order, so PostgreSQL sorts once.
#   l1: the in-use state carried forward over samples without it (a running max over
#       epoch-microseconds * 2 + state picks the newest known state), and the previous sample;
#   l2: acceleration between close samples, door ajar;
#   l3: the state and the flags of the previous sample (edges, episode starts);
#   l4: trip number = starts so far; a trip's members are its samples in use plus the first
#       sample not in use after them (where it ended).
# Harsh driving counts between samples in use only: the pair into the first sample (from parked)
# and into the ignition-off sample (which may come a second after the last one while moving)
# say nothing about how the car was driven.
DERIVE_TRIPS: Final = f"""
INSERT INTO trips (
    vin, start_time, end_time, detected_by, start_lat, start_lon, end_lat, end_lon,
    odometer_start, odometer_end, odometer_km, gnss_km, distance_km, distance_check,
    fuel_start, fuel_end, soc_start, soc_end, max_speed, samples,
    harsh_brakes, harsh_accels, door_ajar
)
WITH raw AS (
    SELECT t.vin, t.time, t.boot_id, t.seq, t.lat, t.lon, t.speed, t.fuel, t.soc, t.odometer,
           s.by_ignition,
           CASE WHEN s.by_ignition THEN t.ignition ELSE NOT t.locked END AS in_use,
           COALESCE(t.door_fl_open, false) OR COALESCE(t.door_fr_open, false)
               OR COALESCE(t.door_rl_open, false) OR COALESCE(t.door_rr_open, false)
               OR COALESCE(t.trunk_open, false) AS door_open
    FROM tgw_trip_scope s
    JOIN telemetry t ON t.vin = s.vin AND t.time >= s.anchor
), l1 AS (
    SELECT raw.*,
           max(CASE WHEN in_use IS NOT NULL
                    THEN (extract(epoch FROM time) * 1000000)::bigint * 2 + in_use::int END)
               OVER (w ROWS UNBOUNDED PRECEDING) AS state_code,
           lag(time) OVER w AS prev_time,
           lag(speed) OVER w AS prev_speed,
           lag(lat) OVER w AS prev_lat,
           lag(lon) OVER w AS prev_lon
    FROM raw
    WINDOW w AS ({_ORDER})
), l2 AS (
    SELECT l1.*,
           state_code % 2 = 1 AS state,
           CASE WHEN time > prev_time AND time - prev_time <= interval '{HARSH_MAX_GAP_S} seconds'
                THEN (speed - prev_speed) / 3.6 / extract(epoch FROM time - prev_time) END AS accel,
           door_open AND COALESCE(speed, 0) >= {DOOR_AJAR_SPEED_KMH} AS ajar
    FROM l1
), l3 AS (
    SELECT l2.*,
           lag(state) OVER w AS prev_state,
           COALESCE(lag(accel) OVER w <= -{HARSH_BRAKE_MS2}, false) AS prev_brake,
           COALESCE(lag(accel) OVER w >= {HARSH_ACCEL_MS2}, false) AS prev_accel,
           COALESCE(lag(ajar) OVER w, false) AS prev_ajar
    FROM l2
    WINDOW w AS ({_ORDER})
), l4 AS (
    SELECT l3.*,
           state AND NOT COALESCE(prev_state, false) AS is_start,
           count(*) FILTER (WHERE state AND NOT COALESCE(prev_state, false))
               OVER (w ROWS UNBOUNDED PRECEDING) AS trip_no,
           CASE WHEN prev_lat IS NOT NULL AND prev_lon IS NOT NULL
                     AND lat IS NOT NULL AND lon IS NOT NULL
                THEN {_STEP_KM} END AS step_km
    FROM l3
    WINDOW w AS ({_ORDER})
), trip AS (
    SELECT vin,
           min(time) AS start_time,
           max(time) FILTER (WHERE NOT state) AS end_time,
           bool_and(by_ignition) AS by_ignition,
           (array_agg(lat ORDER BY time, boot_id, seq)
               FILTER (WHERE lat IS NOT NULL AND lon IS NOT NULL))[1] AS start_lat,
           (array_agg(lon ORDER BY time, boot_id, seq)
               FILTER (WHERE lat IS NOT NULL AND lon IS NOT NULL))[1] AS start_lon,
           (array_agg(lat ORDER BY time DESC, boot_id DESC, seq DESC)
               FILTER (WHERE lat IS NOT NULL AND lon IS NOT NULL))[1] AS end_lat,
           (array_agg(lon ORDER BY time DESC, boot_id DESC, seq DESC)
               FILTER (WHERE lat IS NOT NULL AND lon IS NOT NULL))[1] AS end_lon,
           min(odometer) AS odometer_start,
           max(odometer) AS odometer_end,
           sum(step_km) FILTER (WHERE NOT is_start) AS gnss_km,
           (array_agg(fuel ORDER BY time, boot_id, seq) FILTER (WHERE fuel IS NOT NULL))[1]
               AS fuel_start,
           (array_agg(fuel ORDER BY time DESC, boot_id DESC, seq DESC)
               FILTER (WHERE fuel IS NOT NULL))[1] AS fuel_end,
           (array_agg(soc ORDER BY time, boot_id, seq) FILTER (WHERE soc IS NOT NULL))[1]
               AS soc_start,
           (array_agg(soc ORDER BY time DESC, boot_id DESC, seq DESC)
               FILTER (WHERE soc IS NOT NULL))[1] AS soc_end,
           max(speed) AS max_speed,
           count(*) AS samples,
           count(*) FILTER (WHERE state AND NOT is_start
                                  AND accel <= -{HARSH_BRAKE_MS2} AND NOT prev_brake)
               AS harsh_brakes,
           count(*) FILTER (WHERE state AND NOT is_start
                                  AND accel >= {HARSH_ACCEL_MS2} AND NOT prev_accel)
               AS harsh_accels,
           count(*) FILTER (WHERE ajar AND NOT prev_ajar) AS door_ajar
    FROM l4
    WHERE state OR prev_state
    GROUP BY vin, trip_no
)
SELECT vin, start_time, end_time,
       CASE WHEN by_ignition THEN 'ignition' ELSE 'lock' END,
       start_lat, start_lon, end_lat, end_lon,
       odometer_start, odometer_end,
       odometer_end - odometer_start,
       COALESCE(gnss_km, 0),
       COALESCE(odometer_end - odometer_start, gnss_km, 0),
       CASE
           WHEN odometer_start IS NOT NULL AND gnss_km IS NOT NULL THEN
               CASE WHEN abs((odometer_end - odometer_start) - gnss_km)
                         > greatest({DISTANCE_TOLERANCE_KM},
                                    {DISTANCE_TOLERANCE_SHARE}
                                    * greatest(odometer_end - odometer_start, gnss_km))
                    THEN 'mismatch' ELSE 'ok' END
           WHEN odometer_start IS NOT NULL THEN 'odometer_only'
           WHEN gnss_km IS NOT NULL THEN 'gnss_only'
           ELSE 'unknown'
       END,
       fuel_start, fuel_end, soc_start, soc_end, max_speed, samples,
       harsh_brakes, harsh_accels, door_ajar
FROM trip
"""  # noqa: S608  # built from this module's constants, never from input
