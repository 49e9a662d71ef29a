//! The audit chain and its Merkle tree in PostgreSQL.
//!
//! Every replica appends to the same log. An append runs inside a
//! transaction that holds the advisory lock [`LOG_LOCK`] (taken by
//! [`super::PgPolicyStore::locked`]); it reads the head — the last entry,
//! whose hash it checks — inside that transaction, so no two replicas can
//! chain onto the same entry, and its entries, their Merkle nodes and the
//! change they audit commit together or not at all.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use sesphr_tlog::merkle::{self, Hash, HashSource};
use tokio_postgres::GenericClient;

use super::rows::{col, hash, q, to_i64, to_u64};
use crate::audit;
use crate::{AuditEntry, AuditEvent, DomainError};

/// The advisory lock every append (and the deny-list version) is taken
/// under, across replicas.
pub(super) const LOG_LOCK: &str = "access_policy.audit";

/// The advisory lock checkpoints are signed (and cosignatures stored)
/// under (see [`super::checkpoints`]).
pub(super) const CHECKPOINT_LOCK: &str = "access_policy.checkpoint";

/// How long a transaction waits for a lock another replica holds. A
/// replica that hangs with the lock must not stop every other one for
/// good; past this the call fails as unavailable and may be retried.
pub(super) const LOCK_WAIT: &str = "10s";

/// Takes the advisory lock `name` for the rest of transaction `tx`,
/// waiting at most [`LOCK_WAIT`]. One round trip: the key is a number
/// computed here, so it can be sent as a literal.
pub(super) async fn lock<C: GenericClient>(tx: &C, name: &str) -> Result<(), DomainError> {
    let key = sesphr_domain::pg::lock_key(name);
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{LOCK_WAIT}'; SELECT pg_advisory_xact_lock({key})"
    ))
    .await
    .map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
            tracing::warn!(lock = name, "timed out waiting for a policy-store lock");
            DomainError::Unavailable(format!(
                "the policy store is busy (waited {LOCK_WAIT} for {name}); try again"
            ))
        } else {
            sesphr_domain::pg::pg_error(e)
        }
    })
}

/// The last entry, decoded and checked against its own hash.
pub(super) async fn last_entry<C: GenericClient>(c: &C) -> Result<Option<AuditEntry>, DomainError> {
    let row = q(c.query_opt(
        "SELECT seq, value FROM access_policy.audit_entries ORDER BY seq DESC LIMIT 1",
        &[],
    ))
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let seq = to_u64(col(&row, 0)?, "audit sequence number")?;
    let e = audit::decode_value(seq, col(&row, 1)?)?;
    if e.seq != seq {
        return Err(DomainError::Corrupt(format!(
            "last entry stored as {seq} claims to be {}",
            e.seq
        )));
    }
    if audit::recompute_hash(&e) != e.hash {
        return Err(DomainError::Corrupt(format!(
            "last entry {seq} does not match its hash"
        )));
    }
    Ok(Some(e))
}

/// The entry stored as `seq`, decoded (not verified).
pub(super) async fn entry<C: GenericClient>(
    c: &C,
    seq: u64,
) -> Result<Option<AuditEntry>, DomainError> {
    let key = to_i64(seq, "audit sequence number")?;
    let row = q(c.query_opt(
        "SELECT value FROM access_policy.audit_entries WHERE seq = $1",
        &[&key],
    ))
    .await?;
    row.map(|r| audit::decode_value(seq, col(&r, 0)?))
        .transpose()
}

