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
    FROM unnest($4::bigint[], $5::bigint[], $6::uuid[], $7::text[], $8::integer[], $9::json[],
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
--
-- The metadata comes back as stored, `{}` included (the decoder takes it as no metadata): no
-- operator of jsonb's here, so this statement reads the log as well once a later release has
-- moved the metadata to `json` (as 0010 moved the payload), during the deploy's overlap too.
SELECT global_position, transaction_id, event_id, stream, stream_version, type, schema_version,
       payload, metadata, recorded_at
FROM i3lani.events
WHERE (transaction_id, global_position) > ($1::xid8, $2::bigint)
  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id, global_position
LIMIT $3;

-- name: read_category
-- read_all restricted to one category; same ordering argument, served by the same index
-- (events_reading_order_idx: transaction_id, global_position, category), whose third column
-- lets the scan skip other categories' entries without reading their rows.
SELECT global_position, transaction_id, event_id, stream, stream_version, type, schema_version,
       payload, metadata, recorded_at
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
--
-- Written as the first row in reading order (ORDER BY ... LIMIT 1 in a scalar subquery), not
-- as EXISTS: PostgreSQL drops ORDER BY and LIMIT inside EXISTS, and once a prepared statement
-- goes to its generic plan (after five runs) it estimated a third of the log past an unknown
-- cursor and chose a sequential scan, expecting to stop at once. A caught-up reader, the
-- usual asker, finds nothing, so that scan read the whole log on every short page: 70 ms at
-- 380,000 events, the whole of a subscriber's wake-up latency. The ordered form walks
-- events_reading_order_idx from the cursor under either plan, which for a reader near the
-- head is a few entries.
SELECT coalesce((
    SELECT true FROM i3lani.events
    WHERE (transaction_id, global_position) > ($1::xid8, $2::bigint)
    ORDER BY transaction_id, global_position
    LIMIT 1
), false);

-- name: held_back_category
-- held_back for one category ($3), its own statement so that the category is an index
-- condition in every plan (events_reading_order_idx's third column: other categories'
-- entries are skipped inside the index), not a filter on each row.
SELECT coalesce((
    SELECT true FROM i3lani.events
    WHERE (transaction_id, global_position) > ($1::xid8, $2::bigint)
      AND category = $3::text
    ORDER BY transaction_id, global_position
    LIMIT 1
), false);

-- name: position_cursor
-- One position's cursor, found through events_position_idx (BRIN: the block range holding it).
SELECT transaction_id, global_position FROM i3lani.events WHERE global_position = $1;

-- name: load_checkpoint
SELECT transaction_id, global_position FROM i3lani.checkpoints WHERE name = $1;

-- name: save_checkpoint
-- Compare-and-set: $4/$5 is the checkpoint the subscriber last read (NULL when it had none).
-- Zero rows back means another consumer moved it meanwhile, or (with a fence, $6/$7: lease name
-- and generation, NULL = none) that generation is no longer current; the lease row is read
-- FOR SHARE, as by fenced appends.
INSERT INTO i3lani.checkpoints AS c (name, transaction_id, global_position)
SELECT $1, $2, $3
WHERE $6::text IS NULL OR EXISTS (
    SELECT 1 FROM i3lani.leases WHERE name = $6::text AND generation = $7::bigint FOR SHARE)
ON CONFLICT (name) DO UPDATE
    SET transaction_id = excluded.transaction_id,
        global_position = excluded.global_position,
        updated_at = now()
    WHERE $4::xid8 IS NOT NULL
      AND c.transaction_id = $4::xid8 AND c.global_position = $5::bigint
RETURNING name;

-- name: save_tick
-- Actor $1's tick schedule: its last tick ran for the slot due at $2, at $3 (the actor's clock),
-- on node $6. Overwritten in place by every tick: a tick that changed nothing leaves nothing
-- in the log (migration 0007). With a fence ($4/$5: lease name and generation, NULL = none) it
-- is written only while that generation is current, the lease row read FOR SHARE as by fenced
-- appends and checkpoints: no row back means the fence refused it.
INSERT INTO i3lani.ticks AS t (name, due_at, ticked_at, node, generation)
SELECT $1, $2, $3, $6, $5::bigint
WHERE $4::text IS NULL OR EXISTS (
    SELECT 1 FROM i3lani.leases WHERE name = $4::text AND generation = $5::bigint FOR SHARE)
