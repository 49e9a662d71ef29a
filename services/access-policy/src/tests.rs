use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use sesphr::rpc::Rpc;

/// An action that is nothing special to the store.
const GET_RECORD: AuditAction = AuditAction::Served(Rpc::GetRecord);

/// A baseline event the tests override field by field.
impl Default for AuditEvent {
    fn default() -> Self {
        AuditEvent {
            actor: String::new(),
            action: GET_RECORD,
            owner_id: String::new(),
            partition: String::new(),
            subject: String::new(),
            record_id: String::new(),
            outcome: Outcome::Ok,
            detail: String::new(),
        }
    }
}

const T0: i64 = 1_700_000_000;
const DAY: i64 = 86_400;

/// A store opened, waiting out the lock of one just closed.
fn retry_lock<T, E: std::fmt::Debug>(open: impl FnMut() -> Result<T, E>) -> T {
    sesphr_domain::reopen::retry_lock(open).expect("the store opens")
}

fn store() -> (tempfile::TempDir, PolicyStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = retry_lock(|| PolicyStore::open(dir.path()));
    (dir, s)
}

fn grant(grantee: &str, role: Role) -> Grant {
    Grant {
        owner_id: "alice".into(),
        partition: "medical".into(),
        grantee_id: grantee.into(),
        grantee_role: role,
        epoch_min: 0,
        epoch_max: Some(2),
        not_before: T0,
        expires_at: Some(T0 + 30 * DAY),
        granted_at: 0,
    }
}

fn query(grantee: &str, role: Role, epoch: u32) -> CheckQuery {
    CheckQuery {
        owner_id: "alice".into(),
        partition: "medical".into(),
        grantee_id: grantee.into(),
        grantee_role: role,
        epoch,
        record_created_at: None,
        record_id: None,
        action: Action::Read,
    }
}

fn all_entries(s: &PolicyStore) -> Vec<AuditEntry> {
    s.audit(&AuditFilter {
        owner_id: None,
        after_seq: 0,
        limit: MAX_AUDIT_PAGE,
    })
    .unwrap()
}

/// Flips one letter of an entry's `detail` (the last bytes of the value)
/// directly in sled, as an attacker with disk access would.
fn tamper_detail(s: &PolicyStore, seq: u64) {
    let mut v = s.audit.get(seq.to_be_bytes()).unwrap().unwrap().to_vec();
    let last = v.len() - 1;
    v[last] = if v[last] == b'x' { b'y' } else { b'x' };
    s.audit.insert(seq.to_be_bytes(), v).unwrap();
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyStore>();
}

#[test]
fn grant_then_check_allows_and_audits() {
    let (_d, s) = store();
    let g = s
        .grant(grant("bob", Role::Doctor), "patient/alice", T0)
        .unwrap();
    assert_eq!(g.granted_at, T0);
    let d = s
        .check(
            &query("bob", Role::Doctor, 1),
            "service/cloud-storage",
            T0 + 10,
        )
        .unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reason, "granted until 2023-12-14T22:13:20Z");
    assert_eq!(d.grant.as_ref(), Some(&g), "an allow carries its grant");

    let log = all_entries(&s);
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].action, "grant");
    assert_eq!(log[0].actor, "patient/alice");
    assert_eq!(log[0].subject, "bob");
    assert_eq!(log[1].action, "check:read");
    assert_eq!(log[1].outcome, "allowed");
    assert!(log[1].detail.contains("granted until"), "{}", log[1].detail);
    assert_eq!(log[1].prev_hash, log[0].hash);
    assert_eq!(s.audit_head(), Some((2, log[1].hash)));
}

#[test]
fn every_denial_reason() {
    let (_d, s) = store();
    s.grant(grant("bob", Role::Doctor), "patient/alice", T0 - 10)
        .unwrap();
    let deny = |q: CheckQuery, now: i64| {
        let d = s.check(&q, "service/srs", now).unwrap();
        assert!(!d.allowed, "{q:?} allowed: {}", d.reason);
        d.reason
    };
    assert_eq!(
        deny(query("carol", Role::Doctor, 0), T0),
        "no grant from alice to carol on partition medical"
    );
    assert_eq!(
        deny(query("bob", Role::Nurse, 0), T0),
        "grant is for role doctor, caller is nurse"
    );
    assert_eq!(
        deny(query("bob", Role::Doctor, 0), T0 - 1),
        "grant not valid before 2023-11-14T22:13:20Z"
    );
    assert_eq!(
        deny(query("bob", Role::Doctor, 0), T0 + 30 * DAY),
        "grant expired at 2023-12-14T22:13:20Z"
    );
    assert_eq!(
        deny(query("bob", Role::Doctor, 3), T0),
        "epoch 3 outside granted range 0..=2"
    );
    let mut q = query("bob", Role::Doctor, 0);
    q.record_created_at = Some(T0 - 1);
    assert!(deny(q.clone(), T0).starts_with("record created before not_before"));
    q.record_created_at = Some(T0);
    assert!(s.check(&q, "service/srs", T0).unwrap().allowed);
    let mut other = query("bob", Role::Doctor, 0);
    other.partition = "insurance".into();
    assert!(deny(other, T0).starts_with("no grant"));

    let denied = all_entries(&s)
        .iter()
        .filter(|e| e.outcome == "denied")
        .count();
    assert_eq!(denied, 7);
}

#[test]
fn open_ended_epochs_and_expiry() {
    let (_d, s) = store();
    let mut g = grant("dave", Role::Family);
    g.epoch_min = 2;
    g.epoch_max = None;
    g.expires_at = None;
    s.grant(g, "patient/alice", T0).unwrap();
    let d = s
        .check(&query("dave", Role::Family, 1), "x", T0 + 1000 * DAY)
        .unwrap();
    assert_eq!(d.reason, "epoch 1 outside granted range 2..");
    let d = s
        .check(&query("dave", Role::Family, 99), "x", T0 + 1000 * DAY)
        .unwrap();
    assert!(d.allowed);
    assert_eq!(d.reason, "granted with no expiry");
}

#[test]
fn owner_always_allowed_and_audited() {
    let (_d, s) = store();
    let mut q = query("alice", Role::Patient, 42);
    q.action = Action::List;
    let d = s.check(&q, "patient/alice", T0).unwrap();
    assert!(d.allowed);
    assert!(d.grant.is_none(), "owners need no grant");
    // Same id with another role is not the owner.
    let d = s.check(&query("alice", Role::Doctor, 0), "x", T0).unwrap();
    assert!(!d.allowed);
    let log = all_entries(&s);
    assert_eq!(log[0].action, "check:list");
    assert_eq!(log[0].outcome, "allowed");
    assert_eq!(log[1].outcome, "denied");
}

