//! The policy store in PostgreSQL, for several AccessPolicy replicas that
//! serve one set of grants and **one** audit log.
//!
//! [`PgPolicyStore`] is a [`PolicyBackend`] with the sled [`PolicyStore`]'s
//! semantics; its tables are in schema `access_policy` (see
//! `migrations/V1__init.sql`), audit entries stored byte for byte as the
//! sled store stores them, so a log copied over ([`copy_from_sled`])
//! keeps its hashes and its Merkle root.
//!
//! # One log across replicas
//!
//! Every change that is audited — a grant or revoke, a check, an event, a
//! listing, a deny-list change, a coalesced entry — is one transaction that
//! first takes the advisory lock `lock_key("access_policy.audit")`, then
//! reads what it decides on (the grant a check evaluates, the deny list,
//! the log's head) and appends its entries with their Merkle nodes; the
//! change and its entries commit together. The lock makes the appends of
//! all replicas one sequence, so the log order is the decision order: no
//! check logged after a revoke (at any replica) can have missed it. A call
//! returns once its transaction has committed (durable in PostgreSQL).
//!
//! The deny list's version is read and bumped under the same lock, so it
//! grows strictly across replicas. Checkpoints are signed under their own
//! lock: a replica that finds a checkpoint covering the log already stored
//! signs none (so two replicas never sign two different heads of one
//! size), and every replica serves what is stored.
//!
//! # What stays per process
//!
//! Coalescing of refusals and audit listings ([`crate::coalesce`]) keeps
//! its budgets in memory, so each replica budgets an identity on its own:
//! with `n` replicas an identity may add up to `n` times the individual
//! entries one would allow. The budget bounds log growth, not access, so
//! that is a constant factor, not a hole; pending counts are written by
//! the replica that holds them ([`PolicyBackend::flush_coalesced`], and on
//! drop).
//!
//! A replica whose log tail fails its check when it opens (an entry that
//! does not match its hash, its link or its Merkle leaf) serves reads and
//! verification but refuses appends and signing, as the sled store does.

mod checkpoints;
mod copy;
mod deny;
mod grants;
mod log;
mod rows;
mod verify;

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use sesphr_domain::pg::{Pg, PgConfig, pg_error};
use sesphr_tlog::{Cosignature, Hash, SignedCheckpoint, SigningKey};
use tokio_postgres::{IsolationLevel, Transaction};

pub use copy::{CopyReport, copy_from_sled};

use crate::coalesce::{self, Coalescer, RefusalLimits};
use crate::{
    AuditAction, AuditEntry, AuditEvent, AuditFilter, AuditReport, CheckQuery, Decision,
    DomainError, Grant, Outcome, OwnerAuditReport, PolicyBackend, check_actor, truncate,
    validate_event,
};

refinery::embed_migrations!("migrations");

/// The history table of this service's migrations.
pub const MIGRATIONS_TABLE: &str = "sesphr_access_policy_migrations";

/// The per-process coalescing state (see the module docs).
struct Coalescers {
    refusals: Coalescer,
    reads: Coalescer,
}

/// Grants and the audit trail in PostgreSQL. `Send + Sync`: share one
/// behind an `Arc`. Its methods block; call them from a blocking thread,
/// never from an async task.
pub struct PgPolicyStore {
    pg: Pg,
    coalesce: Mutex<Coalescers>,
    /// Why the log's tail failed its check at open, if it did: appends
    /// and signing refuse, reads and verification go on.
    broken: Option<String>,
}

