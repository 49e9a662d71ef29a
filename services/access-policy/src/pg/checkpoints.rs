//! Signed checkpoints, cosignatures and proofs over the stored tree.
//!
//! Signing runs under its own advisory lock ([`log::CHECKPOINT_LOCK`]), not the
//! log's, so appends go on meanwhile: the size signed is the log's size
//! when the lock was taken, whose entries and nodes are committed (and so
//! durable) and never change. A replica that finds a checkpoint covering
//! that size already stored signs nothing: one size has one checkpoint,
//! whichever replica signed it.

use sesphr_tlog::merkle::{self, Hash};
use sesphr_tlog::{Checkpoint, Cosignature, SignedCheckpoint, SigningKey};
use tokio_postgres::{GenericClient, IsolationLevel};

use super::PgPolicyStore;
use super::log::{self, CHECKPOINT_LOCK};
use super::rows::{col, q, to_i64};
use crate::DomainError;
use crate::tlog::{
    KEPT_CHECKPOINTS, MAX_PROOFS_PER_REQUEST, checked_cosignature, kept_checkpoints,
    matches_published, next_checkpoint,
};

fn decode(size: i64, signature: &[u8], body: &str) -> Result<SignedCheckpoint, DomainError> {
    let bad = |why: String| DomainError::Corrupt(format!("stored checkpoint {size}: {why}"));
    let checkpoint = Checkpoint::parse(body).map_err(|e| bad(e.to_string()))?;
    if i64::try_from(checkpoint.size).ok() != Some(size) {
        return Err(bad(format!("its body says size {}", checkpoint.size)));
    }
    Ok(SignedCheckpoint {
        checkpoint,
        signature: signature
            .try_into()
            .map_err(|_| bad("signature is not 64 bytes".into()))?,
    })
}

fn from_row(row: &tokio_postgres::Row) -> Result<SignedCheckpoint, DomainError> {
    decode(col(row, 0)?, col(row, 1)?, col(row, 2)?)
}

async fn latest<C: GenericClient>(c: &C) -> Result<Option<SignedCheckpoint>, DomainError> {
    let row = q(c.query_opt(
        "SELECT size, signature, body FROM access_policy.checkpoints ORDER BY size DESC LIMIT 1",
        &[],
    ))
    .await?;
    row.as_ref().map(from_row).transpose()
}

async fn at<C: GenericClient>(c: &C, size: u64) -> Result<Option<SignedCheckpoint>, DomainError> {
    let Ok(key) = i64::try_from(size) else {
        return Ok(None);
    };
    let row = q(c.query_opt(
        "SELECT size, signature, body FROM access_policy.checkpoints WHERE size = $1",
        &[&key],
    ))
    .await?;
    row.as_ref().map(from_row).transpose()
}

async fn cosignatures<C: GenericClient>(c: &C, size: u64) -> Result<Vec<Cosignature>, DomainError> {
    let key = to_i64(size, "checkpoint size")?;
    let rows = q(c.query(
        "SELECT witness, time, signature FROM access_policy.cosignatures \
         WHERE size = $1 ORDER BY witness",
        &[&key],
    ))
    .await?;
    rows.iter()
        .map(|row| {
            let witness: String = col(row, 0)?;
            let signature: &[u8] = col(row, 2)?;
            Ok(Cosignature {
                signature: signature.try_into().map_err(|_| {
                    DomainError::Corrupt(format!(
                        "cosignature of {witness} at size {size} is not 64 bytes"
                    ))
                })?,
                time: col(row, 1)?,
                witness,
            })
        })
        .collect()
}

/// Stores a signed checkpoint (the caller holds [`CHECKPOINT_LOCK`]).
pub(super) async fn insert<C: GenericClient>(
    c: &C,
    cp: &SignedCheckpoint,
) -> Result<(), DomainError> {
    let size = to_i64(cp.checkpoint.size, "checkpoint size")?;
    q(c.execute(
        "INSERT INTO access_policy.checkpoints (size, signature, body) VALUES ($1, $2, $3)",
        &[&size, &cp.signature.as_slice(), &cp.checkpoint.body()],
    ))
    .await?;
    Ok(())
}

/// Stores a cosignature unless the witness has one for that size already
/// (the first one stays).
pub(super) async fn insert_cosignature<C: GenericClient>(
    c: &C,
    size: u64,
    cosignature: &Cosignature,
) -> Result<(), DomainError> {
    let size = to_i64(size, "checkpoint size")?;
    q(c.execute(
        "INSERT INTO access_policy.cosignatures (size, witness, time, signature) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (size, witness) DO NOTHING",
        &[
            &size,
            &cosignature.witness,
            &cosignature.time,
            &cosignature.signature.as_slice(),
        ],
    ))
    .await?;
    Ok(())
}

