-- 0003: the task queue, shared by every node.
--
-- One row per task: the queue's working state. Every change of a row is also an event in the
-- task's stream, task-<id>, appended in the same transaction (see the task_* queries in
-- queries.sql); the rows of succeeded tasks are pruned in batches, their events stay.
--
-- Claiming takes the first due queued rows in (priority DESC, run_at, id) order with
-- FOR UPDATE SKIP LOCKED, so concurrent claimers on any number of nodes never wait for each
-- other and never take the same row: tasks_claim_idx serves exactly that order, and only holds
-- queued rows. A running row carries its holder (locked_by) and a lease time (locked_until)
-- that the holder keeps extending; once it has passed, the node is taken for dead and the row
-- is claimable again, through tasks_lock_expiry_idx. All times are PostgreSQL's now(), so
-- nodes' clocks never have to agree.
--
-- stream_version is the version of the last event in task-<id>: every transition holds the
-- row's lock, so it is the only writer of that stream and numbers its event from this column
-- instead of looking the stream up.
CREATE TABLE i3lani.tasks (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_type      text        NOT NULL,
    payload        jsonb       NOT NULL,
    priority       integer     NOT NULL DEFAULT 0,
    run_at         timestamptz NOT NULL DEFAULT now(),
    status         text        NOT NULL DEFAULT 'queued',
    attempts       integer     NOT NULL DEFAULT 0,
    max_attempts   integer     NOT NULL,
    last_error     text,
    locked_by      text,
    locked_until   timestamptz,
    dedupe_key     text,
    stream_version bigint      NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    CONSTRAINT tasks_status_check
        CHECK (status IN ('queued', 'running', 'succeeded', 'dead')),
    CONSTRAINT tasks_task_type_check CHECK (char_length(task_type) BETWEEN 1 AND 100),
    CONSTRAINT tasks_payload_check CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT tasks_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT tasks_dedupe_key_check CHECK (char_length(dedupe_key) BETWEEN 1 AND 200),
    CONSTRAINT tasks_stream_version_check CHECK (stream_version >= 1),
    -- A running task always has a holder and a lease time, and only a running task has them.
    CONSTRAINT tasks_lock_check
        CHECK ((status = 'running') = (locked_by IS NOT NULL AND locked_until IS NOT NULL)),
    -- Succeeded and dead tasks are finished; queued and running ones are not.
    CONSTRAINT tasks_finished_check
        CHECK ((status IN ('succeeded', 'dead')) = (finished_at IS NOT NULL))
);

COMMENT ON TABLE i3lani.tasks IS
    'i3lani task queue: working state; each change is also an event in stream task-<id>';