ON CONFLICT (name) DO UPDATE
    SET due_at = excluded.due_at, ticked_at = excluded.ticked_at, node = excluded.node,
        generation = excluded.generation, updated_at = now()
RETURNING name;

-- name: load_tick
SELECT due_at, ticked_at, node, generation FROM i3lani.ticks WHERE name = $1;

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

-- name: lease_renew_many
-- Extend every live grant of ours in one statement: a node renews all the leases it holds at
-- once (the supervisor's lease keeper), not one statement per lease. $2 and $3 are the names
-- and generations held, side by side. Returns the names renewed (sorted; empty when none was):
-- a name missing was lost (expired, taken over, or released).
WITH renewed AS (
    UPDATE i3lani.leases AS l
    SET expires_at = now() + make_interval(secs => $4), renewed_at = now()
    FROM unnest($2::text[], $3::bigint[]) AS held(name, generation)
    WHERE l.name = held.name AND l.node = $1 AND l.generation = held.generation
      AND l.expires_at >= now()
    RETURNING l.name
)
SELECT coalesce(array_agg(name ORDER BY name), '{}'::text[]) FROM renewed;

-- name: lease_release
-- Hand the lease back at once (SIGTERM, operator stop): another node may take it immediately,
-- and is told so: NOTIFY i3lani_leases with the lease's name (sent when this commits), which
-- wakes the nodes standing by for it instead of leaving them asleep until it would expire.
WITH released AS (
    UPDATE i3lani.leases
    SET node = NULL, expires_at = now()
    WHERE name = $1 AND node = $2 AND generation = $3
    RETURNING name
)
SELECT name, pg_notify('i3lani_leases', name) FROM released;

-- name: lease_expires_in
-- Seconds until the current grant of the lease expires, by the database's clock (0 once it
-- has); no row when nobody holds it. A node whose acquire was refused sleeps this long (or
-- until a release wakes it) instead of asking again every second.
SELECT greatest(extract(epoch FROM expires_at - now()), 0)::float8
FROM i3lani.leases
WHERE name = $1 AND node IS NOT NULL;

-- name: lease_generation
SELECT generation FROM i3lani.leases WHERE name = $1;

-- name: leases
-- Every lease, judged by the database's clock: live (not expired), and suspect: held and live
-- but not renewed for over half its time to live (its holder renews four times per time to
-- live, so it has missed renewals: frozen, or cut off from the database).
SELECT name, node, generation, acquired_at, renewed_at, expires_at, expires_at >= now() AS live,
       (node IS NOT NULL AND expires_at >= now()
        AND now() - renewed_at > (expires_at - renewed_at) / 2) AS suspect,
       extract(epoch FROM now() - renewed_at)::float8 AS renewed_seconds_ago
FROM i3lani.leases
ORDER BY name;

