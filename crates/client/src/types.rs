//! What crosses the SDK's API: records, grants and audit entries as the SDK
//! reports them. The prost messages they are made from stay inside the
//! crate, so a change of the wire schema is absorbed here instead of in
//! every caller; each conversion checks what a service returned and fails
//! with [`ClientError::Verification`] rather than passing malformed data on.

use sesphr::proto;
use sesphr_identity::{PartitionName, RecordId, Role, UserId};

use crate::ClientError;

/// A stored record, as a listing, an upload, a download or a deletion
/// reports it. It carries no plaintext and no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's id, chosen by the owner's client at upload.
    pub record_id: RecordId,
    /// The patient who owns the record.
    pub owner_id: UserId,
    /// The partition the record belongs to.
    pub partition: PartitionName,
    /// The partition key epoch the record is encrypted under.
    pub epoch: u32,
    /// When CloudStorage committed the record (Unix seconds).
    pub created_at: i64,
    /// Size of the stored ciphertext in bytes.
    pub ciphertext_size: u64,
    /// The encoded record header; its capsule is what a grantee has the SRS
    /// re-encrypt.
    pub record_header: Vec<u8>,
    /// For a deduplicated record, the id (SHA-256) of the blob its content
    /// is stored in; empty for a record stored on its own.
    pub blob_id: Vec<u8>,
}

impl Record {
    /// Whether the record's content is a shared deduplicated blob.
    pub fn is_deduplicated(&self) -> bool {
        !self.blob_id.is_empty()
    }
}

fn malformed(service: &str, what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Verification(format!("{service} returned a malformed {what}: {e}"))
}

impl Record {
    pub(crate) fn from_proto(m: proto::RecordMeta) -> Result<Self, ClientError> {
        let bad = |e| malformed("CloudStorage", "record", e);
        if !(m.blob_id.is_empty() || m.blob_id.len() == BLOB_ID_LEN) {
            return Err(malformed(
                "CloudStorage",
                "record",
                format!(
                    "blob id of {} bytes (expected {BLOB_ID_LEN})",
                    m.blob_id.len()
                ),
            ));
        }
        Ok(Record {
            record_id: RecordId::parse(m.record_id).map_err(bad)?,
            owner_id: UserId::parse(m.owner_id).map_err(bad)?,
            partition: PartitionName::parse(m.partition).map_err(bad)?,
            epoch: m.epoch,
            created_at: m.created_at,
            ciphertext_size: m.ciphertext_size,
            record_header: m.record_header,
            blob_id: m.blob_id,
        })
    }
}

/// The record a CloudStorage response must carry.
pub(crate) fn record_of(meta: Option<proto::RecordMeta>) -> Result<Record, ClientError> {
    meta.ok_or_else(|| ClientError::Verification("CloudStorage returned no record".into()))
        .and_then(Record::from_proto)
}

/// Longest blob id: a SHA-256 (or none, for a record stored on its own).
const BLOB_ID_LEN: usize = 32;

/// A record a listing of `owner`'s records (of `partition`, if one was
/// asked for) returned: its names valid (see [`Record::from_proto`]; a
/// reserved partition such as `@receive` cannot be one) and its owner and
/// partition the ones asked for. A `psychiatry` row in a listing of
/// `medical` is CloudStorage lying about what the caller asked.
pub(crate) fn listed_record(
    m: proto::RecordMeta,
    owner: &str,
    partition: Option<&str>,
) -> Result<Record, ClientError> {
    let rec = Record::from_proto(m)?;
    if rec.owner_id != owner {
        return Err(ClientError::Verification(format!(
            "CloudStorage listed record {} of {} in a listing of {owner}'s records",
            rec.record_id, rec.owner_id
        )));
    }
    if let Some(p) = partition
        && rec.partition != p
    {
        return Err(ClientError::Verification(format!(
            "CloudStorage listed record {} of partition {} in a listing of partition {p}",
            rec.record_id, rec.partition
        )));
    }
    Ok(rec)
}

