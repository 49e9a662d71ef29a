//! Servers that forge records, substitute keys and undo revocations, run as
//! impostors (`common::impostor`: real gRPC servers with valid service
//! certificates, forwarding to the real mesh and tampering): nothing forged
//! is released, a swapped key is refused, and `revoke` + `rotate` hold
//! against a lying AccessPolicy.

use crate::common;

use common::impostor::{
    self, AccessPolicyHooks, CloudStorageHooks, Impostor, SrsHooks, forward, hook, reply_stream,
};
use common::{Sandbox, download, upload};
use sesphr::proto::{self, get_record_response};
use sesphr_client::{ClientError, Patient, Practitioner, Session};
use sesphr_crypto::{self as crypto, HeaderDraft, RecordHeader, RecordSealer, SigningKey};
use sesphr_identity::{Role, Service};
use tonic::Response;

/// A GetRecord reply: `meta` (its header and size taken from `header` and
/// `body`), then `body` in one chunk.
fn served(
    record_id: &str,
    owner: &str,
    header: &RecordHeader,
    body: Vec<u8>,
) -> Vec<proto::GetRecordResponse> {
    let meta = proto::RecordMeta {
        record_id: record_id.into(),
        owner_id: owner.into(),
        partition: header.partition().into(),
        epoch: header.epoch(),
        created_at: sesphr_mesh::unix_now(),
        ciphertext_size: body.len() as u64,
        record_header: header.to_bytes(),
        ..Default::default()
    };
    vec![
        proto::GetRecordResponse {
            part: Some(get_record_response::Part::Meta(meta)),
        },
        proto::GetRecordResponse {
            part: Some(get_record_response::Part::Chunk(body.into())),
        },
    ]
}

/// A CloudStorage that answers every GetRecord with `forged`.
async fn cloud_serving(s: &Sandbox, user: &str, forged: Vec<proto::GetRecordResponse>) -> Impostor {
    let hooks = CloudStorageHooks {
        get_record: hook(move |_, _| {
            let forged = forged.clone();
            async move { Ok(Response::new(reply_stream(forged))) }
        }),
        ..Default::default()
    };
    Impostor::cloud_storage(s, user, hooks).await
}

/// Downloads through `mesh` as `user`; asserts it failed and wrote nothing.
async fn refused(s: &Sandbox, mesh: &sesphr_client::MeshFile, user: &str, id: &str) -> String {
    let session = Session::open(mesh, &s.home(user)).unwrap();
    let mut out = Vec::new();
    let err = session
        .download(id, &mut out, sesphr_client::no_progress())
        .await
        .expect_err("a forged record must be refused");
    assert!(out.is_empty(), "{user} was handed forged bytes: {err}");
    err.to_string()
}

/// Alice (a patient) grants doctor bob her medical partition and uploads
/// `text` there, which bob reads through the real mesh (pinning alice's
/// key); doctor mallory is enrolled too.
async fn alice_shares_medical_with_bob(
    s: &Sandbox,
    text: &[u8],
) -> (Patient, Practitioner, sesphr_client::Record) {
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    s.practitioner("mallory", Role::Doctor).await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    let record = upload(&alice, "medical", text).await;
    assert_eq!(download(&bob, &record.record_id).await.unwrap(), text);
    (alice, bob, record)
}

