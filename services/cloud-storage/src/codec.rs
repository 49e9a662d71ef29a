//! Binary encoding of stored record metadata.
//!
//! Binary rather than JSON because the header is opaque bytes of up to
//! 64 KiB, which JSON would inflate about fourfold.
//!
//! Layout (version 2), all integers big-endian:
//!
//! ```text
//! 0x02 ‖ str record_id ‖ str owner_id ‖ str partition ‖ u32 epoch ‖
//! i64 created_at ‖ u64 size ‖ u32 chunk_count ‖ bytes header ‖
//! u8 has_blob ‖ [ blob_id (32) ‖ bytes wrapped_key ‖ bytes blob_key ]
//! ```
//!
//! where `str`/`bytes` are `u32 length ‖ bytes`. Version 1 is the same
//! without the blob part (records stored before deduplication existed);
//! it is still read.

use crate::{BlobRef, DomainError, RecordMeta};
use sesphr_domain::codec::Reader;

const VERSION_1: u8 = 1;
const VERSION: u8 = 2;

/// What the `meta` tree holds: the public metadata plus what the store
/// needs to read the content back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMeta {
    pub meta: RecordMeta,
    pub chunk_count: u32,
    /// The key of the record's blob in the `blobs` tree (the dedup scope in
    /// force when it was linked), for deduplicated records.
    pub blob_key: Option<Vec<u8>>,
}

pub fn encode(m: &StoredMeta) -> Vec<u8> {
    let r = &m.meta;
    let mut out = Vec::with_capacity(
        1 + 4 * 4
            + r.record_id.len()
            + r.owner_id.len()
            + r.partition.len()
            + 4
            + 8
            + 8
            + 4
            + r.header.len(),
    );
    out.push(VERSION);
    for s in [&r.record_id, &r.owner_id, &r.partition] {
        put_bytes(&mut out, s.as_bytes());
    }
    out.extend_from_slice(&r.epoch.to_be_bytes());
    out.extend_from_slice(&r.created_at.to_be_bytes());
    out.extend_from_slice(&r.size.to_be_bytes());
    out.extend_from_slice(&m.chunk_count.to_be_bytes());
    put_bytes(&mut out, &r.header);
    match (&r.blob, &m.blob_key) {
        (Some(b), Some(key)) => {
            out.push(1);
            out.extend_from_slice(&b.blob_id);
            put_bytes(&mut out, &b.wrapped_key);
            put_bytes(&mut out, key);
        }
        _ => out.push(0),
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Every field is validated far below 4 GiB before it gets here.
    let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
}

/// Decodes the value stored under `key`; anything malformed, or metadata
/// naming another record than its key, is `Corrupt`.
pub fn decode(key: &[u8], v: &[u8]) -> Result<StoredMeta, DomainError> {
    let label = String::from_utf8_lossy(key);
    let bad = |why: &str| DomainError::Corrupt(format!("metadata of record {label}: {why}"));
    let mut r = Reader::new(v);
    let version = match r.take(1) {
        Some([v @ (VERSION_1 | VERSION)]) => *v,
        Some([other]) => return Err(bad(&format!("unknown version {other}"))),
        _ => return Err(bad("empty value")),
    };
    let record_id = r.string().ok_or_else(|| bad("bad record_id"))?;
    let owner_id = r.string().ok_or_else(|| bad("bad owner_id"))?;
    let partition = r.string().ok_or_else(|| bad("bad partition"))?;
    let epoch = r.u32().ok_or_else(|| bad("truncated epoch"))?;
    let created_at = r.i64().ok_or_else(|| bad("truncated created_at"))?;
    let size = r.u64().ok_or_else(|| bad("truncated size"))?;
    let chunk_count = r.u32().ok_or_else(|| bad("truncated chunk count"))?;
    let header = r.bytes().ok_or_else(|| bad("truncated header"))?.to_vec();
    let (blob, blob_key) = if version == VERSION_1 {
        (None, None)
    } else {
        match r.take(1) {
            Some([0]) => (None, None),
            Some([1]) => {
                let id = r.take(32).ok_or_else(|| bad("truncated blob id"))?;
                let wrapped = r.bytes().ok_or_else(|| bad("truncated wrapped key"))?;
                let key = r.bytes().ok_or_else(|| bad("truncated blob key"))?;
                let mut blob_id = [0u8; 32];
                blob_id.copy_from_slice(id);
                (
                    Some(BlobRef {
                        blob_id,
                        wrapped_key: wrapped.to_vec(),
                    }),
                    Some(key.to_vec()),
                )
            }
            _ => return Err(bad("bad blob flag")),
        }
    };
    if r.end().is_err() {
        return Err(bad("trailing bytes"));
    }
    if record_id.as_bytes() != key {
        return Err(bad("stored under the wrong key"));
    }
    Ok(StoredMeta {
        meta: RecordMeta {
            record_id,
            owner_id,
            partition,
            epoch,
            created_at,
            size,
            header,
            blob,
        },
        chunk_count,
        blob_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredMeta {
        StoredMeta {
            meta: RecordMeta {
                record_id: "r1".into(),
                owner_id: "alice".into(),
                partition: "medical".into(),
                epoch: 7,
                created_at: -5,
                size: 1 << 40,
                header: vec![0, 1, 2, 255],
                blob: None,
            },
            chunk_count: 3,
            blob_key: None,
        }
    }

    fn sample_with_blob() -> StoredMeta {
        let mut m = sample();
        m.meta.blob = Some(BlobRef {
            blob_id: [7; 32],
            wrapped_key: vec![9; 60],
        });
        m.blob_key = Some(vec![7; 32]);
        m
    }

    #[test]
    fn blob_round_trip_and_version_1_still_reads() {
        let m = sample_with_blob();
        assert_eq!(decode(b"r1", &encode(&m)).unwrap(), m);
        let mut v1 = encode(&sample());
        v1[0] = VERSION_1;
        v1.pop(); // version 1 has no blob flag
        assert_eq!(decode(b"r1", &v1).unwrap(), sample());
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(decode(b"r1", &encode(&m)).unwrap(), m);
    }

    #[test]
    fn rejects_truncation_trailing_and_wrong_key() {
        let v = encode(&sample_with_blob());
        for cut in 0..v.len() {
            assert!(decode(b"r1", &v[..cut]).is_err(), "cut {cut}");
        }
        let mut extra = v.clone();
        extra.push(0);
        assert!(decode(b"r1", &extra).is_err());
        assert!(decode(b"r2", &v).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode(b"r1", &bytes);
        }
    }
}
