//! The scale-out record store: metadata in PostgreSQL (schema
//! `cloud_storage`, see `migrations/`), ciphertext in an S3 bucket, so that
//! several replicas of the service serve the same records.
//!
//! The rules of [`RecordBackend`] rest on the database:
//!
//! - a record id is reserved by a row of `pending` (its primary key) for
//!   the whole upload, and becomes a row of `records` in the transaction
//!   that removes the reservation, after the object is complete: a record
//!   is visible only once its bytes are stored and its row committed;
//! - a blob's reference count changes only inside the transaction that
//!   adds or removes a record using it (row locks, `ON CONFLICT`), so
//!   replicas racing to store, link or free one blob agree;
//! - an object no row names any more is first written to `doomed_objects`
//!   in the transaction that orphaned it, then removed; a crash in between
//!   leaves work for [`RemoteStore::sweep_stale_uploads`], never a leak or a
//!   record without bytes.
//!
//! Every method is blocking, like sled's: call it from a blocking thread
//! (the service uses the blocking pool), never from an async task.

mod copy;
mod objects;
mod reader;
mod sweep;
mod upload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sesphr_domain::pg::{Pg, PgConfig, is_unique_violation, pg_error};
use sesphr_identity::{validate_partition, validate_user_id};
use tokio::sync::watch;
use tokio_postgres::Row;
use zeroize::Zeroizing;

use crate::{
    BlobInfo, BlobRef, ChunkIter, Cursor, DedupScope, DomainError, NewRecord, RecordBackend,
    RecordMeta, SCAN_PER_RESULT, StagedUpload, StoreLimits, Window, check_wrapped_key, page_limit,
    validate_record_id,
};

pub use copy::{CopyReport, copy_from_sled};
pub use objects::S3Config;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The table the migrations record themselves in (one per service, so the
/// services can share a database).
pub const MIGRATIONS_TABLE: &str = "sesphr_cloud_storage_migrations";

/// The columns [`meta_from_row`] reads, in its order.
const META_COLS: &str =
    "record_id, owner_id, partition, epoch, created_at, size, header, blob_id, wrapped_key";

/// How long a new upload waits for this process's discard of an earlier
/// upload of the same id (dropped on an async thread) to finish.
const DISCARD_WAIT: Duration = Duration::from_secs(10);

/// State shared by the store, its uploads and its readers.
pub(crate) struct Inner {
    pg: Pg,
    objects: objects::Objects,
    limits: StoreLimits,
    runtime: tokio::runtime::Handle,
    /// Discards of dropped uploads still running, by record id: a new
    /// upload of that id in this process waits for them instead of
    /// failing on a reservation that is about to go.
    discards: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl Inner {
    fn discards(&self) -> MutexGuard<'_, HashMap<String, watch::Receiver<bool>>> {
        // A poisoned lock only means another thread panicked; the map is
        // consistent between statements.
        self.discards.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.pg.block_on(f)
    }

    /// Waits (bounded) for a discard of `record_id` this process started.
    fn wait_for_discard(&self, record_id: &str) {
        let pending = self.discards().get(record_id).cloned();
        if let Some(mut rx) = pending {
            // The timer is made inside the runtime, which it needs.
            let waited = self.block_on(async move {
                tokio::time::timeout(DISCARD_WAIT, rx.wait_for(|done| *done))
                    .await
                    .map(drop)
            });
            if waited.is_err() {
                tracing::warn!(record_id, "a discarded upload is still being removed");
            }
        }
    }
}

/// Encrypted records in PostgreSQL and S3. `Send + Sync`: share one
/// behind an `Arc`.
pub struct RemoteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore").finish_non_exhaustive()
    }
}

