-- 0004: health samples, the HealthChecker's per-check history for dashboards.
--
-- A projection of HealthChecked events (one row per check), written in the same transaction
-- as the event it comes from, so it can always be rebuilt from the log. Derived data: the
-- Cleanup actor deletes rows older than the retention period, in batches by id.
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