/// Appends `events` (at time `now`) after the head, with their Merkle
/// nodes. Must run inside a transaction holding [`LOG_LOCK`].
pub(super) async fn append<C: GenericClient>(
    tx: &C,
    now: i64,
    events: Vec<AuditEvent>,
) -> Result<Vec<AuditEntry>, DomainError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut prev = last_entry(tx).await?.map(|e| (e.seq, e.hash));
    let mut nodes = Nodes::default();
    let mut entries = Vec::with_capacity(events.len());
    for ev in events {
        if prev.is_some_and(|(seq, _)| seq >= i64::MAX as u64) {
            return Err(crate::exhausted());
        }
        let e = audit::next_entry(prev, now, ev, rand::random());
        nodes.add_leaf(tx, e.seq - 1, audit::leaf_hash(&e)).await?;
        prev = Some((e.seq, e.hash));
        entries.push(e);
    }
    let values: Vec<Vec<u8>> = entries.iter().map(audit::encode_value).collect();
    insert_entries(
        tx,
        entries
            .iter()
            .zip(&values)
            .map(|(e, v)| (e.seq, e.owner_id.as_str(), v.as_slice())),
    )
    .await?;
    nodes.write(tx).await?;
    Ok(entries)
}

/// Inserts entries (seq, owner, stored value) as they are.
pub(super) async fn insert_entries<'a, C: GenericClient>(
    tx: &C,
    rows: impl Iterator<Item = (u64, &'a str, &'a [u8])>,
) -> Result<(), DomainError> {
    let (mut seqs, mut owners, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for (seq, owner, value) in rows {
        seqs.push(to_i64(seq, "audit sequence number")?);
        owners.push(owner);
        values.push(value);
    }
    q(tx.execute(
        "INSERT INTO access_policy.audit_entries (seq, owner_id, value) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bytea[])",
        &[&seqs, &owners, &values],
    ))
    .await?;
    Ok(())
}

/// The left siblings appending leaf `index` combines with (see
/// [`merkle::appended`]): the complete subtrees on the tree's right edge.
fn left_siblings(index: u64) -> impl Iterator<Item = (u8, u64)> {
    (0u8..64)
        .take_while(move |&l| (index >> l) & 1 == 1)
        .map(move |l| (l, (index >> l) - 1))
}

/// The nodes one transaction read and wrote.
#[derive(Default)]
pub(super) struct Nodes {
    known: HashMap<(u8, u64), Hash>,
    new: Vec<(u8, u64, Hash)>,
}

impl HashSource for Nodes {
    type Error = DomainError;
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, DomainError> {
        self.known.get(&(level, index)).copied().ok_or_else(|| {
            DomainError::Corrupt(format!("audit tree node {level}/{index} is missing"))
        })
    }
}

impl Nodes {
    /// Adds leaf `index` (the tree holds exactly the leaves before it),
    /// reading the siblings it needs that this transaction has not seen.
    pub(super) async fn add_leaf<C: GenericClient>(
        &mut self,
        c: &C,
        index: u64,
        leaf: Hash,
    ) -> Result<(), DomainError> {
        let missing: Vec<(u8, u64)> = left_siblings(index)
            .filter(|k| !self.known.contains_key(k))
            .collect();
        self.known.extend(fetch(c, &missing).await?);
        self.push(index, leaf)
    }

    /// [`Nodes::add_leaf`] when every sibling is known already (a copy
    /// that builds the whole tree in order).
    pub(super) fn push(&mut self, index: u64, leaf: Hash) -> Result<(), DomainError> {
        for (level, i, h) in merkle::appended(index, leaf, &*self)? {
            self.known.insert((level, i), h);
            self.new.push((level, i, h));
        }
        Ok(())
    }

    /// Keeps only the right edge of the tree of `size` leaves (the
    /// complete subtrees later leaves combine with, one per set bit of
    /// `size`), so a long copy does not hold every node in memory.
    pub(super) fn forget_inner(&mut self, size: u64) {
        let edge: BTreeSet<(u8, u64)> = (0u8..64)
            .filter(|&l| (size >> l) & 1 == 1)
            .map(|l| (l, (size >> l) - 1))
            .collect();
        self.known.retain(|k, _| edge.contains(k));
    }

    /// Inserts the nodes added since the last write.
    pub(super) async fn write<C: GenericClient>(&mut self, tx: &C) -> Result<(), DomainError> {
        if self.new.is_empty() {
            return Ok(());
        }
        let mut levels = Vec::with_capacity(self.new.len());
        let mut idxs = Vec::with_capacity(self.new.len());
        let mut hashes = Vec::with_capacity(self.new.len());
        for (level, i, h) in &self.new {
            levels.push(i16::from(*level));
            idxs.push(to_i64(*i, "audit tree index")?);
            hashes.push(h.as_slice());
        }
        q(tx.execute(
            "INSERT INTO access_policy.audit_tree (level, idx, hash) \
             SELECT * FROM unnest($1::smallint[], $2::bigint[], $3::bytea[])",
            &[&levels, &idxs, &hashes],
        ))
        .await?;
        self.new.clear();
        Ok(())
    }
}

/// The stored nodes among `keys` (absent ones are left out).
async fn fetch<C: GenericClient>(
    c: &C,
    keys: &[(u8, u64)],
) -> Result<HashMap<(u8, u64), Hash>, DomainError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let levels: Vec<i16> = keys.iter().map(|(l, _)| i16::from(*l)).collect();
    let idxs = keys
        .iter()
        .map(|(_, i)| to_i64(*i, "audit tree index"))
        .collect::<Result<Vec<_>, _>>()?;
    let rows = q(c.query(
        "SELECT t.level, t.idx, t.hash FROM access_policy.audit_tree t \
         JOIN unnest($1::smallint[], $2::bigint[]) AS k(level, idx) \
         ON t.level = k.level AND t.idx = k.idx",
        &[&levels, &idxs],
    ))
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let level: i16 = col(&row, 0)?;
        let level = u8::try_from(level)
            .map_err(|_| DomainError::Corrupt(format!("audit tree level {level}")))?;
        let index = to_u64(col(&row, 1)?, "audit tree index")?;
        out.insert((level, index), hash(col(&row, 2)?, "audit tree node")?);
    }
    Ok(out)
}