#[test]
fn grant_validation() {
    let (_d, s) = store();
    let bad = |g: Grant| {
        let e = s.grant(g, "patient/alice", T0).unwrap_err();
        assert!(
            matches!(e, DomainError::Malformed(_) | DomainError::BadName(_)),
            "{e:?}"
        );
        e.to_string()
    };
    let mut g = grant("bob", Role::Doctor);
    g.grantee_id = "alice".into();
    assert!(bad(g).contains("themselves"));
    let mut g = grant("bob", Role::Doctor);
    g.owner_id = "Alice".into();
    assert!(bad(g).contains("invalid user id"));
    let mut g = grant("bob", Role::Doctor);
    g.partition = "med/ical".into();
    assert!(bad(g).contains("invalid partition"));
    let mut g = grant("bob", Role::Doctor);
    g.epoch_min = 3;
    assert!(bad(g).contains("empty"));
    let mut g = grant("bob", Role::Doctor);
    g.expires_at = Some(g.not_before);
    assert!(bad(g).contains("before it starts"));
    let mut g = grant("bob", Role::Doctor);
    g.not_before = T0 - 10 * DAY;
    g.expires_at = Some(T0);
    assert!(bad(g).contains("already be expired"));
    let e = s.grant(grant("bob", Role::Doctor), "", T0).unwrap_err();
    assert!(matches!(e, DomainError::Malformed(_)));
    // A patient may grant another patient.
    s.grant(grant("carol", Role::Patient), "patient/alice", T0)
        .unwrap();
    // Nothing invalid was audited.
    assert_eq!(all_entries(&s).len(), 1);
}

#[test]
fn grant_replaces_and_lists() {
    let (_d, s) = store();
    s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
        .unwrap();
    let mut g2 = grant("bob", Role::Nurse);
    g2.epoch_max = Some(5);
    s.grant(g2.clone(), "patient/alice", T0 + 1).unwrap();
    let mut g3 = grant("carol", Role::Pharmacist);
    g3.partition = "prescriptions".into();
    s.grant(g3, "patient/alice", T0 + 2).unwrap();
    let mut g4 = grant("bob", Role::Doctor);
    g4.owner_id = "erin".into();
    s.grant(g4, "patient/erin", T0 + 3).unwrap();

    let given = s.grants_given("alice").unwrap();
    assert_eq!(given.len(), 2);
    assert_eq!(given[0].grantee_id, "bob");
    assert_eq!(given[0].grantee_role, Role::Nurse);
    assert_eq!(given[0].epoch_max, Some(5));
    assert_eq!(given[0].granted_at, T0 + 1);
    assert_eq!(given[1].grantee_id, "carol");

    let received = s.grants_received("bob").unwrap();
    let owners: Vec<_> = received.iter().map(|g| g.owner_id.as_str()).collect();
    assert_eq!(owners, ["alice", "erin"]);
    assert!(s.grants_received("carol").unwrap().len() == 1);
    assert!(s.grants_given("nobody").unwrap().is_empty());
    assert!(s.grants_given("NOPE").is_err());

    let log = all_entries(&s);
    assert!(
        log[1].detail.contains("replaces role doctor"),
        "{}",
        log[1].detail
    );
}

#[test]
fn revoke_removes_and_audits() {
    let (_d, s) = store();
    s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
        .unwrap();
    let e = s
        .revoke("alice", "medical", "carol", "patient/alice", T0)
        .unwrap_err();
    assert!(matches!(e, DomainError::Unknown(_)), "{e:?}");
    assert!(e.to_string().contains("carol"));
    let old = s
        .revoke("alice", "medical", "bob", "patient/alice", T0 + 5)
        .unwrap();
    assert_eq!(old.grantee_role, Role::Doctor);
    assert!(s.grants_given("alice").unwrap().is_empty());
    assert!(s.grants_received("bob").unwrap().is_empty());
    let d = s
        .check(&query("bob", Role::Doctor, 0), "x", T0 + 6)
        .unwrap();
    assert!(!d.allowed);
    let log = all_entries(&s);
    let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
    // The failed revoke left no entry.
    assert_eq!(actions, ["grant", "revoke", "check:read"]);
    assert!(s.verify_audit(None).unwrap().ok);
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let head;
    {
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
            .unwrap();
        s.check(&query("bob", Role::Doctor, 0), "x", T0 + 1)
            .unwrap();
        head = s.audit_head().unwrap();
    }
    let s = retry_lock(|| PolicyStore::open(dir.path()));
    assert_eq!(s.audit_head(), Some(head));
    assert_eq!(s.grants_given("alice").unwrap().len(), 1);
    let d = s
        .check(&query("bob", Role::Doctor, 0), "x", T0 + 2)
        .unwrap();
    assert!(d.allowed);
    let log = all_entries(&s);
    assert_eq!(log.len(), 3);
    assert_eq!(log[2].prev_hash, head.1);
    let r = s.verify_audit(Some(head)).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!((r.entries, r.head_seq), (3, 3));
    assert_eq!(r.head_hash, log[2].hash);
}

#[test]
fn record_event_and_filters() {
    let (_d, s) = store();
    for (i, owner) in ["alice", "bob", "alice", "", "alice"].iter().enumerate() {
        let e = s
            .record_event(
                AuditEvent {
                    actor: "service/cloud-storage".into(),
                    action: GET_RECORD,
                    owner_id: (*owner).into(),
                    outcome: Outcome::Denied,
                    detail: format!("event {i}"),
                    ..Default::default()
                },
                T0 + i as i64,
            )
            .unwrap()
            .expect("within the refusal budget: written individually");
        assert_eq!(e.seq, i as u64 + 1);
        assert_eq!(e.time, T0 + i as i64);
        assert_eq!(e.computed_hash(), e.hash);
    }
    let page = |owner: Option<&str>, after_seq, limit| {
        s.audit(&AuditFilter {
            owner_id: owner.map(Into::into),
            after_seq,
            limit,
        })
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect::<Vec<_>>()
    };
    assert_eq!(page(None, 0, 0), [1, 2, 3, 4, 5]);
    assert_eq!(page(None, 2, 2), [3, 4]);
    assert_eq!(page(Some("alice"), 0, 10), [1, 3, 5]);
    assert_eq!(page(Some("alice"), 1, 1), [3]);
    assert_eq!(page(Some("alice"), 5, 10), Vec::<u64>::new());
    assert_eq!(page(Some("bob"), 0, 10), [2]);
    assert_eq!(page(Some("carol"), 0, 10), Vec::<u64>::new());
    assert_eq!(page(None, u64::MAX, 10), Vec::<u64>::new());
    assert!(
        s.audit(&AuditFilter {
            owner_id: Some("Bad Id".into()),
            ..Default::default()
        })
        .is_err()
    );

    for bad in [
        AuditEvent {
            action: GET_RECORD,
            ..Default::default()
        },
        AuditEvent {
            actor: "a".into(),
            subject: "s".repeat(MAX_AUDIT_FIELD_LEN + 1),
            ..Default::default()
        },
        AuditEvent {
            actor: "a".into(),
            action: GET_RECORD,
            owner_id: "NOT VALID".into(),
            ..Default::default()
        },
        AuditEvent {
            actor: "a".into(),
            action: GET_RECORD,
            detail: "d".repeat(MAX_AUDIT_FIELD_LEN + 1),
            ..Default::default()
        },
    ] {
        let e = s.record_event(bad, T0).unwrap_err();
        assert!(
            matches!(e, DomainError::Malformed(_) | DomainError::BadName(_)),
            "{e:?}"
        );
    }
    assert!(s.verify_audit(None).unwrap().ok);
}

