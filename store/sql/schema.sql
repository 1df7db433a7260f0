-- The current i3lani schema, whole. Applying the migrations in migrations/ in order must
-- produce exactly this (tests/store/test_migrations.py checks it); change both together.

CREATE SCHEMA IF NOT EXISTS i3lani;

CREATE TABLE IF NOT EXISTS i3lani.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE i3lani.events (
    global_position bigint GENERATED ALWAYS AS IDENTITY,  -- unique by construction (0007)
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL,
    stream          text        NOT NULL,
    category        text        NOT NULL GENERATED ALWAYS AS (split_part(stream, '-', 1)) STORED,
    stream_version  bigint      NOT NULL,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         json        NOT NULL,  -- the text as written (0010)
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream, stream_version),
    CONSTRAINT events_stream_check CHECK (char_length(stream) BETWEEN 1 AND 200),
    CONSTRAINT events_stream_version_check CHECK (stream_version >= 1),
    CONSTRAINT events_type_check CHECK (char_length(type) BETWEEN 1 AND 200),
    CONSTRAINT events_schema_version_check CHECK (schema_version >= 1),
    CONSTRAINT events_payload_check CHECK (json_typeof(payload) = 'object'),
    CONSTRAINT events_metadata_check CHECK (jsonb_typeof(metadata) = 'object')
);

COMMENT ON TABLE i3lani.events IS
    'i3lani event log: append-only (UPDATE, DELETE and TRUNCATE are refused by triggers)';

-- The reading order (queries.sql, read_all), the whole log's and each category's (0007).
CREATE INDEX events_reading_order_idx
    ON i3lani.events (transaction_id, global_position, category);
-- Lookups by position: positions follow the table's physical order (0007).
CREATE INDEX events_position_idx ON i3lani.events USING brin (global_position)
    WITH (pages_per_range = 16);
CREATE INDEX events_type_idx ON i3lani.events (type);

CREATE FUNCTION i3lani.refuse_event_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'i3lani.events is append-only: % refused', TG_OP
        USING ERRCODE = 'I3AO1',
              HINT = 'events are never changed or deleted; append a correcting event instead';
END;
$$;

CREATE TRIGGER events_append_only_row
    BEFORE UPDATE OR DELETE ON i3lani.events
    FOR EACH ROW EXECUTE FUNCTION i3lani.refuse_event_change();

CREATE TRIGGER events_append_only_truncate
    BEFORE TRUNCATE ON i3lani.events
    FOR EACH STATEMENT EXECUTE FUNCTION i3lani.refuse_event_change();

-- Fired in every session_replication_role, replica included (migration 0006).
ALTER TABLE i3lani.events ENABLE ALWAYS TRIGGER events_append_only_row;
ALTER TABLE i3lani.events ENABLE ALWAYS TRIGGER events_append_only_truncate;

CREATE TABLE i3lani.checkpoints (
    name            text        PRIMARY KEY,
    transaction_id  xid8        NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkpoints_name_check CHECK (char_length(name) BETWEEN 1 AND 200)
);

CREATE TABLE i3lani.snapshots (
    stream         text        PRIMARY KEY,
    stream_version bigint      NOT NULL,
    state_type     text        NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_stream_version_check CHECK (stream_version >= 1)
);

CREATE TABLE i3lani.leases (
    name        text        PRIMARY KEY,
    node        text,
    generation  bigint      NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    CONSTRAINT leases_generation_check CHECK (generation >= 1)
);

CREATE TABLE i3lani.ticks (
    name       text        PRIMARY KEY,
    due_at     timestamptz NOT NULL,
    ticked_at  timestamptz NOT NULL,
    node       text,          -- who ran it, and under which grant of the actor's lease
    generation bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ticks_name_check CHECK (char_length(name) BETWEEN 1 AND 200)
);
COMMENT ON TABLE i3lani.ticks IS
    'each actor''s tick schedule: the slot its last tick ran for (operational, not the log)';

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
    fence_lease      text,        -- the lease grant a running task was claimed under (0005)
    fence_generation bigint,
    CONSTRAINT tasks_status_check
        CHECK (status IN ('queued', 'running', 'succeeded', 'dead')),
    CONSTRAINT tasks_task_type_check CHECK (char_length(task_type) BETWEEN 1 AND 100),
    CONSTRAINT tasks_payload_check CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT tasks_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT tasks_dedupe_key_check CHECK (char_length(dedupe_key) BETWEEN 1 AND 200),
    CONSTRAINT tasks_stream_version_check CHECK (stream_version >= 1),
    CONSTRAINT tasks_lock_check
        CHECK ((status = 'running') = (locked_by IS NOT NULL AND locked_until IS NOT NULL)),
    CONSTRAINT tasks_finished_check
        CHECK ((status IN ('succeeded', 'dead')) = (finished_at IS NOT NULL)),
    CONSTRAINT tasks_fence_check
        CHECK ((fence_lease IS NULL) = (fence_generation IS NULL)
               AND (fence_lease IS NULL OR status = 'running'))
);

