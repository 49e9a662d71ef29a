//! Crash durability: `sesphrd dev` is killed with SIGKILL at a random point
//! of a write burst, restarted on the same data directory, and every
//! acknowledged write must be there, nothing half-written may be visible, and
//! the audit chain must still verify. Four clients upload at once (their
//! commits share syncs); eight seeds.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use sesphr_client::MeshFile;
use sesphr_client::{self as client, Patient, Session};
use sesphr_identity::Role;

use common::process::start_sesphrd as start;

/// A tiny deterministic generator (the seed fixes the kill point).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Clients uploading at once.
const UPLOADERS: usize = 4;

fn content(i: usize) -> Vec<u8> {
    format!("record {i} ").repeat(1 + i % 50).into_bytes()
}

async fn crash_and_recover(seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mesh");
    let homes = tmp.path().join("users");
    let (mut child, mesh_path) = start(&data);
    let mesh = MeshFile::load(&mesh_path).unwrap();
    client::enroll(&mesh, &homes.join("alice"), "alice", Role::Patient, "")
        .await
        .unwrap();
    for g in 0..4 {
        let id = format!("doc{g}");
        let invitation = common::dev_invitation(&mesh, &id, Role::Doctor)
            .await
            .unwrap();
        client::enroll(&mesh, &homes.join(&id), &id, Role::Doctor, &invitation)
            .await
            .unwrap();
    }
    let alice = std::sync::Arc::new(Patient::open(&mesh, &homes.join("alice")).unwrap());

    // Kill after a seeded delay while uploads (from several clients at once,
    // so commits share their syncs) and grants are in flight.
    // The delay counts from the first acknowledgement, so a slow machine
    // still kills mid-burst, not before it.
    let mut rng = Lcg(seed);
    let kill_after = Duration::from_millis(150 + rng.next() % 600);
    let pid = child.id();
    let first_ack = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = first_ack.clone();
    let killer = std::thread::spawn(move || {
        for _ in 0..3000 {
            if seen.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(kill_after);
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    let uploaders: Vec<_> = (0..UPLOADERS)
        .map(|u| {
            let alice = alice.clone();
            let first_ack = first_ack.clone();
            tokio::spawn(async move {
                let mut acked: Vec<(client::RecordId, Vec<u8>)> = Vec::new();
                let mut granted: Vec<String> = Vec::new();
                for i in (u..10_000).step_by(UPLOADERS) {
                    if Instant::now() > deadline {
                        break;
                    }
                    let data = content(i);
                    let len = data.len() as u64;
                    let r = alice
                        .upload(
                            "medical",
                            std::io::Cursor::new(data.clone()),
                            len,
                            client::no_progress(),
                        )
                        .await;
                    match r {
                        Ok(rec) => {
                            acked.push((rec.record_id, data));
                            first_ack.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(_) => break, // the server is gone
                    }
                    if u == 0 && i % 20 == 0 && granted.len() < 4 {
                        let g = format!("doc{}", granted.len());
                        if alice
                            .grant("medical", &g, Default::default())
                            .await
                            .is_err()
                        {
                            break;
                        }
                        granted.push(g);
                    }
                }
                (acked, granted)
            })
        })
        .collect();
    let mut acked = Vec::new();
    let mut granted = Vec::new();
    for u in uploaders {
        let (a, g) = u.await.unwrap();
        acked.extend(a);
        granted.extend(g);
    }
    killer.join().unwrap();
    let _ = child.wait();
    drop(alice);
    assert!(
        !acked.is_empty(),
        "seed {seed}: the burst acknowledged nothing before the kill"
    );

    let (mut child, mesh_path) = start(&data);
    let mesh = MeshFile::load(&mesh_path).unwrap();
    let alice = Session::open(&mesh, &homes.join("alice")).unwrap();
    // Every acknowledged record is there, byte for byte.
    for (id, data) in &acked {
        let mut out = Vec::new();
        alice
            .download(id, &mut out, client::no_progress())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: acknowledged record {id} lost: {e}"));
        assert_eq!(&out, data, "seed {seed}: record {id} corrupted");
    }
    // Nothing half-written is visible: at most the uploads that were in
    // flight (one per client) may have committed without their
    // acknowledgements arriving, and whatever is listed decrypts completely
    // (authenticated).
    let listed = alice.list(None, None).await.unwrap();
    assert!(
        listed.len() <= acked.len() + UPLOADERS,
        "seed {seed}: unexpected records"
    );
    for r in &listed {
        let mut out = Vec::new();
        alice
            .download(&r.record_id, &mut out, client::no_progress())
            .await
            .unwrap_or_else(|e| {
                panic!("seed {seed}: listed record {} unreadable: {e}", r.record_id)
            });
    }
    // Acknowledged grants survive; the audit chain verifies.
    let grants = alice.grants().await.unwrap();
    for g in &granted {
        assert!(
            grants.given.iter().any(|x| x.grantee_id == g.as_str()),
            "seed {seed}: acknowledged grant to {g} lost"
        );
    }
    let report = alice.verify_audit().await.unwrap();
    assert!(
        report.ok,
        "seed {seed}: audit chain broken: {}",
        report.problem
    );
    eprintln!(
        "seed {seed}: killed after {kill_after:?}; {} acknowledged records, {} grants, {} listed, {} audit entries, all intact",
        acked.len(),
        granted.len(),
        listed.len(),
        report.entries
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    for seed in 1..=8 {
        crash_and_recover(seed).await;
    }
}
