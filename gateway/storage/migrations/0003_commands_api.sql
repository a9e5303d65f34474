-- 0003 commands and API access: what the command lifecycle records beyond 0001, and the
-- operator API's bearer tokens. Same DDL in both storage modes.

-- When each phase happened (gateway clock) and what the car said (car clock), so the sweeper and
-- the verifier decide from the database alone: any gateway instance, also after a restart.
ALTER TABLE commands
    ADD COLUMN key_id               text,
    ADD COLUMN attempts             integer     NOT NULL DEFAULT 0,
    ADD COLUMN sent_at              timestamptz,
    ADD COLUMN accepted_at          timestamptz,
    ADD COLUMN finished_at          timestamptz,
    ADD COLUMN car_accepted_at      timestamptz,
    ADD COLUMN car_finished_at      timestamptz,
    ADD COLUMN failed_preconditions text[]      NOT NULL DEFAULT '{}',
    ADD COLUMN result_state         jsonb,
    -- A result that arrived after the gateway had already decided (expired, timed out): kept,
    -- never allowed to change the final state.
    ADD COLUMN late_outcome         text,
    ADD COLUMN late_outcome_at      timestamptz;
COMMENT ON COLUMN commands.car_accepted_at IS
    'Device time of the car''s accepted result; telemetry at or after it can verify the lock.';

-- The dispatcher's and sweeper's working set: commands not yet final, per car in order.
CREATE INDEX commands_active_idx ON commands (vin, created_at, id)
    WHERE status IN ('queued', 'sent', 'accepted');
-- Executed commands waiting for telemetry to confirm them.
CREATE INDEX commands_executed_idx ON commands (finished_at) WHERE status = 'executed';

-- Roles of the operator API; a later migration widens the list with ALTER DOMAIN.
CREATE DOMAIN api_role AS text
    CONSTRAINT api_role_known CHECK (VALUE IN ('viewer', 'operator', 'admin'));

-- Bearer tokens: only the SHA-256 of each token is stored; the token itself is shown once.
CREATE TABLE api_tokens (
    id           bigserial   PRIMARY KEY,
    name         text        NOT NULL CONSTRAINT api_tokens_name_format
                                 CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$'),
    role         api_role    NOT NULL,
    token_hash   text        NOT NULL CONSTRAINT api_tokens_hash_format
                                 CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL,
    revoked_at   timestamptz,
    revoked_by   text,
    last_used_at timestamptz,
    CONSTRAINT api_tokens_token_hash_key UNIQUE (token_hash)
);
-- A name identifies one live token (it is the operator identity in commands and the audit log);
-- a revoked token's name may be given to a new one.
CREATE UNIQUE INDEX api_tokens_live_name_idx ON api_tokens (name) WHERE revoked_at IS NULL;
COMMENT ON TABLE api_tokens IS 'Operator API bearer tokens (sha256 of the token, never the token).';
