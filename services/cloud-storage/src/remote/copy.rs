//! Moving a sled store into the remote store (`sesphrd migrate`).
//!
//! Records are replayed in record id order through the remote store's own
//! upload path, their content streamed chunk by chunk, their `created_at`
//! kept: the first record of a blob uploads the blob, the others link to
//! it, so reference counts come out as the records that were copied. A
//! destination that already holds records is refused, unless they are
//! what an earlier, interrupted copy left (the `copies` row says so): then
//! the copy resumes, skipping the records already there.

use sesphr_domain::pg::pg_error;
use zeroize::Zeroizing;

use super::upload::RemoteUpload;
use super::{RemoteStore, sweep};
use crate::blobs::BlobKey;
use crate::{
    BlobInfo, DomainError, NewRecord, RecordBackend, RecordMeta, RecordStore, StagedUpload, codec,
};

/// What [`copy_from_sled`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Records written by this run.
    pub records: usize,
    /// Records an earlier, interrupted run had written already.
    pub skipped: usize,
    /// Blobs whose bytes this run stored.
    pub blobs: usize,
    /// Ciphertext bytes this run stored.
    pub bytes: u64,
    pub secrets: usize,
    /// Blobs whose reference count in the source did not match the records
    /// that use them; the destination counts the records (and logs each).
    pub refcount_mismatches: usize,
}

/// The sled tree `sesphr_domain::secret` keeps secrets in.
const SECRETS_TREE: &str = "secrets";

/// Copies every committed record (metadata, `created_at`, content), blob,
/// reference count and secret of `src` into `dst`. Refuses a destination
/// that holds records not written by an interrupted copy; safe to run
/// again after a failure. Run it with the service stopped: uploads pending
/// in `dst` are swept when a copy resumes.
pub fn copy_from_sled(src: &RecordStore, dst: &RemoteStore) -> Result<CopyReport, DomainError> {
    let resuming = dst.inner.block_on(claim(dst))?;
    if resuming {
        tracing::info!("resuming an interrupted copy");
        dst.inner.block_on(sweep::sweep(&dst.inner, i64::MAX))?;
    }
    let mut report = CopyReport {
        secrets: copy_secrets(src, dst)?,
        ..CopyReport::default()
    };
    let s = &src.shared;
    for kv in s.meta.iter() {
        let (k, v) = kv?;
        let stored = codec::decode(&k, &v)?;
        let blob = match &stored.blob_key {
            Some(key) => {
                let info = s
                    .blob_meta
                    .get(key)?
                    .map(|v| BlobInfo::decode(&v))
                    .transpose()?
                    .ok_or_else(|| {
                        DomainError::Corrupt(format!(
                            "record {}: its blob is not in the source",
                            stored.meta.record_id
                        ))
                    })?;
                Some((scope_of_key(key)?, info))
            }
            None => None,
        };
        copy_record(src, dst, stored.meta, blob, &mut report)?;
    }
    for kv in s.blob_meta.iter() {
        let (k, v) = kv?;
        let info = BlobInfo::decode(&v)?;
        let scope = scope_of_key(&k)?;
        let copied = dst
            .inner
            .block_on(blob_row(dst, &scope, &info.blob_id))?
            .map(|b| b.refcount);
        if copied != Some(info.refcount) {
            report.refcount_mismatches += 1;
            tracing::warn!(
                blob = %hex::encode(info.blob_id),
                source = info.refcount,
                destination = copied.unwrap_or(0),
                "a blob's reference count differs from the records that use it"
            );
        }
    }
    dst.inner.block_on(async {
        let conn = dst.inner.pg.client().await?;
        conn.execute(
            "UPDATE cloud_storage.copies SET finished_at = $1 WHERE id = 1",
            &[&super::unix_now()],
        )
        .await
        .map_err(pg_error)
    })?;
    tracing::info!(?report, "sled store copied");
    Ok(report)
}

