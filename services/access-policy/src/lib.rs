//! AccessPolicy domain logic: grants, access checks and a tamper-evident
//! audit trail, persisted in sled.
//!
//! The gRPC layer lives elsewhere; this crate only decides and records. Time
//! is always passed in (`now`, unix seconds) so every rule is testable, and
//! every write returns only after `Db::flush`, i.e. once it is durable.
//!
//! # Check semantics
//!
//! A [`CheckQuery`] is allowed iff
//! - the caller is the owner (`grantee_id == owner_id`, role `Patient`), or
//! - a grant exists for (owner, partition, grantee) with the same role,
//!   `not_before <= now`, `expires_at` absent or `now < expires_at`, the
//!   epoch inside `[epoch_min, epoch_max]` (`epoch_max` absent = open ended),
//!   and, when the record's creation time is given, `record_created_at >=
//!   not_before` (so a grant can keep a new grantee from older records).
//!
//! The action does not change the rule; it is recorded in the audit entry.
//! Every check, allowed or denied, is audited; repeated denials of one
//! identity beyond its budget are coalesced into one entry with a count
//! (see [`coalesce`]).
//!
//! # Storage layout (sled trees)
//!
//! | tree | key | value |
//! |---|---|---|
//! | `grants` | owner ‖ 0x00 ‖ partition ‖ 0x00 ‖ grantee | JSON grant (role as its name) |
//! | `grants_by_grantee` | grantee ‖ 0x00 ‖ owner ‖ 0x00 ‖ partition | empty |
//! | `audit` | seq as u64 BE (1, 2, …) | see below |
//! | `audit_by_owner` | owner ‖ 0x00 ‖ seq u64 BE | empty |
//! | `deny` | user id (a disabled user) / 0x00 `version` | version u64 BE |
//!
//! User ids and partition names never contain 0x00 (see
//! `sesphr_identity::validate_user_id`), so the separators are unambiguous
//! and `owner ‖ 0x00` is an exact prefix.
//!
//! # Audit chain
//!
//! Entry `seq` has `hash = SHA-256(prev_hash ‖ C)` where `prev_hash` is the
//! previous entry's hash (32 zero bytes for entry 1) and `C` is the
//! canonical encoding
//!
//! ```text
//! seq u64 BE ‖ time i64 BE ‖
//! for actor, action, owner_id, partition, subject, record_id, outcome, detail:
//!     u32 BE byte length ‖ UTF-8 bytes
//! ```
//!
//! The stored value is `0x01 (version) ‖ prev_hash ‖ hash ‖ C`. Sequence
//! numbers are contiguous from 1, so a deleted entry shows as a gap, a
//! reordered one as a key/seq mismatch or a broken link, an edited one as a
//! hash mismatch. Rewriting the whole tail consistently is only detectable
//! against a head published earlier: pass it to
//! [`PolicyStore::verify_audit`].
//!
//! A grant or revoke and its audit entry commit in one sled transaction, so
//! a crash never leaves a grant change without its entry.
//!
//! # Concurrency
//!
//! Every change (grant, revoke, check, event) is queued and written by
//! group commit ([`commit`]): concurrent operations run in queue order in
//! one sled transaction, which appends all their entries and Merkle nodes,
//! then share one fsync (`Db::flush`); each call returns only once its own
//! entries are durable. The batch's transaction runs under the append lock
//! (the head), the fsync after it is released. Verification snapshots the
//! head under the lock and walks the immutable prefix without it.

mod audit;
pub mod backend;
pub mod coalesce;
pub mod commit;
pub mod deny;
pub mod grpc;
pub mod pg;
pub mod policy;
mod time;
pub mod tlog;
mod vocab;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sesphr_identity::{Role, validate_partition, validate_user_id};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

pub use audit::GENESIS_HASH;
pub use backend::PolicyBackend;
pub use coalesce::RefusalLimits;
pub use policy::Policy;
pub use time::format_unix_time;
pub use vocab::{AuditAction, Outcome};

/// Longest accepted audit field (bytes). Entries are kept forever, so a
/// caller must not be able to bloat the log with megabyte strings.
pub const MAX_AUDIT_FIELD_LEN: usize = 4096;

/// Page size used when an [`AuditFilter`] asks for `limit == 0` (the
/// protobuf default), and the largest page ever returned.
pub const DEFAULT_AUDIT_PAGE: usize = MAX_AUDIT_PAGE;
pub const MAX_AUDIT_PAGE: usize = 1000;

/// The shared error vocabulary of the services (`sesphr-domain`).
pub use sesphr_domain::DomainError;

/// Permission for one grantee to read one owner's partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub owner_id: String,
    pub partition: String,
    pub grantee_id: String,
    /// The role the grantee must present (from its certificate) to use it.
    pub grantee_role: Role,
    pub epoch_min: u32,
    /// `None` = every epoch from `epoch_min` on, including future ones.
    pub epoch_max: Option<u32>,
    pub not_before: i64,
    pub expires_at: Option<i64>,
    /// Set by the store to the `now` of the [`PolicyStore::grant`] call.
    pub granted_at: i64,
}

impl Grant {
    fn epoch_range(&self) -> String {
        match self.epoch_max {
            Some(max) => format!("{}..={max}", self.epoch_min),
            None => format!("{}..", self.epoch_min),
        }
    }

    /// One line for audit details.
    fn describe(&self) -> String {
        let until = match self.expires_at {
            Some(t) => format!("until {}", format_unix_time(t)),
            None => "with no expiry".to_owned(),
        };
        format!(
            "role {}, epochs {}, from {} {until}",
            self.grantee_role,
            self.epoch_range(),
            format_unix_time(self.not_before)
        )
    }
}

/// What the caller wants to do with a record or partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Read,
    ReEncrypt,
    List,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Read, Action::ReEncrypt, Action::List];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::ReEncrypt => "reencrypt",
            Action::List => "list",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                DomainError::Malformed(format!(
                    "unknown action {:?}: expected read, reencrypt or list",
                    truncate(s)
                ))
            })
    }
}

/// One access question. The grantee id and role come from the caller's
/// verified certificate, never from a request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckQuery {
    pub owner_id: String,
    pub partition: String,
    pub grantee_id: String,
    pub grantee_role: Role,
    pub epoch: u32,
    /// When known, lets a grant's `not_before` hide older records.
    pub record_created_at: Option<i64>,
    /// Only recorded in the audit entry.
    pub record_id: Option<String>,
    pub action: Action,
}

/// The answer to a [`CheckQuery`], with a reason a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The whole reason, for the audit trail (the owner sees it).
    pub reason: String,
    /// What the service that asked may tell its caller: it says nothing
    /// about the record (partition, epoch, creation time) that the caller
    /// could not learn from its own grant.
    pub caller_reason: String,
    /// The grant that allowed it (none for owners and denials): its window
    /// lets a caller filter many records with one check.
    pub grant: Option<Grant>,
}

