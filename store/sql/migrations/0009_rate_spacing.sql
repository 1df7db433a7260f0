-- 0009: grants of a rate limit spaced evenly, not granted in bursts at a window's edge (issue 15).
--
-- The window log of 0008 lets a scope grant max_count calls at once whenever its window has
-- room: a busy 30/s scope grants 30 calls within a few milliseconds, then nothing until the
-- oldest of them is window_seconds + margin old, then 30 again. The grant times keep the limit
-- exactly, but the requests do not reach Telegram at their grant times: 30 requests let go at
-- once queue in the nodes' HTTP clients and event loops and at the server, so some arrive tens
-- of milliseconds after the others, more than the margin, and a late request of one burst met
-- the early ones of the next in one of Telegram's one-second windows (31 of them, one 429, in
-- python -m bench --suite broadcast).
--
-- A scope's row now also keeps a virtual schedule (next_at, epoch seconds by the server's
-- clock, GCRA's theoretical arrival time): a caller asking for smoothed grants (smooth, what
-- every node's limiter does) is granted no earlier than half an interval before next_at, where
-- the interval is (window_seconds + margin) / max_count, and each grant moves next_at to one
-- interval after the later of next_at and the grant. So
--   * no two grants of a busy scope come closer than half an interval (17 ms at 30/s): a request
--     finds no queue of its own making, and its way to Telegram takes about as long as any other;
--   * a caller up to half an interval late for its turn (a sleep that overslept, a round trip)
--     takes its turn from the schedule, not from its own late moment: lateness costs no rate,
--     which is what made 0008 prefer a window log to a token bucket of capacity 1;
--   * the schedule starts from the grant itself once it has fallen behind (an idle scope), so
--     there is no burst to save up: an idle scope grants at once, and the next grant waits for
--     its turn.
-- The window log stays as it was and is checked as before: the schedule only spreads the grants
-- the window allows, so at most max_count grants in any window of window_seconds + margin
-- still holds whatever the callers do (smoothed or not, nodes of this version or the last).
-- A caller not asking for it (smooth false, the default: a node of the previous version still
-- running during a deploy's overlap calls rate_take with four arguments) is judged by the window
-- log alone, as before; its grants move the schedule too.
--
-- A grant's commit is also asynchronous now (synchronous_commit off for its transaction): the
-- time from a grant to its request reaching Telegram included the flush of the grant's WAL,
-- which varies with the disk's load, and that variation is what the margin has to cover.
ALTER TABLE i3lani.rate_limits ADD COLUMN next_at float8;

DROP FUNCTION i3lani.rate_take(text[], integer[], float8[], float8);

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