fn populated(n: u64) -> (tempfile::TempDir, PolicyStore) {
    let (d, s) = store();
    for i in 0..n {
        s.record_event(
            AuditEvent {
                actor: "service/srs".into(),
                action: AuditAction::Served(Rpc::ReEncrypt),
                owner_id: "alice".into(),
                outcome: Outcome::Ok,
                detail: format!("n={i}"),
                ..Default::default()
            },
            T0 + i as i64,
        )
        .unwrap();
    }
    (d, s)
}

#[test]
fn verify_detects_edited_entry() {
    let (_d, s) = populated(5);
    assert!(s.verify_audit(None).unwrap().ok);
    tamper_detail(&s, 3);
    let r = s.verify_audit(None).unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(3));
    assert_eq!((r.entries, r.head_seq), (2, 2));
    assert!(r.problem.unwrap().contains("modified"));
    // Reading the page still works; the forged text is visible but flagged.
    assert_eq!(all_entries(&s).len(), 5);
}

#[test]
fn verify_detects_edited_entry_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        for i in 0..4 {
            s.grant(
                grant(&format!("user{i}"), Role::Doctor),
                "patient/alice",
                T0,
            )
            .unwrap();
        }
    }
    {
        // Edit entry 2 with sled directly while the service is down.
        let db = retry_lock(|| sled::open(dir.path()));
        let t = db.open_tree("audit").unwrap();
        let mut v = t.get(2u64.to_be_bytes()).unwrap().unwrap().to_vec();
        let pos = v.len() - 3;
        v[pos] ^= 0x01;
        t.insert(2u64.to_be_bytes(), v).unwrap();
        db.flush().unwrap();
    }
    let s = retry_lock(|| PolicyStore::open(dir.path()));
    let r = s.verify_audit(None).unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(2));
}

#[test]
fn verify_detects_gap() {
    let (_d, s) = populated(5);
    s.audit.remove(3u64.to_be_bytes()).unwrap();
    let r = s.verify_audit(None).unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(3));
    assert!(r.problem.unwrap().contains("missing"));
}

#[test]
fn verify_detects_reordering() {
    let (_d, s) = populated(5);
    let v2 = s.audit.get(2u64.to_be_bytes()).unwrap().unwrap();
    let v3 = s.audit.get(3u64.to_be_bytes()).unwrap().unwrap();
    s.audit.insert(2u64.to_be_bytes(), v3).unwrap();
    s.audit.insert(3u64.to_be_bytes(), v2).unwrap();
    let r = s.verify_audit(None).unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(2));
}

#[test]
fn verify_detects_dropped_index_entry() {
    let (_d, s) = populated(3);
    s.audit_by_owner
        .remove(audit::owner_index_key("alice", 2))
        .unwrap();
    let r = s.verify_audit(None).unwrap();
    assert!(!r.ok);
    assert_eq!(r.first_bad_seq, Some(2));
}

#[test]
fn verify_detects_rewritten_tail_against_published_head() {
    let dir = tempfile::tempdir().unwrap();
    let published;
    {
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        for i in 0..4 {
            s.record_event(
                AuditEvent {
                    actor: "a".into(),
                    action: GET_RECORD,
                    detail: format!("original {i}"),
                    ..Default::default()
                },
                T0,
            )
            .unwrap();
        }
        published = s.audit_head().unwrap();
        assert_eq!(published.0, 4);
    }
    {
        // An insider truncates the log to 2 entries while the service is down.
        let db = retry_lock(|| sled::open(dir.path()));
        let t = db.open_tree("audit").unwrap();
        t.remove(3u64.to_be_bytes()).unwrap();
        t.remove(4u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    {
        // The Merkle tree still has four leaves: the store notices.
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        let ev = AuditEvent {
            actor: "a".into(),
            action: GET_RECORD,
            ..Default::default()
        };
        let e = s.record_event(ev, T0).unwrap_err();
        assert!(e.to_string().contains("4 leaves"), "{e}");
    }
    {
        // So the insider drops the tree too; it is rebuilt on open.
        let db = retry_lock(|| sled::open(dir.path()));
        db.drop_tree("audit_tree").unwrap();
        db.flush().unwrap();
    }
    {
        // The truncated chain is internally consistent...
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        assert!(s.verify_audit(None).unwrap().ok);
        // ...but not against the published head.
        let r = s.verify_audit(Some(published)).unwrap();
        assert!(!r.ok);
        assert_eq!(r.first_bad_seq, Some(3));
        assert!(r.problem.unwrap().contains("removed"));
        // Then rewrites it with two different but well-chained entries.
        for i in 0..2 {
            s.record_event(
                AuditEvent {
                    actor: "a".into(),
                    action: GET_RECORD,
                    detail: format!("forged {i}"),
                    ..Default::default()
                },
                T0,
            )
            .unwrap();
        }
        assert!(s.verify_audit(None).unwrap().ok);
        let r = s.verify_audit(Some(published)).unwrap();
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.first_bad_seq, Some(4));
        assert!(r.problem.unwrap().contains("rewritten"));
        // An honest earlier head still checks out.
        let e2 = all_entries(&s)[1].clone();
        assert!(s.verify_audit(Some((2, e2.hash))).unwrap().ok);
    }
}

#[test]
fn verify_notices_tail_removed_while_running() {
    let (_d, s) = populated(3);
    s.audit.remove(3u64.to_be_bytes()).unwrap();
    let r = s.verify_audit(None).unwrap();
    assert!(!r.ok);
    assert!(r.problem.unwrap().contains("appended up to entry 3"));
}

#[test]
fn damaged_tail_on_open_blocks_appends() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
            .unwrap();
        s.grant(grant("carol", Role::Doctor), "patient/alice", T0)
            .unwrap();
        tamper_detail(&s, 2);
        s.db.flush().unwrap();
    }
    let s = retry_lock(|| PolicyStore::open(dir.path()));
    let e = s
        .check(&query("bob", Role::Doctor, 0), "x", T0)
        .unwrap_err();
    assert!(matches!(e, DomainError::Corrupt(_)), "{e:?}");
    let e = s
        .revoke("alice", "medical", "bob", "patient/alice", T0)
        .unwrap_err();
    assert!(matches!(e, DomainError::Corrupt(_)), "{e:?}");
    // The refused revoke changed nothing.
    assert_eq!(s.grants_given("alice").unwrap().len(), 2);
    let r = s.verify_audit(None).unwrap();
    assert_eq!(r.first_bad_seq, Some(2));
}

#[test]
fn garbage_in_trees_is_corrupt_not_panic() {
    let (_d, s) = store();
    s.grants
        .insert(grant_key("alice", "medical", "bob"), &b"{not json"[..])
        .unwrap();
    assert!(matches!(
        s.grants_given("alice"),
        Err(DomainError::Corrupt(_))
    ));
    assert!(matches!(
        s.check(&query("bob", Role::Doctor, 0), "x", T0),
        Err(DomainError::Corrupt(_))
    ));
    s.grants.clear().unwrap();
    // A valid grant copied under another key is rejected too.
    let v = encode_grant(&grant("bob", Role::Doctor)).unwrap();
    s.grants
        .insert(grant_key("alice", "medical", "mallory"), v)
        .unwrap();
    assert!(matches!(
        s.grants_given("alice"),
        Err(DomainError::Corrupt(_))
    ));
    s.audit.insert(b"short", &b"x"[..]).unwrap();
    let r = s.verify_audit(None).unwrap();
    assert!(!r.ok);
    assert!(s.audit(&AuditFilter::default()).is_err());
}