-- name: end_stuck_sessions
-- i3lani sessions (by application_name) frozen in the middle of a statement's protocol exchange
-- with a transaction open: state 'active', waiting to read from their client, holding a
-- transaction id, for over $1 seconds. asyncpg sends Parse/Describe first and Bind/Execute/Sync
-- after the answer; a client paused or cut off in between leaves its backend there, where
-- neither idle_in_transaction_session_timeout (it is not "idle") nor statement_timeout (a
-- cancel while reading from the client is ignored) applies, with its row locks and the
-- snapshot horizon readers wait on. A healthy client spends microseconds there. The sessions
-- are ended (PostgreSQL 17's transaction_timeout does it too, after the longer statement bound).
-- Only this database's: a server shared by several deployments (or test databases) is policed
-- by each deployment for its own sessions, never for another's.
SELECT pid, application_name, extract(epoch FROM now() - state_change)::float8 AS stuck_seconds,
       pg_terminate_backend(pid) AS ended
FROM pg_stat_activity
WHERE application_name LIKE 'i3lani:%' AND pid <> pg_backend_pid()
  AND datname = current_database()
  AND state = 'active' AND wait_event_type = 'Client' AND wait_event = 'ClientRead'
  AND backend_xid IS NOT NULL AND state_change < now() - make_interval(secs => $1::float8);

-- name: oldest_writer
-- The oldest open write transaction on the server (transaction ids are server-wide, so any
-- database's counts), and how many committed events of ours wait behind it: gap-free readers
-- only read rows below the oldest running transaction id (see read_all), so while it stays
-- open they see nothing committed after it began. No row: no write transaction is open.
SELECT a.pid, a.datname AS database, a.application_name AS application, a.state,
       extract(epoch FROM now() - a.xact_start)::float8 AS open_seconds,
       extract(epoch FROM now() - a.state_change)::float8 AS state_seconds,
       (SELECT count(*) FROM (
            SELECT 1 FROM i3lani.events e
            WHERE e.transaction_id >= pg_snapshot_xmin(pg_current_snapshot())
            LIMIT 100000) w) AS events_waiting
FROM pg_stat_activity a
WHERE a.backend_xid IS NOT NULL AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
ORDER BY a.xact_start
LIMIT 1;

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

-- name: read_event
-- One event by its id (the unique index events_event_id_key), or no row.
SELECT global_position, transaction_id, event_id, stream, stream_version, type, schema_version,
       payload, metadata, recorded_at
FROM i3lani.events
WHERE event_id = $1;

-- name: head
-- The newest event a reader can see now, in reading order: where a follower that wants only
-- new events starts.
SELECT transaction_id, global_position
FROM i3lani.events
WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY transaction_id DESC, global_position DESC
LIMIT 1;

-- ---------------------------------------------------------------------------------------------
-- The task queue (store/tasks.py, table i3lani.tasks from migration 0003).
--
-- Every statement that changes a task row also appends that change's event to the task's
-- stream, task-<id>, in the same statement, and so in the same transaction: the table is the
-- queue's working state, the log its record. The events go in through plain INSERTs into
-- i3lani.events, like the store's own append queries: positions and transaction ids come from
-- the column defaults, so the log's reading order (see read_all) holds for them as for any
-- append, and the append-only triggers apply. The stream version comes from the row's
-- stream_version: every transition of a task holds its row lock, so it is the only writer of
-- its stream, and events_stream_version_key would still refuse a second writer. Event payloads
-- are built here with jsonb_build_object; their shapes are the Structs of events/tasks.py
-- (schema version 1), and the tests read every one back through the registry.
--
-- Enqueueing never NOTIFYs inside its own transaction when it can avoid it: a NOTIFY takes
-- PostgreSQL's notify lock at commit and would serialise all enqueuers (see _notifier in
-- eventstore.py); the queue notifies from a connection of its own just after the commit.
-- Only an enqueue inside a caller's transaction notifies there ($8), because only the
-- caller's commit may announce it.

-- name: task_enqueue
-- Add tasks. $1 task types, $2 payloads, $3 priorities, $4 delays in seconds, $5 max attempts,
-- $6 dedupe keys (NULL = none), one element per task; $7 the events' metadata; $8 whether to
-- NOTIFY i3lani_tasks from this transaction (payload: seconds until the earliest run_at).
-- Ids are drawn from the identity sequence before inserting, so each input row keeps its id
-- whether or not it is inserted: a row whose dedupe key is held by a task not yet finished is
-- skipped (ON CONFLICT DO NOTHING on tasks_dedupe_key_idx) and comes back absent, and the caller
-- looks up the task that holds the key.
WITH input AS MATERIALIZED (
    SELECT nextval('i3lani.tasks_id_seq'::regclass) AS id,
           t.task_type, t.payload, t.priority, now() + make_interval(secs => t.delay) AS run_at,
           t.max_attempts, t.dedupe_key, t.ord
    FROM unnest($1::text[], $2::jsonb[], $3::integer[], $4::float8[], $5::integer[],
                $6::text[])
         WITH ORDINALITY AS t(task_type, payload, priority, delay, max_attempts, dedupe_key, ord)
), inserted AS (
    INSERT INTO i3lani.tasks
        (id, task_type, payload, priority, run_at, max_attempts, dedupe_key)
    OVERRIDING SYSTEM VALUE
    SELECT id, task_type, payload, priority, run_at, max_attempts, dedupe_key
    FROM input
    ORDER BY ord
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running')
    DO NOTHING
    -- Named as TaskEnqueued's fields: the event's payload is the row as JSON.
    RETURNING id AS task_id, task_type, payload, priority, run_at, max_attempts, dedupe_key
), logged AS (
    INSERT INTO i3lani.events
        (event_id, stream, stream_version, type, schema_version, payload, metadata)
    SELECT i3lani.uuid_v7(), 'task-' || i.task_id, 1, 'TaskEnqueued', 1, row_to_json(i), $7::jsonb
    FROM inserted i
    ORDER BY i.task_id
), notified AS (
    SELECT pg_notify('i3lani_tasks',
                     greatest(0, extract(epoch FROM min(run_at) - now()))::float8::text)
    FROM inserted
    WHERE $8::boolean
    HAVING count(*) > 0
)
SELECT input.ord, input.id, (SELECT count(*) FROM notified) AS notified
FROM inserted
JOIN input ON input.id = inserted.task_id
ORDER BY input.ord;

-- name: task_enqueue_one
-- task_enqueue for a single task, leaner to plan and run (add_task's usual case): $1 task type,
-- $2 payload, $3 priority, $4 delay in seconds, $5 max attempts, $6 dedupe key, $7 metadata,
-- $8 whether to NOTIFY from this transaction. No row back: the dedupe key is held.
WITH inserted AS (
    INSERT INTO i3lani.tasks (task_type, payload, priority, run_at, max_attempts, dedupe_key)
    VALUES ($1, $2, $3, now() + make_interval(secs => $4::float8), $5, $6)
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running')
    DO NOTHING
    -- Named as TaskEnqueued's fields: the event's payload is the row as JSON.
    RETURNING id AS task_id, task_type, payload, priority, run_at, max_attempts, dedupe_key
), logged AS (
    INSERT INTO i3lani.events
        (event_id, stream, stream_version, type, schema_version, payload, metadata)
    SELECT i3lani.uuid_v7(), 'task-' || i.task_id, 1, 'TaskEnqueued', 1, row_to_json(i), $7::jsonb
    FROM inserted i
), notified AS (
    SELECT pg_notify('i3lani_tasks', $4::float8::text) FROM inserted WHERE $8::boolean
)
SELECT 1::bigint AS ord, task_id AS id, (SELECT count(*) FROM notified) AS notified
FROM inserted;

-- name: task_holding_keys
-- Which unfinished tasks hold these dedupe keys (after task_enqueue skipped some).
SELECT dedupe_key, id
FROM i3lani.tasks
WHERE dedupe_key = ANY($1::text[]) AND status IN ('queued', 'running');

-- name: task_cycle
-- A processor's round trip: record how attempts ended, then claim more, in one statement (one
-- transaction, one WAL flush): a busy processor spends one statement per batch, not two.
--
-- Outcomes, element k: task $1[k], attempt $2[k], run by node $3[k]; $4[k] is the error (NULL:
-- it succeeded), $5[k] the seconds until the retry (NULL with an error: dead-letter it), $6[k]
-- how long the handler ran in ms. A row changes only while it is still running attempt $2[k]
-- under holder $3[k]: a node whose lock expired (and whose task was reclaimed, perhaps already
-- running elsewhere) finds its late outcome refused, and the record stays consistent. Success:
-- TaskSucceeded. Failure: TaskFailed with retry_at, the row queued again at that time. Last
-- failure: TaskFailed without retry_at, then TaskDeadLettered. Times are now() + delay:
-- PostgreSQL's clock. (A holder implies 'running', by tasks_lock_check; the status is not
-- tested on purpose: with it the planner may walk tasks_lock_expiry_idx, whose dead entries
-- pile up under load until vacuum; `t.id = ANY($1)` points it at the primary key.)
--
-- Claim: up to $8 due tasks of types $9 for node $10, locked for $11 seconds ($8 = 0: none),
-- picked by i3lani.due_tasks (migration 0003, a function to pin its plan).
-- Order: priority first (higher first), then the time it became due, then the id: the order
-- tasks_claim_idx keeps for queued rows. FOR UPDATE SKIP LOCKED passes over rows another
-- claimer is taking at this very moment instead of waiting for them, so any number of
-- claimers (on any number of nodes) each get distinct rows in one round trip and none ever
-- blocks behind another; SKIP LOCKED bends the order only among rows being claimed at that
-- instant. The row locks last for this statement only: from then on the row says 'running',
-- with its holder. A due row has run_at <= now(): delayed tasks and retries wait in the same
-- index. Each claim is an attempt: attempts goes up, TaskClaimed records it. The statement's
-- single snapshot keeps the two halves apart: a task re-queued by the first half is claimable
-- from the next statement on.
--
-- $7 is the events' metadata. Event ids are i3lani.uuid_v7(): time-ordered, see 0003.
-- Rows back: the recorded outcomes (claimed = false, with their new status), then the claimed
-- tasks in claim order.
--
-- The statement itself is the body of i3lani.task_cycle (migration 0003), a function for the
-- reason due_tasks is one: to pin its plan. As a prepared statement of the client's it got a
-- generic plan after five runs, made with the statistics of that moment; a processor started
-- on an empty queue kept plans that read the whole table (twice: outcomes, then claims) to
-- update its 50 rows by id, for as long as its connection lived, while a producer grew the
-- table. The function plans it once per connection without sequential scans, so the ids go
-- through the primary key whatever the statistics say; it runs exactly the one statement
-- described here (one snapshot, one transaction with the caller's).
--
-- $12/$13: the fence (lease name and generation; NULL = not fenced): refused with SQLSTATE
-- I3SG1, nothing written, unless that generation is current; tasks claimed under an older
-- generation of that lease are taken over first (migration 0005).
SELECT * FROM i3lani.task_cycle($1::bigint[], $2::integer[], $3::text[], $4::text[],
                                 $5::float8[], $6::float8[], $7::jsonb, $8::integer,
                                 $9::text[], $10::text, $11::float8, $12::text, $13::bigint);

-- name: task_heartbeat
-- Extend node $2's locks on tasks $1 by $3 seconds. The ids that come back are still ours;
-- one missing was reclaimed after its lock expired (its handler should give up).
-- (A function: see i3lani.task_heartbeat in schema.sql for why.)
-- $4/$5: the fence, as for task_cycle.
SELECT id FROM i3lani.task_heartbeat($1::bigint[], $2::text, $3::float8, $4::text, $5::bigint)
    AS h(id);

-- name: check_fence
-- Lock lease $1's row FOR SHARE for the rest of the transaction, or raise SQLSTATE I3SG1 unless
-- generation $2 is current (a no-op for a NULL lease). Fenced writes made by several
-- statements (an enqueue) start their transaction with it.
SELECT i3lani.check_fence($1::text, $2::bigint);

-- name: task_expired
-- Running tasks of types $2 whose lock expired: their node stopped heartbeating (it died, or
-- lost PostgreSQL for longer than the lock time). Read inside a transaction that then records
-- each one's failed attempt with task_cycle (under the holder it had, claiming nothing), so the
-- rows are locked here; SKIP LOCKED lets two nodes reaping at once share the work instead of
-- queueing, and means a reaper never waits for anyone (so it can never deadlock with them).
-- (A function: see i3lani.expired_tasks in schema.sql for why.)
-- $3/$4: the reaper's own fence, as for task_cycle; tasks of an older grant of that same lease
-- are left to the take-over of its next claim.
SELECT id, task_type, attempts, max_attempts, locked_by, locked_until
FROM i3lani.expired_tasks($1::integer, $2::text[], $3::text, $4::bigint);

-- name: task_next_lock_expiry
-- Seconds until the earliest lock of a running task of types $1 expires; negative when one has
-- expired; NULL when none runs. A processor's reaper sleeps until then (a lock taken from now
-- on lasts the whole lock time), and runs task_expired only once one has expired.
SELECT extract(epoch FROM min(t.locked_until) - now())::float8
FROM i3lani.tasks t
WHERE t.status = 'running' AND t.task_type = ANY($1::text[]);

