-- +goose Up
-- Filtering by event type needs its own index on the table 001 created.
CREATE INDEX CONCURRENTLY idx_audit_events_event_type
    ON audit_events (event_type, event_timestamp DESC);

-- How long events of each category are kept.
CREATE TABLE audit_retention_policies (
    event_category VARCHAR(255) PRIMARY KEY,
    retention_days INTEGER NOT NULL CHECK (retention_days > 0),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO audit_retention_policies (event_category, retention_days) VALUES
    ('gateway', 90),
    ('notification', 30),
    ('authwebhook', 365)
ON CONFLICT (event_category) DO NOTHING;

-- +goose Down
DROP TABLE IF EXISTS audit_retention_policies;
DROP INDEX IF EXISTS idx_audit_events_event_type;