#[test]
fn concurrent_checks_keep_the_chain_contiguous() {
    let (_d, s) = store();
    let s = Arc::new(s);
    s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..10 {
                    let role = if i % 2 == 0 {
                        Role::Doctor
                    } else {
                        Role::Nurse
                    };
                    s.check(&query("bob", role, t), "x", T0 + 1).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let r = s.verify_audit(None).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.entries, 41);
}

#[test]
fn action_names_round_trip() {
    for a in Action::ALL {
        assert_eq!(a.as_str().parse::<Action>().unwrap(), a);
    }
    assert!("write".parse::<Action>().is_err());
}

#[test]
fn odd_tail_keys_on_open_do_not_panic() {
    // Seq 0 is the last (only) key in the first case, "short" sorts after
    // every 8-byte big-endian seq in the second.
    for (key, first) in [(vec![0u8; 8], false), (b"short".to_vec(), true)] {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = retry_lock(|| PolicyStore::open(dir.path()));
            if first {
                s.record_event(
                    AuditEvent {
                        actor: "a".into(),
                        action: GET_RECORD,
                        ..Default::default()
                    },
                    T0,
                )
                .unwrap();
            }
            s.audit.insert(key, &b"junk"[..]).unwrap();
            s.db.flush().unwrap();
        }
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        let e = s
            .record_event(
                AuditEvent {
                    actor: "a".into(),
                    action: GET_RECORD,
                    ..Default::default()
                },
                T0,
            )
            .unwrap_err();
        assert!(matches!(e, DomainError::Corrupt(_)), "{e:?}");
        assert!(!s.verify_audit(None).unwrap().ok);
    }
}

/// A denial tells the asking service's caller only what its own grant says;
/// the record's epoch and creation time stay in the owner's audit entry.
#[test]
fn caller_reasons_name_nothing_about_the_record() {
    let (_d, s) = store();
    s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
        .unwrap();
    let now = T0 + DAY;
    let nobody = s
        .check(&query("mallory", Role::Doctor, 0), "svc", now)
        .unwrap();
    assert!(!nobody.allowed);
    assert_eq!(nobody.caller_reason, "no grant covers it");
    assert!(nobody.reason.contains("medical"), "{}", nobody.reason);
    let old = CheckQuery {
        record_created_at: Some(T0 - DAY),
        ..query("bob", Role::Doctor, 1)
    };
    let out_of_range = query("bob", Role::Doctor, 7);
    for q in [old, out_of_range] {
        let d = s.check(&q, "svc", now).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.caller_reason, "the grant does not cover it");
        assert_ne!(
            d.reason, d.caller_reason,
            "the owner's entry keeps the detail"
        );
    }
    // Facts of the caller's own grant are its to hear.
    let late = s
        .check(&query("bob", Role::Doctor, 1), "svc", T0 + 31 * DAY)
        .unwrap();
    assert!(
        late.caller_reason.contains("expired"),
        "{}",
        late.caller_reason
    );
}

/// A LIST check is about the partition: the epoch range is applied by the
/// asking service to each record through the returned grant.
#[test]
fn list_checks_return_the_grant_whatever_the_epoch() {
    let (_d, s) = store();
    s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
        .unwrap();
    let q = CheckQuery {
        action: Action::List,
        ..query("bob", Role::Doctor, 99)
    };
    let d = s.check(&q, "svc", T0 + DAY).unwrap();
    assert!(d.allowed, "{}", d.reason);
    assert_eq!(d.grant.unwrap().epoch_max, Some(2));
    let read = s
        .check(&query("bob", Role::Doctor, 99), "svc", T0 + DAY)
        .unwrap();
    assert!(!read.allowed, "a READ of epoch 99 stays out of range");
}

/// The leading count of a coalesced entry's detail ("N further ...").
fn coalesced_count(e: &AuditEntry) -> Option<u64> {
    let (n, rest) = e.detail.split_once(' ')?;
    rest.starts_with("further ").then(|| n.parse().ok())?
}

fn owner_view(s: &PolicyStore, owner: &str) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    loop {
        let page = s
            .audit(&AuditFilter {
                owner_id: Some(owner.into()),
                after_seq: out.last().map_or(0, |e: &AuditEntry| e.seq),
                limit: MAX_AUDIT_PAGE,
            })
            .unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

#[test]
fn a_flood_of_refusals_is_coalesced_into_the_owners_view() {
    use coalesce::{REFUSAL_BURST, REFUSALS_PER_SEC};
    let (_d, s) = store();
    s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
        .unwrap();
    let before = s.audit_head().unwrap().0;
    let started = Instant::now();
    let (mut denied, mut allowed) = (0u64, 0u64);
    for i in 0..5_000 {
        // Bounded: without coalescing every refusal costs an fsync.
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
        let d = s
            .check(
                &query("mallory", Role::Patient, 1),
                "service/cloud-storage",
                T0 + 10,
            )
            .unwrap();
        assert!(!d.allowed, "the decision is unchanged");
        denied += 1;
        if i % 50 == 0 {
            let d = s
                .check(
                    &query("bob", Role::Doctor, 1),
                    "service/cloud-storage",
                    T0 + 10,
                )
                .unwrap();
            assert!(d.allowed);
            allowed += 1;
        }
    }
    let elapsed = started.elapsed();
    let added = s.audit_head().unwrap().0 - before;
    eprintln!(
        "{denied} refusals and {allowed} allowed checks in {elapsed:?} added {added} entries"
    );
    assert_eq!(denied, 5_000, "only {denied} refusals in {elapsed:?}");
    // Burst, refill over the run, a due aggregate or two, the allowed ones.
    let bound = u64::from(REFUSAL_BURST)
        + (REFUSALS_PER_SEC * elapsed.as_secs_f64()).ceil() as u64
        + 2
        + allowed;
    assert!(
        added <= bound && added - allowed <= 250,
        "5,000 refusals in {elapsed:?} added {added} entries (bound {bound})"
    );
    assert!(s.pending_coalesced() > 0);
    s.flush_all_coalesced(T0 + 11).unwrap();
    assert_eq!(s.pending_coalesced(), 0);

    // Alice sees every refusal: individually or counted in a coalesced entry.
    let view = owner_view(&s, "alice");
    let mallory: Vec<_> = view
        .iter()
        .filter(|e| e.subject == "patient/mallory")
        .collect();
    assert!(
        mallory
            .iter()
            .all(|e| e.outcome == "denied" && e.action == "check:read")
    );
    let individual = mallory
        .iter()
        .filter(|e| coalesced_count(e).is_none())
        .count() as u64;
    let counted: u64 = mallory.iter().filter_map(|e| coalesced_count(e)).sum();
    assert_eq!(individual + counted, 5_000, "{individual} + {counted}");
    let agg = mallory
        .iter()
        .find(|e| coalesced_count(e).is_some())
        .unwrap();
    assert!(
        agg.detail
            .contains("further refusals of check:read by patient/mallory between"),
        "{}",
        agg.detail
    );
    // Allowed checks are never coalesced.
    let bob_allowed = view
        .iter()
        .filter(|e| e.subject == "doctor/bob" && e.outcome == "allowed")
        .count() as u64;
    assert_eq!(bob_allowed, allowed);
    assert!(s.verify_audit(None).unwrap().ok);
}

#[test]
fn denied_events_are_budgeted_per_refused_subject_not_per_relaying_service() {
    let (_d, s) = store();
    let ev = |subject: &str| AuditEvent {
        actor: "service/cloud-storage".into(),
        action: AuditAction::Denied(Rpc::GetRecord),
        owner_id: "alice".into(),
        subject: subject.into(),
        outcome: Outcome::Denied,
        detail: "no".into(),
        ..Default::default()
    };
    let mut written = 0;
    let started = std::time::Instant::now();
    for _ in 0..500 {
        written += s.record_event(ev("patient/mallory"), T0).unwrap().is_some() as u32;
    }
    // The budget refills in real time while the (fsyncing) loop runs.
    let refilled = (started.elapsed().as_secs_f64() * coalesce::REFUSALS_PER_SEC).ceil() as u32;
    assert!(
        written <= coalesce::REFUSAL_BURST + refilled + 1,
        "{written} written, {refilled} refilled"
    );
    assert!(written < 500, "refusals are budgeted");
    // Another user relayed by the same service still gets her own budget.
    assert!(s.record_event(ev("patient/carol"), T0).unwrap().is_some());
    // Not a refusal: always written.
    let mut ok = ev("patient/mallory");
    ok.action = GET_RECORD;
    ok.outcome = Outcome::Ok;
    assert!(s.record_event(ok, T0).unwrap().is_some());
}

#[test]
fn dropping_the_store_writes_pending_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        for _ in 0..200 {
            s.check(&query("mallory", Role::Patient, 0), "service/srs", T0)
                .unwrap();
        }
        assert!(s.pending_coalesced() > 0);
    }
    let s = retry_lock(|| PolicyStore::open(dir.path()));
    let counted: u64 = owner_view(&s, "alice")
        .iter()
        .map(|e| coalesced_count(e).unwrap_or(1))
        .sum();
    assert_eq!(counted, 200);
    assert!(s.verify_audit(None).unwrap().ok);
}

