//! Binary encodings of stored users and kfrag sets.
//!
//! Binary because every field is opaque bytes (keys, certificates, kfrags),
//! which JSON would inflate. All integers big-endian; `str`/`bytes` are
//! `u32 length ‖ bytes`.
//!
//! ```text
//! user  v1: 0x01 ‖ str user_id ‖ str role ‖ bytes pre_public_key ‖
//!           bytes verifying_key ‖ bytes certificate_der ‖ i64 enrolled_at
//! kfrag v1: 0x01 ‖ bytes delegating_public_key ‖ u32 n ‖ n × bytes kfrag ‖
//!           i64 stored_at
//! invitation v1: 0x01 ‖ str user_id ‖ str role ‖ str issued_by ‖
//!           i64 issued_at ‖ i64 expires_at ‖ i64 used_at ‖ u8 reenrollment
//! ```

use crate::{DomainError, Invitation, KfragSet, UserRecord};
use sesphr_domain::codec::Reader;

const VERSION: u8 = 1;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Every field is validated far below 4 GiB before it gets here.
    let n = u32::try_from(b.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
}

pub fn encode_user(u: &UserRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        1 + 5 * 4
            + 8
            + u.user_id.len()
            + 16
            + u.pre_public_key.len()
            + u.verifying_key.len()
            + u.certificate_der.len(),
    );
    out.push(VERSION);
    put_bytes(&mut out, u.user_id.as_bytes());
    put_bytes(&mut out, u.role.as_str().as_bytes());
    put_bytes(&mut out, &u.pre_public_key);
    put_bytes(&mut out, &u.verifying_key);
    put_bytes(&mut out, &u.certificate_der);
    out.extend_from_slice(&u.enrolled_at.to_be_bytes());
    out
}

/// Decodes the user stored under `key`; a record naming another user than
/// its key is `Corrupt`.
pub fn decode_user(key: &[u8], v: &[u8]) -> Result<UserRecord, DomainError> {
    let label = String::from_utf8_lossy(key);
    let bad = |why: &str| DomainError::Corrupt(format!("user {label}: {why}"));
    let mut r = Reader::new(v);
    r.version(VERSION).map_err(|w| bad(&w))?;
    let user_id = r.string().ok_or_else(|| bad("bad user id"))?;
    let role = r.string().ok_or_else(|| bad("bad role"))?;
    let role = role.parse().map_err(|_| bad("unknown role"))?;
    let pre_public_key = r.bytes().ok_or_else(|| bad("truncated PRE key"))?.to_vec();
    let verifying_key = r
        .bytes()
        .ok_or_else(|| bad("truncated verifying key"))?
        .to_vec();
    let certificate_der = r
        .bytes()
        .ok_or_else(|| bad("truncated certificate"))?
        .to_vec();
    let enrolled_at = r.i64().ok_or_else(|| bad("truncated enrolment time"))?;
    r.end().map_err(|w| bad(&w))?;
    if user_id.as_bytes() != key {
        return Err(bad("stored under the wrong key"));
    }
    Ok(UserRecord {
        user_id,
        role,
        pre_public_key,
        verifying_key,
        certificate_der,
        enrolled_at,
    })
}

pub fn encode_kfrags(s: &KfragSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        1 + 4
            + s.delegating_public_key.len()
            + 4
            + s.kfrags.iter().map(|k| 4 + k.len()).sum::<usize>()
            + 8,
    );
    out.push(VERSION);
    put_bytes(&mut out, &s.delegating_public_key);
    let n = u32::try_from(s.kfrags.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    for k in &s.kfrags {
        put_bytes(&mut out, k);
    }
    out.extend_from_slice(&s.stored_at.to_be_bytes());
    out
}

