-- +goose Up
-- Audit events written by every service (one row per event).
CREATE TABLE audit_events (
    event_id        UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    event_timestamp TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    event_type      VARCHAR(255) NOT NULL,
    event_category  VARCHAR(255),
    event_action    VARCHAR(255),
    event_outcome   VARCHAR(255),
    correlation_id  VARCHAR(255) NOT NULL,
    actor_id        VARCHAR(255),
    resource_type   VARCHAR(255),
    resource_id     VARCHAR(255),
    event_data      JSONB NOT NULL DEFAULT '{}'::jsonb
);

-- Listings filter by correlation id and return the newest first.
CREATE INDEX CONCURRENTLY idx_audit_events_correlation_id
    ON audit_events (correlation_id, event_timestamp DESC);

-- +goose Down
DROP INDEX IF EXISTS idx_audit_events_correlation_id;
DROP TABLE IF EXISTS audit_events;
