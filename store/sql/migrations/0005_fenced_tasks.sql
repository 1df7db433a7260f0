-- 0005: task-queue writes fenced by the lease generation of the actor they are made for.
--
-- An actor's task processor (RewardProcessor's credits, HealthChecker's alerts, ...) claims,
-- heartbeats and records outcomes under its actor's lease. A node that lost the lease without
-- knowing it (paused, cut off) must not go on writing: before this migration its claims and
-- refused attempts still landed, and used up the tasks' retries.
--
-- * i3lani.check_fence(lease, generation) locks the lease row FOR SHARE (as fenced appends
--   do, see append_one in queries.sql) and raises SQLSTATE I3SG1 unless that generation is
--   current: the statement that calls it writes nothing, and a take-over waits for it to end.
-- * A running task remembers the grant it was claimed under (fence_lease, fence_generation).
--   When a newer generation of that lease claims, those tasks are taken over at once: their
--   holder can no longer record anything, so their attempt never counts, and they run again
--   under the current holder without waiting for their lock to expire or using up a retry.
--   TaskClaimed says so (taken_over_from). The reaper leaves them to that take-over.
-- * The functions take the fence as two trailing parameters defaulting to NULL (unfenced), so
--   workers of the previous version, still running during a deploy's overlap, call them
--   unchanged.
ALTER TABLE i3lani.tasks ADD COLUMN fence_lease text, ADD COLUMN fence_generation bigint;
ALTER TABLE i3lani.tasks ADD CONSTRAINT tasks_fence_check
    CHECK ((fence_lease IS NULL) = (fence_generation IS NULL)
           AND (fence_lease IS NULL OR status = 'running'));
CREATE INDEX tasks_fence_idx ON i3lani.tasks (fence_lease, fence_generation)
    WHERE status = 'running' AND fence_lease IS NOT NULL;

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

DROP FUNCTION i3lani.task_heartbeat(bigint[], text, float8);
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

DROP FUNCTION i3lani.expired_tasks(integer, text[]);
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

DROP FUNCTION i3lani.task_cycle(bigint[], integer[], text[], text[], float8[], float8[], jsonb,
                                integer, text[], text, float8);
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
        SELECT d.id FROM i3lani.due_tasks($8 - (SELECT count(*) FROM superseded)::integer,
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
