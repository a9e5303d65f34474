-- 0004 insights: trips, utilisation per car and hour and per model and grid cell, the
-- refresher's progress (docs/insights.md). Same DDL in both storage modes: these are tables the
-- gateway materialises itself (TimescaleDB's Apache edition has no continuous aggregates), small
-- next to the telemetry, so plain tables with a time index serve both modes.

-- Trips derived from telemetry: one row per rental drive, keyed by (vin, start_time). The
-- gateway's insight refresher deletes and re-derives a car's trips from a safe anchor onwards
-- whenever new or late telemetry arrives, so a trip is never stored twice nor split.
CREATE TABLE trips (
    vin            text             NOT NULL,
    start_time     timestamptz      NOT NULL,
    -- NULL while the trip is still going (no sample has ended it yet).
    end_time       timestamptz,
    -- 'ignition' (ignition on -> off) or 'lock' (unlocked -> locked: cars without ignition).
    detected_by    text             NOT NULL
                       CONSTRAINT trips_detected_by_known CHECK (detected_by IN ('ignition', 'lock')),
    start_lat      double precision,
    start_lon      double precision,
    end_lat        double precision,
    end_lon        double precision,
    odometer_start double precision,
    odometer_end   double precision,
    -- Odometer difference, the GNSS track's length, and the one reported (odometer when known).
    odometer_km    double precision,
    gnss_km        double precision,
    distance_km    double precision,
    -- ok | mismatch (odometer and track disagree) | odometer_only | gnss_only | unknown
    distance_check text             NOT NULL,
    fuel_start     real,
    fuel_end       real,
    soc_start      real,
    soc_end        real,
    max_speed      real,
    samples        integer          NOT NULL,
    -- Wear and misuse seen during the trip (episodes, not samples).
    harsh_brakes   integer          NOT NULL DEFAULT 0,
    harsh_accels   integer          NOT NULL DEFAULT 0,
    door_ajar      integer          NOT NULL DEFAULT 0,
    computed_at    timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT trips_pkey PRIMARY KEY (vin, start_time),
    CONSTRAINT trips_end_after_start CHECK (end_time IS NULL OR end_time >= start_time)
);
CREATE INDEX trips_start_time_idx ON trips (start_time);
CREATE INDEX trips_open_idx ON trips (vin) WHERE end_time IS NULL;
COMMENT ON TABLE trips IS
    'Trips derived from telemetry (ignition on->off, or unlock->lock); see docs/insights.md.';

-- Where each car was first seen: the start of its availability (utilisation before its first trip).
CREATE TABLE insight_vehicles (
    vin        text        PRIMARY KEY,
    first_seen timestamptz NOT NULL
);

-- The refresher's progress: one row.
CREATE TABLE insight_state (
    id                 boolean     PRIMARY KEY DEFAULT true CONSTRAINT insight_state_one_row CHECK (id),
    -- Telemetry received (received_at) before this, minus the overlap, is reflected in `trips`.
    received_watermark timestamptz,
    -- The database time the utilisation was last brought up to (its open hour is partial).
    refreshed_at       timestamptz,
    -- When the trips were last derived from scratch (first refresh, or `tgw insights rebuild`).
    rebuilt_at         timestamptz
);
INSERT INTO insight_state DEFAULT VALUES;

-- Finds the telemetry received since the last refresh without an index on the hot insert path
-- that costs more than a block-range summary: rows are appended roughly in received order.
CREATE INDEX telemetry_received_at_brin ON telemetry USING brin (received_at)
    WITH (pages_per_range = 32, autosummarize = on);

-- Per car, UTC hour and grid cell: seconds rented (attributed to the cell the rental started
-- in) and idle (the cell the car stood in), trips started and their distance. Rebuilt by the
-- refresher from each car's trips, from the first hour that changed. About one row per car and
-- hour: a hundredth of the telemetry.
CREATE TABLE utilisation_hourly (
    bucket   timestamptz      NOT NULL,
    vin      text             NOT NULL,
    -- Grid cell: floor(lat / 0.01), floor(lon / 0.015) (about 1.1 km x 1.1 km in Munich);
    -- NULL when the car's position was unknown.
    cell_y   integer,
    cell_x   integer,
    rented_s double precision NOT NULL DEFAULT 0,
    idle_s   double precision NOT NULL DEFAULT 0,
    trips    integer          NOT NULL DEFAULT 0,
    km       double precision NOT NULL DEFAULT 0
);
CREATE INDEX utilisation_hourly_bucket_idx ON utilisation_hourly (bucket);
CREATE INDEX utilisation_hourly_vin_bucket_idx ON utilisation_hourly (vin, bucket);
COMMENT ON TABLE utilisation_hourly IS
    'Rented and idle seconds per car, UTC hour and grid cell (materialised by the gateway).';

-- The same per model and grid cell (every car together): what the fleet-wide views read, a
-- fraction of the rows. Rebuilt from utilisation_hourly for the hours that changed.
CREATE TABLE utilisation_area_hourly (
    bucket   timestamptz      NOT NULL,
    model    text,
    cell_y   integer,
    cell_x   integer,
    -- Cars that spent time in the cell in that hour.
    cars     integer          NOT NULL,
    rented_s double precision NOT NULL,
    idle_s   double precision NOT NULL,
    trips    integer          NOT NULL,
    km       double precision NOT NULL
);
CREATE INDEX utilisation_area_hourly_bucket_idx ON utilisation_area_hourly (bucket);