-- name: task_next_due
-- Seconds until the earliest queued task of types $1 is due; negative when one is due already;
-- NULL when none is queued. A processor that has caught up sleeps until then at most. A type
-- at its concurrency limit (task_concurrency, migration 0008) is left out: its due tasks wait
-- for a running one to end, which the processor learns at its next poll (or at once, when the
-- task that ends is its own), instead of asking again and again.
SELECT extract(epoch FROM min(t.run_at) - now())::float8
FROM i3lani.tasks t
WHERE t.status = 'queued' AND t.task_type = ANY($1::text[])
  AND t.task_type NOT IN (
      SELECT c.task_type
      FROM i3lani.task_concurrency c
      WHERE c.task_type = ANY($1::text[])
        AND c.max_running <= (SELECT count(*) FROM i3lani.tasks r
                              WHERE r.status = 'running' AND r.locked_until >= now()
                                AND r.task_type = c.task_type));

-- name: task_counts
-- What an operator watches, per task type: queued (due or not), due, running, running with an
-- expired lock, dead; and how long the oldest due task has waited. Succeeded rows are not
-- counted (their history is in the log).
SELECT task_type,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'queued' AND run_at <= now()) AS due,
       count(*) FILTER (WHERE status = 'running') AS running,
       count(*) FILTER (WHERE status = 'running' AND locked_until < now()) AS expired,
       count(*) FILTER (WHERE status = 'dead') AS dead,
       now() - min(run_at) FILTER (WHERE status = 'queued' AND run_at <= now())
           AS oldest_due_age
