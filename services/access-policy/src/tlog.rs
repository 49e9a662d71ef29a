//! The audit log as a Merkle transparency log: the stored subtree hashes,
//! the tree's catch-up over entries written before it existed, and the
//! signed checkpoints with their witnesses' cosignatures.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `audit_tree` | level u8 ‖ index u64 BE | 32-byte subtree hash |
//! | `audit_tree` | `size` | u64 BE: leaves in the tree |
//! | `checkpoints` | size u64 BE | signature (64) ‖ checkpoint body (UTF-8) |
//! | `cosignatures` | size u64 BE ‖ witness name | time i64 BE ‖ signature (64) |
//!
//! Leaves are added in the same sled transaction as their entries, so the
//! tree and the log never disagree; a checkpoint is signed only over
//! entries already flushed, so no signed head ever covers an entry a crash
//! could lose.

use sesphr_tlog::merkle::{self, Hash, HashSource};
use sesphr_tlog::{Checkpoint, Cosignature, SignedCheckpoint, SigningKey};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::audit;
use crate::{AuditEntry, DomainError};

/// Checkpoints always kept (besides the newest ones with each number of
/// cosignatures, see [`CheckpointStore::prune`]).
pub const KEPT_CHECKPOINTS: usize = 256;

/// Most leaf indexes one inclusion-proof request may name.
pub const MAX_PROOFS_PER_REQUEST: usize = 256;

/// Longest witness name accepted with a cosignature.
const MAX_WITNESS_NAME: usize = sesphr_tlog::checkpoint::MAX_NAME_LEN;

const SIZE_KEY: &[u8] = b"size";

pub fn node_key(level: u8, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = level;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn decode_hash(level: u8, index: u64, v: Option<sled::IVec>) -> Result<Hash, DomainError> {
    let v = v.ok_or_else(|| {
        DomainError::Corrupt(format!("audit tree node {level}/{index} is missing"))
    })?;
    v.as_ref().try_into().map_err(|_| {
        DomainError::Corrupt(format!("audit tree node {level}/{index} is not 32 bytes"))
    })
}

fn decode_u64(v: &[u8], what: &str) -> Result<u64, DomainError> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| DomainError::Corrupt(format!("{what} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(arr))
}

/// The stored tree, read outside any transaction.
pub struct StoredTree<'a>(pub &'a sled::Tree);

impl HashSource for StoredTree<'_> {
    type Error = DomainError;
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, DomainError> {
        decode_hash(level, index, self.0.get(node_key(level, index))?)
    }
}

impl StoredTree<'_> {
    /// Leaves in the tree (0 before the tree was ever built).
    pub fn size(&self) -> Result<u64, DomainError> {
        match self.0.get(SIZE_KEY)? {
            None => Ok(0),
            Some(v) => decode_u64(&v, "audit tree size"),
        }
    }
}

/// The tree inside the append transaction (sees its own writes).
struct TxTree<'a>(&'a TransactionalTree);

impl HashSource for TxTree<'_> {
    type Error = ConflictableTransactionError<DomainError>;
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        let v = self.0.get(node_key(level, index))?;
        decode_hash(level, index, v).map_err(ConflictableTransactionError::Abort)
    }
}

/// Adds entry `e` as leaf `e.seq - 1` (the tree must hold exactly the
/// entries before it) and records the new size.
pub fn append_in_tx(
    tree: &TransactionalTree,
    e: &AuditEntry,
) -> Result<(), ConflictableTransactionError<DomainError>> {
    let index = e.seq - 1;
    let nodes = merkle::appended(index, audit::leaf_hash(e), &TxTree(tree))?;
    for (level, i, hash) in nodes {
        tree.insert(&node_key(level, i), &hash)?;
    }
    tree.insert(SIZE_KEY, &e.seq.to_be_bytes())?;
    Ok(())
}

/// Builds the tree over entries it does not cover yet — every entry of a
/// log written before the tree existed — giving chain-only (version 1)
/// entries a fresh salt. Runs at open, before any append; idempotent and
/// resumable (each batch commits its entries' rewrites, nodes and the new
/// size together). Returns how many leaves were added.
pub fn catch_up(
    audit_tree: &sled::Tree,
    merkle_tree: &sled::Tree,
    head_seq: u64,
) -> Result<u64, DomainError> {
    use sled::Transactional;
    const BATCH: u64 = 2048;
    let mut size = StoredTree(merkle_tree).size()?;
    if size > head_seq {
        return Err(DomainError::Corrupt(format!(
            "the audit tree has {size} leaves but the log only {head_seq} entries"
        )));
    }
    let start = size;
    while size < head_seq {
        let end = (size + BATCH).min(head_seq);
        (audit_tree, merkle_tree).transaction(|(a, t)| {
            for seq in size + 1..=end {
                let v = a.get(audit::seq_key(seq))?.ok_or_else(|| {
                    ConflictableTransactionError::Abort(DomainError::Corrupt(format!(
                        "audit entry {seq} is missing"
                    )))
                })?;
                let mut e =
                    audit::decode_value(seq, &v).map_err(ConflictableTransactionError::Abort)?;
                if audit::is_chain_only(&v) {
                    e.salt = rand::random();
                    a.insert(&audit::seq_key(seq), audit::encode_value(&e))?;
                }
                append_in_tx(t, &e)?;
            }
            Ok(())
        })?;
        size = end;
    }
    if size > start {
        merkle_tree.flush()?;
        audit_tree.flush()?;
    }
    Ok(size - start)
}