/// The record an upload's reply must carry: exactly the one the client
/// chose (id, owner, partition, epoch). Anything else is CloudStorage
/// acknowledging a record that is not the one uploaded.
pub(crate) fn as_uploaded(
    rec: Record,
    record_id: &str,
    owner: &str,
    partition: &str,
    epoch: u32,
) -> Result<Record, ClientError> {
    let mut wrong = Vec::new();
    if rec.record_id != record_id {
        wrong.push(format!(
            "record id {} instead of {record_id}",
            rec.record_id
        ));
    }
    if rec.owner_id != owner {
        wrong.push(format!("owner {} instead of {owner}", rec.owner_id));
    }
    if rec.partition != partition {
        wrong.push(format!(
            "partition {} instead of {partition}",
            rec.partition
        ));
    }
    if rec.epoch != epoch {
        wrong.push(format!("epoch {} instead of {epoch}", rec.epoch));
    }
    if wrong.is_empty() {
        Ok(rec)
    } else {
        Err(ClientError::Verification(format!(
            "CloudStorage acknowledged another record than the one uploaded: {}",
            wrong.join(", ")
        )))
    }
}

/// The reply to an upload whose first message was `sent`: the record named
/// as chosen ([`as_uploaded`]; the owner is the one the header names),
/// with the header, size and blob id that were sent.
///
/// Both upload paths check their reply here: this, through
/// [`crate::upload::put_streamed`]; a deduplicated record linked to a
/// stored blob, with [`as_uploaded`] on its reply.
pub(crate) fn reply_to_upload(
    reply: Option<proto::RecordMeta>,
    sent: &proto::RecordUpload,
) -> Result<Record, ClientError> {
    let header = sesphr_crypto::RecordHeader::from_bytes(&sent.record_header)?;
    let owner = std::str::from_utf8(header.owner_id())
        .map_err(|_| ClientError::Invalid("the record header's owner is not UTF-8".into()))?;
    let rec = as_uploaded(
        record_of(reply)?,
        &sent.record_id,
        owner,
        &sent.partition,
        sent.epoch,
    )?;
    if rec.record_header != sent.record_header
        || rec.ciphertext_size != sent.ciphertext_size
        || rec.blob_id != sent.blob_id
    {
        return Err(ClientError::Verification(format!(
            "CloudStorage acknowledged record {} with another header, size or blob than uploaded",
            rec.record_id
        )));
    }
    Ok(rec)
}

/// The domain role of a wire role number, if it names one.
pub(crate) fn role_of(wire: i32) -> Option<Role> {
    proto::Role::try_from(wire)
        .ok()
        .and_then(proto::Role::to_domain)
}

/// An access grant: `grantee_id` may read `owner_id`'s records of
/// `partition` within the epochs and times below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The patient who granted access.
    pub owner_id: UserId,
    /// The partition the grant opens.
    pub partition: PartitionName,
    /// Who may read.
    pub grantee_id: UserId,
    /// The grantee's role; the same user id under another role is refused.
    pub grantee_role: Role,
    /// First key epoch the grant covers.
    pub epoch_min: u32,
    /// Last key epoch the grant covers; `None`: every later epoch too.
    pub epoch_max: Option<u32>,
    /// Records created before this time (Unix seconds) stay closed.
    pub not_before: i64,
    /// When the grant ends (Unix seconds); `None`: never.
    pub expires_at: Option<i64>,
    /// When AccessPolicy recorded the grant (Unix seconds).
    pub granted_at: i64,
}

