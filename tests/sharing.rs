//! Patients and practitioners through the SDK against a real mesh:
//! partition isolation, revocation, backward access control, expiry, and the
//! cryptographic checks a grantee makes.

use crate::common;

use std::time::Duration;

use common::{Sandbox, download, upload};
use sesphr::proto;
use sesphr_client::GrantOptions;
use sesphr_crypto as crypto;
use sesphr_identity::Role;
use sesphr_mesh::unix_now;
use tonic::Code;

fn denied(r: Result<Vec<u8>, sesphr_client::ClientError>) -> bool {
    matches!(r, Err(e) if e.code() == Some(Code::PermissionDenied))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_on_medical_opens_nothing_else_even_when_services_are_asked_directly() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let med = upload(&alice, "medical", b"chart").await;
    let ins = upload(&alice, "insurance", b"policy").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();

    assert_eq!(download(&bob, &med.record_id).await.unwrap(), b"chart");
    assert!(denied(download(&bob, &ins.record_id).await));

    // Asking a node directly to re-encrypt the insurance capsule fails too.
    let header = crypto::RecordHeader::from_bytes(&ins.record_header).unwrap();
    let err = bob.clients.nodes.nodes[0]
        .client
        .clone()
        .re_encrypt(proto::ReEncryptRequest {
            owner_id: "alice".into(),
            partition: "insurance".into(),
            epoch: 0,
            capsules: vec![header.capsule().to_bytes().to_vec()],
            record_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Re-encrypting the insurance capsule under the *medical* grant, at
    // every node, yields cfrags that cannot open it: partitions are
    // separate keys.
    let owner = bob
        .clients
        .srs
        .clone()
        .get_user(proto::GetUserRequest {
            user_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let vk = crypto::VerifyingKey::from_bytes(&owner.verifying_key).unwrap();
    let bob_master = bob.profile.master_secret().unwrap();
    let (bob_sk, bob_pk) = sesphr_client::receiving_keys(&bob_master).unwrap();
    let mut medical_pk = None;
    let mut verified = Vec::new();
    for node in &bob.clients.nodes.nodes {
        let resp = node
            .client
            .clone()
            .re_encrypt(proto::ReEncryptRequest {
                owner_id: "alice".into(),
                partition: "medical".into(),
                epoch: 0,
                capsules: vec![header.capsule().to_bytes().to_vec()],
                record_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let pk = crypto::PublicKey::from_bytes(&resp.delegating_public_key).unwrap();
        let cfrag = crypto::CapsuleFrag::from_bytes(&resp.cfrags[0]).unwrap();
        // The proof is about the capsule given, so it verifies against the
        // medical key, and decapsulation must still not yield the insurance key.
        verified.push(cfrag.verify(header.capsule(), &vk, &pk, &bob_pk).unwrap());
        medical_pk = Some(pk);
    }
    let medical_pk = medical_pk.unwrap();
    let wrong = crypto::decapsulate_reencrypted(&bob_sk, &medical_pk, header.capsule(), &verified);
    let (alice_ins_sk, _) = {
        let m = alice.profile.master_secret().unwrap();
        m.partition_keys("insurance", 0).unwrap()
    };
    let right = crypto::decapsulate_original(&alice_ins_sk, header.capsule()).unwrap();
    assert!(wrong.map(|k| k != right).unwrap_or(true));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_old_and_new_records_and_rotation_keeps_current_grantees() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let nurse = s.practitioner("nina", Role::Nurse).await;
    let old = upload(&alice, "medical", b"old").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    alice
        .grant("medical", "nina", Default::default())
        .await
        .unwrap();
    assert_eq!(download(&bob, &old.record_id).await.unwrap(), b"old");

    alice.revoke("medical", "bob").await.unwrap();
    let epoch = alice.rotate("medical").await.unwrap();
    assert_eq!(epoch, 1);
    let new = upload(&alice, "medical", b"new").await;
    assert_eq!(new.epoch, 1);
    assert!(denied(download(&bob, &old.record_id).await));
    assert!(denied(download(&bob, &new.record_id).await));
    // Nina still reads both epochs; alice reads her own.
    assert_eq!(download(&nurse, &old.record_id).await.unwrap(), b"old");
    assert_eq!(download(&nurse, &new.record_id).await.unwrap(), b"new");
    assert_eq!(download(&alice, &new.record_id).await.unwrap(), b"new");

    // Revoking twice is a clear NOT_FOUND.
    let err = alice.revoke("medical", "bob").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_before_keeps_earlier_records_closed() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let carol = s.practitioner("carol", Role::Researcher).await;
    let before = upload(&alice, "medical", b"before").await;
    // Record times have one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let opts = GrantOptions {
        not_before: Some(unix_now()),
        expires_at: None,
    };
    alice.grant("medical", "carol", opts).await.unwrap();
    let after = upload(&alice, "medical", b"after").await;
    assert!(denied(download(&carol, &before.record_id).await));
    assert_eq!(download(&carol, &after.record_id).await.unwrap(), b"after");
    // Listing shows only what carol may read.
    let listed = carol.list(Some("alice"), None).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(ids, [after.record_id.as_str()]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_grant_reads_nothing() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let dave = s.practitioner("dave", Role::Friend).await;
    let rec = upload(&alice, "personal", b"hi").await;
    let opts = GrantOptions {
        not_before: None,
        expires_at: Some(unix_now() + 2),
    };
    alice.grant("personal", "dave", opts).await.unwrap();
    assert_eq!(download(&dave, &rec.record_id).await.unwrap(), b"hi");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert!(denied(download(&dave, &rec.record_id).await));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grantee_key_alone_cannot_open_a_record_and_bad_kfrags_are_refused() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let mallory = s.patient("mallory").await;
    let rec = upload(&alice, "medical", b"secret").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    let header = crypto::RecordHeader::from_bytes(&rec.record_header).unwrap();
    let bob_master = bob.profile.master_secret().unwrap();
    let (bob_sk, _) = sesphr_client::receiving_keys(&bob_master).unwrap();
    let (alice_sk, _) = alice
        .profile
        .master_secret()
        .unwrap()
        .partition_keys("medical", 0)
        .unwrap();
    let real = crypto::decapsulate_original(&alice_sk, header.capsule()).unwrap();
    let guess = crypto::decapsulate_original(&bob_sk, header.capsule());
    assert!(
        guess.map(|k| k != real).unwrap_or(true),
        "bob's key opened the capsule alone"
    );

    // Mallory tries to plant kfrags "from alice": signed with her own key,
    // they do not verify against alice's registered key. (PutKfrags stores
    // under the caller, so she can only try under her own name — and a kfrag
    // made for a different grantee key is refused.)
    let m_master = mallory.profile.master_secret().unwrap();
    let (m_sk, m_pk) = m_master.partition_keys("medical", 0).unwrap();
    let (_, someone_pk) = crypto::MasterSecret::generate(&mut rand::rng())
        .partition_keys("x", 0)
        .unwrap();
    let kfrags = crypto::generate_node_kfrags(
        &mut rand::rng(),
        &m_sk,
        &someone_pk,
        &m_master.signing_key(),
        2,
        3,
        &crypto::grant_context("mallory", "medical", 0, "bob"),
    )
    .unwrap();
    let err = mallory.clients.nodes.nodes[0]
        .client
        .clone()
        .put_kfrag(proto::PutKfragRequest {
            partition: "medical".into(),
            epoch: 0,
            grantee_id: "bob".into(),
            delegating_public_key: m_pk.to_bytes().to_vec(),
            kfrag: kfrags[0].to_bytes().to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("does not verify"),
        "{}",
        err.message()
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let err = alice
        .grant("Medical!", "bob", Default::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid partition"), "{err}");
    let err = alice
        .grant("medical", "nobody", Default::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    let err = download(&bob, "no-such-record").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    // A practitioner cannot upload.
    let err = bob
        .clients
        .cloud
        .clone()
        .put_record(futures::stream::iter(Vec::<proto::PutRecordRequest>::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A stream that starts with a chunk, or declares the wrong size, stores nothing.
    let err = alice
        .clients
        .cloud
        .clone()
        .put_record(futures::stream::iter(vec![proto::PutRecordRequest {
            part: Some(proto::put_record_request::Part::Chunk(vec![1, 2, 3].into())),
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("first PutRecord message"),
        "{}",
        err.message()
    );
    assert!(alice.list(None, None).await.unwrap().is_empty());
    s.shutdown().await;
}
