//! Untrusted servers cannot fool a client: impostors (see
//! `common::impostor`) stand where a service should be — real gRPC servers
//! with real mesh certificates, forwarding to the real services as the
//! victim — and lie, stall or flood in one chosen call. The SDK and the
//! `sesphr` binary must refuse, fail within their deadlines, stay within
//! their bounds, and leave nothing behind. Loopback only; the deadlines
//! here are 1 s so every case ends in seconds.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::impostor::{
    self, AccessPolicyHooks, CloudStorageHooks, Impostor, Silent, SrsNodeHooks, forward, hook,
};
use common::{Sandbox, download, upload};
use futures::StreamExt;
use sesphr::proto::{self, get_record_response};
use sesphr_client::{
    AUDIT_PAGE, ClientError, LIST_PAGE_SIZE, MAX_AUDIT_ENTRIES, MAX_LIST_RECORDS, MeshFile,
    Patient, Session,
};
use sesphr_identity::{Identity, Role, Service};
use tonic::{Code, Response};

/// The client deadlines of these tests.
const DEADLINE_MS: u64 = 1000;
/// How long past its deadline a refusal may take on a loaded 2-core box.
const SLACK: Duration = Duration::from_secs(4);
/// A bound on any one `sesphr` run here.
const PROCESS_PATIENCE: Duration = Duration::from_secs(30);

fn short(mesh: MeshFile) -> MeshFile {
    impostor::with_timeouts(mesh, impostor::short_timeouts(DEADLINE_MS))
}

fn deadline() -> Duration {
    Duration::from_millis(DEADLINE_MS)
}

fn verification(r: &Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(e @ ClientError::Verification(_)) => e.to_string(),
        other => panic!("expected a verification error, got {other:?}"),
    }
}

/// A session of `user` against `mesh` (a rewritten mesh file).
fn session(s: &Sandbox, mesh: &MeshFile, user: &str) -> Session {
    Session::open(mesh, &s.home(user)).expect("profile opens")
}

fn patient(s: &Sandbox, mesh: &MeshFile, user: &str) -> Patient {
    Patient::open(mesh, &s.home(user)).expect("patient profile opens")
}

/// Awaits `f`, which must fail within the deadline (plus slack); returns
/// its error and how long it took.
async fn fails_in_time<T: std::fmt::Debug>(
    f: impl std::future::Future<Output = Result<T, ClientError>>,
) -> (ClientError, Duration) {
    let start = Instant::now();
    let r = tokio::time::timeout(deadline() * 3 + SLACK, f)
        .await
        .expect("the call must end by itself, within its deadline");
    let took = start.elapsed();
    (
        r.expect_err("a silent server must make the call fail"),
        took,
    )
}

fn assert_deadline(what: &str, e: &ClientError, took: Duration) {
    eprintln!("{what}: failed after {took:?}: {e}");
    assert!(e.to_string().contains("deadline"), "{what}: {e}");
    assert!(
        took >= deadline() / 2,
        "{what}: too early ({took:?}) for a deadline"
    );
    assert!(took < deadline() * 3 + SLACK, "{what}: took {took:?}");
}

