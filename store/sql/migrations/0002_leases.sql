-- 0002: leases, so that each actor runs on exactly one node at a time.
--
-- A node runs an actor only while it holds the actor's lease. Every grant bumps the
-- generation (the fencing number); appends made on behalf of an actor carry the generation
-- they were granted, and the store refuses them once a newer generation exists (see the
-- `fence` CTE in queries.sql). Times are PostgreSQL's own now(), so nodes' clocks never
-- have to agree. Leases are coordination state, not history: the history of who ran what is
-- in the actor-<name> lifecycle events.
CREATE TABLE i3lani.leases (
    name        text        PRIMARY KEY,
    node        text,                    -- the holder (node/instance); NULL once released
    generation  bigint      NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    CONSTRAINT leases_generation_check CHECK (generation >= 1)
);
