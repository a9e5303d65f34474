-- 0007 trip tails: where each car's trips were derived up to, so that the insights refresher can
-- *continue* them with the car's new samples instead of deriving them again from an anchor that
-- lies further back: an open trip's start (a long trip made every refresh read all of it again:
-- quadratic over the trip), or a trip that ended within the refresher's overlap. One row per
-- car, written in the same transaction as its trips (docs/insights.md §1). Same DDL in both
-- storage modes. A car without a row (or with a stale one) is derived from its anchor as before,
-- which also writes its row: no backfill needed.

CREATE TABLE trip_tails (
    vin            text             PRIMARY KEY,
    -- The car's open trip (trips.start_time); NULL when its last trip has ended (or none began).
    start_time     timestamptz,
    -- How the trips were told (ignition, or lock for a box without ignition): a change of mode
    -- derives the car again.
    by_ignition    boolean          NOT NULL,
    -- The last sample folded in, its in-use state (carried over samples without one) and what
    -- the window over the next samples needs of it: speed, position and doors (harsh driving,
    -- the GNSS step, door ajar).
    last_time      timestamptz      NOT NULL,
    last_boot_id   text             NOT NULL,
    last_seq       bigint           NOT NULL,
    last_in_use    boolean          NOT NULL,
    last_speed     real,
    last_lat       double precision,
    last_lon       double precision,
    last_door_open boolean          NOT NULL,
    -- The sample before it (harsh episodes look two samples back).
    prev_time      timestamptz,
    prev_boot_id   text,
    prev_seq       bigint,
    prev_speed     real,
    -- Samples of the car up to last_time received at or after counted_since, when folded in: the
    -- next refresh (which looks at telemetry received since counted_since) finds any late sample
    -- at or before last_time by counting them again, and then derives the car from its anchor.
    counted_since  timestamptz      NOT NULL,
    counted        bigint           NOT NULL
);
COMMENT ON TABLE trip_tails IS
    'Per car: the last sample its trips were derived up to, with window context (docs/insights.md).';
