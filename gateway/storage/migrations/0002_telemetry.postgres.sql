-- 0002 telemetry and events, plain PostgreSQL variant: native range partitioning by device
-- time, one partition per UTC day, plus a DEFAULT partition so no row is ever refused.
-- The TimescaleDB variant (0002_telemetry.timescaledb.sql) must keep the same columns,
-- constraint names and index names: code and later migrations rely on them.

-- Create the daily partitions of `parent` covering [from_time, to_time) (UTC days) that do not
-- exist yet; return how many were created. Rows already caught by the DEFAULT partition for a
-- new day are moved into it. Safe to call concurrently and repeatedly (the gateway calls it
-- periodically); partitions are named <table>_pYYYYMMDD and keyed on the column "time".
CREATE FUNCTION tgw_ensure_partitions(parent regclass, from_time timestamptz, to_time timestamptz)
    RETURNS integer
    LANGUAGE plpgsql AS
$$
DECLARE
    parent_schema text;
    parent_name   text;
    default_part  oid;
    day_start     timestamptz;
    day_end       timestamptz;
    part_name     text;
    part_ident    text;
    bound_from    text;
    bound_to      text;
    created       integer := 0;
BEGIN
    SELECT n.nspname, c.relname, pt.partdefid
      INTO parent_schema, parent_name, default_part
      FROM pg_partitioned_table pt
      JOIN pg_class c ON c.oid = pt.partrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE pt.partrelid = parent AND pt.partstrat = 'r';
    IF parent_name IS NULL THEN
        RAISE EXCEPTION 'tgw_ensure_partitions: % is not a range-partitioned table', parent;
    END IF;
    IF to_time - from_time > interval '3660 days' THEN
        RAISE EXCEPTION 'tgw_ensure_partitions: range % to % is longer than ten years',
            from_time, to_time;
    END IF;

    -- Two gateways creating the same day at once: the second waits, then finds it made.
    PERFORM pg_advisory_xact_lock(hashtext('tgw_ensure_partitions'), parent::oid::integer);

    day_start := date_trunc('day', from_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    WHILE day_start < to_time LOOP
        -- UTC days are exactly 24 h; adding '1 day' would follow the session's DST rules.
        day_end := day_start + interval '24 hours';
        part_name := parent_name || '_p' || to_char(day_start AT TIME ZONE 'UTC', 'YYYYMMDD');
        part_ident := format('%I.%I', parent_schema, part_name);
        IF to_regclass(part_ident) IS NULL THEN
            -- Bounds spelled in UTC so that DateStyle and TimeZone cannot change their meaning.
            bound_from := to_char(day_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00';
            bound_to := to_char(day_end AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00';
            -- Build the partition apart and ATTACH it: ATTACH needs only a SHARE UPDATE
            -- EXCLUSIVE lock on the parent, so ingest keeps writing meanwhile.
            EXECUTE format('CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                           'INCLUDING STORAGE INCLUDING COMMENTS)', part_ident, parent);
            IF default_part <> 0 THEN
                EXECUTE format('WITH moved AS (DELETE FROM %s WHERE time >= $1 AND time < $2 '
                               'RETURNING *) INSERT INTO %s SELECT * FROM moved',
                               default_part::regclass, part_ident)
                    USING day_start, day_end;
            END IF;
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%L) TO (%L)',
                           parent, part_ident, bound_from, bound_to);
            created := created + 1;
        END IF;
        day_start := day_end;
    END LOOP;
    RETURN created;
END;
$$;

CREATE TABLE telemetry (
    time         timestamptz      NOT NULL,
    vin          text             NOT NULL,
    boot_id      text             NOT NULL,
    seq          bigint           NOT NULL,
    received_at  timestamptz      NOT NULL DEFAULT now(),
    lat          double precision,
    lon          double precision,
    heading      real,
    speed        real,
    fuel         real,
    soc          real,
    odometer     double precision,
    batt_v       real,
    ignition     boolean,
    locked       boolean,
    door_fl_open boolean,
    door_fr_open boolean,
    door_rl_open boolean,
    door_rr_open boolean,
    trunk_open   boolean,
    -- The idempotency key (vin, boot_id, seq) plus time, which partitioning requires in every
    -- unique key; ordered (vin, time, ...) so the same index serves "one car over time".
    CONSTRAINT telemetry_idempotency_key UNIQUE (vin, time, boot_id, seq)
) PARTITION BY RANGE (time);
CREATE INDEX telemetry_time_idx ON telemetry (time DESC);
CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;

CREATE TABLE events (
    time        timestamptz NOT NULL,
    vin         text        NOT NULL,
    boot_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL DEFAULT '{}',
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_idempotency_key UNIQUE (vin, time, boot_id, seq)
) PARTITION BY RANGE (time);
CREATE INDEX events_time_idx ON events (time DESC);
CREATE TABLE events_default PARTITION OF events DEFAULT;

COMMENT ON TABLE telemetry IS 'One row per sample, by device time (UTC daily partitions).';
COMMENT ON TABLE events IS 'Events reported by cars, by device time (UTC daily partitions).';