/// Marks the destination as the target of a copy; true if an interrupted
/// copy is resumed.
async fn claim(dst: &RemoteStore) -> Result<bool, DomainError> {
    let mut conn = dst.inner.pg.client().await?;
    let tx = conn.transaction().await.map_err(pg_error)?;
    tx.execute("LOCK TABLE cloud_storage.copies IN EXCLUSIVE MODE", &[])
        .await
        .map_err(pg_error)?;
    let copy = tx
        .query_opt(
            "SELECT finished_at FROM cloud_storage.copies WHERE id = 1",
            &[],
        )
        .await
        .map_err(pg_error)?
        .map(|r| r.get::<_, Option<i64>>(0));
    let holds_records = tx
        .query_opt("SELECT 1 FROM cloud_storage.records LIMIT 1", &[])
        .await
        .map_err(pg_error)?
        .is_some();
    let resuming = match copy {
        Some(Some(_)) => {
            return Err(DomainError::Exists(
                "a copy into this destination finished already; it is not copied again".into(),
            ));
        }
        Some(None) => true,
        None if holds_records => {
            return Err(DomainError::Exists(
                "the destination already holds records; copy only into an empty store".into(),
            ));
        }
        None => {
            tx.execute(
                "INSERT INTO cloud_storage.copies (id, started_at) VALUES (1, $1)",
                &[&super::unix_now()],
            )
            .await
            .map_err(pg_error)?;
            false
        }
    };
    tx.commit().await.map_err(pg_error)?;
    Ok(resuming)
}

/// The sled secrets, written over whatever the destination drew (it holds
/// no records yet, so nothing was derived from those that must survive).
fn copy_secrets(src: &RecordStore, dst: &RemoteStore) -> Result<usize, DomainError> {
    let db = &src.shared.db;
    // Opening a tree creates it: look first, so reading changes nothing.
    if !db
        .tree_names()
        .iter()
        .any(|n| n.as_ref() == SECRETS_TREE.as_bytes())
    {
        return Ok(0);
    }
    let mut secrets = Vec::new();
    for kv in db.open_tree(SECRETS_TREE)?.iter() {
        let (k, v) = kv?;
        let name = String::from_utf8(k.to_vec())
            .map_err(|_| DomainError::Corrupt("a secret's name is not UTF-8".into()))?;
        let value = Zeroizing::new(v.to_vec());
        if value.len() != sesphr_domain::secret::SECRET_LEN {
            return Err(DomainError::Corrupt(format!(
                "secret {name} is not 32 bytes"
            )));
        }
        secrets.push((name, value));
    }
    dst.inner.block_on(async {
        let conn = dst.inner.pg.client().await?;
        for (name, value) in &secrets {
            conn.execute(
                "INSERT INTO cloud_storage.secrets (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[name, &&value[..]],
            )
            .await
            .map_err(pg_error)?;
        }
        Ok(secrets.len())
    })
}

/// The `scope` column for a sled blob key (`""` for global).
fn scope_of_key(key: &[u8]) -> Result<String, DomainError> {
    // Validated first; then the blob id is the last 32 bytes and an owner,
    // if any, what precedes the 0x00 before it.
    BlobKey::from_tree_key(key)?;
    Ok(match key.len() {
        32 => String::new(),
        n => String::from_utf8_lossy(&key[..n - 33]).into_owned(),
    })
}

async fn blob_row(
    dst: &RemoteStore,
    scope: &str,
    blob_id: &[u8; 32],
) -> Result<Option<BlobInfo>, DomainError> {
    let conn = dst.inner.pg.client().await?;
    let row = conn
        .query_opt(
            "SELECT size, root, leaf_count, refcount FROM cloud_storage.blobs \
             WHERE scope = $1 AND blob_id = $2",
            &[&scope, &&blob_id[..]],
        )
        .await
        .map_err(pg_error)?;
    row.map(|r| {
        let root: Vec<u8> = r.get(1);
        Ok(BlobInfo {
            blob_id: *blob_id,
            size: super::size_from_db(r.get(0))?,
            root: <[u8; 32]>::try_from(root.as_slice())
                .map_err(|_| DomainError::Corrupt("a blob's Merkle root is not 32 bytes".into()))?,
            leaf_count: super::size_from_db(r.get(2))?,
            refcount: super::size_from_db(r.get(3))?,
        })
    })
    .transpose()
}