/// Appends `n` entries of `owner` in large transactions (one fsync per 1000).
fn bulk_append(s: &PolicyStore, n: usize, owner: &str) {
    for chunk in 0..n.div_ceil(1000) {
        let events: Vec<AuditEvent> = (0..1000.min(n - chunk * 1000))
            .map(|i| AuditEvent {
                actor: "service/srs".into(),
                action: AuditAction::Served(Rpc::ReEncrypt),
                owner_id: owner.into(),
                outcome: Outcome::Ok,
                detail: format!("bulk {chunk}/{i}"),
                ..Default::default()
            })
            .collect();
        s.submit(T0, move |_| Ok(((), events))).unwrap();
    }
}

#[test]
fn verification_does_not_block_appends() {
    let (_d, s) = store();
    let s = Arc::new(s);
    // Grow the log until one verification takes long enough to measure
    // against (bounded).
    let mut alone = Duration::ZERO;
    let mut size = 0;
    for step in [20_000, 40_000, 80_000, 160_000] {
        bulk_append(&s, step, "alice");
        size += step;
        let t = Instant::now();
        assert!(s.verify_audit(None).unwrap().ok);
        alone = t.elapsed();
        if alone >= Duration::from_millis(400) {
            break;
        }
    }
    eprintln!("verifying {size} entries takes {alone:?}");
    let v = {
        let s = s.clone();
        std::thread::spawn(move || {
            let r = s.verify_audit(None);
            (r, Instant::now())
        })
    };
    std::thread::sleep(alone / 10);
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let t = Instant::now();
        s.record_event(
            AuditEvent {
                actor: "service/srs".into(),
                action: AuditAction::Served(Rpc::ReEncrypt),
                owner_id: "bob".into(),
                outcome: Outcome::Ok,
                detail: format!("during verification {i}"),
                ..Default::default()
            },
            T0,
        )
        .unwrap()
        .unwrap();
        slowest = slowest.max(t.elapsed());
    }
    let appended = Instant::now();
    let (r, verified) = v.join().unwrap();
    let r = r.unwrap();
    eprintln!("slowest append during verification: {slowest:?}");
    assert!(r.ok, "{r:?}");
    assert!(
        appended < verified,
        "the appends waited for the verification (slowest {slowest:?}, verification {alone:?})"
    );
    // The concurrent verification saw a consistent prefix; the next sees all.
    assert!(r.head_seq >= size as u64);
    let r = s.verify_audit(None).unwrap();
    assert_eq!(r.head_seq, size as u64 + 5);
}

#[test]
fn an_owner_learns_only_about_her_own_entries() {
    let (_d, s) = store();
    bulk_append(&s, 30, "bob");
    s.grant(grant("carol", Role::Nurse), "patient/alice", T0)
        .unwrap();
    bulk_append(&s, 7, "");
    let global = s.verify_audit(None).unwrap();
    assert_eq!(global.entries, 38);
    let mine = s.verify_audit_for("alice", None).unwrap();
    assert!(mine.ok);
    assert_eq!(mine.entries, 1, "{mine:?}");
    assert_eq!(mine.head_seq, 31);
    let own = owner_view(&s, "alice");
    assert_eq!(mine.head_hash, own[0].hash);
    // Her published head checks out; someone else's entry does not.
    assert!(
        s.verify_audit_for("alice", Some((31, own[0].hash)))
            .unwrap()
            .ok
    );
    let bobs = owner_view(&s, "bob");
    let r = s
        .verify_audit_for("alice", Some((1, bobs[0].hash)))
        .unwrap();
    assert!(!r.ok);
    assert!(
        s.verify_audit_for("alice", Some((1_000, [1; 32])))
            .unwrap()
            .problem
            .is_some()
    );
    // A broken chain says so, without naming where.
    assert_eq!(s.verify_audit_for("dave", None).unwrap().entries, 0);
    tamper_detail(&s, 3);
    let r = s.verify_audit_for("alice", None).unwrap();
    assert!(!r.ok);
    let problem = r.problem.unwrap();
    assert!(!problem.contains('3'), "{problem}");
}

#[test]
fn audit_listings_are_audited_without_flooding() {
    let (_d, s) = store();
    let before = s.audit_head().map_or(0, |h| h.0);
    for i in 0..200 {
        s.record_audit_listing("patient/alice", Some("alice"), i, 10, T0)
            .unwrap();
    }
    let added = s.audit_head().unwrap().0 - before;
    assert_eq!(added, u64::from(coalesce::AUDIT_READ_BURST));
    // Listing her own view adds nothing to it.
    assert!(owner_view(&s, "alice").is_empty());
    s.flush_all_coalesced(T0 + 1).unwrap();
    let all = all_entries(&s);
    let last = all.last().unwrap();
    assert_eq!(last.action, "list_audit");
    assert_eq!(coalesced_count(last), Some(200 - 3), "{}", last.detail);
    assert!(s.verify_audit(None).unwrap().ok);
}

