//! Binary encodings of stored users and kfrag sets.
//!
//! Binary because every field is opaque bytes (keys, certificates, kfrags),
//! which JSON would inflate. All integers big-endian; `str`/`bytes` are
//! `u32 length ‖ bytes`.
//!
//! ```text
//! user  v2: 0x02 ‖ str user_id ‖ str role ‖ bytes pre_public_key ‖
//!           bytes verifying_key ‖ bytes certificate_der ‖ i64 enrolled_at ‖
//!           u32 n ‖ n × (str name ‖ i64 added_at ‖ i64 issued_at ‖
//!           i64 not_after ‖ i64 removed_at)
//! user  v1: 0x01 ‖ the same up to enrolled_at (read as one device,
//!           `device-1`, holding certificate_der)
//! kfrag v1: 0x01 ‖ bytes delegating_public_key ‖ u32 n ‖ n × bytes kfrag ‖
//!           i64 stored_at
//! invitation v1: 0x01 ‖ str user_id ‖ str role ‖ str issued_by ‖
//!           i64 issued_at ‖ i64 expires_at ‖ i64 used_at ‖ u8 reenrollment
//! ```

use crate::devices::DeviceRecord;
use crate::{DomainError, Invitation, KfragSet, RecoveryRecord, UserRecord};
use sesphr_domain::codec::Reader;

const VERSION: u8 = 1;
const USER_VERSION: u8 = 2;

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
    out.push(USER_VERSION);
    put_bytes(&mut out, u.user_id.as_bytes());
    put_bytes(&mut out, u.role.as_str().as_bytes());
    put_bytes(&mut out, &u.pre_public_key);
    put_bytes(&mut out, &u.verifying_key);
    put_bytes(&mut out, &u.certificate_der);
    out.extend_from_slice(&u.enrolled_at.to_be_bytes());
    out.extend_from_slice(&(u.devices.len() as u32).to_be_bytes());
    for d in &u.devices {
        put_bytes(&mut out, d.name.as_bytes());
        for t in [d.added_at, d.issued_at, d.not_after, d.removed_at] {
            out.extend_from_slice(&t.to_be_bytes());
        }
    }
    out
}

/// Decodes the user stored under `key`; a record naming another user than
/// its key is `Corrupt`.
pub fn decode_user(key: &[u8], v: &[u8]) -> Result<UserRecord, DomainError> {
    let label = String::from_utf8_lossy(key);
    let bad = |why: &str| DomainError::Corrupt(format!("user {label}: {why}"));
    let mut r = Reader::new(v);
    let version = match v.first() {
        Some(&1) => 1,
        _ => 2,
    };
    r.version(if version == 1 { VERSION } else { USER_VERSION })
        .map_err(|w| bad(&w))?;
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
    let devices = if version == 1 {
        // Enrolled before devices had names: its one certificate is the
        // first device's.
        let (issued_at, not_after) =
            sesphr_mesh::trust::validity(&certificate_der).unwrap_or((enrolled_at, enrolled_at));
        vec![DeviceRecord {
            name: sesphr_mesh::trust::LEGACY_DEVICE.to_owned(),
            added_at: enrolled_at,
            issued_at,
            not_after,
            removed_at: 0,
        }]
    } else {
        let n = r.u32().ok_or_else(|| bad("truncated device count"))?;
        let mut devices = Vec::new();
        for i in 0..n {
            let name = r
                .string()
                .ok_or_else(|| bad(&format!("device {i} of {n}: bad name")))?;
            let mut t = [0i64; 4];
            for x in &mut t {
                *x = r
                    .i64()
                    .ok_or_else(|| bad(&format!("device {i} of {n} is truncated")))?;
            }
            devices.push(DeviceRecord {
                name,
                added_at: t[0],
                issued_at: t[1],
                not_after: t[2],
                removed_at: t[3],
            });
        }
        devices
    };
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
        devices,
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

/// `recovery v1: 0x01 ‖ u32 threshold ‖ i64 created_at ‖ u32 n ‖
/// n × (str trustee_id ‖ bytes sealed_share)`
pub fn encode_recovery(r: &RecoveryRecord) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&r.threshold.to_be_bytes());
    out.extend_from_slice(&r.created_at.to_be_bytes());
    out.extend_from_slice(&(r.shares.len() as u32).to_be_bytes());
    for (trustee, share) in &r.shares {
        put_bytes(&mut out, trustee.as_bytes());
        put_bytes(&mut out, share);
    }
    out
}

pub fn decode_recovery(owner: &str, v: &[u8]) -> Result<RecoveryRecord, DomainError> {
    let bad = |why: &str| DomainError::Corrupt(format!("recovery setup of {owner}: {why}"));
    let mut r = Reader::new(v);
    r.version(VERSION).map_err(|w| bad(&w))?;
    let threshold = r.u32().ok_or_else(|| bad("truncated"))?;
    let created_at = r.i64().ok_or_else(|| bad("truncated"))?;
    let n = r.u32().ok_or_else(|| bad("truncated"))?;
    let mut shares = Vec::new();
    for _ in 0..n {
        let trustee = r.string().ok_or_else(|| bad("bad trustee"))?;
        let share = r.bytes().ok_or_else(|| bad("truncated share"))?.to_vec();
        shares.push((trustee, share));
    }
    r.end().map_err(|w| bad(&w))?;
    Ok(RecoveryRecord {
        threshold,
        created_at,
        shares,
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
            devices: vec![
                DeviceRecord {
                    name: "device-1".into(),
                    added_at: 42,
                    issued_at: 40,
                    not_after: 1000,
                    removed_at: 0,
                },
                DeviceRecord {
                    name: "phone".into(),
                    added_at: 50,
                    issued_at: 50,
                    not_after: 2000,
                    removed_at: 70,
                },
            ],
        }
    }

    /// A record written before devices: one device, `device-1`.
    #[test]
    fn a_v1_user_reads_as_one_device() {
        let u = user();
        let mut v1 = vec![1u8];
        put_bytes(&mut v1, u.user_id.as_bytes());
        put_bytes(&mut v1, u.role.as_str().as_bytes());
        put_bytes(&mut v1, &u.pre_public_key);
        put_bytes(&mut v1, &u.verifying_key);
        put_bytes(&mut v1, &u.certificate_der);
        v1.extend_from_slice(&u.enrolled_at.to_be_bytes());
        let read = decode_user(b"bob", &v1).unwrap();
        assert_eq!(read.devices.len(), 1);
        assert_eq!(read.devices[0].name, "device-1");
        assert!(read.devices[0].is_active());
        assert_eq!(read.pre_public_key, u.pre_public_key);
    }

    #[test]
    fn recovery_round_trips() {
        let r = RecoveryRecord {
            threshold: 2,
            created_at: 99,
            shares: vec![("bob".into(), vec![1; 100]), ("carol".into(), vec![2; 3])],
        };
        let v = encode_recovery(&r);
        assert_eq!(decode_recovery("alice", &v).unwrap(), r);
        for cut in 0..v.len() {
            assert!(decode_recovery("alice", &v[..cut]).is_err());
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
            let _ = decode_recovery("x", &bytes);
        }
    }
}