/// Leaves in the stored tree.
pub(super) async fn tree_size<C: GenericClient>(c: &C) -> Result<u64, DomainError> {
    let row = q(c.query_one(
        "SELECT max(idx) FROM access_policy.audit_tree WHERE level = 0",
        &[],
    ))
    .await?;
    let last: Option<i64> = col(&row, 0)?;
    match last {
        None => Ok(0),
        Some(i) => Ok(to_u64(i, "audit tree index")? + 1),
    }
}

/// A source that first records which nodes a computation asks for, then
/// (after they are fetched in one query) answers them.
enum TwoPass<'a> {
    Record(&'a RefCell<BTreeSet<(u8, u64)>>),
    Answer(Nodes),
}

impl HashSource for TwoPass<'_> {
    type Error = DomainError;
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, DomainError> {
        match self {
            TwoPass::Record(asked) => {
                asked.borrow_mut().insert((level, index));
                Ok([0; 32])
            }
            TwoPass::Answer(nodes) => nodes.subtree(level, index),
        }
    }
}

/// Runs `f` (a root or proof computation) over the stored tree with one
/// query: which nodes it reads depends only on the sizes and indexes, not
/// on the hashes, so a first pass learns them.
pub(super) async fn over_tree<C: GenericClient, T>(
    c: &C,
    f: impl Fn(&dyn HashSourceDyn) -> Result<T, DomainError>,
) -> Result<T, DomainError> {
    let asked = RefCell::new(BTreeSet::new());
    // The first pass's answer is made of placeholders; only its reads count.
    let _ = f(&TwoPass::Record(&asked));
    let keys: Vec<(u8, u64)> = asked.into_inner().into_iter().collect();
    let nodes = Nodes {
        known: fetch(c, &keys).await?,
        new: Vec::new(),
    };
    f(&TwoPass::Answer(nodes))
}

/// [`HashSource`] as an object, so [`over_tree`] takes one closure.
pub(super) trait HashSourceDyn {
    fn node(&self, level: u8, index: u64) -> Result<Hash, DomainError>;
}

impl HashSourceDyn for TwoPass<'_> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, DomainError> {
        self.subtree(level, index)
    }
}

impl HashSource for &dyn HashSourceDyn {
    type Error = DomainError;
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, DomainError> {
        self.node(level, index)
    }
}
