-- Run by `i3lani migrate` under its advisory lock before any migration: the schema and the
-- table that records which migrations are applied. Idempotent.
CREATE SCHEMA IF NOT EXISTS i3lani;

CREATE TABLE IF NOT EXISTS i3lani.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
