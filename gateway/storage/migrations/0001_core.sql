-- 0001 core: vehicles, latest state, commands and their transitions, audit log, dead letters.
-- Same DDL in both storage modes. Never edit this file once released: add a new migration.

-- A VIN as ISO 3779 writes it: 17 characters, digits and capitals without I, O, Q.
CREATE DOMAIN vehicle_vin AS text
    CONSTRAINT vin_format CHECK (VALUE ~ '^[A-HJ-NPR-Z0-9]{17}$');

-- One list of command states; a later migration changes it with ALTER DOMAIN (no table rewrite).
CREATE DOMAIN command_status AS text
    CONSTRAINT command_status_known CHECK (VALUE IN (
        'queued', 'sent', 'accepted', 'rejected', 'executed', 'failed', 'verified',
        'expired', 'timed_out'
    ));

CREATE TABLE vehicles (
    vin               vehicle_vin PRIMARY KEY,
    model             text,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    capabilities      text[]      NOT NULL DEFAULT '{}',
    online            boolean     NOT NULL DEFAULT false,
    online_changed_at timestamptz,
    last_seen_at      timestamptz,
    boot_id           text,
    firmware          text,
    stale             boolean     NOT NULL DEFAULT false
) WITH (fillfactor = 70);  -- updated on every birth, will and batch: room for HOT updates
COMMENT ON TABLE vehicles IS
    'Registered cars and their connectivity (birth/last will, staleness).';

-- Newest known state per car. No foreign key to vehicles: ingest may store cars that are
-- not registered yet (registration is optional) and must not pay a lookup per row.
CREATE TABLE latest_state (
    vin          text             PRIMARY KEY,
    time         timestamptz      NOT NULL,
    boot_id      text             NOT NULL,
    seq          bigint           NOT NULL,
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
    updated_at   timestamptz      NOT NULL DEFAULT now()
) WITH (fillfactor = 70);  -- rewritten with every batch: room for HOT updates
COMMENT ON TABLE latest_state IS
    'Newest sample per car by device time; each signal keeps its last non-null value.';
COMMENT ON COLUMN latest_state.time IS 'Device time of the newest sample merged in.';

CREATE TABLE commands (
    id              uuid           PRIMARY KEY DEFAULT gen_random_uuid(),
    vin             vehicle_vin    NOT NULL REFERENCES vehicles (vin),
    action          text           NOT NULL,
    status          command_status NOT NULL DEFAULT 'queued',
    requested_by    text           NOT NULL,
    idempotency_key text,
    created_at      timestamptz    NOT NULL DEFAULT now(),
    issued_at       timestamptz,
    expires_at      timestamptz    NOT NULL,
    nonce           text,
    reason          text,
    detail          text,
    updated_at      timestamptz    NOT NULL DEFAULT now(),
    -- NULL keys are distinct, so the key is unique per requester only when given.
    CONSTRAINT commands_idempotency_key UNIQUE (requested_by, idempotency_key),
    CONSTRAINT commands_nonce_key UNIQUE (nonce)
);
CREATE INDEX commands_vin_created_at_idx ON commands (vin, created_at DESC);

CREATE TABLE command_transitions (
    id         bigserial      PRIMARY KEY,
    command_id uuid           NOT NULL REFERENCES commands (id) ON DELETE CASCADE,
    status     command_status NOT NULL,
    at         timestamptz    NOT NULL DEFAULT now(),
    actor      text           NOT NULL,
    detail     jsonb
);
CREATE INDEX command_transitions_command_id_at_idx ON command_transitions (command_id, at);

CREATE TABLE audit_log (
    id     bigserial   PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text        NOT NULL,
    action text        NOT NULL,
    target text,
    detail jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_target_at_idx ON audit_log (target, at);

-- The audit trail is append-only: a bug or a careless query cannot rewrite who did what.
CREATE FUNCTION tgw_refuse_audit_change() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION tgw_refuse_audit_change();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION tgw_refuse_audit_change();

CREATE TABLE dead_letters (
    id           bigserial   PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text        NOT NULL,
    vin          text,
    reason       text        NOT NULL,
    detail       text,
    payload      bytea,
    payload_size integer     NOT NULL CHECK (payload_size >= 0)
);
COMMENT ON COLUMN dead_letters.payload IS
    'Raw payload, truncated by the ingest to its configured bound; payload_size is the original size.';
CREATE INDEX dead_letters_reason_received_at_idx ON dead_letters (reason, received_at);
CREATE INDEX dead_letters_received_at_idx ON dead_letters (received_at);
