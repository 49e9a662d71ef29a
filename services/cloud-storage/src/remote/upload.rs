//! An upload into the remote store: bytes go to one S3 multipart upload in
//! parts of at least 5 MiB (at most one part is held in memory), the record
//! id stays reserved by its `pending` row, and the commit makes the record
//! visible in one transaction once the object is complete.

use std::sync::Arc;

use object_store::MultipartId;
use object_store::PutPayload;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use sesphr_domain::pg::{is_unique_violation, pg_error};
use sha2::{Digest, Sha256};

use super::objects::{blob_key, is_not_found, record_key, s3_error, upload_id};
use super::{Inner, check_new, insert_record, unix_now};
use crate::{BlobRef, DomainError, NewRecord, RecordMeta, StagedUpload, check_wrapped_key};

/// S3's smallest part (but the last).
const MIN_PART: u64 = 5 << 20;
/// S3's most parts per upload.
const MAX_PARTS: u64 = 10_000;

/// The part size for a record of `declared` bytes: 5 MiB, or more (whole
/// MiB) when 10 000 such parts would not hold it.
fn part_size(declared: u64) -> usize {
    let needed = declared.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    needed.max(MIN_PART) as usize
}

/// What a blob upload computes while the bytes stream through.
struct BlobUpload {
    r: BlobRef,
    /// The `scope` column the blob is filed under.
    scope: String,
    sha: Sha256,
    merkle: sesphr_dedup::pow::MerkleBuilder,
}

pub(crate) struct RemoteUpload {
    inner: Arc<Inner>,
    rec: NewRecord,
    blob: Option<BlobUpload>,
    upload_id: String,
    key: String,
    path: Path,
    multipart: Option<MultipartId>,
    part_size: usize,
    buf: Vec<u8>,
    parts: Vec<PartId>,
    received: u64,
    /// Committed, or its leftovers already handed to a discard.
    finished: bool,
}

impl RemoteUpload {
    /// Reserves the record id (a `pending` row, checked against `records`
    /// in the same transaction) and starts the multipart upload.
    pub(crate) fn begin(
        inner: &Arc<Inner>,
        rec: NewRecord,
        blob: Option<(BlobRef, String)>,
    ) -> Result<Self, DomainError> {
        check_new(&inner.limits, &rec)?;
        if let Some((b, _)) = &blob {
            check_wrapped_key(&rec.record_id, b)?;
        }
        inner.wait_for_discard(&rec.record_id);
        let upload_id = upload_id();
        let key = match &blob {
            Some((b, scope)) => blob_key(scope, &b.blob_id, &upload_id),
            None => record_key(&rec.record_id, &upload_id),
        };
        let id = rec.record_id.as_str();
        inner.block_on(async {
            let mut conn = inner.pg.client().await?;
            let tx = conn.transaction().await.map_err(pg_error)?;
            let reserved = tx
                .execute(
                    "INSERT INTO cloud_storage.pending (record_id, upload_id, object_key, touched_at) \
                     VALUES ($1, $2, $3, $4)",
                    &[&id, &upload_id, &key, &unix_now()],
                )
                .await;
            match reserved {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(DomainError::Exists(format!(
                        "record {id} is being uploaded right now"
                    )));
                }
                Err(e) => return Err(pg_error(e)),
            }
            // Read after the reservation: an upload of this id that
            // committed while our insert waited for its row is seen here.
            let taken = tx
                .query_opt(
                    "SELECT 1 FROM cloud_storage.records WHERE record_id = $1",
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
            if taken.is_some() {
                return Err(DomainError::Exists(format!("record {id} already exists")));
            }
            tx.commit().await.map_err(pg_error)
        })?;
        let path = inner.objects.path(&key);
        let mut up = RemoteUpload {
            inner: inner.clone(),
            part_size: part_size(rec.declared_size),
            rec,
            blob: blob.map(|(r, scope)| BlobUpload {
                r,
                scope,
                sha: Sha256::new(),
                merkle: sesphr_dedup::pow::MerkleBuilder::new(),
            }),
            upload_id,
            key,
            path,
            multipart: None,
            buf: Vec::new(),
            parts: Vec::new(),
            received: 0,
            finished: false,
        };
        // From here on, dropping `up` undoes the reservation.
        let s3 = inner.objects.s3.clone();
        let multipart = inner.block_on(s3.create_multipart(&up.path)).map_err(|e| {
            s3_error(
                &format!("record {}: starting the upload", up.rec.record_id),
                e,
            )
        })?;
        up.multipart = Some(multipart.clone());
        let recorded = inner.block_on(async {
            let conn = inner.pg.client().await?;
            conn.execute(
                "UPDATE cloud_storage.pending SET multipart_id = $3 \
                 WHERE record_id = $1 AND upload_id = $2",
                &[&up.rec.record_id, &up.upload_id, &multipart],
            )
            .await
            .map_err(pg_error)
        })?;
        if recorded != 1 {
            return Err(up.swept());
        }
        Ok(up)
    }

