-- CloudStorage's metadata; the ciphertext itself is in the object store.
-- Ids are validated by the service before they get here. Text keys sort
-- in byte order (COLLATE "C"), as the sled store's keys do, so listings and
-- page tokens mean the same on either backend.
CREATE SCHEMA IF NOT EXISTS cloud_storage;

-- Deduplicated blobs: one row per (dedup scope, blob id). `scope` is ''
-- for the global scope, else the owner id. `object_key` names the upload
-- that stored the bytes first (relative to the configured prefix).
CREATE TABLE cloud_storage.blobs (
    scope      text COLLATE "C" NOT NULL,
    blob_id    bytea NOT NULL CHECK (octet_length(blob_id) = 32),
    size       bigint NOT NULL CHECK (size >= 0),
    root       bytea NOT NULL CHECK (octet_length(root) = 32),
    leaf_count bigint NOT NULL CHECK (leaf_count >= 0),
    -- The blob row goes with its last record, never lingers at 0.
    refcount   bigint NOT NULL CHECK (refcount > 0),
    object_key text NOT NULL UNIQUE,
    PRIMARY KEY (scope, blob_id)
);

-- Committed records. A record's content is either its own object
-- (`object_key`) or a blob (`blob_scope`, `blob_id`, `wrapped_key`).
CREATE TABLE cloud_storage.records (
    record_id   text COLLATE "C" PRIMARY KEY,
    owner_id    text COLLATE "C" NOT NULL,
    partition   text COLLATE "C" NOT NULL,
    epoch       bigint NOT NULL CHECK (epoch BETWEEN 0 AND 4294967295),
    created_at  bigint NOT NULL,
    size        bigint NOT NULL CHECK (size >= 0),
    header      bytea NOT NULL,
    object_key  text UNIQUE,
    blob_scope  text COLLATE "C",
    blob_id     bytea,
    wrapped_key bytea,
    FOREIGN KEY (blob_scope, blob_id) REFERENCES cloud_storage.blobs (scope, blob_id),
    CHECK (
        (object_key IS NOT NULL AND blob_id IS NULL AND blob_scope IS NULL AND wrapped_key IS NULL)
        OR (object_key IS NULL AND blob_id IS NOT NULL AND blob_scope IS NOT NULL
            AND wrapped_key IS NOT NULL)
    )
);
-- The two listings (all of an owner's records, one partition's), both in
-- record id order; the second also finds an owner's partitions.
CREATE INDEX records_by_owner ON cloud_storage.records (owner_id, record_id);
CREATE INDEX records_by_partition ON cloud_storage.records (owner_id, partition, record_id);
CREATE INDEX records_by_blob ON cloud_storage.records (blob_scope, blob_id)
    WHERE blob_id IS NOT NULL;

-- Uploads in progress. The primary key reserves the record id for one
-- upload at a time across every replica; `upload_id` tells this upload's
-- row from a later one of the same id. `touched_at` (unix seconds) moves
-- with every part, so a sweep only takes uploads nobody drives any more.
CREATE TABLE cloud_storage.pending (
    record_id    text COLLATE "C" PRIMARY KEY,
    upload_id    text NOT NULL,
    object_key   text NOT NULL UNIQUE,
    -- Set once the object store answered; NULL if it never did.
    multipart_id text,
    touched_at   bigint NOT NULL
);
CREATE INDEX pending_by_age ON cloud_storage.pending (touched_at);

-- Objects no row names any more (deleted records, freed blobs, a blob
-- stored twice by a race), written in the transaction that orphaned them
-- and removed once the object is gone: a crash in between leaves work for
-- the sweep, never a leak.
CREATE TABLE cloud_storage.doomed_objects (
    object_key text PRIMARY KEY,
    since      bigint NOT NULL
);

-- A copy from a sled store in progress or done (`sesphrd migrate`): lets a
-- failed copy resume while any other non-empty destination is refused.
CREATE TABLE cloud_storage.copies (
    id          smallint PRIMARY KEY CHECK (id = 1),
    started_at  bigint NOT NULL,
    finished_at bigint
);

-- Service secrets: drawn once, the same for every replica.
CREATE TABLE cloud_storage.secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);