impl std::fmt::Debug for PgPolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPolicyStore")
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl PgPolicyStore {
    /// Connects (a pool on `runtime`), applies the migrations once across
    /// replicas, and checks the log's tail. `refusals` is the refusal
    /// budget (see [`crate::coalesce`]).
    pub fn open(
        pg: &PgConfig,
        refusals: RefusalLimits,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, DomainError> {
        let pg = Pg::new(pg, runtime)?;
        let broken = pg.block_on(async {
            pg.migrate(migrations::runner(), MIGRATIONS_TABLE).await?;
            let conn = pg.client().await?;
            match check_tail(&**conn).await {
                Ok(()) => Ok(None),
                Err(DomainError::Corrupt(problem)) => Ok(Some(problem)),
                Err(e) => Err(e),
            }
        })?;
        if let Some(problem) = &broken {
            tracing::error!(%problem, "audit log tail failed verification; refusing new audit entries");
        }
        Ok(PgPolicyStore {
            pg,
            coalesce: Mutex::new(Coalescers {
                refusals: Coalescer::new(refusals),
                reads: Coalescer::new(RefusalLimits::AUDIT_READS),
            }),
            broken,
        })
    }

    /// The current end of the audit chain, `(seq, hash)`, or `None` if
    /// empty, as committed by any replica.
    pub fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>, DomainError> {
        self.pg.block_on(async {
            let conn = self.pg.client().await?;
            Ok(log::last_entry(&**conn).await?.map(|e| (e.seq, e.hash)))
        })
    }

    /// The Merkle root over the first `size` entries (they must exist).
    pub fn audit_root(&self, size: u64) -> Result<Hash, DomainError> {
        self.pg.block_on(async {
            let conn = self.pg.client().await?;
            let stored = log::tree_size(&**conn).await?;
            if size > stored {
                return Err(DomainError::Unknown(format!(
                    "the audit tree has {stored} leaves, not {size}"
                )));
            }
            log::over_tree(&**conn, |t| sesphr_tlog::merkle::root(size, &t)).await
        })
    }

    /// Refusals and reads this process counted but has not written yet.
    pub fn pending_coalesced(&self) -> u64 {
        let c = self.lock_coalesce();
        c.refusals.pending_events() + c.reads.pending_events()
    }

    /// A poisoned lock only means another thread panicked while admitting
    /// an event; the counters are still usable.
    fn lock_coalesce(&self) -> MutexGuard<'_, Coalescers> {
        self.coalesce.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn appendable(&self) -> Result<(), DomainError> {
        match &self.broken {
            Some(problem) => Err(DomainError::Corrupt(format!(
                "audit log is damaged, not appending: {problem}"
            ))),
            None => Ok(()),
        }
    }

    /// Runs `op` in a transaction holding the log lock, then appends the
    /// events it returns (at time `now`) and commits both together.
    fn locked<R>(
        &self,
        now: i64,
        op: impl AsyncFnOnce(&Transaction<'_>) -> Result<(R, Vec<AuditEvent>), DomainError>,
    ) -> Result<(R, Vec<AuditEntry>), DomainError> {
        self.appendable()?;
        self.pg.block_on(async {
            let mut conn = self.pg.client().await?;
            let client: &mut tokio_postgres::Client = &mut conn;
            // Read committed: each statement sees what the lock's previous
            // holder committed (a snapshot from before the lock would not).
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::ReadCommitted)
                .start()
                .await
                .map_err(pg_error)?;
            log::lock(&tx, log::LOG_LOCK).await?;
            let (r, events) = op(&tx).await?;
            let entries = log::append(&tx, now, events).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok((r, entries))
        })
    }

    /// [`PgPolicyStore::locked`] for an operation with one event.
    fn locked_one<R>(
        &self,
        now: i64,
        op: impl AsyncFnOnce(&Transaction<'_>) -> Result<(R, AuditEvent), DomainError>,
    ) -> Result<(R, AuditEntry), DomainError> {
        let (r, entries) = self.locked(now, async |tx| {
            let (r, ev) = op(tx).await?;
            Ok((r, vec![ev]))
        })?;
        let entry = entries
            .into_iter()
            .next()
            .ok_or_else(|| DomainError::Corrupt("an append produced no entry".into()))?;
        Ok((r, entry))
    }

    fn record_event(&self, event: AuditEvent, now: i64) -> Result<Option<AuditEntry>, DomainError> {
        validate_event(&event)?;
        let at = Instant::now();
        let (individual, entries) = self.locked(now, async |_| {
            let events = if coalesce::is_refusal(&event) {
                let who = coalesce::refused_identity(&event).to_owned();
                self.lock_coalesce()
                    .refusals
                    .admit(&who, event.clone(), now, at)
            } else {
                vec![event.clone()]
            };
            Ok((events.first() == Some(&event), events))
        })?;
        Ok(entries.into_iter().next().filter(|_| individual))
    }

    fn record_audit_listing(
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
        self.locked(now, async |_| {
            Ok(((), self.lock_coalesce().reads.admit(reader, ev, now, at)))
        })?;
        Ok(())
    }

    fn flush_coalesced_inner(&self, now: i64, force: bool) -> Result<usize, DomainError> {
        let at = Instant::now();
        let ((), entries) = self.locked(now, async |_| {
            let mut c = self.lock_coalesce();
            let mut events = c.refusals.flush(at, force);
            events.extend(c.reads.flush(at, force));
            Ok(((), events))
        })?;
        Ok(entries.len())
    }
}

/// The check at open: the last entry matches its hash and links to the
/// one before, and the tree has exactly one leaf per entry, the last one
/// the last entry's.
async fn check_tail<C: tokio_postgres::GenericClient>(c: &C) -> Result<(), DomainError> {
    let last = log::last_entry(c).await?;
    let seq = last.as_ref().map_or(0, |e| e.seq);
    if let Some(e) = &last {
        let prev_hash = if seq == 1 {
            crate::GENESIS_HASH
        } else {
            log::entry(c, seq - 1)
                .await?
                .ok_or_else(|| {
                    DomainError::Corrupt(format!(
                        "entry {} before the last one is missing",
                        seq - 1
                    ))
                })?
                .hash
        };
        if e.prev_hash != prev_hash {
            return Err(DomainError::Corrupt(format!(
                "last entry {seq} does not link to entry {}",
                seq - 1
            )));
        }
    }
    let size = log::tree_size(c).await?;
    if size != seq {
        return Err(DomainError::Corrupt(format!(
            "the audit tree has {size} leaves, the log {seq} entries"
        )));
    }
    if let Some(e) = &last {
        let leaf = log::over_tree(c, |t| {
            use sesphr_tlog::merkle::HashSource as _;
            t.subtree(0, seq - 1)
        })
        .await?;
        if leaf != crate::audit::leaf_hash(e) {
            return Err(DomainError::Corrupt(format!(
                "audit entry {seq} does not match its Merkle leaf"
            )));
        }
    }
    Ok(())
}

impl Drop for PgPolicyStore {
    /// Best effort: writes the coalesced entries still pending, so a clean
    /// shutdown loses no count (the server also does this explicitly).
    /// From a thread of its own: the store may be dropped inside an async
    /// task, where blocking on the runtime is not allowed.
    fn drop(&mut self) {
        let pending = self.pending_coalesced();
        if pending == 0 {
            return;
        }
        let this = &*self;
        let written = std::thread::scope(|s| {
            s.spawn(|| this.flush_all_coalesced(crate::system_now()))
                .join()
        });
        match written {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, pending, "could not write coalesced audit entries on close")
            }
            Err(_) => tracing::warn!(
                pending,
                "could not write coalesced audit entries on close: the runtime is gone"
            ),
        }
    }
}