    fn swept(&self) -> DomainError {
        DomainError::Conflict(format!(
            "record {}: the upload was idle too long and was swept; upload again",
            self.rec.record_id
        ))
    }

    /// Sends the buffered part and marks the upload as alive.
    fn flush_part(&mut self) -> Result<(), DomainError> {
        let id = self.rec.record_id.clone();
        let multipart = self
            .multipart
            .clone()
            .ok_or_else(|| DomainError::Conflict(format!("record {id}: upload closed")))?;
        let data = std::mem::take(&mut self.buf);
        let index = self.parts.len();
        let s3 = self.inner.objects.s3.clone();
        let part = self
            .inner
            .block_on(s3.put_part(&self.path, &multipart, index, PutPayload::from(data)))
            .map_err(|e| s3_error(&format!("record {id}: storing part {index}"), e))?;
        self.parts.push(part);
        let touched = self.inner.block_on(async {
            let conn = self.inner.pg.client().await?;
            conn.execute(
                "UPDATE cloud_storage.pending SET touched_at = $3 \
                 WHERE record_id = $1 AND upload_id = $2",
                &[&id, &self.upload_id, &unix_now()],
            )
            .await
            .map_err(pg_error)
        })?;
        if touched != 1 {
            return Err(self.swept());
        }
        Ok(())
    }