// ---- server identities ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_mesh_identity_is_refused_by_every_client() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let rec = upload(&alice, "medical", b"chart").await;
    let cloud = impostor::service_identity(&s, Service::CloudStorage);
    let policy = impostor::service_identity(&s, Service::AccessPolicy);

    // Control: an impostor with the real CloudStorage identity is believed
    // (it only forwards).
    let honest = Impostor::cloud_storage(&s, "alice", Default::default()).await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &honest.url);
    let listed = session(&s, &mesh, "alice").list(None, None).await.unwrap();
    assert_eq!(listed, vec![rec.clone()]);
    assert_eq!(honest.calls(), ["ListRecords"]);

    // CloudStorage served with AccessPolicy's certificate: same CA, same
    // host name, wrong identity.
    let wrong = Impostor::serve_cloud_storage(
        &impostor::server_tls(&s, &policy),
        impostor::upstream_as(&s, "alice"),
        Default::default(),
    )
    .await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &wrong.url);
    let err = session(&s, &mesh, "alice")
        .list(None, None)
        .await
        .expect_err("a CloudStorage presenting AccessPolicy's identity must be refused");
    let msg = err.to_string();
    eprintln!("refused: {msg}");
    assert_eq!(err.code(), Some(Code::Unavailable), "{msg}");
    assert!(
        msg.contains(&format!("is {policy}, expected {cloud}")),
        "the error names both identities: {msg}"
    );
    let err = download(&session(&s, &mesh, "alice"), &rec.record_id)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&policy.to_string()), "{err}");
    assert!(wrong.calls().is_empty(), "no call reached the impostor");

    // AccessPolicy served with a patient's certificate.
    let mallory = Identity::user(&s.mesh.mesh.trust_domain, Role::Patient, "mallory").unwrap();
    let fake_policy = Impostor::serve_access_policy(
        &impostor::server_tls(&s, &mallory),
        impostor::upstream_as(&s, "alice"),
        Default::default(),
    )
    .await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::AccessPolicy, &fake_policy.url);
    let err = session(&s, &mesh, "alice").grants().await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("is {mallory}, expected {policy}")),
        "{err}"
    );

    // Enrollment's anonymous channel: an SRS with CloudStorage's identity
    // gets no CSR.
    let fake_srs = Impostor::serve_srs(
        &impostor::server_tls(&s, &cloud),
        impostor::upstream_as(&s, "alice"),
        Default::default(),
    )
    .await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::Srs, &fake_srs.url);
    let token = s.invite("carol", Role::Doctor).await.text;
    let err = sesphr_client::enroll(&mesh, &s.home("carol"), "carol", Role::Doctor, &token)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "is {cloud}, expected {}",
            impostor::service_identity(&s, Service::Srs)
        )),
        "{err}"
    );
    assert!(fake_srs.calls().is_empty());
    assert!(!sesphr_client::Profile::exists(&s.home("carol")));
    s.shutdown().await;
}

/// A CloudStorage of the sandbox's PKI on its own port and data directory,
/// asking AccessPolicy at `policy_url`.
async fn cloud_storage_asking(
    s: &Sandbox,
    data_dir: PathBuf,
    policy_url: &str,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    use sesphr_server::daemon::{ServiceParams, bind, run_service};
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let params = ServiceParams {
        service: Service::CloudStorage.into(),
        trust_domain: s.mesh.mesh.trust_domain.clone(),
        listener,
        health_listener: None,
        tls: s.mesh.identity_tls("cloud-storage").unwrap(),
        data_dir,
        roots: std::sync::Arc::new(
            sesphr_mesh::trust::TrustRoots::load(&s.mesh.pki.ca_cert(), &s.mesh.pki.user_ca_cert())
                .unwrap(),
        ),
        setup_endpoint: None,
        deny_list: sesphr_server::config::DenyListSettings::default().into(),
        access_policy_endpoint: Some(policy_url.to_owned()),
        peer_timeout: Duration::from_secs(2),
        srs: None,
        node: None,
        audit_log: None,
        witness: None,
        max_record_bytes: 1 << 30,
        limits: Default::default(),
        dedup_scope: Default::default(),
        storage: Default::default(),
        transport: Default::default(),
    };
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        run_service(params, async move {
            let _ = rx.await;
        })
        .await
        .expect("cloud storage runs");
    });
    (url, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_refuses_an_access_policy_with_another_identity() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let _bob = s.practitioner("bob", Role::Doctor).await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    // Between CloudStorage and AccessPolicy: forwarding as CloudStorage.
    let as_cloud = impostor::upstream_with(
        &s.mesh_file(),
        &s.mesh.identity_tls("cloud-storage").unwrap(),
    );
    let data = s.dir.path().join("cloud-2");

    // Control: the real AccessPolicy identity; CloudStorage asks it.
    let honest = Impostor::serve_access_policy(
        &impostor::server_tls(&s, &impostor::service_identity(&s, Service::AccessPolicy)),
        as_cloud.clone(),
        Default::default(),
    )
    .await;
    let (url, stop, task) = cloud_storage_asking(&s, data.clone(), &honest.url).await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &url);
    let rec = upload(&patient(&s, &mesh, "alice"), "medical", b"chart").await;
    let bob = session(&s, &mesh, "bob");
    assert_eq!(download(&bob, &rec.record_id).await.unwrap(), b"chart");
    assert!(honest.calls().contains(&"Check"), "{:?}", honest.calls());
    let _ = stop.send(());
    task.await.unwrap();

    // The same CloudStorage, its AccessPolicy endpoint now answered with
    // the SRS's certificate: it fails closed.
    let wrong = Impostor::serve_access_policy(
        &impostor::server_tls(&s, &impostor::service_identity(&s, Service::Srs)),
        as_cloud,
        Default::default(),
    )
    .await;
    let (url, stop, task) = cloud_storage_asking(&s, data, &wrong.url).await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &url);
    let bob = session(&s, &mesh, "bob");
    let err = download(&bob, &rec.record_id).await.unwrap_err();
    eprintln!("refused: {err}");
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(wrong.calls().is_empty(), "{:?}", wrong.calls());
    let _ = stop.send(());
    task.await.unwrap();
    s.shutdown().await;
}