CREATE INDEX tasks_claim_idx ON i3lani.tasks (priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE INDEX tasks_lock_expiry_idx ON i3lani.tasks (locked_until) WHERE status = 'running';
CREATE INDEX tasks_dead_idx ON i3lani.tasks (finished_at) WHERE status = 'dead';
-- Enqueueing the same logical work twice is a no-op while the first one is not finished.
CREATE UNIQUE INDEX tasks_dedupe_key_idx ON i3lani.tasks (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');

-- Time-ordered UUIDs (RFC 9562 version 7: 48 bits of Unix time in milliseconds, then random
-- bits) for the ids of the events the task queue writes in bulk. Random (version 4) ids land
-- on random pages of events_event_id_key; these land at its right edge, which makes inserting
-- an event about a third cheaper once the log is large. Unique like any UUID: 74 random bits
-- per millisecond.
CREATE FUNCTION i3lani.uuid_v7() RETURNS uuid
    LANGUAGE sql VOLATILE PARALLEL SAFE
    RETURN encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(
                        floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid;

-- Heartbeat and reaper statements, as functions for the reason due_tasks is one: their plans.
-- Prepared, they would keep a generic plan made from the statistics of the moment they were
-- first run (often an empty queue: a sequential scan), for the connection's whole life. Without
-- sequential scans, ids go through the primary key and expired locks through
-- tasks_lock_expiry_idx, whatever the statistics say.
CREATE FUNCTION i3lani.task_heartbeat(task_ids bigint[], holder text, lock_seconds float8)
    RETURNS SETOF bigint
    LANGUAGE sql VOLATILE
    SET enable_seqscan = off
    AS $$
        UPDATE i3lani.tasks
        SET locked_until = now() + make_interval(secs => lock_seconds)
        WHERE id = ANY(task_ids) AND locked_by = holder  -- a holder implies running
        RETURNING id
    $$;

CREATE FUNCTION i3lani.expired_tasks(max_tasks integer, task_types text[])
    RETURNS TABLE (id bigint, task_type text, attempts integer, max_attempts integer,
                   locked_by text, locked_until timestamptz)
    LANGUAGE sql VOLATILE
    SET enable_seqscan = off
    AS $$
        SELECT t.id, t.task_type, t.attempts, t.max_attempts, t.locked_by, t.locked_until
        FROM i3lani.tasks t
        WHERE t.status = 'running' AND t.locked_until < now() AND t.task_type = ANY(task_types)
        ORDER BY t.locked_until
        LIMIT max_tasks
        FOR UPDATE OF t SKIP LOCKED
    $$;

-- The ids of up to max_tasks due queued tasks of these types, in claim order, locked FOR UPDATE
-- SKIP LOCKED (see task_cycle in queries.sql). A function only to pin its plan: a queue's
-- statistics are stale by nature (empty when analysed, 100 000 rows a minute later), and with
-- them the planner may fetch every queued row through a bitmap scan and sort them all to return
-- ten; each claim then costs as much as the whole backlog. Without bitmap or sequential scans
-- the only plan left walks tasks_claim_idx in order and stops after max_tasks rows it could
-- lock.
CREATE FUNCTION i3lani.due_tasks(max_tasks integer, task_types text[]) RETURNS SETOF bigint
    LANGUAGE sql VOLATILE
    SET enable_bitmapscan = off
    SET enable_seqscan = off
    AS $$
        SELECT id
        FROM i3lani.tasks
        WHERE status = 'queued' AND run_at <= now() AND task_type = ANY(task_types)
        ORDER BY priority DESC, run_at, id
        LIMIT max_tasks
        FOR UPDATE SKIP LOCKED
    $$;

-- A processor's round trip: record the outcomes that came in, then claim more, in one
-- statement (the SQL and its reasoning: task_cycle in queries.sql, which calls this). A
-- function for the reason due_tasks is one: its plan. Its UPDATEs find their rows by id
-- (`t.id = ANY(...)`), which only the primary key should serve. Sent as a prepared statement,
-- it got a generic plan after five runs, made with the statistics of that moment, and a
-- queue's are stale by nature: a processor that started on an empty (or freshly analysed)
-- table kept a plan that read every row of the table, twice, to update 50, for as long as its
-- connection lived, while a producer grew the table (measured: 15 ms a round trip at 20 000
-- rows, end to end throughput down from 11 000 to 3 300 tasks/s). Here the one statement is
-- planned without sequential scans, so the ids go through the primary key whatever the
-- statistics say; and the plan is planned once per connection and kept (PL/pgSQL caches it;
-- force_generic_plan), which a statement of this size needs: a SQL function would plan it anew
-- on every call. #variable_conflict: the result's column names are also the query's.
CREATE FUNCTION i3lani.task_cycle(
    done_ids bigint[], done_attempts integer[], done_nodes text[], done_errors text[],
    done_retry_delays float8[], done_durations_ms float8[], event_metadata jsonb,
    max_tasks integer, task_types text[], claimer text, lock_seconds float8
) RETURNS TABLE (claimed boolean, id bigint, task_type text, payload jsonb, attempts integer,
                 max_attempts integer, priority integer, run_at timestamptz)
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    SET plan_cache_mode = force_generic_plan
    AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH outcome AS (
        SELECT *
        FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::text[], $5::float8[],
                    $6::float8[])
             AS o(id, attempt, node, error, retry_delay, duration_ms)
    ), finished AS (
        UPDATE i3lani.tasks t
        SET status = CASE WHEN o.error IS NULL THEN 'succeeded'
                          WHEN o.retry_delay IS NULL THEN 'dead'
                          ELSE 'queued' END,
            run_at = CASE WHEN o.error IS NOT NULL AND o.retry_delay IS NOT NULL
                          THEN now() + make_interval(secs => o.retry_delay)
                          ELSE t.run_at END,
            last_error = coalesce(o.error, t.last_error),
            locked_by = NULL,
            locked_until = NULL,
            updated_at = now(),
            finished_at = CASE WHEN o.error IS NULL OR o.retry_delay IS NULL THEN now() END,
            stream_version = t.stream_version
                + CASE WHEN o.error IS NOT NULL AND o.retry_delay IS NULL THEN 2 ELSE 1 END
        FROM outcome o
        WHERE t.id = ANY($1::bigint[]) AND t.id = o.id AND t.locked_by = o.node
          AND t.attempts = o.attempt
        RETURNING t.id, t.status, t.run_at, t.stream_version, o.attempt, o.node, o.error,
                  o.duration_ms
    ), finished_logged AS (
        INSERT INTO i3lani.events
            (event_id, stream, stream_version, type, schema_version, payload, metadata)
        SELECT i3lani.uuid_v7(), 'task-' || e.id, e.version, e.type, 1, e.payload, $7::jsonb
        FROM (
            SELECT f.id, f.stream_version AS version, 'TaskSucceeded' AS type,
                   jsonb_build_object('task_id', f.id, 'attempt', f.attempt, 'node', f.node,
                                      'duration_ms', f.duration_ms) AS payload
            FROM finished f
            WHERE f.status = 'succeeded'
            UNION ALL
            SELECT f.id, f.stream_version - CASE WHEN f.status = 'dead' THEN 1 ELSE 0 END,
                   'TaskFailed',
                   jsonb_build_object('task_id', f.id, 'attempt', f.attempt, 'node', f.node,
                                      'error', f.error,
                                      'retry_at', CASE WHEN f.status = 'queued' THEN f.run_at END)
            FROM finished f
            WHERE f.status <> 'succeeded'
            UNION ALL
            SELECT f.id, f.stream_version, 'TaskDeadLettered',
                   jsonb_build_object('task_id', f.id, 'attempts', f.attempt, 'error', f.error)
            FROM finished f
            WHERE f.status = 'dead'
        ) e
        ORDER BY e.id, e.version
    ), picked AS (
        SELECT id FROM i3lani.due_tasks($8, $9::text[]) AS d(id)
    ), claimed AS (
        UPDATE i3lani.tasks t
        SET status = 'running',
            attempts = t.attempts + 1,
            locked_by = $10::text,
            locked_until = now() + make_interval(secs => $11::float8),
            updated_at = now(),
            stream_version = t.stream_version + 1
        WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
        RETURNING t.id, t.task_type, t.payload, t.priority, t.run_at, t.attempts, t.max_attempts,
                  t.stream_version, t.locked_until
    ), claimed_logged AS (
        INSERT INTO i3lani.events
            (event_id, stream, stream_version, type, schema_version, payload, metadata)
        SELECT i3lani.uuid_v7(), 'task-' || c.id, c.stream_version, 'TaskClaimed', 1,
               jsonb_build_object('task_id', c.id, 'attempt', c.attempts, 'node', $10::text,
                                  'locked_until', c.locked_until),
               $7::jsonb
        FROM claimed c
        ORDER BY c.id
    )
    SELECT * FROM (
        SELECT false AS claimed, id, status AS task_type, NULL::jsonb AS payload,
               0 AS attempts, 0 AS max_attempts, 0 AS priority, NULL::timestamptz AS run_at
        FROM finished
        UNION ALL
        SELECT true, id, task_type, payload, attempts, max_attempts, priority, run_at
        FROM claimed
    ) r
    ORDER BY claimed, priority DESC, run_at, id;
END;
$$;
