-- The current i3lani schema, whole. Applying the migrations in migrations/ in order must
-- produce exactly this (tests/store/test_migrations.py checks it); change both together.

CREATE SCHEMA IF NOT EXISTS i3lani;

CREATE TABLE IF NOT EXISTS i3lani.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE i3lani.events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL,
    stream          text        NOT NULL,
    category        text        NOT NULL GENERATED ALWAYS AS (split_part(stream, '-', 1)) STORED,
    stream_version  bigint      NOT NULL,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
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
