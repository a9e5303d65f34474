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

A car is *continued* instead (CONTINUE_TRIPS) when all its new samples come after the last one
its trips were derived up to (`trip_tails`, with the window context the next samples need):
only the new samples are derived, and an open trip's aggregates are folded into the stored row.
A refresh then costs what the new samples cost, not what a long open trip (or a trip that ended
within the refresher's overlap) costs again every minute. Late data at or before the last
folded sample is noticed by counting the window's samples again, and sends the car back to the
derivation from its anchor.
"""

from __future__ import annotations

from typing import Final

from gateway.insights.grid import EARTH_RADIUS_KM

__all__ = [
    "ALL_CARS",
    "CHANGES",
    "CONTINUE_TRIPS",
    "CREATE_CHANGES",
    "CREATE_TRIP_SCOPE",
    "DELETE_SCOPED_TAILS",
    "DELETE_SCOPED_TRIPS",
    "DERIVE_TRIPS",
    "DISTANCE_TOLERANCE_KM",
    "DISTANCE_TOLERANCE_SHARE",
    "DOOR_AJAR_SPEED_KMH",
    "FORCE_CHANGES",
    "HARSH_ACCEL_MS2",
    "HARSH_BRAKE_MS2",
    "HARSH_MAX_GAP_S",
    "KEEP_OPEN_TRIPS",
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
    by_ignition boolean     NOT NULL,
    -- Set when the car's open trip is continued from this sample on (CONTINUE_TRIPS); NULL:
    -- derived from the anchor (DERIVE_TRIPS).
    tail_time   timestamptz,
    -- Continued: the new window's count of the samples already folded in (trip_tails.counted).
    kept        bigint      NOT NULL DEFAULT 0
) ON COMMIT DELETE ROWS
"""

# Cars with telemetry received since %(since)s (received_at has a BRIN index); a sample is never
# older than max_past_age when it arrives, which bounds the chunks/partitions to look at.
# A car is *continued* (tail_time set; anchor = its open trip's start, or its last sample when
# parked) when none of its samples
# at or before the tail's last one is new: the window holds exactly as many of them as were
# counted when they were folded in (trip_tails.counted, over the window from counted_since: this
# one, or an older one in which the car had none; a car with samples in a window is in the scope
# of every refresh that window overlaps, so its tail is counted again each time). The trips must
# still be as the tail says (its open trip stored, or none open), its mode (ignition or lock)
# unchanged, and %(continuing)s true.
# Otherwise the anchor is the earliest new sample, moved back to the start of the stored trip it
# falls in (or the open trip).
SCOPE_NEW_TELEMETRY: Final = """
INSERT INTO tgw_trip_scope (vin, anchor, first_new, by_ignition, tail_time, kept)
SELECT d.vin,
       CASE WHEN c.go THEN coalesce(tl.start_time, tl.last_time)
            ELSE LEAST(d.first_new, (SELECT min(t.start_time) FROM trips t
                                     WHERE t.vin = d.vin
                                       AND (t.end_time IS NULL OR t.end_time >= d.first_new)))
       END,
       d.first_new,
       b.by_ignition,
       CASE WHEN c.go THEN tl.last_time END,
       d.kept
FROM (
    SELECT t.vin, min(t.time) AS first_new, bool_or(t.ignition IS NOT NULL) AS any_ignition,
           count(*) FILTER (WHERE t.time <= tl.last_time) AS folded,
           count(*) FILTER (WHERE t.time <= tl.last_time AND t.received_at >= %(next_since)s)
               AS kept
    FROM telemetry t
    LEFT JOIN trip_tails tl ON tl.vin = t.vin
    WHERE t.received_at >= %(since)s AND t.time >= %(oldest)s
    GROUP BY t.vin
) d
LEFT JOIN latest_state ls ON ls.vin = d.vin
LEFT JOIN trip_tails tl ON tl.vin = d.vin
LEFT JOIN trips o ON o.vin = tl.vin AND o.start_time = tl.start_time
CROSS JOIN LATERAL (
    SELECT COALESCE(ls.ignition IS NOT NULL, false) OR d.any_ignition AS by_ignition
) b
CROSS JOIN LATERAL (
    SELECT %(continuing)s AND COALESCE(
        tl.counted = d.folded
        AND (tl.counted_since = %(since)s OR tl.counted_since < %(since)s AND tl.counted = 0)
        AND tl.by_ignition = b.by_ignition
        AND CASE WHEN tl.start_time IS NULL
                 THEN NOT EXISTS (SELECT 1 FROM trips x WHERE x.vin = d.vin AND x.end_time IS NULL)
                 ELSE o.end_time IS NULL AND o.vin IS NOT NULL END,
        false) AS go
) c
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
      AND s.tail_time IS NULL
    RETURNING t.vin, t.start_time, t.end_time, t.start_lat, t.start_lon, t.end_lat, t.end_lon,
              t.distance_km
)
INSERT INTO tgw_old_trips SELECT * FROM gone
"""

# The tails of the cars derived from their anchor: DERIVE_TRIPS writes them again.
DELETE_SCOPED_TAILS: Final = """
DELETE FROM trip_tails tt USING tgw_trip_scope s WHERE tt.vin = s.vin AND s.tail_time IS NULL
"""

# A continued car's open trip as it was, to compare with what the continuation makes of it.
KEEP_OPEN_TRIPS: Final = """
INSERT INTO tgw_old_trips
SELECT t.vin, t.start_time, t.end_time, t.start_lat, t.start_lon, t.end_lat, t.end_lon,
       t.distance_km
FROM trips t JOIN tgw_trip_scope s ON t.vin = s.vin AND t.start_time = s.anchor
WHERE s.tail_time IS NOT NULL
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
_IN_USE = "CASE WHEN s.by_ignition THEN t.ignition ELSE NOT t.locked END"
_DOOR_OPEN = (
    "COALESCE(t.door_fl_open, false) OR COALESCE(t.door_fr_open, false) "
    "OR COALESCE(t.door_rl_open, false) OR COALESCE(t.door_rr_open, false) "
    "OR COALESCE(t.trunk_open, false)"
)
# Trips only: the columns every writer fills.
_TRIP_COLUMNS = """vin, start_time, end_time, detected_by, start_lat, start_lon, end_lat, end_lon,
    odometer_start, odometer_end, odometer_km, gnss_km, distance_km, distance_check,
    fuel_start, fuel_end, soc_start, soc_end, max_speed, samples,
    harsh_brakes, harsh_accels, door_ajar"""
_TAIL_COLUMNS = """vin, start_time, by_ignition, last_time, last_boot_id, last_seq, last_in_use,
    last_speed, last_lat, last_lon, last_door_open, prev_time, prev_boot_id, prev_seq, prev_speed,
    counted_since, counted"""


def _distance_check(odometer_start: str, odometer_end: str, gnss_km: str) -> str:
    return f"""CASE
           WHEN {odometer_start} IS NOT NULL AND {gnss_km} IS NOT NULL THEN
               CASE WHEN abs(({odometer_end} - {odometer_start}) - {gnss_km})
                         > greatest({DISTANCE_TOLERANCE_KM},
                                    {DISTANCE_TOLERANCE_SHARE}
                                    * greatest({odometer_end} - {odometer_start}, {gnss_km}))
                    THEN 'mismatch' ELSE 'ok' END
           WHEN {odometer_start} IS NOT NULL THEN 'odometer_only'
           WHEN {gnss_km} IS NOT NULL THEN 'gnss_only'
           ELSE 'unknown'
       END"""


# One ordered pass per car over its samples (one sort; every window shares the partition and
# order), then one aggregate per trip. `raw` (given) holds the samples, plus, when a car is
# continued, its last two samples folded in as *ghost* rows: window context only, never aggregated
# (the last one with its in-use state, the one before with none).
#   state      the in-use state carried forward over samples without it: the running maximum
#              of epoch-microseconds * 2 + state picks the newest known state (the order is
#              unique, so the default frame ends at the current sample);
#   prev_code  the same at the sample before (so a start is state AND NOT previous state);
#   trip_key   the last sample not in use before this one: the same for every sample of a trip
#              and for the sample that ends it (NULL for a car's first trip, or, when continuing,
#              for the open trip);
#   member     the samples in use plus the first sample not in use after them (where it ended);
#   is_last    the car's last sample: kept even when not a member (a group of its own) for the
#              tail_* aggregates, what continuing the car needs (trip_tails).
# First and last values come from min/max over ARRAY[epoch, value] (no sort per trip).
# Harsh driving counts between samples in use only: the pair into the first sample (from parked)
# and into the ignition-off sample (which may come a second after the last one while moving)
# say nothing about how the car was driven.
_TRIP_PIPELINE = f"""
w1 AS (
    SELECT raw.*,
           max(CASE WHEN in_use IS NOT NULL THEN {_STATE_CODE} END) OVER o AS state_code,
           max(CASE WHEN NOT in_use THEN time END) OVER o AS last_off,
           lag(time) OVER o AS t1, lag(speed) OVER o AS v1,
           lag(boot_id) OVER o AS b1, lag(seq) OVER o AS q1,
           lag(time, 2) OVER o AS t2, lag(speed, 2) OVER o AS v2,
           lag(lat) OVER o AS lat1, lag(lon) OVER o AS lon1,
           lag(door_open) OVER o AS door1,
           lead(time) OVER o IS NULL AS is_last,
           count(*) FILTER (WHERE received_at >= %(next_since)s) OVER o AS counted
    FROM raw
    WINDOW o AS (PARTITION BY vin ORDER BY time, boot_id, seq)
), w AS (
    SELECT w1.*,
           lag(state_code) OVER o AS prev_code,
           lag(last_off) OVER o AS trip_key
    FROM w1
    WINDOW o AS (PARTITION BY vin ORDER BY time, boot_id, seq)
), m AS (
    SELECT vin, time, boot_id, seq, epoch, lat, lon, speed, fuel, soc, odometer, by_ignition,
           trip_key, is_last, door_open, counted, t1, b1, q1, v1,
           COALESCE(state_code %% 2 = 1 OR prev_code %% 2 = 1, false) AS member,
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
    WHERE (state_code %% 2 = 1 OR prev_code %% 2 = 1 OR is_last) AND NOT ghost
), trip AS (
    SELECT vin, trip_key, member,
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
           count(*) FILTER (WHERE ajar AND NOT prev_ajar) AS door_ajar,
           -- The car's last sample, if this group has it (one row: max picks its values).
           COALESCE(bool_or(state) FILTER (WHERE is_last), false) AS tail_in_use,
           max(time) FILTER (WHERE is_last) AS tail_time,
           max(boot_id) FILTER (WHERE is_last) AS tail_boot_id,
           max(seq) FILTER (WHERE is_last) AS tail_seq,
           max(speed) FILTER (WHERE is_last) AS tail_speed,
           max(lat) FILTER (WHERE is_last) AS tail_lat,
           max(lon) FILTER (WHERE is_last) AS tail_lon,
           bool_or(door_open) FILTER (WHERE is_last) AS tail_door_open,
           max(t1) FILTER (WHERE is_last) AS tail_prev_time,
           max(b1) FILTER (WHERE is_last) AS tail_prev_boot_id,
           max(q1) FILTER (WHERE is_last) AS tail_prev_seq,
           max(v1) FILTER (WHERE is_last) AS tail_prev_speed,
           max(counted) FILTER (WHERE is_last) AS tail_counted
    FROM m
    GROUP BY vin, trip_key, member
)"""  # noqa: S608  # built from this module's constants, never from input

_TRIP_VALUES = f"""vin, start_time, end_time,
       CASE WHEN by_ignition THEN 'ignition' ELSE 'lock' END,
       first_place[2], first_place[3], last_place[2], last_place[3],
       odometer_start, odometer_end,
       odometer_end - odometer_start,
       COALESCE(gnss_km, 0),
       COALESCE(odometer_end - odometer_start, gnss_km, 0),
       {_distance_check("odometer_start", "odometer_end", "gnss_km")},
       first_fuel[2], last_fuel[2], first_soc[2], last_soc[2], max_speed, samples,
       harsh_brakes, harsh_accels, door_ajar"""


def _write_tails(start_time: str, counted: str) -> str:
    """A modifying CTE: each car's tail, from the group (`trip n`) holding its last sample,
    joined with the scope `s`; `start_time` is the open trip's start (when the car is in use)."""
    return f"""tails AS (
    INSERT INTO trip_tails AS tt ({_TAIL_COLUMNS})
    SELECT n.vin, CASE WHEN n.tail_in_use THEN {start_time} END, s.by_ignition, n.tail_time,
           n.tail_boot_id, n.tail_seq, n.tail_in_use, n.tail_speed, n.tail_lat, n.tail_lon,
           n.tail_door_open, n.tail_prev_time, n.tail_prev_boot_id, n.tail_prev_seq,
           n.tail_prev_speed, %(next_since)s, {counted}
    FROM trip n JOIN tgw_trip_scope s ON s.vin = n.vin
    WHERE n.tail_time IS NOT NULL
    ON CONFLICT (vin) DO UPDATE SET
        start_time = EXCLUDED.start_time, by_ignition = EXCLUDED.by_ignition,
        last_time = EXCLUDED.last_time, last_in_use = EXCLUDED.last_in_use,
        last_boot_id = EXCLUDED.last_boot_id, last_seq = EXCLUDED.last_seq,
        last_speed = EXCLUDED.last_speed, last_lat = EXCLUDED.last_lat,
        last_lon = EXCLUDED.last_lon, last_door_open = EXCLUDED.last_door_open,
        prev_time = EXCLUDED.prev_time, prev_boot_id = EXCLUDED.prev_boot_id,
        prev_seq = EXCLUDED.prev_seq, prev_speed = EXCLUDED.prev_speed,
        counted_since = EXCLUDED.counted_since, counted = EXCLUDED.counted
)"""  # noqa: S608  # built from this module's constants, never from input


# Every car in the scope that is not continued: all its samples from the anchor on. Also writes
# each car's tail (DELETE_SCOPED_TAILS removed the old ones).
DERIVE_TRIPS: Final = f"""
WITH raw AS (
    SELECT t.vin, t.time, t.boot_id, t.seq, t.received_at, t.lat, t.lon, t.speed, t.fuel,
           t.soc, t.odometer, s.by_ignition, false AS ghost,
           extract(epoch FROM t.time)::float8 AS epoch,
           {_IN_USE} AS in_use,
           {_DOOR_OPEN} AS door_open
    FROM tgw_trip_scope s
    -- Per car through the (vin, time) index; the constant bound prunes chunks or partitions.
    CROSS JOIN LATERAL (
        SELECT * FROM telemetry t
        WHERE t.vin = s.vin AND t.time >= s.anchor AND t.time >= %(oldest_anchor)s
    ) t
    WHERE s.tail_time IS NULL
), {_TRIP_PIPELINE},
{_write_tails("n.start_time", "n.tail_counted")}
INSERT INTO trips ({_TRIP_COLUMNS})
SELECT {_TRIP_VALUES}
FROM trip
WHERE member
"""  # noqa: S608  # built from this module's constants, never from input

# The stored gnss_km is 0 where the trip has no GNSS step yet; distance_check says which.
_OLD_GNSS = "CASE WHEN o.distance_check IN ('ok', 'mismatch', 'gnss_only') THEN o.gnss_km END"

# Every continued car: only its samples after the last one folded in, behind the last two folded
# in as ghost rows (the window context). For a car in use, the trip_key NULL group is its open
# trip going on: its aggregates are folded into the stored row (sums and counts added, first
# values kept, last values replaced, min/max widened). The other groups are trips that started
# after (inserted: the statement's row count). The tail moves on to the last new sample, or,
# with none, only its count is brought up to the new window.
CONTINUE_TRIPS: Final = f"""
WITH raw AS (
    SELECT t.vin, t.time, t.boot_id, t.seq, t.received_at, t.lat, t.lon, t.speed, t.fuel,
           t.soc, t.odometer, s.by_ignition, false AS ghost,
           extract(epoch FROM t.time)::float8 AS epoch,
           {_IN_USE} AS in_use,
           {_DOOR_OPEN} AS door_open
    FROM tgw_trip_scope s
    CROSS JOIN LATERAL (
        SELECT * FROM telemetry t
        WHERE t.vin = s.vin AND t.time > s.tail_time AND t.time > %(oldest_tail)s
    ) t
    WHERE s.tail_time IS NOT NULL
    UNION ALL
    SELECT tl.vin, g.time, g.boot_id, g.seq, NULL::timestamptz, g.lat, g.lon, g.speed,
           NULL::real, NULL::real, NULL::float8, s.by_ignition, true,
           extract(epoch FROM g.time)::float8, g.in_use, g.door_open
    FROM tgw_trip_scope s
    JOIN trip_tails tl ON tl.vin = s.vin
    CROSS JOIN LATERAL (VALUES
        (tl.prev_time, tl.prev_boot_id, tl.prev_seq, NULL::float8, NULL::float8,
         tl.prev_speed, NULL::boolean, false),
        (tl.last_time, tl.last_boot_id, tl.last_seq, tl.last_lat, tl.last_lon,
         tl.last_speed, tl.last_in_use, tl.last_door_open)
    ) AS g (time, boot_id, seq, lat, lon, speed, in_use, door_open)
    WHERE s.tail_time IS NOT NULL AND g.time IS NOT NULL
), {_TRIP_PIPELINE},
fold AS (
    SELECT o.vin, o.start_time, n.end_time,
           CASE WHEN o.start_lat IS NULL THEN n.first_place[2] ELSE o.start_lat END AS start_lat,
           CASE WHEN o.start_lat IS NULL THEN n.first_place[3] ELSE o.start_lon END AS start_lon,
           coalesce(n.last_place[2], o.end_lat) AS end_lat,
           coalesce(n.last_place[3], o.end_lon) AS end_lon,
           least(o.odometer_start, n.odometer_start) AS odometer_start,
           greatest(o.odometer_end, n.odometer_end) AS odometer_end,
           coalesce(g.old + n.gnss_km, g.old, n.gnss_km) AS gnss_km,
           coalesce(o.fuel_start, n.first_fuel[2]) AS fuel_start,
           coalesce(n.last_fuel[2], o.fuel_end) AS fuel_end,
           coalesce(o.soc_start, n.first_soc[2]) AS soc_start,
           coalesce(n.last_soc[2], o.soc_end) AS soc_end,
           greatest(o.max_speed, n.max_speed) AS max_speed,
           o.samples + n.samples AS samples,
           o.harsh_brakes + n.harsh_brakes AS harsh_brakes,
           o.harsh_accels + n.harsh_accels AS harsh_accels,
           o.door_ajar + n.door_ajar AS door_ajar
    FROM trip n
    JOIN tgw_trip_scope s ON s.vin = n.vin
    JOIN trips o ON o.vin = s.vin AND o.start_time = s.anchor
    CROSS JOIN LATERAL (SELECT {_OLD_GNSS} AS old) g
    WHERE n.trip_key IS NULL AND n.member
), continued AS (
    UPDATE trips t SET
        end_time = f.end_time, start_lat = f.start_lat, start_lon = f.start_lon,
        end_lat = f.end_lat, end_lon = f.end_lon,
        odometer_start = f.odometer_start, odometer_end = f.odometer_end,
        odometer_km = f.odometer_end - f.odometer_start,
        gnss_km = COALESCE(f.gnss_km, 0),
        distance_km = COALESCE(f.odometer_end - f.odometer_start, f.gnss_km, 0),
        distance_check = {_distance_check("f.odometer_start", "f.odometer_end", "f.gnss_km")},
        fuel_start = f.fuel_start, fuel_end = f.fuel_end,
        soc_start = f.soc_start, soc_end = f.soc_end, max_speed = f.max_speed,
        samples = f.samples, harsh_brakes = f.harsh_brakes, harsh_accels = f.harsh_accels,
        door_ajar = f.door_ajar, computed_at = now()
    FROM fold f
    WHERE t.vin = f.vin AND t.start_time = f.start_time
),
{
    _write_tails(
        "CASE WHEN n.trip_key IS NULL THEN s.anchor ELSE n.start_time END",
        "s.kept + n.tail_counted",
    )
},
recounted AS (
    UPDATE trip_tails tt SET counted_since = %(next_since)s, counted = s.kept
    FROM tgw_trip_scope s
    WHERE tt.vin = s.vin AND s.tail_time IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM trip n WHERE n.vin = s.vin)
)
INSERT INTO trips ({_TRIP_COLUMNS})
SELECT {_TRIP_VALUES}
FROM trip
WHERE member AND trip_key IS NOT NULL
"""  # noqa: S608  # built from this module's constants, never from input