/// Signed checkpoints and cosignatures.
pub struct CheckpointStore {
    pub checkpoints: sled::Tree,
    pub cosignatures: sled::Tree,
}

pub(crate) fn encode_checkpoint(s: &SignedCheckpoint) -> Vec<u8> {
    let body = s.checkpoint.body();
    let mut v = Vec::with_capacity(64 + body.len());
    v.extend_from_slice(&s.signature);
    v.extend_from_slice(body.as_bytes());
    v
}

pub(crate) fn decode_checkpoint(v: &[u8]) -> Result<SignedCheckpoint, DomainError> {
    let bad = |why: &str| DomainError::Corrupt(format!("stored checkpoint: {why}"));
    if v.len() < 64 {
        return Err(bad("truncated"));
    }
    let (sig, body) = v.split_at(64);
    let body = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
    Ok(SignedCheckpoint {
        checkpoint: Checkpoint::parse(body).map_err(|e| bad(&e.to_string()))?,
        signature: sig.try_into().map_err(|_| bad("signature"))?,
    })
}

fn cosig_prefix(size: u64) -> [u8; 8] {
    size.to_be_bytes()
}

impl CheckpointStore {
    pub fn latest(&self) -> Result<Option<SignedCheckpoint>, DomainError> {
        match self.checkpoints.last()? {
            None => Ok(None),
            Some((_, v)) => decode_checkpoint(&v).map(Some),
        }
    }

    pub fn at(&self, size: u64) -> Result<Option<SignedCheckpoint>, DomainError> {
        match self.checkpoints.get(size.to_be_bytes())? {
            None => Ok(None),
            Some(v) => decode_checkpoint(&v).map(Some),
        }
    }

    pub fn cosignatures(&self, size: u64) -> Result<Vec<Cosignature>, DomainError> {
        let mut out = Vec::new();
        for kv in self.cosignatures.scan_prefix(cosig_prefix(size)) {
            let (k, v) = kv?;
            let witness = std::str::from_utf8(&k[8..])
                .map_err(|_| DomainError::Corrupt("cosignature witness name".into()))?;
            if v.len() != 72 {
                return Err(DomainError::Corrupt(format!(
                    "cosignature of {witness} at size {size} is not 72 bytes"
                )));
            }
            let (time, sig) = v.split_at(8);
            out.push(Cosignature {
                witness: witness.to_owned(),
                time: i64::from_be_bytes(time.try_into().unwrap_or_default()),
                signature: sig.try_into().unwrap_or([0; 64]),
            });
        }
        Ok(out)
    }

    /// The newest checkpoint with at least `min` cosignatures.
    pub fn witnessed(
        &self,
        min: usize,
    ) -> Result<Option<(SignedCheckpoint, Vec<Cosignature>)>, DomainError> {
        for kv in self.checkpoints.iter().rev() {
            let (_, v) = kv?;
            let cp = decode_checkpoint(&v)?;
            let cosigs = self.cosignatures(cp.checkpoint.size)?;
            if cosigs.len() >= min {
                return Ok(Some((cp, cosigs)));
            }
        }
        Ok(None)
    }

    /// Signs and stores a checkpoint of `size` leaves with `root`, unless
    /// the newest one already has that size. The caller has flushed every
    /// entry up to `size`.
    pub fn publish(
        &self,
        key: &SigningKey,
        origin: &str,
        size: u64,
        root: Hash,
        now: i64,
    ) -> Result<Option<SignedCheckpoint>, DomainError> {
        match next_checkpoint(self.latest()?.as_ref(), origin, size, root, now) {
            None => Ok(None),
            Some(cp) => self.store(key.sign_checkpoint(cp)),
        }
    }

    fn store(&self, signed: SignedCheckpoint) -> Result<Option<SignedCheckpoint>, DomainError> {
        self.checkpoints.insert(
            signed.checkpoint.size.to_be_bytes(),
            encode_checkpoint(&signed),
        )?;
        self.prune()?;
        self.checkpoints.flush()?;
        Ok(Some(signed))
    }

