//! The bytes an audit entry contributes to the tree.
//!
//! ```text
//! canonical = seq u64 BE ‖ time i64 BE ‖
//!             for actor, action, owner_id, partition, subject, record_id,
//!                 outcome, detail: u32 BE byte length ‖ UTF-8 bytes
//! leaf data = 0x01 ‖ salt (16 bytes) ‖ canonical
//! leaf hash = SHA-256(0x00 ‖ leaf data)          (RFC 9162 leaf)
//! leaf index = seq - 1
//! ```
//!
//! The salt is random per entry and shown only to those who may see the
//! entry, so the sibling hashes in another reader's proofs cannot be
//! confirmed by guessing an entry's (low-entropy) fields.

/// Length of an entry's salt.
pub const SALT_LEN: usize = 16;

/// Version byte of the leaf data.
pub const LEAF_VERSION: u8 = 1;

/// The canonical encoding of an entry (also what its hash chain hashes).
pub fn canonical_bytes(seq: u64, time: i64, fields: [&str; 8]) -> Vec<u8> {
    let len = 16 + fields.iter().map(|f| 4 + f.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&time.to_be_bytes());
    for f in fields {
        // Field lengths are capped far below u32::MAX by the log; the
        // saturation only guards against misuse, it never triggers.
        let n = u32::try_from(f.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(f.as_bytes());
    }
    out
}

/// `0x01 ‖ salt ‖ canonical_bytes(seq, time, fields)`.
pub fn leaf_data(seq: u64, time: i64, fields: [&str; 8], salt: &[u8; SALT_LEN]) -> Vec<u8> {
    let canonical = canonical_bytes(seq, time, fields);
    let mut out = Vec::with_capacity(1 + SALT_LEN + canonical.len());
    out.push(LEAF_VERSION);
    out.extend_from_slice(salt);
    out.extend_from_slice(&canonical);
    out
}