async fn begin(
    client: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, DomainError> {
    let tx = q(client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start())
    .await?;
    log::lock(&tx, CHECKPOINT_LOCK).await?;
    Ok(tx)
}

pub(super) fn publish(
    s: &PgPolicyStore,
    key: &SigningKey,
    origin: &str,
    now: i64,
) -> Result<Option<SignedCheckpoint>, DomainError> {
    if let Some(problem) = &s.broken {
        return Err(DomainError::Corrupt(format!(
            "audit log is damaged, not signing it: {problem}"
        )));
    }
    s.pg.block_on(async {
        let mut conn = s.pg.client().await?;
        let tx = begin(&mut conn).await?;
        let size = log::tree_size(&tx).await?;
        if size == 0 {
            return Ok(None);
        }
        let Some(cp) = next_checkpoint(latest(&tx).await?.as_ref(), origin, size, [0; 32], now)
        else {
            return Ok(None);
        };
        let root = log::over_tree(&tx, |t| merkle::root(size, &t)).await?;
        let signed = key.sign_checkpoint(Checkpoint { root, ..cp });
        insert(&tx, &signed).await?;
        prune(&tx).await?;
        q(tx.commit()).await?;
        Ok(Some(signed))
    })
}

/// Keeps what the sled store keeps (see [`kept_checkpoints`]); the
/// cosignatures of a dropped checkpoint go with it.
async fn prune<C: GenericClient>(c: &C) -> Result<(), DomainError> {
    let row = q(c.query_one("SELECT count(*) FROM access_policy.checkpoints", &[])).await?;
    let total: i64 = col(&row, 0)?;
    if usize::try_from(total).unwrap_or(usize::MAX) <= KEPT_CHECKPOINTS + 32 {
        return Ok(());
    }
    let rows = q(c.query(
        "SELECT c.size, count(s.witness) FROM access_policy.checkpoints c \
         LEFT JOIN access_policy.cosignatures s ON s.size = c.size \
         GROUP BY c.size ORDER BY c.size",
        &[],
    ))
    .await?;
    let mut sizes = Vec::with_capacity(rows.len());
    let mut counts = Vec::with_capacity(rows.len());
    for row in &rows {
        sizes.push(col::<i64>(row, 0)?);
        counts.push(usize::try_from(col::<i64>(row, 1)?).unwrap_or(usize::MAX));
    }
    let dropped: Vec<i64> = sizes
        .into_iter()
        .zip(kept_checkpoints(&counts))
        .filter(|(_, keep)| !keep)
        .map(|(size, _)| size)
        .collect();
    q(c.execute(
        "DELETE FROM access_policy.checkpoints WHERE size = ANY($1)",
        &[&dropped],
    ))
    .await?;
    Ok(())
}

pub(super) fn witnessed(
    s: &PgPolicyStore,
    min: usize,
) -> Result<Option<(SignedCheckpoint, Vec<Cosignature>)>, DomainError> {
    let min = i64::try_from(min).unwrap_or(i64::MAX);
    s.pg.block_on(async {
        let mut conn = s.pg.client().await?;
        let client: &mut tokio_postgres::Client = &mut conn;
        // One snapshot: the cosignatures are those the count saw.
        let tx = q(client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start())
        .await?;
        let row = q(tx.query_opt(
            "SELECT c.size, c.signature, c.body FROM access_policy.checkpoints c \
             WHERE (SELECT count(*) FROM access_policy.cosignatures s WHERE s.size = c.size) >= $1 \
             ORDER BY c.size DESC LIMIT 1",
            &[&min],
        ))
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let cp = from_row(&row)?;
        let cosigs = cosignatures(&tx, cp.checkpoint.size).await?;
        q(tx.commit()).await?;
        Ok(Some((cp, cosigs)))
    })
}

async fn published<C: GenericClient>(c: &C, size: u64) -> Result<SignedCheckpoint, DomainError> {
    at(c, size).await?.ok_or_else(|| {
        DomainError::Unknown(format!(
            "no checkpoint of size {size} is published (ask GetCheckpoint for a current one)"
        ))
    })
}

pub(super) fn inclusion_proofs(
    s: &PgPolicyStore,
    tree_size: u64,
    leaves: &[u64],
) -> Result<Vec<Vec<Hash>>, DomainError> {
    if leaves.len() > MAX_PROOFS_PER_REQUEST {
        return Err(DomainError::Malformed(format!(
            "at most {MAX_PROOFS_PER_REQUEST} leaf indexes per request, not {}",
            leaves.len()
        )));
    }
    s.pg.block_on(async {
        let conn = s.pg.client().await?;
        published(&**conn, tree_size).await?;
        log::over_tree(&**conn, |t| {
            merkle::inclusion_proofs(leaves, tree_size, &t)?
                .into_iter()
                .map(|p| p.map_err(|e| DomainError::Malformed(e.to_string())))
                .collect()
        })
        .await
    })
}

pub(super) fn consistency_proof(
    s: &PgPolicyStore,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, DomainError> {
    s.pg.block_on(async {
        let conn = s.pg.client().await?;
        published(&**conn, second).await?;
        log::over_tree(&**conn, |t| {
            merkle::consistency_proof(first, second, &t)?
                .map_err(|e| DomainError::Malformed(e.to_string()))
        })
        .await
    })
}

pub(super) fn add_cosignature(
    s: &PgPolicyStore,
    witness: &str,
    body: &str,
    cosignature: &Cosignature,
) -> Result<(), DomainError> {
    let cp = checked_cosignature(witness, body, cosignature)?;
    s.pg.block_on(async {
        let mut conn = s.pg.client().await?;
        // Under the signing lock, so pruning cannot drop the checkpoint
        // between the comparison and the insert.
        let tx = begin(&mut conn).await?;
        matches_published(at(&tx, cp.size).await?, &cp)?;
        insert_cosignature(&tx, cp.size, cosignature).await?;
        q(tx.commit()).await?;
        Ok(())
    })
}

/// Every stored checkpoint with its cosignatures, oldest first (for tests
/// and copies).
#[cfg(test)]
pub(super) fn all(
    s: &PgPolicyStore,
) -> Result<Vec<(SignedCheckpoint, Vec<Cosignature>)>, DomainError> {
    s.pg.block_on(async {
        let conn = s.pg.client().await?;
        let rows = q(conn.query(
            "SELECT size, signature, body FROM access_policy.checkpoints ORDER BY size",
            &[],
        ))
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let cp = from_row(row)?;
            let cosigs = cosignatures(&**conn, cp.checkpoint.size).await?;
            out.push((cp, cosigs));
        }
        Ok(out)
    })
}
