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
    "CHANGES",
    "CREATE_CHANGES",
    "CREATE_TRIP_SCOPE",
    "DELETE_SCOPED_TRIPS",
    "DERIVE_TRIPS",
    "DISTANCE_TOLERANCE_KM",
    "DISTANCE_TOLERANCE_SHARE",
    "DOOR_AJAR_SPEED_KMH",
    "FORCE_CHANGES",
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

# Where each car's timeline changed: the utilisation is rebuilt from there (see CHANGES).
CREATE_CHANGES: Final = """
CREATE TEMP TABLE IF NOT EXISTS tgw_trip_changes (
    vin   text        PRIMARY KEY,
    since timestamptz NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS tgw_old_trips (
    vin         text,
    start_time  timestamptz,
    end_time    timestamptz,
    start_lat   double precision,
    start_lon   double precision,
    end_lat     double precision,
    end_lon     double precision,
    distance_km double precision
) ON COMMIT DELETE ROWS
"""

# A car seen for the first time, or with samples older than its first one: its timeline now
# starts earlier.
UPDATE_FIRST_SEEN: Final = """
WITH seen AS (
    INSERT INTO insight_vehicles AS iv (vin, first_seen)
    SELECT vin, first_new FROM tgw_trip_scope
    ON CONFLICT (vin) DO UPDATE SET first_seen = EXCLUDED.first_seen
    WHERE EXCLUDED.first_seen < iv.first_seen
    RETURNING iv.vin, iv.first_seen
)
INSERT INTO tgw_trip_changes (vin, since) SELECT vin, first_seen FROM seen
ON CONFLICT (vin) DO UPDATE SET since = least(tgw_trip_changes.since, EXCLUDED.since)
"""

# Kept aside to compare with what the derivation writes.
DELETE_SCOPED_TRIPS: Final = """
WITH gone AS (
    DELETE FROM trips t USING tgw_trip_scope s
    WHERE t.vin = s.vin AND t.start_time >= s.anchor AND t.start_time >= %(oldest_anchor)s
    RETURNING t.vin, t.start_time, t.end_time, t.start_lat, t.start_lon, t.end_lat, t.end_lon,
              t.distance_km
)
INSERT INTO tgw_old_trips SELECT * FROM gone
"""

# A rebuild redoes each car's utilisation from where its re-derived trips begin, whether or not
# they changed.
FORCE_CHANGES: Final = """
INSERT INTO tgw_trip_changes (vin, since)
SELECT s.vin,
       coalesce((SELECT max(t.end_time) FROM trips t
                 WHERE t.vin = s.vin AND t.start_time < s.anchor),
                (SELECT iv.first_seen FROM insight_vehicles iv WHERE iv.vin = s.vin),
                s.anchor)
FROM tgw_trip_scope s
ON CONFLICT (vin) DO UPDATE SET since = least(tgw_trip_changes.since, EXCLUDED.since)
"""

# The first trip that differs per car (added, removed, or changed in what utilisation uses:
# times, places, distance). If it still starts when it did, the timeline changed from that
# start; otherwise from the end of the trip before it (or the first sighting).
CHANGES: Final = """
WITH new AS (
    SELECT t.vin, t.start_time, t.end_time, t.start_lat, t.start_lon, t.end_lat, t.end_lon,
           t.distance_km
    FROM trips t JOIN tgw_trip_scope s ON t.vin = s.vin AND t.start_time >= s.anchor
), diff AS (
    (SELECT * FROM tgw_old_trips EXCEPT ALL SELECT * FROM new)
    UNION ALL
    (SELECT * FROM new EXCEPT ALL SELECT * FROM tgw_old_trips)
), first AS (
    SELECT vin, min(start_time) AS start_time FROM diff GROUP BY vin
)
INSERT INTO tgw_trip_changes (vin, since)
SELECT f.vin,
       CASE WHEN EXISTS (SELECT 1 FROM tgw_old_trips o
                         WHERE o.vin = f.vin AND o.start_time = f.start_time)
             AND EXISTS (SELECT 1 FROM new n WHERE n.vin = f.vin AND n.start_time = f.start_time)
            THEN f.start_time
            ELSE coalesce((SELECT max(t.end_time) FROM trips t
                           WHERE t.vin = f.vin AND t.start_time < f.start_time),
                          (SELECT iv.first_seen FROM insight_vehicles iv WHERE iv.vin = f.vin))
       END
FROM first f
ON CONFLICT (vin) DO UPDATE SET since = least(tgw_trip_changes.since, EXCLUDED.since)
"""


def _haversine(lat1: str, lon1: str, lat2: str, lon2: str) -> str:
    return (
        f"2 * {EARTH_RADIUS_KM} * asin(least(1.0, sqrt("
        f"power(sin(radians({lat2} - {lat1}) / 2), 2) + cos(radians({lat1})) * "
        f"cos(radians({lat2})) * power(sin(radians({lon2} - {lon1}) / 2), 2))))"
    )


_STEP_KM = _haversine("lat1", "lon1", "lat", "lon")
_GAP = f"interval '{HARSH_MAX_GAP_S} seconds'"
_STATE_CODE = "(epoch * 1000000)::bigint * 2 + in_use::int"