COMMENT ON TABLE i3lani.tasks IS
    'i3lani task queue: working state; each change is also an event in stream task-<id>';

CREATE INDEX tasks_claim_idx ON i3lani.tasks (priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE INDEX tasks_lock_expiry_idx ON i3lani.tasks (locked_until) WHERE status = 'running';
CREATE INDEX tasks_dead_idx ON i3lani.tasks (finished_at) WHERE status = 'dead';
CREATE INDEX tasks_fence_idx ON i3lani.tasks (fence_lease, fence_generation)
    WHERE status = 'running' AND fence_lease IS NOT NULL;
CREATE UNIQUE INDEX tasks_dedupe_key_idx ON i3lani.tasks (dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');

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

-- Fencing of task writes by the lease generation they are made under (migration 0005).
CREATE FUNCTION i3lani.check_fence(fence_lease text, fence_generation bigint) RETURNS boolean
    LANGUAGE plpgsql VOLATILE
    AS $$
BEGIN
    IF fence_lease IS NULL THEN
        RETURN true;
    END IF;
    PERFORM 1 FROM i3lani.leases l
    WHERE l.name = fence_lease AND l.generation = fence_generation
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease % is no longer held at generation %', fence_lease, fence_generation
            USING ERRCODE = 'I3SG1';
    END IF;
    RETURN true;
END;
$$;

-- Heartbeat and reaper statements, as functions for the reason due_tasks is one: their plans.
-- Prepared, they would keep a generic plan made from the statistics of the moment they were
-- first run (often an empty queue: a sequential scan), for the connection's whole life. Without
-- sequential scans, ids go through the primary key and expired locks through
-- tasks_lock_expiry_idx, whatever the statistics say.
CREATE FUNCTION i3lani.task_heartbeat(task_ids bigint[], holder text, lock_seconds float8,
                                      fence_lease text DEFAULT NULL,
                                      fence_generation bigint DEFAULT NULL)
    RETURNS SETOF bigint
    LANGUAGE sql VOLATILE
    SET enable_seqscan = off
    AS $$
        UPDATE i3lani.tasks
        SET locked_until = now() + make_interval(secs => lock_seconds)
        WHERE id = ANY(task_ids) AND locked_by = holder  -- a holder implies running
          AND i3lani.check_fence(fence_lease, fence_generation)
        RETURNING id
    $$;

CREATE FUNCTION i3lani.expired_tasks(max_tasks integer, task_types text[],
                                     fence_lease text DEFAULT NULL,
                                     fence_generation bigint DEFAULT NULL)
    RETURNS TABLE (id bigint, task_type text, attempts integer, max_attempts integer,
                   locked_by text, locked_until timestamptz)
    LANGUAGE sql VOLATILE
    SET enable_seqscan = off
    AS $$
        SELECT t.id, t.task_type, t.attempts, t.max_attempts, t.locked_by, t.locked_until
        FROM i3lani.tasks t
        WHERE t.status = 'running' AND t.locked_until < now() AND t.task_type = ANY(task_types)
          AND i3lani.check_fence(fence_lease, fence_generation)
          -- An older grant of our own lease: taken over by our next claim, at no attempt.
          AND NOT (t.fence_lease IS NOT NULL AND t.fence_lease = expired_tasks.fence_lease
                   AND t.fence_generation < expired_tasks.fence_generation)
        ORDER BY t.locked_until
        LIMIT max_tasks
        FOR UPDATE OF t SKIP LOCKED
    $$;

-- Running tasks claimed under an older generation of lease fence_lease, of these types, locked
-- FOR UPDATE SKIP LOCKED: what a claim under the current generation takes over.
CREATE FUNCTION i3lani.superseded_tasks(max_tasks integer, task_types text[], fence_lease text,
                                        fence_generation bigint)
    RETURNS TABLE (id bigint, locked_by text)
    LANGUAGE sql VOLATILE
    SET enable_seqscan = off
    AS $$
        SELECT t.id, t.locked_by
        FROM i3lani.tasks t
        WHERE t.status = 'running' AND t.fence_lease = superseded_tasks.fence_lease
          AND t.fence_generation < superseded_tasks.fence_generation
          AND t.task_type = ANY(task_types)
        ORDER BY t.id
        LIMIT max_tasks
        FOR UPDATE OF t SKIP LOCKED
    $$;

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

-- i3lani.task_concurrency: at most max_running tasks of a type running at once, on every node
-- together (I3LANI_TASK_CONCURRENCY). Set by the task processors of the type when they start
-- (the last one to start says what holds); a type without a row is unlimited.
CREATE TABLE i3lani.task_concurrency (
    task_type   text        PRIMARY KEY,
    max_running integer     NOT NULL,
    set_by      text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT task_concurrency_max_running_check CHECK (max_running >= 1)
);
COMMENT ON TABLE i3lani.task_concurrency IS
    'how many tasks of a type may run at once across every node (configuration)';

-- Due tasks for a claim of at most max_tasks tasks of task_types, each type within its
-- concurrency limit: what task_cycle claims (migration 0008). A type with a limit
-- is claimed under a transaction-level advisory lock of its own, taken in type order: the count
-- of its running tasks (live ones: a dead node's expired lock does not count) is read after the
-- lock, by a statement of its own, so it sees the claims of whoever held the lock before
-- (committed, since the lock goes with its transaction); the lock lasts as long as the claim's
-- one statement. Types without a limit are claimed as before, without any lock, and a claim of
-- only those costs one look at task_concurrency. Rows locked here and not claimed in the end
-- (past max_tasks, in claim order) stay queued; their locks go with the statement.
CREATE FUNCTION i3lani.claimable_tasks(max_tasks integer, task_types text[])
    RETURNS SETOF bigint
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    AS $$
DECLARE
    limited record;
    free integer;
    unlimited text[] := task_types;
    picked bigint[] := '{}';
BEGIN
    IF max_tasks <= 0 THEN
        RETURN;
    END IF;
    FOR limited IN
        SELECT c.task_type, c.max_running FROM i3lani.task_concurrency c
        WHERE c.task_type = ANY(task_types)
        ORDER BY c.task_type
    LOOP
        unlimited := array_remove(unlimited, limited.task_type);
        PERFORM pg_advisory_xact_lock(
            hashtextextended('i3lani.task_concurrency:' || limited.task_type, 0));
        SELECT limited.max_running - count(*) INTO free
        FROM i3lani.tasks t
        WHERE t.status = 'running' AND t.locked_until >= now()
          AND t.task_type = limited.task_type;
        IF free > 0 THEN
            picked := picked || ARRAY(
                SELECT d FROM i3lani.due_tasks(least(free, max_tasks), ARRAY[limited.task_type])
                    AS d);
        END IF;
    END LOOP;
    IF cardinality(picked) = 0 THEN
        RETURN QUERY SELECT d FROM i3lani.due_tasks(max_tasks, unlimited) AS d;
        RETURN;
    END IF;
    IF cardinality(unlimited) > 0 THEN
        picked := picked || ARRAY(SELECT d FROM i3lani.due_tasks(max_tasks, unlimited) AS d);
    END IF;
    RETURN QUERY
        SELECT t.id FROM i3lani.tasks t
        WHERE t.id = ANY(picked)
        ORDER BY t.priority DESC, t.run_at, t.id
        LIMIT max_tasks;
END;
$$;

CREATE FUNCTION i3lani.task_cycle(
    done_ids bigint[], done_attempts integer[], done_nodes text[], done_errors text[],
    done_retry_delays float8[], done_durations_ms float8[], event_metadata jsonb,
    max_tasks integer, task_types text[], claimer text, lock_seconds float8,
    fence_lease text DEFAULT NULL, fence_generation bigint DEFAULT NULL
) RETURNS TABLE (claimed boolean, id bigint, task_type text, payload jsonb, attempts integer,
                 max_attempts integer, priority integer, run_at timestamptz)
    LANGUAGE plpgsql VOLATILE
    SET enable_seqscan = off
    SET plan_cache_mode = force_generic_plan
    AS $$
#variable_conflict use_column
BEGIN
    PERFORM i3lani.check_fence($12, $13);
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
            fence_lease = NULL,
            fence_generation = NULL,
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
    ), superseded AS (
        SELECT s.id, s.locked_by
        FROM i3lani.superseded_tasks($8, $9::text[], $12, $13) AS s(id, locked_by)
    ), picked AS (
        SELECT s.id FROM superseded s
        UNION ALL
        SELECT d.id FROM i3lani.claimable_tasks($8 - (SELECT count(*) FROM superseded)::integer,
                                                $9::text[]) AS d(id)
    ), claimed AS (
        UPDATE i3lani.tasks t
        SET status = 'running',
            -- A take-over continues the superseded holder's attempt, which never counted.
            attempts = CASE WHEN t.status = 'running' THEN t.attempts ELSE t.attempts + 1 END,
            locked_by = $10::text,
            locked_until = now() + make_interval(secs => $11::float8),
            fence_lease = $12,
            fence_generation = $13,
            updated_at = now(),
            stream_version = t.stream_version + 1
        WHERE t.id = ANY(ARRAY(SELECT id FROM picked))
        RETURNING t.id, t.task_type, t.payload, t.priority, t.run_at, t.attempts, t.max_attempts,
                  t.stream_version, t.locked_until
    ), claimed_logged AS (
        INSERT INTO i3lani.events
            (event_id, stream, stream_version, type, schema_version, payload, metadata)
        SELECT i3lani.uuid_v7(), 'task-' || c.id, c.stream_version, 'TaskClaimed', 1,
               jsonb_strip_nulls(jsonb_build_object(
                   'task_id', c.id, 'attempt', c.attempts, 'node', $10::text,
                   'locked_until', c.locked_until, 'taken_over_from', s.locked_by)),
               $7::jsonb
        FROM claimed c
        LEFT JOIN superseded s ON s.id = c.id
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

CREATE TABLE i3lani.health_samples (
    id         bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    checked_at timestamptz      NOT NULL,
    name       text             NOT NULL,
    ok         boolean          NOT NULL,
    latency_ms double precision,
    detail     text             NOT NULL DEFAULT ''
);
CREATE INDEX health_samples_checked_at_idx ON i3lani.health_samples (checked_at);
COMMENT ON TABLE i3lani.health_samples IS
    'HealthChecked events, one row per check (a projection; pruned by Cleanup)';

-- Flow control shared by every node (migrations 0008 and 0009: the schedule that spaces the
-- grants, next_at, is explained in 0009).
-- i3lani.rate_limits: one row per scope ('telegram', 'tonapi', 'telegram-chat:<id>',
-- 'telegram-group:<id>'): at most max_count grants in any window of window_seconds. The row
-- keeps the times of its latest max_count grants (a sliding window log, by the database's
-- clock_timestamp(), so that clocks of nodes never have to agree) and, after a 429, the time
-- until which every node leaves the scope alone (paused_until). A token bucket was the other
-- choice: with a bucket of capacity 1 every grant that comes late (a node's sleep, a round
-- trip) loses its share of the rate for good, and with a larger one the bucket lets through
-- more than max_count in one window; the window log keeps the limit exactly and loses
-- nothing. The limit of a row is the one its last caller configured (each grant writes it).
CREATE TABLE i3lani.rate_limits (
    scope          text        PRIMARY KEY,
    max_count      integer     NOT NULL,
    window_seconds float8      NOT NULL,
    grants         float8[]    NOT NULL DEFAULT '{}',  -- epoch seconds, oldest first
    paused_until   timestamptz,
    granted        bigint      NOT NULL DEFAULT 0,
    pauses         bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    next_at        float8,  -- the grants' schedule, epoch seconds (0009)
    CONSTRAINT rate_limits_scope_check CHECK (char_length(scope) BETWEEN 1 AND 200),
    CONSTRAINT rate_limits_limit_check CHECK (max_count >= 1 AND window_seconds > 0)
);
COMMENT ON TABLE i3lani.rate_limits IS
    'flow control shared by every node: each scope''s latest grants and pause (operational)';

-- Seconds until a scope can grant again (0: now), for a caller allowing max_count grants in
-- any window of window_seconds, spread over margin seconds more (see rate_take). Pure.
CREATE FUNCTION i3lani.rate_wait(grants float8[], max_count integer, window_seconds float8,
                                 paused_until timestamptz, margin float8, now_s float8)
    RETURNS float8
    LANGUAGE sql IMMUTABLE
    RETURN greatest(
        0::float8,
        coalesce(extract(epoch FROM paused_until)::float8 - now_s, 0::float8),
        CASE WHEN cardinality(grants) >= max_count
             THEN grants[cardinality(grants) - max_count + 1] + window_seconds + margin - now_s
             ELSE 0::float8 END);

-- One grant from every scope of scopes (limits max_counts[k] per windows[k] seconds), or none:
-- either granted, or refused with the seconds to wait and the scope that asked for the longest
-- wait. One statement, a few milliseconds at most: no lock outlives it, and none is held while
-- the caller talks to Telegram or TonAPI.
--
-- 1. A scope met for the first time gets its row (ON CONFLICT: two nodes may race to it).
-- 2. The rows are read without a lock: while nodes wait for a busy scope most calls are
--    refusals, and a refusal then writes nothing (no row lock, no transaction id, no WAL).
-- 3. A grant locks the rows FOR UPDATE in scope order (so two takers of overlapping scopes
--    never deadlock), reads the time after the lock (a taker that queued behind another
--    stamps its own moment, not a stale one), checks again, and appends that time to each
--    row's window, keeping the latest max_count, and moves each row's schedule on.
-- The clock is clock_timestamp(), the server's, never a node's. margin spaces the grants a
-- little more than the limit asks (a window of window_seconds + margin): the time from a grant
-- to its request reaching Telegram varies by a few milliseconds between calls and nodes, and
-- without it a late request and an early one could meet in one of Telegram's windows. smooth:
-- the grants also keep to each scope's schedule (migration 0009's header).
CREATE FUNCTION i3lani.rate_take(scopes text[], max_counts integer[], windows float8[],
                                 margin float8, smooth boolean DEFAULT false)
    RETURNS TABLE (granted boolean, wait_seconds float8, refused_by text)
    LANGUAGE plpgsql VOLATILE
    AS $$
DECLARE
    now_s float8;
    longest record;
    locked boolean := false;
BEGIN
    INSERT INTO i3lani.rate_limits (scope, max_count, window_seconds)
    SELECT w.scope, w.max_count, w.window_seconds
    FROM unnest(scopes, max_counts, windows) AS w(scope, max_count, window_seconds)
    ORDER BY w.scope
    ON CONFLICT (scope) DO NOTHING;
    LOOP  -- a look without a lock, then (unless it refuses) the same look under the locks
        now_s := extract(epoch FROM clock_timestamp());
        SELECT w.scope,
               greatest(
                   i3lani.rate_wait(l.grants, w.max_count, w.window_seconds, l.paused_until,
                                    margin, now_s),
                   CASE WHEN smooth
                        THEN coalesce(l.next_at - (w.window_seconds + margin) / w.max_count / 2
                                      - now_s, 0::float8)
                        ELSE 0::float8 END) AS seconds
        INTO longest
        FROM unnest(scopes, max_counts, windows) AS w(scope, max_count, window_seconds)
        JOIN i3lani.rate_limits l ON l.scope = w.scope
        ORDER BY 2 DESC, 1
        LIMIT 1;
        IF longest.seconds > 0 THEN
            RETURN QUERY SELECT false, longest.seconds, longest.scope;
            RETURN;
        END IF;
        EXIT WHEN locked;
        PERFORM 1 FROM i3lani.rate_limits l WHERE l.scope = ANY(scopes) ORDER BY l.scope
            FOR UPDATE;
        locked := true;
    END LOOP;
    -- The grant's commit does not wait for its WAL to reach the disk (this transaction only):
    -- the node hears of its grant a flush later otherwise, and a flush takes from under a
    -- millisecond to tens of them on a busy disk, which the margin would have to cover. A
    -- server crash may forget the last grants; the rows are operational state, and its
    -- restart takes longer than a window of seconds anyway.
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE i3lani.rate_limits l
    SET grants = (l.grants || now_s)[greatest(1, cardinality(l.grants) + 2 - w.max_count):],
        next_at = greatest(l.next_at, now_s) + (w.window_seconds + margin) / w.max_count,
        max_count = w.max_count,
        window_seconds = w.window_seconds,
        granted = l.granted + 1,
        updated_at = clock_timestamp()
    FROM unnest(scopes, max_counts, windows) AS w(scope, max_count, window_seconds)
    WHERE l.scope = w.scope;
    RETURN QUERY SELECT true, 0::float8, NULL::text;
END;
$$;