impl RemoteStore {
    /// Connects (a pool on `runtime`), brings schema `cloud_storage` up to
    /// date (replicas opening at once migrate once) and builds the S3
    /// client (path-style requests to `s3.endpoint`). Blocking.
    pub fn open(
        pg: &PgConfig,
        s3: &S3Config,
        limits: StoreLimits,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, DomainError> {
        if limits.max_chunk_size == 0 {
            return Err(DomainError::Malformed(
                "max_chunk_size must be at least 1 byte".into(),
            ));
        }
        if i64::try_from(limits.max_record_size).is_err() {
            return Err(DomainError::Malformed(
                "max_record_size must fit in 63 bits".into(),
            ));
        }
        let objects = objects::Objects::new(s3)?;
        let pg = Pg::new(pg, runtime.clone())?;
        pg.block_on(pg.migrate(embedded::migrations::runner(), MIGRATIONS_TABLE))?;
        Ok(Self {
            inner: Arc::new(Inner {
                pg,
                objects,
                limits,
                runtime,
                discards: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Removes what uploads untouched for `older_than_secs` before `now`
    /// left behind (a replica that crashed mid-upload): their multipart
    /// uploads are aborted, their objects and rows deleted. Also removes
    /// objects orphaned by deletes that did not finish. Returns how many
    /// uploads and objects it removed. Safe to run on every replica at
    /// once: each row is taken by one of them.
    pub fn sweep_stale_uploads(
        &self,
        older_than_secs: i64,
        now: i64,
    ) -> Result<usize, DomainError> {
        let before = now.saturating_sub(older_than_secs.max(0));
        self.inner.block_on(sweep::sweep(&self.inner, before))
    }

    fn scope_of(&self, owner_id: &str) -> String {
        scope(self.inner.limits.dedup_scope, owner_id)
    }

    fn link_blob_in(
        &self,
        rec: NewRecord,
        blob: BlobRef,
        scope: String,
        now: i64,
    ) -> Result<RecordMeta, DomainError> {
        check_wrapped_key(&rec.record_id, &blob)?;
        check_new(&self.inner.limits, &rec)?;
        self.inner.wait_for_discard(&rec.record_id);
        let id = rec.record_id.as_str();
        self.inner.block_on(async {
            let mut conn = self.inner.pg.client().await?;
            let tx = conn.transaction().await.map_err(pg_error)?;
            let busy = tx
                .query_opt(
                    "SELECT 1 FROM cloud_storage.pending WHERE record_id = $1",
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
            if busy.is_some() {
                return Err(DomainError::Exists(format!(
                    "record {id} is being uploaded right now"
                )));
            }
            let linked = tx
                .query_opt(
                    "UPDATE cloud_storage.blobs SET refcount = refcount + 1 \
                     WHERE scope = $1 AND blob_id = $2 RETURNING size",
                    &[&scope, &&blob.blob_id[..]],
                )
                .await
                .map_err(pg_error)?;
            let Some(row) = linked else {
                return Err(DomainError::Unknown(format!(
                    "record {id}: the blob to link is no longer stored; upload it"
                )));
            };
            let size: i64 = row.get(0);
            let meta = RecordMeta {
                record_id: rec.record_id.clone(),
                owner_id: rec.owner_id.clone(),
                partition: rec.partition.clone(),
                epoch: rec.epoch,
                created_at: now,
                size: size_from_db(size)?,
                header: rec.header.clone(),
                blob: Some(blob.clone()),
            };
            insert_record(&tx, &meta, None, Some(&scope)).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(meta)
        })
    }

    async fn delete_rows(
        &self,
        owner_id: &str,
        record_id: &str,
    ) -> Result<(RecordMeta, String), DomainError> {
        let mut conn = self.inner.pg.client().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {META_COLS}, object_key, blob_scope FROM cloud_storage.records \
                     WHERE record_id = $1 FOR UPDATE"
                ),
                &[&record_id],
            )
            .await
            .map_err(pg_error)?
            .ok_or_else(|| DomainError::Unknown(format!("record {record_id} not found")))?;
        let meta = meta_from_row(&row)?;
        if meta.owner_id != owner_id {
            return Err(DomainError::NotEntitled(format!(
                "record {record_id} does not belong to {owner_id}"
            )));
        }
        tx.execute(
            "DELETE FROM cloud_storage.records WHERE record_id = $1",
            &[&record_id],
        )
        .await
        .map_err(pg_error)?;
        let own_object: Option<String> = row.get(9);
        let doomed = match (own_object, &meta.blob) {
            (Some(key), _) => Some(key),
            (None, Some(blob)) => {
                let scope: String = row.get(10);
                let left = tx
                    .query_opt(
                        "UPDATE cloud_storage.blobs SET refcount = refcount - 1 \
                         WHERE scope = $1 AND blob_id = $2 AND refcount > 1 RETURNING 1",
                        &[&scope, &&blob.blob_id[..]],
                    )
                    .await
                    .map_err(pg_error)?;
                if left.is_some() {
                    None
                } else {
                    // The last reference: the blob goes with it.
                    let freed = tx
                        .query_opt(
                            "DELETE FROM cloud_storage.blobs WHERE scope = $1 AND blob_id = $2 \
                             RETURNING object_key",
                            &[&scope, &&blob.blob_id[..]],
                        )
                        .await
                        .map_err(pg_error)?;
                    freed.map(|r| r.get(0))
                }
            }
            (None, None) => {
                return Err(DomainError::Corrupt(format!(
                    "record {record_id} names no content"
                )));
            }
        };
        let doomed = doomed.unwrap_or_default();
        if !doomed.is_empty() {
            tx.execute(
                "INSERT INTO cloud_storage.doomed_objects (object_key, since) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &[&doomed, &unix_now()],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok((meta, doomed))
    }
}

/// The `scope` column of a blob: `""` for the global scope, else the owner.
fn scope(dedup: DedupScope, owner_id: &str) -> String {
    match dedup {
        DedupScope::Global => String::new(),
        DedupScope::PerOwner => owner_id.to_owned(),
    }
}

/// Wall-clock seconds, for the age of uploads and orphaned objects.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The same checks the sled store makes before an upload or a link.
fn check_new(limits: &StoreLimits, rec: &NewRecord) -> Result<(), DomainError> {
    validate_record_id(&rec.record_id)?;
    validate_user_id(&rec.owner_id)?;
    validate_partition(&rec.partition)?;
    if rec.header.len() > limits.max_header_size {
        return Err(DomainError::Malformed(format!(
            "record {}: header is {} bytes, at most {} are accepted",
            rec.record_id,
            rec.header.len(),
            limits.max_header_size
        )));
    }
    if rec.declared_size > limits.max_record_size {
        return Err(DomainError::Malformed(format!(
            "record {}: declared size {} bytes exceeds the limit of {} bytes",
            rec.record_id, rec.declared_size, limits.max_record_size
        )));
    }
    Ok(())
}

fn size_from_db(size: i64) -> Result<u64, DomainError> {
    u64::try_from(size)
        .map_err(|_| DomainError::Corrupt(format!("a stored size {size} is negative")))
}

/// A row of [`META_COLS`] as the metadata the contract returns.
fn meta_from_row(row: &Row) -> Result<RecordMeta, DomainError> {
    let record_id: String = row.get(0);
    let epoch: i64 = row.get(3);
    let epoch = u32::try_from(epoch).map_err(|_| {
        DomainError::Corrupt(format!("record {record_id}: epoch {epoch} is out of range"))
    })?;
    let blob_id: Option<Vec<u8>> = row.get(7);
    let wrapped_key: Option<Vec<u8>> = row.get(8);
    let blob = match (blob_id, wrapped_key) {
        (Some(id), Some(wrapped_key)) => Some(BlobRef {
            blob_id: <[u8; 32]>::try_from(id.as_slice()).map_err(|_| {
                DomainError::Corrupt(format!("record {record_id}: blob id is not 32 bytes"))
            })?,
            wrapped_key,
        }),
        (None, None) => None,
        _ => {
            return Err(DomainError::Corrupt(format!(
                "record {record_id}: half a blob link"
            )));
        }
    };
    Ok(RecordMeta {
        owner_id: row.get(1),
        partition: row.get(2),
        epoch,
        created_at: row.get(4),
        size: size_from_db(row.get(5))?,
        header: row.get(6),
        blob,
        record_id,
    })
}

/// Inserts a committed record's row: its own object, or a blob of `scope`.
async fn insert_record(
    tx: &tokio_postgres::Transaction<'_>,
    meta: &RecordMeta,
    object_key: Option<&str>,
    scope: Option<&str>,
) -> Result<(), DomainError> {
    let size = i64::try_from(meta.size)
        .map_err(|_| DomainError::Malformed(format!("record {}: too large", meta.record_id)))?;
    let blob_id = meta.blob.as_ref().map(|b| b.blob_id.to_vec());
    let wrapped_key = meta.blob.as_ref().map(|b| b.wrapped_key.clone());
    let done = tx
        .execute(
            "INSERT INTO cloud_storage.records (record_id, owner_id, partition, epoch, \
             created_at, size, header, object_key, blob_scope, blob_id, wrapped_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &meta.record_id,
                &meta.owner_id,
                &meta.partition,
                &i64::from(meta.epoch),
                &meta.created_at,
                &size,
                &meta.header,
                &object_key,
                &scope,
                &blob_id,
                &wrapped_key,
            ],
        )
        .await;
    match done {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(DomainError::Exists(format!(
            "record {} already exists",
            meta.record_id
        ))),
        Err(e) => Err(pg_error(e)),
    }
}

impl RecordBackend for RemoteStore {
    fn limits(&self) -> StoreLimits {
        self.inner.limits
    }

    fn begin_upload(&self, rec: NewRecord) -> Result<Box<dyn StagedUpload>, DomainError> {
        Ok(Box::new(upload::RemoteUpload::begin(
            &self.inner,
            rec,
            None,
        )?))
    }

    fn begin_blob_upload(
        &self,
        rec: NewRecord,
        blob: BlobRef,
    ) -> Result<Box<dyn StagedUpload>, DomainError> {
        let scope = self.scope_of(&rec.owner_id);
        Ok(Box::new(upload::RemoteUpload::begin(
            &self.inner,
            rec,
            Some((blob, scope)),
        )?))
    }

    fn link_blob(
        &self,
        rec: NewRecord,
        blob: BlobRef,
        now: i64,
    ) -> Result<RecordMeta, DomainError> {
        let scope = self.scope_of(&rec.owner_id);
        self.link_blob_in(rec, blob, scope, now)
    }

    fn blob(&self, owner_id: &str, blob_id: &[u8; 32]) -> Result<Option<BlobInfo>, DomainError> {
        validate_user_id(owner_id)?;
        let scope = self.scope_of(owner_id);
        self.inner.block_on(async {
            let conn = self.inner.pg.client().await?;
            let row = conn
                .query_opt(
                    "SELECT size, root, leaf_count, refcount FROM cloud_storage.blobs \
                     WHERE scope = $1 AND blob_id = $2",
                    &[&scope, &&blob_id[..]],
                )
                .await
                .map_err(pg_error)?;
            row.map(|row| {
                let root: Vec<u8> = row.get(1);
                let count = |i: usize| size_from_db(row.get(i));
                Ok(BlobInfo {
                    blob_id: *blob_id,
                    size: count(0)?,
                    root: <[u8; 32]>::try_from(root.as_slice()).map_err(|_| {
                        DomainError::Corrupt("a blob's Merkle root is not 32 bytes".into())
                    })?,
                    leaf_count: count(2)?,
                    refcount: count(3)?,
                })
            })
            .transpose()
        })
    }

    fn get(&self, record_id: &str) -> Result<Option<RecordMeta>, DomainError> {
        validate_record_id(record_id)?;
        self.inner.block_on(async {
            let conn = self.inner.pg.client().await?;
            let row = conn
                .query_opt(
                    &format!("SELECT {META_COLS} FROM cloud_storage.records WHERE record_id = $1"),
                    &[&record_id],
                )
                .await
                .map_err(pg_error)?;
            row.as_ref().map(meta_from_row).transpose()
        })
    }

    fn chunks(&self, record_id: &str) -> ChunkIter {
        reader::chunks(&self.inner, record_id)
    }

    fn list(
        &self,
        owner_id: &str,
        partition: Option<&str>,
        after_record_id: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<RecordMeta>, Option<String>), DomainError> {
        validate_user_id(owner_id)?;
        if let Some(p) = partition {
            validate_partition(p)?;
        }
        if let Some(a) = after_record_id {
            validate_record_id(a)?;
        }
        let limit = page_limit(limit);
        // One row more than the page says whether another page follows.
        let fetch = limit as i64 + 1;
        let after = after_record_id.unwrap_or("");
        let rows = self.inner.block_on(async {
            let conn = self.inner.pg.client().await?;
            match partition {
                Some(p) => conn
                    .query(
                        &format!(
                            "SELECT {META_COLS} FROM cloud_storage.records \
                             WHERE owner_id = $1 AND partition = $2 AND record_id > $3 \
                             ORDER BY record_id LIMIT $4"
                        ),
                        &[&owner_id, &p, &after, &fetch],
                    )
                    .await
                    .map_err(pg_error),
                None => conn
                    .query(
                        &format!(
                            "SELECT {META_COLS} FROM cloud_storage.records \
                             WHERE owner_id = $1 AND record_id > $2 \
                             ORDER BY record_id LIMIT $3"
                        ),
                        &[&owner_id, &after, &fetch],
                    )
                    .await
                    .map_err(pg_error),
            }
        })?;
        let more = rows.len() > limit;
        let out = rows
            .iter()
            .take(limit)
            .map(meta_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let token = more
            .then(|| out.last().map(|m| m.record_id.clone()))
            .flatten();
        Ok((out, token))
    }

    fn partitions(
        &self,
        owner_id: &str,
        from: &str,
        max: usize,
    ) -> Result<Vec<String>, DomainError> {
        validate_user_id(owner_id)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.inner.block_on(async {
            let conn = self.inner.pg.client().await?;
            // A skip scan: one index seek per partition, however many
            // records each holds.
            let rows = conn
                .query(
                    "WITH RECURSIVE p(partition) AS ( \
                       (SELECT partition FROM cloud_storage.records \
                        WHERE owner_id = $1 AND partition >= $2::text \
                        ORDER BY partition LIMIT 1) \
                       UNION ALL \
                       SELECT (SELECT r.partition FROM cloud_storage.records r \
                               WHERE r.owner_id = $1 AND r.partition > p.partition \
                               ORDER BY r.partition LIMIT 1) \
                       FROM p WHERE p.partition IS NOT NULL) \
                     SELECT partition FROM p WHERE partition IS NOT NULL LIMIT $3",
                    &[&owner_id, &from, &max],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn list_visible(
        &self,
        owner_id: &str,
        windows: &[(String, Window)],
        from: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<RecordMeta>, Option<Cursor>), DomainError> {
        validate_user_id(owner_id)?;
        let limit = page_limit(limit);
        // The sled store's scan budget, so both backends page alike.
        let mut budget = limit.saturating_mul(SCAN_PER_RESULT).max(1000);
        let mut out = Vec::new();
        for (partition, window) in windows {
            validate_partition(partition)?;
            let start = match from {
                Some(c) if c.partition == *partition => c.record_id.as_str(),
                Some(c) if c.partition > *partition => continue,
                _ => "",
            };
            let rows = self.inner.block_on(async {
                let conn = self.inner.pg.client().await?;
                // The header (up to 64 KiB) only of records the window
                // covers: the others are only counted against the budget.
                conn.query(
                    "SELECT record_id, owner_id, partition, epoch, created_at, size, \
                       CASE WHEN v.covered THEN header END, blob_id, wrapped_key, v.covered \
                     FROM cloud_storage.records, \
                       LATERAL (SELECT epoch >= $4 AND ($5::bigint IS NULL OR epoch <= $5) \
                                AND created_at >= $6 AS covered) v \
                     WHERE owner_id = $1 AND partition = $2 AND record_id >= $3 \
                     ORDER BY record_id LIMIT $7",
                    &[
                        &owner_id,
                        partition,
                        &start,
                        &i64::from(window.epoch_min),
                        &window.epoch_max.map(i64::from),
                        &window.not_before,
                        &(budget as i64 + 1),
                    ],
                )
                .await
                .map_err(pg_error)
            })?;
            for row in &rows {
                let here = || Cursor {
                    partition: partition.clone(),
                    record_id: row.get(0),
                };
                if budget == 0 {
                    return Ok((out, Some(here())));
                }
                budget -= 1;
                if row.get::<_, bool>(9) {
                    if out.len() == limit {
                        return Ok((out, Some(here())));
                    }
                    out.push(meta_from_row(row)?);
                }
            }
        }
        Ok((out, None))
    }

    fn delete(&self, owner_id: &str, record_id: &str) -> Result<RecordMeta, DomainError> {
        validate_user_id(owner_id)?;
        validate_record_id(record_id)?;
        let (meta, doomed) = self.inner.block_on(self.delete_rows(owner_id, record_id))?;
        if !doomed.is_empty() {
            // The delete is committed; if the object outlives a failure
            // here, the doomed row makes the sweep remove it later.
            if let Err(e) = self
                .inner
                .block_on(sweep::remove_doomed(&self.inner, &doomed))
            {
                tracing::warn!(record_id, error = %e, "a deleted record's object is left for the sweep");
            }
        }
        Ok(meta)
    }

    fn secret(&self, name: &str) -> Result<Zeroizing<[u8; 32]>, DomainError> {
        self.inner
            .block_on(self.inner.pg.secret("cloud_storage.secrets", name))
    }
}
