//! Hostile transport: peers that open connections and then do nothing, or
//! open too many. Every listener must close what completes no TLS
//! handshake, sends no request, or sits idle, within its configured timeout,
//! and must cap the connections of one peer, while legitimate clients keep
//! working. The meshes here use 1 s timeouts so the whole file runs in
//! seconds; everything is loopback.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sesphr::proto::service_names;
use sesphr_identity::Service;
use sesphr_mesh::tls::{self, TlsMaterial};
use sesphr_mesh::transport::TransportLimits;
use sesphr_server::daemon::{DevMesh, DevOptions, ServiceParams, bind, run_service};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tonic::Code;
use tonic::codegen::http;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const TD: &str = "sesphr.local";
/// The timeouts of the meshes under test.
const SHORT: Duration = Duration::from_secs(1);
/// How long past its timeout a connection may take to be closed (a loaded
/// 2-core machine schedules late, never this late).
const SLACK: Duration = Duration::from_millis(1_500);

fn short_limits() -> TransportLimits {
    TransportLimits {
        handshake_timeout: SHORT,
        preface_timeout: SHORT,
        idle_timeout: SHORT,
        ..Default::default()
    }
}

async fn mesh(dir: &std::path::Path, transport: TransportLimits) -> DevMesh {
    let mut opts = DevOptions::new(dir.join("mesh")).ephemeral();
    opts.transport = transport;
    let mesh = DevMesh::start(opts).await.expect("mesh starts");
    mesh.wait_ready(common::PATIENCE).await.expect("mesh ready");
    mesh
}

