//! The mesh end to end: mTLS identity, health, reflection, restarts and the
//! tamper-evident audit trail, against real servers on loopback.

use crate::common;

use std::time::Duration;

use common::{Sandbox, check_mallory_reads_alice, download, upload};
use sesphr::proto::{self, service_names};
use sesphr_identity::{Identity, Role, Service};
use sesphr_mesh::pki::CertificateAuthority;
use sesphr_mesh::tls::{self, TlsMaterial};
use tonic::Code;
use zeroize::Zeroizing;

const TD: &str = "sesphr.local";

/// A health client of the service named `name` (a `service_names` value).
fn health_client(
    url: &str,
    tls: tls::ClientTls,
    name: &str,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let service = match name {
        service_names::CLOUD_STORAGE => Service::CloudStorage,
        service_names::SRS => Service::Srs,
        service_names::ACCESS_POLICY => Service::AccessPolicy,
        other => panic!("no service {other}"),
    };
    let ch = tls::channel(
        url,
        tls,
        &Identity::service(TD, service),
        Duration::from_secs(5),
    )
    .unwrap();
    tonic_health::pb::health_client::HealthClient::new(ch)
}

fn all_urls(s: &Sandbox) -> [(&'static str, String); 3] {
    [
        (
            service_names::CLOUD_STORAGE,
            s.mesh.mesh.cloud_storage.clone(),
        ),
        (service_names::SRS, s.mesh.mesh.srs.clone()),
        (
            service_names::ACCESS_POLICY,
            s.mesh.mesh.access_policy.clone(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_over_mtls_and_refused_without_a_certificate() {
    let s = Sandbox::start().await;
    let operator = s.mesh.identity_tls("operator").unwrap();
    let ca_pem = operator.ca_pem().to_owned();
    for (name, url) in all_urls(&s) {
        let mut ok = health_client(&url, operator.client_config(), name);
        let resp = ok
            .check(tonic_health::pb::HealthCheckRequest {
                service: name.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status, 1, "{name} SERVING");

        let mut anon = health_client(&url, tls::anonymous_client_config(&ca_pem), name);
        let err = anon
            .check(tonic_health::pb::HealthCheckRequest {
                service: name.into(),
            })
            .await
            .expect_err("no client certificate must be refused");
        assert!(
            matches!(
                err.code(),
                Code::Unavailable | Code::Unauthenticated | Code::Unknown | Code::Cancelled
            ),
            "{name}: {err:?}"
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_and_expired_certificates_are_refused() {
    let s = Sandbox::start().await;
    let alice = Identity::user(TD, Role::Patient, "alice").unwrap();
    let mesh_ca_pem = std::fs::read_to_string(s.mesh.pki.ca_cert()).unwrap();

    // Same name, other CA.
    let (foreign, _) = CertificateAuthority::generate(TD).unwrap();
    let issued = foreign.issue(&alice, &[], &[]).unwrap();
    let foreign_tls = TlsMaterial::from_pem(
        issued.cert_pem,
        Zeroizing::new(issued.key_pem),
        mesh_ca_pem.clone(),
    )
    .unwrap();

    // Right CA, expired.
    let ca = s.mesh.pki.load_ca().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue_with_validity(
            &alice,
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    let expired_tls = TlsMaterial::from_pem(
        expired.cert_pem,
        Zeroizing::new(expired.key_pem),
        mesh_ca_pem,
    )
    .unwrap();

    for (label, material) in [("foreign CA", foreign_tls), ("expired", expired_tls)] {
        for (name, url) in all_urls(&s) {
            let mut c = health_client(&url, material.client_config(), name);
            let res = c
                .check(tonic_health::pb::HealthCheckRequest {
                    service: name.into(),
                })
                .await;
            assert!(res.is_err(), "{label} certificate accepted by {name}");
        }
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_three_services_and_health() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let s = Sandbox::start().await;
    let operator = s.mesh.identity_tls("operator").unwrap();
    let ch = tls::channel(
        &s.mesh.mesh.srs,
        operator.client_config(),
        &Identity::service(TD, Service::Srs),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut client = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        service_names::CLOUD_STORAGE,
        service_names::SRS,
        service_names::ACCESS_POLICY,
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_cannot_call_check_or_read_each_other() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let mallory = s.patient("mallory").await;
    let rec = upload(&alice, "medical", b"alice's chart").await;

    let err = check_mallory_reads_alice(&mallory.clients)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    let err = download(&mallory, &rec.record_id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    assert_eq!(
        download(&alice, &rec.record_id).await.unwrap(),
        b"alice's chart"
    );

    // Mallory cannot delete alice's record either.
    let err = mallory.delete(&rec.record_id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_records_grants_users_and_audit() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let _bob = s.practitioner("bob", Role::Doctor).await;
    let rec = upload(&alice, "medical", b"persist me").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    let audit_before = alice.audit().await.unwrap().len();
    drop(alice);

    let s = s.restart().await;
    let alice = s.patient("alice").await;
    let bob = s.session("bob");
    assert_eq!(download(&bob, &rec.record_id).await.unwrap(), b"persist me");
    let grants = alice.grants().await.unwrap();
    assert_eq!(grants.given.len(), 1);
    assert!(alice.audit().await.unwrap().len() > audit_before);
    assert!(alice.verify_audit().await.unwrap().ok);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_an_audit_entry_in_sled_is_detected() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let _bob = s.practitioner("bob", Role::Doctor).await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    alice.revoke("medical", "bob").await.unwrap();
    assert!(alice.verify_audit().await.unwrap().ok);
    drop(alice);
    let dir = s.dir.path().join("mesh").join("access-policy");
    let Sandbox { mesh, dir: tmp } = s;
    mesh.shutdown().await.unwrap();

    // An insider flips one byte of the first audit entry's stored value.
    {
        let db = sled::open(&dir).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let (key, value) = tree.iter().next().unwrap().unwrap();
        let mut bytes = value.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        tree.insert(key, bytes).unwrap();
        db.flush().unwrap();
    }

    let mesh = Sandbox::start_in(tmp.path().join("mesh")).await;
    let s = Sandbox { mesh, dir: tmp };
    let report = s
        .operator()
        .policy
        .verify_audit(proto::VerifyAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!report.ok, "tampering went unnoticed");
    assert_eq!(report.first_bad_seq, Some(1));
    assert!(!report.problem.is_empty());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_needs_the_token_and_a_free_id() {
    let s = Sandbox::start().await;
    let mesh = s.mesh_file();
    let err = sesphr_client::enroll(&mesh, &s.home("eve"), "eve", Role::Patient, "wrong")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    s.enroll("alice", Role::Patient).await;
    let err = sesphr_client::enroll(&mesh, &s.home("alice2"), "alice", Role::Patient, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::AlreadyExists), "{err}");
    let err = sesphr_client::enroll(&mesh, &s.home("bad"), "Bad Id", Role::Doctor, "")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid user id"), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_identities_cannot_impersonate_users() {
    let s = Sandbox::start().await;
    let cloud = s.clients_as(&Identity::service(TD, Service::CloudStorage));
    let err = cloud
        .cloud
        .clone()
        .list_records(proto::ListRecordsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("may not call"), "{}", err.message());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_health_port_answers_health_only() {
    use sesphr_server::daemon::{ServiceParams, bind, run_service};
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
        transport: Default::default(),
    };
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_service(params, async move {
        let _ = rx.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut status = None;
    for _ in 0..100 {
        match health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service_names::ACCESS_POLICY.into(),
            })
            .await
        {
            Ok(r) => {
                status = Some(r.into_inner().status);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(status, Some(1), "SERVING on the plaintext health port");
    // Nothing else is served there.
    let err = sesphr::proto::access_policy_client::AccessPolicyClient::new(channel)
        .verify_audit(proto::VerifyAuditRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
