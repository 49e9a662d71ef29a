//! The PostgreSQL store against a real PostgreSQL (one server and one
//! database per test): the backend contract, several replicas on one
//! database, and the copy from sled.

use std::sync::Arc;
use std::time::Duration;

use sesphr_identity::Role;
use sesphr_testkit::Postgres;
use sesphr_tlog::SigningKey;
use sesphr_tlog::merkle::{self, MemoryTree};

use super::*;
use crate::{Action, MAX_AUDIT_PAGE, PolicyStore};

const T0: i64 = 1_700_000_000;

/// A PostgreSQL server and the runtime the stores' pools live on.
struct Db {
    runtime: tokio::runtime::Runtime,
    url: String,
    server: Postgres,
}

fn db(name: &str) -> Db {
    let server = Postgres::start().expect("postgres starts");
    let url = format!("{}?sslmode=disable", server.create_database(name).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    Db {
        runtime,
        url,
        server,
    }
}

impl Db {
    fn open_with(&self, limits: RefusalLimits) -> PgPolicyStore {
        let mut cfg = PgConfig::new(&self.url);
        cfg.connect_timeout = Duration::from_secs(2);
        PgPolicyStore::open(&cfg, limits, self.runtime.handle().clone()).unwrap()
    }

    fn open(&self) -> PgPolicyStore {
        self.open_with(RefusalLimits::REFUSALS)
    }

    /// Runs one statement directly, as an operator (or attacker) with
    /// database access would.
    fn sql(&self, statement: &str) {
        self.runtime.block_on(async {
            let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client.batch_execute(statement).await.unwrap();
        });
    }
}

fn grant(grantee: &str) -> Grant {
    Grant {
        owner_id: "alice".into(),
        partition: "medical".into(),
        grantee_id: grantee.into(),
        grantee_role: Role::Doctor,
        epoch_min: 0,
        epoch_max: None,
        not_before: T0,
        expires_at: None,
        granted_at: 0,
    }
}

fn query(grantee: &str) -> CheckQuery {
    CheckQuery {
        owner_id: "alice".into(),
        partition: "medical".into(),
        grantee_id: grantee.into(),
        grantee_role: Role::Doctor,
        epoch: 1,
        record_created_at: None,
        record_id: None,
        action: Action::Read,
    }
}

fn event(detail: String) -> AuditEvent {
    AuditEvent {
        actor: "service/cloud-storage".into(),
        owner_id: "alice".into(),
        detail,
        ..Default::default()
    }
}

fn log_key() -> SigningKey {
    SigningKey::from_hex(&"44".repeat(32)).unwrap()
}

/// Every entry, in pages.
fn all_entries(b: &dyn PolicyBackend) -> Vec<AuditEntry> {
    let mut out: Vec<AuditEntry> = Vec::new();
    loop {
        let page = b
            .audit(&AuditFilter {
                after_seq: out.last().map_or(0, |e| e.seq),
                limit: MAX_AUDIT_PAGE,
                ..Default::default()
            })
            .unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

#[test]
fn pg_store_conforms() {
    let db = db("conformance");
    let store = db.open();
    crate::backend::conformance(&store);
    // Reopening (as another replica starting) migrates nothing again and
    // finds the same, sound log.
    let again = db.open();
    assert!(again.broken.is_none());
    assert_eq!(again.audit_head().unwrap(), store.audit_head().unwrap());
}

#[test]
fn replicas_share_grants_decisions_and_the_deny_list() {
    let db = db("replicas");
    let limits = RefusalLimits {
        burst: 2,
        rate_per_sec: 0.001,
        ..RefusalLimits::REFUSALS
    };
    let (a, b) = (db.open_with(limits), db.open_with(limits));

    // A grant made at one replica decides a check at the other; a revoke
    // at that one is seen by the first.
    a.grant(grant("bob"), "patient/alice", T0).unwrap();
    let yes = b.check(&query("bob"), "service/srs", T0 + 1).unwrap();
    assert!(yes.allowed, "{yes:?}");
    assert_eq!(b.grants_received("bob").unwrap().len(), 1);
    b.revoke("alice", "medical", "bob", "patient/alice", T0 + 2)
        .unwrap();
    assert!(
        !a.check(&query("bob"), "service/srs", T0 + 3)
            .unwrap()
            .allowed
    );
    assert!(b.grants_given("alice").unwrap().is_empty());

    // The deny list: each change at either replica gets a higher version,
    // and both serve the same list.
    a.grant(grant("carol"), "patient/alice", T0).unwrap();
    let (changed, v1) = a
        .set_user_status("carol", true, "lost badge", "operator/ops", T0 + 4)
        .unwrap();
    assert!(changed && v1 >= 1);
    let (v, list) = b.deny_list().unwrap();
    assert_eq!(v, v1);
    assert!(list.disabled.contains("carol"));
    let no = b.check(&query("carol"), "service/srs", T0 + 5).unwrap();
    assert_eq!(no.caller_reason, "user disabled");
    assert!(matches!(
        b.grant(grant("carol"), "patient/alice", T0),
        Err(DomainError::NotEntitled(_))
    ));
    let (changed, v2) = b
        .revoke_device("dave", "phone-1", T0 + 100, "", "patient/dave", T0 + 6)
        .unwrap();
    assert!(changed && v2 > v1, "{v2} after {v1}");
    let (same, v3) = a
        .set_user_status("carol", true, "", "operator/ops", T0 + 7)
        .unwrap();
    assert!(!same && v3 == v2, "a no-op bumps nothing");
    let (_, v4) = a
        .set_user_status("carol", false, "", "operator/ops", T0 + 8)
        .unwrap();
    assert!(v4 > v3);
    let (v, list) = b.deny_list().unwrap();
    assert_eq!(v, v4);
    assert!(list.disabled.is_empty());
    assert_eq!(
        list.revoked_devices.get(&("dave".into(), "phone-1".into())),
        Some(&(T0 + 100))
    );

    // Refusals over a replica's budget are counted, then written as one
    // entry by the replica that counted them.
    let before = all_entries(&a).len();
    for i in 0..5 {
        assert!(
            !b.check(&query("eve"), "service/srs", T0 + 10 + i)
                .unwrap()
                .allowed
        );
    }
    assert_eq!(all_entries(&a).len(), before + 2);
    assert_eq!(b.pending_coalesced(), 3);
    assert_eq!(a.flush_all_coalesced(T0 + 20).unwrap(), 0);
    assert_eq!(b.flush_all_coalesced(T0 + 20).unwrap(), 1);
    let log = all_entries(&a);
    let last = log.last().unwrap();
    assert!(
        last.detail.starts_with("3 further refusals"),
        "{}",
        last.detail
    );
    assert!(a.verify_audit(Some((last.seq, last.hash))).unwrap().ok);
}

#[test]
fn concurrent_appends_from_two_replicas_form_one_chain() {
    let db = db("concurrent");
    let stores = [Arc::new(db.open()), Arc::new(db.open())];
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = stores[t % 2].clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    s.record_event(event(format!("thread {t} event {i}")), T0 + i)
                        .unwrap()
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = all_entries(&*stores[0]);
    assert_eq!(log.len(), 200);
    assert!(log.iter().zip(1..).all(|(e, seq)| e.seq == seq), "gapless");
    assert!(log.windows(2).all(|w| w[1].prev_hash == w[0].hash));
    let head = (log[199].seq, log[199].hash);
    for s in &stores {
        let r = s.verify_audit(Some(head)).unwrap();
        assert!(r.ok && r.entries == 200, "{r:?}");
    }
    // Each thread's events are in its order.
    for t in 0..4 {
        let mine: Vec<_> = log
            .iter()
            .filter(|e| e.detail.starts_with(&format!("thread {t} ")))
            .map(|e| e.detail.clone())
            .collect();
        let want: Vec<_> = (0..50).map(|i| format!("thread {t} event {i}")).collect();
        assert_eq!(mine, want);
    }

    // One tree: a checkpoint signed at one replica is the other's too,
    // and proofs from either verify against an independent tree.
    let cp = stores[0]
        .publish_checkpoint(&log_key(), "test/audit", T0)
        .unwrap()
        .unwrap();
    assert!(
        stores[1]
            .publish_checkpoint(&log_key(), "test/audit", T0)
            .unwrap()
            .is_none(),
        "a covering checkpoint is stored: no second one"
    );
    let mut mem = MemoryTree::new();
    for e in &log {
        mem.push(&e.leaf_data());
    }
    assert_eq!((cp.checkpoint.size, cp.checkpoint.root), (200, mem.root()));
    let indexes: Vec<u64> = log.iter().map(|e| e.leaf_index()).collect();
    for (i, s) in stores.iter().enumerate() {
        let chunk = &indexes[i * 100..(i + 1) * 100];
        let proofs = s.inclusion_proofs(200, chunk).unwrap();
        for (&index, p) in chunk.iter().zip(&proofs) {
            let e = &log[index as usize];
            merkle::verify_inclusion(
                index,
                200,
                &merkle::leaf_hash(&e.leaf_data()),
                p,
                &mem.root(),
            )
            .unwrap();
        }
    }
    assert_eq!(stores[1].witnessed_checkpoint(0).unwrap().unwrap().0, cp);
}

#[test]
fn copy_from_sled_keeps_the_log_its_head_and_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let sled = PolicyStore::open(dir.path()).unwrap();
    sled.grant(grant("bob"), "patient/alice", T0).unwrap();
    sled.grant(grant("carol"), "patient/alice", T0).unwrap();
    assert!(
        sled.check(&query("bob"), "service/srs", T0 + 1)
            .unwrap()
            .allowed
    );
    assert!(
        !sled
            .check(&query("eve"), "service/srs", T0 + 1)
            .unwrap()
            .allowed
    );
    for i in 0..20 {
        sled.record_event(event(format!("e{i}")), T0 + 2).unwrap();
    }
    sled.set_user_status("mallory", true, "", "operator/ops", T0 + 3)
        .unwrap();
    sled.revoke_device("dave", "laptop", T0 + 999, "", "patient/dave", T0 + 3)
        .unwrap();
    let cp = sled
        .publish_checkpoint(&log_key(), "test/audit", T0)
        .unwrap()
        .unwrap();
    let witness = SigningKey::from_hex(&"55".repeat(32)).unwrap();
    let cosig = witness.cosign("srs-node-1", T0, &cp.checkpoint);
    sled.add_cosignature("srs-node-1", &cp.checkpoint.body(), &cosig)
        .unwrap();
    sled.record_event(event("after the checkpoint".into()), T0 + 4)
        .unwrap();

    let db = db("copy");
    let pg = db.open();
    let report = copy_from_sled(&sled, &pg).unwrap();
    let head = sled.audit_head().unwrap();
    assert_eq!(report.audit_head, Some(head));
    assert_eq!(report.audit_entries, head.0);
    assert_eq!(
        (report.grants, report.checkpoints, report.cosignatures),
        (2, 1, 1)
    );
    assert_eq!((report.disabled_users, report.revoked_devices), (1, 1));

    // The same log, byte for byte, the same head and root.
    assert_eq!(pg.audit_head().unwrap(), Some(head));
    assert_eq!(all_entries(&pg), all_entries(&sled));
    let sled_root = merkle::root(head.0, &crate::tlog::StoredTree(&sled.merkle)).unwrap();
    assert_eq!(pg.audit_root(head.0).unwrap(), sled_root);
    assert_eq!(report.audit_root, sled_root);
    assert!(pg.verify_audit(Some(head)).unwrap().ok);
    assert_eq!(
        pg.grants_given("alice").unwrap(),
        sled.grants_given("alice").unwrap()
    );
    assert_eq!(pg.deny_list().unwrap(), sled.deny_list().unwrap());
    assert_eq!(
        pg.witnessed_checkpoint(1).unwrap(),
        sled.witnessed_checkpoint(1).unwrap()
    );
    assert_eq!(checkpoints::all(&pg).unwrap().len(), 1);

    // The copy goes on where sled stopped: new entries chain on, and the
    // next checkpoint is consistent with the one sled signed.
    assert!(
        pg.check(&query("bob"), "service/srs", T0 + 5)
            .unwrap()
            .allowed
    );
    let cp2 = pg
        .publish_checkpoint(&log_key(), "test/audit", T0)
        .unwrap()
        .unwrap();
    let proof = pg
        .consistency_proof(cp.checkpoint.size, cp2.checkpoint.size)
        .unwrap();
    sesphr_tlog::check_advance(&cp.checkpoint, &cp2.checkpoint, &proof).unwrap();
    assert!(pg.verify_audit(Some(head)).unwrap().ok);

    // A second copy would fork the log: refused, nothing changed.
    assert!(matches!(
        copy_from_sled(&sled, &pg),
        Err(DomainError::Exists(_))
    ));
    assert_eq!(all_entries(&pg).len() as u64, head.0 + 1);
}

#[test]
fn a_damaged_tail_stops_appends_and_a_lost_database_is_unavailable() {
    let mut db = db("damage");
    let store = db.open();
    for i in 0..3 {
        store.record_event(event(format!("e{i}")), T0).unwrap();
    }
    // Flip the last byte of entry 3 (its detail) in the database.
    db.sql(
        "UPDATE access_policy.audit_entries \
         SET value = overlay(value placing '\\x7a'::bytea from length(value)) WHERE seq = 3",
    );
    let r = store.verify_audit(None).unwrap();
    assert!(!r.ok && r.first_bad_seq == Some(3), "{r:?}");
    let reopened = db.open();
    assert!(matches!(
        reopened.record_event(event("more".into()), T0),
        Err(DomainError::Corrupt(_))
    ));
    assert!(matches!(
        reopened.publish_checkpoint(&log_key(), "o", T0),
        Err(DomainError::Corrupt(_))
    ));
    // Reads go on.
    assert_eq!(reopened.audit(&AuditFilter::default()).unwrap().len(), 3);

    drop(reopened);
    db.server.stop();
    assert!(matches!(
        store.check(&query("bob"), "service/srs", T0),
        Err(DomainError::Unavailable(_))
    ));
    assert!(matches!(
        store.grants_given("alice"),
        Err(DomainError::Unavailable(_))
    ));
}
