-- Named queries of the event store, loaded once by store/queries.py.
-- Each starts with a line "-- name: <name>"; parameters are asyncpg's $n.

-- name: append_one
-- One event to one stream in a single round trip, with the version check inside the same
-- statement. $1 stream, $2 expected exact version (NULL = no exact check), $3 stream must
-- already exist, $4 event id, $5 type, $6 schema version, $7 payload, $8 metadata,
-- $9/$10 the fence (lease name and generation; NULL = not fenced).
-- The row is inserted only when the checks hold; the current version and whether the fence
-- held come back either way, so a refusal costs no second round trip. Two writers racing past
-- the version check collide on events_stream_version_key, which the store reports as a
-- conflict: no lock is taken, so writers to different streams never wait for each other.
-- The fence row is read FOR SHARE: a node taking the lease over (UPDATE ... generation + 1)
-- waits until this append commits, and an append that starts after the take-over sees the
-- new generation and is refused. So no event of a stale generation lands after a newer one
-- was granted.
WITH fence AS (
    SELECT generation FROM i3lani.leases WHERE name = $9::text FOR SHARE
), current_version AS (
    SELECT coalesce(max(stream_version), 0) AS version,
           ($9::text IS NULL OR EXISTS (SELECT 1 FROM fence WHERE generation = $10::bigint))
               AS fence_ok
    FROM i3lani.events
    WHERE stream = $1
), inserted AS (
    INSERT INTO i3lani.events
        (event_id, stream, stream_version, type, schema_version, payload, metadata)
    SELECT $4, $1, c.version + 1, $5, $6, $7, $8
    FROM current_version c
    WHERE ($2::bigint IS NULL OR c.version = $2::bigint)
      AND (NOT $3::boolean OR c.version > 0)
      AND c.fence_ok
    RETURNING global_position, transaction_id, recorded_at
)
SELECT c.version, i.global_position, i.transaction_id, i.recorded_at, c.fence_ok
FROM current_version c
LEFT JOIN inserted i ON true;

-- name: append_exact
-- The common case of append_one, leaner: one event, an exact expected version ($2; 0 for a
-- new stream), no fence. The row goes in as version $2 + 1 only if version $2 exists (or $2 is
-- 0); the unique (stream, stream_version) index refuses it if $2 + 1 exists already. So the
-- check costs one index probe and no aggregate. No row back means the check failed.
INSERT INTO i3lani.events
    (event_id, stream, stream_version, type, schema_version, payload, metadata)
SELECT $3, $1, $2::bigint + 1, $4, $5, $6, $7
WHERE $2::bigint = 0
   OR EXISTS (SELECT 1 FROM i3lani.events WHERE stream = $1 AND stream_version = $2::bigint)
RETURNING global_position, transaction_id, recorded_at;