/// Reads until the peer closes (EOF or error) or `limit` passes; how long
/// the close took, or `None` if the connection is still open.
async fn closed_within(io: &mut (impl AsyncRead + Unpin), limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    tokio::time::timeout(limit, async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
    .map(|()| start.elapsed())
}

/// A rustls client trusting the mesh CA, presenting `identity` (certificate
/// and key PEM) if given, offering only `h2`.
fn tls_client(ca_pem: &str, identity: Option<(&str, &str)>) -> TlsConnector {
    tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for ca in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// A gRPC health request on a raw HTTP/2 connection: `Check` (answered and
/// ended) or `Watch` (answered, left open). Returns the response body.
async fn health_call(
    h2: &mut h2::client::SendRequest<Bytes>,
    method: &str,
    service: &str,
) -> h2::RecvStream {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost/grpc.health.v1.Health/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = h2.send_request(req, false).unwrap();
    // HealthCheckRequest { service }: field 1, length-delimited.
    let mut msg = vec![0x0a, service.len() as u8];
    msg.extend_from_slice(service.as_bytes());
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    send.send_data(Bytes::from(frame), true).unwrap();
    let resp = resp.await.expect("response headers");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The first message: the current status.
    let first = body.data().await.expect("a message").expect("data");
    body.flow_control().release_capacity(first.len()).unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_starts_tls_is_closed_within_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh(dir.path(), short_limits()).await;
    let mut waits = Vec::new();
    for service in [Service::CloudStorage, Service::Srs, Service::AccessPolicy] {
        let addr = mesh.addr(service);
        waits.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            (service, closed_within(&mut tcp, SHORT + SLACK).await)
        }));
    }
    for w in waits {
        let (service, closed) = w.await.unwrap();
        let took = closed.unwrap_or_else(|| {
            panic!(
                "{service}: a silent socket is still open after {:?}",
                SHORT + SLACK
            )
        });
        eprintln!("{service}: silent TCP socket closed after {took:?}");
        assert!(took >= SHORT / 2, "{service}: closed too early ({took:?})");
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_a_certificate_and_no_preface_is_closed_within_the_preface_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh(dir.path(), short_limits()).await;
    let ca_pem = std::fs::read_to_string(mesh.pki.ca_cert()).unwrap();
    let anonymous = tls_client(&ca_pem, None);
    // The SRS lets certificate-less peers finish TLS (Enroll needs that).
    let mut tls = tls_connect(mesh.addr(Service::Srs), &anonymous).await;
    let took = closed_within(&mut tls, SHORT + SLACK)
        .await
        .expect("a TLS connection without a request must be closed");
    eprintln!("srs: certificate-less TLS connection without a preface closed after {took:?}");
    assert!(took >= SHORT / 2, "closed too early ({took:?})");

    // Enrollment itself still works on the same listener.
    let token = String::new(); // a patient registers herself
    let home = dir.path().join("alice");
    sesphr_client::enroll(
        &mesh.mesh,
        &home,
        "alice",
        sesphr_identity::Role::Patient,
        &token,
    )
    .await
    .expect("enrollment without a certificate still works");
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_but_not_one_with_an_open_stream() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh(dir.path(), short_limits()).await;
    let ca_pem = std::fs::read_to_string(mesh.pki.ca_cert()).unwrap();
    let cert = std::fs::read_to_string(mesh.pki.cert("operator")).unwrap();
    let key = std::fs::read_to_string(mesh.pki.key("operator")).unwrap();
    let connector = tls_client(&ca_pem, Some((&cert, &key)));
    let addr = mesh.addr(Service::AccessPolicy);

    // One Check, then silence (the client answers pings, sends nothing else).
    let tls = tls_connect(addr, &connector).await;
    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let mut body = health_call(&mut h2, "Check", service_names::ACCESS_POLICY).await;
    while body.data().await.is_some() {}
    let _ = body.trailers().await;
    let idle_from = Instant::now();
    let at = tokio::time::timeout(SHORT + SLACK, closed)
        .await
        .expect("an idle connection must be closed")
        .unwrap();
    let took = at.duration_since(idle_from);
    eprintln!("access-policy: idle HTTP/2 connection closed after {took:?}");
    assert!(took >= SHORT / 2, "closed too early ({took:?})");
    drop(h2);

    // An open Watch stream keeps the connection, past the idle timeout.
    let tls = tls_connect(addr, &connector).await;
    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
    let mut closed = tokio::spawn(async move {
        let _ = conn.await;
        Instant::now()
    });
    let watch = health_call(&mut h2, "Watch", service_names::ACCESS_POLICY).await;
    let kept = tokio::time::timeout(SHORT * 2, &mut closed).await;
    assert!(kept.is_err(), "a connection with an open stream was closed");
    // Once the stream ends, the idle timeout applies.
    drop(watch);
    let ended = Instant::now();
    let at = tokio::time::timeout(SHORT + SLACK, closed)
        .await
        .expect("idle after its last stream, the connection must be closed")
        .unwrap();
    eprintln!(
        "access-policy: connection closed {:?} after its Watch stream ended",
        at.duration_since(ended)
    );

    // A tonic client whose connection was closed as idle reconnects on its
    // next call.
    let operator = mesh.identity_tls("operator").unwrap();
    let channel = tls::channel(
        &mesh.mesh.access_policy,
        operator.client_config(),
        &sesphr_identity::Identity::service(TD, Service::AccessPolicy),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut client = HealthClient::new(channel);
    for round in 0..2 {
        let req = HealthCheckRequest {
            service: service_names::ACCESS_POLICY.into(),
        };
        client
            .check(req)
            .await
            .unwrap_or_else(|e| panic!("call {round} after an idle close: {e:?}"));
        tokio::time::sleep(SHORT + SHORT / 2).await;
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_peer_cap_are_closed_at_once_and_clients_still_work() {
    const CAP: u32 = 6;
    let dir = tempfile::tempdir().unwrap();
    let mesh = mesh(
        dir.path(),
        TransportLimits {
            // Long enough that the flood stays open while we look.
            handshake_timeout: Duration::from_secs(5),
            preface_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_connections_per_peer: CAP,
            ..Default::default()
        },
    )
    .await;
    let operator = mesh.identity_tls("operator").unwrap();
    let url = mesh.mesh.cloud_storage.clone();
    let addr = mesh.addr(Service::CloudStorage);
    let check = || HealthCheckRequest {
        service: service_names::CLOUD_STORAGE.into(),
    };
    // A legitimate client, connected before the flood.
    let cloud = sesphr_identity::Identity::service(TD, Service::CloudStorage);
    let channel = tls::channel(
        &url,
        operator.client_config(),
        &cloud,
        Duration::from_secs(5),
    )
    .unwrap();
    let mut existing = HealthClient::new(channel);
    existing
        .check(check())
        .await
        .expect("check before the flood");

    // The flood: sockets that never start TLS.
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..2 * CAP {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        match closed_within(&mut tcp, Duration::from_millis(300)).await {
            Some(_) => refused.push(start.elapsed()),
            None => held.push(tcp),
        }
    }
    eprintln!(
        "cloud-storage: {} flood sockets held, {} refused (closed after at most {:?})",
        held.len(),
        refused.len(),
        refused.iter().max()
    );
    // The existing client's connection counts too (and a connection of the
    // readiness check may not have closed yet).
    let held_n = held.len() as u32;
    assert!(
        (CAP - 2..CAP).contains(&held_n),
        "held {held_n} with a cap of {CAP}"
    );
    assert_eq!(refused.len() as u32, 2 * CAP - held_n);

    // The established connection keeps working during the flood.
    existing
        .check(check())
        .await
        .expect("an existing connection still works during the flood");
    // A new connection from the same address is over the cap.
    let fresh = tls::channel(
        &url,
        operator.client_config(),
        &cloud,
        Duration::from_secs(2),
    )
    .unwrap();
    let err = HealthClient::new(fresh)
        .check(check())
        .await
        .expect_err("over the per-peer cap");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // The flood ends; a fresh client connects.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = tls::channel(
            &url,
            operator.client_config(),
            &cloud,
            Duration::from_secs(2),
        )
        .unwrap();
        match HealthClient::new(fresh).check(check()).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no fresh connection after the flood: {e:?}"),
        }
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_port_bounds_watch_streams_and_closes_silent_sockets() {
    const WATCHES: u32 = 3;
    sesphr_mesh::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = sesphr_mesh::pki::DevPki::ensure(&dir.path().join("pki"), TD).unwrap();
    let tls = TlsMaterial::load(&sesphr_mesh::tls::TlsFiles {
        cert: pki.cert("access-policy"),
        key: pki.key("access-policy"),
        ca: pki.ca_cert(),
    })
    .unwrap();
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let health = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let health_addr = health.local_addr().unwrap();
    let params = ServiceParams {
        service: Service::AccessPolicy.into(),
        trust_domain: TD.into(),
        listener,
        health_listener: Some(health),
        tls,
        data_dir: dir.path().join("access-policy"),
        roots: std::sync::Arc::new(
            sesphr_mesh::trust::TrustRoots::load(&pki.ca_cert(), &pki.user_ca_cert()).unwrap(),
        ),
        // Nothing here asks the directory; the channel is lazy.
        setup_endpoint: Some("https://127.0.0.1:9".into()),
        deny_list: sesphr_server::config::DenyListSettings::default().into(),
        access_policy_endpoint: None,
        peer_timeout: Duration::from_secs(5),
        srs: None,
        node: None,
        audit_log: Some(sesphr_server::daemon::AuditLogParams {
            key: sesphr_tlog::SigningKey::generate(&mut rand::rng()),
            checkpoint_interval: std::time::Duration::from_secs(1),
        }),
        witness: None,
        max_record_bytes: 1 << 30,
        limits: Default::default(),
        dedup_scope: Default::default(),
        storage: Default::default(),
        transport: TransportLimits {
            max_health_watches: WATCHES,
            ..short_limits()
        },
    };
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_service(params, async move {
        let _ = rx.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect_lazy();
    let mut client = HealthClient::new(channel);
    let req = || HealthCheckRequest {
        service: service_names::ACCESS_POLICY.into(),
    };
    let mut ready = false;
    for _ in 0..100 {
        if client.check(req()).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "the health port answers");

    let mut watches = Vec::new();
    for i in 0..WATCHES {
        let mut stream = client
            .watch(req())
            .await
            .unwrap_or_else(|e| panic!("watch {i}: {e:?}"))
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.status, 1);
        watches.push(stream);
    }
    let err = client
        .watch(req())
        .await
        .expect_err("one Watch over the bound");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let status = client.check(req()).await.expect("Check still answers");
    assert_eq!(status.into_inner().status, 1);

    // A freed slot is reusable.
    drop(watches.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.watch(req()).await {
            Ok(s) => {
                watches.push(s.into_inner());
                break;
            }
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a freed Watch slot was not reusable: {e:?}"),
        }
    }

    // A socket that sends nothing is closed after the preface timeout.
    let mut tcp = TcpStream::connect(health_addr).await.unwrap();
    let took = closed_within(&mut tcp, SHORT + SLACK)
        .await
        .expect("a silent socket on the health port must be closed");
    eprintln!("health port: silent socket closed after {took:?}");

    drop(watches);
    drop(client);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