// ---- deadlines ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_servers_make_get_and_ls_fail_within_the_deadline() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let rec = upload(&alice, "medical", &vec![7u8; 3 << 20]).await;
    let cloud = impostor::service_identity(&s, Service::CloudStorage);

    // Accepts TCP, never speaks TLS.
    let tcp = Silent::tcp().await;
    let mesh = short(impostor::redirect(
        &s.mesh_file(),
        Service::CloudStorage,
        &tcp.url,
    ));
    let a = session(&s, &mesh, "alice");
    let (e, took) = fails_in_time(a.list(None, None)).await;
    // (The unary deadline and the handshake's are both 1 s: either ends it.)
    assert_deadline("ls, silent TCP", &e, took);
    // A fresh session: on the same channel, the handshake that the 1 s
    // unary deadline cut short may fail an instant later and fail the next
    // call at once (correctly, but too early to time the deadline).
    let a = session(&s, &mesh, "alice");
    let (e, took) = fails_in_time(download(&a, &rec.record_id)).await;
    assert_deadline("get, silent TCP", &e, took);
    assert!(e.to_string().contains("TLS handshake"), "{e}");
    assert!(tcp.accepted() >= 1);

    // Completes TLS as CloudStorage, then never answers.
    let mute = Silent::after_tls(&impostor::server_tls(&s, &cloud)).await;
    let mesh = short(impostor::redirect(
        &s.mesh_file(),
        Service::CloudStorage,
        &mute.url,
    ));
    let a = session(&s, &mesh, "alice");
    let (e, took) = fails_in_time(a.list(None, None)).await;
    assert_deadline("ls, silent after TLS", &e, took);
    assert_eq!(e.code(), Some(Code::DeadlineExceeded), "{e}");
    let a = session(&s, &mesh, "alice");
    let (e, took) = fails_in_time(download(&a, &rec.record_id)).await;
    assert_deadline("get, silent after TLS", &e, took);
    assert!(mute.accepted() >= 1, "the handshakes completed");

    // Sends the record's metadata and first chunk, then stalls.
    let stalls = Impostor::cloud_storage(
        &s,
        "alice",
        CloudStorageHooks {
            get_record: hook(|up, req| async move {
                let real = forward::get_record(up, req).await?.into_inner();
                Ok(Response::new(impostor::then_stall(Box::pin(real.take(2)))))
            }),
            ..Default::default()
        },
    )
    .await;
    let mesh = short(impostor::redirect(
        &s.mesh_file(),
        Service::CloudStorage,
        &stalls.url,
    ));
    let a = session(&s, &mesh, "alice");
    let (e, took) = fails_in_time(download(&a, &rec.record_id)).await;
    assert_deadline("get, stalled after the first chunk", &e, took);
    assert!(e.to_string().contains("idle deadline"), "{e}");
    // Listing through it still works: the deadlines cut stalls only.
    assert_eq!(a.list(None, None).await.unwrap().len(), 1);

    // Takes an upload and never acknowledges it.
    let swallows = Impostor::cloud_storage(
        &s,
        "alice",
        CloudStorageHooks {
            put_record: hook(|_, req: tonic::Request<tonic::Streaming<_>>| async move {
                let mut stream: tonic::Streaming<proto::PutRecordRequest> = req.into_inner();
                while let Some(Ok(_)) = stream.next().await {}
                futures::future::pending::<()>().await;
                unreachable!()
            }),
            ..Default::default()
        },
    )
    .await;
    let mesh = short(impostor::redirect(
        &s.mesh_file(),
        Service::CloudStorage,
        &swallows.url,
    ));
    let p = patient(&s, &mesh, "alice");
    let data = vec![1u8; 100_000];
    let (e, took) = fails_in_time(p.upload(
        "medical",
        std::io::Cursor::new(data.clone()),
        data.len() as u64,
        sesphr_client::no_progress(),
    ))
    .await;
    assert_deadline("upload, never acknowledged", &e, took);
    assert!(e.to_string().contains("first-message deadline"), "{e}");
    s.shutdown().await;
}

/// A writer that takes its time over every write (a slow disk or pipe).
struct SlowWriter {
    out: Vec<u8>,
    pause: Duration,
}

