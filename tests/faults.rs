//! Faults: a peer that is down or hangs, and a disk that fills up.
//!
//! The services (and one re-encryption node, 1-of-1) run individually in
//! this process (`daemon::run_service`), so AccessPolicy can be stopped,
//! replaced by a listener that never answers, and started again on the same
//! port while CloudStorage and the SRS keep running. CloudStorage's data directory can
//! sit on a small tmpfs of its own to run out of space for real.
//! (Crash durability — kill -9 mid-burst — is `tests/durability.rs`.)

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{download, eventually, upload};
use sesphr::proto;
use sesphr_client::MeshFile;
use sesphr_client::{self as client, ClientError, Patient, Practitioner};
use sesphr_identity::{NodeIndex, Role, Service};
use sesphr_mesh::limits::Limits;
use sesphr_mesh::pki::DevPki;
use sesphr_mesh::tls::{TlsFiles, TlsMaterial};
use sesphr_server::daemon::{self, NodeParams, ServeError, Served, ServiceParams, SrsParams};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;

const TD: &str = "sesphr.local";
/// Deadline of every inter-service call in these meshes.
const PEER_TIMEOUT: Duration = Duration::from_millis(1_000);

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

struct Mesh {
    pki: DevPki,
    dealing: PathBuf,
    policy_url: String,
    file: MeshFile,
    /// The setup service's port, bound before anything starts: AccessPolicy
    /// (started first) must know where the user directory will be.
    srs_listener: Option<std::net::TcpListener>,
    srs_url: String,
}

impl Mesh {
    fn new(dir: &Path) -> Self {
        sesphr_mesh::tls::install_crypto_provider();
        let pki = DevPki::ensure(&dir.join("pki"), TD).unwrap();
        let one = NodeIndex::new(1).unwrap();
        pki.ensure_node(TD, one).unwrap();
        let dealing = dir.join("pki/oprf");
        let dealt = sesphr_server::dealing::deal(&dealing, 1, 1, None).unwrap();
        let srs_listener = std::net::TcpListener::bind(any_port()).unwrap();
        let srs_url = format!("https://{}", srs_listener.local_addr().unwrap());
        Mesh {
            pki,
            dealing,
            policy_url: String::new(),
            srs_listener: Some(srs_listener),
            srs_url,
            file: MeshFile {
                trust_domain: TD.into(),
                ca: dir.join("pki/ca.pem"),
                cloud_storage: String::new(),
                srs: String::new(),
                access_policy: String::new(),
                threshold: 1,
                srs_nodes: vec![client::NodeEntry {
                    index: 1,
                    url: String::new(),
                    oprf_public_share: dealt.srs_nodes[0].oprf_public_share.clone(),
                }],
                timeouts: None,
                audit: None,
            },
        }
    }