/// A record under `header`'s key, sealed and signed by `signer`.
fn seal(header: &RecordHeader, kem: &crypto::KemKey, signer: &SigningKey, text: &[u8]) -> Vec<u8> {
    RecordSealer::new(header.clone(), kem, signer)
        .unwrap()
        .seal_last(text)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_cannot_make_a_patient_accept_a_record_for_her_receiving_key() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    // What the cloud can learn: alice's receiving key (GetUser is open to
    // services). It encapsulates to it under the reserved partition.
    let receiving = alice.user_keys("alice").await.unwrap().0.pre_public_key;
    let mut rng = rand::rng();
    let (capsule, kem) = crypto::encapsulate(&mut rng, &receiving);
    let mallory = SigningKey::generate(&mut rng);
    let id = "abababababababababababababababab";
    let header = HeaderDraft::new(&mut rng, id.as_bytes(), b"alice", "@receive", 0, capsule)
        .unwrap()
        .sign(&mallory, b"");
    let body = seal(&header, &kem, &mallory, b"you have no allergies");
    let fake = cloud_serving(&s, "alice", served(id, "alice", &header, body)).await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &fake.url);
    let err = refused(&s, &mesh, "alice", id).await;
    assert!(err.contains("which no record can have"), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_forged_with_a_partition_key_or_a_records_own_key_are_refused() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    let genuine = upload(&alice, "medical", b"allergies: penicillin").await;
    // Bob reads it once through the real mesh (and pins alice's key).
    assert_eq!(
        download(&bob, &genuine.record_id).await.unwrap(),
        b"allergies: penicillin"
    );
    let master = alice.profile.master_secret().unwrap();
    let mut rng = rand::rng();
    let mallory = SigningKey::generate(&mut rng);

    // 1. Anyone who knows the medical partition's public key (every grantee
    // learns it from ReEncrypt replies) writes a whole new record.
    let (_, medical_pk) = master.partition_keys("medical", 0).unwrap();
    let (capsule, kem) = crypto::encapsulate(&mut rng, &medical_pk);
    let header = HeaderDraft::new(
        &mut rng,
        genuine.record_id.as_bytes(),
        b"alice",
        "medical",
        0,
        capsule,
    )
    .unwrap()
    .sign(&mallory, b"");
    let body = seal(&header, &kem, &mallory, b"allergies: none");
    let fake = cloud_serving(
        &s,
        "alice",
        served(&genuine.record_id, "alice", &header, body.clone()),
    )
    .await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &fake.url);
    for user in ["alice", "bob"] {
        let err = refused(&s, &mesh, user, &genuine.record_id).await;
        assert!(err.contains("not signed by its owner"), "{user}: {err}");
    }
    // The cloud's fake never got far enough for bob to ask the SRS.
    drop(fake);

    // 2. A key holder (bob, or the cloud with the SRS) keeps the genuine,
    // owner-signed header and writes other segments under its key.
    let header = RecordHeader::from_bytes(&genuine.record_header).unwrap();
    let (sk, _) = master.partition_keys("medical", 0).unwrap();
    let kem = crypto::decapsulate_original(&sk, header.capsule()).unwrap();
    let body = seal(&header, &kem, &mallory, b"allergies: none");
    let fake = cloud_serving(
        &s,
        "alice",
        served(&genuine.record_id, "alice", &header, body),
    )
    .await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::CloudStorage, &fake.url);
    for user in ["alice", "bob"] {
        let err = refused(&s, &mesh, user, &genuine.record_id).await;
        assert!(
            err.contains("segment of the record is not signed"),
            "{user}: {err}"
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_swaps_keys_is_refused_once_keys_are_pinned() {
    let s = Sandbox::start().await;
    let (_alice, _bob, genuine) = alice_shares_medical_with_bob(&s, b"chart").await;

    // An SRS that answers every GetUser with mallory's keys under the name
    // asked for.
    let swap = || SrsHooks {
        get_user: hook(
            |up, req: tonic::Request<proto::GetUserRequest>| async move {
                let asked = req.get_ref().user_id.clone();
                let mut reply = forward::get_user(
                    up,
                    tonic::Request::new(proto::GetUserRequest {
                        user_id: "mallory".into(),
                    }),
                )
                .await?;
                reply.get_mut().user_id = asked;
                Ok(reply)
            },
        ),
        ..Default::default()
    };

    // Granting: bob's pinned keys differ from what the SRS now presents;
    // nothing is sent to the SRS for him.
    let srs = Impostor::srs(&s, "alice", swap()).await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::Srs, &srs.url);
    let patient = Patient::open(&mesh, &s.home("alice")).unwrap();
    let err = patient
        .grant("insurance", "bob", Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::KeyChanged { .. }), "{err}");
    assert!(!srs.calls().contains(&"PutKfrags"), "{:?}", srs.calls());
    // Rotating hands the swapped key nothing either.
    assert!(matches!(
        patient.rotate("medical").await,
        Err(ClientError::KeyChanged { .. })
    ));
    drop(srs);

    // Reading: with alice's key pinned, bob does not even ask the SRS who
    // alice is, and a record signed by the key it would name is refused.
    let srs = Impostor::srs(&s, "bob", swap()).await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::Srs, &srs.url);
    let reader = Practitioner::open(&mesh, &s.home("bob")).unwrap();
    assert_eq!(
        common::download(&reader, &genuine.record_id).await.unwrap(),
        b"chart"
    );
    assert!(!srs.calls().contains(&"GetUser"), "{:?}", srs.calls());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_and_rotate_hold_against_a_lying_access_policy() {
    let s = Sandbox::start().await;
    let (alice, bob, _before) = alice_shares_medical_with_bob(&s, b"before").await;

    // AccessPolicy acknowledges the revocation without recording it, and
    // lists a grant to mallory that nobody made.
    let hooks = AccessPolicyHooks {
        revoke: hook(|_, req: tonic::Request<proto::RevokeRequest>| async move {
            let req = req.into_inner();
            Ok(Response::new(proto::RevokeResponse {
                grant: Some(proto::AccessGrant {
                    owner_id: "alice".into(),
                    partition: req.partition,
                    grantee_id: req.grantee_id,
                    grantee_role: proto::Role::Doctor as i32,
                    ..Default::default()
                }),
            }))
        }),
        list_grants: hook(|up, req| async move {
            let mut reply = forward::list_grants(up, req).await?;
            reply.get_mut().given.push(proto::AccessGrant {
                owner_id: "alice".into(),
                partition: "medical".into(),
                grantee_id: "mallory".into(),
                grantee_role: proto::Role::Doctor as i32,
                ..Default::default()
            });
            Ok(reply)
        }),
        ..Default::default()
    };
    let policy = Impostor::access_policy(&s, "alice", hooks).await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::AccessPolicy, &policy.url);
    let patient = Patient::open(&mesh, &s.home("alice")).unwrap();
    patient.revoke("medical", "bob").await.unwrap();
    let epoch = patient.rotate("medical").await.unwrap();
    let (_, disagreements) = patient.audit_grants().await.unwrap();
    let text: Vec<String> = disagreements.iter().map(|d| d.to_string()).collect();
    assert!(
        text.iter()
            .any(|d| d.contains("bob") && d.contains("revoked by you")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|d| d.contains("mallory") && d.contains("never granted")),
        "{text:?}"
    );
    drop(policy);

    // The real AccessPolicy still holds bob's grant, but he got no kfrags
    // for the new epoch and lost the old ones: a record written after the
    // rotation stays closed to him, and mallory has nothing at all.
    let after = upload(&alice, "medical", b"after").await;
    assert_eq!(after.epoch, epoch);
    let bob_after = download(&bob, &after.record_id).await;
    assert!(bob_after.is_err(), "bob read a record after his revocation");
    let mallory = s.practitioner("mallory", Role::Doctor).await;
    assert!(download(&mallory, &after.record_id).await.is_err());

    // A grant acknowledged differently from what was asked is refused and
    // never enters the ledger.
    let hooks = AccessPolicyHooks {
        grant: hook(|up, req| async move {
            let mut reply = forward::grant(up, req).await?;
            if let Some(g) = reply.get_mut().grant.as_mut() {
                g.expires_at = None;
                g.grantee_id = "mallory".into();
            }
            Ok(reply)
        }),
        ..Default::default()
    };
    let policy = Impostor::access_policy(&s, "alice", hooks).await;
    let mesh = impostor::redirect(&s.mesh_file(), Service::AccessPolicy, &policy.url);
    let patient = Patient::open(&mesh, &s.home("alice")).unwrap();
    let err = patient
        .grant(
            "insurance",
            "bob",
            sesphr_client::GrantOptions {
                expires_at: Some(sesphr_mesh::unix_now() + 3600),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another grant"), "{err}");
    drop(policy);
    let (_, d) = alice.audit_grants().await.unwrap();
    assert!(
        d.iter().any(|d| d.to_string().contains("insurance")),
        "the real AccessPolicy's grant is not in the ledger: {d:?}"
    );
    s.shutdown().await;
}
