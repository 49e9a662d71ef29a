//! Two setup-service replicas on one PostgreSQL database: the once-only
//! rules and the invitation caps hold when they race, and a sled store
//! copies over whole.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use sesphr_domain::pg::PgConfig;
use sesphr_identity::Role;
use sesphr_srs::devices::DeviceRecord;
use sesphr_srs::pg::{CopyReport, PgStore, copy_from_sled};
use sesphr_srs::{
    DomainError, Invitation, InviteLimits, KfragSet, RecoveryRecord, Redeem, SrsStore, Store,
    UserRecord,
};
use sesphr_testkit::Postgres;

const T0: i64 = 1_700_000_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A server, a fresh database on it and a runtime for the pools.
struct Db {
    server: Postgres,
    config: PgConfig,
    rt: tokio::runtime::Runtime,
}

impl Db {
    fn new(name: &str) -> Self {
        let server = Postgres::start().unwrap();
        let url = server.create_database(name).unwrap();
        let mut config = PgConfig::new(format!("{url}?sslmode=disable"));
        config.connect_timeout = Duration::from_secs(2);
        Self {
            server,
            config,
            rt: runtime(),
        }
    }

    /// One replica's store.
    fn store(&self) -> Arc<PgStore> {
        Arc::new(PgStore::open(&self.config, self.rt.handle().clone()).unwrap())
    }
}

fn device(name: &str, at: i64) -> DeviceRecord {
    DeviceRecord {
        name: name.into(),
        added_at: at,
        issued_at: at,
        not_after: at + 30 * 86_400,
        removed_at: 0,
    }
}

fn user(id: &str, key: u8) -> UserRecord {
    UserRecord {
        user_id: id.into(),
        role: Role::Friend,
        pre_public_key: vec![key; 33],
        verifying_key: vec![3; 33],
        certificate_der: vec![0x30, 0x82, 0, 1, key],
        enrolled_at: T0,
        devices: vec![device("device-1", T0)],
    }
}

fn invitation(id: &str, issued_at: i64) -> Invitation {
    Invitation {
        user_id: id.into(),
        role: Role::Friend,
        issued_by: "patient/alice".into(),
        issued_at,
        expires_at: issued_at + 3600,
        used_at: 0,
        reenrollment: false,
    }
}

/// Runs `f(i)` for each of `n` racers on its own thread, all released at
/// once, and returns their results in order.
fn race<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let go = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let racers: Vec<_> = (0..n)
        .map(|i| {
            let (go, f) = (go.clone(), f.clone());
            thread::spawn(move || {
                go.wait();
                f(i)
            })
        })
        .collect();
    racers.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn one_id_enrolled_by_two_replicas_at_once_goes_to_one() {
    let db = Db::new("enrol_race");
    let stores = [db.store(), db.store()];
    for round in 0..10 {
        let id = format!("user-{round}");
        let s = stores.clone();
        let id2 = id.clone();
        let results = race(4, move |i| s[i % 2].register_user(user(&id2, i as u8 + 1)));
        let winners: Vec<_> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_ok())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for r in results.iter().filter(|r| r.is_err()) {
            assert!(matches!(r, Err(DomainError::Exists(_))), "{r:?}");
        }
        // Both replicas see the winner's keys.
        let won = winners[0].0 as u8 + 1;
        for s in &stores {
            assert_eq!(s.user(&id).unwrap(), Some(user(&id, won)));
        }
    }
    assert_eq!(stores[1].users_count().unwrap(), 10);
}

#[test]
fn one_invitation_redeemed_by_two_replicas_at_once_admits_one() {
    let db = Db::new("redeem_race");
    let stores = [db.store(), db.store()];
    for round in 0..10u8 {
        let hash = [round; 32];
        stores[0]
            .put_invitation(hash, invitation("dave", T0), None, T0)
            .unwrap();
        let s = stores.clone();
        // Each racer asks for a different id with the one invitation.
        let results = race(4, move |i| {
            s[i % 2].redeem_invitation(
                Some(&hash),
                Redeem::Enroll(user(&format!("r{round}-{i}"), 1)),
                T0 + 1,
            )
        });
        let won: Vec<_> = (0..4).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {results:?}");
        for r in results.iter().filter(|r| r.is_err()) {
            assert!(matches!(r, Err(DomainError::Conflict(_))), "{r:?}");
        }
        for i in 0..4 {
            let enrolled = stores[1].user(&format!("r{round}-{i}")).unwrap().is_some();
            assert_eq!(enrolled, i == won[0], "only the winner was enrolled");
        }
        assert_eq!(
            stores[1].invitation(&hash).unwrap().unwrap().used_at,
            T0 + 1
        );
    }
}

#[test]
fn invitation_caps_hold_when_two_replicas_invite_at_once() {
    let db = Db::new("invite_race");
    let stores = [db.store(), db.store()];
    let limits = Some(InviteLimits {
        open: 3,
        per_day: 5,
    });
    let s = stores.clone();
    let results = race(8, move |i| {
        s[i % 2].put_invitation([i as u8 + 1; 32], invitation("x", T0), limits, T0)
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        3,
        "{results:?}"
    );
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(matches!(r, Err(DomainError::UsedUp(_))), "{r:?}");
    }
    // Another inviter has caps of its own.
    let mut bob = invitation("y", T0);
    bob.issued_by = "patient/bob".into();
    stores[1].put_invitation([99; 32], bob, limits, T0).unwrap();
}