fn copy_record(
    src: &RecordStore,
    dst: &RemoteStore,
    meta: RecordMeta,
    blob: Option<(String, BlobInfo)>,
    report: &mut CopyReport,
) -> Result<(), DomainError> {
    let id = meta.record_id.clone();
    if let Some(there) = dst.get(&id)? {
        if there != meta {
            return Err(DomainError::Conflict(format!(
                "record {id} in the destination differs from the source"
            )));
        }
        report.skipped += 1;
        return Ok(());
    }
    let new = NewRecord {
        record_id: id.clone(),
        owner_id: meta.owner_id.clone(),
        partition: meta.partition.clone(),
        epoch: meta.epoch,
        header: meta.header.clone(),
        declared_size: meta.size,
    };
    let blob = match (blob, &meta.blob) {
        (Some((scope, info)), Some(r)) => Some((scope, info, r.clone())),
        (None, None) => None,
        _ => {
            return Err(DomainError::Corrupt(format!(
                "record {id}: half a blob link in the source"
            )));
        }
    };
    let copied = match blob {
        Some((scope, info, r)) => {
            if dst
                .inner
                .block_on(blob_row(dst, &scope, &r.blob_id))?
                .is_some()
            {
                dst.link_blob_in(new, r, scope, meta.created_at)?
            } else {
                let up = RemoteUpload::begin(&dst.inner, new, Some((r.clone(), scope.clone())))?;
                let copied = stream(src, dst, &id, up, meta.created_at)?;
                let stored = dst.inner.block_on(blob_row(dst, &scope, &r.blob_id))?;
                if stored.is_none_or(|s| (s.root, s.leaf_count) != (info.root, info.leaf_count)) {
                    return Err(DomainError::Corrupt(format!(
                        "record {id}: the source blob's Merkle root does not match its bytes"
                    )));
                }
                report.blobs += 1;
                report.bytes += copied.size;
                copied
            }
        }
        None => {
            let up = RemoteUpload::begin(&dst.inner, new, None)?;
            let copied = stream(src, dst, &id, up, meta.created_at)?;
            report.bytes += copied.size;
            copied
        }
    };
    if copied != meta {
        return Err(DomainError::Conflict(format!(
            "record {id}: the copy's metadata differs from the source"
        )));
    }
    report.records += 1;
    Ok(())
}

/// Streams a source record's content into an upload and commits it with
/// the source's creation time.
fn stream(
    src: &RecordStore,
    dst: &RemoteStore,
    id: &str,
    up: RemoteUpload,
    created_at: i64,
) -> Result<RecordMeta, DomainError> {
    let mut up: Box<dyn StagedUpload> = Box::new(up);
    let max = dst.inner.limits.max_chunk_size;
    for chunk in src.chunks(id) {
        for piece in chunk?.chunks(max) {
            up.append(piece)?;
        }
    }
    up.commit(created_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DedupScope;
    use crate::remote::scope;

    #[test]
    fn scopes_of_sled_keys() {
        let id = [0u8; 32];
        let global = BlobKey::new(DedupScope::Global, "alice", &id);
        assert_eq!(scope_of_key(&global.tree_key()).unwrap(), "");
        let owned = BlobKey::new(DedupScope::PerOwner, "alice", &id);
        assert_eq!(scope_of_key(&owned.tree_key()).unwrap(), "alice");
        assert_eq!(scope(DedupScope::PerOwner, "alice"), "alice");
        assert!(scope_of_key(b"short").is_err());
    }
}
