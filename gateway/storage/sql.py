"""SQL the ingest and the API run against the tables of migrations 0001-0002.

Written out literally so that it reads (and greps) as SQL; tests check each column list
against the tuples below and against the migrated tables. Same text in both storage modes:
hypertables and partitioned tables take the same DML.

The ingest's write path, one transaction per batch::

    async with conn.transaction():
        await conn.execute(CREATE_TELEMETRY_STAGE)
        async with conn.cursor().copy(COPY_TELEMETRY_STAGE) as copy:
            for row in rows:              # tuples in TELEMETRY_COLUMNS order
                await copy.write_row(row)
        cur = await conn.execute(INSERT_TELEMETRY_FROM_STAGE)
        stored = await cur.fetchall()    # keys of the rows new to the table
        await conn.execute(UPSERT_LATEST_STATE_FROM_STAGE)
        # ...the same for events: CREATE_EVENTS_STAGE, COPY_EVENTS_STAGE, INSERT_EVENTS_FROM_STAGE

The stages are temporary tables dropped at commit, so a batch never sees another's rows.
For binary COPY use the `*_BINARY` statements and `copy.set_types(TELEMETRY_COPY_TYPES)`.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "COPY_EVENTS_STAGE",
    "COPY_EVENTS_STAGE_BINARY",
    "COPY_TELEMETRY_STAGE",
    "COPY_TELEMETRY_STAGE_BINARY",
    "CREATE_EVENTS_STAGE",
    "CREATE_TELEMETRY_STAGE",
    "EVENT_COLUMNS",
    "EVENT_COPY_TYPES",
    "INSERT_DEAD_LETTER",
    "INSERT_EVENTS_FROM_STAGE",
    "INSERT_TELEMETRY_FROM_STAGE",
    "LATEST_STATE_COLUMNS",
    "SIGNAL_COLUMNS",
    "TELEMETRY_COLUMNS",
    "TELEMETRY_COPY_TYPES",
    "UPSERT_LATEST_STATE",
    "UPSERT_LATEST_STATE_FROM_STAGE",
]

SIGNAL_COLUMNS: Final = (
    "lat",
    "lon",
    "heading",
    "speed",
    "fuel",
    "soc",
    "odometer",
    "batt_v",
    "ignition",
    "locked",
    "door_fl_open",
    "door_fr_open",
    "door_rl_open",
    "door_rr_open",
    "trunk_open",
)
"""The signal columns shared by `telemetry` and `latest_state`, all nullable.

