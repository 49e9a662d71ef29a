//! What CloudStorage's domain logic needs from where records are kept.
//!
//! [`RecordStore`] (sled metadata plus object files) is one implementation;
//! a PostgreSQL + object-store backend would be another. The domain type
//! ([`crate::service::CloudStorage`]) holds an `Arc<dyn RecordBackend>` and
//! never names sled. Every method is blocking (it may fsync): callers run
//! them on the blocking pool. [`crate::conformance`] checks the contract
//! below against any implementation.

use crate::{
    BlobInfo, BlobRef, Cursor, DomainError, NewRecord, RecordMeta, RecordStore, StoreLimits,
    Upload, Window,
};

/// A record's content, read lazily chunk by chunk.
pub type ChunkIter = Box<dyn Iterator<Item = Result<Vec<u8>, DomainError>> + Send + 'static>;

/// The storage contract:
///
/// - a record is visible (to `get`, `list`, `chunks`, …) only once its
///   upload committed, and every acknowledged write is durable;
/// - one record id is stored at most once: a second upload, link or a
///   concurrent one fails with [`DomainError::Exists`];
/// - `delete` by anyone but the owner fails with [`DomainError::NotEntitled`]
///   and changes nothing; an unknown id is [`DomainError::Unknown`];
/// - listings are ordered and paged as documented on [`RecordStore`]'s
///   methods of the same names;
/// - a deduplicated blob is stored once per dedup scope and freed with the
///   last record that uses it.
pub trait RecordBackend: Send + Sync + 'static {
    fn limits(&self) -> StoreLimits;
    /// Starts an upload whose chunks are the record's own ciphertext.
    fn begin_upload(&self, rec: NewRecord) -> Result<Box<dyn StagedUpload>, DomainError>;
    /// Starts an upload whose chunks are a blob not stored yet.
    fn begin_blob_upload(
        &self,
        rec: NewRecord,
        blob: BlobRef,
    ) -> Result<Box<dyn StagedUpload>, DomainError>;
    /// Creates a record sharing an already stored blob.
    fn link_blob(&self, rec: NewRecord, blob: BlobRef, now: i64)
    -> Result<RecordMeta, DomainError>;
    /// The blob as `owner_id` may see it under the dedup scope.
    fn blob(&self, owner_id: &str, blob_id: &[u8; 32]) -> Result<Option<BlobInfo>, DomainError>;
    fn get(&self, record_id: &str) -> Result<Option<RecordMeta>, DomainError>;
    /// A missing record yields a single [`DomainError::Unknown`].
    fn chunks(&self, record_id: &str) -> ChunkIter;
    /// One page of an owner's records after `after_record_id`, and the last
    /// id returned if more follow.
    fn list(
        &self,
        owner_id: &str,
        partition: Option<&str>,
        after_record_id: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<RecordMeta>, Option<String>), DomainError>;
    /// The partitions holding records of `owner_id`, from `from` on.
    fn partitions(
        &self,
        owner_id: &str,
        from: &str,
        max: usize,
    ) -> Result<Vec<String>, DomainError>;
    /// One page of the records the windows cover, per partition.
    fn list_visible(
        &self,
        owner_id: &str,
        windows: &[(String, Window)],
        from: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<RecordMeta>, Option<Cursor>), DomainError>;
    /// Deletes `record_id` on behalf of `owner_id`.
    fn delete(&self, owner_id: &str, record_id: &str) -> Result<RecordMeta, DomainError>;
    /// A 32-byte secret made on first use and the same ever after.
    fn secret(&self, name: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, DomainError>;
}

/// An upload in progress. Dropping it without [`commit`](Self::commit)
/// discards everything staged and frees the record id.
pub trait StagedUpload: Send {
    fn append(&mut self, chunk: &[u8]) -> Result<(), DomainError>;
    /// Makes the record visible once exactly the declared size arrived.
    fn commit(self: Box<Self>, now: i64) -> Result<RecordMeta, DomainError>;
}

impl StagedUpload for Upload {
    fn append(&mut self, chunk: &[u8]) -> Result<(), DomainError> {
        Upload::append(self, chunk)
    }

    fn commit(self: Box<Self>, now: i64) -> Result<RecordMeta, DomainError> {
        Upload::commit(*self, now)
    }
}

impl RecordBackend for RecordStore {
    fn limits(&self) -> StoreLimits {
        RecordStore::limits(self)
    }

    fn begin_upload(&self, rec: NewRecord) -> Result<Box<dyn StagedUpload>, DomainError> {
        Ok(Box::new(RecordStore::begin_upload(self, rec)?))
    }

    fn begin_blob_upload(
        &self,
        rec: NewRecord,
        blob: BlobRef,
    ) -> Result<Box<dyn StagedUpload>, DomainError> {
        Ok(Box::new(RecordStore::begin_blob_upload(self, rec, blob)?))
    }

    fn link_blob(
        &self,
        rec: NewRecord,
        blob: BlobRef,
        now: i64,
    ) -> Result<RecordMeta, DomainError> {
        RecordStore::link_blob(self, rec, blob, now)
    }

    fn blob(&self, owner_id: &str, blob_id: &[u8; 32]) -> Result<Option<BlobInfo>, DomainError> {
        RecordStore::blob(self, owner_id, blob_id)
    }

    fn get(&self, record_id: &str) -> Result<Option<RecordMeta>, DomainError> {
        RecordStore::get(self, record_id)
    }

    fn chunks(&self, record_id: &str) -> ChunkIter {
        // Each chunk is read into its own buffer, which the gRPC adapter
        // sends as it is (no copy).
        Box::new(RecordStore::chunks(self, record_id))
    }

    fn list(
        &self,
        owner_id: &str,
        partition: Option<&str>,
        after_record_id: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<RecordMeta>, Option<String>), DomainError> {
        RecordStore::list(self, owner_id, partition, after_record_id, limit)
    }

    fn partitions(
        &self,
        owner_id: &str,
        from: &str,
        max: usize,
    ) -> Result<Vec<String>, DomainError> {
        RecordStore::partitions(self, owner_id, from, max)
    }

    fn list_visible(
        &self,
        owner_id: &str,
        windows: &[(String, Window)],
        from: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<RecordMeta>, Option<Cursor>), DomainError> {
        RecordStore::list_visible(self, owner_id, windows, from, limit)
    }

    fn delete(&self, owner_id: &str, record_id: &str) -> Result<RecordMeta, DomainError> {
        RecordStore::delete(self, owner_id, record_id)
    }

    fn secret(&self, name: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, DomainError> {
        RecordStore::secret(self, name)
    }
}