/// Existence probes (`QueryBlob`, content-key evaluations, directory
/// lookups) share the refusal budget: a flood of them is counted, not
/// written one by one, and every one is accounted for.
#[test]
fn probes_share_the_refusal_budget() {
    let (_d, s) = store();
    let probe = AuditEvent {
        actor: "service/cloud-storage".into(),
        action: AuditAction::Served(Rpc::QueryBlob),
        owner_id: "mallory".into(),
        subject: "patient/mallory".into(),
        outcome: Outcome::Probe,
        detail: "blob 0011223344556677: not stored".into(),
        ..Default::default()
    };
    for _ in 0..1000 {
        s.record_event(probe.clone(), T0).unwrap();
    }
    s.flush_all_coalesced(T0 + 5).unwrap();
    let all = all_entries(&s);
    assert!(all.len() < 200, "{} entries for 1000 probes", all.len());
    let accounted: u64 = all.iter().map(|e| coalesced_count(e).unwrap_or(1)).sum();
    assert_eq!(accounted, 1000);
    assert!(all.iter().any(|e| e.detail.contains("further probes")));
}

mod transparency {
    use super::*;
    use sesphr_tlog::merkle::{self, MemoryTree};
    use sesphr_tlog::{Checkpoint, Cosignature, SigningKey, check_advance};

    fn log_key() -> SigningKey {
        SigningKey::from_hex(&"11".repeat(32)).unwrap()
    }

    fn event(detail: &str) -> AuditEvent {
        AuditEvent {
            actor: "service/cloud-storage".into(),
            owner_id: "alice".into(),
            detail: detail.into(),
            ..Default::default()
        }
    }

    fn append(s: &PolicyStore, n: usize) {
        for i in 0..n {
            s.record_event(event(&format!("e{i}")), T0).unwrap();
        }
    }

    /// The stored tree is the RFC 9162 tree of the entries' leaf data, and
    /// its proofs verify against an independent in-memory tree's roots.
    #[test]
    fn tree_matches_the_entries_and_proves_them() {
        let (_d, s) = store();
        append(&s, 13);
        let cp = s.publish_checkpoint(&log_key(), "o", T0).unwrap().unwrap();
        log_key().public_key().verify_checkpoint(&cp).unwrap();
        let entries = all_entries(&s);
        let mut mem = MemoryTree::new();
        for e in &entries {
            mem.push(&e.leaf_data());
        }
        assert_eq!(cp.checkpoint.size, 13);
        assert_eq!(cp.checkpoint.root, mem.root());
        let indexes: Vec<u64> = entries.iter().map(|e| e.leaf_index()).collect();
        let proofs = s.inclusion_proofs(13, &indexes).unwrap();
        for (e, p) in entries.iter().zip(&proofs) {
            let leaf = merkle::leaf_hash(&e.leaf_data());
            merkle::verify_inclusion(e.leaf_index(), 13, &leaf, p, &mem.root()).unwrap();
        }
        // No new entries, no new checkpoint; then one that extends it.
        assert!(s.publish_checkpoint(&log_key(), "o", T0).unwrap().is_none());
        append(&s, 6);
        let cp2 = s
            .publish_checkpoint(&log_key(), "o", T0 - 5)
            .unwrap()
            .unwrap();
        assert_eq!(
            cp2.checkpoint.time, T0,
            "a checkpoint's time never goes back"
        );
        let proof = s.consistency_proof(13, 19).unwrap();
        check_advance(&cp.checkpoint, &cp2.checkpoint, &proof).unwrap();
        // Proofs only at published sizes, in bounds, in bounded batches.
        assert!(matches!(
            s.inclusion_proofs(14, &[0]),
            Err(DomainError::Unknown(_))
        ));
        assert!(matches!(
            s.inclusion_proofs(19, &[19]),
            Err(DomainError::Malformed(_))
        ));
        assert!(s.inclusion_proofs(19, &[0; 257]).is_err());
        assert!(s.consistency_proof(13, 15).is_err());
        assert!(s.consistency_proof(20, 19).is_err());
        assert!(s.consistency_proof(0, 19).is_err());
    }

    #[test]
    fn every_entry_has_its_own_salt() {
        let (_d, s) = store();
        append(&s, 3);
        let e = all_entries(&s);
        assert_ne!(e[0].salt, e[1].salt);
        assert_ne!(e[0].salt, [0; 16]);
    }

    #[test]
    fn cosignatures_are_kept_per_witness_and_checkpoint() {
        let (_d, s) = store();
        assert!(s.witnessed_checkpoint(0).unwrap().is_none());
        append(&s, 2);
        let cp = s.publish_checkpoint(&log_key(), "o", T0).unwrap().unwrap();
        let w = SigningKey::from_hex(&"22".repeat(32)).unwrap();
        let body = cp.checkpoint.body();
        let co = w.cosign("srs-node-1", T0, &cp.checkpoint);
        assert!(s.witnessed_checkpoint(1).unwrap().is_none());
        s.add_cosignature("srs-node-1", &body, &co).unwrap();
        // Idempotent, and the first one stays.
        let later = w.cosign("srs-node-1", T0 + 9, &cp.checkpoint);
        s.add_cosignature("srs-node-1", &body, &later).unwrap();
        let (got, cosigs) = s.witnessed_checkpoint(1).unwrap().unwrap();
        assert_eq!(got, cp);
        assert_eq!(cosigs, vec![co.clone()]);
        // Another witness's name, an unknown size, another body: refused.
        assert!(matches!(
            s.add_cosignature("srs-node-2", &body, &co),
            Err(DomainError::NotEntitled(_))
        ));
        let other = Checkpoint {
            size: 5,
            ..cp.checkpoint.clone()
        };
        assert!(matches!(
            s.add_cosignature("srs-node-1", &other.body(), &co),
            Err(DomainError::Unknown(_))
        ));
        let forged = Checkpoint {
            root: [9; 32],
            ..cp.checkpoint.clone()
        };
        assert!(matches!(
            s.add_cosignature("srs-node-1", &forged.body(), &co),
            Err(DomainError::Conflict(_))
        ));
        assert!(s.add_cosignature("srs-node-1", "garbage", &co).is_err());
        // A newer checkpoint without cosignatures: min 1 still finds the old.
        append(&s, 1);
        let cp2 = s.publish_checkpoint(&log_key(), "o", T0).unwrap().unwrap();
        assert_eq!(s.witnessed_checkpoint(0).unwrap().unwrap().0, cp2);
        assert_eq!(s.witnessed_checkpoint(1).unwrap().unwrap().0, cp);
    }

    #[test]
    fn pruning_keeps_the_newest_witnessed_checkpoints() {
        let (_d, s) = store();
        let w = SigningKey::from_hex(&"22".repeat(32)).unwrap();
        append(&s, 1);
        let first = s.publish_checkpoint(&log_key(), "o", T0).unwrap().unwrap();
        let co: Cosignature = w.cosign("cloud-storage", T0, &first.checkpoint);
        s.add_cosignature("cloud-storage", &first.checkpoint.body(), &co)
            .unwrap();
        for _ in 0..(tlog::KEPT_CHECKPOINTS + 40) {
            append(&s, 1);
            s.publish_checkpoint(&log_key(), "o", T0).unwrap().unwrap();
        }
        assert!(s.checkpoints.checkpoints.len() <= tlog::KEPT_CHECKPOINTS + 33);
        assert_eq!(s.witnessed_checkpoint(1).unwrap().unwrap().0, first);
    }