impl std::io::Write for SlowWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.pause);
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_not_a_stalled_server() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 253) as u8).collect();
    let rec = upload(&alice, "medical", &data).await;
    // The real CloudStorage, 1 s deadlines, a reader that spends longer
    // than that on each segment: the idle deadline counts only the time
    // spent waiting for the server.
    let a = session(&s, &short(s.mesh_file()), "alice");
    let mut out = SlowWriter {
        out: Vec::new(),
        pause: deadline() + deadline() / 2,
    };
    a.download(&rec.record_id, &mut out, sesphr_client::no_progress())
        .await
        .expect("a slow reader downloads within the deadlines");
    assert_eq!(out.out, data);
    s.shutdown().await;
}

// ---- bounds -------------------------------------------------------------------------------

fn meta(id: &str, owner: &str, partition: &str) -> proto::RecordMeta {
    proto::RecordMeta {
        record_id: id.into(),
        owner_id: owner.into(),
        partition: partition.into(),
        ..Default::default()
    }
}

fn entry(seq: u64) -> proto::AuditEntry {
    proto::AuditEntry {
        seq,
        actor: "patient/alice".into(),
        action: "sesphr.v1.CloudStorage/GetRecord".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_listings_and_audit_streams_are_refused_within_their_bounds() {
    let s = Sandbox::start().await;
    let _alice = s.patient("alice").await;
    let run = |hooks: CloudStorageHooks| {
        let s = &s;
        async move {
            let fake = Impostor::cloud_storage(s, "alice", hooks).await;
            let mesh = short(impostor::redirect(
                &s.mesh_file(),
                Service::CloudStorage,
                &fake.url,
            ));
            let start = Instant::now();
            let r = session(s, &mesh, "alice").list(None, None).await;
            (r, start.elapsed())
        }
    };

    // One page with more rows than asked for.
    let (r, _) = run(CloudStorageHooks {
        list_records: hook(|_, _| async {
            let records = (0..=LIST_PAGE_SIZE)
                .map(|i| meta(&format!("r{i}"), "alice", "medical"))
                .collect();
            Ok(Response::new(proto::ListRecordsResponse {
                records,
                next_page_token: String::new(),
            }))
        }),
        ..Default::default()
    })
    .await;
    let e = verification(&r);
    assert!(e.contains("1001 records in one page"), "{e}");

    // Full pages forever, each with a fresh token.
    let pages = Arc::new(AtomicU64::new(0));
    let served = pages.clone();
    let (r, took) = run(CloudStorageHooks {
        list_records: hook(move |_, _| {
            let n = served.fetch_add(1, Ordering::SeqCst);
            async move {
                let records = (0..LIST_PAGE_SIZE)
                    .map(|i| meta(&format!("p{n}r{i}"), "alice", "medical"))
                    .collect();
                Ok(Response::new(proto::ListRecordsResponse {
                    records,
                    next_page_token: format!("page-{}", n + 1),
                }))
            }
        }),
        ..Default::default()
    })
    .await;
    let e = verification(&r);
    assert!(
        e.contains(&format!("more than {MAX_LIST_RECORDS} records")),
        "{e}"
    );
    let asked = pages.load(Ordering::SeqCst);
    eprintln!("endless listing refused after {asked} pages, {took:?}");
    assert_eq!(
        asked,
        (MAX_LIST_RECORDS / LIST_PAGE_SIZE as usize) as u64 + 1
    );
    assert!(took < Duration::from_secs(30), "{took:?}");

    // The same token again: the listing would never end.
    let (r, _) = run(CloudStorageHooks {
        list_records: hook(|_, _| async {
            Ok(Response::new(proto::ListRecordsResponse {
                records: Vec::new(),
                next_page_token: "again".into(),
            }))
        }),
        ..Default::default()
    })
    .await;
    assert!(verification(&r).contains("same token"));

    // ListAudit: an endless stream of empty entries, of entries counting
    // up, and endless full streams.
    let audit = |hooks: AccessPolicyHooks| {
        let s = &s;
        async move {
            let fake = Impostor::access_policy(s, "alice", hooks).await;
            let mesh = short(impostor::redirect(
                &s.mesh_file(),
                Service::AccessPolicy,
                &fake.url,
            ));
            let start = Instant::now();
            let r = session(s, &mesh, "alice").audit().await;
            (r, start.elapsed())
        }
    };
    let (r, took) = audit(AccessPolicyHooks {
        list_audit: hook(|_, _| async {
            Ok(Response::new(impostor::endless(|_| {
                proto::AuditEntry::default()
            })))
        }),
        ..Default::default()
    })
    .await;
    let e = verification(&r);
    assert!(e.contains("sequence numbers must increase"), "{e}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let (r, took) = audit(AccessPolicyHooks {
        list_audit: hook(
            |_, req: tonic::Request<proto::ListAuditRequest>| async move {
                let after = req.get_ref().after_seq;
                Ok(Response::new(impostor::endless(move |i| {
                    entry(after + 1 + i)
                })))
            },
        ),
        ..Default::default()
    })
    .await;
    let e = verification(&r);
    assert!(
        e.contains(&format!(
            "more than the {AUDIT_PAGE} audit entries asked for"
        )),
        "{e}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Full pages that never run out.
    let (r, took) = audit(AccessPolicyHooks {
        list_audit: hook(
            |_, req: tonic::Request<proto::ListAuditRequest>| async move {
                let after = req.get_ref().after_seq;
                let page = (1..=AUDIT_PAGE as u64).map(|i| entry(after + i)).collect();
                Ok(Response::new(impostor::reply_stream(page)))
            },
        ),
        ..Default::default()
    })
    .await;
    let e = verification(&r);
    eprintln!("endless audit pages refused after {took:?}: {e}");
    assert!(
        e.contains(&format!("more than {MAX_AUDIT_ENTRIES} audit entries"))
            || e.contains("client's bound of"),
        "{e}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");

    // Seqs going backwards across streams.
    let (r, _) = audit(AccessPolicyHooks {
        list_audit: hook(|_, _| async {
            Ok(Response::new(impostor::reply_stream(vec![
                entry(5),
                entry(6),
            ])))
        }),
        ..Default::default()
    })
    .await;
    assert!(verification(&r).contains("#5 after #6"));
    s.shutdown().await;
}

/// A node that tampers with its cfrags (or floods them) is skipped and
/// reported, and the read succeeds from the others; with fewer than t
/// honest nodes the read fails naming the bad ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_bad_cfrags_is_skipped_and_the_read_succeeds_from_the_others() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let _bob = s.practitioner("bob", Role::Doctor).await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    let rec = upload(&alice, "medical", b"chart").await;

    let tamper = || SrsNodeHooks {
        re_encrypt: hook(|up, req| async move {
            let mut reply = forward::re_encrypt(up, req).await?;
            for cfrag in &mut reply.get_mut().cfrags {
                let last = cfrag.len() - 1;
                cfrag[last] ^= 1;
            }
            Ok(reply)
        }),
        ..Default::default()
    };
    let flood = |copies: usize| SrsNodeHooks {
        re_encrypt: hook(move |up, req| async move {
            let mut reply = forward::re_encrypt(up, req).await?;
            let one = reply.get_ref().cfrags[0].clone();
            reply.get_mut().cfrags = vec![one; copies];
            Ok(reply)
        }),
        ..Default::default()
    };

    // Control: node 1 behind an honest impostor.
    let honest = Impostor::srs_node(&s, "bob", 1, SrsNodeHooks::default()).await;
    let mesh = impostor::redirect_node(&s.mesh_file(), 1, &honest.url);
    let bob = session(&s, &mesh, "bob");
    assert_eq!(download(&bob, &rec.record_id).await.unwrap(), b"chart");
    assert!(bob.notices.take().is_empty());

    for (what, hooks, says) in [
        ("tampered", tamper(), "does not verify"),
        ("10,001 copies", flood(10_001), "other than one cfrag"),
    ] {
        let bad = Impostor::srs_node(&s, "bob", 1, hooks).await;
        let mesh = impostor::redirect_node(&s.mesh_file(), 1, &bad.url);
        let bob = session(&s, &mesh, "bob");
        let start = Instant::now();
        assert_eq!(
            download(&bob, &rec.record_id).await.unwrap(),
            b"chart",
            "{what}: nodes 2 and 3 serve the read"
        );
        let took = start.elapsed();
        let notices = bob.notices.take().join("\n");
        // The bad node answers like the others; whether its answer came
        // before the read completed decides whether it was looked at.
        if bad.calls().contains(&"ReEncrypt") && !notices.is_empty() {
            assert!(
                notices.contains("node 1") && notices.contains(says),
                "{what}: {notices}"
            );
        }
        assert!(took < Duration::from_secs(3), "{what}: {took:?}");
    }

    // Two of three nodes lie: one honest cfrag is not enough, and the
    // error names both liars.
    let one = Impostor::srs_node(&s, "bob", 1, tamper()).await;
    let two = Impostor::srs_node(&s, "bob", 2, flood(2)).await;
    let mesh = impostor::redirect_node(&s.mesh_file(), 1, &one.url);
    let mesh = impostor::redirect_node(&mesh, 2, &two.url);
    let r = download(&session(&s, &mesh, "bob"), &rec.record_id).await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
    let e = e.to_string();
    assert!(e.contains("1 of the 2 re-encryption nodes"), "{e}");
    assert!(e.contains("node 1: cfrag that does not verify"), "{e}");
    assert!(
        e.contains("node 2: answer with other than one cfrag"),
        "{e}"
    );
    s.shutdown().await;
}

/// A node answering with another node's identity, or a server that is no
/// node at all, is refused by the client at the handshake; the read goes
/// on with the nodes that are who the mesh file says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_identity_is_refused_and_the_others_serve() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let _bob = s.practitioner("bob", Role::Doctor).await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    let rec = upload(&alice, "medical", b"chart").await;
    // Node 2's identity at node 1's place; then the SRS setup service's.
    for identity in [
        impostor::node_identity(&s, 2),
        impostor::service_identity(&s, Service::Srs),
    ] {
        let tls = impostor::server_tls(&s, &identity);
        let upstream = impostor::upstream_node(impostor::upstream_as(&s, "bob"), 1);
        let wrong = Impostor::serve_srs_node(&tls, upstream, SrsNodeHooks::default()).await;
        let mesh = impostor::redirect_node(&s.mesh_file(), 1, &wrong.url);
        let bob = session(&s, &mesh, "bob");
        assert_eq!(download(&bob, &rec.record_id).await.unwrap(), b"chart");
        assert!(wrong.calls().is_empty(), "{identity}: {:?}", wrong.calls());
        // With node 3 also away, the read fails and names node 1.
        let mesh = impostor::redirect_node(&mesh, 3, "https://127.0.0.1:9");
        let e = download(&session(&s, &mesh, "bob"), &rec.record_id)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(Code::Unavailable), "{e}");
        assert!(e.to_string().contains("node 1 (https://127.0.0.1"), "{e}");
        assert!(
            e.to_string().contains("node 3 (https://127.0.0.1:9)"),
            "{e}"
        );
    }
    s.shutdown().await;
}

