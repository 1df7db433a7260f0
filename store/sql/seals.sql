-- The log's integrity: the rows as stored (for seals and the audit, store/stored.py and
-- store/sealing.py) and the append-only triggers as PostgreSQL holds them
-- (store/integrity.py). Loaded by store/queries.py with queries.sql and views.sql (one
-- namespace of names). Parameters are asyncpg's $n.

-- name: read_stored
-- read_all's rows, order and horizon (see read_all in queries.sql: no row can ever appear
-- behind the last one read), with nothing left out or decoded: metadata comes back as stored
-- ('{}' when empty), payload and metadata as the text jsonb renders. The Sealer seals exactly
-- these rows; the verifier reads them again the same way.
SELECT global_position, transaction_id, event_id, stream, stream_version, type, schema_version,
       payload, metadata, recorded_at
FROM i3lani.events
WHERE (transaction_id, global_position) > ($1::xid8, $2::bigint)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id, global_position
LIMIT $3;

-- name: append_only_triggers
-- The user triggers on i3lani.events: their name, how they are enabled (pg_trigger.tgenabled:
-- 'O' fires in the default session_replication_role only, 'A' always, 'R' on a replica only,
-- 'D' never), their definition, and the source of the function they run. The audit checks the
-- two append-only triggers against what the migrations made (store/integrity.py).
SELECT t.tgname::text AS name, t.tgenabled::text AS enabled,
       pg_get_triggerdef(t.oid) AS definition,
       p.oid::regprocedure::text AS function, p.prosrc AS source
FROM pg_trigger t
JOIN pg_proc p ON p.oid = t.tgfoid
WHERE t.tgrelid = 'i3lani.events'::regclass AND NOT t.tgisinternal
ORDER BY t.tgname;