    /// Starts `service` on `addr` (port 0: any) with its data in `data_dir`.
    async fn start(
        &mut self,
        service: impl Into<Served>,
        addr: SocketAddr,
        data_dir: PathBuf,
    ) -> Running {
        let service = service.into();
        let name = service.name();
        let name = name.as_str();
        let tls = TlsMaterial::load(&TlsFiles {
            cert: self.pki.cert(name),
            key: self.pki.key(name),
            ca: self.pki.ca_cert(),
        })
        .unwrap();
        let srs = (service == Served::Service(Service::Srs)).then(|| SrsParams {
            ca: self.pki.load_user_ca().unwrap(),
            self_registrations_per_minute: Some(600),
            user_cert_validity: sesphr_mesh::pki::USER_CERT_VALIDITY,
        });
        let node = match service {
            Served::SrsNode(i) => Some(NodeParams {
                oprf_share: daemon::read_oprf_share(&sesphr_server::dealing::share_path(
                    &self.dealing,
                    i,
                ))
                .unwrap(),
                setup_endpoint: self.srs_url.clone(),
                reencrypt_rate: sesphr_server::config::DEFAULT_REENCRYPT_RATE,
            }),
            _ => None,
        };
        let reserved = match service {
            Served::Service(Service::Srs) if addr.port() == 0 => self.srs_listener.take(),
            _ => None,
        };
        let listener = match reserved {
            Some(l) => {
                l.set_nonblocking(true).unwrap();
                tokio::net::TcpListener::from_std(l).unwrap()
            }
            None => daemon::bind(addr).await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let params = ServiceParams {
            service,
            trust_domain: TD.into(),
            listener,
            health_listener: None,
            tls,
            roots: std::sync::Arc::new(
                sesphr_mesh::trust::TrustRoots::load(&self.pki.ca_cert(), &self.pki.user_ca_cert())
                    .unwrap(),
            ),
            data_dir,
            access_policy_endpoint: Some(self.policy_url.clone()),
            setup_endpoint: Some(self.srs_url.clone()),
            deny_list: sesphr_server::config::DenyListSettings::default().into(),
            peer_timeout: PEER_TIMEOUT,
            srs,
            node,
            audit_log: (service == Served::Service(Service::AccessPolicy)).then(|| {
                daemon::AuditLogParams {
                    key: sesphr_tlog::SigningKey::from_hex(&"42".repeat(32)).unwrap(),
                    checkpoint_interval: Duration::from_secs(1),
                }
            }),
            witness: None,
            max_record_bytes: sesphr_server::config::DEFAULT_MAX_RECORD_BYTES,
            limits: Limits::default(),
            dedup_scope: Default::default(),
            storage: Default::default(),
            transport: Default::default(),
        };
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon::run_service(params, async move {
            let _ = rx.await;
        }));
        Running { addr, stop, task }
    }

    /// Starts the SRS setup service and then node 1 (which asks it), with
    /// their data under `dir`, and enters both in the mesh file.
    async fn start_srs(&mut self, dir: &Path) -> (Running, Running) {
        let setup = self.start(Service::Srs, any_port(), dir.join("srs")).await;
        self.file.srs = format!("https://{}", setup.addr);
        let node = self
            .start(
                Served::SrsNode(NodeIndex::new(1).unwrap()),
                any_port(),
                dir.join("srs-node-1"),
            )
            .await;
        self.file.srs_nodes[0].url = format!("https://{}", node.addr);
        (setup, node)
    }