// ---- replies checked against the request ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reply_naming_another_record_or_epoch_is_refused() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let other = upload(&alice, "medical", b"another record").await;
    type Tamper = fn(&mut proto::RecordMeta, &str);
    let cases: [(&str, Tamper, &str); 4] = [
        ("id", |m, other| m.record_id = other.into(), "record id"),
        ("epoch", |m, _| m.epoch += 1, "epoch 1 instead of 0"),
        (
            "partition",
            |m, _| m.partition = "insurance".into(),
            "partition insurance",
        ),
        (
            "owner",
            |m, _| m.owner_id = "mallory".into(),
            "owner mallory",
        ),
    ];
    for (what, tamper, expect) in cases {
        let other_id = other.record_id.to_string();
        let fake = Impostor::cloud_storage(
            &s,
            "alice",
            CloudStorageHooks {
                put_record: hook(move |up, req| {
                    let other_id = other_id.clone();
                    async move {
                        let mut reply = forward::put_record(up, req).await?;
                        if let Some(m) = reply.get_mut().record.as_mut() {
                            tamper(m, &other_id);
                        }
                        Ok(reply)
                    }
                }),
                ..Default::default()
            },
        )
        .await;
        let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &fake.url);
        let p = patient(&s, &mesh, "alice");
        let data = b"new record".to_vec();
        // Plain upload.
        let r = p
            .upload(
                "medical",
                std::io::Cursor::new(data.clone()),
                data.len() as u64,
                sesphr_client::no_progress(),
            )
            .await;
        let e = verification(&r);
        assert!(
            e.contains("another record than the one uploaded"),
            "{what}: {e}"
        );
        assert!(e.contains(expect), "{what}: {e}");
        // Deduplicated, new blob, then the same content again (linked to the
        // stored blob: the other reply path).
        let content = format!("dedup content {what}").into_bytes();
        for round in ["new blob", "linked blob"] {
            let r = p
                .upload_dedup(
                    "medical",
                    std::io::Cursor::new(content.clone()),
                    content.len() as u64,
                    sesphr_client::no_progress(),
                )
                .await;
            let e = verification(&r);
            assert!(e.contains(expect), "{what}, {round}: {e}");
        }
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_rows_with_control_characters_or_outside_the_filter_are_refused() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let rec = upload(&alice, "medical", b"chart").await;
    type Tamper = fn(&mut proto::RecordMeta);
    let cases: [(&str, Tamper, &str); 6] = [
        (
            "tab in id",
            |m| m.record_id.push_str("\tx"),
            "not a valid record id",
        ),
        (
            "newline in id",
            |m| m.record_id = "a\nb".into(),
            "not a valid record id",
        ),
        (
            "escape in owner",
            |m| m.owner_id = "alice\u{1b}[2J".into(),
            "invalid user id",
        ),
        (
            "reserved partition",
            |m| m.partition = "@receive".into(),
            "invalid partition",
        ),
        (
            "other partition",
            |m| m.partition = "psychiatry".into(),
            "partition psychiatry in a listing of partition medical",
        ),
        (
            "other owner",
            |m| m.owner_id = "mallory".into(),
            "in a listing of alice's records",
        ),
    ];
    let mesh_path = s.dir.path().join("impostor-mesh.toml");
    for (what, tamper, expect) in cases {
        let fake = Impostor::cloud_storage(
            &s,
            "alice",
            CloudStorageHooks {
                list_records: hook(move |up, req| async move {
                    let mut reply = forward::list_records(up, req).await?;
                    reply.get_mut().records.iter_mut().for_each(tamper);
                    Ok(reply)
                }),
                ..Default::default()
            },
        )
        .await;
        let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &fake.url);
        let r = session(&s, &mesh, "alice")
            .list(None, Some("medical"))
            .await;
        let e = verification(&r);
        assert!(e.contains(expect), "{what}: {e}");
        assert!(
            !e.contains('\t') && !e.contains('\n') && !e.contains('\u{1b}'),
            "{what}: {e:?}"
        );

        // The binary prints nothing of it.
        impostor::write_mesh_file(&mesh, &mesh_path);
        let out = sesphr(
            &mesh_path,
            &s.home("alice"),
            &["ls", "--partition", "medical"],
        )
        .await;
        assert!(!out.status.success(), "{what}");
        assert!(
            out.stdout.is_empty(),
            "{what}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err:?}");
        assert!(
            !err.contains('\t') && !err.contains('\u{1b}'),
            "{what}: {err:?}"
        );
    }
    // Untampered, through the same kind of impostor: listed.
    let fake = Impostor::cloud_storage(&s, "alice", Default::default()).await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &fake.url);
    impostor::write_mesh_file(&mesh, &mesh_path);
    let out = sesphr(
        &mesh_path,
        &s.home("alice"),
        &["ls", "--partition", "medical"],
    )
    .await;
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with(rec.record_id.as_str())
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_text_rewritten_by_an_impostor_is_refused_before_printing() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    upload(&alice, "medical", b"chart").await;
    let fake = Impostor::access_policy(
        &s,
        "alice",
        AccessPolicyHooks {
            list_audit: hook(|up, req| async move {
                let real = forward::list_audit(up, req).await?.into_inner();
                let tampered: impostor::ReplyStream<proto::AuditEntry> = Box::pin(real.map(|e| {
                    e.map(|mut e| {
                        e.detail = "\u{1b}[2J\u{1b}[Hall clear\nfake\tline\r".into();
                        e.actor = "patient/\u{202e}ecila".into();
                        e
                    })
                }));
                Ok(Response::new(tampered))
            }),
            ..Default::default()
        },
    )
    .await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::AccessPolicy, &fake.url);
    let mesh_path = s.dir.path().join("impostor-mesh.toml");
    impostor::write_mesh_file(&mesh, &mesh_path);
    let out = sesphr(&mesh_path, &s.home("alice"), &["audit"]).await;
    // The rewritten entries are not the ones in the log: nothing is
    // printed, and the one line saying so carries no control character.
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(err.contains("is not in the log"), "{err}");
    assert!(!err.contains('\u{1b}') && !err.contains('\r') && !err.contains('\u{202e}'));
    s.shutdown().await;
}

