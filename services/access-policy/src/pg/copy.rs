//! Moving a sled store's contents into an empty PostgreSQL store, for
//! `sesphrd migrate`.
//!
//! Every audit entry is copied as the bytes sled stores, so hashes, salts
//! and the chain are unchanged; the Merkle tree is rebuilt from them and
//! must come out with sled's root, and the head must be sled's head, or
//! nothing is committed. The copy is one transaction under the log and
//! checkpoint locks: either all of it is there or none.

use sesphr_tlog::merkle::{self, Hash};
use tokio_postgres::{GenericClient, IsolationLevel};

use super::PgPolicyStore;
use super::checkpoints::{insert, insert_cosignature};
use super::grants::put;
use super::log::{self, CHECKPOINT_LOCK, LOG_LOCK, Nodes};
use super::rows::{col, q, to_i64};
use crate::{DomainError, PolicyStore, audit, decode_grant, tlog};

/// Entries inserted per statement.
const CHUNK: usize = 1000;

/// What [`copy_from_sled`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub grants: u64,
    pub audit_entries: u64,
    /// The head both logs end at, `None` if empty.
    pub audit_head: Option<(u64, [u8; 32])>,
    /// The Merkle root over every entry, the same in both.
    pub audit_root: Hash,
    pub checkpoints: u64,
    pub cosignatures: u64,
    pub disabled_users: u64,
    pub revoked_devices: u64,
    pub deny_version: u64,
}

/// Copies grants, every audit entry verbatim, checkpoints, cosignatures
/// and the deny list (with its version) from `src` into `dst`, which must
/// be empty. Fails, copying nothing, if `src`'s log does not verify or the
/// copy's head or Merkle root differ from `src`'s. `src` must not be
/// written meanwhile (the daemon is stopped to migrate).
///
/// Entries of the deny list are stored with the list's version (sled
/// keeps per-entry versions only internally; nothing reads them).
pub fn copy_from_sled(src: &PolicyStore, dst: &PgPolicyStore) -> Result<CopyReport, DomainError> {
    let verified = src.verify_audit(None)?;
    if !verified.ok {
        return Err(DomainError::Corrupt(format!(
            "the sled audit log does not verify, not copying it: {}",
            verified.problem.unwrap_or_default()
        )));
    }
    let head = src.audit_head();
    let size = head.map_or(0, |(seq, _)| seq);
    let src_root = merkle::root(size, &tlog::StoredTree(&src.merkle))?;
    let mut report = CopyReport {
        grants: 0,
        audit_entries: 0,
        audit_head: head,
        audit_root: src_root,
        checkpoints: 0,
        cosignatures: 0,
        disabled_users: 0,
        revoked_devices: 0,
        deny_version: 0,
    };
    let (deny_version, deny) = src.deny_list()?;
    report.deny_version = deny_version;
    dst.pg.block_on(async {
        let mut conn = dst.pg.client().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let tx = q(client
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start())
        .await?;
        for name in [LOG_LOCK, CHECKPOINT_LOCK] {
            log::lock(&tx, name).await?;
        }
        refuse_unless_empty(&tx).await?;

        for kv in src.grants.iter() {
            let (k, v) = kv?;
            put(&tx, &decode_grant(&k, &v)?).await?;
            report.grants += 1;
        }

        let mut nodes = Nodes::default();
        let mut chunk: Vec<(u64, String, Vec<u8>)> = Vec::with_capacity(CHUNK);
        let mut expected = 1u64;
        for kv in src.audit.range(..=audit::seq_key(size)) {
            let (k, v) = kv?;
            let seq = audit::key_seq(&k)?;
            let e = audit::decode_value(seq, &v)?;
            if seq != expected || e.seq != seq {
                return Err(DomainError::Corrupt(format!(
                    "sled audit entry {expected} is not where the walk expects it"
                )));
            }
            nodes.push(seq - 1, audit::leaf_hash(&e))?;
            chunk.push((seq, e.owner_id, v.to_vec()));
            expected += 1;
            if chunk.len() == CHUNK {
                flush(&tx, &mut chunk, &mut nodes, seq).await?;
            }
        }
        if expected != size + 1 {
            return Err(DomainError::Corrupt(format!(
                "the sled audit log ends at {} but its head is {size}",
                expected - 1
            )));
        }
        flush(&tx, &mut chunk, &mut nodes, size).await?;
        report.audit_entries = size;

        for kv in src.checkpoints.checkpoints.iter() {
            let (_, v) = kv?;
            let cp = tlog::decode_checkpoint(&v)?;
            insert(&tx, &cp).await?;
            report.checkpoints += 1;
            for co in src.checkpoints.cosignatures(cp.checkpoint.size)? {
                insert_cosignature(&tx, cp.checkpoint.size, &co).await?;
                report.cosignatures += 1;
            }
        }

        let version = to_i64(deny_version, "deny-list version")?;
        for user in &deny.disabled {
            q(tx.execute(
                "INSERT INTO access_policy.deny_users (user_id, version) VALUES ($1, $2)",
                &[user, &version],
            ))
            .await?;
            report.disabled_users += 1;
        }
        for ((user, device), until) in &deny.revoked_devices {
            q(tx.execute(
                "INSERT INTO access_policy.deny_devices (user_id, device, until, version) \
                 VALUES ($1, $2, $3, $4)",
                &[user, device, until, &version],
            ))
            .await?;
            report.revoked_devices += 1;
        }
        q(tx.execute(
            "UPDATE access_policy.deny_version SET version = $1",
            &[&version],
        ))
        .await?;

        // The copy is the same log, or it is not committed.
        let copied_head = log::last_entry(&tx).await?.map(|e| (e.seq, e.hash));
        if copied_head != head {
            return Err(DomainError::Corrupt(
                "the copied audit log does not end at the sled log's head".into(),
            ));
        }
        let copied_root = log::over_tree(&tx, |t| merkle::root(size, &t)).await?;
        if copied_root != src_root {
            return Err(DomainError::Corrupt(
                "the copied audit tree's root differs from the sled tree's".into(),
            ));
        }
        q(tx.commit()).await?;
        Ok(())
    })?;
    tracing::info!(?report, "copied the policy store from sled to postgres");
    Ok(report)
}

/// Writes the chunk's entries and the nodes they completed.
async fn flush<C: GenericClient>(
    tx: &C,
    chunk: &mut Vec<(u64, String, Vec<u8>)>,
    nodes: &mut Nodes,
    last_seq: u64,
) -> Result<(), DomainError> {
    log::insert_entries(
        tx,
        chunk
            .iter()
            .map(|(seq, owner, v)| (*seq, owner.as_str(), v.as_slice())),
    )
    .await?;
    chunk.clear();
    nodes.write(tx).await?;
    nodes.forget_inner(last_seq);
    Ok(())
}

async fn refuse_unless_empty<C: GenericClient>(c: &C) -> Result<(), DomainError> {
    let row = q(c.query_one(
        "SELECT (SELECT count(*) FROM access_policy.audit_entries) \
              + (SELECT count(*) FROM access_policy.grants) \
              + (SELECT count(*) FROM access_policy.checkpoints) \
              + (SELECT count(*) FROM access_policy.deny_users) \
              + (SELECT count(*) FROM access_policy.deny_devices) \
              + (SELECT version FROM access_policy.deny_version)",
        &[],
    ))
    .await?;
    let n: i64 = col(&row, 0)?;
    if n != 0 {
        return Err(DomainError::Exists(
            "the postgres policy store is not empty; copying into it would fork its log".into(),
        ));
    }
    Ok(())
}
