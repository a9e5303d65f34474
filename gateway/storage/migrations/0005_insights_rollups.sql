-- 0005 insights rollups: what the fleet-wide utilisation views read, each a small fraction of
-- utilisation_hourly (docs/insights.md). Replaces utilisation_area_hourly (0004), which kept one
-- row per hour, model and grid cell: with cars spread over hundreds of cells that is nearly as
-- many rows as per car. Same DDL in both storage modes; the refresher rebuilds the hours (and
-- days) that changed.

DROP TABLE utilisation_area_hourly;

-- Per UTC hour and model: the week profile (hour of day, day of week) and the model groups.
CREATE TABLE utilisation_model_hourly (
    bucket   timestamptz      NOT NULL,
    model    text,
    -- Cars of the model with any time in that hour.
    cars     integer          NOT NULL,
    rented_s double precision NOT NULL,
    idle_s   double precision NOT NULL,
    trips    integer          NOT NULL,
    km       double precision NOT NULL
);
CREATE INDEX utilisation_model_hourly_bucket_idx ON utilisation_model_hourly (bucket);

-- Per UTC day, model and grid cell: the heat map and the operating areas (whole days; the
-- hours at the ends of a range come from utilisation_hourly).
CREATE TABLE utilisation_cell_daily (
    day      timestamptz      NOT NULL,
    model    text,
    cell_y   integer,
    cell_x   integer,
    rented_s double precision NOT NULL,
    idle_s   double precision NOT NULL,
    trips    integer          NOT NULL,
    km       double precision NOT NULL
);
CREATE INDEX utilisation_cell_daily_day_idx ON utilisation_cell_daily (day);

-- Per UTC day and car: the car groups.
CREATE TABLE utilisation_car_daily (
    day      timestamptz      NOT NULL,
    vin      text             NOT NULL,
    rented_s double precision NOT NULL,
    idle_s   double precision NOT NULL,
    trips    integer          NOT NULL,
    km       double precision NOT NULL
);
CREATE INDEX utilisation_car_daily_day_idx ON utilisation_car_daily (day);