FROM i3lani.tasks
WHERE status IN ('queued', 'running', 'dead')
GROUP BY task_type
ORDER BY task_type;

-- name: task_dead_letters
SELECT id, task_type, attempts, last_error, finished_at
FROM i3lani.tasks
WHERE status = 'dead'
ORDER BY finished_at DESC, id DESC
LIMIT $1;

-- name: task_get
SELECT id, task_type, payload, priority, run_at, status, attempts, max_attempts, last_error,
       locked_by, locked_until, dedupe_key, created_at, updated_at, finished_at
FROM i3lani.tasks
WHERE id = $1;

-- name: task_requeue_dead
-- An operator gives dead task $1 a fresh set of attempts, due now; $2 who asked, $3 the
-- metadata. Nothing comes back when the task is not dead. NOTIFY at commit: it is rare. A live
-- task holding the same dedupe key makes the UPDATE fail on tasks_dedupe_key_idx.
WITH old AS (
    SELECT id, attempts FROM i3lani.tasks WHERE id = $1 AND status = 'dead' FOR UPDATE
), requeued AS (
    UPDATE i3lani.tasks t
    SET status = 'queued', attempts = 0, run_at = now(), finished_at = NULL,
        updated_at = now(), stream_version = t.stream_version + 1
    FROM old
    WHERE t.id = old.id
    RETURNING t.id, t.run_at, t.stream_version, old.attempts AS previous_attempts
), logged AS (
    INSERT INTO i3lani.events
        (event_id, stream, stream_version, type, schema_version, payload, metadata)
    SELECT i3lani.uuid_v7(), 'task-' || r.id, r.stream_version, 'TaskRequeued', 1,
           jsonb_build_object('task_id', r.id, 'previous_attempts', r.previous_attempts,
                              'run_at', r.run_at, 'requested_by', $2::text),
           $3::jsonb
    FROM requeued r
), notified AS (
    SELECT pg_notify('i3lani_tasks', '0') FROM requeued
)
SELECT id, (SELECT count(*) FROM notified) AS notified FROM requeued;