Units: lat/lon degrees (WGS84), heading degrees, speed km/h, fuel and soc %, odometer km,
batt_v volts (the 12 V battery).
"""

TELEMETRY_COLUMNS: Final = ("time", "vin", "boot_id", "seq", "received_at", *SIGNAL_COLUMNS)
"""Column order of the rows written to `COPY_TELEMETRY_STAGE`."""

TELEMETRY_COPY_TYPES: Final = (
    "timestamptz",
    "text",
    "text",
    "int8",
    "timestamptz",
    "float8",
    "float8",
    "float4",
    "float4",
    "float4",
    "float4",
    "float8",
    "float4",
    "bool",
    "bool",
    "bool",
    "bool",
    "bool",
    "bool",
    "bool",
)
"""PostgreSQL types of `TELEMETRY_COLUMNS`, for `copy.set_types()` with binary COPY."""

EVENT_COLUMNS: Final = ("time", "vin", "boot_id", "seq", "type", "data", "received_at")
"""Column order of the rows written to `COPY_EVENTS_STAGE` (`data`: JSON text, or Jsonb)."""

EVENT_COPY_TYPES: Final = ("timestamptz", "text", "text", "int8", "text", "jsonb", "timestamptz")
"""PostgreSQL types of `EVENT_COLUMNS`, for `copy.set_types()` with binary COPY."""

LATEST_STATE_COLUMNS: Final = ("vin", "time", "boot_id", "seq", *SIGNAL_COLUMNS, "updated_at")
"""Columns of `latest_state`, in table order."""

# --- telemetry ------------------------------------------------------------------------------

CREATE_TELEMETRY_STAGE: Final = """
CREATE TEMP TABLE tgw_stage_telemetry (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DROP
"""
"""A staging table shaped like `telemetry` (no indexes), dropped when the batch commits."""

COPY_TELEMETRY_STAGE: Final = """
COPY tgw_stage_telemetry (
    time, vin, boot_id, seq, received_at,
    lat, lon, heading, speed, fuel, soc, odometer, batt_v,
    ignition, locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open, trunk_open
) FROM STDIN
"""
"""COPY (text format) into the stage; rows are tuples in `TELEMETRY_COLUMNS` order."""

COPY_TELEMETRY_STAGE_BINARY: Final = """
COPY tgw_stage_telemetry (
    time, vin, boot_id, seq, received_at,
    lat, lon, heading, speed, fuel, soc, odometer, batt_v,
    ignition, locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open, trunk_open
) FROM STDIN (FORMAT BINARY)
"""
"""Binary COPY into the stage; call `copy.set_types(TELEMETRY_COPY_TYPES)` first."""

# ORDER BY: concurrent batches take index locks in one order (no deadlock between two
# gateways holding the same redelivered rows), and the b-tree fills in key order.
INSERT_TELEMETRY_FROM_STAGE: Final = """
INSERT INTO telemetry (
    time, vin, boot_id, seq, received_at,
    lat, lon, heading, speed, fuel, soc, odometer, batt_v,
    ignition, locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open, trunk_open
)
SELECT
    time, vin, boot_id, seq, received_at,
    lat, lon, heading, speed, fuel, soc, odometer, batt_v,
    ignition, locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open, trunk_open
FROM tgw_stage_telemetry
ORDER BY vin, time, boot_id, seq
ON CONFLICT (vin, time, boot_id, seq) DO NOTHING
RETURNING vin, boot_id, seq
"""
"""Move the stage into `telemetry`, skipping rows stored before and duplicates within the
stage. Returns `(vin, boot_id, seq)` of each row stored now: staged minus returned is the
number of duplicates."""

# --- latest state ---------------------------------------------------------------------------

UPSERT_LATEST_STATE: Final = """
INSERT INTO latest_state AS ls (
    vin, time, boot_id, seq,
    lat, lon, heading, speed, fuel, soc, odometer, batt_v,
    ignition, locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open, trunk_open,
    updated_at
) VALUES (
    %(vin)s, %(time)s, %(boot_id)s, %(seq)s,
    %(lat)s, %(lon)s, %(heading)s, %(speed)s, %(fuel)s, %(soc)s, %(odometer)s, %(batt_v)s,
    %(ignition)s, %(locked)s, %(door_fl_open)s, %(door_fr_open)s, %(door_rl_open)s,
    %(door_rr_open)s, %(trunk_open)s,
    now()
)
ON CONFLICT (vin) DO UPDATE SET
    time = EXCLUDED.time,
    boot_id = EXCLUDED.boot_id,
    seq = EXCLUDED.seq,
    lat = COALESCE(EXCLUDED.lat, ls.lat),
    lon = COALESCE(EXCLUDED.lon, ls.lon),
    heading = COALESCE(EXCLUDED.heading, ls.heading),
    speed = COALESCE(EXCLUDED.speed, ls.speed),
    fuel = COALESCE(EXCLUDED.fuel, ls.fuel),
    soc = COALESCE(EXCLUDED.soc, ls.soc),
    odometer = COALESCE(EXCLUDED.odometer, ls.odometer),
    batt_v = COALESCE(EXCLUDED.batt_v, ls.batt_v),
    ignition = COALESCE(EXCLUDED.ignition, ls.ignition),
    locked = COALESCE(EXCLUDED.locked, ls.locked),
    door_fl_open = COALESCE(EXCLUDED.door_fl_open, ls.door_fl_open),
    door_fr_open = COALESCE(EXCLUDED.door_fr_open, ls.door_fr_open),
    door_rl_open = COALESCE(EXCLUDED.door_rl_open, ls.door_rl_open),
    door_rr_open = COALESCE(EXCLUDED.door_rr_open, ls.door_rr_open),
    trunk_open = COALESCE(EXCLUDED.trunk_open, ls.trunk_open),
    updated_at = EXCLUDED.updated_at
WHERE ls.time <= EXCLUDED.time
"""
"""Merge one sample into `latest_state`, only moving forward in device time.

Named parameters: vin, time, boot_id, seq and every name in `SIGNAL_COLUMNS` (None for a
signal the sample does not carry: the stored value is kept). A sample older than the stored
state changes nothing. For a batch use `UPSERT_LATEST_STATE_FROM_STAGE`.
"""

# The common batch holds one sample per car: DISTINCT ON takes it in one sort. Only cars with
# several fresh samples pay for the per-signal ordered aggregates (a sort per car and signal).
UPSERT_LATEST_STATE_FROM_STAGE: Final = """
WITH fresh AS MATERIALIZED (
    SELECT s.*
    FROM tgw_stage_telemetry s
    LEFT JOIN latest_state cur ON cur.vin = s.vin
    WHERE cur.time IS NULL OR s.time >= cur.time
),
newest AS (
    SELECT DISTINCT ON (vin) *
    FROM fresh
    ORDER BY vin, time DESC, seq DESC
),
older AS (
    SELECT
        vin,
        (array_agg(lat ORDER BY time DESC, seq DESC)
            FILTER (WHERE lat IS NOT NULL))[1] AS lat,
        (array_agg(lon ORDER BY time DESC, seq DESC)
            FILTER (WHERE lon IS NOT NULL))[1] AS lon,
        (array_agg(heading ORDER BY time DESC, seq DESC)
            FILTER (WHERE heading IS NOT NULL))[1] AS heading,
        (array_agg(speed ORDER BY time DESC, seq DESC)
            FILTER (WHERE speed IS NOT NULL))[1] AS speed,
        (array_agg(fuel ORDER BY time DESC, seq DESC)
            FILTER (WHERE fuel IS NOT NULL))[1] AS fuel,
        (array_agg(soc ORDER BY time DESC, seq DESC)
            FILTER (WHERE soc IS NOT NULL))[1] AS soc,
        (array_agg(odometer ORDER BY time DESC, seq DESC)
            FILTER (WHERE odometer IS NOT NULL))[1] AS odometer,
        (array_agg(batt_v ORDER BY time DESC, seq DESC)
            FILTER (WHERE batt_v IS NOT NULL))[1] AS batt_v,
        (array_agg(ignition ORDER BY time DESC, seq DESC)
            FILTER (WHERE ignition IS NOT NULL))[1] AS ignition,
        (array_agg(locked ORDER BY time DESC, seq DESC)
            FILTER (WHERE locked IS NOT NULL))[1] AS locked,
        (array_agg(door_fl_open ORDER BY time DESC, seq DESC)
            FILTER (WHERE door_fl_open IS NOT NULL))[1] AS door_fl_open,
        (array_agg(door_fr_open ORDER BY time DESC, seq DESC)
            FILTER (WHERE door_fr_open IS NOT NULL))[1] AS door_fr_open,
        (array_agg(door_rl_open ORDER BY time DESC, seq DESC)
            FILTER (WHERE door_rl_open IS NOT NULL))[1] AS door_rl_open,
        (array_agg(door_rr_open ORDER BY time DESC, seq DESC)
            FILTER (WHERE door_rr_open IS NOT NULL))[1] AS door_rr_open,
        (array_agg(trunk_open ORDER BY time DESC, seq DESC)
            FILTER (WHERE trunk_open IS NOT NULL))[1] AS trunk_open
    FROM fresh
    WHERE vin IN (SELECT vin FROM fresh GROUP BY vin HAVING count(*) > 1)
    GROUP BY vin
)
INSERT INTO latest_state AS ls (
    vin, time, boot_id, seq,
    lat, lon, heading, speed, fuel, soc, odometer, batt_v,
    ignition, locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open, trunk_open,
    updated_at
)
SELECT
    n.vin, n.time, n.boot_id, n.seq,
    COALESCE(n.lat, o.lat),
    COALESCE(n.lon, o.lon),
    COALESCE(n.heading, o.heading),
    COALESCE(n.speed, o.speed),
    COALESCE(n.fuel, o.fuel),
    COALESCE(n.soc, o.soc),
    COALESCE(n.odometer, o.odometer),
    COALESCE(n.batt_v, o.batt_v),
    COALESCE(n.ignition, o.ignition),
    COALESCE(n.locked, o.locked),
    COALESCE(n.door_fl_open, o.door_fl_open),
    COALESCE(n.door_fr_open, o.door_fr_open),
    COALESCE(n.door_rl_open, o.door_rl_open),
    COALESCE(n.door_rr_open, o.door_rr_open),
    COALESCE(n.trunk_open, o.trunk_open),
    now()
FROM newest n
LEFT JOIN older o ON o.vin = n.vin
ORDER BY n.vin
ON CONFLICT (vin) DO UPDATE SET
    time = EXCLUDED.time,
    boot_id = EXCLUDED.boot_id,
    seq = EXCLUDED.seq,
    lat = COALESCE(EXCLUDED.lat, ls.lat),
    lon = COALESCE(EXCLUDED.lon, ls.lon),
    heading = COALESCE(EXCLUDED.heading, ls.heading),
    speed = COALESCE(EXCLUDED.speed, ls.speed),
    fuel = COALESCE(EXCLUDED.fuel, ls.fuel),
    soc = COALESCE(EXCLUDED.soc, ls.soc),
    odometer = COALESCE(EXCLUDED.odometer, ls.odometer),
    batt_v = COALESCE(EXCLUDED.batt_v, ls.batt_v),
    ignition = COALESCE(EXCLUDED.ignition, ls.ignition),
    locked = COALESCE(EXCLUDED.locked, ls.locked),
    door_fl_open = COALESCE(EXCLUDED.door_fl_open, ls.door_fl_open),
    door_fr_open = COALESCE(EXCLUDED.door_fr_open, ls.door_fr_open),
    door_rl_open = COALESCE(EXCLUDED.door_rl_open, ls.door_rl_open),
    door_rr_open = COALESCE(EXCLUDED.door_rr_open, ls.door_rr_open),
    trunk_open = COALESCE(EXCLUDED.trunk_open, ls.trunk_open),
    updated_at = EXCLUDED.updated_at
WHERE ls.time <= EXCLUDED.time
"""
"""Merge the staged samples into `latest_state`: one row per car, only moving forward.

Per car: time, boot id and seq of its newest staged sample, and per signal the newest
non-null staged value. Staged samples older than the car's stored state are left out, so
late or backfilled data never overwrites newer state; signals no newer sample carries keep
their stored value. Cars are upserted in VIN order, so that concurrent batches lock rows in
one order and cannot deadlock.
"""

# --- events ---------------------------------------------------------------------------------

CREATE_EVENTS_STAGE: Final = """
CREATE TEMP TABLE tgw_stage_events (LIKE events INCLUDING DEFAULTS) ON COMMIT DROP
"""
"""A staging table shaped like `events`, dropped when the batch commits."""

COPY_EVENTS_STAGE: Final = """
COPY tgw_stage_events (time, vin, boot_id, seq, type, data, received_at) FROM STDIN
"""
"""COPY (text format) into the events stage; rows are tuples in `EVENT_COLUMNS` order."""

COPY_EVENTS_STAGE_BINARY: Final = """
COPY tgw_stage_events (time, vin, boot_id, seq, type, data, received_at)
FROM STDIN (FORMAT BINARY)
"""
"""Binary COPY into the events stage; call `copy.set_types(EVENT_COPY_TYPES)` first."""

INSERT_EVENTS_FROM_STAGE: Final = """
INSERT INTO events (time, vin, boot_id, seq, type, data, received_at)
SELECT time, vin, boot_id, seq, type, data, received_at
FROM tgw_stage_events
ORDER BY vin, time, boot_id, seq
ON CONFLICT (vin, time, boot_id, seq) DO NOTHING
RETURNING vin, boot_id, seq
"""
"""Move the events stage into `events`, skipping rows stored before; returns the new keys."""

# --- dead letters ---------------------------------------------------------------------------

INSERT_DEAD_LETTER: Final = """
INSERT INTO dead_letters (received_at, topic, vin, reason, detail, payload, payload_size)
VALUES (%(received_at)s, %(topic)s, %(vin)s, %(reason)s, %(detail)s, %(payload)s,
        %(payload_size)s)
"""
"""Keep one rejected message; `payload` is already cut to the ingest's bound, while
`payload_size` is the size received."""
