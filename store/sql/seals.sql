-- The log's integrity: the rows as stored (for seals and the audit, store/stored.py and
-- store/sealing.py) and the append-only triggers as PostgreSQL holds them
-- (store/integrity.py). Loaded by store/queries.py with queries.sql and views.sql (one
-- namespace of names). Parameters are asyncpg's $n.

-- name: read_stored
-- read_all's rows, order and horizon (see read_all in queries.sql: no row can ever appear
-- behind the last one read), with nothing left out or decoded: metadata comes back as stored
-- ('{}' when empty), payload as stored (json), metadata as jsonb renders it. The Sealer seals
-- exactly these rows; the verifier reads them again the same way.
SELECT global_position, transaction_id, event_id, stream, stream_version, type, schema_version,
       payload, metadata, recorded_at
FROM i3lani.events
WHERE (transaction_id, global_position) > ($1::xid8, $2::bigint)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id, global_position
LIMIT $3;

-- name: read_hashed
-- read_stored's rows, order and horizon, in the columns an event hash needs (store/sealing.py),
-- each in the form that costs least to decode: the event id as its 16 bytes, recorded_at as
-- microseconds since 1970 (exact: extract returns a numeric), payload and metadata as the UTF-8
-- of their text (the same bytes read_stored returns). The Sealer hashes them
-- (EventStore.read_hashed); against read_stored and hashing its rows, this takes about a third
-- off the CPU a seal costs the machine, its process's and PostgreSQL's together (measured: 6.1
-- against 8.9 µs an event). Hashing here in SQL instead cost 7.2: the concatenations cost
-- PostgreSQL more than the decoding they spare.
SELECT global_position, transaction_id, stream, type, uuid_send(event_id), stream_version,
       schema_version, (extract(epoch FROM recorded_at) * 1000000)::bigint,
       convert_to(payload::text, 'UTF8'), convert_to(metadata::text, 'UTF8')
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