-- name: append_many
-- Several appends, to distinct streams, in one statement (and so one transaction): how a batch
-- of events to one stream is written, and how the store combines concurrent appends ("group
-- commit"). Request k has stream $1[k], expected exact version $2[k] (NULL = none),
-- must-exist flag $3[k] and fence $11[k]/$12[k] (NULL = none); event j belongs to request
-- $4[j], is number $5[j] (from 1) within it, and has id $6[j], type $7[j], schema version
-- $8[j], payload $9[j], metadata $10[j]. A request whose checks fail inserts nothing and the
-- others go ahead; its current version and fence verdict come back so the caller can raise
-- the right error without asking again. Fences are read FOR SHARE, as in append_one.
WITH fences AS (
    SELECT name, generation FROM i3lani.leases
    WHERE name = ANY($11::text[])
    FOR SHARE
), requests AS (
    SELECT r.stream, r.expected, r.must_exist, r.idx,
           (SELECT coalesce(max(e.stream_version), 0)
              FROM i3lani.events e WHERE e.stream = r.stream) AS version,
           (r.fence_name IS NULL OR EXISTS (
               SELECT 1 FROM fences f
               WHERE f.name = r.fence_name AND f.generation = r.fence_generation)) AS fence_ok
    FROM unnest($1::text[], $2::bigint[], $3::boolean[], $11::text[], $12::bigint[])
         WITH ORDINALITY AS r(stream, expected, must_exist, fence_name, fence_generation, idx)
), accepted AS (
    SELECT * FROM requests
    WHERE (expected IS NULL OR version = expected) AND (NOT must_exist OR version > 0)
      AND fence_ok
), inserted AS (
    INSERT INTO i3lani.events
        (event_id, stream, stream_version, type, schema_version, payload, metadata)
    SELECT ev.event_id, a.stream, a.version + ev.n, ev.type, ev.schema_version, ev.payload,
           ev.metadata
    FROM unnest($4::bigint[], $5::bigint[], $6::uuid[], $7::text[], $8::integer[], $9::jsonb[],
                $10::jsonb[])
         AS ev(request, n, event_id, type, schema_version, payload, metadata)
    JOIN accepted a ON a.idx = ev.request
    ORDER BY ev.request, ev.n
    RETURNING stream, global_position, transaction_id, recorded_at
)
SELECT r.idx, r.version,
       min(i.global_position) AS first_position,
       max(i.global_position) AS last_position,
       min(i.transaction_id) AS transaction_id,
       min(i.recorded_at) AS recorded_at,
       r.fence_ok
FROM requests r
LEFT JOIN inserted i ON i.stream = r.stream
GROUP BY r.idx, r.version, r.fence_ok
ORDER BY r.idx;

-- name: events_by_id
-- What was stored under these event ids: used after a conflict to tell an idempotent retry
-- (same ids, same content: return the original result) from a reused id (an error).
SELECT event_id, stream, stream_version, global_position, transaction_id, type, payload,
       metadata, recorded_at
FROM i3lani.events
WHERE event_id = ANY($1::uuid[])
ORDER BY global_position;

-- name: stream_version
SELECT coalesce(max(stream_version), 0) FROM i3lani.events WHERE stream = $1;

-- name: read_stream
SELECT global_position, transaction_id, event_id, stream, stream_version, type, schema_version,
       payload, metadata, recorded_at
FROM i3lani.events
WHERE stream = $1 AND stream_version > $2
ORDER BY stream_version
LIMIT $3;

-- name: read_all
-- Tailing the whole log without ever skipping an event.
--
-- global_position comes from an identity sequence when the row is inserted, but transactions
-- commit in any order: position 11 can commit and be read while position 10's transaction is
-- still open, and a reader that remembered "I am at 11" would never see 10. Readers therefore
-- follow (transaction_id, global_position) and only read rows whose transaction id is below the
-- xmin of the current snapshot: every transaction with a smaller id has finished (committed or
-- aborted), and a transaction that starts later always gets a larger id, so no row can ever
-- appear behind a reader's position. Writers take no lock for this, so concurrent appends to
-- different streams proceed in parallel. The price: while some write transaction stays open,
-- readers see nothing written after it began. Transaction ids are server-wide, so that means
-- a write transaction in any database of the server, not only ours: readers are delayed (never
-- wrong) by long write transactions anywhere on it. i3lani's own writes are short statements;
-- the README asks for a server without other long-running writers. (A serialising lock or a single sequencer would give
-- commit-ordered positions at the cost of one writer at a time; we keep writers parallel.)
SELECT global_position, transaction_id, event_id, stream, stream_version, type, schema_version,
       payload, nullif(metadata, '{}'::jsonb), recorded_at
FROM i3lani.events
WHERE (transaction_id, global_position) > ($1::xid8, $2::bigint)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id, global_position
LIMIT $3;

-- name: read_category
-- read_all restricted to one category; same ordering argument, served by
-- events_category_commit_order_idx.
SELECT global_position, transaction_id, event_id, stream, stream_version, type, schema_version,
       payload, nullif(metadata, '{}'::jsonb), recorded_at
FROM i3lani.events
WHERE category = $4
  AND (transaction_id, global_position) > ($1::xid8, $2::bigint)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id, global_position
LIMIT $3;

-- name: held_back
-- Are there committed events past the cursor that the reader has not got yet? Either they are
-- held back by an older transaction that is still open, or they became readable since the
-- reader's last page. Readers that got a short page ask this before they go to sleep: it
-- closes the race where the blocking transaction commits between the page and the check.
-- ($3 is a category or NULL for all.)
SELECT EXISTS (
    SELECT 1 FROM i3lani.events
    WHERE (transaction_id, global_position) > ($1::xid8, $2::bigint)
      AND ($3::text IS NULL OR category = $3::text)
);

-- name: position_cursor
SELECT transaction_id, global_position FROM i3lani.events WHERE global_position = $1;

-- name: load_checkpoint
SELECT transaction_id, global_position FROM i3lani.checkpoints WHERE name = $1;

-- name: save_checkpoint
-- Compare-and-set: $4/$5 is the checkpoint the subscriber last read (NULL when it had none).
-- Zero rows back means another consumer moved it meanwhile.
INSERT INTO i3lani.checkpoints AS c (name, transaction_id, global_position)
VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE
    SET transaction_id = excluded.transaction_id,
        global_position = excluded.global_position,
        updated_at = now()
    WHERE $4::xid8 IS NOT NULL
      AND c.transaction_id = $4::xid8 AND c.global_position = $5::bigint
RETURNING name;

-- name: save_snapshot
INSERT INTO i3lani.snapshots (stream, stream_version, state_type, state)
VALUES ($1, $2, $3, $4)
ON CONFLICT (stream) DO UPDATE
    SET stream_version = excluded.stream_version,
        state_type = excluded.state_type,
        state = excluded.state,
        taken_at = now()
    WHERE i3lani.snapshots.stream_version <= excluded.stream_version;

-- name: load_snapshot
SELECT stream_version, state_type, state FROM i3lani.snapshots WHERE stream = $1;

-- name: summary_by_type
SELECT category, type, count(*) AS events, max(recorded_at) AS last_recorded_at
FROM i3lani.events
GROUP BY category, type
ORDER BY category, type;

-- name: summary_totals
SELECT count(*) AS events,
       count(DISTINCT stream) AS streams,
       coalesce(max(global_position), 0) AS last_position,
       min(recorded_at) AS first_recorded_at,
       max(recorded_at) AS last_recorded_at
FROM i3lani.events;

-- name: checkpoints
SELECT c.name, c.global_position, c.updated_at,
       (SELECT count(*) FROM i3lani.events e
         WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position))
           AS behind
