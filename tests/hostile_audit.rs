//! Attacks on the audit log by a patient with a valid certificate, on a live
//! mesh: a flood of refused requests must not grow the log by more than the
//! per-identity refusal budget (the rest is counted into coalesced entries
//! the victim sees), and a storm of `VerifyAudit` calls over a large log
//! must not stall another user's reads. Every loop is bounded in time.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Sandbox, check_mallory_reads_alice, download, upload};
use futures::StreamExt;
use sesphr::proto;
use sesphr_client::raw::MeshClients;
use sesphr_identity::Role;
use sha2::{Digest, Sha256};
use tonic::Code;

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(3);
/// Concurrent flooding loops (half refused reads, half refused Checks).
const FLOODERS: usize = 8;
/// The refusal budget of one identity (`sesphr_access_policy::coalesce`).
const BURST: f64 = 50.0;
const RATE: f64 = 100.0;

/// Every entry after `after`, as an operator sees them.
async fn entries_after(ops: &MeshClients, after: u64) -> Vec<proto::AuditEntry> {
    let mut out: Vec<proto::AuditEntry> = Vec::new();
    for _ in 0..1_000 {
        let from = out.last().map_or(after, |e| e.seq);
        let mut stream = ops
            .policy
            .clone()
            .list_audit(proto::ListAuditRequest {
                after_seq: from,
                limit: 1000,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = 0;
        while let Some(e) = stream.next().await {
            out.push(e.unwrap());
            got += 1;
        }
        if got == 0 {
            break;
        }
    }
    out
}

async fn global_head(ops: &MeshClients) -> u64 {
    ops.policy
        .clone()
        .verify_audit(proto::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .head_seq
}

/// How many refusals an entry stands for: a coalesced entry's count
/// ("N further refusals of ..."), else 1.
fn refusals_in(detail: &str) -> u64 {
    detail
        .split_once(" further ")
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(1)
}

fn about_mallory(e: &proto::AuditEntry) -> bool {
    e.subject == "patient/mallory" || e.actor == "patient/mallory"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_is_bounded_and_others_keep_reading() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let mallory = s.patient("mallory").await;
    let rec = upload(&alice, "medical", b"blood type 0+").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    let ops = s.operator();
    let before = global_head(&ops).await;

    let started = Instant::now();
    let mut flooders = Vec::new();
    for i in 0..FLOODERS {
        let c = mallory.session.clients.clone();
        let record_id = rec.record_id.clone();
        flooders.push(tokio::spawn(async move {
            let (mut refused, mut limited) = (0u64, 0u64);
            while started.elapsed() < FLOOD {
                let res = if i % 2 == 0 {
                    c.cloud
                        .clone()
                        .get_record(proto::GetRecordRequest {
                            record_id: record_id.to_string(),
                        })
                        .await
                        .map(drop)
                } else {
                    check_mallory_reads_alice(&c).await.map(drop)
                };
                match res {
                    Err(st) if st.code() == Code::PermissionDenied => refused += 1,
                    // CloudStorage's own per-identity rate limit: never
                    // reaches AccessPolicy, so nothing to audit.
                    Err(st) if st.code() == Code::ResourceExhausted => limited += 1,
                    other => panic!("mallory got {other:?}"),
                }
            }
            (refused, limited)
        }));
    }
    // Meanwhile bob, a grantee, keeps reading.
    let mut reads = 0;
    while started.elapsed() < FLOOD {
        let got = download(&bob, &rec.record_id)
            .await
            .expect("the grantee's read must succeed during the flood");
        assert_eq!(got, b"blood type 0+");
        reads += 1;
    }
    let (mut refused, mut limited) = (0, 0);
    for f in flooders {
        let (r, l) = f.await.unwrap();
        refused += r;
        limited += l;
    }
    let elapsed = started.elapsed();
    assert!(reads > 0);

    // Coalesced counts are written within a couple of flush intervals.
    let deadline = Instant::now() + Duration::from_secs(6);
    let (entries, counted) = loop {
        let entries: Vec<_> = entries_after(&ops, before)
            .await
            .into_iter()
            .filter(about_mallory)
            .collect();
        let counted: u64 = entries.iter().map(|e| refusals_in(&e.detail)).sum();
        if counted >= refused || Instant::now() > deadline {
            break (entries, counted);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rate = entries.len() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{refused} refusals ({limited} rate-limited) in {elapsed:?}: {} entries ({rate:.0}/s), \
         counting {counted}; bob read {reads} times",
        entries.len()
    );
    // Burst, refill over the flood, one coalesced entry per (action, owner)
    // and flush interval.
    let bound = BURST + RATE * elapsed.as_secs_f64() + 20.0;
    assert!(
        (entries.len() as f64) <= bound,
        "{} entries about mallory for {refused} refusals (bound {bound:.0})",
        entries.len()
    );
    assert_eq!(counted, refused, "every refusal is accounted for");
    // The victim sees the refusals of her record in her own view.
    let view = alice.audit().await.unwrap();
    let hers: u64 = view
        .iter()
        .filter(|e| e.subject == "patient/mallory" && e.action == "check:read")
        .map(|e| refusals_in(&e.detail))
        .sum();
    assert!(hers > 0 && hers <= refused, "{hers} of {refused}");
    assert!(
        view.iter()
            .any(|e| e.subject == "patient/mallory" && e.detail.contains("further refusals")),
        "alice sees no coalesced entry"
    );
    assert!(alice.verify_audit().await.unwrap().ok);
    s.shutdown().await;
}

/// Appends `n` well-chained entries straight into AccessPolicy's sled tree
/// (format: `sesphr_access_policy` crate docs), as a long history would.
fn grow_audit_log(dir: &Path, n: u64) {
    let db = sled::open(dir).unwrap();
    let audit = db.open_tree("audit").unwrap();
    let (mut seq, mut prev) = match audit.last().unwrap() {
        // Version 2 values carry a 16-byte leaf salt before the hashes.
        Some((k, v)) => (
            u64::from_be_bytes(k.as_ref().try_into().unwrap()),
            match v[0] {
                2 => <[u8; 32]>::try_from(&v[49..81]).unwrap(),
                _ => <[u8; 32]>::try_from(&v[33..65]).unwrap(),
            },
        ),
        None => (0, [0u8; 32]),
    };
    // Written as version 1 (chain only, no salt), as an older AccessPolicy
    // wrote them: the restart below also upgrades them into the tree.
    let mut batch = sled::Batch::default();
    for i in 0..n {
        seq += 1;
        let detail = format!("history {i}");
        let mut c = Vec::new();
        c.extend_from_slice(&seq.to_be_bytes());
        c.extend_from_slice(&1_700_000_000i64.to_be_bytes());
        for f in ["service/srs", "reencrypt", "", "", "", "", "ok", &detail] {
            c.extend_from_slice(&(f.len() as u32).to_be_bytes());
            c.extend_from_slice(f.as_bytes());
        }
        let hash: [u8; 32] = Sha256::new()
            .chain_update(prev)
            .chain_update(&c)
            .finalize()
            .into();
        let mut v = vec![1u8];
        v.extend_from_slice(&prev);
        v.extend_from_slice(&hash);
        v.extend_from_slice(&c);
        batch.insert(&seq.to_be_bytes(), v);
        prev = hash;
        if i % 10_000 == 9_999 {
            audit.apply_batch(std::mem::take(&mut batch)).unwrap();
        }
    }
    audit.apply_batch(batch).unwrap();
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_audit_storm_does_not_stall_other_users() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    s.practitioner("bob", Role::Doctor).await;
    s.patient("mallory").await;
    let rec = upload(&alice, "medical", b"allergies: none").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    drop(alice);

    // A long history: each verification walks all of it.
    let Sandbox { mesh, dir } = s;
    mesh.shutdown().await.unwrap();
    let t = Instant::now();
    grow_audit_log(&dir.path().join("mesh").join("access-policy"), 150_000);
    eprintln!("grew the audit log in {:?}", t.elapsed());
    let s = Sandbox {
        mesh: Sandbox::start_in(dir.path().join("mesh")).await,
        dir,
    };
    let bob = s.session("bob");
    let mallory = s.patient("mallory").await;
    let ops = s.operator();
    let global = global_head(&ops).await;
    assert!(global > 150_000);

    let started = Instant::now();
    let mut storm = Vec::new();
    for _ in 0..32 {
        let c = mallory.session.clients.clone();
        storm.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = c
                .policy
                .clone()
                .verify_audit(proto::VerifyAuditRequest::default())
                .await;
            (r.map(|r| r.into_inner()), t.elapsed())
        }));
    }
    // Bob's reads go on, each well within the inter-service deadline.
    let mut reads = 0;
    let mut slowest = Duration::ZERO;
    while !storm.iter().all(|t| t.is_finished()) && started.elapsed() < Duration::from_secs(60) {
        let t = Instant::now();
        let got = download(&bob, &rec.record_id)
            .await
            .expect("another user's read must not fail during a VerifyAudit storm");
        assert_eq!(got, b"allergies: none");
        slowest = slowest.max(t.elapsed());
        reads += 1;
    }
    let (mut verified, mut busy) = (0, 0);
    for t in storm {
        match t.await.unwrap() {
            (Ok(r), took) => {
                verified += 1;
                assert!(r.ok, "{r:?}");
                // Mallory owns only her enrollment's entry; she learns
                // nothing of the rest.
                assert_eq!(r.entries, 1, "{r:?} after {took:?}");
            }
            (Err(st), _) => {
                assert_eq!(st.code(), Code::ResourceExhausted, "{st:?}");
                assert!(st.message().contains("verification is running"), "{st:?}");
                busy += 1;
            }
        }
    }
    eprintln!(
        "32 VerifyAudit over {global} entries: {verified} ran, {busy} refused as busy, in {:?}; \
         bob read {reads} times, slowest {slowest:?}",
        started.elapsed()
    );
    assert!(verified >= 1);
    assert!(reads >= 1);
    s.shutdown().await;
}
