//! Syntax of user ids, record ids, partition names and device names: each
//! is written here once, and every service and client checks it through
//! these functions.
//!
//! Both end up in certificate SANs, sled keys and file names, so they are
//! restricted to a small lowercase ASCII alphabet with no separators that any
//! of those places would interpret.

use crate::IdentityError;

/// Longest user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 64;
/// Longest partition name, in bytes.
pub const MAX_PARTITION_LEN: usize = 32;
/// Longest record id, in bytes.
pub const MAX_RECORD_ID_LEN: usize = 128;
/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME_LEN: usize = 32;

/// The partitions every client knows by name; any other valid name also works.
pub const STANDARD_PARTITIONS: [&str; 5] =
    ["personal", "medical", "insurance", "prescriptions", "other"];

/// A user id is `[a-z0-9][a-z0-9._-]{0,63}`.
pub fn validate_user_id(id: &str) -> Result<(), IdentityError> {
    let bytes = id.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_USER_ID_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidUserId(truncate_for_error(id)))
    }
}

/// A record id is `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`: wide enough for
/// UUIDs, hex or base64url digests, free of the 0x00 key separator and of
/// path separators (file names are derived from ids through hex anyway).
pub fn validate_record_id(id: &str) -> Result<(), IdentityError> {
    let b = id.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_RECORD_ID_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::InvalidRecordId(truncate_for_error(id)))
    }
}

/// A partition name is `[a-z0-9-]{1,32}`.
pub fn validate_partition(partition: &str) -> Result<(), IdentityError> {
    if short_name(partition, MAX_PARTITION_LEN) {
        Ok(())
    } else {
        Err(IdentityError::InvalidPartition(truncate_for_error(
            partition,
        )))
    }
}

/// A device name (one enrolment of a user, named in its certificate's
/// subject and keyed in the deny list) is `[a-z0-9-]{1,32}`.
pub fn validate_device_name(name: &str) -> Result<(), IdentityError> {
    if short_name(name, MAX_DEVICE_NAME_LEN) {
        Ok(())
    } else {
        Err(IdentityError::InvalidDeviceName(truncate_for_error(name)))
    }
}

/// 1 to `max` bytes of `[a-z0-9-]`: partitions and device names.
fn short_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Hostile input can be megabytes long; error messages quote only its start.
fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        for ok in ["a", "alice", "0", "dr.bob_2-x", &"a".repeat(64)] {
            validate_user_id(ok).unwrap();
        }
        for bad in [
            "",
            "Alice",
            ".a",
            "-a",
            "_a",
            "a b",
            "a/b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(validate_user_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn device_names() {
        for ok in ["a", "laptop-2", "0", &"d".repeat(MAX_DEVICE_NAME_LEN)] {
            validate_device_name(ok).unwrap();
        }
        for bad in [
            "",
            "Laptop",
            "a b",
            "x/y",
            "a.b",
            "a_b",
            "é",
            &"d".repeat(MAX_DEVICE_NAME_LEN + 1),
        ] {
            assert!(validate_device_name(bad).is_err(), "{bad:?}");
        }
        // A status message quotes no megabyte of the caller's.
        let huge = "x".repeat(1 << 20);
        assert!(validate_device_name(&huge).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn record_ids() {
        for ok in ["r1", "Ab-9_x.Y", "0123abcd", &"x".repeat(MAX_RECORD_ID_LEN)] {
            assert!(validate_record_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-r",
            ".r",
            "a/b",
            "../x",
            "a\0b",
            "a b",
            "é",
            &"x".repeat(MAX_RECORD_ID_LEN + 1),
        ] {
            let e = validate_record_id(bad).unwrap_err();
            assert!(
                e.to_string().contains("not a valid record id"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn partitions() {
        for ok in STANDARD_PARTITIONS {
            validate_partition(ok).unwrap();
        }
        validate_partition(&"p".repeat(32)).unwrap();
        for bad in [
            "",
            "Medical",
            "med.ical",
            "med_ical",
            "a/b",
            &"p".repeat(33),
        ] {
            assert!(validate_partition(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn long_input_is_truncated_in_errors() {
        let err = validate_user_id(&"X".repeat(10_000)).unwrap_err();
        assert!(err.to_string().len() < 300);
    }
}
