-- 0006: the log keeps what the work did, not that time passed (issue 17).
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
