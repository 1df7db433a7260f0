-- Read models and queries outside the event log's own API, loaded by store/queries.py with
-- queries.sql (one namespace: a name is defined once across both files) and run only by the
-- named functions of store/views.py and store/admin.py. Parameters are asyncpg's $n.

-- ---------------------------------------------------------------------------------------------
-- `i3lani summary` (views.summary).

-- name: summary_by_type
SELECT category, type, count(*) AS events, max(recorded_at) AS last_recorded_at
FROM i3lani.events
GROUP BY category, type
ORDER BY category, type;

-- name: summary_totals
-- One pass over the log (it reads every row anyway): totals, and the events of the last day
-- and week, for the growth per day.
SELECT count(*) AS events,
       count(DISTINCT stream) AS streams,
       coalesce(max(global_position), 0) AS last_position,
       min(recorded_at) AS first_recorded_at,
       max(recorded_at) AS last_recorded_at,
       count(*) FILTER (WHERE recorded_at > now() - interval '1 day') AS events_last_day,
       count(*) FILTER (WHERE recorded_at > now() - interval '7 days') AS events_last_week
FROM i3lani.events;

-- name: summary_sizes
-- What the log takes on disk: the table with its TOAST and every index (what a database
-- plan's storage counts), the table alone, its indexes; and the whole database.
SELECT pg_total_relation_size('i3lani.events') AS log_bytes,
       pg_relation_size('i3lani.events') AS table_bytes,
       pg_indexes_size('i3lani.events') AS index_bytes,
       pg_database_size(current_database()) AS database_bytes;

-- name: checkpoints
SELECT c.name, c.global_position, c.updated_at,
       (SELECT count(*) FROM i3lani.events e
         WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position))
           AS behind
FROM i3lani.checkpoints c
ORDER BY c.name;

-- ---------------------------------------------------------------------------------------------
-- The admin API and the dashboard (ops/admin.py, through store/views.py): read-only, and cheap however long the log
-- grows, since /metrics is scraped and the dashboard refreshes every couple of seconds.

-- name: admin_events_by_type
-- Events per type, for /metrics: grouping on the indexed type column alone lets PostgreSQL
-- answer from events_type_idx (an index-only scan once the table is vacuumed).
SELECT type, count(*) AS events
FROM i3lani.events
GROUP BY type
ORDER BY type;

-- name: admin_events_per_stream
-- Events of type $1 per stream (ActorRestarted per actor-<name> stream, for /metrics), served
-- by events_type_idx.
SELECT stream, count(*) AS events
FROM i3lani.events
WHERE type = $1
GROUP BY stream;

-- name: admin_event_rate
-- Events per minute over the last $1 minutes (the current one included), every minute present,
-- oldest first. There is no index on recorded_at (nothing else needs one), so only the newest
-- $2 events are looked at, newest first along the reading order (events_reading_order_idx,
-- read backwards): a refresh costs at most $2 rows however long the log is, and a window
-- holding $2 events is a lower bound (the caller says so). recorded_at is the appending
-- transaction's start, as now() is this one's.
WITH recent AS (
    SELECT recorded_at FROM i3lani.events
    ORDER BY transaction_id DESC, global_position DESC
    LIMIT $2
)
SELECT m.minute, count(r.recorded_at) AS events
FROM generate_series(date_trunc('minute', now()) - make_interval(mins => $1::int - 1),
                     date_trunc('minute', now()), interval '1 minute') AS m(minute)
LEFT JOIN recent r ON date_trunc('minute', r.recorded_at) = m.minute
GROUP BY m.minute
ORDER BY m.minute;

-- name: admin_recent_streams
-- The $1 streams of category $4 written to last, newest first, found among the newest $2 events
-- of that category (events_reading_order_idx, read backwards, other categories skipped). $3 lists the types that
-- count: for payments, a wallet scan is in the category but is not a payment.
SELECT stream, max(global_position) AS last_position
FROM (
    SELECT stream, type, global_position
    FROM i3lani.events
    WHERE category = $4
    ORDER BY transaction_id DESC, global_position DESC
    LIMIT $2
) recent
WHERE type = ANY($3::text[])
GROUP BY stream
ORDER BY max(global_position) DESC
LIMIT $1;

-- ---------------------------------------------------------------------------------------------
-- The bot gateway (views.max_payload_int) and the health probe (views.ping).