-- name: task_prune_cutoff
SELECT now() - make_interval(secs => $1::float8);

-- name: task_prune
-- Delete up to $3 rows of tasks that succeeded before $1, with ids above $2, in id order: each
-- batch is a short transaction, and walking the primary key from where the last batch ended
-- reads the table once in all, with no index to maintain for it on every completion. The
-- tasks' events stay in the log. Returns how many rows went and the last id deleted.
WITH doomed AS (
    SELECT id
    FROM i3lani.tasks
    WHERE id > $2 AND status = 'succeeded' AND finished_at < $1
    ORDER BY id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM i3lani.tasks t
    USING doomed
    WHERE t.id = doomed.id
    RETURNING t.id
)
SELECT count(*) AS deleted, max(id) AS last_id FROM deleted;

-- name: task_concurrency_set
-- The concurrency limits of task types $1 (at most $2[k] running at once on every node
-- together), set by node $3: each row replaced (the last processor to start says what holds).
INSERT INTO i3lani.task_concurrency (task_type, max_running, set_by, updated_at)
SELECT l.task_type, l.max_running, $3::text, now()
FROM unnest($1::text[], $2::integer[]) AS l(task_type, max_running)
ON CONFLICT (task_type) DO UPDATE
SET max_running = excluded.max_running, set_by = excluded.set_by, updated_at = excluded.updated_at
WHERE (i3lani.task_concurrency.max_running, i3lani.task_concurrency.set_by)
      IS DISTINCT FROM (excluded.max_running, excluded.set_by);