    /// A log written before the tree existed (chain-only values) gets a
    /// tree, and salts, on open; its chain still verifies.
    #[test]
    fn a_chain_only_log_is_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = retry_lock(|| sled::open(dir.path()));
            let t = db.open_tree("audit").unwrap();
            let by_owner = db.open_tree("audit_by_owner").unwrap();
            let mut prev = None;
            for i in 0..5u64 {
                let e = audit::next_entry(prev, T0 + i as i64, event(&format!("old {i}")), [0; 16]);
                let v2 = audit::encode_value(&e);
                let mut v1 = vec![1u8];
                v1.extend_from_slice(&v2[1 + audit::SALT_LEN..]);
                t.insert(audit::seq_key(e.seq), v1).unwrap();
                by_owner
                    .insert(audit::owner_index_key("alice", e.seq), &[])
                    .unwrap();
                prev = Some((e.seq, e.hash));
            }
            db.flush().unwrap();
        }
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        assert!(s.verify_audit(None).unwrap().ok);
        append(&s, 1);
        let entries = all_entries(&s);
        assert_eq!(entries.len(), 6);
        assert!(entries.iter().all(|e| e.salt != [0; 16]));
        let cp = s.publish_checkpoint(&log_key(), "o", T0).unwrap().unwrap();
        let mut mem = MemoryTree::new();
        for e in &entries {
            mem.push(&e.leaf_data());
        }
        assert_eq!(cp.checkpoint.root, mem.root());
        drop(s);
        // Reopening changes nothing (the upgrade ran once).
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        assert_eq!(all_entries(&s), entries);
    }

    #[test]
    fn an_entry_edited_without_its_leaf_blocks_signing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = retry_lock(|| PolicyStore::open(dir.path()));
            append(&s, 3);
            tamper_detail(&s, 3);
            // Recompute its chain hash too: only the Merkle leaf disagrees.
            let v = s.audit.get(3u64.to_be_bytes()).unwrap().unwrap();
            let mut e = audit::decode_value(3, &v).unwrap();
            e.hash = audit::recompute_hash(&e);
            s.audit
                .insert(3u64.to_be_bytes(), audit::encode_value(&e))
                .unwrap();
            s.db.flush().unwrap();
        }
        let s = retry_lock(|| PolicyStore::open(dir.path()));
        let e = s.publish_checkpoint(&log_key(), "o", T0).unwrap_err();
        assert!(e.to_string().contains("Merkle leaf"), "{e}");
    }
}

// ---- group commit -----------------------------------------------------------

/// A store that writes every refusal as its own entry (no coalescing), so
/// each check leaves exactly one entry.
fn uncoalesced_store() -> (tempfile::TempDir, PolicyStore) {
    let dir = tempfile::tempdir().unwrap();
    let limits = RefusalLimits {
        rate_per_sec: 1e9,
        burst: 1_000_000,
        ..RefusalLimits::REFUSALS
    };
    let s = retry_lock(|| PolicyStore::open_with(dir.path(), limits));
    (dir, s)
}

fn tagged(grantee: &str, role: Role, tag: String) -> CheckQuery {
    CheckQuery {
        record_id: Some(tag),
        ..query(grantee, role, 1)
    }
}

#[test]
fn group_commit_concurrent_appends_get_contiguous_seqs() {
    let (_d, s) = uncoalesced_store();
    let s = Arc::new(s);
    s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
        .unwrap();
    const THREADS: usize = 16;
    const EACH: usize = 40;
    let before = s.committer.batches();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..EACH {
                    if i % 2 == 0 {
                        let d = s
                            .check(
                                &tagged("bob", Role::Doctor, format!("{t}/{i}")),
                                "x",
                                T0 + 1,
                            )
                            .unwrap();
                        assert!(d.allowed);
                    } else {
                        let e = s
                            .record_event(
                                AuditEvent {
                                    actor: "service/srs".into(),
                                    owner_id: "alice".into(),
                                    detail: format!("{t}/{i}"),
                                    ..Default::default()
                                },
                                T0 + 1,
                            )
                            .unwrap()
                            .expect("not a refusal: written individually");
                        mine.push(e);
                    }
                }
                mine
            })
        })
        .collect();
    let mut acked: Vec<AuditEntry> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let ops = (THREADS * EACH) as u64;
    let batches = s.committer.batches() - before;
    eprintln!("{ops} appends in {batches} batches");
    assert!(batches >= 1 && batches <= ops);
    let all = all_entries(&s);
    assert_eq!(all.len() as u64, ops + 1);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "seqs are contiguous from 1");
    }
    // Every acknowledged entry is the stored one, each seq given once.
    acked.sort_by_key(|e| e.seq);
    acked.windows(2).for_each(|w| assert!(w[0].seq < w[1].seq));
    for e in &acked {
        assert_eq!(&all[e.seq as usize - 1], e);
    }
    // Every check left its own entry.
    let checks = all
        .iter()
        .filter(|e| e.action == "check:read" && e.outcome == "allowed")
        .count();
    assert_eq!(checks, THREADS * EACH / 2);
    let r = s.verify_audit(None).unwrap();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.head_seq, ops + 1);
}

#[test]
fn group_commit_acknowledged_entries_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let acked: Vec<AuditEntry> = {
        let s = Arc::new(retry_lock(|| PolicyStore::open(dir.path())));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            s.record_event(
                                AuditEvent {
                                    actor: "service/cloud-storage".into(),
                                    owner_id: "alice".into(),
                                    detail: format!("{t}/{i}"),
                                    ..Default::default()
                                },
                                T0,
                            )
                            .unwrap()
                            .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    };
    let s = retry_lock(|| PolicyStore::open(dir.path()));
    assert_eq!(s.audit_head().map(|h| h.0), Some(200));
    let all = all_entries(&s);
    for e in &acked {
        assert_eq!(&all[e.seq as usize - 1], e, "entry {} survives", e.seq);
    }
    let r = s.verify_audit(None).unwrap();
    assert!(r.ok, "{r:?}");
    // The Merkle tree was written with the entries, in the same batches.
    use sesphr_tlog::merkle::HashSource as _;
    let tree = tlog::StoredTree(&s.merkle);
    assert_eq!(tree.size().unwrap(), 200);
    assert_eq!(tree.subtree(0, 199).unwrap(), audit::leaf_hash(&all[199]));
}

