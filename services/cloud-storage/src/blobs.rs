//! Deduplicated ciphertext blobs: stored once, reference-counted, with the
//! Merkle root that proofs of ownership are checked against.
//!
//! A blob's [`BlobInfo`] (size, Merkle root, leaf count, reference count)
//! lives in the `blobs` tree under its [`BlobKey`], which depends on the dedup
//! scope: the blob id alone (`global`: equal files of different owners are
//! stored once) or the blob id within one owner's files (`per-owner`: the
//! cloud never learns that two owners hold the same file). Where its bytes
//! live on disk is the [`layout`](crate::layout)'s business.

use crate::DomainError;

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

    pub(crate) fn decode(v: &[u8]) -> Result<Self, DomainError> {
        let bad = || DomainError::Corrupt("malformed blob metadata".into());
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

/// Where a blob is filed: by its id alone (`global` scope) or by its id
/// within one owner's files (`per-owner`). A typed value, so the scope is
/// never read back out of id bytes: a blob id is SHA-256 of client-chosen
/// bytes and may hold any byte, 0x00 and `/` included.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BlobKey {
    owner: Option<String>,
    blob_id: [u8; 32],
}

impl BlobKey {
    /// The key of `blob_id` for `owner_id` under `scope`.
    pub(crate) fn new(scope: DedupScope, owner_id: &str, blob_id: &[u8; 32]) -> Self {
        BlobKey {
            owner: match scope {
                DedupScope::Global => None,
                DedupScope::PerOwner => Some(owner_id.to_owned()),
            },
            blob_id: *blob_id,
        }
    }

    /// The key in the `blobs` tree: the blob id (`global`) or
    /// `owner ‖ 0x00 ‖ blob id` (`per-owner`). Owner ids never contain 0x00.
    pub(crate) fn tree_key(&self) -> Vec<u8> {
        match &self.owner {
            None => self.blob_id.to_vec(),
            Some(owner) => {
                let mut k = Vec::with_capacity(owner.len() + 33);
                k.extend_from_slice(owner.as_bytes());
                k.push(0);
                k.extend_from_slice(&self.blob_id);
                k
            }
        }
    }

    /// Reads a tree key back. The blob id is always the last 32 bytes, so
    /// 0x00 bytes inside it cannot shift the split.
    pub(crate) fn from_tree_key(key: &[u8]) -> Result<Self, DomainError> {
        let bad = || DomainError::Corrupt(format!("malformed blob key {}", hex(key)));
        let split = key.len().checked_sub(32).ok_or_else(bad)?;
        let mut blob_id = [0u8; 32];
        blob_id.copy_from_slice(&key[split..]);
        let owner = match split {
            0 => None,
            1 => return Err(bad()),
            n => {
                if key[n - 1] != 0 {
                    return Err(bad());
                }
                let owner = std::str::from_utf8(&key[..n - 1]).map_err(|_| bad())?;
                sesphr_identity::validate_user_id(owner).map_err(|_| bad())?;
                Some(owner.to_owned())
            }
        };
        Ok(BlobKey { owner, blob_id })
    }

    /// The blob's file name: lowercase hex only (`<blob id>` or
    /// `<owner>-<blob id>`, each hex-encoded), so no id byte can ever become
    /// a path separator, a parent reference or an absolute path.
    pub(crate) fn file_name(&self) -> String {
        match &self.owner {
            None => hex(&self.blob_id),
            Some(owner) => format!("{}-{}", hex(owner.as_bytes()), hex(&self.blob_id)),
        }
    }

    /// The name the first storage layout gave this blob, if it was a plain
    /// file name there (used once, to migrate old stores).
    pub(crate) fn legacy_file_name(&self) -> Option<String> {
        let key = self.tree_key();
        let name = match key.iter().position(|&b| b == 0) {
            Some(i) => format!(
                "{}.{}",
                String::from_utf8_lossy(&key[..i]),
                hex(&key[i + 1..])
            ),
            None => hex(&key),
        };
        let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
        plain.then_some(name)
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
        let global = BlobKey::new(DedupScope::Global, "alice", &id);
        assert_eq!(global.file_name(), "ab".repeat(32));
        assert_eq!(global.tree_key(), id.to_vec());
        let owned = BlobKey::new(DedupScope::PerOwner, "alice", &id);
        assert_eq!(
            owned.file_name(),
            format!("{}-{}", hex(b"alice"), "ab".repeat(32))
        );
        assert!("per-owner".parse::<DedupScope>().is_ok());
        assert!("nope".parse::<DedupScope>().is_err());
    }

    /// Blob ids are hashes of client-chosen bytes: any byte can appear,
    /// 0x00 and `/` included, and none of them may reach a file name.
    #[test]
    fn hostile_blob_ids_give_plain_hex_names_and_round_trip() {
        let mut hostile = [0u8; 32];
        hostile[..4].copy_from_slice(b"/../");
        hostile[4] = 0;
        let mut slash_first = [b'/'; 32];
        slash_first[3] = 0;
        for id in [hostile, slash_first, [0; 32], [0xff; 32]] {
            for scope in [DedupScope::Global, DedupScope::PerOwner] {
                let key = BlobKey::new(scope, "alice", &id);
                let name = key.file_name();
                assert!(
                    name.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
                    "{name}"
                );
                assert_eq!(BlobKey::from_tree_key(&key.tree_key()).unwrap(), key);
            }
        }
        // A legacy name with a separator is never used as a path.
        let key = BlobKey::new(DedupScope::Global, "alice", &slash_first);
        assert_eq!(key.legacy_file_name(), None);
    }

    #[test]
    fn malformed_tree_keys_are_refused() {
        for k in [
            &b""[..],
            &[1u8; 31][..],
            &[0u8; 33][..],
            &[b'a'; 34][..],
            &[b"A\0"[..].to_vec(), vec![1; 32]].concat()[..],
        ] {
            assert!(BlobKey::from_tree_key(k).is_err(), "{k:?}");
        }
    }
}