FROM i3lani.checkpoints c
ORDER BY c.name;

-- name: lease_acquire
-- Take the lease if it is free (never granted, released, or expired) or already ours: $2 is
-- the holder, unique per process (node name plus an instance id), so two processes that share
-- a node name never share a lease. Every grant, ours again included (a new incarnation after a
-- restart), bumps the generation. Returns the generation granted, or no row when another
-- holder has it.
INSERT INTO i3lani.leases AS l (name, node, generation, expires_at)
VALUES ($1, $2, 1, now() + make_interval(secs => $3))
ON CONFLICT (name) DO UPDATE
    SET node = excluded.node,
        generation = l.generation + 1,
        acquired_at = now(),
        renewed_at = now(),
        expires_at = excluded.expires_at
    WHERE l.node IS NULL OR l.expires_at < now() OR l.node = excluded.node
RETURNING generation;

-- name: lease_renew
UPDATE i3lani.leases
SET expires_at = now() + make_interval(secs => $4), renewed_at = now()
WHERE name = $1 AND node = $2 AND generation = $3 AND expires_at >= now()
RETURNING expires_at;

-- name: lease_release
-- Hand the lease back at once (SIGTERM, operator stop): another node may take it immediately.
UPDATE i3lani.leases
SET node = NULL, expires_at = now()
WHERE name = $1 AND node = $2 AND generation = $3
RETURNING name;

-- name: leases
SELECT name, node, generation, acquired_at, renewed_at, expires_at, expires_at >= now() AS live
FROM i3lani.leases
ORDER BY name;

-- name: desired_state
-- What operators (and the restart intensity) last asked of actor $1: the newest of its
-- commands in ops-commands and its ActorParked events, in reading order.
SELECT type, payload->>'action' AS action
FROM i3lani.events
WHERE (stream = 'ops-commands' AND type = 'OperatorCommandIssued' AND payload->>'actor' = $1)
   OR (stream = 'actor-' || $1 AND type = 'ActorParked')
ORDER BY transaction_id DESC, global_position DESC
LIMIT 1;

-- name: last_event
SELECT global_position, transaction_id, event_id, stream, stream_version, type, schema_version,
       payload, metadata, recorded_at
FROM i3lani.events
WHERE stream = $1
ORDER BY stream_version DESC
LIMIT 1;

-- name: head
-- The newest event a reader can see now, in reading order: where a follower that wants only
-- new events starts.
SELECT transaction_id, global_position
FROM i3lani.events
WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id DESC, global_position DESC
LIMIT 1;
