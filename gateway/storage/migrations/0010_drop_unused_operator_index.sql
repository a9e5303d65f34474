-- 0010: since 0009 the per-operator rate limit reads command_rate_counts, and nothing reads
-- commands by (requested_by, created_at) any more; the index only cost writes (each of a
-- command's five row versions added an entry). The idempotency lookup has its own unique index.
-- Same DDL in both storage modes.

DROP INDEX IF EXISTS commands_requested_by_created_at_idx;