impl Decision {
    fn allow(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Decision {
            allowed: true,
            caller_reason: reason.clone(),
            reason,
            grant: None,
        }
    }
    /// A denial about the caller's own grant (its role, validity window):
    /// the caller may hear all of it.
    fn deny(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Decision {
            allowed: false,
            caller_reason: reason.clone(),
            reason,
            grant: None,
        }
    }
    /// A denial whose full reason describes the record; the caller hears
    /// only `caller_reason`.
    fn deny_telling(reason: impl Into<String>, caller_reason: &str) -> Self {
        Decision {
            allowed: false,
            reason: reason.into(),
            caller_reason: caller_reason.to_owned(),
            grant: None,
        }
    }
}

/// Something worth a line in the audit trail. Empty strings are fine for
/// fields that do not apply; `owner_id` and `partition`, when set, must be
/// a valid user id / partition name so the per-owner view can find them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub actor: String,
    pub action: AuditAction,
    pub owner_id: String,
    pub partition: String,
    pub subject: String,
    pub record_id: String,
    pub outcome: Outcome,
    pub detail: String,
}

/// A stored, hash-chained audit event. Its words are kept as the text that
/// was hashed, so entries written with any vocabulary still verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub seq: u64,
    pub time: i64,
    pub actor: String,
    pub action: String,
    pub owner_id: String,
    pub partition: String,
    pub subject: String,
    pub record_id: String,
    pub outcome: String,
    pub detail: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    /// Random bytes hashed into the entry's Merkle leaf (see
    /// [`AuditEntry::leaf_data`]).
    pub salt: [u8; 16],
}

impl AuditEntry {
    /// The entry's index in the Merkle tree.
    pub fn leaf_index(&self) -> u64 {
        self.seq - 1
    }

    /// The bytes hashed as its Merkle leaf: `0x01 ‖ salt ‖ canonical bytes`.
    pub fn leaf_data(&self) -> Vec<u8> {
        audit::leaf_data(self)
    }

    /// The hashed fields, in chain order (see the crate docs).
    pub fn fields(&self) -> [&str; 8] {
        [
            &self.actor,
            &self.action,
            &self.owner_id,
            &self.partition,
            &self.subject,
            &self.record_id,
            &self.outcome,
            &self.detail,
        ]
    }

    /// Recomputes this entry's hash from its fields and `prev_hash`; lets a
    /// client verify an exported page without trusting the server.
    pub fn computed_hash(&self) -> [u8; 32] {
        audit::recompute_hash(self)
    }
}

/// Which audit entries to return: ascending seq strictly after `after_seq`,
/// optionally only one owner's, at most `limit` (0 = [`DEFAULT_AUDIT_PAGE`],
/// capped at [`MAX_AUDIT_PAGE`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditFilter {
    pub owner_id: Option<String>,
    pub after_seq: u64,
    pub limit: usize,
}

/// Result of recomputing the audit chain.
///
/// When `ok` is false, `entries`, `head_seq` and `head_hash` describe the
/// verified prefix (everything before `first_bad_seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub ok: bool,
    pub entries: u64,
    pub head_seq: u64,
    pub head_hash: [u8; 32],
    pub first_bad_seq: Option<u64>,
    pub problem: Option<String>,
}

/// What [`PolicyStore::verify_audit_for`] tells one owner: whether the log
/// verifies, and only what concerns her own entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerAuditReport {
    pub ok: bool,
    /// Her entries in the verified log.
    pub entries: u64,
    /// Her last entry (seq, hash), `(0, GENESIS_HASH)` if none: a head she
    /// can publish and pass back later.
    pub head_seq: u64,
    pub head_hash: [u8; 32],
    /// A message that names nothing of other users (details are logged).
    pub problem: Option<String>,
}

/// The in-memory end of the chain and the coalescing state. Appends hold
/// this lock while they assign sequence numbers and commit, not while they
/// flush.
struct Head {
    last: Option<(u64, [u8; 32])>,
    /// Set when the stored tail failed its check on open: appending to a
    /// chain we cannot vouch for would hide the damage, so appends refuse.
    broken: Option<String>,
    refusals: coalesce::Coalescer,
    reads: coalesce::Coalescer,
}

impl Head {
    fn new(last: Option<(u64, [u8; 32])>, broken: Option<String>) -> Self {
        Head {
            last,
            broken,
            refusals: coalesce::Coalescer::new(RefusalLimits::REFUSALS),
            reads: coalesce::Coalescer::new(RefusalLimits::AUDIT_READS),
        }
    }

    fn appendable(&self) -> Result<(), DomainError> {
        if let Some(problem) = &self.broken {
            return Err(DomainError::Corrupt(format!(
                "audit log is damaged, not appending: {problem}"
            )));
        }
        if self.last.is_some_and(|(seq, _)| seq == u64::MAX) {
            return Err(exhausted());
        }
        Ok(())
    }
}

fn exhausted() -> DomainError {
    DomainError::Conflict("audit log sequence numbers are exhausted".into())
}

/// Unix seconds, for the one place without a caller-supplied time (drop).
fn system_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Grants and the audit trail. `Send + Sync`: share one behind an `Arc`.
pub struct PolicyStore {
    db: sled::Db,
    grants: sled::Tree,
    grants_by_grantee: sled::Tree,
    audit: sled::Tree,
    audit_by_owner: sled::Tree,
    /// The Merkle tree over `audit` (see [`tlog`]).
    merkle: sled::Tree,
    /// The disabled users (see [`deny`]).
    deny: sled::Tree,
    checkpoints: tlog::CheckpointStore,
    head: Mutex<Head>,
    /// The queue of appends and its leader (see [`commit`]).
    committer: commit::Committer,
}

#[derive(Serialize, Deserialize)]
struct StoredGrant {
    owner_id: String,
    partition: String,
    grantee_id: String,
    grantee_role: String,
    epoch_min: u32,
    epoch_max: Option<u32>,
    not_before: i64,
    expires_at: Option<i64>,
    granted_at: i64,
}

fn encode_grant(g: &Grant) -> Result<Vec<u8>, DomainError> {
    let s = StoredGrant {
        owner_id: g.owner_id.clone(),
        partition: g.partition.clone(),
        grantee_id: g.grantee_id.clone(),
        grantee_role: g.grantee_role.as_str().to_owned(),
        epoch_min: g.epoch_min,
        epoch_max: g.epoch_max,
        not_before: g.not_before,
        expires_at: g.expires_at,
        granted_at: g.granted_at,
    };
    serde_json::to_vec(&s).map_err(|e| DomainError::Corrupt(format!("cannot encode grant: {e}")))
}