// ---- the `sesphr get` binary ----------------------------------------------------------------

/// Runs `sesphr ARGS` against `mesh` as the profile in `home` (off the
/// runtime: the impostors it talks to run on it).
async fn sesphr(mesh: &Path, home: &Path, args: &[&str]) -> Output {
    let mut cmd = sesphr_command(mesh, home, args);
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("sesphr runs");
        // Drained while it runs: a full pipe would stall it.
        let drain = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > PROCESS_PATIENCE {
                let _ = child.kill();
                panic!("sesphr did not end within {PROCESS_PATIENCE:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    });
    out.await.unwrap()
}

fn sesphr_command(mesh: &Path, home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(common::bin("sesphr"));
    cmd.args(args)
        .env("SESPHR_MESH", mesh)
        .env("SESPHR_HOME", home)
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_during_a_stalled_get_leaves_no_temporary_file() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let rec = upload(&alice, "medical", &vec![3u8; 3 << 20]).await;
    // Metadata and one chunk, then silence: longer than the test (the
    // default 30 s deadlines).
    let fake = Impostor::cloud_storage(
        &s,
        "alice",
        CloudStorageHooks {
            get_record: hook(|up, req| async move {
                let real = forward::get_record(up, req).await?.into_inner();
                Ok(Response::new(impostor::then_stall(Box::pin(real.take(2)))))
            }),
            ..Default::default()
        },
    )
    .await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &fake.url);
    let mesh_path = s.dir.path().join("stalling-mesh.toml");
    impostor::write_mesh_file(&mesh, &mesh_path);

    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        let out_dir = tempfile::tempdir().unwrap();
        let target = out_dir.path().join("record.bin");
        let mut child = sesphr_command(
            &mesh_path,
            &s.home("alice"),
            &[
                "get",
                rec.record_id.as_str(),
                "-o",
                target.to_str().unwrap(),
            ],
        )
        .spawn()
        .unwrap();
        let dir = out_dir.path().to_owned();
        let (status, stderr) = tokio::task::spawn_blocking(move || {
            // The temporary file appears beside the target while the
            // download stalls.
            let start = Instant::now();
            while entries(&dir).is_empty() {
                assert!(
                    start.elapsed() < PROCESS_PATIENCE,
                    "no temporary file appeared"
                );
                assert!(child.try_wait().unwrap().is_none(), "sesphr ended early");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(target_absent(&dir), "the target appeared during the stall");
            std::thread::sleep(Duration::from_millis(300));
            let killed = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap();
            assert!(killed.success());
            let start = Instant::now();
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if start.elapsed() > PROCESS_PATIENCE {
                    let _ = child.kill();
                    panic!("sesphr did not end after {signal}");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            (status, stderr)
        })
        .await
        .unwrap();
        eprintln!("after {signal}: {status:?}, {stderr:?}");
        assert_eq!(status.code(), Some(code), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        assert!(
            entries(out_dir.path()).is_empty(),
            "left behind: {:?}",
            entries(out_dir.path())
        );
    }
    assert!(fake.calls().iter().filter(|c| **c == "GetRecord").count() >= 2);
    s.shutdown().await;
}

/// The target has not appeared (the download is stalled).
fn target_absent(dir: &Path) -> bool {
    entries(dir).iter().all(|n| n != "record.bin")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_verify_first_writes_nothing_when_the_last_segment_is_tampered() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    // Three segments: the first two authenticate, the last does not.
    let data: Vec<u8> = (0..(2 << 20) + 1000).map(|i| (i % 251) as u8).collect();
    let rec = upload(&alice, "medical", &data).await;
    let fake = Impostor::cloud_storage(
        &s,
        "alice",
        CloudStorageHooks {
            get_record: hook(|up, req| async move {
                let real = forward::get_record(up, req).await?.into_inner();
                let mut all: Vec<proto::GetRecordResponse> =
                    real.map(|m| m.expect("the real stream")).collect().await;
                if let Some(proto::GetRecordResponse {
                    part: Some(get_record_response::Part::Chunk(c)),
                }) = all.last_mut()
                {
                    let mut bytes = c.to_vec();
                    *bytes.last_mut().unwrap() ^= 1;
                    *c = bytes.into();
                }
                Ok(Response::new(impostor::reply_stream(all)))
            }),
            ..Default::default()
        },
    )
    .await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &fake.url);
    let mesh_path = s.dir.path().join("tampering-mesh.toml");
    impostor::write_mesh_file(&mesh, &mesh_path);
    let home = s.home("alice");
    let id = rec.record_id.as_str();

    let out = sesphr(&mesh_path, &home, &["get", id, "--verify-first"]).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{} bytes written", out.stdout.len());
    eprintln!("--verify-first: {}", String::from_utf8_lossy(&out.stderr));

    // Without it, the segments that authenticated were written, then the
    // command failed: the tampering is in the last segment only.
    let out = sesphr(&mesh_path, &home, &["get", id]).await;
    assert!(!out.status.success());
    assert_eq!(out.stdout.len(), 2 << 20);
    assert_eq!(out.stdout[..], data[..2 << 20]);

    // Untampered, --verify-first writes the record.
    let real = s.dir.path().join("real-mesh.toml");
    impostor::write_mesh_file(&s.mesh_file(), &real);
    let out = sesphr(&real, &home, &["get", id, "--verify-first"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, data);
    s.shutdown().await;
}
