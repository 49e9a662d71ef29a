-- The setup service's metadata. Ids are validated by the service before
-- they get here; the keys below are what make its once-only rules hold
-- across replicas (a user id is taken by one INSERT, whoever races it).
CREATE SCHEMA IF NOT EXISTS srs;

-- One row per enrolled user. `record` is the service's binary user record
-- (keys, certificate, devices); role and enrolment time are kept typed
-- beside it for operators' queries.
CREATE TABLE srs.users (
    user_id     text PRIMARY KEY,
    role        text NOT NULL,
    enrolled_at bigint NOT NULL,
    record      bytea NOT NULL
);

-- Invitations under the SHA-256 of the invitation (never the invitation).
-- Typed, because the per-inviter caps count them by time and state.
CREATE TABLE srs.invitations (
    hash         bytea PRIMARY KEY CHECK (octet_length(hash) = 32),
    user_id      text NOT NULL,
    role         text NOT NULL,
    issued_by    text NOT NULL,
    issued_at    bigint NOT NULL,
    expires_at   bigint NOT NULL,
    -- 0 while unused.
    used_at      bigint NOT NULL,
    reenrollment boolean NOT NULL
);
CREATE INDEX invitations_by_inviter ON srs.invitations (issued_by, expires_at);

-- One trustee recovery setup per owner, replaced whole (binary record).
CREATE TABLE srs.recovery (
    owner_id text PRIMARY KEY,
    record   bytea NOT NULL
);

-- Kfrag sets per (owner, partition, grantee, epoch); the epoch is a u32.
CREATE TABLE srs.kfrags (
    owner_id   text NOT NULL,
    partition  text NOT NULL,
    grantee_id text NOT NULL,
    epoch      bigint NOT NULL CHECK (epoch BETWEEN 0 AND 4294967295),
    kfrag_set  bytea NOT NULL,
    PRIMARY KEY (owner_id, partition, grantee_id, epoch)
);

-- Service secrets: drawn once, the same for every replica.
CREATE TABLE srs.secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL
);
