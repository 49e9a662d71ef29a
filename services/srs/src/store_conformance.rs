//! What every [`Store`] backend must do, as one check run against each
//! (today: sled, in `tests`). A new backend adds one test calling
//! [`check`] on a fresh, empty store.

use crate::{
    DomainError, Invitation, InviteLimits, KfragSet, MAX_CERTIFICATE_LEN, MAX_KFRAG_LEN,
    MAX_KFRAGS, Redeem,
};
use crate::{MAX_PUBLIC_KEY_LEN, Store, UserRecord};
use sesphr_identity::Role;

pub const T0: i64 = 1_700_000_000;

pub fn user(id: &str, role: Role) -> UserRecord {
    UserRecord {
        user_id: id.into(),
        role,
        pre_public_key: vec![2; 33],
        verifying_key: vec![3; 33],
        certificate_der: vec![0x30, 0x82, 0, 1, 0xff],
        enrolled_at: T0,
        devices: vec![device("device-1", T0)],
    }
}

pub fn device(name: &str, at: i64) -> crate::devices::DeviceRecord {
    crate::devices::DeviceRecord {
        name: name.into(),
        added_at: at,
        issued_at: at,
        not_after: at + 30 * 86_400,
        removed_at: 0,
    }
}

pub fn set(tag: u8) -> KfragSet {
    KfragSet {
        delegating_public_key: vec![4; 33],
        kfrags: vec![vec![tag; 200], vec![tag.wrapping_add(1); 200]],
        stored_at: T0,
    }
}

