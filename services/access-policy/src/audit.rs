//! The audit log's byte formats and hash chain.
//!
//! Kept apart from the store so the exact bytes that are hashed are easy to
//! audit (and to re-implement in another language to verify an exported log).

use sha2::{Digest, Sha256};

use crate::{AuditEntry, AuditEvent, DomainError};

/// `prev_hash` of entry 1.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// Version tag of the stored value layout: 1 was the hash chain alone, 2
/// adds the entry's Merkle leaf salt. Version-1 values are rewritten as
/// version 2 (with a fresh salt) when the tree is built over them.
const VALUE_VERSION: u8 = 2;
const VALUE_VERSION_CHAIN_ONLY: u8 = 1;

/// Length of an entry's leaf salt.
pub const SALT_LEN: usize = sesphr_tlog::entry::SALT_LEN;

/// The bytes the chain hashes for one entry (see the crate docs):
/// `seq` u64 BE ‖ `time` i64 BE ‖ for each of actor, action, owner_id,
/// partition, subject, record_id, outcome, detail: u32 BE byte length ‖ UTF-8.
pub use sesphr_tlog::entry::canonical_bytes;

/// `SHA-256(prev_hash ‖ canonical_bytes)`.
pub fn chain_hash(prev_hash: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev_hash);
    h.update(canonical);
    h.finalize().into()
}

/// Builds the entry that follows `prev` (`None` = genesis): the event's
/// words become the text that is hashed and stored.
pub fn next_entry(
    prev: Option<(u64, [u8; 32])>,
    time: i64,
    ev: AuditEvent,
    salt: [u8; SALT_LEN],
) -> AuditEntry {
    let (prev_seq, prev_hash) = prev.unwrap_or((0, GENESIS_HASH));
    let mut e = AuditEntry {
        seq: prev_seq + 1,
        time,
        actor: ev.actor,
        action: ev.action.to_string(),
        owner_id: ev.owner_id,
        partition: ev.partition,
        subject: ev.subject,
        record_id: ev.record_id,
        outcome: ev.outcome.as_str().to_owned(),
        detail: ev.detail,
        prev_hash,
        hash: GENESIS_HASH,
        salt,
    };
    e.hash = recompute_hash(&e);
    e
}

/// The bytes the Merkle tree hashes as entry `seq`'s leaf (index `seq - 1`):
/// `0x01 ‖ salt (16 bytes) ‖ canonical bytes`. The salt keeps leaf and
/// subtree hashes of entries a reader may not see from being confirmed by
/// guessing their (low-entropy) fields.
pub fn leaf_data(e: &AuditEntry) -> Vec<u8> {
    sesphr_tlog::entry::leaf_data(e.seq, e.time, e.fields(), &e.salt)
}

/// `SHA-256(0x00 ‖ leaf_data(e))`.
pub fn leaf_hash(e: &AuditEntry) -> [u8; 32] {
    sesphr_tlog::merkle::leaf_hash(&leaf_data(e))
}

/// Whether a stored value predates leaf salts (version 1).
pub fn is_chain_only(v: &[u8]) -> bool {
    v.first() == Some(&VALUE_VERSION_CHAIN_ONLY)
}

/// Recomputes an entry's own hash from its fields and `prev_hash`.
pub fn recompute_hash(e: &AuditEntry) -> [u8; 32] {
    chain_hash(&e.prev_hash, &canonical_bytes(e.seq, e.time, e.fields()))
}

