use std::sync::Arc;

use super::*;
use crate::store_conformance::{self, set, user};

fn store() -> (tempfile::TempDir, SrsStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = open_at(dir.path());
    (dir, s)
}

#[test]
fn sled_store_conforms() {
    let (_d, s) = store();
    store_conformance::check(&s);
}

#[test]
fn service_secrets_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = *open_at(dir.path()).service_secret("oprf").unwrap();
    let s = open_at(dir.path());
    assert_eq!(*s.service_secret("oprf").unwrap(), first);
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SrsStore>();
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
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open_at(dir.path());
        s.register_user(user("alice", Role::Patient)).unwrap();
        s.register_user(user("bob", Role::Doctor)).unwrap();
        s.put_kfrags("alice", "medical", 4, "bob", set(7)).unwrap();
        s.put_kfrags("alice", "medical", 5, "bob", set(8)).unwrap();
        s.delete_kfrags("alice", "medical", "bob", Some(5)).unwrap();
    }
    let s = open_at(dir.path());
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

/// The store in `dir`, opened at once after an earlier handle closed (sled
/// may still hold that one's lock for a moment).
fn open_at(dir: &std::path::Path) -> SrsStore {
    sesphr_domain::reopen::retry_lock(|| SrsStore::open(dir)).expect("the store opens")
}