/// The message of an error a client is told is its own (a bad name or a
/// malformed field); panics on anything else.
pub fn invalid<T: std::fmt::Debug>(r: Result<T, DomainError>) -> String {
    match r {
        Err(DomainError::Malformed(m)) => m,
        Err(DomainError::BadName(e)) => e.to_string(),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Runs every check on `s`, which must be empty.
pub fn check(s: &dyn Store) {
    users(s);
    user_validation(s);
    kfrags_put_get_replace(s);
    kfrag_validation(s);
    delete_one_epoch_or_all(s);
    service_secrets(s);
    invitations(s);
}

fn users(s: &dyn Store) {
    assert_eq!(s.users_count().unwrap(), 0);
    s.register_user(user("alice", Role::Patient)).unwrap();
    s.register_user(user("bob", Role::Doctor)).unwrap();
    assert_eq!(s.users_count().unwrap(), 2);
    assert_eq!(s.user("bob").unwrap(), Some(user("bob", Role::Doctor)));
    assert_eq!(s.user("carol").unwrap(), None);
    invalid(s.user("Bob"));
    // A user id is taken for good, whatever the role.
    let mut imposter = user("bob", Role::Nurse);
    imposter.pre_public_key = vec![9; 33];
    let e = s.register_user(imposter).unwrap_err();
    assert!(matches!(e, DomainError::Exists(_)), "{e:?}");
    assert!(e.to_string().contains("bob"));
    assert_eq!(s.user("bob").unwrap(), Some(user("bob", Role::Doctor)));
    assert_eq!(s.users_count().unwrap(), 2);
}

fn user_validation(s: &dyn Store) {
    let before = s.users_count().unwrap();
    invalid(s.register_user(user("", Role::Doctor)));
    invalid(s.register_user(user("a b", Role::Doctor)));
    let mut u = user("val", Role::Doctor);
    u.pre_public_key.clear();
    assert!(invalid(s.register_user(u)).contains("PRE public key is missing"));
    let mut u = user("val", Role::Doctor);
    u.verifying_key = vec![0; MAX_PUBLIC_KEY_LEN + 1];
    invalid(s.register_user(u));
    let mut u = user("val", Role::Doctor);
    u.certificate_der = vec![0; MAX_CERTIFICATE_LEN + 1];
    invalid(s.register_user(u));
    assert_eq!(s.users_count().unwrap(), before);
    assert_eq!(s.user("val").unwrap(), None);
}

fn kfrags_put_get_replace(s: &dyn Store) {
    assert_eq!(s.kfrags("alice", "medical", 0, "bob").unwrap(), None);
    s.put_kfrags("alice", "medical", 0, "bob", set(1)).unwrap();
    s.put_kfrags("alice", "medical", 1, "bob", set(2)).unwrap();
    assert_eq!(
        s.kfrags("alice", "medical", 0, "bob").unwrap(),
        Some(set(1))
    );
    s.put_kfrags("alice", "medical", 0, "bob", set(3)).unwrap();
    assert_eq!(
        s.kfrags("alice", "medical", 0, "bob").unwrap(),
        Some(set(3))
    );
    // Other partitions, grantees and owners are separate.
    assert_eq!(s.kfrags("alice", "insurance", 0, "bob").unwrap(), None);
    assert_eq!(s.kfrags("alice", "medical", 0, "bobby").unwrap(), None);
    assert_eq!(s.kfrags("alicia", "medical", 0, "bob").unwrap(), None);
    assert_eq!(s.kfrag_epochs("alice", "medical", "bob").unwrap(), [0, 1]);
    assert_eq!(s.delete_kfrags("alice", "medical", "bob", None).unwrap(), 2);
}

fn kfrag_validation(s: &dyn Store) {
    invalid(s.put_kfrags("Alice", "medical", 0, "bob", set(1)));
    invalid(s.put_kfrags("alice", "med ical", 0, "bob", set(1)));
    invalid(s.put_kfrags("alice", "medical", 0, "", set(1)));
    assert!(invalid(s.put_kfrags("alice", "medical", 0, "alice", set(1))).contains("themselves"));
    let mut k = set(1);
    k.kfrags.clear();
    invalid(s.put_kfrags("alice", "medical", 0, "bob", k));
    let mut k = set(1);
    k.kfrags = vec![vec![1]; MAX_KFRAGS + 1];
    invalid(s.put_kfrags("alice", "medical", 0, "bob", k));
    let mut k = set(1);
    k.kfrags[1].clear();
    assert!(invalid(s.put_kfrags("alice", "medical", 0, "bob", k)).contains("kfrag 1"));
    let mut k = set(1);
    k.kfrags[0] = vec![0; MAX_KFRAG_LEN + 1];
    invalid(s.put_kfrags("alice", "medical", 0, "bob", k));
    let mut k = set(1);
    k.delegating_public_key.clear();
    invalid(s.put_kfrags("alice", "medical", 0, "bob", k));
    invalid(s.kfrags("alice", "medical", 0, "BOB"));
    invalid(s.delete_kfrags("alice", "", "bob", None));
    assert!(
        s.kfrag_epochs("alice", "medical", "bob")
            .unwrap()
            .is_empty()
    );
}

fn delete_one_epoch_or_all(s: &dyn Store) {
    for e in [0, 1, 2, 300] {
        s.put_kfrags("alice", "medical", e, "bob", set(e as u8))
            .unwrap();
    }
    s.put_kfrags("alice", "medical", 0, "bobby", set(9))
        .unwrap();
    s.put_kfrags("alice", "insurance", 0, "bob", set(9))
        .unwrap();
    assert_eq!(
        s.delete_kfrags("alice", "medical", "bob", Some(1)).unwrap(),
        1
    );
    assert_eq!(
        s.delete_kfrags("alice", "medical", "bob", Some(1)).unwrap(),
        0
    );
    assert_eq!(
        s.kfrag_epochs("alice", "medical", "bob").unwrap(),
        [0, 2, 300]
    );
    assert_eq!(s.delete_kfrags("alice", "medical", "bob", None).unwrap(), 3);
    assert_eq!(s.delete_kfrags("alice", "medical", "bob", None).unwrap(), 0);
    assert!(
        s.kfrag_epochs("alice", "medical", "bob")
            .unwrap()
            .is_empty()
    );
    // A grantee whose id extends "bob", and another partition, are untouched.
    assert!(s.kfrags("alice", "medical", 0, "bobby").unwrap().is_some());
    assert!(s.kfrags("alice", "insurance", 0, "bob").unwrap().is_some());
}

fn service_secrets(s: &dyn Store) {
    let a = s.service_secret("oprf").unwrap();
    assert_eq!(*s.service_secret("oprf").unwrap(), *a);
    assert_ne!(*s.service_secret("other").unwrap(), *a);
    assert_ne!(*a, [0; 32], "drawn at random, not left zero");
}

fn invitations(s: &dyn Store) {
    let inv = |id: &str, issued_at: i64, expires_at: i64| Invitation {
        user_id: id.into(),
        role: Role::Friend,
        issued_by: "patient/alice".into(),
        issued_at,
        expires_at,
        used_at: 0,
        reenrollment: false,
    };
    let limits = Some(InviteLimits {
        open: 2,
        per_day: 2,
    });
    s.put_invitation([1; 32], inv("dave", T0, T0 + 3600), limits, T0)
        .unwrap();
    assert_eq!(
        s.invitation(&[1; 32]).unwrap(),
        Some(inv("dave", T0, T0 + 3600))
    );
    assert_eq!(s.invitation(&[9; 32]).unwrap(), None);
    s.put_invitation([2; 32], inv("erin", T0, T0 + 3600), limits, T0)
        .unwrap();
    // Two open: the third is over the cap.
    assert!(matches!(
        s.put_invitation([3; 32], inv("fay", T0, T0 + 3600), limits, T0),
        Err(DomainError::UsedUp(_))
    ));
    // Redeeming marks it used and takes the id, once.
    s.redeem_invitation(
        Some(&[1; 32]),
        Redeem::Enroll(user("dave", Role::Friend)),
        T0 + 5,
    )
    .unwrap();
    assert_eq!(s.invitation(&[1; 32]).unwrap().unwrap().used_at, T0 + 5);
    assert!(s.user("dave").unwrap().is_some());
    assert!(matches!(
        s.redeem_invitation(
            Some(&[1; 32]),
            Redeem::Enroll(user("dave2", Role::Friend)),
            T0 + 6
        ),
        Err(DomainError::Conflict(_))
    ));
    assert!(s.user("dave2").unwrap().is_none(), "nothing applied");
    // A failed redemption (the id is taken) leaves the invitation unused.
    assert!(matches!(
        s.redeem_invitation(
            Some(&[2; 32]),
            Redeem::Enroll(user("dave", Role::Friend)),
            T0 + 7
        ),
        Err(DomainError::Exists(_))
    ));
    assert_eq!(s.invitation(&[2; 32]).unwrap().unwrap().used_at, 0);
    // One open now, but two issued today: the daily cap holds.
    let r = s.put_invitation([3; 32], inv("fay", T0, T0 + 3600), limits, T0 + 10);
    assert!(matches!(r, Err(DomainError::UsedUp(_))), "{r:?}");
    // Long expired ones are forgotten when their inviter invites again.
    let later = T0 + 3600 + crate::INVITATION_RETENTION_SECS + 86_400 + 1;
    s.put_invitation([4; 32], inv("gus", later, later + 3600), limits, later)
        .unwrap();
    assert_eq!(s.invitation(&[1; 32]).unwrap(), None);
    // A re-enrolment adds a device to an enrolled user only, under a
    // name not in use.
    let cert = vec![0x30, 0x03, 1, 2, 3];
    let reenrol = |name: &str| Redeem::Reenroll {
        user_id: "dave".into(),
        certificate_der: cert.clone(),
        device: device(name, later),
    };
    s.redeem_invitation(None, reenrol("phone"), later).unwrap();
    let dave = s.user("dave").unwrap().unwrap();
    assert_eq!(dave.certificate_der, cert);
    let names: Vec<_> = dave.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["device-1", "phone"]);
    assert!(matches!(
        s.redeem_invitation(None, reenrol("phone"), later),
        Err(DomainError::Exists(_))
    ));
    let ghost = Redeem::Reenroll {
        user_id: "nobody".into(),
        certificate_der: cert.clone(),
        device: device("x", later),
    };
    assert!(matches!(
        s.redeem_invitation(None, ghost, later),
        Err(DomainError::Unknown(_))
    ));
    // An update changes the record atomically, refuses whole, and never
    // changes the id or keys.
    let updated = s
        .update_user("dave", &mut |u| {
            u.devices[1].removed_at = later + 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(s.user("dave").unwrap().unwrap(), updated);
    assert!(matches!(
        s.update_user("dave", &mut |_| Err(DomainError::NotEntitled("no".into()))),
        Err(DomainError::NotEntitled(_))
    ));
    assert_eq!(s.user("dave").unwrap().unwrap(), updated);
    assert!(
        s.update_user("dave", &mut |u| {
            u.verifying_key = vec![9; 33];
            Ok(())
        })
        .is_err()
    );
    assert!(matches!(
        s.update_user("nobody", &mut |_| Ok(())),
        Err(DomainError::Unknown(_))
    ));
    // Recovery setups: one per owner, replaced whole.
    assert_eq!(s.recovery("dave").unwrap(), None);
    let setup = |t| crate::RecoveryRecord {
        threshold: t,
        created_at: later,
        shares: vec![("bob".into(), vec![1; 90]), ("carol".into(), vec![2; 90])],
    };
    s.put_recovery("dave", setup(2)).unwrap();
    s.put_recovery("dave", setup(1)).unwrap();
    assert_eq!(s.recovery("dave").unwrap(), Some(setup(1)));
    let mut huge = setup(2);
    huge.shares[0].1 = vec![0; crate::MAX_SEALED_SHARE_LEN + 1];
    assert!(s.put_recovery("dave", huge).is_err());
}