-- name: max_payload_int
-- The largest integer field $2 of the events of type $1, 0 when there is none: the largest
-- payment id ever created, for the gateway, once per process and again after an id conflict.
-- events_type_idx makes this an index scan over the rows of that type only.
SELECT coalesce(max((payload->>$2::text)::bigint), 0)
FROM i3lani.events
WHERE type = $1;

-- name: connection_use
-- The server's connection limit, its client sessions now (every database's: the limit is the
-- server's), and this database's i3lani sessions by application_name (i3lani:<node>:<purpose>,
-- store/limits.py), this statement's own left out.
SELECT current_setting('max_connections')::int AS server_max,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')
           AS server_in_use,
       a.application_name, count(a.pid) AS sessions
FROM (SELECT application_name, pid FROM pg_stat_activity
      WHERE datname = current_database() AND application_name LIKE 'i3lani:%'
        AND pid <> pg_backend_pid()) a
RIGHT JOIN (SELECT 1) one ON true
GROUP BY a.application_name
ORDER BY a.application_name;

-- name: ping
-- One round trip and nothing else: is PostgreSQL there, and how quickly does it answer?
SELECT 1;

-- ---------------------------------------------------------------------------------------------
-- Health samples (table i3lani.health_samples): one row per check of every health round, the
-- HealthChecker's telemetry beside the log (which records only a change of verdict, as
-- HealthChecked), pruned by Cleanup.

-- name: health_samples_insert
-- $1..$5 per check; run with executemany.
INSERT INTO i3lani.health_samples (checked_at, name, ok, latency_ms, detail)
VALUES ($1, $2, $3, $4, $5);

-- name: health_samples_latest
-- The last round: every sample checked at the latest time (health_samples_checked_at_idx
-- finds the time, then its rows), in the order they were written.
SELECT checked_at, name, ok, latency_ms, detail
FROM i3lani.health_samples
WHERE checked_at = (SELECT max(checked_at) FROM i3lani.health_samples)
ORDER BY id;

-- name: health_samples_prune
-- Delete up to $2 samples checked before $1, oldest ids first: each statement is short, and
-- health_samples_checked_at_idx finds them. The caller repeats it until fewer than $2 go.
DELETE FROM i3lani.health_samples
WHERE id IN (
    SELECT id FROM i3lani.health_samples WHERE checked_at < $1 ORDER BY id LIMIT $2
);

-- ---------------------------------------------------------------------------------------------
-- Databases, not the log (store/admin.py): run on a connection to the server's maintenance
-- database. Identifiers cannot be parameters: {database} is replaced by a name quoted with
-- quote_ident rules by store/admin.py, and {comment} by a quoted literal.

-- name: database_mark
-- Whether database $1 exists (a row or none) and its comment (NULL: none).
SELECT shobj_description(oid, 'pg_database') AS comment FROM pg_database WHERE datname = $1;

-- name: database_create
CREATE DATABASE {database};

-- name: database_comment
COMMENT ON DATABASE {database} IS {comment};

-- name: database_drop
-- WITH (FORCE) ends the sessions still connected to it (PostgreSQL 13+).
DROP DATABASE IF EXISTS {database} WITH (FORCE);

-- name: events_backdate
-- Scratch databases only (the dashboard's screenshots): set the recorded_at of the events at
-- positions $1 to $2. The append-only trigger refuses any UPDATE of the log, so it is switched
-- off for this one statement, inside the same transaction (see store/admin.py).
UPDATE i3lani.events e SET recorded_at = v.at
FROM unnest($1::bigint[], $2::timestamptz[]) AS v(position, at)
WHERE e.global_position = v.position;

-- name: events_trigger_disable
ALTER TABLE i3lani.events DISABLE TRIGGER events_append_only_row;

-- name: events_trigger_enable
ALTER TABLE i3lani.events ENABLE TRIGGER events_append_only_row;

-- name: streams_with_types
-- Every stream holding events of the types $1, oldest first, with the position of its newest
-- such event (the refunds: each payment-refund-<hash> stream, for `i3lani refunds` and the
-- dashboard, which re-read a stream only when that position moved). Served by
-- events_type_idx: the rows read are the events of those types, few by nature.
SELECT stream, max(global_position) AS last_position
FROM i3lani.events
WHERE type = ANY($1::text[])
GROUP BY stream
ORDER BY min(global_position);
