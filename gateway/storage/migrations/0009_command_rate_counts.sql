-- 0009: new commands per operator and second, written with each batch of new commands
-- (gateway.commands.store), so that the per-operator rate limit reads at most one row per
-- second of its window instead of every command of the window (a booking backend with its
-- limit raised to hundreds a second made every batch read tens of thousands of index entries).
-- One row per operator, second and database session: concurrent transactions never wait for
-- each other's row. Rows older than the longest window (3600 s) are deleted by the sweeper.
-- Same DDL in both storage modes.

CREATE TABLE command_rate_counts (
    requested_by text    NOT NULL,
    second       bigint  NOT NULL,  -- whole seconds since the epoch (the creating transaction's)
    session      integer NOT NULL,  -- pg_backend_pid() of the creating session
    n            integer NOT NULL,
    PRIMARY KEY (requested_by, second, session)
);
CREATE INDEX command_rate_counts_second_idx ON command_rate_counts (second);

-- Commands created before this migration, within the longest window: counted too.
INSERT INTO command_rate_counts (requested_by, second, session, n)
SELECT requested_by, floor(extract(epoch FROM created_at))::bigint, 0, count(*)
FROM commands
WHERE created_at > now() - interval '3600 seconds'
GROUP BY 1, 2;
