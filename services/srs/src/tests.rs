use std::sync::Arc;

use super::*;

const T0: i64 = 1_700_000_000;

fn store() -> (tempfile::TempDir, SrsStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SrsStore::open(dir.path()).unwrap();
    (dir, s)
}

fn user(id: &str, role: Role) -> UserRecord {
    UserRecord {
        user_id: id.into(),
        role,
        pre_public_key: vec![2; 33],
        verifying_key: vec![3; 33],
        certificate_der: vec![0x30, 0x82, 0, 1, 0xff],
        enrolled_at: T0,
    }
}

fn set(tag: u8) -> KfragSet {
    KfragSet {
        delegating_public_key: vec![4; 33],
        kfrags: vec![vec![tag; 200], vec![tag.wrapping_add(1); 200]],
        stored_at: T0,
    }
}

fn invalid<T: std::fmt::Debug>(r: Result<T, DomainError>) -> String {
    match r {
        Err(DomainError::Malformed(m)) => m,
        Err(DomainError::BadName(e)) => e.to_string(),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SrsStore>();
}

#[test]
fn register_and_look_up() {
    let (_d, s) = store();
    assert_eq!(s.users_count().unwrap(), 0);
    s.register_user(user("alice", Role::Patient)).unwrap();
    s.register_user(user("bob", Role::Doctor)).unwrap();
    assert_eq!(s.users_count().unwrap(), 2);
    assert_eq!(s.user("bob").unwrap(), Some(user("bob", Role::Doctor)));
    assert_eq!(s.user("carol").unwrap(), None);
    invalid(s.user("Bob"));
}

#[test]
fn user_ids_are_taken_whatever_the_role() {
    let (_d, s) = store();
    s.register_user(user("bob", Role::Doctor)).unwrap();
    let mut imposter = user("bob", Role::Nurse);
    imposter.pre_public_key = vec![9; 33];
    let e = s.register_user(imposter).unwrap_err();
    assert!(matches!(e, DomainError::Exists(_)), "{e:?}");
    assert!(e.to_string().contains("bob"));
    assert_eq!(s.user("bob").unwrap(), Some(user("bob", Role::Doctor)));
    assert_eq!(s.users_count().unwrap(), 1);
}

#[test]
fn concurrent_registration_admits_one() {
    let (_d, s) = store();
    let s = Arc::new(s);
    let handles: Vec<_> = Role::ALL
        .into_iter()
        .map(|role| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || s.register_user(user("same", role)).is_ok())
        })
        .collect();
    let ok = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(ok, 1);
    assert_eq!(s.users_count().unwrap(), 1);
}

#[test]
fn user_validation() {
    let (_d, s) = store();
    invalid(s.register_user(user("", Role::Doctor)));
    invalid(s.register_user(user("a b", Role::Doctor)));
    let mut u = user("bob", Role::Doctor);
    u.pre_public_key.clear();
    assert!(invalid(s.register_user(u)).contains("PRE public key is missing"));
    let mut u = user("bob", Role::Doctor);
    u.verifying_key = vec![0; MAX_PUBLIC_KEY_LEN + 1];
    invalid(s.register_user(u));
    let mut u = user("bob", Role::Doctor);
    u.certificate_der = vec![0; MAX_CERTIFICATE_LEN + 1];
    invalid(s.register_user(u));
    assert_eq!(s.users_count().unwrap(), 0);
}

#[test]
fn kfrags_put_get_replace() {
    let (_d, s) = store();
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
}

#[test]
fn kfrag_validation() {
    let (_d, s) = store();
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
    assert!(s.kfrags.is_empty());
}

#[test]
fn delete_one_epoch_or_all() {
    let (_d, s) = store();
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

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SrsStore::open(dir.path()).unwrap();
        s.register_user(user("alice", Role::Patient)).unwrap();
        s.register_user(user("bob", Role::Doctor)).unwrap();
        s.put_kfrags("alice", "medical", 4, "bob", set(7)).unwrap();
        s.put_kfrags("alice", "medical", 5, "bob", set(8)).unwrap();
        s.delete_kfrags("alice", "medical", "bob", Some(5)).unwrap();
    }
    let s = SrsStore::open(dir.path()).unwrap();
    assert_eq!(s.users_count().unwrap(), 2);
    assert_eq!(s.user("alice").unwrap(), Some(user("alice", Role::Patient)));
    assert_eq!(
        s.kfrags("alice", "medical", 4, "bob").unwrap(),
        Some(set(7))
    );
    assert_eq!(s.kfrags("alice", "medical", 5, "bob").unwrap(), None);
    let e = s.register_user(user("bob", Role::Nurse)).unwrap_err();
    assert!(matches!(e, DomainError::Exists(_)));
}

#[test]
fn corrupt_values_are_reported() {
    let (_d, s) = store();
    s.users.insert("mallory", &b"\x01\xff\xff"[..]).unwrap();
    assert!(matches!(s.user("mallory"), Err(DomainError::Corrupt(_))));
    // A valid record copied under another id.
    s.register_user(user("bob", Role::Doctor)).unwrap();
    let v = s.users.get("bob").unwrap().unwrap();
    s.users.insert("eve", v).unwrap();
    assert!(matches!(s.user("eve"), Err(DomainError::Corrupt(_))));

    s.kfrags
        .insert(kfrag_key("alice", "medical", "bob", 0), &b"\x01"[..])
        .unwrap();
    assert!(matches!(
        s.kfrags("alice", "medical", 0, "bob"),
        Err(DomainError::Corrupt(_))
    ));
    let mut short = kfrag_prefix("alice", "medical", "carol");
    short.push(1);
    s.kfrags.insert(short, &b""[..]).unwrap();
    assert!(matches!(
        s.kfrag_epochs("alice", "medical", "carol"),
        Err(DomainError::Corrupt(_))
    ));
}
