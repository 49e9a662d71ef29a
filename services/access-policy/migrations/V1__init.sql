-- AccessPolicy's metadata when several replicas share one database.
-- Text keys use the "C" collation so listings come out in byte order, the
-- order the sled store returns them in.
CREATE SCHEMA IF NOT EXISTS access_policy;

CREATE TABLE access_policy.grants (
    owner_id     text COLLATE "C" NOT NULL,
    partition    text COLLATE "C" NOT NULL,
    grantee_id   text COLLATE "C" NOT NULL,
    grantee_role text NOT NULL,
    epoch_min    bigint NOT NULL,
    epoch_max    bigint,
    not_before   bigint NOT NULL,
    expires_at   bigint,
    granted_at   bigint NOT NULL,
    PRIMARY KEY (owner_id, partition, grantee_id)
);
CREATE INDEX grants_by_grantee ON access_policy.grants (grantee_id, owner_id, partition);

-- One row per audit entry; `value` is the sled store's value, byte for
-- byte (version ‖ salt ‖ prev_hash ‖ hash ‖ canonical bytes), so an entry
-- verifies the same wherever it is kept. `owner_id` is the entry's own
-- owner, copied out for the per-owner view ('' = none).
CREATE TABLE access_policy.audit_entries (
    seq      bigint PRIMARY KEY CHECK (seq > 0),
    owner_id text COLLATE "C" NOT NULL,
    value    bytea NOT NULL
);
CREATE INDEX audit_by_owner ON access_policy.audit_entries (owner_id, seq) WHERE owner_id <> '';

-- The complete subtrees of the audit Merkle tree (RFC 9162): level 0 holds
-- the leaves, index i at level l covers leaves [i << l, (i + 1) << l).
CREATE TABLE access_policy.audit_tree (
    level smallint NOT NULL CHECK (level >= 0 AND level < 64),
    idx   bigint NOT NULL CHECK (idx >= 0),
    hash  bytea NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE TABLE access_policy.checkpoints (
    size      bigint PRIMARY KEY CHECK (size > 0),
    signature bytea NOT NULL CHECK (length(signature) = 64),
    body      text NOT NULL
);

CREATE TABLE access_policy.cosignatures (
    size      bigint NOT NULL REFERENCES access_policy.checkpoints (size) ON DELETE CASCADE,
    witness   text COLLATE "C" NOT NULL,
    time      bigint NOT NULL,
    signature bytea NOT NULL CHECK (length(signature) = 64),
    PRIMARY KEY (size, witness)
);

-- The deny list: disabled users, revoked devices, and the list's version
-- (one row), each entry with the version that set it.
CREATE TABLE access_policy.deny_users (
    user_id text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL
);
CREATE TABLE access_policy.deny_devices (
    user_id text COLLATE "C" NOT NULL,
    device  text COLLATE "C" NOT NULL,
    until   bigint NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (user_id, device)
);
CREATE TABLE access_policy.deny_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  bigint NOT NULL CHECK (version >= 0)
);
INSERT INTO access_policy.deny_version (only_row, version) VALUES (true, 0);