    /// Stores `witness`'s cosignature of the published checkpoint `body`.
    /// One per witness and checkpoint: a second one is ignored, so a
    /// witness cannot rewrite what it vouched for.
    pub fn add_cosignature(
        &self,
        witness: &str,
        body: &str,
        cosignature: &Cosignature,
    ) -> Result<(), DomainError> {
        let cp = checked_cosignature(witness, body, cosignature)?;
        matches_published(self.at(cp.size)?, &cp)?;
        let mut key = cosig_prefix(cp.size).to_vec();
        key.extend_from_slice(witness.as_bytes());
        let mut v = Vec::with_capacity(72);
        v.extend_from_slice(&cosignature.time.to_be_bytes());
        v.extend_from_slice(&cosignature.signature);
        // Compare-and-swap from "absent": the first cosignature stays.
        // Only a new cosignature costs a flush.
        let inserted = self
            .cosignatures
            .compare_and_swap(key, None as Option<&[u8]>, Some(v))?
            .is_ok();
        if inserted {
            self.cosignatures.flush()?;
        }
        Ok(())
    }

    /// Keeps the newest [`KEPT_CHECKPOINTS`], and for every k the newest
    /// checkpoint with at least k cosignatures, so `witnessed(k)` answers
    /// the same before and after; drops the rest with their cosignatures.
    fn prune(&self) -> Result<(), DomainError> {
        let total = self.checkpoints.len();
        if total <= KEPT_CHECKPOINTS + 32 {
            return Ok(());
        }
        let mut sizes: Vec<u64> = Vec::with_capacity(total);
        for kv in self.checkpoints.iter() {
            let (k, _) = kv?;
            sizes.push(decode_u64(&k, "checkpoint key")?);
        }
        let mut counts = Vec::with_capacity(sizes.len());
        for size in &sizes {
            counts.push(self.cosignatures.scan_prefix(cosig_prefix(*size)).count());
        }
        let keep = kept_checkpoints(&counts);
        for (i, size) in sizes.iter().enumerate() {
            if keep[i] {
                continue;
            }
            self.checkpoints.remove(size.to_be_bytes())?;
            for kv in self.cosignatures.scan_prefix(cosig_prefix(*size)) {
                let (k, _) = kv?;
                self.cosignatures.remove(k)?;
            }
        }
        Ok(())
    }
}

/// The checkpoint to sign over `size` leaves with `root`, or `None` when
/// `latest` already covers them. Its time never goes before the latest
/// one's, whatever the clock does.
pub(crate) fn next_checkpoint(
    latest: Option<&SignedCheckpoint>,
    origin: &str,
    size: u64,
    root: Hash,
    now: i64,
) -> Option<Checkpoint> {
    let time = match latest {
        Some(l) if l.checkpoint.size >= size => return None,
        Some(l) => now.max(l.checkpoint.time),
        None => now,
    };
    Some(Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
        time,
    })
}

/// Checks a cosignature's form and names; the checkpoint it is for.
pub(crate) fn checked_cosignature(
    witness: &str,
    body: &str,
    cosignature: &Cosignature,
) -> Result<Checkpoint, DomainError> {
    if witness.is_empty() || witness.len() > MAX_WITNESS_NAME {
        return Err(DomainError::Malformed("witness name".into()));
    }
    if cosignature.witness != witness {
        return Err(DomainError::NotEntitled(format!(
            "a cosignature by {witness} must name {witness}, not {:?}",
            cosignature.witness
        )));
    }
    Checkpoint::parse(body).map_err(|e| DomainError::Malformed(format!("checkpoint: {e}")))
}

/// Whether `cp` is the checkpoint `stored` at its size.
pub(crate) fn matches_published(
    stored: Option<SignedCheckpoint>,
    cp: &Checkpoint,
) -> Result<(), DomainError> {
    let stored = stored.ok_or_else(|| {
        DomainError::Unknown(format!("no checkpoint of size {} is published", cp.size))
    })?;
    if stored.checkpoint != *cp {
        return Err(DomainError::Conflict(format!(
            "the checkpoint of size {} is not the one published",
            cp.size
        )));
    }
    Ok(())
}

/// Which checkpoints pruning keeps, given each one's cosignature count,
/// oldest first: the newest [`KEPT_CHECKPOINTS`], and for every k the
/// newest with at least k cosignatures.
pub(crate) fn kept_checkpoints(cosignatures: &[usize]) -> Vec<bool> {
    let keep_from = cosignatures.len().saturating_sub(KEPT_CHECKPOINTS);
    let mut keep: Vec<bool> = (0..cosignatures.len()).map(|i| i >= keep_from).collect();
    // Newest first: a checkpoint with more cosignatures than every newer
    // one is the newest with that many.
    let mut most = 0usize;
    for (i, n) in cosignatures.iter().enumerate().rev() {
        if *n > most {
            keep[i] = true;
            most = *n;
        }
    }
    keep
}