impl PolicyBackend for PgPolicyStore {
    fn grant(&self, grant: Grant, actor: &str, now: i64) -> Result<Grant, DomainError> {
        grants::grant(self, grant, actor, now)
    }

    fn revoke(
        &self,
        owner_id: &str,
        partition: &str,
        grantee_id: &str,
        actor: &str,
        now: i64,
    ) -> Result<Grant, DomainError> {
        grants::revoke(self, owner_id, partition, grantee_id, actor, now)
    }

    fn check(&self, q: &CheckQuery, actor: &str, now: i64) -> Result<Decision, DomainError> {
        grants::check(self, q, actor, now)
    }

    fn grants_given(&self, owner_id: &str) -> Result<Vec<Grant>, DomainError> {
        grants::given(self, owner_id)
    }

    fn grants_received(&self, grantee_id: &str) -> Result<Vec<Grant>, DomainError> {
        grants::received(self, grantee_id)
    }

    fn record_event(&self, event: AuditEvent, now: i64) -> Result<Option<AuditEntry>, DomainError> {
        PgPolicyStore::record_event(self, event, now)
    }

    fn record_audit_listing(
        &self,
        reader: &str,
        owner: Option<&str>,
        after_seq: u64,
        returned: usize,
        now: i64,
    ) -> Result<(), DomainError> {
        PgPolicyStore::record_audit_listing(self, reader, owner, after_seq, returned, now)
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, DomainError> {
        verify::page(self, filter)
    }

    fn publish_checkpoint(
        &self,
        key: &SigningKey,
        origin: &str,
        now: i64,
    ) -> Result<Option<SignedCheckpoint>, DomainError> {
        checkpoints::publish(self, key, origin, now)
    }

    fn witnessed_checkpoint(
        &self,
        min: usize,
    ) -> Result<Option<(SignedCheckpoint, Vec<Cosignature>)>, DomainError> {
        checkpoints::witnessed(self, min)
    }

    fn inclusion_proofs(
        &self,
        tree_size: u64,
        leaves: &[u64],
    ) -> Result<Vec<Vec<Hash>>, DomainError> {
        checkpoints::inclusion_proofs(self, tree_size, leaves)
    }

    fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, DomainError> {
        checkpoints::consistency_proof(self, first, second)
    }

    fn add_cosignature(
        &self,
        witness: &str,
        body: &str,
        cosignature: &Cosignature,
    ) -> Result<(), DomainError> {
        checkpoints::add_cosignature(self, witness, body, cosignature)
    }

    fn set_user_status(
        &self,
        user_id: &str,
        disabled: bool,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<(bool, u64), DomainError> {
        deny::set_user_status(self, user_id, disabled, reason, actor, now)
    }

    fn revoke_device(
        &self,
        user_id: &str,
        device: &str,
        until: i64,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<(bool, u64), DomainError> {
        deny::revoke_device(self, user_id, device, until, reason, actor, now)
    }

    fn deny_list(&self) -> Result<(u64, sesphr_mesh::deny::DenyEntries), DomainError> {
        deny::list(self)
    }

    fn verify_audit(
        &self,
        expected_head: Option<(u64, [u8; 32])>,
    ) -> Result<AuditReport, DomainError> {
        verify::verify_audit(self, expected_head)
    }

    fn verify_audit_for(
        &self,
        owner_id: &str,
        expected_own: Option<(u64, [u8; 32])>,
    ) -> Result<OwnerAuditReport, DomainError> {
        verify::verify_audit_for(self, owner_id, expected_own)
    }

    fn flush_coalesced(&self, now: i64) -> Result<usize, DomainError> {
        self.flush_coalesced_inner(now, false)
    }

    fn flush_all_coalesced(&self, now: i64) -> Result<usize, DomainError> {
        self.flush_coalesced_inner(now, true)
    }
}

#[cfg(test)]
mod tests;
