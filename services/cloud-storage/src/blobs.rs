//! Deduplicated ciphertext blobs: stored once, reference-counted, with the
//! Merkle root that proofs of ownership are checked against.
//!
//! A blob lives in `blobs/<name>` beside the sled database; its
//! [`BlobInfo`] (size, Merkle root, leaf count, reference count) lives in
//! the `blobs` tree under its *blob key*. The key depends on the dedup scope:
//! the blob id alone (`global`: equal files of different owners are stored
//! once) or `owner ‖ 0x00 ‖ blob id` (`per-owner`: the cloud never learns
//! that two owners hold the same file). An upload is staged in
//! `blobs/tmp/<record_id>` and renamed into place before the metadata
//! transaction that makes it visible.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::StorageError;

/// Which uploads share a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupScope {
    /// Everyone's equal files are stored once. The cloud learns that two
    /// owners hold the same file.
    #[default]
    Global,
    /// Only one owner's equal files are stored once.
    PerOwner,
}

impl std::str::FromStr for DedupScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "global" => Ok(DedupScope::Global),
            "per-owner" => Ok(DedupScope::PerOwner),
            _ => Err(format!("dedup scope {s:?} is not `global` or `per-owner`")),
        }
    }
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub blob_id: [u8; 32],
    pub size: u64,
    pub root: [u8; 32],
    pub leaf_count: u64,
    /// How many records use it; the blob is freed when this reaches 0.
    pub refcount: u64,
}

const INFO_VERSION: u8 = 1;

impl BlobInfo {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 32 + 8 + 32 + 8 + 8);
        out.push(INFO_VERSION);
        out.extend_from_slice(&self.blob_id);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.leaf_count.to_be_bytes());
        out.extend_from_slice(&self.refcount.to_be_bytes());
        out
    }

    pub(crate) fn decode(v: &[u8]) -> Result<Self, StorageError> {
        let bad = || StorageError::Corrupt("malformed blob metadata".into());
        if v.len() != 89 || v[0] != INFO_VERSION {
            return Err(bad());
        }
        let arr32 = |r: std::ops::Range<usize>| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(&v[r]);
            a
        };
        let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().unwrap_or_default());
        Ok(BlobInfo {
            blob_id: arr32(1..33),
            size: u64_at(33),
            root: arr32(41..73),
            leaf_count: u64_at(73),
            refcount: u64_at(81),
        })
    }
}

/// The tree key of a blob under a scope.
pub(crate) fn blob_key(scope: DedupScope, owner_id: &str, blob_id: &[u8; 32]) -> Vec<u8> {
    match scope {
        DedupScope::Global => blob_id.to_vec(),
        DedupScope::PerOwner => {
            let mut k = Vec::with_capacity(owner_id.len() + 33);
            k.extend_from_slice(owner_id.as_bytes());
            k.push(0);
            k.extend_from_slice(blob_id);
            k
        }
    }
}

/// The file name of a blob key: hex for global keys, `owner.hex` otherwise
/// (owner ids are `[a-z0-9._-]`, so names stay unambiguous).
pub(crate) fn file_name(key: &[u8]) -> String {
    match key.iter().position(|&b| b == 0) {
        Some(i) => format!(
            "{}.{}",
            String::from_utf8_lossy(&key[..i]),
            hex(&key[i + 1..])
        ),
        None => hex(key),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Staged uploads, and published blobs as (file name, path).
pub(crate) type Listing = (Vec<PathBuf>, Vec<(String, PathBuf)>);

/// The blob directory.
pub(crate) struct BlobDir {
    dir: PathBuf,
    tmp: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Io(format!("{}: {e}", path.display()))
}

impl BlobDir {
    pub(crate) fn open(dir: PathBuf) -> Result<Self, StorageError> {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        Ok(Self { dir, tmp })
    }

    pub(crate) fn path(&self, key: &[u8]) -> PathBuf {
        self.dir.join(file_name(key))
    }

    pub(crate) fn staging(&self, record_id: &str) -> PathBuf {
        self.tmp.join(record_id)
    }

    pub(crate) fn create_staging(&self, record_id: &str) -> Result<File, StorageError> {
        let path = self.staging(record_id);
        File::create(&path).map_err(|e| io(&path, e))
    }

    /// Moves a staged upload into place (durably).
    pub(crate) fn publish(&self, record_id: &str, key: &[u8]) -> Result<(), StorageError> {
        let from = self.staging(record_id);
        let to = self.path(key);
        std::fs::rename(&from, &to).map_err(|e| io(&to, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&self.dir, e))
    }

    pub(crate) fn remove_file(path: &Path) -> Result<bool, StorageError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io(path, e)),
        }
    }

    pub(crate) fn open_read(&self, key: &[u8]) -> Result<Option<File>, StorageError> {
        let path = self.path(key);
        match File::open(&path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Staged files, and published files by name.
    pub(crate) fn listing(&self) -> Result<Listing, StorageError> {
        let mut staged = Vec::new();
        for e in std::fs::read_dir(&self.tmp).map_err(|e| io(&self.tmp, e))? {
            staged.push(e.map_err(|e| io(&self.tmp, e))?.path());
        }
        let mut published = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(|e| io(&self.dir, e))? {
            let e = e.map_err(|e| io(&self.dir, e))?;
            if e.path() == self.tmp {
                continue;
            }
            if let Some(name) = e.file_name().to_str() {
                published.push((name.to_owned(), e.path()));
            }
        }
        Ok((staged, published))
    }

    /// Bytes of all published blobs.
    pub(crate) fn bytes(&self) -> Result<u64, StorageError> {
        let (_, published) = self.listing()?;
        let mut total = 0;
        for (_, path) in published {
            total += std::fs::metadata(&path).map_err(|e| io(&path, e))?.len();
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_and_rejects_garbage() {
        let b = BlobInfo {
            blob_id: [1; 32],
            size: 99,
            root: [2; 32],
            leaf_count: 3,
            refcount: 4,
        };
        assert_eq!(BlobInfo::decode(&b.encode()).unwrap(), b);
        assert!(BlobInfo::decode(&b.encode()[..88]).is_err());
        assert!(BlobInfo::decode(b"").is_err());
    }

    #[test]
    fn keys_and_names() {
        let id = [0xab; 32];
        assert_eq!(
            file_name(&blob_key(DedupScope::Global, "alice", &id)),
            "ab".repeat(32)
        );
        assert_eq!(
            file_name(&blob_key(DedupScope::PerOwner, "alice", &id)),
            format!("alice.{}", "ab".repeat(32))
        );
        assert!("per-owner".parse::<DedupScope>().is_ok());
        assert!("nope".parse::<DedupScope>().is_err());
    }
}