/// `label` only names the set in error messages.
pub fn decode_kfrags(label: &str, v: &[u8]) -> Result<KfragSet, DomainError> {
    let bad = |why: &str| DomainError::Corrupt(format!("kfrags {label}: {why}"));
    let mut r = Reader::new(v);
    r.version(VERSION).map_err(|w| bad(&w))?;
    let delegating_public_key = r
        .bytes()
        .ok_or_else(|| bad("truncated delegating key"))?
        .to_vec();
    let n = r.u32().ok_or_else(|| bad("truncated count"))?;
    // Never trust a stored count for an allocation: grow as kfrags parse.
    let mut kfrags = Vec::new();
    for i in 0..n {
        let k = r
            .bytes()
            .ok_or_else(|| bad(&format!("kfrag {i} of {n} is truncated")))?;
        kfrags.push(k.to_vec());
    }
    let stored_at = r.i64().ok_or_else(|| bad("truncated time"))?;
    r.end().map_err(|w| bad(&w))?;
    Ok(KfragSet {
        delegating_public_key,
        kfrags,
        stored_at,
    })
}

pub fn encode_invitation(i: &Invitation) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 12 + 25 + i.user_id.len() + 16 + i.issued_by.len());
    out.push(VERSION);
    put_bytes(&mut out, i.user_id.as_bytes());
    put_bytes(&mut out, i.role.as_str().as_bytes());
    put_bytes(&mut out, i.issued_by.as_bytes());
    out.extend_from_slice(&i.issued_at.to_be_bytes());
    out.extend_from_slice(&i.expires_at.to_be_bytes());
    out.extend_from_slice(&i.used_at.to_be_bytes());
    out.push(u8::from(i.reenrollment));
    out
}

pub fn decode_invitation(v: &[u8]) -> Result<Invitation, DomainError> {
    let bad = |why: &str| DomainError::Corrupt(format!("an invitation: {why}"));
    let mut r = Reader::new(v);
    r.version(VERSION).map_err(|w| bad(&w))?;
    let user_id = r.string().ok_or_else(|| bad("bad user id"))?;
    let role = r
        .string()
        .ok_or_else(|| bad("bad role"))?
        .parse()
        .map_err(|_| bad("unknown role"))?;
    let issued_by = r.string().ok_or_else(|| bad("bad issuer"))?;
    let issued_at = r.i64().ok_or_else(|| bad("truncated"))?;
    let expires_at = r.i64().ok_or_else(|| bad("truncated"))?;
    let used_at = r.i64().ok_or_else(|| bad("truncated"))?;
    let reenrollment = match r.u8().ok_or_else(|| bad("truncated"))? {
        0 => false,
        1 => true,
        _ => return Err(bad("bad flag")),
    };
    r.end().map_err(|w| bad(&w))?;
    Ok(Invitation {
        user_id,
        role,
        issued_by,
        issued_at,
        expires_at,
        used_at,
        reenrollment,
    })
}

#[cfg(test)]
mod tests {
    use sesphr_identity::Role;

    use super::*;

    fn user() -> UserRecord {
        UserRecord {
            user_id: "bob".into(),
            role: Role::Nurse,
            pre_public_key: vec![2; 33],
            verifying_key: vec![3; 33],
            certificate_der: vec![0x30, 0x82, 1, 2],
            enrolled_at: 42,
        }
    }

    fn set() -> KfragSet {
        KfragSet {
            delegating_public_key: vec![4; 33],
            kfrags: vec![vec![1, 2, 3], vec![4], vec![5; 300]],
            stored_at: -7,
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(decode_user(b"bob", &encode_user(&user())).unwrap(), user());
        assert_eq!(decode_kfrags("x", &encode_kfrags(&set())).unwrap(), set());
    }

    #[test]
    fn rejects_malformed() {
        let u = encode_user(&user());
        let k = encode_kfrags(&set());
        for cut in 0..u.len() {
            assert!(decode_user(b"bob", &u[..cut]).is_err());
        }
        for cut in 0..k.len() {
            assert!(decode_kfrags("x", &k[..cut]).is_err());
        }
        assert!(decode_user(b"eve", &u).is_err());
        let mut extra = k.clone();
        extra.push(1);
        assert!(decode_kfrags("x", &extra).is_err());
        // A huge claimed count with no data behind it.
        let mut huge = vec![VERSION, 0, 0, 0, 0];
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_kfrags("x", &huge).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode_user(b"bob", &bytes);
            let _ = decode_kfrags("x", &bytes);
        }
    }
}
