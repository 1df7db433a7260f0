-- 0007: the log keeps what the work did, not that time passed (issue 17).
--
-- An actor's tick schedule leaves the log. Until now every tick appended an ActorTicked event
-- (about 2,900 a day for an idle worker) so that a restart, a deploy or another node could
-- resume the schedule from the last tick recorded. The schedule is operational state, like a
-- lease or a checkpoint: one row per actor, overwritten by each tick, in the same transaction
-- as the tick's effects when it had any, on its own otherwise. A tick that changed nothing
-- now costs one in-place update of a row that never grows, instead of a row and six index
-- entries in the log forever. Writes are fenced by the actor's lease generation, as
-- checkpoints are (see save_tick in queries.sql). Logs written before keep their ActorTicked
-- events; the runtime reads the last one when an actor has no row yet, so the deploy that
-- brings this migration in neither skips nor doubles a due tick.
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

-- Fewer index bytes per event (about 75 of the 233 the six indexes took, measured on a log of
-- 300,000 events; each query below was checked with EXPLAIN before and after, see README
-- "Storage").
--
-- Reading order: one index serves the whole log and each category. read_all follows
-- (transaction_id, global_position); read_category had an index of its own led by the category,
-- about 60 bytes per event: the end of each category's range is an insertion point in the
-- middle of the index, and PostgreSQL splits such pages in half, so all but the last category
-- sat in half-empty pages (and with generic plans the planner took the reading-order index and
-- fetched every row to check its category anyway). With the category as the index's third key
-- column, a category read walks the reading order after its cursor and skips other categories'
-- entries inside the index, without touching the table: as cheap as before at the head, where
-- subscribers read; a rare category read from the very start (an actor's first recovery) walks
-- the whole index once (7 ms for 300,000 events). Inserts land at its right end only, so its
-- pages fill to the B-tree's 90 %.
--
-- Positions: global_position is unique by construction (an identity column GENERATED ALWAYS:
-- no insert may choose one), so its primary key index (about 22 bytes per event) only served
-- lookups by position (a cursor for `i3lani events --after`, a snapshot, an API page) and the
-- newest events of the dashboard's event rate (now read in reading order). A BRIN index serves
-- the lookups: positions grow with the table's physical order in an append-only table, so a
-- block range of 16 pages summarises them in a few bytes per range.
--
-- Building the new index takes a lock that makes appends wait, for about a second per million
-- events (CREATE INDEX CONCURRENTLY cannot run inside a migration's transaction).
CREATE INDEX events_reading_order_idx
    ON i3lani.events (transaction_id, global_position, category);
DROP INDEX i3lani.events_commit_order_idx;
DROP INDEX i3lani.events_category_commit_order_idx;
ALTER TABLE i3lani.events DROP CONSTRAINT events_pkey;
CREATE INDEX events_position_idx ON i3lani.events USING brin (global_position)
    WITH (pages_per_range = 16);