/// Decodes a stored grant and checks it is the one its key names, so a
/// value copied under another key is reported rather than trusted.
fn decode_grant(key: &[u8], v: &[u8]) -> Result<Grant, DomainError> {
    let label = String::from_utf8_lossy(key).replace('\0', "/");
    let s: StoredGrant = serde_json::from_slice(v)
        .map_err(|e| DomainError::Corrupt(format!("grant {label}: {e}")))?;
    let grantee_role = s
        .grantee_role
        .parse()
        .map_err(|e| DomainError::Corrupt(format!("grant {label}: {e}")))?;
    if grant_key(&s.owner_id, &s.partition, &s.grantee_id) != key {
        return Err(DomainError::Corrupt(format!(
            "grant stored under {label} names a different owner/partition/grantee"
        )));
    }
    Ok(Grant {
        owner_id: s.owner_id,
        partition: s.partition,
        grantee_id: s.grantee_id,
        grantee_role,
        epoch_min: s.epoch_min,
        epoch_max: s.epoch_max,
        not_before: s.not_before,
        expires_at: s.expires_at,
        granted_at: s.granted_at,
    })
}

fn join3(a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + c.len() + 2);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k.push(0);
    k.extend_from_slice(c.as_bytes());
    k
}

fn grant_key(owner: &str, partition: &str, grantee: &str) -> Vec<u8> {
    join3(owner, partition, grantee)
}

fn by_grantee_key(grantee: &str, owner: &str, partition: &str) -> Vec<u8> {
    join3(grantee, owner, partition)
}

fn prefix(id: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(0);
    k
}