#[test]
fn group_commit_log_order_is_decision_order() {
    let (_d, s) = uncoalesced_store();
    let s = Arc::new(s);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // One owner granting and revoking bob again and again ...
    let toggler = {
        let (s, stop) = (Arc::clone(&s), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds < 20 {
                s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
                    .unwrap();
                s.revoke("alice", "medical", "bob", "patient/alice", T0)
                    .unwrap();
                rounds += 1;
            }
        })
    };
    // ... while services check bob's access, each check tagged.
    let checkers: Vec<_> = (0..8)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                (0..60)
                    .map(|i| {
                        let tag = format!("{t}/{i}");
                        let d = s
                            .check(&tagged("bob", Role::Doctor, tag.clone()), "x", T0 + 1)
                            .unwrap();
                        (tag, d.allowed)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: std::collections::HashMap<String, bool> = checkers
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    toggler.join().unwrap();
    // Replaying the log in seq order, each check saw exactly the grant
    // state the entries before it left, and answered what it logged.
    let mut granted = false;
    let (mut allowed, mut denied) = (0, 0);
    let mut after = 0;
    loop {
        let page = s
            .audit(&AuditFilter {
                owner_id: None,
                after_seq: after,
                limit: MAX_AUDIT_PAGE,
            })
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            match e.action.as_str() {
                "grant" => granted = true,
                "revoke" => granted = false,
                "check:read" => {
                    assert_eq!(e.outcome == "allowed", granted, "entry {}", e.seq);
                    assert_eq!(answers[&e.record_id], granted, "check {}", e.record_id);
                    if granted {
                        allowed += 1;
                    } else {
                        denied += 1;
                    }
                }
                other => panic!("unexpected entry {other}"),
            }
        }
    }
    assert_eq!(allowed + denied, answers.len());
    eprintln!("{allowed} allowed, {denied} denied");
    assert!(s.verify_audit(None).unwrap().ok);
}

#[test]
fn group_commit_a_failing_operation_does_not_fail_its_batch() {
    let (_d, s) = uncoalesced_store();
    let s = Arc::new(s);
    s.grant(grant("bob", Role::Doctor), "patient/alice", T0)
        .unwrap();
    // Hold the append lock: the first caller becomes the leader and waits
    // for it with its own operation; the next ones queue into one batch.
    let held = s.lock_head();
    type Call = Box<dyn FnOnce(&PolicyStore) -> Result<String, DomainError> + Send>;
    let spawn = |f: Call| {
        let s = Arc::clone(&s);
        std::thread::spawn(move || f(&s))
    };
    let wait_queued = |n: usize| {
        let t = Instant::now();
        while s.committer.queued() != n {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "operations did not queue"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let batches = s.committer.batches();
    let first = spawn(Box::new(|s| {
        s.record_event(
            AuditEvent {
                actor: "service/srs".into(),
                detail: "first".into(),
                ..Default::default()
            },
            T0,
        )
        .map(|e| e.unwrap().detail)
    }));
    // Taken by its leader, which waits for the lock.
    let t = Instant::now();
    while s.committer.batches() == batches {
        assert!(t.elapsed() < Duration::from_secs(10), "no leader");
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_queued(0);
    let mut ops = Vec::new();
    // A revoke of a grant that does not exist.
    ops.push(spawn(Box::new(|s| {
        s.revoke("alice", "medical", "carol", "patient/alice", T0)
            .map(|g| g.grantee_id)
    })));
    wait_queued(1);
    // An operation that stages writes, then fails: nothing of it stays.
    ops.push(spawn(Box::new(|s| {
        s.submit(T0, |cx| {
            cx.put_grant(grant_key("alice", "medical", "mallory"), b"{}".to_vec());
            cx.put_index(by_grantee_key("mallory", "alice", "medical"));
            Err::<((), Vec<AuditEvent>), _>(DomainError::Conflict("changed my mind".into()))
        })
        .map(|_| String::new())
    })));
    wait_queued(2);
    // The others of the batch: a check that sees the grant, a revoke of
    // it, a check after the revoke.
    ops.push(spawn(Box::new(|s| {
        s.check(&tagged("bob", Role::Doctor, "before".into()), "x", T0 + 1)
            .map(|d| d.allowed.to_string())
    })));
    wait_queued(3);
    ops.push(spawn(Box::new(|s| {
        s.revoke("alice", "medical", "bob", "patient/alice", T0 + 1)
            .map(|g| g.grantee_id)
    })));
    wait_queued(4);
    ops.push(spawn(Box::new(|s| {
        s.check(&tagged("bob", Role::Doctor, "after".into()), "x", T0 + 1)
            .map(|d| d.allowed.to_string())
    })));
    wait_queued(5);
    drop(held);
    assert_eq!(first.join().unwrap().unwrap(), "first");
    let results: Vec<_> = ops.into_iter().map(|t| t.join().unwrap()).collect();
    // The leader wrote its own operation, then the five queued in one batch.
    assert_eq!(s.committer.batches() - batches, 2);
    assert!(
        matches!(&results[0], Err(DomainError::Unknown(_))),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], Err(DomainError::Conflict(_))),
        "{results:?}"
    );
    assert_eq!(results[2].as_ref().unwrap(), "true");
    assert_eq!(results[3].as_ref().unwrap(), "bob");
    assert_eq!(results[4].as_ref().unwrap(), "false");
    assert!(s.grants_received("mallory").unwrap().is_empty());
    assert!(
        s.grants
            .get(grant_key("alice", "medical", "mallory"))
            .unwrap()
            .is_none()
    );
    let all = all_entries(&s);
    let served = GET_RECORD.to_string();
    let tail: Vec<(&str, &str, &str)> = all[1..]
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.as_str(), e.record_id.as_str()))
        .collect();
    assert_eq!(
        tail,
        [
            (served.as_str(), "ok", ""),
            ("check:read", "allowed", "before"),
            ("revoke", "ok", ""),
            ("check:read", "denied", "after"),
        ]
    );
    assert!(s.verify_audit(None).unwrap().ok);
}

/// Removed devices never stop an operator's disable, and one user cannot
/// fill the list with them.
#[test]
fn revoked_devices_are_bounded_per_user_and_do_not_count_as_disabled() {
    let (_d, s) = store();
    let now = 1_700_000_000;
    let per_user = sesphr_mesh::deny::MAX_REVOKED_DEVICES_PER_USER;
    for i in 0..per_user {
        let (changed, _) = s
            .revoke_device("mallory", &format!("d{i}"), now + 100, "", "srs", now)
            .unwrap();
        assert!(changed);
    }
    let e = s
        .revoke_device("mallory", "one-more", now + 100, "", "srs", now)
        .unwrap_err();
    assert!(matches!(e, DomainError::UsedUp(_)), "{e:?}");
    // Idempotent for one already there; another user is not held back.
    assert!(
        !s.revoke_device("mallory", "d0", now + 100, "", "srs", now)
            .unwrap()
            .0
    );
    assert!(
        s.revoke_device("alice", "phone", now + 100, "", "srs", now)
            .unwrap()
            .0
    );
    // Once they expire they are dropped, and the user may revoke again.
    s.revoke_device("mallory", "later", now + 500, "", "srs", now + 200)
        .unwrap();
    let (_, entries) = s.deny_list().unwrap();
    assert_eq!(entries.revoked_devices.len(), 1);
    // Device entries are no disabled users.
    assert!(
        s.set_user_status("mallory", true, "", "operator/ops", now)
            .unwrap()
            .0
    );
    let (_, entries) = s.deny_list().unwrap();
    assert_eq!(entries.disabled.len(), 1);
}
