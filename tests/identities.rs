//! Who may become whom, on a running mesh: grants only to enrolled users,
//! a user CA that cannot mint services or operators, deactivation that
//! every service and node enforces within 10 s, renewal that keeps every
//! grant, expired certificates refused with the reason.

use crate::common;

use std::time::{Duration, Instant};

use common::{Sandbox, download, upload};
use sesphr::proto;
use sesphr_client::admin;
use sesphr_identity::{Identity, NodeIndex, Role, Service};
use sesphr_mesh::tls::TlsMaterial;
use tonic::Code;
use zeroize::Zeroizing;

const TD: &str = "sesphr.local";

fn grant_request(grantee: &str, role: Role) -> proto::GrantRequest {
    proto::GrantRequest {
        grant: Some(proto::AccessGrant {
            partition: "medical".into(),
            grantee_id: grantee.into(),
            grantee_role: proto::Role::from(role) as i32,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_go_to_enrolled_users_under_their_enrolled_role() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    s.practitioner("bob", Role::Doctor).await;
    let mut policy = alice.clients.policy.clone();
    // A ghost id: nobody holds it, so nobody may later receive the grant.
    let err = policy
        .grant(grant_request("ghost", Role::Doctor))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("ghost is not enrolled"), "{err:?}");
    // bob is a doctor: a grant to "bob the friend" is not his.
    let err = policy
        .grant(grant_request("bob", Role::Friend))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("enrolled as doctor"), "{err:?}");
    policy
        .grant(grant_request("bob", Role::Doctor))
        .await
        .unwrap();
    // And the ghost cannot enrol as the doctor it was meant to be.
    let err = sesphr_client::enroll(&s.mesh_file(), &s.home("ghost"), "ghost", Role::Doctor, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_ca_cannot_mint_services_or_operators() {
    let s = Sandbox::start().await;
    // What whoever controls the SRS holds: the user CA's key.
    let user_ca = s.mesh.pki.load_user_ca().unwrap();
    let fake_cloud = s.clients_signed_by(&user_ca, &Identity::service(TD, Service::CloudStorage));
    let err = fake_cloud
        .policy
        .clone()
        .check(proto::CheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message()
            .contains("does not chain to the mesh's service CA"),
        "{err:?}"
    );
    let fake_ops = s.clients_signed_by(&user_ca, &Identity::operator(TD, "ops").unwrap());
    let err = fake_ops
        .policy
        .clone()
        .disable_user(proto::SetUserStatusRequest {
            user_id: "alice".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let fake_node = s.clients_signed_by(
        &user_ca,
        &Identity::srs_node(TD, NodeIndex::new(1).unwrap()),
    );
    let err = fake_node
        .policy
        .clone()
        .get_deny_list(proto::GetDenyListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // And the service CA does not make users.
    let service_ca = s.mesh.pki.load_ca().unwrap();
    let fake_alice = s.clients_signed_by(
        &service_ca,
        &Identity::user(TD, Role::Patient, "alice").unwrap(),
    );
    let err = fake_alice
        .policy
        .clone()
        .list_grants(proto::ListGrantsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    s.shutdown().await;
}

/// Whether `err` is the deny list's refusal.
fn disabled(r: Result<(), tonic::Status>) -> bool {
    matches!(r, Err(e) if e.code() == Code::PermissionDenied && e.message().contains("user disabled"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_doctor_is_refused_everywhere_within_ten_seconds_and_restored() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let rec = upload(&alice, "medical", b"allergic to penicillin").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    assert_eq!(
        download(&bob, &rec.record_id).await.unwrap(),
        b"allergic to penicillin"
    );

    let ops = s.admin();
    assert!(ops.disable("bob", "laptop stolen").await.unwrap());
    assert!(
        !ops.disable("bob", "again").await.unwrap(),
        "already disabled"
    );
    let start = Instant::now();
    // Every service and every node, each asked as bob.
    let c = bob.clients.clone();
    let calls = || async {
        let mut out = vec![
            (
                "cloud-storage",
                c.cloud
                    .clone()
                    .list_records(proto::ListRecordsRequest::default())
                    .await
                    .map(drop),
            ),
            (
                "srs",
                c.srs
                    .clone()
                    .get_user(proto::GetUserRequest {
                        user_id: "alice".into(),
                    })
                    .await
                    .map(drop),
            ),
            (
                "access-policy",
                c.policy
                    .clone()
                    .list_grants(proto::ListGrantsRequest {})
                    .await
                    .map(drop),
            ),
        ];
        for node in &c.nodes.nodes {
            let r = node
                .client
                .clone()
                .re_encrypt(proto::ReEncryptRequest {
                    owner_id: "alice".into(),
                    partition: "medical".into(),
                    ..Default::default()
                })
                .await
                .map(drop);
            out.push(("node", r));
        }
        out
    };
    // Bounded: 10 s, the promise, plus slack for a loaded machine.
    let mut all_refused = false;
    for _ in 0..120 {
        if calls().await.into_iter().all(|(_, r)| disabled(r)) {
            all_refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = start.elapsed();
    assert!(
        all_refused,
        "still served after {took:?}: {:?}",
        calls().await
    );
    assert!(
        took < Duration::from_secs(10),
        "refused everywhere only after {took:?}"
    );
    eprintln!("bob refused by every service and node {took:?} after the disable");
    let err = download(&bob, &rec.record_id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");

    // AccessPolicy refuses every check for grants to him, whoever asks.
    let cloud = s.clients_as(&Identity::service(TD, Service::CloudStorage));
    let decision = cloud
        .policy
        .clone()
        .check(proto::CheckRequest {
            owner_id: "alice".into(),
            partition: "medical".into(),
            grantee_id: "bob".into(),
            grantee_role: proto::Role::Doctor as i32,
            action: proto::CheckAction::Read as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!decision.allowed);
    assert!(decision.reason.contains("disabled"), "{decision:?}");
    // No new grants to him either.
    let err = alice
        .clients
        .policy
        .clone()
        .grant(grant_request("bob", Role::Doctor))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    assert!(ops.enable("bob", "laptop found").await.unwrap());
    let back = common::eventually(Duration::from_secs(10), || download(&bob, &rec.record_id)).await;
    assert_eq!(back, b"allergic to penicillin");

    // Every step is in the operator's audit trail.
    let mut trail = ops
        .clients
        .policy
        .clone()
        .list_audit(proto::ListAuditRequest {
            after_seq: 0,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut actions = Vec::new();
    while let Some(e) = futures::StreamExt::next(&mut trail).await {
        let e = e.unwrap();
        actions.push((e.action, e.subject, e.detail));
    }
    for (action, what) in [
        ("sesphr.v1.Srs/Invite", "invited bob as doctor"),
        ("sesphr.v1.Srs/Enroll", "enrolled by invitation"),
        ("sesphr.v1.Srs/Enroll", "self-registered"),
        ("sesphr.v1.AccessPolicy/DisableUser", "disabled bob"),
        ("sesphr.v1.AccessPolicy/EnableUser", "enabled bob"),
        ("denied:sesphr.v1.CloudStorage/ListRecords", "user disabled"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, _, d)| a.as_str() == action && d.contains(what)),
            "no {action} entry with {what:?}: {actions:#?}"
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_every_grant_and_an_expired_certificate_re_enrols() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let rec = upload(&alice, "medical", b"x-ray").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    let mesh = s.mesh_file();
    let profile = bob.profile.clone();
    let before = profile.certificate_life().unwrap();
    assert!(
        before.not_after - before.not_before <= 31 * 86_400,
        "{before:?}"
    );

    // Renewed with the same key, then with a new one: grants still work.
    let old_key = std::fs::read(s.home("bob").join("tls.key")).unwrap();
    admin::renew(&mesh, &profile, false).await.unwrap();
    assert_eq!(
        std::fs::read(s.home("bob").join("tls.key")).unwrap(),
        old_key
    );
    let not_after = admin::renew(&mesh, &profile, true).await.unwrap();
    assert_ne!(
        std::fs::read(s.home("bob").join("tls.key")).unwrap(),
        old_key
    );
    assert_eq!(profile.certificate_life().unwrap().not_after, not_after);
    let bob = s.practitioner("bob", Role::Doctor).await;
    assert_eq!(download(&bob, &rec.record_id).await.unwrap(), b"x-ray");

    // An expired certificate of bob's (otherwise genuine): refused on every
    // call with the reason, renewal included.
    let now = time::OffsetDateTime::now_utc();
    let expired = s
        .mesh
        .pki
        .load_user_ca()
        .unwrap()
        .issue_with_validity(
            &Identity::user(TD, Role::Doctor, "bob").unwrap(),
            now - time::Duration::days(31),
            now - time::Duration::days(1),
        )
        .unwrap();
    let service_ca = std::fs::read_to_string(s.mesh.pki.ca_cert()).unwrap();
    let tls = TlsMaterial::from_pem(
        expired.cert_pem.clone(),
        Zeroizing::new(expired.key_pem.clone()),
        service_ca,
    )
    .unwrap();
    let stale = sesphr_client::raw::MeshClients::connect(&mesh, &tls).unwrap();
    let err = stale
        .cloud
        .clone()
        .list_records(proto::ListRecordsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("expired"), "{err:?}");
    let err = stale
        .srs
        .clone()
        .renew(proto::RenewRequest {
            csr_der: sesphr_mesh::pki::make_csr().unwrap().0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // The SDK turns it into the way out.
    std::fs::write(s.home("bob").join("tls.pem"), &expired.cert_pem).unwrap();
    std::fs::write(s.home("bob").join("tls.key"), &expired.key_pem).unwrap();
    let err = admin::renew(&mesh, &profile, false).await.unwrap_err();
    assert!(err.to_string().contains("sesphr reenroll"), "{err}");

    // An operator's re-invitation, with the proof of bob's registered key:
    // same id, role, keys and grants.
    let again = s.invite("bob", Role::Doctor).await;
    assert!(again.reenrollment);
    admin::reenroll(&mesh, &s.home("bob"), Some(&again.text))
        .await
        .unwrap();
    let bob = s.practitioner("bob", Role::Doctor).await;
    assert_eq!(download(&bob, &rec.record_id).await.unwrap(), b"x-ray");
    // It worked once.
    let err = admin::reenroll(&mesh, &s.home("bob"), Some(&again.text))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    // The key proof alone re-enrols too (a new device; the previous one
    // is removed).
    admin::reenroll(&mesh, &s.home("bob"), None).await.unwrap();
    let bob = s.practitioner("bob", Role::Doctor).await;
    assert_eq!(download(&bob, &rec.record_id).await.unwrap(), b"x-ray");
    s.shutdown().await;
}