-- name: task_concurrency_clear
-- Task types $1 have no concurrency limit any more.
DELETE FROM i3lani.task_concurrency WHERE task_type = ANY($1::text[]);

-- name: task_concurrency
-- Each limited task type: its limit, who set it, and how many of its tasks run now (live: a
-- dead node's expired lock is not counted, as claimable_tasks counts them).
SELECT c.task_type, c.max_running, c.set_by, c.updated_at,
       (SELECT count(*) FROM i3lani.tasks t
        WHERE t.status = 'running' AND t.locked_until >= now()
          AND t.task_type = c.task_type)::integer AS running
FROM i3lani.task_concurrency c
ORDER BY c.task_type;

-- Flow control (migrations 0008, 0009): the rate limits every node shares.

-- name: rate_take
-- One grant from each of the scopes $1 (limits $2[k] per $3[k] seconds, spaced $4 seconds
-- more; $5: on each scope's schedule too, migration 0009), or none: see i3lani.rate_take for
-- the locking. Row back: (granted, seconds to wait, the scope that refused).
SELECT granted, wait_seconds, refused_by
FROM i3lani.rate_take($1::text[], $2::integer[], $3::float8[], $4::float8, $5::boolean);

-- name: rate_pause
-- Pause scopes $1 (limits $2[k] per $3[k] seconds, for a row made here) for $4 seconds from
-- the server's clock: a 429's retry_after. A longer pause already set stays. One short
-- statement, rows in scope order. The seconds each scope is paused for now come back.
INSERT INTO i3lani.rate_limits AS l
    (scope, max_count, window_seconds, paused_until, pauses, updated_at)
SELECT p.scope, p.max_count, p.window_seconds,
       clock_timestamp() + make_interval(secs => $4::float8), 1, clock_timestamp()
FROM unnest($1::text[], $2::integer[], $3::float8[]) AS p(scope, max_count, window_seconds)
ORDER BY p.scope
ON CONFLICT (scope) DO UPDATE
SET paused_until = greatest(l.paused_until, excluded.paused_until),
    pauses = l.pauses + 1,
    updated_at = excluded.updated_at
RETURNING l.scope, extract(epoch FROM l.paused_until - clock_timestamp())::float8 AS paused_for;

-- name: rate_usage
-- What operators see: every scope shared by all (no ':' in its name: 'telegram', 'tonapi'),
-- and of the per-chat ones those used in their last window or paused, at most $1 of them;
-- each with its limit, its grants in the last window, how long it is still paused, and its
-- totals. By the server's clock.
WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now_s)
SELECT l.scope, l.max_count, l.window_seconds,
       (SELECT count(*) FROM unnest(l.grants) AS g(at)
        WHERE g.at > clock.now_s - l.window_seconds)::integer AS used,
       greatest(0::float8, extract(epoch FROM l.paused_until)::float8 - clock.now_s)
           AS paused_for,
       l.granted, l.pauses, l.updated_at, l.paused_until
FROM i3lani.rate_limits l, clock
WHERE strpos(l.scope, ':') = 0
   OR l.paused_until > clock_timestamp()
   OR l.grants[cardinality(l.grants)] > clock.now_s - l.window_seconds
ORDER BY strpos(l.scope, ':') > 0, l.scope
LIMIT $1;

-- name: rate_scope_count
-- How many per-chat scopes (a ':' in the name) have a row.
SELECT count(*)::integer FROM i3lani.rate_limits WHERE strpos(scope, ':') > 0;

-- name: rate_prune
-- Forget per-chat scopes (a ':' in the name) unused and unpaused for $1 seconds: their rows
-- would only grow with every chat ever messaged, and a scope without a row starts afresh,
-- which is what such an old window says anyway. How many went.
WITH gone AS (
    DELETE FROM i3lani.rate_limits
    WHERE strpos(scope, ':') > 0
      AND updated_at < clock_timestamp() - make_interval(secs => $1::float8)
      AND (paused_until IS NULL OR paused_until < clock_timestamp())
    RETURNING 1
)
SELECT count(*)::integer FROM gone;
