//! CloudStorage domain logic: encrypted records (opaque ciphertext plus an
//! opaque header) per owner and partition: metadata in sled, ciphertext in
//! an object directory beside it.
//!
//! The service is untrusted with content: it never interprets the bytes it
//! stores. What it must get right is that a record is either fully there or
//! not there at all, that uploads stream in bounded memory, and that every
//! acknowledged write is durable (`Db::flush` before returning `Ok`).
//!
//! # Storage layout (sled trees)
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta` | record_id | binary metadata, see `codec` (the commit point) |
//! | `by_owner` | owner ‖ 0x00 ‖ record_id | empty |
//! | `by_partition` | owner ‖ 0x00 ‖ partition ‖ 0x00 ‖ record_id | empty |
//! | `pending` | record_id | left by earlier versions (1 = upload, 2 = delete in progress); only swept |
//!
//! Ciphertext lives in files beside sled's directory (see [`layout`]): one
//! append-only object file per record, one file per deduplicated blob. sled 0.34 keeps every value it writes in memory (measured: 200 MiB
//! of 1 MiB values left ~220 MiB resident whatever the cache capacity) and
//! writes each large value ~2.5× to disk, so bulk bytes stay out of it; sled
//! holds everything that must change atomically (metadata, indexes, markers).
//!
//! Ids never contain 0x00, so every `… ‖ 0x00` prefix is exact. Two owner
//! indexes keep both list variants ordered by record id, so the page token
//! can simply be the last record id returned.
//!
//! # Crash safety
//!
//! An upload creates its object file, appends chunks to it as they arrive,
//! fsyncs the file, then the records directory (its entry), and finally
//! inserts `meta` plus both index keys in one transaction and flushes sled:
//! a record is visible only once complete, and acknowledged only once
//! durable. A delete removes `meta` and the index keys in one transaction,
//! flushes, and only then removes the object. On [`RecordStore::open`],
//! every object file that no `meta` names is swept, so a crash at any point
//! leaves either the whole record or nothing; no marker has to be made
//! durable before the first byte (earlier versions wrote one; the ones they
//! left are still swept).
//!
//! The directory fsync and the sled flush are *group syncs* ([`group_sync`]):
//! concurrent uploads share them, so `k` uploads committing together cost
//! `k` object fsyncs but about two directory fsyncs and two flushes, not
//! `k` of each.

pub mod backend;
mod blobs;
mod challenges;
mod codec;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod group_sync;
pub mod grpc;
mod header_check;
mod layout;
mod page_token;
pub mod remote;
pub mod service;

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

pub use sesphr_identity::{MAX_RECORD_ID_LEN, validate_record_id};
use sesphr_identity::{validate_partition, validate_user_id};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

pub use backend::{ChunkIter, RecordBackend, StagedUpload};
use blobs::BlobKey;
pub use blobs::{BlobInfo, DedupScope};
pub use challenges::{ChallengeBook, ChallengePolicy};
use codec::StoredMeta;
use group_sync::{GroupSync, Ticket};
use layout::{Layout, io_error};
pub use page_token::{Cursor, PageTokens, TokenScope};
use sha2::{Digest, Sha256};

/// Page size used when `list` is asked for `limit == 0` (the protobuf
/// default), and the largest page ever returned.
pub const DEFAULT_LIST_LIMIT: usize = 100;
pub const MAX_LIST_LIMIT: usize = 1000;
/// Largest ciphertext chunk of one upload message, by default.
pub const MAX_CHUNK_BYTES: usize = 4 << 20;
/// Largest encoded record header, by default.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// The shared error vocabulary of the services (`sesphr-domain`).
pub use sesphr_domain::DomainError;

/// What a client declares when it starts an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub record_id: String,
    pub owner_id: String,
    pub partition: String,
    pub epoch: u32,
    /// Opaque to the store (capsule, nonce prefix, segment size, …).
    pub header: Vec<u8>,
    /// Exact ciphertext length; the commit fails unless it matches, so a
    /// cut-off stream can never become a record.
    pub declared_size: u64,
}

/// A committed record's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub record_id: String,
    pub owner_id: String,
    pub partition: String,
    pub epoch: u32,
    pub created_at: i64,
    pub size: u64,
    pub header: Vec<u8>,
    /// Set for deduplicated records: the content lives in a shared blob.
    pub blob: Option<BlobRef>,
}

/// Which of an owner's records in one partition a grantee may see: the
/// window of the grant AccessPolicy returned for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub epoch_min: u32,
    pub epoch_max: Option<u32>,
    /// Records created earlier stay hidden (backward access control).
    pub not_before: i64,
}

impl Window {
    pub fn covers(&self, m: &RecordMeta) -> bool {
        m.epoch >= self.epoch_min
            && self.epoch_max.is_none_or(|max| m.epoch <= max)
            && m.created_at >= self.not_before
    }
}

/// Index entries one [`RecordStore::list_visible`] call looks at, at most,
/// per record it may return.
pub const SCAN_PER_RESULT: usize = 10;

/// A record's link to a deduplicated blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// SHA-256 of the ciphertext blob.
    pub blob_id: [u8; 32],
    /// The blob's content key, wrapped under the record's own key (opaque
    /// here).
    pub wrapped_key: Vec<u8>,
}

/// Upper bounds that keep one client from exhausting memory or disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    pub max_record_size: u64,
    pub max_chunk_size: usize,
    pub max_header_size: usize,
    /// sled's page cache. sled defaults to 1 GiB, which would let the
    /// server's memory grow with every record streamed through it; ciphertext
    /// is read once per download, so a small cache loses little.
    pub cache_bytes: u64,
    /// Which uploads share a deduplicated blob.
    pub dedup_scope: DedupScope,
}

impl Default for StoreLimits {
    /// 64 GiB records, 4 MiB chunks, 64 KiB headers, a 16 MiB cache.
    fn default() -> Self {
        StoreLimits {
            max_record_size: 64 << 30,
            max_chunk_size: MAX_CHUNK_BYTES,
            max_header_size: MAX_HEADER_BYTES,
            cache_bytes: 16 << 20,
            dedup_scope: DedupScope::Global,
        }
    }
}

/// A listing's page size: 0 (the protobuf default) is
/// [`DEFAULT_LIST_LIMIT`], anything larger is capped at [`MAX_LIST_LIMIT`].
fn page_limit(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n.min(MAX_LIST_LIMIT),
    }
}

fn join(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

fn owner_key(owner: &str, record_id: &str) -> Vec<u8> {
    join(&[owner, record_id])
}

fn partition_key(owner: &str, partition: &str, record_id: &str) -> Vec<u8> {
    join(&[owner, partition, record_id])
}

// ---- chunk storage -------------------------------------------------------
//
// Everything that knows how content bytes are laid out is in these few
// functions, so moving to content-addressed blobs changes only them (and
// `StoredMeta`).

/// Bytes per item yielded by [`RecordStore::chunks`].
const READ_CHUNK: usize = 1 << 20;

/// Wrapped content keys are small; anything large is not one.
fn check_wrapped_key(record_id: &str, blob: &BlobRef) -> Result<(), DomainError> {
    if blob.wrapped_key.is_empty() || blob.wrapped_key.len() > 1024 {
        return Err(DomainError::Malformed(format!(
            "record {record_id}: wrapped content key must be 1 to 1024 bytes"
        )));
    }
    Ok(())
}

// ---- store ---------------------------------------------------------------

/// State shared by the store, its uploads and its readers.
struct Shared {
    db: sled::Db,
    meta: sled::Tree,
    by_owner: sled::Tree,
    by_partition: sled::Tree,
    files: Layout,
    blob_meta: sled::Tree,
    pending: sled::Tree,
    limits: StoreLimits,
    /// Record ids with an upload or delete in flight: a second upload of
    /// the same id must fail instead of interleaving chunks.
    busy: Mutex<HashSet<String>>,
    /// Shared fsyncs of the records directory (new object files' entries).
    records_dir: GroupSync,
    /// Shared `Db::flush`es (commits and deletes).
    metadata: GroupSync,
}

impl Shared {
    /// A poisoned lock only means another thread panicked; the set is
    /// always consistent between statements.
    fn busy(&self) -> MutexGuard<'_, HashSet<String>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a committed record's ciphertext is: its own object or a blob.
    fn content_path(&self, m: &StoredMeta) -> Result<PathBuf, DomainError> {
        Ok(match &m.blob_key {
            Some(key) => self.files.blob_path(&BlobKey::from_tree_key(key)?),
            None => self.files.record_path(&m.meta.record_id),
        })
    }

    fn load(&self, record_id: &str) -> Result<Option<StoredMeta>, DomainError> {
        self.meta
            .get(record_id.as_bytes())?
            .map(|v| codec::decode(record_id.as_bytes(), &v))
            .transpose()
    }

    /// Makes every sled write this thread finished durable; concurrent
    /// callers share one flush.
    fn flush_metadata(&self) -> Result<(), DomainError> {
        let ticket = self.metadata.written();
        self.metadata.sync(ticket, || {
            self.db.flush()?;
            Ok(())
        })
    }

    /// Makes the directory entry of the object file created under
    /// `ticket` durable; concurrent callers share one fsync.
    fn sync_records_dir(&self, ticket: Ticket) -> Result<(), DomainError> {
        self.records_dir
            .sync(ticket, || self.files.sync_records_dir())
    }
}

/// Releases a `busy` reservation on every exit path of `delete`.
struct Reservation<'a> {
    shared: &'a Shared,
    record_id: &'a str,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.shared.busy().remove(self.record_id);
    }
}

/// Encrypted records. `Send + Sync`: share one behind an `Arc`.
pub struct RecordStore {
    shared: Arc<Shared>,
}

impl RecordStore {
    /// Opens (or creates) the store at `path`, then sweeps the chunks of
    /// uploads and deletes that a crash interrupted.
    pub fn open(path: &Path, limits: StoreLimits) -> Result<Self, DomainError> {
        if limits.max_chunk_size == 0 {
            return Err(DomainError::Malformed(
                "max_chunk_size must be at least 1 byte".into(),
            ));
        }
        let (files, legacy) = Layout::prepare(path)?;
        let db = sled::Config::new()
            .path(&files.metadata)
            .cache_capacity(limits.cache_bytes)
            .open()?;
        let shared = Shared {
            meta: db.open_tree("meta")?,
            by_owner: db.open_tree("by_owner")?,
            by_partition: db.open_tree("by_partition")?,
            files,
            blob_meta: db.open_tree("blobs")?,
            pending: db.open_tree("pending")?,
            db,
            limits,
            busy: Mutex::new(HashSet::new()),
            records_dir: GroupSync::new("records directory"),
            metadata: GroupSync::new("record metadata"),
        };
        if let Some(legacy) = legacy {
            migrate(&shared, legacy)?;
        }
        sweep(&shared)?;
        Ok(RecordStore {
            shared: Arc::new(shared),
        })
    }

    pub fn limits(&self) -> StoreLimits {
        self.shared.limits
    }

    /// Reserves `rec.record_id` and returns the handle to stream its
    /// content into. Nothing is visible until [`Upload::commit`].
    pub fn begin_upload(&self, rec: NewRecord) -> Result<Upload, DomainError> {
        self.begin(rec, None)
    }

    /// Like [`begin_upload`](Self::begin_upload) for a deduplicated record
    /// whose blob is not stored yet: the content streamed in is the blob.
    /// [`Upload::commit`] checks it hashes to `blob.blob_id`, stores it once
    /// (or, if an equal blob appeared meanwhile, links to that one) and
    /// computes the Merkle root later ownership proofs are checked against.
    pub fn begin_blob_upload(&self, rec: NewRecord, blob: BlobRef) -> Result<Upload, DomainError> {
        check_wrapped_key(&rec.record_id, &blob)?;
        self.begin(rec, Some(blob))
    }

    fn check_new(&self, rec: &NewRecord) -> Result<(), DomainError> {
        let limits = self.shared.limits;
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

    /// Marks `record_id` busy, unless it exists or is busy already.
    fn reserve(&self, record_id: &str) -> Result<(), DomainError> {
        let mut busy = self.shared.busy();
        if busy.contains(record_id) {
            return Err(DomainError::Exists(format!(
                "record {record_id} is being uploaded or deleted right now"
            )));
        }
        // Checked under the lock: commit inserts meta before it releases
        // its reservation, so no window lets two uploads of one id in.
        if self.shared.meta.contains_key(record_id.as_bytes())? {
            return Err(DomainError::Exists(format!(
                "record {record_id} already exists"
            )));
        }
        busy.insert(record_id.to_owned());
        Ok(())
    }

    fn begin(&self, rec: NewRecord, blob: Option<BlobRef>) -> Result<Upload, DomainError> {
        self.check_new(&rec)?;
        self.reserve(&rec.record_id)?;
        // From here on, dropping `upload` undoes everything.
        let mut upload = Upload {
            shared: Arc::downgrade(&self.shared),
            rec,
            blob: blob.map(|r| BlobUpload {
                r,
                sha: Sha256::new(),
                merkle: sesphr_dedup::pow::MerkleBuilder::new(),
            }),
            file: None,
            dir_entry: None,
            next_index: 0,
            received: 0,
            committed: false,
        };
        // No marker first: a crash from here on leaves an object file no
        // metadata names, which `open` sweeps.
        let id = &upload.rec.record_id;
        upload.file = Some(if upload.blob.is_some() {
            self.shared.files.create_staging(id)?
        } else {
            let file = self.shared.files.create_record(id)?;
            upload.dir_entry = Some(self.shared.records_dir.written());
            file
        });
        Ok(upload)
    }

    /// The blob `blob_id` as `owner_id` may see it under the dedup scope.
    pub fn blob(
        &self,
        owner_id: &str,
        blob_id: &[u8; 32],
    ) -> Result<Option<BlobInfo>, DomainError> {
        validate_user_id(owner_id)?;
        let key = BlobKey::new(self.shared.limits.dedup_scope, owner_id, blob_id);
        self.shared
            .blob_meta
            .get(key.tree_key())?
            .map(|v| BlobInfo::decode(&v))
            .transpose()
    }

    /// Creates a record that shares an already stored blob (after the
    /// caller proved it holds the blob). Durable when this returns.
    pub fn link_blob(
        &self,
        rec: NewRecord,
        blob: BlobRef,
        now: i64,
    ) -> Result<RecordMeta, DomainError> {
        check_wrapped_key(&rec.record_id, &blob)?;
        self.check_new(&rec)?;
        self.reserve(&rec.record_id)?;
        let shared = &*self.shared;
        let _reservation = Reservation {
            shared,
            record_id: &rec.record_id,
        };
        let key = BlobKey::new(shared.limits.dedup_scope, &rec.owner_id, &blob.blob_id).tree_key();
        let id = rec.record_id.clone();
        let meta = (
            &shared.meta,
            &shared.by_owner,
            &shared.by_partition,
            &shared.blob_meta,
        )
            .transaction(|(meta, by_owner, by_partition, blobs)| {
                let abort = ConflictableTransactionError::Abort;
                if meta.get(id.as_bytes())?.is_some() {
                    return Err(abort(DomainError::Exists(format!(
                        "record {id} already exists"
                    ))));
                }
                let Some(v) = blobs.get(&key)? else {
                    return Err(abort(DomainError::Unknown(format!(
                        "record {id}: the blob to link is no longer stored; upload it"
                    ))));
                };
                let mut info = BlobInfo::decode(&v).map_err(abort)?;
                info.refcount += 1;
                blobs.insert(key.as_slice(), info.encode())?;
                let stored = StoredMeta {
                    meta: RecordMeta {
                        record_id: id.clone(),
                        owner_id: rec.owner_id.clone(),
                        partition: rec.partition.clone(),
                        epoch: rec.epoch,
                        created_at: now,
                        size: info.size,
                        header: rec.header.clone(),
                        blob: Some(blob.clone()),
                    },
                    chunk_count: 0,
                    blob_key: Some(key.clone()),
                };
                meta.insert(id.as_bytes(), codec::encode(&stored))?;
                by_owner.insert(owner_key(&rec.owner_id, &id), &[])?;
                by_partition.insert(partition_key(&rec.owner_id, &rec.partition, &id), &[])?;
                Ok(stored.meta)
            })?;
        shared.flush_metadata()?;
        Ok(meta)
    }

    /// Bytes of ciphertext on disk (record objects and blobs), for
    /// measuring deduplication.
    pub fn stored_bytes(&self) -> Result<u64, DomainError> {
        let files = &self.shared.files;
        let mut total = 0;
        for (_, path) in files.record_files()?.into_iter().chain(files.blob_files()?) {
            total += std::fs::metadata(&path)
                .map_err(|e| io_error(&path, e))?
                .len();
        }
        Ok(total)
    }

    /// The metadata of a committed record, if it exists.
    pub fn get(&self, record_id: &str) -> Result<Option<RecordMeta>, DomainError> {
        validate_record_id(record_id)?;
        Ok(self.shared.load(record_id)?.map(|m| m.meta))
    }

    /// The record's content, chunk by chunk in upload order, read lazily so
    /// memory stays bounded by one chunk. A missing record yields a single
    /// `NotFound`; a record deleted while being read ends with `NotFound`.
    pub fn chunks(
        &self,
        record_id: &str,
    ) -> impl Iterator<Item = Result<Vec<u8>, DomainError>> + Send + 'static {
        let state = match validate_record_id(record_id)
            .map_err(DomainError::from)
            .and_then(|()| self.shared.load(record_id))
        {
            Ok(Some(m)) => match self
                .shared
                .content_path(&m)
                .and_then(|p| Layout::open_read(&p))
            {
                Ok(Some(file)) => ReaderState::Reading {
                    meta: m,
                    file,
                    bytes: 0,
                },
                Ok(None) => ReaderState::Failed(Some(DomainError::Corrupt(format!(
                    "record {record_id}: its ciphertext object is missing"
                )))),
                Err(e) => ReaderState::Failed(Some(e)),
            },
            Ok(None) => ReaderState::Failed(Some(DomainError::Unknown(format!(
                "record {record_id} not found"
            )))),
            Err(e) => ReaderState::Failed(Some(e)),
        };
        ChunkReader { state }
    }

    /// One page of `owner_id`'s records (optionally one partition), ordered
    /// by record id, starting after `after_record_id`. `limit` 0 means
    /// [`DEFAULT_LIST_LIMIT`]; it is capped at [`MAX_LIST_LIMIT`]. Returns the
    /// page and, if more records follow, the token (last id) for the next.
    pub fn list(
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
        let (tree, mut prefix) = match partition {
            Some(p) => (&self.shared.by_partition, join(&[owner_id, p])),
            None => (&self.shared.by_owner, owner_id.as_bytes().to_vec()),
        };
        prefix.push(0);
        let start = match after_record_id {
            Some(a) => {
                let mut k = prefix.clone();
                k.extend_from_slice(a.as_bytes());
                Bound::Excluded(k)
            }
            None => Bound::Included(prefix.clone()),
        };
        let mut out = Vec::new();
        let mut more = false;
        for kv in tree.range((start, Bound::Unbounded)) {
            let (k, _) = kv?;
            let Some(id) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if out.len() == limit {
                more = true;
                break;
            }
            let id = std::str::from_utf8(id).map_err(|_| {
                DomainError::Corrupt(format!("index key of {owner_id} holds a non-UTF-8 id"))
            })?;
            // Index and meta change in one transaction; a missing meta here
            // means a delete committed between the two reads.
            match self.shared.load(id)? {
                Some(m) if m.meta.owner_id == owner_id => out.push(m.meta),
                Some(_) => {
                    return Err(DomainError::Corrupt(format!(
                        "index of {owner_id} lists record {id} of another owner"
                    )));
                }
                None => {}
            }
        }
        let token = if more {
            out.last().map(|m| m.record_id.clone())
        } else {
            None
        };
        Ok((out, token))
    }

    /// The partitions that hold records of `owner_id`, in order, starting at
    /// `from` (inclusive), at most `max`. One index seek per partition.
    pub fn partitions(
        &self,
        owner_id: &str,
        from: &str,
        max: usize,
    ) -> Result<Vec<String>, DomainError> {
        validate_user_id(owner_id)?;
        let mut prefix = owner_id.as_bytes().to_vec();
        prefix.push(0);
        let mut start = [prefix.as_slice(), from.as_bytes()].concat();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(kv) = self.shared.by_partition.range(start.clone()..).next() else {
                break;
            };
            let (k, _) = kv?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            let end = rest.iter().position(|&b| b == 0).ok_or_else(|| {
                DomainError::Corrupt(format!("partition index key of {owner_id} is malformed"))
            })?;
            let partition = std::str::from_utf8(&rest[..end]).map_err(|_| {
                DomainError::Corrupt(format!("partition index of {owner_id} is not UTF-8"))
            })?;
            out.push(partition.to_owned());
            // Partition names never hold 0x00 or 0x01: skip to the next one.
            start = [prefix.as_slice(), partition.as_bytes(), &[1]].concat();
        }
        Ok(out)
    }

    /// One page of what a grantee may see of `owner_id`'s records: those in
    /// the listed partitions (ascending) that their window covers, in
    /// (partition, record id) order, starting at `from` (inclusive).
    ///
    /// The returned cursor is set only when a further *visible* record
    /// follows (it points at that record), or when the scan budget of
    /// [`SCAN_PER_RESULT`] entries per requested record ran out first; so a
    /// caller who may see nothing more learns nothing from it.
    pub fn list_visible(
        &self,
        owner_id: &str,
        windows: &[(String, Window)],
        from: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<RecordMeta>, Option<Cursor>), DomainError> {
        validate_user_id(owner_id)?;
        let limit = page_limit(limit);
        let mut budget = limit.saturating_mul(SCAN_PER_RESULT).max(1000);
        let mut out = Vec::new();
        for (partition, window) in windows {
            validate_partition(partition)?;
            let prefix = [owner_id.as_bytes(), &[0], partition.as_bytes(), &[0]].concat();
            let start = match from {
                Some(c) if c.partition == *partition => {
                    [prefix.as_slice(), c.record_id.as_bytes()].concat()
                }
                Some(c) if c.partition > *partition => continue,
                _ => prefix.clone(),
            };
            for kv in self.shared.by_partition.range(start..) {
                let (k, _) = kv?;
                let Some(id) = k.strip_prefix(prefix.as_slice()) else {
                    break;
                };
                let id = std::str::from_utf8(id).map_err(|_| {
                    DomainError::Corrupt(format!("index key of {owner_id} holds a non-UTF-8 id"))
                })?;
                let here = || Cursor {
                    partition: partition.clone(),
                    record_id: id.to_owned(),
                };
                if budget == 0 {
                    return Ok((out, Some(here())));
                }
                budget -= 1;
                let Some(m) = self.shared.load(id)? else {
                    continue; // deleted between the two reads
                };
                if m.meta.owner_id != owner_id {
                    return Err(DomainError::Corrupt(format!(
                        "index of {owner_id} lists record {id} of another owner"
                    )));
                }
                if window.covers(&m.meta) {
                    if out.len() == limit {
                        return Ok((out, Some(here())));
                    }
                    out.push(m.meta);
                }
            }
        }
        Ok((out, None))
    }

    /// A 32-byte secret of this store, made on first use and kept.
    pub fn secret(&self, name: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, DomainError> {
        sesphr_domain::secret::load_or_create(&self.shared.db, name)
    }

    /// Deletes `record_id` on behalf of `owner_id`. `NotFound` if there is
    /// no such record, `PermissionDenied` if someone else owns it (the
    /// message names only the requester, never the real owner).
    pub fn delete(&self, owner_id: &str, record_id: &str) -> Result<RecordMeta, DomainError> {
        validate_user_id(owner_id)?;
        validate_record_id(record_id)?;
        let shared = &*self.shared;
        {
            let mut busy = shared.busy();
            if busy.contains(record_id) {
                // An upload in progress is not a record yet; a second delete
                // of a record already being deleted is a conflict.
                return Err(if shared.meta.contains_key(record_id.as_bytes())? {
                    DomainError::Conflict(format!("record {record_id} is already being deleted"))
                } else {
                    DomainError::Unknown(format!("record {record_id} not found"))
                });
            }
            busy.insert(record_id.to_owned());
        }
        let _reservation = Reservation { shared, record_id };
        let (meta, freed_blob) = (
            &shared.meta,
            &shared.by_owner,
            &shared.by_partition,
            &shared.blob_meta,
        )
            .transaction(|(meta, by_owner, by_partition, blobs)| {
                let abort = ConflictableTransactionError::Abort;
                let Some(v) = meta.get(record_id.as_bytes())? else {
                    return Err(abort(DomainError::Unknown(format!(
                        "record {record_id} not found"
                    ))));
                };
                let m = codec::decode(record_id.as_bytes(), &v).map_err(abort)?;
                if m.meta.owner_id != owner_id {
                    return Err(abort(DomainError::NotEntitled(format!(
                        "record {record_id} does not belong to {owner_id}"
                    ))));
                }
                meta.remove(record_id.as_bytes())?;
                by_owner.remove(owner_key(owner_id, record_id))?;
                by_partition.remove(partition_key(owner_id, &m.meta.partition, record_id))?;
                let mut freed = None;
                // The last reference frees the blob.
                if let Some(key) = &m.blob_key
                    && let Some(v) = blobs.get(key)?
                {
                    let mut info = BlobInfo::decode(&v).map_err(abort)?;
                    info.refcount = info.refcount.saturating_sub(1);
                    if info.refcount == 0 {
                        blobs.remove(key.as_slice())?;
                        freed = Some(key.clone());
                    } else {
                        blobs.insert(key.as_slice(), info.encode())?;
                    }
                }
                Ok((m.meta, freed))
            })?;
        // The record is gone durably before its bytes are: removing them
        // first would let a crash bring back metadata naming a missing
        // object. A crash after the flush leaves a file no metadata names,
        // which `open` sweeps.
        shared.flush_metadata()?;
        if let Some(key) = freed_blob {
            Layout::remove(&shared.files.blob_path(&BlobKey::from_tree_key(&key)?))?;
        } else {
            Layout::remove(&shared.files.record_path(record_id))?;
        }
        Ok(meta)
    }
}

/// Moves a first-layout store's ciphertext files to their new names.
fn migrate(s: &Shared, legacy: layout::Legacy) -> Result<(), DomainError> {
    let mut record_ids = Vec::new();
    for kv in s.meta.iter() {
        let (k, _) = kv?;
        match std::str::from_utf8(&k) {
            Ok(id) => record_ids.push(id.to_owned()),
            Err(_) => tracing::warn!("a record id in the metadata is not UTF-8"),
        }
    }
    let mut blob_keys = Vec::new();
    for kv in s.blob_meta.iter() {
        let (k, _) = kv?;
        blob_keys.push(BlobKey::from_tree_key(&k)?);
    }
    legacy.finish(&s.files, &record_ids, &blob_keys)
}

/// Removes the objects of every upload or delete a crash interrupted, and
/// any file that no metadata names. Only the store's own directories are
/// looked at, never sled's.
fn sweep(s: &Shared) -> Result<(), DomainError> {
    let mut records = 0usize;
    for kv in s.pending.iter() {
        let (k, _) = kv?;
        let Ok(id) = std::str::from_utf8(&k) else {
            tracing::warn!("dropping a pending marker with a non-UTF-8 record id");
            s.pending.remove(&k)?;
            continue;
        };
        // An upload marker never outlives its commit (same transaction), so
        // a marker with meta present would only be left by a bug; keep the
        // record in that case and drop the marker.
        if !s.meta.contains_key(&k)? {
            Layout::remove(&s.files.record_path(id))?;
            records += 1;
        }
        s.pending.remove(&k)?;
    }
    for (name, path) in s.files.record_files()? {
        let live = match Layout::record_id_of(&name) {
            Some(id) => s.meta.contains_key(id.as_bytes())?,
            None => false,
        };
        if !live {
            Layout::remove(&path)?;
            records += 1;
        }
    }
    // Staged blob uploads never survive a restart; published blobs that no
    // metadata names were freed or never committed.
    for path in s.files.staged_files()? {
        Layout::remove(&path)?;
        records += 1;
    }
    let mut live = HashSet::new();
    for kv in s.blob_meta.iter() {
        let (k, _) = kv?;
        live.insert(BlobKey::from_tree_key(&k)?.file_name());
    }
    for (name, path) in s.files.blob_files()? {
        if !live.contains(&name) {
            Layout::remove(&path)?;
            records += 1;
        }
    }
    if records > 0 {
        s.db.flush()?;
        tracing::info!(
            records,
            "removed objects of interrupted uploads and deletes"
        );
    }
    Ok(())
}

/// What a blob upload computes while the bytes stream through.
struct BlobUpload {
    r: BlobRef,
    sha: Sha256,
    merkle: sesphr_dedup::pow::MerkleBuilder,
}

/// An upload in progress. Owns the reservation of its record id: dropping it
/// without [`Upload::commit`] removes the staged chunks and frees the id.
///
/// It holds only a weak reference to the store, so a forgotten or leaked
/// upload never keeps the database open; its leftovers are then swept on
/// the next open.
pub struct Upload {
    shared: Weak<Shared>,
    rec: NewRecord,
    blob: Option<BlobUpload>,
    file: Option<File>,
    /// The object file's directory entry, until a directory sync covers it.
    dir_entry: Option<Ticket>,
    next_index: u32,
    received: u64,
    committed: bool,
}

impl Upload {
    pub fn record_id(&self) -> &str {
        &self.rec.record_id
    }

    /// Bytes appended so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    pub fn declared_size(&self) -> u64 {
        self.rec.declared_size
    }

    fn shared(&self) -> Result<Arc<Shared>, DomainError> {
        self.shared.upgrade().ok_or_else(|| {
            DomainError::Conflict(format!(
                "record {}: the record store was closed during the upload",
                self.rec.record_id
            ))
        })
    }

    /// Writes the next chunk straight to disk (not buffered in memory).
    pub fn append(&mut self, chunk: &[u8]) -> Result<(), DomainError> {
        let shared = self.shared()?;
        let id = &self.rec.record_id;
        if chunk.is_empty() {
            return Err(DomainError::Malformed(format!("record {id}: empty chunk")));
        }
        if chunk.len() > shared.limits.max_chunk_size {
            return Err(DomainError::Malformed(format!(
                "record {id}: chunk of {} bytes exceeds the limit of {} bytes",
                chunk.len(),
                shared.limits.max_chunk_size
            )));
        }
        let total = self.received.saturating_add(chunk.len() as u64);
        if total > self.rec.declared_size {
            return Err(DomainError::Malformed(format!(
                "record {id}: {total} bytes received, more than the declared {}",
                self.rec.declared_size
            )));
        }
        if self.next_index == u32::MAX {
            return Err(DomainError::Malformed(format!(
                "record {id}: too many chunks; send larger ones"
            )));
        }
        let path = match &self.blob {
            Some(_) => shared.files.staging_path(id),
            None => shared.files.record_path(id),
        };
        if let Some(b) = &mut self.blob {
            b.sha.update(chunk);
            b.merkle.update(chunk);
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| DomainError::Conflict(format!("record {id}: upload closed")))?;
        file.write_all(chunk).map_err(|e| io_error(&path, e))?;
        self.next_index += 1;
        self.received = total;
        Ok(())
    }

    /// Makes the record visible, atomically, once exactly `declared_size`
    /// bytes have arrived; durable when this returns `Ok`. On error the
    /// upload is discarded.
    pub fn commit(mut self, now: i64) -> Result<RecordMeta, DomainError> {
        let shared = self.shared()?;
        let id = self.rec.record_id.clone();
        if self.received != self.rec.declared_size {
            return Err(DomainError::Conflict(format!(
                "record {id}: received {} bytes but {} were declared",
                self.received, self.rec.declared_size
            )));
        }
        // The bytes, and the object's name, are durable before the record
        // becomes visible.
        if let Some(file) = self.file.take() {
            file.sync_all()
                .map_err(|e| io_error(&shared.files.record_path(&id), e))?;
        }
        if let Some(ticket) = self.dir_entry.take() {
            shared.sync_records_dir(ticket)?;
        }
        if let Some(blob) = self.blob.take() {
            return self.commit_blob(&shared, blob, now);
        }
        let stored = StoredMeta {
            meta: RecordMeta {
                record_id: id.clone(),
                owner_id: self.rec.owner_id.clone(),
                partition: self.rec.partition.clone(),
                epoch: self.rec.epoch,
                created_at: now,
                size: self.received,
                header: std::mem::take(&mut self.rec.header),
                blob: None,
            },
            chunk_count: self.next_index,
            blob_key: None,
        };
        let value = codec::encode(&stored);
        let owner_k = owner_key(&stored.meta.owner_id, &id);
        let partition_k = partition_key(&stored.meta.owner_id, &stored.meta.partition, &id);
        (&shared.meta, &shared.by_owner, &shared.by_partition).transaction(
            |(meta, by_owner, by_partition)| {
                if meta.get(id.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(DomainError::Exists(
                        format!("record {id} already exists"),
                    )));
                }
                meta.insert(id.as_bytes(), value.as_slice())?;
                by_owner.insert(owner_k.as_slice(), &[])?;
                by_partition.insert(partition_k.as_slice(), &[])?;
                Ok(())
            },
        )?;
        // The record is committed: from here on dropping must not touch it.
        self.committed = true;
        shared.busy().remove(&id);
        shared.flush_metadata()?;
        Ok(stored.meta)
    }
}

impl Upload {
    fn commit_blob(
        mut self,
        shared: &Shared,
        blob: BlobUpload,
        now: i64,
    ) -> Result<RecordMeta, DomainError> {
        let id = self.rec.record_id.clone();
        let digest: [u8; 32] = blob.sha.finalize().into();
        if digest != blob.r.blob_id {
            Layout::remove(&shared.files.staging_path(&id))?;
            return Err(DomainError::Malformed(format!(
                "record {id}: the uploaded blob does not hash to the blob id it was announced with"
            )));
        }
        let tree = blob.merkle.finish();
        let blob_key = BlobKey::new(
            shared.limits.dedup_scope,
            &self.rec.owner_id,
            &blob.r.blob_id,
        );
        let key = blob_key.tree_key();
        // Publish the bytes before any metadata can name them. If an equal
        // blob is already stored, the bytes are identical (same hash).
        if shared.blob_meta.get(&key)?.is_none() {
            shared.files.publish_blob(&id, &blob_key)?;
        }
        let fresh = BlobInfo {
            blob_id: blob.r.blob_id,
            size: self.received,
            root: *tree.root(),
            leaf_count: tree.leaf_count(),
            refcount: 1,
        };
        let stored = StoredMeta {
            meta: RecordMeta {
                record_id: id.clone(),
                owner_id: self.rec.owner_id.clone(),
                partition: self.rec.partition.clone(),
                epoch: self.rec.epoch,
                created_at: now,
                size: self.received,
                header: std::mem::take(&mut self.rec.header),
                blob: Some(blob.r.clone()),
            },
            chunk_count: 0,
            blob_key: Some(key.clone()),
        };
        let value = codec::encode(&stored);
        let owner_k = owner_key(&stored.meta.owner_id, &id);
        let partition_k = partition_key(&stored.meta.owner_id, &stored.meta.partition, &id);
        let committed = (
            &shared.meta,
            &shared.by_owner,
            &shared.by_partition,
            &shared.blob_meta,
        )
            .transaction(|(meta, by_owner, by_partition, blobs)| {
                let abort = ConflictableTransactionError::Abort;
                if meta.get(id.as_bytes())?.is_some() {
                    return Err(abort(DomainError::Exists(format!(
                        "record {id} already exists"
                    ))));
                }
                let info = match blobs.get(&key)? {
                    Some(v) => {
                        let mut info = BlobInfo::decode(&v).map_err(abort)?;
                        info.refcount += 1;
                        info
                    }
                    None => fresh.clone(),
                };
                blobs.insert(key.as_slice(), info.encode())?;
                meta.insert(id.as_bytes(), value.as_slice())?;
                by_owner.insert(owner_k.as_slice(), &[])?;
                by_partition.insert(partition_k.as_slice(), &[])?;
                Ok(())
            });
        if let Err(e) = committed {
            // Unreferenced published bytes are swept on the next open.
            Layout::remove(&shared.files.staging_path(&id))?;
            return Err(e.into());
        }
        self.committed = true;
        // Left over only if an equal blob was stored first.
        Layout::remove(&shared.files.staging_path(&id))?;
        shared.busy().remove(&id);
        shared.flush_metadata()?;
        Ok(stored.meta)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            // Store already gone: the next open sweeps the object file.
            return;
        };
        let id = &self.rec.record_id;
        self.file = None;
        let removed = Layout::remove(&if self.blob.is_some() {
            shared.files.staging_path(id)
        } else {
            shared.files.record_path(id)
        });
        match removed {
            Ok(_) => tracing::debug!(record_id = %id, "discarded uncommitted upload"),
            // No metadata names the file, so the next open removes it.
            Err(e) => {
                tracing::warn!(record_id = %id, error = %e, "could not discard uncommitted upload")
            }
        }
        shared.busy().remove(id);
    }
}

enum ReaderState {
    Reading {
        meta: StoredMeta,
        file: File,
        bytes: u64,
    },
    Failed(Option<DomainError>),
}

/// Lazy reader of a record's object. The open file keeps the content
/// readable even if the record is deleted meanwhile (the reader saw a
/// complete record when it started).
struct ChunkReader {
    state: ReaderState,
}

impl Iterator for ChunkReader {
    type Item = Result<Vec<u8>, DomainError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (meta, file, bytes) = match &mut self.state {
            ReaderState::Failed(e) => return e.take().map(Err),
            ReaderState::Reading { meta, file, bytes } => (meta, file, bytes),
        };
        let id = meta.meta.record_id.clone();
        let want = (meta.meta.size - *bytes).min(READ_CHUNK as u64) as usize;
        if want == 0 {
            // Anything past the declared size means the object was altered.
            let mut probe = [0u8; 1];
            let extra = file.read(&mut probe).map(|n| n > 0).unwrap_or(true);
            self.state = ReaderState::Failed(None);
            return extra.then(|| {
                Err(DomainError::Corrupt(format!(
                    "record {id}: object is longer than its metadata says"
                )))
            });
        }
        let mut buf = vec![0u8; want];
        match file.read_exact(&mut buf) {
            Ok(()) => {
                *bytes += want as u64;
                Some(Ok(buf))
            }
            Err(e) => {
                self.state = ReaderState::Failed(None);
                Some(Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    DomainError::Corrupt(format!(
                        "record {id}: object is shorter than its metadata says"
                    ))
                } else {
                    DomainError::files(format!("record {id}: {e}"))
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests;
