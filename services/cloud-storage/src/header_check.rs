//! What CloudStorage may check about an encrypted record without reading it.

use sesphr_crypto::RecordHeader;
use sesphr_crypto::record::DemKeySource;

use crate::DomainError;

/// Rejects an upload whose encoded record header does not parse or names
/// another owner, record, partition or epoch than the upload itself. The
/// header is authenticated data of every ciphertext segment, so a client
/// that lies here only makes its own record undecryptable; checking keeps the
/// cloud's metadata honest and catches client bugs early.
pub fn check_header_matches(
    header_bytes: &[u8],
    owner_id: &str,
    record_id: &str,
    partition: &str,
    epoch: u32,
    deduplicated: bool,
) -> Result<(), DomainError> {
    let header = RecordHeader::from_bytes(header_bytes)
        .map_err(|e| DomainError::Malformed(format!("record_header does not parse: {e}")))?;
    let mismatch = |field: &str, in_header: &str, expected: &str| {
        DomainError::Malformed(format!(
            "record_header names {field} {in_header:?} but the upload is for {expected:?}"
        ))
    };
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if header.owner_id() != owner_id.as_bytes() {
        return Err(mismatch("owner", &lossy(header.owner_id()), owner_id));
    }
    if header.record_id() != record_id.as_bytes() {
        return Err(mismatch("record", &lossy(header.record_id()), record_id));
    }
    if header.partition() != partition {
        return Err(mismatch("partition", header.partition(), partition));
    }
    let expected = if deduplicated {
        DemKeySource::External
    } else {
        DemKeySource::Kem
    };
    if header.key_source() != expected {
        return Err(DomainError::Malformed(if deduplicated {
            "a deduplicated record's header must use an external key (its content key is wrapped)"
        } else {
            "a record with ciphertext chunks must take its key from its capsule (key_source 0)"
        }
        .into()));
    }
    if header.epoch() != epoch {
        return Err(mismatch(
            "epoch",
            &header.epoch().to_string(),
            &epoch.to_string(),
        ));
    }
    Ok(())
}
