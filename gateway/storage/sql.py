"""The SQL of the ingest's write path, against the tables of the migrations.

Written out literally so that it reads (and greps) as SQL; tests check each column list
against the tuples below and against the migrated tables. Same text in both storage modes:
hypertables and partitioned tables take the same DML. `gateway.ingest.writer` runs it, one
transaction per batch::

    await conn.execute(CREATE_STAGES)     # once per connection: the stages outlive batches
    async with conn.transaction():
        async with conn.cursor().copy(COPY_TELEMETRY) as copy:   # or, after a redelivery,
            copy.set_types(TELEMETRY_COPY_TYPES)                 # COPY_TELEMETRY_STAGE then
            for row in rows: await copy.write_row(row)           # INSERT_TELEMETRY_FROM_STAGE
        # COPY_TELEMETRY_STAGE: the samples that may move each car's latest state, then
        await conn.execute(UPSERT_LATEST_STATE_FROM_STAGE)
        # events: COPY_EVENTS_STAGE, INSERT_EVENTS_FROM_STAGE; dead letters; vehicles

The stages are temporary tables emptied by every commit, so a batch never sees another's rows.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "APPLY_STATUS",
    "COPY_DEAD_LETTERS",
    "COPY_EVENTS_STAGE",
    "COPY_TELEMETRY",
    "COPY_TELEMETRY_STAGE",
    "CREATE_STAGES",
    "DEAD_LETTER_COLUMNS",
    "EVENT_COLUMNS",
    "INSERT_DEAD_LETTER_UNLESS_KEPT",
    "INSERT_EVENTS_FROM_STAGE",
    "INSERT_TELEMETRY_FROM_STAGE",
    "LATEST_STATE_COLUMNS",
    "SELECT_REGISTERED",
    "SIGNAL_COLUMNS",
    "TELEMETRY_COLUMNS",
    "TELEMETRY_COPY_TYPES",
    "TOUCH_VEHICLES",
    "UPSERT_LATEST_STATE_FROM_STAGE",
    "UPSERT_LATEST_STATE_ONE_PER_CAR",
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
"""Column order of the rows written by `COPY_TELEMETRY` and `COPY_TELEMETRY_STAGE`."""

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
"""Column order of the rows written to `COPY_EVENTS_STAGE` (`data`: JSON text)."""

LATEST_STATE_COLUMNS: Final = ("vin", "time", "boot_id", "seq", *SIGNAL_COLUMNS, "updated_at")
"""Columns of `latest_state`, in table order."""

# --- telemetry ------------------------------------------------------------------------------

# ON COMMIT DELETE ROWS: created once per connection (IF NOT EXISTS), emptied by every commit;
# no catalog churn per batch. LIKE copies no indexes: the stages take COPY at full speed.
CREATE_STAGES: Final = """
CREATE TEMP TABLE IF NOT EXISTS tgw_stage_telemetry
    (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS tgw_stage_events
    (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS
"""
"""This connection's staging tables for telemetry and events (idempotent)."""

# Binary COPY: psycopg formats a row in about 4 µs, against 15 µs in text (docs/benchmarks.md).
COPY_TELEMETRY: Final = """
COPY telemetry (
    time, vin, boot_id, seq, received_at,
    lat, lon, heading, speed, fuel, soc, odometer, batt_v,
    ignition, locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open, trunk_open
) FROM STDIN (FORMAT BINARY)
"""
"""Straight into `telemetry`: one pass for a batch none of whose rows was stored before. A row
stored before fails the whole COPY (unique violation): roll back and go through the stage.
Call `copy.set_types(TELEMETRY_COPY_TYPES)` first."""

COPY_TELEMETRY_STAGE: Final = """
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
"""
"""Move the stage into `telemetry`, skipping rows stored before and duplicates within the
stage; the row count is the number stored now (staged minus that: duplicates)."""

# --- latest state ---------------------------------------------------------------------------

# Both latest-state statements end so: each signal keeps its value where the sample has none,
# and a row older than the stored state changes nothing.
_MERGE_FORWARD: Final = """ON CONFLICT (vin) DO UPDATE SET
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

# The common batch holds one sample per car: DISTINCT ON takes it in one sort. Only cars with
# several fresh samples pay for the per-signal ordered aggregates (a sort per car and signal).
UPSERT_LATEST_STATE_FROM_STAGE: Final = f"""
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
{_MERGE_FORWARD}"""  # noqa: S608  # built from this module's constants only
"""Merge the staged samples into `latest_state`: one row per car, only moving forward.

Per car: time, boot id and seq of its newest staged sample, and per signal the newest
non-null staged value. Staged samples older than the car's stored state are left out, so
late or backfilled data never overwrites newer state; signals no newer sample carries keep
their stored value. Cars are upserted in VIN order, so that concurrent batches lock rows in
one order and cannot deadlock.
"""

# One candidate per car (the common batch): nothing to merge between samples, so no sort, no
# aggregate; the conflict clause alone keeps the state moving forward.
UPSERT_LATEST_STATE_ONE_PER_CAR: Final = f"""
INSERT INTO latest_state AS ls (
    vin, time, boot_id, seq,
    lat, lon, heading, speed, fuel, soc, odometer, batt_v,
    ignition, locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open, trunk_open,
    updated_at
)
SELECT
    vin, time, boot_id, seq,
    lat, lon, heading, speed, fuel, soc, odometer, batt_v,
    ignition, locked, door_fl_open, door_fr_open, door_rl_open, door_rr_open, trunk_open,
    now()
FROM tgw_stage_telemetry
ORDER BY vin
{_MERGE_FORWARD}"""  # noqa: S608  # built from this module's constants only
"""`UPSERT_LATEST_STATE_FROM_STAGE` for a stage holding at most one sample per car (the same
result, in one pass)."""

# --- events ---------------------------------------------------------------------------------

COPY_EVENTS_STAGE: Final = """
COPY tgw_stage_events (time, vin, boot_id, seq, type, data, received_at) FROM STDIN
"""
"""COPY (text format: events are few) into the events stage; rows in `EVENT_COLUMNS` order."""

INSERT_EVENTS_FROM_STAGE: Final = """
INSERT INTO events (time, vin, boot_id, seq, type, data, received_at)
SELECT time, vin, boot_id, seq, type, data, received_at
FROM tgw_stage_events
ORDER BY vin, time, boot_id, seq
ON CONFLICT (vin, time, boot_id, seq) DO NOTHING
"""
"""Move the events stage into `events`, skipping rows stored before; row count: stored now."""

# --- dead letters ---------------------------------------------------------------------------

DEAD_LETTER_COLUMNS: Final = (
    "received_at",
    "topic",
    "vin",
    "reason",
    "detail",
    "payload",
    "payload_size",
    "payload_sha256",
)
"""Column order of the rows written by `COPY_DEAD_LETTERS`."""

COPY_DEAD_LETTERS: Final = """
COPY dead_letters (received_at, topic, vin, reason, detail, payload, payload_size, payload_sha256)
FROM STDIN
"""
"""Keep rejected messages as they came (first deliveries): `payload` is already cut to the
ingest's bound, `payload_size` is the size received, `payload_sha256` the whole payload's."""

INSERT_DEAD_LETTER_UNLESS_KEPT: Final = """
INSERT INTO dead_letters
    (received_at, topic, vin, reason, detail, payload, payload_size, payload_sha256)
SELECT %(received_at)s, %(topic)s, %(vin)s, %(reason)s, %(detail)s, %(payload)s,
       %(payload_size)s, %(payload_sha256)s
WHERE NOT EXISTS (
    SELECT 1 FROM dead_letters
    WHERE payload_sha256 = %(payload_sha256)s AND topic = %(topic)s
)
"""
"""Keep a rejected message the broker delivered again (MQTT DUP flag), unless the same bytes on
the same topic are kept already: the first delivery's batch committed, its acknowledgement was
lost with the connection."""

# --- vehicles -------------------------------------------------------------------------------

TOUCH_VEHICLES: Final = """
INSERT INTO vehicles AS v (vin, last_seen_at)
SELECT * FROM unnest(%s::text[], %s::timestamptz[]) AS seen (vin, at) ORDER BY vin
ON CONFLICT (vin) DO UPDATE
    SET last_seen_at = GREATEST(v.last_seen_at, EXCLUDED.last_seen_at), stale = false
"""
"""Cars heard from, with when (two parallel arrays); in VIN order, as every statement here that
touches per-car rows: gateways writing overlapping batches lock rows in one order."""

APPLY_STATUS: Final = """
INSERT INTO vehicles AS v
    (vin, online, online_changed_at, boot_id, model, firmware, capabilities)
VALUES (%(vin)s, %(online)s, %(changed_at)s, %(boot_id)s, %(model)s, %(firmware)s,
        COALESCE(%(capabilities)s::text[], '{}'))
ON CONFLICT (vin) DO UPDATE SET
    online = EXCLUDED.online,
    online_changed_at = EXCLUDED.online_changed_at,
    boot_id = COALESCE(EXCLUDED.boot_id, v.boot_id),
    model = COALESCE(EXCLUDED.model, v.model),
    firmware = COALESCE(EXCLUDED.firmware, v.firmware),
    capabilities = CASE WHEN %(capabilities)s::text[] IS NULL THEN v.capabilities
                        ELSE EXCLUDED.capabilities END,
    stale = false
WHERE v.online_changed_at IS NULL OR v.online_changed_at <= %(applies_after)s::timestamptz
"""
"""A birth or a will: online or offline since `changed_at`. Connectivity moves forward in time
too: applied only over a state that changed no later than `applies_after` (a will carries its
connection's start), so a late will of an old connection cannot flip a reconnected car."""

SELECT_REGISTERED: Final = "SELECT vin FROM vehicles WHERE vin = ANY(%s)"
"""Which of the given VINs are registered vehicles."""
