-- 0006: a digest of each dead letter's whole payload, so that a rejected message the broker
-- delivers again after a lost acknowledgement (MQTT DUP flag) is kept once, not twice
-- (gateway.storage.sql.INSERT_DEAD_LETTER_UNLESS_KEPT). Rows kept before have none.

ALTER TABLE dead_letters ADD COLUMN payload_sha256 bytea;
CREATE INDEX dead_letters_payload_sha256_idx ON dead_letters (payload_sha256);

COMMENT ON COLUMN dead_letters.payload_sha256 IS
    'SHA-256 of the whole payload as received (payload itself may be cut to the ingest bound).';
