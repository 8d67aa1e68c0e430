-- Run secrets (GitHub tokens, oracle headers), Fernet-encrypted, referenced by `secret_ref` in events.
-- Kept in Postgres, not Redis: a run in flight must survive the loss of the read models.
CREATE TABLE IF NOT EXISTS run_secrets (
    ref         text        PRIMARY KEY,
    ciphertext  bytea       NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS run_secrets_expires_idx ON run_secrets (expires_at);