#[test]
fn concurrent_changes_of_one_user_are_all_kept() {
    let db = Db::new("update_race");
    let stores = [db.store(), db.store()];
    stores[0].register_user(user("erin", 1)).unwrap();
    let s = stores.clone();
    let results = race(6, move |i| {
        s[i % 2].update_user("erin", &mut |u| {
            u.devices.push(device(&format!("d{i}"), T0 + 1));
            Ok(())
        })
    });
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let erin = stores[1].user("erin").unwrap().unwrap();
    assert_eq!(erin.devices.len(), 7, "no change lost: {:?}", erin.devices);
}

#[test]
fn a_stopped_database_is_unavailable_not_a_failure() {
    let mut db = Db::new("down");
    let s = db.store();
    s.register_user(user("fay", 1)).unwrap();
    db.server.stop();
    let e = s.user("fay").unwrap_err();
    assert!(matches!(e, DomainError::Unavailable(_)), "{e:?}");
    let e = s.register_user(user("gus", 1)).unwrap_err();
    assert!(matches!(e, DomainError::Unavailable(_)), "{e:?}");
}

fn kset(tag: u8) -> KfragSet {
    KfragSet {
        delegating_public_key: vec![4; 33],
        kfrags: vec![vec![tag; 100], vec![tag.wrapping_add(1); 100]],
        stored_at: T0,
    }
}

/// A sled store with some of everything in it.
fn populated_sled(dir: &std::path::Path) -> SrsStore {
    let s = SrsStore::open(dir).unwrap();
    for i in 0..300u32 {
        s.register_user(user(&format!("u{i}"), (i % 250) as u8 + 1))
            .unwrap();
    }
    s.redeem_invitation(
        None,
        Redeem::Reenroll {
            user_id: "u7".into(),
            device: device("phone", T0 + 5),
            certificate_der: vec![0x30, 9],
        },
        T0 + 5,
    )
    .unwrap();
    s.put_invitation([1; 32], invitation("new1", T0), None, T0)
        .unwrap();
    s.put_invitation([2; 32], invitation("new2", T0), None, T0)
        .unwrap();
    s.redeem_invitation(Some(&[2; 32]), Redeem::Enroll(user("new2", 9)), T0 + 9)
        .unwrap();
    s.put_recovery(
        "u1",
        RecoveryRecord {
            threshold: 2,
            created_at: T0,
            shares: vec![("u2".into(), vec![1; 90]), ("u3".into(), vec![2; 90])],
        },
    )
    .unwrap();
    s.put_kfrags("u1", "medical", 0, "u2", kset(1)).unwrap();
    s.put_kfrags("u1", "medical", 7, "u2", kset(2)).unwrap();
    s.put_kfrags("u3", "insurance", 1, "u1", kset(3)).unwrap();
    s.service_secret("oprf").unwrap();
    s
}

/// Everything `src` holds, `dst` holds the same.
fn assert_same(src: &SrsStore, dst: &PgStore) {
    assert_eq!(dst.users_count().unwrap(), src.users_count().unwrap());
    for i in 0..300 {
        let id = format!("u{i}");
        assert_eq!(dst.user(&id).unwrap(), src.user(&id).unwrap(), "{id}");
    }
    assert_eq!(dst.user("new2").unwrap(), src.user("new2").unwrap());
    for h in [[1; 32], [2; 32]] {
        assert_eq!(dst.invitation(&h).unwrap(), src.invitation(&h).unwrap());
    }
    assert_eq!(dst.recovery("u1").unwrap(), src.recovery("u1").unwrap());
    for (o, p, g, e, set) in src.kfrag_sets().unwrap() {
        assert_eq!(dst.kfrags(&o, &p, e, &g).unwrap(), Some(set));
    }
    assert_eq!(dst.kfrag_epochs("u1", "medical", "u2").unwrap(), [0, 7]);
    assert_eq!(
        *dst.service_secret("oprf").unwrap(),
        *src.service_secret("oprf").unwrap()
    );
}

#[test]
fn a_sled_store_copies_over_whole_once() {
    let dir = tempfile::tempdir().unwrap();
    let src = populated_sled(dir.path());
    let db = Db::new("copy");

    // A destination that drew another secret already is refused, and the
    // failed copy leaves it as it was: nothing half-copied.
    let dst = db.store();
    dst.service_secret("oprf").unwrap();
    let e = copy_from_sled(&src, &dst).unwrap_err();
    assert!(matches!(e, DomainError::Conflict(_)), "{e:?}");
    assert_eq!(dst.users_count().unwrap(), 0);
    assert_eq!(dst.invitation(&[1; 32]).unwrap(), None);

    let fresh = db.server.create_database("copy_fresh").unwrap();
    let mut config = PgConfig::new(format!("{fresh}?sslmode=disable"));
    config.connect_timeout = Duration::from_secs(2);
    let dst = PgStore::open(&config, db.rt.handle().clone()).unwrap();
    let report = copy_from_sled(&src, &dst).unwrap();
    assert_eq!(
        report,
        CopyReport {
            users: 301,
            invitations: 2,
            recovery_setups: 1,
            kfrag_sets: 3,
            secrets: 1,
        }
    );
    assert_same(&src, &dst);
    // The copied directory keeps its rules: a taken id stays taken.
    assert!(matches!(
        dst.register_user(user("u5", 1)),
        Err(DomainError::Exists(_))
    ));
    // A second copy would merge directories: refused, nothing changed.
    let e = copy_from_sled(&src, &dst).unwrap_err();
    assert!(matches!(e, DomainError::Exists(_)), "{e:?}");
    assert_same(&src, &dst);
}
