-- 0001: the append-only event log, subscriber checkpoints and stream snapshots.

CREATE TABLE i3lani.events (
    -- Unique and increasing in insertion order; NOT the order readers follow (see below).
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The writing transaction's 64-bit id. Readers follow (transaction_id, global_position):
    -- see read_all in queries.sql for why this makes tailing the log gap-free.
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL,
    stream          text        NOT NULL,
    -- The stream's prefix before the first '-': 'payment' for 'payment-42'.
    category        text        NOT NULL GENERATED ALWAYS AS (split_part(stream, '-', 1)) STORED,
    stream_version  bigint      NOT NULL,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    -- Optimistic concurrency: two writers that both saw version n cannot both write n + 1.
    CONSTRAINT events_stream_version_key UNIQUE (stream, stream_version),
    CONSTRAINT events_stream_check CHECK (char_length(stream) BETWEEN 1 AND 200),
    CONSTRAINT events_stream_version_check CHECK (stream_version >= 1),
    CONSTRAINT events_type_check CHECK (char_length(type) BETWEEN 1 AND 200),
    CONSTRAINT events_schema_version_check CHECK (schema_version >= 1),
    CONSTRAINT events_payload_check CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT events_metadata_check CHECK (jsonb_typeof(metadata) = 'object')
);

COMMENT ON TABLE i3lani.events IS
    'i3lani event log: append-only (UPDATE, DELETE and TRUNCATE are refused by triggers)';

CREATE INDEX events_commit_order_idx ON i3lani.events (transaction_id, global_position);
CREATE INDEX events_category_commit_order_idx
    ON i3lani.events (category, transaction_id, global_position);
CREATE INDEX events_type_idx ON i3lani.events (type);

-- Append-only, enforced by PostgreSQL whatever the client: a row trigger refuses UPDATE and
-- DELETE, a statement trigger refuses TRUNCATE (which row triggers do not see). SQLSTATE
-- 'I3AO1' lets the store translate the refusal into AppendOnlyViolation.
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

-- Where each named subscriber has got to in the log, as the (transaction_id, global_position)
-- pair of the last event it processed. Written in the same transaction as the subscriber's own
-- effects, so that each event is processed exactly once across crashes.
CREATE TABLE i3lani.checkpoints (
    name            text        PRIMARY KEY,
    transaction_id  xid8        NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkpoints_name_check CHECK (char_length(name) BETWEEN 1 AND 200)
);

-- Optional snapshots of long streams: derived data, safe to delete (state is rebuilt from
-- the events). ``state_type`` names the Struct and its version, so a changed shape is ignored.
CREATE TABLE i3lani.snapshots (
    stream         text        PRIMARY KEY,
    stream_version bigint      NOT NULL,
    state_type     text        NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_stream_version_check CHECK (stream_version >= 1)
);