    fn append_chunk(&mut self, chunk: &[u8]) -> Result<(), DomainError> {
        let limits = self.inner.limits;
        let id = &self.rec.record_id;
        if self.finished {
            return Err(DomainError::Conflict(format!("record {id}: upload closed")));
        }
        if chunk.is_empty() {
            return Err(DomainError::Malformed(format!("record {id}: empty chunk")));
        }
        if chunk.len() > limits.max_chunk_size {
            return Err(DomainError::Malformed(format!(
                "record {id}: chunk of {} bytes exceeds the limit of {} bytes",
                chunk.len(),
                limits.max_chunk_size
            )));
        }
        let total = self.received.saturating_add(chunk.len() as u64);
        if total > self.rec.declared_size {
            return Err(DomainError::Malformed(format!(
                "record {id}: {total} bytes received, more than the declared {}",
                self.rec.declared_size
            )));
        }
        if let Some(b) = &mut self.blob {
            b.sha.update(chunk);
            b.merkle.update(chunk);
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.buf.capacity() == 0 {
                // Never more than the record still needs.
                let left = self.rec.declared_size - self.received;
                self.buf
                    .reserve_exact((self.part_size as u64).min(left) as usize);
            }
            let take = (self.part_size - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            self.received += take as u64;
            rest = &rest[take..];
            if self.buf.len() == self.part_size {
                self.flush_part()?;
            }
        }
        Ok(())
    }

    fn commit_upload(&mut self, now: i64) -> Result<RecordMeta, DomainError> {
        let id = self.rec.record_id.clone();
        if self.finished {
            return Err(DomainError::Conflict(format!("record {id}: upload closed")));
        }
        if self.received != self.rec.declared_size {
            return Err(DomainError::Conflict(format!(
                "record {id}: received {} bytes but {} were declared",
                self.received, self.rec.declared_size
            )));
        }
        let (blob, tree) = match self.blob.take() {
            Some(b) => {
                let digest: [u8; 32] = b.sha.finalize().into();
                if digest != b.r.blob_id {
                    return Err(DomainError::Malformed(format!(
                        "record {id}: the uploaded blob does not hash to the blob id it was announced with"
                    )));
                }
                (Some((b.r, b.scope)), Some(b.merkle.finish()))
            }
            None => (None, None),
        };
        if !self.buf.is_empty() {
            self.flush_part()?;
        }
        let multipart = self
            .multipart
            .clone()
            .ok_or_else(|| DomainError::Conflict(format!("record {id}: upload closed")))?;
        let s3 = self.inner.objects.s3.clone();
        let parts = std::mem::take(&mut self.parts);
        self.inner
            .block_on(s3.complete_multipart(&self.path, &multipart, parts))
            .map_err(|e| s3_error(&format!("record {id}: completing the upload"), e))?;
        let meta = RecordMeta {
            record_id: id.clone(),
            owner_id: self.rec.owner_id.clone(),
            partition: self.rec.partition.clone(),
            epoch: self.rec.epoch,
            created_at: now,
            size: self.received,
            header: std::mem::take(&mut self.rec.header),
            blob: blob.as_ref().map(|(r, _)| r.clone()),
        };
        let redundant = self.inner.block_on(async {
            let mut conn = self.inner.pg.client().await?;
            let tx = conn.transaction().await.map_err(pg_error)?;
            // Ours only while nothing swept it: the row is the reservation.
            let ours = tx
                .execute(
                    "DELETE FROM cloud_storage.pending WHERE record_id = $1 AND upload_id = $2",
                    &[&id, &self.upload_id],
                )
                .await
                .map_err(pg_error)?;
            if ours != 1 {
                return Err(self.swept());
            }
            let mut redundant = false;
            match (&blob, &tree) {
                (Some((r, scope)), Some(tree)) => {
                    let size = i64::try_from(self.received).unwrap_or(i64::MAX);
                    let leaves = i64::try_from(tree.leaf_count()).unwrap_or(i64::MAX);
                    let stored = tx
                        .query_one(
                            "INSERT INTO cloud_storage.blobs \
                             (scope, blob_id, size, root, leaf_count, refcount, object_key) \
                             VALUES ($1, $2, $3, $4, $5, 1, $6) \
                             ON CONFLICT (scope, blob_id) \
                             DO UPDATE SET refcount = cloud_storage.blobs.refcount + 1 \
                             RETURNING object_key",
                            &[
                                scope,
                                &&r.blob_id[..],
                                &size,
                                &&tree.root()[..],
                                &leaves,
                                &self.key,
                            ],
                        )
                        .await
                        .map_err(pg_error)?;
                    let key: String = stored.get(0);
                    // An equal blob was stored first: ours is not needed
                    // (same hash, same bytes), and is removed once this
                    // commits.
                    if key != self.key {
                        redundant = true;
                        tx.execute(
                            "INSERT INTO cloud_storage.doomed_objects (object_key, since) \
                             VALUES ($1, $2) ON CONFLICT DO NOTHING",
                            &[&self.key, &unix_now()],
                        )
                        .await
                        .map_err(pg_error)?;
                    }
                    insert_record(&tx, &meta, None, Some(scope)).await?;
                }
                _ => insert_record(&tx, &meta, Some(&self.key), None).await?,
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(redundant)
        })?;
        // Committed: from here on dropping must not touch the object.
        self.finished = true;
        if redundant
            && let Err(e) = self
                .inner
                .block_on(super::sweep::remove_doomed(&self.inner, &self.key))
        {
            tracing::warn!(record_id = %id, error = %e, "a duplicate blob object is left for the sweep");
        }
        Ok(meta)
    }
}

impl StagedUpload for RemoteUpload {
    fn append(&mut self, chunk: &[u8]) -> Result<(), DomainError> {
        self.append_chunk(chunk)
    }

    fn commit(mut self: Box<Self>, now: i64) -> Result<RecordMeta, DomainError> {
        // On error, dropping `self` discards the upload.
        self.commit_upload(now)
    }
}

/// What a dropped upload leaves to remove.
struct Discard {
    inner: Arc<Inner>,
    record_id: String,
    upload_id: String,
    key: String,
    multipart: Option<MultipartId>,
}

impl Discard {
    /// Removes the upload's object (or multipart upload) and its row, if
    /// the row is still its own: a commit removes the row in the
    /// transaction that makes the record, so a found row means not
    /// committed, whatever the caller saw of the commit's outcome.
    async fn run(&self) -> Result<bool, DomainError> {
        let mut conn = self.inner.pg.client().await?;
        let tx = conn.transaction().await.map_err(pg_error)?;
        let row = tx
            .query_opt(
                "SELECT multipart_id FROM cloud_storage.pending \
                 WHERE record_id = $1 AND upload_id = $2 FOR UPDATE",
                &[&self.record_id, &self.upload_id],
            )
            .await
            .map_err(pg_error)?;
        let Some(row) = row else {
            return Ok(false);
        };
        let recorded: Option<String> = row.get(0);
        let multipart = recorded.or_else(|| self.multipart.clone());
        remove_upload_object(&self.inner, &self.key, multipart.as_ref()).await?;
        tx.execute(
            "DELETE FROM cloud_storage.pending WHERE record_id = $1 AND upload_id = $2",
            &[&self.record_id, &self.upload_id],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    fn report(&self, outcome: Result<bool, DomainError>) {
        match outcome {
            Ok(_) => tracing::debug!(record_id = %self.record_id, "discarded uncommitted upload"),
            // The row is still there, so the sweep retries.
            Err(e) => tracing::warn!(
                record_id = %self.record_id,
                error = %e,
                "could not discard uncommitted upload; the sweep will"
            ),
        }
    }
}

/// Aborts an upload's multipart upload and deletes its object, if either
/// exists. Without a multipart upload there is no object either (only a
/// completed one makes it), so an upload the object store never answered
/// frees its id without asking it again. An abort that fails is only logged
/// (the bucket's lifecycle rule for incomplete uploads is the backstop); a
/// delete that fails is an error, so the row that names the object stays.
pub(crate) async fn remove_upload_object(
    inner: &Inner,
    key: &str,
    multipart: Option<&MultipartId>,
) -> Result<(), DomainError> {
    let Some(m) = multipart else {
        return Ok(());
    };
    let path = inner.objects.path(key);
    if let Err(e) = inner.objects.s3.abort_multipart(&path, m).await
        && !is_not_found(&e)
    {
        tracing::warn!(error = %e, "could not abort a multipart upload");
    }
    super::sweep::delete_object(inner, key).await
}

impl Drop for RemoteUpload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let job = Discard {
            inner: self.inner.clone(),
            record_id: self.rec.record_id.clone(),
            upload_id: self.upload_id.clone(),
            key: self.key.clone(),
            multipart: self.multipart.take(),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            // A plain thread: block until the id is free again.
            let outcome = job.inner.block_on(job.run());
            job.report(outcome);
            return;
        }
        // On a runtime thread (an async task may be dropping us) blocking
        // is not allowed: discard in the background, and let a new upload
        // of the id in this process wait for it.
        let (done, rx) = tokio::sync::watch::channel(false);
        job.inner
            .discards()
            .insert(job.record_id.clone(), rx.clone());
        let runtime = job.inner.runtime.clone();
        runtime.spawn(async move {
            let outcome = job.run().await;
            job.report(outcome);
            let mut discards = job.inner.discards();
            if discards
                .get(&job.record_id)
                .is_some_and(|r| r.same_channel(&rx))
            {
                discards.remove(&job.record_id);
            }
            drop(discards);
            let _ = done.send(true);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_5_mib_until_10000_would_not_hold_the_record() {
        assert_eq!(part_size(0), 5 << 20);
        assert_eq!(part_size(12 << 20), 5 << 20);
        assert_eq!(part_size(MIN_PART * MAX_PARTS), 5 << 20);
        let big = 64u64 << 30;
        let p = part_size(big) as u64;
        assert!(p.is_multiple_of(1 << 20) && p * MAX_PARTS >= big && p < 8 << 20);
    }
}
