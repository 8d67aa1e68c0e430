-- The event log: the source of truth. Only the StateCoordinator writes here.
CREATE TABLE IF NOT EXISTS events (
    seq            bigint GENERATED ALWAYS AS IDENTITY,  -- global order, assigned by the single writer
    event_id       text        NOT NULL PRIMARY KEY,
    dedup_key      text        NOT NULL UNIQUE,
    time           timestamptz NOT NULL,
    topic          text        NOT NULL,
    correlation_id text        NOT NULL,
    causation_id   text,
    payload        jsonb       NOT NULL,
    version        int         NOT NULL,
    stream_seq     bigint      NOT NULL,
    appended_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS events_seq_idx ON events (seq);
CREATE INDEX IF NOT EXISTS events_topic_time_idx ON events (topic, time DESC);
CREATE INDEX IF NOT EXISTS events_correlation_seq_idx ON events (correlation_id, seq);

-- Convert to a hypertable only where TimescaleDB exists (it does not on plain PostgreSQL 15).
-- A hypertable needs the time column in every unique index, so the conversion is left to an operator
-- who runs TimescaleDB; we only record whether it is available.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RAISE NOTICE 'timescaledb is available; events stays a plain table (unique event_id/dedup_key)';
    END IF;
END $$;