    /// Enrols: patients register themselves, others by the operator's
    /// invitation.
    async fn enroll(&self, home: &Path, id: &str, role: Role) {
        let tls = TlsMaterial::load(&TlsFiles {
            cert: self.pki.cert("operator"),
            key: self.pki.key("operator"),
            ca: self.pki.ca_cert(),
        })
        .unwrap();
        let ops = client::admin::Admin::connect(&self.file, &tls).unwrap();
        let invitation = ops.enrolment_invitation(id, role).await.unwrap();
        client::enroll(&self.file, home, id, role, &invitation)
            .await
            .unwrap();
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Whether a refusal says AccessPolicy could not be asked: for the call
/// itself, or (once AccessPolicy has been away past the deny list's
/// staleness bound) for the list of disabled users.
fn unreachable_policy(message: &str) -> bool {
    (message.contains("access policy could not be asked") && message.contains("refusing access"))
        || message.contains("(AccessPolicy unreachable); users are refused")
}

/// Every way a grantee reads: all refused with UNAVAILABLE and a message
/// that says AccessPolicy could not be asked, within the peer deadline.
async fn assert_fails_closed(bob: &Practitioner, record: &client::Record, what: &str) {
    let started = Instant::now();
    let err = download(bob, &record.record_id)
        .await
        .expect_err("a grantee's read must be refused while AccessPolicy is unreachable");
    eprintln!("{what}: download refused after {:?}", started.elapsed());
    assert_eq!(err.code(), Some(Code::Unavailable), "{what}: {err}");
    assert!(unreachable_policy(&err.to_string()), "{what}: {err}");
    let header = sesphr_crypto::RecordHeader::from_bytes(&record.record_header).unwrap();
    let reenc = bob.session.clients.nodes.nodes[0]
        .client
        .clone()
        .re_encrypt(proto::ReEncryptRequest {
            owner_id: record.owner_id.to_string(),
            partition: record.partition.to_string(),
            epoch: record.epoch,
            capsules: vec![header.capsule().to_bytes().to_vec()],
            record_id: record.record_id.to_string(),
        })
        .await
        .expect_err("the SRS must not re-encrypt without asking AccessPolicy");
    eprintln!(
        "{what}: reencrypt refused after {:?}: {reenc:?}",
        started.elapsed()
    );
    assert_eq!(reenc.code(), Code::Unavailable, "{what}: {reenc:?}");
    assert!(unreachable_policy(reenc.message()), "{what}: {reenc:?}");
    let listed = bob.list(Some(&record.owner_id), None).await;
    let err = listed.expect_err("listing another owner's records needs AccessPolicy");
    assert_eq!(err.code(), Some(Code::Unavailable), "{what}: {err}");
    // Three refusals, each bounded by the 1 s peer deadline (plus slack for
    // a loaded machine).
    let took = started.elapsed();
    assert!(
        took < PEER_TIMEOUT * 3 + Duration::from_secs(6),
        "{what}: refusals took {took:?}"
    );
    eprintln!("{what}: refused (UNAVAILABLE) in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_policy_down_or_hung_fails_closed_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new(tmp.path());
    let policy = mesh
        .start(Service::AccessPolicy, any_port(), tmp.path().join("policy"))
        .await;
    let policy_addr = policy.addr;
    mesh.policy_url = format!("https://{policy_addr}");
    let cloud = mesh
        .start(Service::CloudStorage, any_port(), tmp.path().join("cloud"))
        .await;
    mesh.file.cloud_storage = format!("https://{}", cloud.addr);
    mesh.file.access_policy = mesh.policy_url.clone();
    let (srs, node) = mesh.start_srs(tmp.path()).await;

    let homes = tmp.path().join("users");
    mesh.enroll(&homes.join("alice"), "alice", Role::Patient)
        .await;
    mesh.enroll(&homes.join("bob"), "bob", Role::Doctor).await;
    let alice = Patient::open(&mesh.file, &homes.join("alice")).unwrap();
    let bob = Practitioner::open(&mesh.file, &homes.join("bob")).unwrap();
    let rec = upload(&alice, "medical", b"allergic to penicillin").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    assert_eq!(
        download(&bob, &rec.record_id).await.unwrap(),
        b"allergic to penicillin"
    );

    // 1. AccessPolicy stopped: connections are refused.
    policy.stop().await;
    assert_fails_closed(&bob, &rec, "AccessPolicy down").await;
    // Once the deny list is older than its staleness bound, even the owner
    // is refused: a disable AccessPolicy acknowledged just before it went
    // away must still hold everywhere within the bound.
    let owner = eventually(Duration::from_secs(15), || async {
        match download(&alice, &rec.record_id).await {
            Err(e) if e.code() == Some(Code::Unavailable) => Ok(e),
            Err(e) => Err(e),
            Ok(_) => Err(ClientError::Invalid(
                "the owner's read was still served".into(),
            )),
        }
    })
    .await;
    assert!(owner.to_string().contains("deny list"), "{owner}");

    // 2. AccessPolicy hung: its port accepts connections and never answers
    // (not even the TLS handshake). Only deadlines end the wait.
    let hung = std::net::TcpListener::bind(policy_addr).unwrap();
    hung.set_nonblocking(true).unwrap();
    let (stop_hung, hung_stopped) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        // Bounded: at most 60 s, until told to stop.
        for _ in 0..6_000 {
            if hung_stopped.try_recv().is_ok() {
                break;
            }
            if let Ok((sock, _)) = hung.accept() {
                held.push(sock);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        held.len()
    });
    assert_fails_closed(&bob, &rec, "AccessPolicy hung").await;
    // The services keep asking (the deny list is polled every second)
    // even while they refuse without asking.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    stop_hung.send(()).unwrap();
    let held = holder.join().unwrap();
    assert!(held > 0, "the services never tried the hung peer");

    // 3. AccessPolicy back on the same port, same data: reads work again.
    let policy = mesh
        .start(
            Service::AccessPolicy,
            policy_addr,
            tmp.path().join("policy"),
        )
        .await;
    let started = Instant::now();
    let back = eventually(Duration::from_secs(20), || download(&bob, &rec.record_id)).await;
    assert_eq!(back, b"allergic to penicillin");
    eprintln!(
        "recovered {:?} after AccessPolicy restarted",
        started.elapsed()
    );
    // The refusals above could not reach the audit trail (AccessPolicy was
    // away; the services logged them); the chain still verifies.
    assert!(alice.verify_audit().await.unwrap().ok);

    cloud.stop().await;
    srs.stop().await;
    node.stop().await;
    policy.stop().await;
}

/// A small tmpfs mounted for the test's lifetime (needs root), or `None`.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes}"))
            .arg("tmpfs")
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn objects_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Uploading `len` bytes of `fill`, expecting a clean refusal.
async fn upload_refused(alice: &Patient, len: usize, what: &str) -> ClientError {
    let data = vec![0x5a; len];
    let err = alice
        .upload(
            "medical",
            std::io::Cursor::new(data),
            len as u64,
            client::no_progress(),
        )
        .await
        .expect_err(what);
    eprintln!("{what}: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_the_write_and_leaves_no_partial_record() {
    let tmp = tempfile::tempdir().unwrap();
    let cloud_dir = tmp.path().join("cloud");
    // 24 MiB for CloudStorage alone; without root (no mount), the object
    // directory is made read-only instead, which fails the same code path.
    let tmpfs = Tmpfs::mount(&cloud_dir, 24 << 20);
    if tmpfs.is_none() {
        eprintln!(
            "cannot mount a tmpfs here (not root?): simulating with a read-only object directory"
        );
    }
    let mut mesh = Mesh::new(tmp.path());
    let policy = mesh
        .start(Service::AccessPolicy, any_port(), tmp.path().join("policy"))
        .await;
    mesh.policy_url = format!("https://{}", policy.addr);
    let cloud = mesh
        .start(Service::CloudStorage, any_port(), cloud_dir.clone())
        .await;
    mesh.file.cloud_storage = format!("https://{}", cloud.addr);
    mesh.file.access_policy = mesh.policy_url.clone();
    let (srs, node) = mesh.start_srs(tmp.path()).await;
    let homes = tmp.path().join("users");
    mesh.enroll(&homes.join("alice"), "alice", Role::Patient)
        .await;
    let alice = Patient::open(&mesh.file, &homes.join("alice")).unwrap();
    let first = vec![1u8; 4 << 20];
    let kept = upload(&alice, "medical", &first).await;
    let objects = cloud_dir.join("records");
    let before = objects_in(&objects);

    let storage_error = |err: &ClientError, what: &str| {
        assert_eq!(err.code(), Some(Code::Internal), "{what}: {err}");
        assert!(
            err.to_string()
                .contains("storage error; the operation was not applied"),
            "{what}: {err}"
        );
    };
    let mut sled_failed = false;
    // Small records to delete once the disk is full (see below).
    let mut small = Vec::new();
    let mut deleted: Vec<String> = Vec::new();
    let mut expected_objects = before.clone();
    match &tmpfs {
        Some(_) => {
            for i in 0..100u8 {
                small.push(
                    upload(&alice, "medical", &[i; 16])
                        .await
                        .record_id
                        .to_string(),
                );
            }
            expected_objects = objects_in(&objects);
            let before = expected_objects.clone();
            // The object file runs into ENOSPC mid-stream.
            let err = upload_refused(&alice, 40 << 20, "40 MiB upload onto a 24 MiB disk").await;
            storage_error(&err, "object write");
            assert_eq!(objects_in(&objects), before, "a partial object was left");
            // sled itself cannot write: the disk is filled to the last byte
            // by another tenant, so even the small pending marker fails.
            let filler = cloud_dir.join("filler");
            let mut f = std::fs::File::create(&filler).unwrap();
            let block = vec![0u8; 1 << 20];
            for _ in 0..64 {
                if std::io::Write::write_all(&mut f, &block).is_err() {
                    break;
                }
            }
            let _ = std::io::Write::write_all(&mut f, &[0u8; 4096]);
            drop(f);
            let err = upload_refused(&alice, 10, "upload onto a full disk").await;
            storage_error(&err, "full disk");
            // A refused upload writes nothing to sled; a delete does (and
            // frees its object only once that write is durable). Deleting
            // the small records one by one soon needs a page sled cannot
            // get: that delete is refused, and its record keeps its bytes.
            // Each delete frees its object's page; take it back at once, so
            // only sled's own log can grow into nothing.
            let top_up = |path: &Path| {
                let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
                for _ in 0..64 {
                    if std::io::Write::write_all(&mut f, &[0u8; 4096]).is_err() {
                        break;
                    }
                }
            };
            for id in &small {
                match alice.delete(id).await {
                    Ok(_) => {
                        deleted.push(id.clone());
                        top_up(&filler);
                    }
                    Err(err) => {
                        storage_error(&err, "delete on a full disk");
                        eprintln!("sled ran out of space: {err}");
                        sled_failed = true;
                        break;
                    }
                }
            }
            assert!(sled_failed, "sled never failed to write");
            std::fs::remove_file(&filler).unwrap();
        }
        None => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&objects, std::fs::Permissions::from_mode(0o500)).unwrap();
            let err =
                upload_refused(&alice, 1 << 20, "upload into a read-only object directory").await;
            storage_error(&err, "read-only objects");
            std::fs::set_permissions(&objects, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }
    // Nothing partial is left. Reads go on, nothing partial is visible,
    // the earlier record is intact; once sled itself failed, it refuses
    // reads too (cleanly) until CloudStorage restarts (checked below).
    assert!(
        objects_in(&objects)
            .iter()
            .all(|o| expected_objects.contains(o)),
        "a partial object was left"
    );
    match alice.list(None, None).await {
        Err(err) if sled_failed => storage_error(&err, "listing after sled failed"),
        listed => {
            let listed = listed.unwrap();
            assert!(
                listed
                    .iter()
                    .all(|r| r.record_id == kept.record_id
                        || small.contains(&r.record_id.to_string())),
                "only acknowledged records are listed: {listed:?}"
            );
            assert!(listed.iter().any(|r| r.record_id == kept.record_id));
            assert_eq!(download(&alice, &kept.record_id).await.unwrap(), first);
        }
    }
    // sled 0.34 refuses every write after an I/O error until the database
    // is reopened: with space free again, writes still fail (cleanly) until
    // CloudStorage restarts, which is what an orchestrator does. After the
    // restart the store is whole and takes writes.
    let (cloud, alice) = if sled_failed {
        let r = alice
            .upload(
                "medical",
                std::io::Cursor::new(b"too early".to_vec()),
                9,
                client::no_progress(),
            )
            .await;
        eprintln!(
            "with space again, before a restart: {:?}",
            r.map(|m| m.record_id)
        );
        cloud.stop().await;
        let cloud = mesh
            .start(Service::CloudStorage, any_port(), cloud_dir.clone())
            .await;
        mesh.file.cloud_storage = format!("https://{}", cloud.addr);
        let alice = Patient::open(&mesh.file, &homes.join("alice")).unwrap();
        let listed = alice.list(None, None).await.unwrap();
        assert!(
            listed.iter().any(|r| r.record_id == kept.record_id),
            "after the restart: {listed:?}"
        );
        // Acknowledged deletes stay done, the records never deleted are
        // all there, and every listed record has all its bytes (the refused
        // delete's record included, if sled had kept it).
        for r in &listed {
            let id = r.record_id.to_string();
            assert!(!deleted.contains(&id), "deleted record {id} came back");
            download(&alice, &r.record_id)
                .await
                .unwrap_or_else(|e| panic!("listed record {id} unreadable: {e}"));
        }
        for id in small.iter().skip(deleted.len() + 1) {
            assert!(
                listed.iter().any(|r| r.record_id.as_str() == id.as_str()),
                "record {id} was never deleted but is gone"
            );
        }
        (cloud, alice)
    } else {
        (cloud, alice)
    };
    let after = upload(&alice, "medical", b"space again").await;
    assert_eq!(
        download(&alice, &after.record_id).await.unwrap(),
        b"space again"
    );
    cloud.stop().await;
    srs.stop().await;
    node.stop().await;
    policy.stop().await;
    drop(tmpfs);
}
