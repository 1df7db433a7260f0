-- 0008: flow control shared by every node (issue 15): rate limits and task concurrency.
--
-- Telegram allows a bot about 30 messages a second, one a second per chat and 20 a minute per
-- group; a TonAPI key has a requests-per-second tier. Each node backing off on its own does not
-- keep several nodes under those limits, so the limits live here, where every node meets them.
-- Like leases and tick schedules this is operational state, not history: nothing here is an
-- event, and a row can be deleted at any time (its scope then starts afresh).
--
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
--    row's window, keeping the latest max_count.
-- The clock is clock_timestamp(), the server's, never a node's. margin spaces the grants a
-- little more than the limit asks (a window of window_seconds + margin): the time from a grant
-- to its request reaching Telegram varies by a few milliseconds between calls and nodes, and
-- without it a late request and an early one could meet in one of Telegram's windows.
CREATE FUNCTION i3lani.rate_take(scopes text[], max_counts integer[], windows float8[],
                                 margin float8)
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
               i3lani.rate_wait(l.grants, w.max_count, w.window_seconds, l.paused_until,
                                margin, now_s) AS seconds
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
    UPDATE i3lani.rate_limits l
    SET grants = (l.grants || now_s)[greatest(1, cardinality(l.grants) + 2 - w.max_count):],
        max_count = w.max_count,
        window_seconds = w.window_seconds,
        granted = l.granted + 1,
        updated_at = clock_timestamp()
    FROM unnest(scopes, max_counts, windows) AS w(scope, max_count, window_seconds)
    WHERE l.scope = w.scope;
    RETURN QUERY SELECT true, 0::float8, NULL::text;
END;
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
-- concurrency limit: what task_cycle claims (it called due_tasks before). A type with a limit
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

-- task_cycle claims through claimable_tasks; nothing else in it changes (same signature, so
-- workers of the previous version, still running during a deploy's overlap, call it unchanged
-- and keep to the limits too).
CREATE OR REPLACE FUNCTION i3lani.task_cycle(
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
