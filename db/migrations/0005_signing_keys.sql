-- Public keys certificates are signed with, published by the certify stage that holds the private key.
-- The API serves them (/.well-known/echelon-keys.json) and verifies with them; it never reads a private key.
CREATE TABLE IF NOT EXISTS signing_keys (
    key_id      text        PRIMARY KEY,
    public_key  bytea       NOT NULL,
    not_before  timestamptz NOT NULL,
    retired     boolean     NOT NULL DEFAULT false
);
