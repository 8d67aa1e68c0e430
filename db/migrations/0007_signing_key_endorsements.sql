-- A signing key is published only through a chain: the root key pinned beside each verifier (a file in the
-- data dir, or ECHELON_SIGNING_ROOT_KEY_ID), then every key a trusted key endorsed. An endorsement is the
-- endorser's Ed25519 signature over "echelon signing key endorsement v1\n" || key_id. A row inserted into
-- signing_keys alone is never served nor trusted. One key may hold several endorsements (rotations).
CREATE TABLE IF NOT EXISTS signing_key_endorsements (
    key_id       text  NOT NULL,
    endorsed_by  text  NOT NULL,
    signature    bytea NOT NULL,
    PRIMARY KEY (key_id, endorsed_by)
);