/// Hostile strings can be huge; messages quote only their start.
pub(crate) fn truncate(s: &str) -> &str {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn check_field(name: &str, value: &str) -> Result<(), DomainError> {
    if value.len() > MAX_AUDIT_FIELD_LEN {
        return Err(DomainError::Malformed(format!(
            "{name} is {} bytes long; at most {MAX_AUDIT_FIELD_LEN} are accepted",
            value.len()
        )));
    }
    Ok(())
}

fn check_actor(actor: &str) -> Result<(), DomainError> {
    if actor.is_empty() {
        return Err(DomainError::Malformed(
            "the actor of an audited operation must be named".into(),
        ));
    }
    check_field("actor", actor)
}

fn validate_event(ev: &AuditEvent) -> Result<(), DomainError> {
    check_actor(&ev.actor)?;
    if !ev.owner_id.is_empty() {
        validate_user_id(&ev.owner_id)?;
    }
    if !ev.partition.is_empty() {
        validate_partition(&ev.partition)?;
    }
    for (name, v) in [
        ("subject", &ev.subject),
        ("record_id", &ev.record_id),
        ("detail", &ev.detail),
    ] {
        check_field(name, v)?;
    }
    Ok(())
}

fn validate_grant(g: &Grant, now: i64) -> Result<(), DomainError> {
    validate_user_id(&g.owner_id)?;
    validate_partition(&g.partition)?;
    validate_user_id(&g.grantee_id)?;
    if g.grantee_id == g.owner_id {
        return Err(DomainError::Malformed(format!(
            "{} cannot grant access to themselves: owners always have access",
            g.owner_id
        )));
    }
    if let Some(max) = g.epoch_max
        && max < g.epoch_min
    {
        return Err(DomainError::Malformed(format!(
            "epoch range {}..={max} is empty",
            g.epoch_min
        )));
    }
    if let Some(exp) = g.expires_at {
        if exp <= g.not_before {
            return Err(DomainError::Malformed(format!(
                "grant would expire at {} before it starts at {}",
                format_unix_time(exp),
                format_unix_time(g.not_before)
            )));
        }
        if exp <= now {
            return Err(DomainError::Malformed(format!(
                "grant would already be expired (expires_at {})",
                format_unix_time(exp)
            )));
        }
    }
    Ok(())
}

/// What a grantee hears when its grant exists but leaves the record out.
const NOT_COVERED: &str = "the grant does not cover it";

/// The rule from the crate docs, for a grant already known to match
/// (owner, partition, grantee).
fn evaluate(g: &Grant, q: &CheckQuery, now: i64) -> Decision {
    if g.grantee_role != q.grantee_role {
        return Decision::deny(format!(
            "grant is for role {}, caller is {}",
            g.grantee_role, q.grantee_role
        ));
    }
    if now < g.not_before {
        return Decision::deny(format!(
            "grant not valid before {}",
            format_unix_time(g.not_before)
        ));
    }
    if let Some(exp) = g.expires_at
        && now >= exp
    {
        return Decision::deny(format!("grant expired at {}", format_unix_time(exp)));
    }
    // A LIST check asks about the partition as a whole: the asking service
    // filters each record by the returned grant's window.
    let in_range = q.epoch >= g.epoch_min && g.epoch_max.is_none_or(|max| q.epoch <= max);
    if !in_range && q.action != Action::List {
        return Decision::deny_telling(
            format!(
                "epoch {} outside granted range {}",
                q.epoch,
                g.epoch_range()
            ),
            NOT_COVERED,
        );
    }
    if let Some(created) = q.record_created_at
        && created < g.not_before
    {
        return Decision::deny_telling(
            format!(
                "record created before not_before ({} < {})",
                format_unix_time(created),
                format_unix_time(g.not_before)
            ),
            NOT_COVERED,
        );
    }
    match g.expires_at {
        Some(exp) => Decision::allow(format!("granted until {}", format_unix_time(exp))),
        None => Decision::allow("granted with no expiry"),
    }
}

/// How many of an owner's entries a verification saw, and her last one.
#[derive(Default)]
struct OwnerStats {
    entries: u64,
    last: Option<(u64, [u8; 32])>,
}

impl PolicyStore {
    /// Opens (or creates) the store at `path` and recovers the audit head.
    ///
    /// The last audit entry's hash and its link to the one before are
    /// checked; if they fail, the store still opens (so `verify_audit` and
    /// reads work for investigation) but refuses every append with
    /// [`DomainError::Corrupt`].
    pub fn open(path: &Path) -> Result<Self, DomainError> {
        Self::open_with(path, RefusalLimits::REFUSALS)
    }

    /// [`PolicyStore::open`] with another refusal budget (see [`coalesce`]).
    pub fn open_with(path: &Path, refusals: RefusalLimits) -> Result<Self, DomainError> {
        let db = sled::Config::new().path(path).open()?;
        let grants = db.open_tree("grants")?;
        let grants_by_grantee = db.open_tree("grants_by_grantee")?;
        let audit = db.open_tree("audit")?;
        let audit_by_owner = db.open_tree("audit_by_owner")?;
        let merkle = db.open_tree("audit_tree")?;
        let deny = db.open_tree("deny")?;
        let checkpoints = tlog::CheckpointStore {
            checkpoints: db.open_tree("checkpoints")?,
            cosignatures: db.open_tree("cosignatures")?,
        };
        let mut head = recover_head(&audit)?;
        if head.broken.is_none() {
            let seq = head.last.map_or(0, |(seq, _)| seq);
            match tlog::catch_up(&audit, &merkle, seq).and_then(|added| {
                check_last_leaf(&audit, &merkle, seq)?;
                Ok(added)
            }) {
                Ok(0) => {}
                Ok(added) => tracing::info!(
                    path = %path.display(),
                    added,
                    "built the audit Merkle tree over entries written before it"
                ),
                Err(DomainError::Corrupt(problem)) => head.broken = Some(problem),
                Err(e) => return Err(e),
            }
        }
        head.refusals = coalesce::Coalescer::new(refusals);
        if let Some(problem) = &head.broken {
            tracing::error!(
                path = %path.display(),
                %problem,
                "audit log tail failed verification; refusing new audit entries"
            );
        } else {
            tracing::debug!(path = %path.display(), head = ?head.last.map(|h| h.0), "policy store opened");
        }
        Ok(PolicyStore {
            db,
            grants,
            grants_by_grantee,
            audit,
            audit_by_owner,
            merkle,
            deny,
            checkpoints,
            head: Mutex::new(head),
            committer: commit::Committer::new(),
        })
    }

    /// The current end of the audit chain, `(seq, hash)`, or `None` if
    /// empty. Publishing it lets a later `verify_audit` detect a rewrite.
    pub fn audit_head(&self) -> Option<(u64, [u8; 32])> {
        self.lock_head().last
    }

    /// A poisoned lock only means another thread panicked; `Head` is updated
    /// only after a successful commit, so its contents are still right.
    fn lock_head(&self) -> MutexGuard<'_, Head> {
        self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `body` and returns once the entries it returned are durable
    /// (group commit, see [`commit`]). `body` runs inside the batch's
    /// transaction, after the operations queued before it.
    fn submit<R, F>(&self, now: i64, body: F) -> Result<(R, Vec<AuditEntry>), DomainError>
    where
        R: Send + 'static,
        F: FnOnce(&mut commit::OpCtx<'_>) -> commit::Output<R> + Send + 'static,
    {
        self.committer
            .submit(commit::Op::new(now, body), &|batch| self.write_batch(batch))
    }

    /// [`PolicyStore::submit`] for a body that returns one event.
    fn submit_one<R, F>(&self, now: i64, body: F) -> Result<(R, AuditEntry), DomainError>
    where
        R: Send + 'static,
        F: FnOnce(&mut commit::OpCtx<'_>) -> Result<(R, AuditEvent), DomainError> + Send + 'static,
    {
        let (r, entries) = self.submit(now, move |cx| {
            let (r, ev) = body(cx)?;
            Ok((r, vec![ev]))
        })?;
        let entry = entries
            .into_iter()
            .next()
            .ok_or_else(|| DomainError::Corrupt("an append produced no entry".into()))?;
        Ok((r, entry))
    }

    /// The leader's work (see [`commit`]): under the append lock, runs the
    /// batch's operations in order and appends their entries in one sled
    /// transaction, moves the head; then, without the lock, one flush; then
    /// every operation gets its result.
    fn write_batch(&self, batch: &[Arc<dyn commit::Job>]) {
        let mut head = self.lock_head();
        let written = match head.appendable() {
            Err(e) => Err(e),
            Ok(()) => self.commit_batch(&mut head, batch),
        };
        drop(head);
        let (results, wrote) = match written {
            Ok(r) => r,
            Err(e) => {
                for job in batch {
                    job.finish(Err(commit::again(&e)));
                }
                return;
            }
        };
        let flushed = if wrote {
            self.db.flush().map(|_| ())
        } else {
            Ok(())
        };
        if let Err(e) = &flushed {
            // The batch committed in memory and may still reach the disk
            // (sled flushes in the background), though its callers are told
            // it failed: stop appending and signing until an operator has
            // looked, rather than let an outcome nobody saw become history.
            let problem = format!("a flush failed ({e}); the last batch's outcome is unknown");
            tracing::error!(%problem, "audit log stopped");
            self.lock_head().broken = Some(problem);
        }
        for (job, r) in batch.iter().zip(results) {
            job.finish(match (&flushed, r) {
                (Err(e), Ok(_)) => Err(DomainError::from(e.clone())),
                (_, r) => r,
            });
        }
    }

    /// Under the append lock: the batch's operations and their entries in
    /// one transaction; each operation's entries (or its own error), and
    /// whether anything was written. Moves the head once committed.
    fn commit_batch(
        &self,
        head: &mut Head,
        batch: &[Arc<dyn commit::Job>],
    ) -> Result<(commit::BatchResults, bool), DomainError> {
        let start = head.last;
        let runs = Cell::new(0u32);
        let head_cell = RefCell::new(head);
        let (results, last, wrote) = (
            &self.grants,
            &self.grants_by_grantee,
            &self.audit,
            &self.audit_by_owner,
            &self.merkle,
            &self.deny,
        )
            .transaction(|(g, bg, a, ao, t, d)| {
                // sled 0.34 runs a transaction's closure once (its
                // concurrency control serialises transactions); should it
                // ever run again, the operations (already consumed, their
                // coalescing already charged) fail rather than run twice.
                if runs.replace(runs.get() + 1) > 0 {
                    return Err(ConflictableTransactionError::Abort(DomainError::Conflict(
                        "the audit transaction was retried".into(),
                    )));
                }
                let mut head = head_cell.borrow_mut();
                let mut prev = start;
                let mut wrote = false;
                let mut results = Vec::with_capacity(batch.len());
                for job in batch {
                    let mut cx = commit::OpCtx::new(g, bg, d, &mut head);
                    let events = match job.run(&mut cx) {
                        Ok(events) => events,
                        Err(e) => {
                            // Nothing of it was applied: the others go on.
                            results.push(Err(e));
                            continue;
                        }
                    };
                    wrote |= cx.has_writes() || !events.is_empty();
                    cx.apply()?;
                    let mut entries = Vec::with_capacity(events.len());
                    for ev in events {
                        if prev.is_some_and(|(seq, _)| seq == u64::MAX) {
                            return Err(ConflictableTransactionError::Abort(exhausted()));
                        }
                        let entry = audit::next_entry(prev, job.now(), ev, rand::random());
                        a.insert(&audit::seq_key(entry.seq), audit::encode_value(&entry))?;
                        tlog::append_in_tx(t, &entry)?;
                        if !entry.owner_id.is_empty() {
                            ao.insert(audit::owner_index_key(&entry.owner_id, entry.seq), &[])?;
                        }
                        prev = Some((entry.seq, entry.hash));
                        entries.push(entry);
                    }
                    results.push(Ok(entries));
                }
                Ok((results, prev, wrote))
            })?;
        // Committed (in memory at least): the head must move even if the
        // flush fails, or the next append would reuse these seqs.
        head_cell.into_inner().last = last;
        Ok((results, wrote))
    }

    /// Writes the coalesced entries that are due (see [`coalesce`]): the
    /// server calls this about once per [`coalesce::FLUSH_INTERVAL`].
    /// Returns how many entries were appended.
    pub fn flush_coalesced(&self, now: i64) -> Result<usize, DomainError> {
        self.flush_coalesced_inner(now, false)
    }

    /// Writes every pending coalesced entry, due or not (shutdown).
    pub fn flush_all_coalesced(&self, now: i64) -> Result<usize, DomainError> {
        self.flush_coalesced_inner(now, true)
    }

    fn flush_coalesced_inner(&self, now: i64, force: bool) -> Result<usize, DomainError> {
        let at = Instant::now();
        let ((), entries) = self.submit(now, move |cx| {
            let mut events = cx.head.refusals.flush(at, force);
            events.extend(cx.head.reads.flush(at, force));
            Ok(((), events))
        })?;
        Ok(entries.len())
    }

    /// Refusals and reads counted but not yet written.
    pub fn pending_coalesced(&self) -> u64 {
        let head = self.lock_head();
        head.refusals.pending_events() + head.reads.pending_events()
    }

    /// Creates or replaces the grant for (owner, partition, grantee) and
    /// audits it as `grant`. Returns the stored grant (`granted_at = now`).
    pub fn grant(&self, grant: Grant, actor: &str, now: i64) -> Result<Grant, DomainError> {
        check_actor(actor)?;
        validate_grant(&grant, now)?;
        let grant = Grant {
            granted_at: now,
            ..grant
        };
        let key = grant_key(&grant.owner_id, &grant.partition, &grant.grantee_id);
        let idx = by_grantee_key(&grant.grantee_id, &grant.owner_id, &grant.partition);
        let value = encode_grant(&grant)?;
        let actor = actor.to_owned();
        let stored = grant.clone();
        self.submit_one(now, move |cx| {
            if deny::is_disabled(cx, &grant.grantee_id)? {
                return Err(DomainError::NotEntitled(format!(
                    "{} is disabled by an operator: no grants to it",
                    grant.grantee_id
                )));
            }
            let old = cx.grant(&key)?;
            cx.put_grant(key.clone(), value);
            cx.put_index(idx);
            let mut detail = grant.describe();
            if let Some(old) = old {
                match decode_grant(&key, &old) {
                    Ok(old) => detail.push_str(&format!("; replaces {}", old.describe())),
                    Err(_) => detail.push_str("; replaces an unreadable grant"),
                }
            }
            Ok((
                (),
                AuditEvent {
                    actor,
                    action: AuditAction::Grant,
                    owner_id: grant.owner_id,
                    partition: grant.partition,
                    subject: grant.grantee_id,
                    record_id: String::new(),
                    outcome: Outcome::Ok,
                    detail,
                },
            ))
        })?;
        Ok(stored)
    }

    /// Removes the grant for (owner, partition, grantee) and audits it as
    /// `revoke`. `NotFound` if there is none.
    pub fn revoke(
        &self,
        owner_id: &str,
        partition: &str,
        grantee_id: &str,
        actor: &str,
        now: i64,
    ) -> Result<Grant, DomainError> {
        check_actor(actor)?;
        validate_user_id(owner_id)?;
        validate_partition(partition)?;
        validate_user_id(grantee_id)?;
        let key = grant_key(owner_id, partition, grantee_id);
        let idx = by_grantee_key(grantee_id, owner_id, partition);
        let (actor, owner_id, partition, grantee_id) = (
            actor.to_owned(),
            owner_id.to_owned(),
            partition.to_owned(),
            grantee_id.to_owned(),
        );
        let (old, _) = self.submit_one(now, move |cx| {
            let Some(old) = cx.grant(&key)? else {
                return Err(DomainError::Unknown(format!(
                    "no grant from {owner_id} to {grantee_id} on partition {partition}"
                )));
            };
            let old = decode_grant(&key, &old)?;
            cx.remove_grant(key);
            cx.remove_index(idx);
            let ev = AuditEvent {
                actor,
                action: AuditAction::Revoke,
                owner_id,
                partition,
                subject: grantee_id,
                record_id: String::new(),
                outcome: Outcome::Ok,
                detail: format!("revoked {}", old.describe()),
            };
            Ok((old, ev))
        })?;
        Ok(old)
    }

    /// Decides `q` at time `now` and audits the decision as
    /// `check:<action>` with outcome `allowed`/`denied` and the reason.
    /// Denials are charged to the grantee's refusal budget and, over it,
    /// counted into one coalesced entry (see [`coalesce`]); the decision is
    /// the same either way.
    ///
    /// The grant is read inside the batch transaction that appends the
    /// decision, after the operations queued before it, so the log order is
    /// the decision order: no "allowed" can follow the revoke it missed.
    pub fn check(&self, q: &CheckQuery, actor: &str, now: i64) -> Result<Decision, DomainError> {
        check_actor(actor)?;
        validate_user_id(&q.owner_id)?;
        validate_partition(&q.partition)?;
        validate_user_id(&q.grantee_id)?;
        let record_id = q.record_id.clone().unwrap_or_default();
        check_field("record_id", &record_id)?;
        let is_owner = q.grantee_id == q.owner_id && q.grantee_role == Role::Patient;
        let key = grant_key(&q.owner_id, &q.partition, &q.grantee_id);
        let at = Instant::now();
        let q = q.clone();
        let actor = actor.to_owned();
        let (decision, _) = self.submit(now, move |cx| {
            let decision = if deny::is_disabled(cx, &q.grantee_id)? {
                Decision::deny_telling(
                    format!("{} is disabled by an operator", q.grantee_id),
                    "user disabled",
                )
            } else if is_owner {
                Decision::allow("owner has access to their own records")
            } else {
                match cx.grant(&key)? {
                    None => Decision::deny_telling(
                        format!(
                            "no grant from {} to {} on partition {}",
                            q.owner_id, q.grantee_id, q.partition
                        ),
                        "no grant covers it",
                    ),
                    Some(v) => {
                        let grant = decode_grant(&key, &v)?;
                        let mut decision = evaluate(&grant, &q, now);
                        if decision.allowed {
                            decision.grant = Some(grant);
                        }
                        decision
                    }
                }
            };
            let ev = AuditEvent {
                actor,
                action: AuditAction::Check(q.action),
                owner_id: q.owner_id,
                partition: q.partition,
                subject: format!("{}/{}", q.grantee_role, q.grantee_id),
                record_id,
                outcome: if decision.allowed {
                    Outcome::Allowed
                } else {
                    Outcome::Denied
                },
                detail: format!("epoch {}: {}", q.epoch, decision.reason),
            };
            let events = if decision.allowed {
                vec![ev]
            } else {
                let who = coalesce::refused_identity(&ev).to_owned();
                cx.head.refusals.admit(&who, ev, now, at)
            };
            Ok((decision, events))
        })?;
        Ok(decision)
    }

    /// Every grant `owner_id` has given, ordered by partition then grantee.
    /// Expired grants are included (the caller decides what to show).
    pub fn grants_given(&self, owner_id: &str) -> Result<Vec<Grant>, DomainError> {
        validate_user_id(owner_id)?;
        self.grants
            .scan_prefix(prefix(owner_id))
            .map(|kv| {
                let (k, v) = kv?;
                decode_grant(&k, &v)
            })
            .collect()
    }

    /// Every grant naming `grantee_id`, ordered by owner then partition.
    pub fn grants_received(&self, grantee_id: &str) -> Result<Vec<Grant>, DomainError> {
        validate_user_id(grantee_id)?;
        let mut out = Vec::new();
        for kv in self.grants_by_grantee.scan_prefix(prefix(grantee_id)) {
            let (k, _) = kv?;
            let parts: Vec<&[u8]> = k.split(|&b| b == 0).collect();
            let [grantee, owner, partition] = parts.as_slice() else {
                return Err(DomainError::Corrupt(format!(
                    "grantee index key {} is malformed",
                    hex::encode(&k)
                )));
            };
            let key = [*owner, *partition, *grantee].join(&0u8);
            // Index and grant change in one transaction; a missing grant here
            // means a revoke committed between the two reads.
            if let Some(v) = self.grants.get(&key)? {
                out.push(decode_grant(&key, &v)?);
            }
        }
        Ok(out)
    }

    /// Appends an event observed elsewhere (e.g. a denial at CloudStorage).
    ///
    /// A refusal (outcome `denied` or action `denied:*`) is charged to the
    /// refused identity's budget (the `subject`, else the `actor`); over
    /// budget it is counted into a coalesced entry written later, and
    /// `None` is returned. Anything else is always appended.
    pub fn record_event(
        &self,
        event: AuditEvent,
        now: i64,
    ) -> Result<Option<AuditEntry>, DomainError> {
        validate_event(&event)?;
        let at = Instant::now();
        let (individual, entries) = self.submit(now, move |cx| {
            let events = if coalesce::is_refusal(&event) {
                let who = coalesce::refused_identity(&event).to_owned();
                cx.head.refusals.admit(&who, event.clone(), now, at)
            } else {
                vec![event.clone()]
            };
            Ok((events.first() == Some(&event), events))
        })?;
        Ok(entries.into_iter().next().filter(|_| individual))
    }

    /// Audits that `reader` listed audit entries (`owner`'s view, or the
    /// whole log for `None`). The entry names no owner, so listing one's own
    /// view does not add to it; beyond a small per-reader budget, listings
    /// are counted into one entry a minute.
    pub fn record_audit_listing(
        &self,
        reader: &str,
        owner: Option<&str>,
        after_seq: u64,
        returned: usize,
        now: i64,
    ) -> Result<(), DomainError> {
        check_actor(reader)?;
        let scope = match owner {
            Some(o) => format!("{}'s view", truncate(o)),
            None => "the whole log".to_owned(),
        };
        let ev = AuditEvent {
            actor: reader.to_owned(),
            action: AuditAction::AuditListing,
            owner_id: String::new(),
            partition: String::new(),
            subject: reader.to_owned(),
            record_id: String::new(),
            outcome: Outcome::Ok,
            detail: format!("listed {returned} entries of {scope} after entry {after_seq}"),
        };
        let at = Instant::now();
        let reader = reader.to_owned();
        self.submit(now, move |cx| {
            Ok(((), cx.head.reads.admit(&reader, ev, now, at)))
        })?;
        Ok(())
    }

    /// Signs a checkpoint over every entry appended so far, unless the
    /// newest checkpoint already covers them all. Entries are flushed first,
    /// so the signed head never covers one a crash could take back.
    pub fn publish_checkpoint(
        &self,
        key: &sesphr_tlog::SigningKey,
        origin: &str,
        now: i64,
    ) -> Result<Option<sesphr_tlog::SignedCheckpoint>, DomainError> {
        let size = {
            let head = self.lock_head();
            if let Some(problem) = &head.broken {
                return Err(DomainError::Corrupt(format!(
                    "audit log is damaged, not signing it: {problem}"
                )));
            }
            head.last.map_or(0, |(seq, _)| seq)
        };
        if size == 0 {
            return Ok(None);
        }
        if self
            .checkpoints
            .latest()?
            .is_some_and(|c| c.checkpoint.size >= size)
        {
            return Ok(None);
        }
        self.db.flush()?;
        let root = sesphr_tlog::merkle::root(size, &tlog::StoredTree(&self.merkle))?;
        self.checkpoints.publish(key, origin, size, root, now)
    }

    /// The newest checkpoint with at least `min_cosignatures` cosignatures.
    pub fn witnessed_checkpoint(
        &self,
        min_cosignatures: usize,
    ) -> Result<Option<(sesphr_tlog::SignedCheckpoint, Vec<sesphr_tlog::Cosignature>)>, DomainError>
    {
        self.checkpoints.witnessed(min_cosignatures)
    }

    /// The published checkpoint of `size` leaves, if it is still kept.
    fn published(&self, size: u64) -> Result<sesphr_tlog::SignedCheckpoint, DomainError> {
        self.checkpoints.at(size)?.ok_or_else(|| {
            DomainError::Unknown(format!(
                "no checkpoint of size {size} is published (ask GetCheckpoint for a current one)"
            ))
        })
    }

    /// Audit paths of `leaf_indexes` in the tree of a published checkpoint.
    pub fn inclusion_proofs(
        &self,
        tree_size: u64,
        leaf_indexes: &[u64],
    ) -> Result<Vec<Vec<sesphr_tlog::Hash>>, DomainError> {
        if leaf_indexes.len() > tlog::MAX_PROOFS_PER_REQUEST {
            return Err(DomainError::Malformed(format!(
                "at most {} leaf indexes per request, not {}",
                tlog::MAX_PROOFS_PER_REQUEST,
                leaf_indexes.len()
            )));
        }
        self.published(tree_size)?;
        let source = tlog::StoredTree(&self.merkle);
        sesphr_tlog::merkle::inclusion_proofs(leaf_indexes, tree_size, &source)?
            .into_iter()
            .map(|p| p.map_err(|e| DomainError::Malformed(e.to_string())))
            .collect()
    }

    /// Proof that the tree of `first` leaves is a prefix of the published
    /// tree of `second` leaves.
    pub fn consistency_proof(
        &self,
        first: u64,
        second: u64,
    ) -> Result<Vec<sesphr_tlog::Hash>, DomainError> {
        self.published(second)?;
        sesphr_tlog::merkle::consistency_proof(first, second, &tlog::StoredTree(&self.merkle))?
            .map_err(|e| DomainError::Malformed(e.to_string()))
    }

    /// Stores `witness`'s cosignature of the published checkpoint `body`.
    pub fn add_cosignature(
        &self,
        witness: &str,
        body: &str,
        cosignature: &sesphr_tlog::Cosignature,
    ) -> Result<(), DomainError> {
        self.checkpoints.add_cosignature(witness, body, cosignature)
    }

    /// A page of the audit log; see [`AuditFilter`].
    pub fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, DomainError> {
        let limit = match filter.limit {
            0 => DEFAULT_AUDIT_PAGE,
            n => n.min(MAX_AUDIT_PAGE),
        };
        let Some(start) = filter.after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        match &filter.owner_id {
            None => {
                for kv in self.audit.range(audit::seq_key(start)..).take(limit) {
                    let (k, v) = kv?;
                    out.push(audit::decode_value(audit::key_seq(&k)?, &v)?);
                }
            }
            Some(owner) => {
                validate_user_id(owner)?;
                let pfx = audit::owner_index_prefix(owner);
                for kv in self
                    .audit_by_owner
                    .range(audit::owner_index_key(owner, start)..)
                    .take(limit)
                {
                    let (k, _) = kv?;
                    let Some(seq_bytes) = k.strip_prefix(pfx.as_slice()) else {
                        break; // past this owner's keys
                    };
                    let seq = audit::key_seq(seq_bytes)?;
                    let v = self.audit.get(audit::seq_key(seq))?.ok_or_else(|| {
                        DomainError::Corrupt(format!(
                            "owner index for {owner} names missing audit entry {seq}"
                        ))
                    })?;
                    let e = audit::decode_value(seq, &v)?;
                    if e.owner_id != *owner {
                        return Err(DomainError::Corrupt(format!(
                            "owner index for {owner} names audit entry {seq} of another owner"
                        )));
                    }
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// Recomputes the whole chain from entry 1 and checks the per-owner
    /// index against it. With `expected_head = Some((seq, hash))` (a head
    /// published earlier), also checks that entry `seq` still exists with
    /// that hash, which catches a consistently rewritten or truncated tail.
    ///
    /// The head is read under the append lock, then the chain up to it is
    /// walked without the lock (entries never change once written), so
    /// appends go on meanwhile; entries appended during the walk are left
    /// for the next verification.
    pub fn verify_audit(
        &self,
        expected_head: Option<(u64, [u8; 32])>,
    ) -> Result<AuditReport, DomainError> {
        Ok(self.verify_walk(expected_head, None)?.0)
    }

    /// [`PolicyStore::verify_audit`] for one owner: the same walk of the
    /// whole chain, but the answer tells her only whether it verifies and
    /// about her own entries (how many, her last one), never the global
    /// count or where another user's entry failed; the full report is
    /// logged for operators. `expected_own` must be one of her own entries
    /// with the hash she was shown, or the report is not ok.
    pub fn verify_audit_for(
        &self,
        owner_id: &str,
        expected_own: Option<(u64, [u8; 32])>,
    ) -> Result<OwnerAuditReport, DomainError> {
        validate_user_id(owner_id)?;
        let (report, own) = self.verify_walk(None, Some(owner_id))?;
        let (head_seq, head_hash) = own.last.unwrap_or((0, GENESIS_HASH));
        let mut out = OwnerAuditReport {
            ok: report.ok,
            entries: own.entries,
            head_seq,
            head_hash,
            problem: None,
        };
        if !report.ok {
            tracing::error!(
                asked_by = %owner_id,
                first_bad_seq = ?report.first_bad_seq,
                problem = report.problem.as_deref().unwrap_or(""),
                "audit log failed verification"
            );
            out.problem = Some(
                "the audit log failed verification; an operator's VerifyAudit shows where".into(),
            );
            return Ok(out);
        }
        if let Some((seq, hash)) = expected_own {
            let stored = if seq > report.head_seq {
                None
            } else {
                self.audit
                    .get(audit::seq_key(seq))?
                    .map(|v| audit::decode_value(seq, &v))
                    .transpose()?
            };
            let matches = stored.is_some_and(|e| e.owner_id == owner_id && e.hash == hash);
            if !matches {
                out.ok = false;
                out.problem = Some(format!(
                    "entry {seq} with hash {} is not in {owner_id}'s audit view: \
                     it was removed or rewritten, or was never hers",
                    hex::encode(hash)
                ));
            }
        }
        Ok(out)
    }

    fn verify_walk(
        &self,
        expected_head: Option<(u64, [u8; 32])>,
        owner: Option<&str>,
    ) -> Result<(AuditReport, OwnerStats), DomainError> {
        // Only the head is read under the lock; a damaged store (no head)
        // appends nothing, so walking all of it is safe.
        let snapshot = self.lock_head().last;
        let mut report = AuditReport {
            ok: true,
            entries: 0,
            head_seq: 0,
            head_hash: GENESIS_HASH,
            first_bad_seq: None,
            problem: None,
        };
        let mut own = OwnerStats::default();
        let fail = |r: &mut AuditReport, seq: u64, problem: String| {
            r.ok = false;
            r.first_bad_seq = Some(seq);
            r.problem = Some(problem);
        };
        let mut owned_entries: u64 = 0;
        let walk = match snapshot {
            Some((seq, _)) => self.audit.range(..=audit::seq_key(seq)),
            None => self.audit.range::<&[u8], _>(..),
        };
        for kv in walk {
            let (k, v) = kv?;
            let expected = report.head_seq.saturating_add(1);
            let seq = match audit::key_seq(&k) {
                Ok(s) => s,
                Err(e) => {
                    fail(&mut report, expected, e.to_string());
                    break;
                }
            };
            if seq != expected {
                fail(
                    &mut report,
                    expected,
                    format!("entry {expected} is missing (next stored entry is {seq})"),
                );
                break;
            }
            let e = match audit::decode_value(seq, &v) {
                Ok(e) => e,
                Err(err) => {
                    fail(&mut report, seq, err.to_string());
                    break;
                }
            };
            if e.seq != seq {
                fail(
                    &mut report,
                    seq,
                    format!("entry stored as {seq} claims to be entry {}", e.seq),
                );
                break;
            }
            if e.prev_hash != report.head_hash {
                fail(
                    &mut report,
                    seq,
                    format!("entry {seq} does not link to entry {}", seq - 1),
                );
                break;
            }
            if audit::recompute_hash(&e) != e.hash {
                fail(
                    &mut report,
                    seq,
                    format!("entry {seq} was modified: its content does not match its hash"),
                );
                break;
            }
            if !e.owner_id.is_empty() {
                owned_entries += 1;
                if !self
                    .audit_by_owner
                    .contains_key(audit::owner_index_key(&e.owner_id, seq))?
                {
                    fail(
                        &mut report,
                        seq,
                        format!("entry {seq} is missing from {}'s audit view", e.owner_id),
                    );
                    break;
                }
                if owner == Some(e.owner_id.as_str()) {
                    own.entries += 1;
                    own.last = Some((seq, e.hash));
                }
            }
            report.entries += 1;
            report.head_seq = seq;
            report.head_hash = e.hash;
        }
        if !report.ok {
            return Ok((report, own));
        }
        if let Some((seq, hash)) = expected_head {
            if seq > report.head_seq {
                report.ok = false;
                report.first_bad_seq = Some(report.head_seq.saturating_add(1));
                report.problem = Some(format!(
                    "log ends at entry {} but entry {seq} was published earlier: entries were removed",
                    report.head_seq
                ));
                return Ok((report, own));
            }
            let stored = self
                .audit
                .get(audit::seq_key(seq))?
                .map(|v| audit::decode_value(seq, &v))
                .transpose()?;
            let matches = match (seq, stored) {
                (0, _) => hash == GENESIS_HASH,
                (_, Some(e)) => e.hash == hash,
                (_, None) => false,
            };
            if !matches {
                report.ok = false;
                report.first_bad_seq = Some(seq.max(1));
                report.problem = Some(format!(
                    "entry {seq} no longer has the published hash {}: the log was rewritten",
                    hex::encode(hash)
                ));
                return Ok((report, own));
            }
        }
        if let Some((seq, hash)) = snapshot
            && (seq, hash) != (report.head_seq, report.head_hash)
        {
            report.ok = false;
            report.first_bad_seq = Some(report.head_seq.saturating_add(1).min(seq));
            report.problem = Some(format!(
                "this server appended up to entry {seq}, but the stored log ends at {}",
                report.head_seq
            ));
            return Ok((report, own));
        }
        // Nothing may be stored past the head this server appended up to.
        // Head and stored tail are read together under the lock (appends
        // commit under it), so a concurrent append is not mistaken for one.
        {
            let head = self.lock_head();
            if let (Some((seq, _)), Some((k, _))) = (head.last, self.audit.last()?) {
                let stored = audit::key_seq(&k).unwrap_or(u64::MAX);
                if stored != seq {
                    report.ok = false;
                    report.first_bad_seq = Some(seq.saturating_add(1).min(stored));
                    report.problem = Some(format!(
                        "this server appended up to entry {seq}, but the stored log ends at {stored}"
                    ));
                    return Ok((report, own));
                }
            }
        }
        // Each walked entry was found in the index above; equal counts mean
        // the index holds no extra keys up to the head (e.g. naming removed
        // entries). Keys past the head belong to later appends.
        let mut index_len: u64 = 0;
        for kv in self.audit_by_owner.iter() {
            let (k, _) = kv?;
            let seq = k
                .len()
                .checked_sub(8)
                .filter(|&i| i > 0)
                .and_then(|i| audit::key_seq(&k[i..]).ok());
            match seq {
                Some(seq) if seq > report.head_seq => {}
                _ => index_len += 1,
            }
        }
        if index_len != owned_entries {
            report.ok = false;
            report.problem = Some(format!(
                "per-owner audit index has {index_len} entries, the log has {owned_entries}"
            ));
        }
        Ok((report, own))
    }
}

impl Drop for PolicyStore {
    /// Best effort: writes the coalesced entries still pending, so a clean
    /// shutdown loses no count. The server also does this explicitly.
    fn drop(&mut self) {
        let pending = self.pending_coalesced();
        if pending == 0 {
            return;
        }
        if let Err(e) = self.flush_all_coalesced(system_now()) {
            tracing::warn!(error = %e, pending, "could not write coalesced audit entries on close");
        }
    }
}

/// After the tree caught up: it has exactly `seq` leaves and the last one
/// is the last entry's, so an entry edited without the tree is noticed.
fn check_last_leaf(audit: &sled::Tree, merkle: &sled::Tree, seq: u64) -> Result<(), DomainError> {
    use sesphr_tlog::merkle::HashSource as _;
    let stored = tlog::StoredTree(merkle);
    let size = stored.size()?;
    if size != seq {
        return Err(DomainError::Corrupt(format!(
            "the audit tree has {size} leaves, the log {seq} entries"
        )));
    }
    if seq == 0 {
        return Ok(());
    }
    let v = audit
        .get(audit::seq_key(seq))?
        .ok_or_else(|| DomainError::Corrupt(format!("audit entry {seq} is missing")))?;
    let e = audit::decode_value(seq, &v)?;
    if stored.subtree(0, seq - 1)? != audit::leaf_hash(&e) {
        return Err(DomainError::Corrupt(format!(
            "audit entry {seq} does not match its Merkle leaf"
        )));
    }
    Ok(())
}

/// Reads the last audit entry and checks its hash and its link to the
/// entry before, so a torn or edited tail is noticed at startup.
fn recover_head(audit: &sled::Tree) -> Result<Head, DomainError> {
    let Some((k, v)) = audit.last()? else {
        return Ok(Head::new(None, None));
    };
    // A sled error is an I/O problem, not a damaged log: it fails `open`.
    let prev_value = match audit::key_seq(&k) {
        Ok(seq) if seq > 1 => audit.get(audit::seq_key(seq - 1))?,
        _ => None,
    };
    let check = || -> Result<(u64, [u8; 32]), String> {
        let seq = audit::key_seq(&k).map_err(|e| e.to_string())?;
        if seq == 0 {
            return Err("an entry is stored under sequence number 0".into());
        }
        let e = audit::decode_value(seq, &v).map_err(|e| e.to_string())?;
        if e.seq != seq {
            return Err(format!("last entry stored as {seq} claims to be {}", e.seq));
        }
        if audit::recompute_hash(&e) != e.hash {
            return Err(format!("last entry {seq} does not match its hash"));
        }
        let prev_hash = if seq == 1 {
            GENESIS_HASH
        } else {
            let pv = prev_value
                .as_ref()
                .ok_or_else(|| format!("entry {} before the last one is missing", seq - 1))?;
            audit::decode_value(seq - 1, pv)
                .map_err(|e| e.to_string())?
                .hash
        };
        if e.prev_hash != prev_hash {
            return Err(format!(
                "last entry {seq} does not link to entry {}",
                seq - 1
            ));
        }
        Ok((seq, e.hash))
    };
    Ok(match check() {
        Ok(last) => Head::new(Some(last), None),
        Err(problem) => Head::new(None, Some(problem)),
    })
}

#[cfg(test)]
mod tests;
