//! The SRS as separate processes: `sesphrd dev --configure-only` lays a
//! 2-of-3 mesh out, and every service and re-encryption node runs as its
//! own `sesphrd serve --config DIR/serve/<name>.toml`, so a test can kill
//! one node (kill -9) and start it again, as an operator would.
//!
//! Also here: a single-SRS directory of an earlier `sesphrd` is refused by
//! `sesphrd dev` until `sesphrd migrate-srs` split it, and afterwards its
//! records and grants are readable.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::impostor::{short_timeouts, with_timeouts};
use common::{bin, download, eventually, upload};
use sesphr_client::{self as client, MeshFile, Patient, Practitioner, Role};
use tonic::Code;

/// `sesphrd dev --configure-only` on `dir` with free ports and the given
/// topology; returns the mesh file.
fn configure(dir: &Path, extra: &[&str]) -> MeshFile {
    let out = Command::new(bin("sesphrd"))
        .args(["dev", "--configure-only", "--base-port", "0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .expect("sesphrd runs");
    assert!(
        out.status.success(),
        "configure: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    MeshFile::load(&dir.join("mesh.toml")).expect("mesh file")
}

/// One `sesphrd serve` process (killed when dropped).
struct Served {
    config: PathBuf,
    child: Option<Child>,
}

impl Served {
    fn start(config: PathBuf) -> Self {
        let mut s = Served {
            config,
            child: None,
        };
        s.restart();
        s
    }

    fn restart(&mut self) {
        let child = Command::new(bin("sesphrd"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sesphrd serve starts");
        self.child = Some(child);
    }

    /// kill -9: no shutdown, no flush beyond what was acknowledged.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn enroll(mesh: &MeshFile, home: &Path, id: &str, role: Role) {
    // The mesh may still be starting: the first invitation waits for it.
    let token = eventually(Duration::from_secs(30), || {
        common::dev_invitation(mesh, id, role)
    })
    .await;
    eventually(Duration::from_secs(30), || {
        client::enroll(mesh, home, id, role, &token)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_one_node_down_and_fail_clearly_with_two_then_recover() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let mesh = configure(&dir, &[]);
    assert_eq!((mesh.threshold, mesh.srs_nodes.len()), (2, 3));
    let serve = |name: &str| Served::start(dir.join("serve").join(format!("{name}.toml")));
    let _policy = serve("access-policy");
    let _setup = serve("srs");
    let _cloud = serve("cloud-storage");
    let mut nodes: Vec<Served> = (1..=3).map(|i| serve(&format!("srs-node-{i}"))).collect();

    let homes = tmp.path().join("users");
    for (id, role) in [
        ("alice", Role::Patient),
        ("bob", Role::Doctor),
        ("carol", Role::Nurse),
    ] {
        enroll(&mesh, &homes.join(id), id, role).await;
    }
    let alice = Patient::open(&mesh, &homes.join("alice")).unwrap();
    let bob = Practitioner::open(&mesh, &homes.join("bob")).unwrap();
    let rec = upload(&alice, "medical", b"allergic to penicillin").await;
    eventually(Duration::from_secs(30), || {
        alice.grant("medical", "bob", Default::default())
    })
    .await;
    assert_eq!(
        download(&bob, &rec.record_id).await.unwrap(),
        b"allergic to penicillin"
    );

    // Bob granted again while node 3 is down: nodes 1 and 2 hold shares of
    // the new sharing, node 3 (back, not yet retried) of the old one. Reads
    // combine only cfrags of one sharing.
    nodes[2].kill();
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    assert_eq!(alice.pending_node_ops().unwrap().len(), 1);
    nodes[2].restart();
    nodes[0].kill();
    let e = eventually(Duration::from_secs(30), || async {
        match download(&bob, &rec.record_id).await {
            Err(e) if e.to_string().contains("different kfrag sharings") => Ok(e),
            other => Err(client::ClientError::Invalid(format!("{other:?}"))),
        }
    })
    .await;
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    nodes[0].restart();
    eventually(Duration::from_secs(30), || async {
        match alice.retry_pending().await? {
            0 => Ok(()),
            n => Err(client::ClientError::Invalid(format!("{n} still owed"))),
        }
    })
    .await;
    for down in [0, 1] {
        nodes[down].kill();
        let read = eventually(Duration::from_secs(30), || download(&bob, &rec.record_id)).await;
        assert_eq!(read, b"allergic to penicillin", "node {} down", down + 1);
        nodes[down].restart();
    }
    eventually(Duration::from_secs(30), || download(&bob, &rec.record_id)).await;

    // Node 3 killed: every read, grant and revocation still works with
    // two of three.
    nodes[2].kill();
    assert_eq!(
        download(&bob, &rec.record_id).await.unwrap(),
        b"allergic to penicillin"
    );
    alice
        .grant("medical", "carol", Default::default())
        .await
        .expect("a grant needs 2 of 3 nodes");
    let notices = alice.notices.take().join("\n");
    assert!(notices.contains("node 3"), "{notices}");
    let carol = Practitioner::open(&mesh, &homes.join("carol")).unwrap();
    assert_eq!(
        download(&carol, &rec.record_id).await.unwrap(),
        b"allergic to penicillin"
    );
    alice.revoke("medical", "carol").await.unwrap();
    assert!(download(&carol, &rec.record_id).await.is_err());
    // Node 3 is owed the deletion (its share for carol was dropped, not
    // owed any more).
    let owed = alice.pending_node_ops().unwrap();
    assert!(
        owed.iter()
            .all(|op| op.node == 3 && op.grantee_id == "carol" && op.owed == client::Owed::Delete),
        "{owed:?}"
    );
    assert!(!owed.is_empty());

    // Node 2 killed too: a grantee's read fails, within the client's
    // deadline, with UNAVAILABLE naming the two nodes that did not answer.
    nodes[1].kill();
    let short = with_timeouts(mesh.clone(), short_timeouts(2_000));
    let bob_short = Practitioner::open(&short, &homes.join("bob")).unwrap();
    let started = Instant::now();
    let e = download(&bob_short, &rec.record_id).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("1 of the 2 re-encryption nodes a read needs"),
        "{msg}"
    );
    assert!(
        msg.contains("node 2 (") && msg.contains("node 3 ("),
        "{msg}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    // The owner reads her own record without any node.
    assert_eq!(
        download(&alice, &rec.record_id).await.unwrap(),
        b"allergic to penicillin"
    );

    // Node 2 back: reads recover.
    nodes[1].restart();
    let back = eventually(Duration::from_secs(30), || download(&bob, &rec.record_id)).await;
    assert_eq!(back, b"allergic to penicillin");

    // Node 3 back: the owner's next operation settles what node 3 is owed.
    nodes[2].restart();
    eventually(Duration::from_secs(30), || async {
        match alice.retry_pending().await? {
            0 => Ok(()),
            n => Err(client::ClientError::Invalid(format!("{n} still owed"))),
        }
    })
    .await;
    assert!(alice.pending_node_ops().unwrap().is_empty());
    // Carol stays out, bob stays in, with any two nodes.
    nodes[0].kill();
    assert!(download(&carol, &rec.record_id).await.is_err());
    assert_eq!(
        download(&bob, &rec.record_id).await.unwrap(),
        b"allergic to penicillin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_srs_directory_is_refused_until_migrated_and_then_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    // A 1-of-1 mesh holds a record and a grant.
    let (mut child, mesh_path) = {
        let mut c = Command::new(bin("sesphrd"));
        c.args([
            "dev",
            "--base-port",
            "0",
            "--srs-nodes",
            "1",
            "--threshold",
            "1",
        ]);
        common::process::start_sesphrd_with(&dir, c)
    };
    let mesh = MeshFile::load(&mesh_path).unwrap();
    let homes = tmp.path().join("users");
    enroll(&mesh, &homes.join("alice"), "alice", Role::Patient).await;
    enroll(&mesh, &homes.join("bob"), "bob", Role::Doctor).await;
    let alice = Patient::open(&mesh, &homes.join("alice")).unwrap();
    let rec = upload(&alice, "medical", b"chart").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    drop(alice);
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();

    // Put it back the way a single SRS kept it: every kfrag set in srs/,
    // no node store, no OPRF dealing.
    {
        use sesphr_srs::{SrsStore, Store};
        let node = SrsStore::open(&dir.join("srs-node-1")).unwrap();
        let old = SrsStore::open(&dir.join("srs")).unwrap();
        for (o, p, g, e, set) in node.kfrag_sets().unwrap() {
            old.put_kfrags(&o, &p, e, &g, set).unwrap();
        }
    }
    std::fs::remove_dir_all(dir.join("srs-node-1")).unwrap();
    std::fs::remove_dir_all(dir.join("pki/oprf")).unwrap();

    let out = Command::new(bin("sesphrd"))
        .args(["dev", "--configure-only", "--base-port", "0", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sesphrd migrate-srs --data-dir"), "{err}");

    let out = Command::new(bin("sesphrd"))
        .args(["migrate-srs", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 kfrag set(s)"));
    // Twice is refused, not repeated.
    let again = Command::new(bin("sesphrd"))
        .args(["migrate-srs", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!again.status.success());

    // Started again (1-of-1, as dealt): bob reads the record.
    let (mut child, mesh_path) = common::process::start_sesphrd(&dir);
    let mesh = MeshFile::load(&mesh_path).unwrap();
    assert_eq!((mesh.threshold, mesh.srs_nodes.len()), (1, 1));
    let bob = Practitioner::open(&mesh, &homes.join("bob")).unwrap();
    let read = eventually(Duration::from_secs(30), || download(&bob, &rec.record_id)).await;
    assert_eq!(read, b"chart");
    let _ = child.kill();
    let _ = child.wait();
}