# One ordered pass per car over its samples from the anchor on (one sort; every window shares the
# partition and order), then one aggregate per trip:
#   state      the in-use state carried forward over samples without it: the running maximum
#              of epoch-microseconds * 2 + state picks the newest known state (the order is
#              unique, so the default frame ends at the current sample);
#   prev_code  the same at the sample before (so a start is state AND NOT previous state);
#   trip_key   the last sample not in use before this one: the same for every sample of a trip
#              and for the sample that ends it (NULL only for a car's first trip);
#   members    the samples in use plus the first sample not in use after them (where it ended).
# First and last values come from min/max over ARRAY[epoch, value] (no sort per trip).
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
           s.by_ignition, extract(epoch FROM t.time)::float8 AS epoch,
           CASE WHEN s.by_ignition THEN t.ignition ELSE NOT t.locked END AS in_use,
           COALESCE(t.door_fl_open, false) OR COALESCE(t.door_fr_open, false)
               OR COALESCE(t.door_rl_open, false) OR COALESCE(t.door_rr_open, false)
               OR COALESCE(t.trunk_open, false) AS door_open
    FROM tgw_trip_scope s
    -- Per car through the (vin, time) index; the constant bound prunes chunks or partitions.
    CROSS JOIN LATERAL (
        SELECT * FROM telemetry t
        WHERE t.vin = s.vin AND t.time >= s.anchor AND t.time >= %(oldest_anchor)s
    ) t
), w1 AS (
    SELECT raw.*,
           max(CASE WHEN in_use IS NOT NULL THEN {_STATE_CODE} END) OVER o AS state_code,
           max(CASE WHEN NOT in_use THEN time END) OVER o AS last_off,
           lag(time) OVER o AS t1, lag(speed) OVER o AS v1,
           lag(time, 2) OVER o AS t2, lag(speed, 2) OVER o AS v2,
           lag(lat) OVER o AS lat1, lag(lon) OVER o AS lon1,
           lag(door_open) OVER o AS door1
    FROM raw
    WINDOW o AS (PARTITION BY vin ORDER BY time, boot_id, seq)
), w AS (
    SELECT w1.*,
           lag(state_code) OVER o AS prev_code,
           lag(last_off) OVER o AS trip_key
    FROM w1
    WINDOW o AS (PARTITION BY vin ORDER BY time, boot_id, seq)
), m AS (
    SELECT vin, time, epoch, lat, lon, speed, fuel, soc, odometer, by_ignition, trip_key,
           state_code %% 2 = 1 AS state,
           COALESCE(prev_code %% 2 = 1, false) AS prev_state,
           CASE WHEN time > t1 AND time - t1 <= {_GAP}
                THEN (speed - v1) / 3.6 / extract(epoch FROM time - t1) END AS accel,
           CASE WHEN t1 > t2 AND t1 - t2 <= {_GAP}
                THEN (v1 - v2) / 3.6 / extract(epoch FROM t1 - t2) END AS prev_accel,
           door_open AND COALESCE(speed, 0) >= {DOOR_AJAR_SPEED_KMH} AS ajar,
           COALESCE(door1, false) AND COALESCE(v1, 0) >= {DOOR_AJAR_SPEED_KMH} AS prev_ajar,
           CASE WHEN lat1 IS NOT NULL AND lon1 IS NOT NULL AND lat IS NOT NULL
                     AND lon IS NOT NULL
                THEN {_STEP_KM} END AS step_km
    FROM w
    WHERE state_code %% 2 = 1 OR prev_code %% 2 = 1
), trip AS (
    SELECT vin,
           min(time) AS start_time,
           max(time) FILTER (WHERE NOT state) AS end_time,
           bool_and(by_ignition) AS by_ignition,
           min(ARRAY[epoch, lat, lon]) FILTER (WHERE lat IS NOT NULL AND lon IS NOT NULL)
               AS first_place,
           max(ARRAY[epoch, lat, lon]) FILTER (WHERE lat IS NOT NULL AND lon IS NOT NULL)
               AS last_place,
           min(odometer) AS odometer_start,
           max(odometer) AS odometer_end,
           sum(step_km) FILTER (WHERE prev_state) AS gnss_km,
           min(ARRAY[epoch, fuel]) FILTER (WHERE fuel IS NOT NULL) AS first_fuel,
           max(ARRAY[epoch, fuel]) FILTER (WHERE fuel IS NOT NULL) AS last_fuel,
           min(ARRAY[epoch, soc]) FILTER (WHERE soc IS NOT NULL) AS first_soc,
           max(ARRAY[epoch, soc]) FILTER (WHERE soc IS NOT NULL) AS last_soc,
           max(speed) AS max_speed,
           count(*) AS samples,
           count(*) FILTER (WHERE state AND prev_state AND accel <= -{HARSH_BRAKE_MS2}
                                  AND NOT COALESCE(prev_accel <= -{HARSH_BRAKE_MS2}, false))
               AS harsh_brakes,
           count(*) FILTER (WHERE state AND prev_state AND accel >= {HARSH_ACCEL_MS2}
                                  AND NOT COALESCE(prev_accel >= {HARSH_ACCEL_MS2}, false))
               AS harsh_accels,
           count(*) FILTER (WHERE ajar AND NOT prev_ajar) AS door_ajar
    FROM m
    GROUP BY vin, trip_key
)
SELECT vin, start_time, end_time,
       CASE WHEN by_ignition THEN 'ignition' ELSE 'lock' END,
       first_place[2], first_place[3], last_place[2], last_place[3],
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
       first_fuel[2], last_fuel[2], first_soc[2], last_soc[2], max_speed, samples,
       harsh_brakes, harsh_accels, door_ajar
FROM trip
"""  # noqa: S608  # built from this module's constants, never from input