/// The sled key of entry `seq`: big-endian so byte order is numeric order.
pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn key_seq(key: &[u8]) -> Result<u64, DomainError> {
    let arr: [u8; 8] = key.try_into().map_err(|_| {
        DomainError::Corrupt(format!(
            "audit key {} is not an 8-byte sequence number",
            hex::encode(key)
        ))
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// Stored value: version u8 (2) ‖ salt ‖ prev_hash ‖ hash ‖ canonical bytes.
/// (Version 1, read but no longer written, has no salt.)
///
/// The canonical bytes are stored verbatim (rather than re-encoded from a
/// struct) so verification hashes exactly what was written.
pub fn encode_value(e: &AuditEntry) -> Vec<u8> {
    let canonical = canonical_bytes(e.seq, e.time, e.fields());
    let mut out = Vec::with_capacity(1 + SALT_LEN + 64 + canonical.len());
    out.push(VALUE_VERSION);
    out.extend_from_slice(&e.salt);
    out.extend_from_slice(&e.prev_hash);
    out.extend_from_slice(&e.hash);
    out.extend_from_slice(&canonical);
    out
}

/// Parses a stored value; any malformation is `Corrupt`, never a panic.
/// `key_seq` only labels error messages.
pub fn decode_value(key_seq: u64, v: &[u8]) -> Result<AuditEntry, DomainError> {
    let bad = |why: &str| DomainError::Corrupt(format!("audit entry {key_seq}: {why}"));
    let mut r = Reader { buf: v };
    let version = r.u8().ok_or_else(|| bad("empty value"))?;
    let salt = match version {
        VALUE_VERSION => r
            .take(SALT_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("truncated salt"))?,
        VALUE_VERSION_CHAIN_ONLY => [0u8; SALT_LEN],
        _ => return Err(bad(&format!("unknown value version {version}"))),
    };
    let prev_hash = r.hash().ok_or_else(|| bad("truncated prev_hash"))?;
    let hash = r.hash().ok_or_else(|| bad("truncated hash"))?;
    let seq = r.u64().ok_or_else(|| bad("truncated seq"))?;
    let time = r.i64().ok_or_else(|| bad("truncated time"))?;
    let mut s = Vec::with_capacity(8);
    for name in [
        "actor",
        "action",
        "owner_id",
        "partition",
        "subject",
        "record_id",
        "outcome",
        "detail",
    ] {
        let field = r
            .string()
            .ok_or_else(|| bad(&format!("field {name} is truncated or not UTF-8")))?;
        s.push(field);
    }
    if !r.buf.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let mut it = s.into_iter();
    let mut next = || it.next().unwrap_or_default();
    Ok(AuditEntry {
        seq,
        time,
        actor: next(),
        action: next(),
        owner_id: next(),
        partition: next(),
        subject: next(),
        record_id: next(),
        outcome: next(),
        detail: next(),
        prev_hash,
        hash,
        salt,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn hash(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        let bytes = self.take(usize::try_from(n).ok()?)?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

/// Index key of an entry in the per-owner index: owner ‖ 0x00 ‖ seq BE.
/// User ids never contain 0x00, so the prefix `owner ‖ 0x00` is exact.
pub fn owner_index_key(owner_id: &str, seq: u64) -> Vec<u8> {
    let mut k = owner_index_prefix(owner_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn owner_index_prefix(owner_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner_id.len() + 9);
    k.extend_from_slice(owner_id.as_bytes());
    k.push(0);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuditAction, Outcome};

    fn ev(detail: &str) -> AuditEvent {
        AuditEvent {
            actor: "patient/alice".into(),
            action: AuditAction::Grant,
            owner_id: "alice".into(),
            partition: "medical".into(),
            subject: "bob".into(),
            record_id: String::new(),
            outcome: Outcome::Ok,
            detail: detail.into(),
        }
    }

    #[test]
    fn canonical_layout_is_as_documented() {
        let b = canonical_bytes(1, -1, ["a", "", "", "", "", "", "", "xy"]);
        let mut want = vec![0, 0, 0, 0, 0, 0, 0, 1];
        want.extend_from_slice(&[0xff; 8]);
        want.extend_from_slice(&[0, 0, 0, 1, b'a']);
        for _ in 0..6 {
            want.extend_from_slice(&[0, 0, 0, 0]);
        }
        want.extend_from_slice(&[0, 0, 0, 2, b'x', b'y']);
        assert_eq!(b, want);
    }

    #[test]
    fn known_hash_vector() {
        // Pinned so an accidental change of the canonical encoding is caught:
        // SHA-256(32 zero bytes ‖ canonical(1, 1700000000, ev("d"))).
        let e = next_entry(None, 1_700_000_000, ev("d"), [0; SALT_LEN]);
        let mut manual = Sha256::new();
        manual.update([0u8; 32]);
        manual.update(canonical_bytes(
            1,
            1_700_000_000,
            [
                "patient/alice",
                "grant",
                "alice",
                "medical",
                "bob",
                "",
                "ok",
                "d",
            ],
        ));
        let want: [u8; 32] = manual.finalize().into();
        assert_eq!(e.hash, want);
        assert_eq!(e.prev_hash, GENESIS_HASH);
        assert_eq!(e.seq, 1);
    }

    #[test]
    fn value_round_trips_and_rejects_garbage() {
        let e1 = next_entry(None, 5, ev("first"), [1; SALT_LEN]);
        let e2 = next_entry(Some((e1.seq, e1.hash)), 6, ev("second"), [2; SALT_LEN]);
        let v = encode_value(&e2);
        assert_eq!(decode_value(2, &v).unwrap(), e2);
        assert_eq!(recompute_hash(&e2), e2.hash);
        for cut in 0..v.len() {
            assert!(decode_value(2, &v[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = v.clone();
        extra.push(0);
        assert!(decode_value(2, &extra).is_err());
        let mut badver = v;
        badver[0] = 9;
        assert!(decode_value(2, &badver).is_err());
    }

    #[test]
    fn chain_only_values_still_decode() {
        let e = next_entry(None, 5, ev("old"), [9; SALT_LEN]);
        let v2 = encode_value(&e);
        // Version 1 = the same value without the salt.
        let mut v1 = vec![VALUE_VERSION_CHAIN_ONLY];
        v1.extend_from_slice(&v2[1 + SALT_LEN..]);
        assert!(is_chain_only(&v1) && !is_chain_only(&v2));
        let old = decode_value(1, &v1).unwrap();
        assert_eq!(old.salt, [0; SALT_LEN]);
        assert_eq!(old.hash, e.hash);
    }

    #[test]
    fn leaf_layout_is_as_documented() {
        let e = next_entry(None, 7, ev("x"), [0xaa; SALT_LEN]);
        let d = leaf_data(&e);
        assert_eq!(d[0], 1);
        assert_eq!(&d[1..17], &[0xaa; 16]);
        assert_eq!(&d[17..], canonical_bytes(1, 7, e.fields()).as_slice());
        let mut manual = Sha256::new();
        manual.update([0u8]);
        manual.update(&d);
        let want: [u8; 32] = manual.finalize().into();
        assert_eq!(leaf_hash(&e), want);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode_value(1, &bytes);
        }
    }
}
