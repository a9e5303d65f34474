-- 0002 telemetry and events, TimescaleDB variant: hypertables chunked by device time, one
-- chunk per day. Uses only what the Apache-licensed edition offers (no compression, no
-- policies). Must keep the same columns, constraint names and index names as
-- 0002_telemetry.postgres.sql: code and later migrations rely on them.

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
    -- The idempotency key (vin, boot_id, seq) plus time, which hypertables require in every
    -- unique key; ordered (vin, time, ...) so the same index serves "one car over time".
    CONSTRAINT telemetry_idempotency_key UNIQUE (vin, time, boot_id, seq)
);
SELECT create_hypertable('telemetry', by_range('time', INTERVAL '1 day'),
                         create_default_indexes => false);
CREATE INDEX telemetry_time_idx ON telemetry (time DESC);

CREATE TABLE events (
    time        timestamptz NOT NULL,
    vin         text        NOT NULL,
    boot_id     text        NOT NULL,
    seq         bigint      NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL DEFAULT '{}',
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_idempotency_key UNIQUE (vin, time, boot_id, seq)
);
SELECT create_hypertable('events', by_range('time', INTERVAL '1 day'),
                         create_default_indexes => false);
CREATE INDEX events_time_idx ON events (time DESC);

COMMENT ON TABLE telemetry IS 'One row per sample, by device time (hypertable, daily chunks).';
COMMENT ON TABLE events IS 'Events reported by cars, by device time (hypertable, daily chunks).';
