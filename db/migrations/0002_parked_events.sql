-- Messages the coordinator could not parse or validate: kept with their raw bytes and the reason.
CREATE TABLE IF NOT EXISTS parked_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_seq  bigint      NOT NULL UNIQUE,
    subject     text        NOT NULL,
    raw         bytea       NOT NULL,
    reason      text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    retried_at  timestamptz
);