impl Grant {
    fn from_proto(g: proto::AccessGrant) -> Result<Self, ClientError> {
        let bad = |e| malformed("AccessPolicy", "grant", e);
        Ok(Grant {
            owner_id: UserId::parse(g.owner_id).map_err(bad)?,
            partition: PartitionName::parse(g.partition).map_err(bad)?,
            grantee_id: UserId::parse(g.grantee_id).map_err(bad)?,
            grantee_role: role_of(g.grantee_role).ok_or_else(|| {
                malformed(
                    "AccessPolicy",
                    "grant",
                    format!("unknown role {}", g.grantee_role),
                )
            })?,
            epoch_min: g.epoch_min,
            epoch_max: g.epoch_max,
            not_before: g.not_before,
            expires_at: g.expires_at,
            granted_at: g.granted_at,
        })
    }
}

/// The grant an AccessPolicy response must carry.
pub(crate) fn grant_of(grant: Option<proto::AccessGrant>) -> Result<Grant, ClientError> {
    grant
        .ok_or_else(|| ClientError::Verification("AccessPolicy returned no grant".into()))
        .and_then(Grant::from_proto)
}

/// The grants a user gave and received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Grants on the caller's own partitions (patients).
    pub given: Vec<Grant>,
    /// Grants that open other users' partitions to the caller.
    pub received: Vec<Grant>,
}

impl Grants {
    pub(crate) fn from_proto(r: proto::ListGrantsResponse) -> Result<Self, ClientError> {
        let all = |list: Vec<proto::AccessGrant>| {
            list.into_iter()
                .map(Grant::from_proto)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Grants {
            given: all(r.given)?,
            received: all(r.received)?,
        })
    }
}

/// One entry of AccessPolicy's hash-chained audit trail. Its text fields are
/// the log as AccessPolicy wrote it: an event need not name an owner,
/// partition or record, so they may be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain (from 1).
    pub seq: u64,
    /// When it was written (Unix seconds).
    pub time: i64,
    /// Who acted, e.g. `patient/alice` or `service/srs`.
    pub actor: String,
    /// `grant`, `revoke`, `check:read`, `check:reencrypt`, `check:list`, or
    /// an event name.
    pub action: String,
    /// The owner of what was acted on.
    pub owner_id: String,
    /// The partition acted on.
    pub partition: String,
    /// The user the entry is about (e.g. the grantee).
    pub subject: String,
    /// The record acted on.
    pub record_id: String,
    /// `allowed`, `denied`, `ok`, …
    pub outcome: String,
    /// Free text.
    pub detail: String,
    /// SHA-256 of the previous entry (zeros for the first).
    pub prev_hash: Vec<u8>,
    /// SHA-256 of `prev_hash` and this entry's canonical encoding.
    pub hash: Vec<u8>,
    /// The random bytes hashed into its Merkle leaf (16).
    pub salt: Vec<u8>,
}

impl AuditEntry {
    pub(crate) fn from_proto(e: proto::AuditEntry) -> Self {
        AuditEntry {
            seq: e.seq,
            time: e.time,
            actor: e.actor,
            action: e.action,
            owner_id: e.owner_id,
            partition: e.partition,
            subject: e.subject,
            record_id: e.record_id,
            outcome: e.outcome,
            detail: e.detail,
            prev_hash: e.prev_hash,
            hash: e.hash,
            salt: e.salt,
        }
    }
}

/// What AccessPolicy found when it recomputed the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    /// Whether every verified entry's hash is right.
    pub ok: bool,
    /// Entries verified; for a patient, only her own.
    pub entries: u64,
    /// The verified head; for a patient, her last entry (0 if none).
    pub head_seq: u64,
    /// The head entry's hash (zeros if none).
    pub head_hash: Vec<u8>,
    /// The first entry that does not verify (when not ok; operators only).
    pub first_bad_seq: Option<u64>,
    /// What is wrong (when not ok).
    pub problem: String,
}

impl AuditVerification {
    pub(crate) fn from_proto(r: proto::VerifyAuditResponse) -> Self {
        AuditVerification {
            ok: r.ok,
            entries: r.entries,
            head_seq: r.head_seq,
            head_hash: r.head_hash,
            first_bad_seq: r.first_bad_seq,
            problem: r.problem,
        }
    }
}
