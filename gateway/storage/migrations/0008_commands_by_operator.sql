-- 0008: the per-operator rate limit counts an operator's commands of the last window
-- (gateway.commands.store); without this index it read all of that operator's commands, every
-- request, growing forever. Same DDL in both storage modes.

CREATE INDEX commands_requested_by_created_at_idx ON commands (requested_by, created_at);
