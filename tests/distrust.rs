//! A client that does not believe the servers: owner signatures on records,
//! pinned user keys, and the owner's own grant ledger deciding who gets
//! kfrags. These cases need no impostor server: a patient with a real
//! certificate can already plant what a lying server would serve or list
//! (`tests/impostor.rs` covers the servers themselves lying).

use crate::common;

use common::{Sandbox, download, upload};
use sesphr::proto;
use sesphr_client::{ClientError, Disagreement, PinStatus};
use sesphr_crypto as crypto;
use sesphr_identity::Role;

/// A record uploaded by `mallory` (a patient) through the raw API, whose
/// header names her as owner but is signed with a key that is not hers.
async fn plant_unsigned_record(mallory: &sesphr_client::Patient, text: &[u8]) -> String {
    let mut rng = rand::rng();
    let master = mallory.profile.master_secret().unwrap();
    let (_, pk) = master.partition_keys("medical", 0).unwrap();
    let (capsule, kem) = crypto::encapsulate(&mut rng, &pk);
    let stranger = crypto::SigningKey::generate(&mut rng);
    let id = "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0".to_owned();
    let header = crypto::RecordHeader::new(
        &mut rng,
        id.as_bytes(),
        b"mallory",
        "medical",
        0,
        capsule,
        &stranger,
    )
    .unwrap();
    let body = crypto::RecordSealer::new(header.clone(), &kem, &stranger)
        .unwrap()
        .seal_last(text)
        .unwrap();
    let msgs = vec![
        proto::PutRecordRequest {
            part: Some(proto::put_record_request::Part::Header(
                proto::RecordUpload {
                    record_id: id.clone(),
                    partition: "medical".into(),
                    epoch: 0,
                    record_header: header.to_bytes(),
                    ciphertext_size: body.len() as u64,
                    ..Default::default()
                },
            )),
        },
        proto::PutRecordRequest {
            part: Some(proto::put_record_request::Part::Chunk(body.into())),
        },
    ];
    mallory
        .clients
        .cloud
        .clone()
        .put_record(futures::stream::iter(msgs))
        .await
        .expect("the cloud stores what it cannot check");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_not_signed_by_their_owner_are_refused_before_any_byte() {
    let s = Sandbox::start().await;
    let mallory = s.patient("mallory").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    mallory
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    let genuine = upload(&mallory, "medical", b"signed").await;
    assert_eq!(download(&bob, &genuine.record_id).await.unwrap(), b"signed");

    let forged = plant_unsigned_record(&mallory, b"allergies: none").await;
    for reader in [&*bob, &mallory.session] {
        let mut out = Vec::new();
        let err = reader
            .download(&forged, &mut out, sesphr_client::no_progress())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Verification(m) if m.contains("not signed by its owner")),
            "{err}"
        );
        assert!(out.is_empty(), "nothing is released");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_key_is_refused_until_its_fingerprint_is_confirmed() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let _mallory = s.practitioner("mallory", Role::Doctor).await;
    let bob_fp = sesphr_client::own_fingerprint(&bob.profile).unwrap();

    // First use pins bob's keys; whois shows the fingerprint bob has.
    let (keys, status) = alice.whois("bob").await.unwrap();
    assert_eq!(
        (keys.fingerprint(), status),
        (bob_fp.clone(), PinStatus::New)
    );
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    assert_eq!(
        alice.pinned_fingerprint("bob").unwrap(),
        Some(bob_fp.clone())
    );
    assert_eq!(alice.whois("bob").await.unwrap().1, PinStatus::Pinned);

    // Alice's profile pinned other keys for bob (as if the directory had
    // substituted them at first use, or bob re-enrolled): every use of
    // bob's keys is refused, with both fingerprints.
    let pins = alice.profile.home.join("known_keys.toml");
    let text = std::fs::read_to_string(&pins).unwrap();
    let (mallory_keys, _) = alice.user_keys("mallory").await.unwrap();
    let mallory_pin = std::fs::read_to_string(&pins).unwrap();
    let mallory_entry: toml::Table = toml::from_str(&mallory_pin).unwrap();
    let mut table: toml::Table = toml::from_str(&text).unwrap();
    table.insert("bob".into(), mallory_entry["mallory"].clone());
    std::fs::write(&pins, toml::to_string(&table).unwrap()).unwrap();

    let err = alice
        .grant("insurance", "bob", Default::default())
        .await
        .unwrap_err();
    match &err {
        ClientError::KeyChanged {
            user_id,
            pinned,
            presented,
        } => {
            assert_eq!(user_id, "bob");
            assert_eq!(pinned, &mallory_keys.fingerprint());
            assert_eq!(presented, &bob_fp);
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().contains("sesphr trust bob --fingerprint"),
        "{err}"
    );
    assert!(matches!(
        alice.whois("bob").await.unwrap().1,
        PinStatus::Changed { .. }
    ));
    // Rotation (which hands bob kfrags) is refused too.
    assert!(matches!(
        alice.rotate("medical").await,
        Err(ClientError::KeyChanged { .. })
    ));

    // A wrong fingerprint pins nothing; the right one restores the grant.
    let err = alice
        .trust("bob", &mallory_keys.fingerprint())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing was pinned"), "{err}");
    alice.trust("bob", &bob_fp.to_uppercase()).await.unwrap();
    alice
        .grant("insurance", "bob", Default::default())
        .await
        .unwrap();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_follows_the_owners_ledger_not_the_servers_list() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let carol = s.practitioner("carol", Role::Doctor).await;
    let mallory = s.practitioner("mallory", Role::Doctor).await;
    for who in ["bob", "carol"] {
        alice
            .grant("medical", who, Default::default())
            .await
            .unwrap();
    }
    alice.revoke("medical", "carol").await.unwrap();

    // What a lying AccessPolicy would list: a grant to mallory nobody made
    // and carol's revoked grant still in place (planted here through the
    // raw API, which AccessPolicy accepts from the owner).
    for (who, role) in [("mallory", Role::Doctor), ("carol", Role::Doctor)] {
        alice
            .clients
            .policy
            .clone()
            .grant(proto::GrantRequest {
                grant: Some(proto::AccessGrant {
                    owner_id: "alice".into(),
                    partition: "medical".into(),
                    grantee_id: who.into(),
                    grantee_role: proto::Role::from(role) as i32,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }
    let (_, disagreements) = alice.audit_grants().await.unwrap();
    assert!(
        disagreements.iter().any(|d| matches!(d,
            Disagreement::NotInLedger { grantee_id, .. } if grantee_id == "mallory")),
        "{disagreements:?}"
    );
    assert!(
        disagreements.iter().any(|d| matches!(d,
            Disagreement::RevokedButListed { grantee_id, .. } if grantee_id == "carol")),
        "{disagreements:?}"
    );

    // The rotation hands new-epoch kfrags to bob only.
    let epoch = alice.rotate("medical").await.unwrap();
    let after = upload(&alice, "medical", b"after the rotation").await;
    assert_eq!(after.epoch, epoch);
    assert_eq!(
        download(&bob, &after.record_id).await.unwrap(),
        b"after the rotation"
    );
    for outsider in [&carol, &mallory] {
        assert!(
            download(outsider, &after.record_id).await.is_err(),
            "{} must not read a record written after the rotation",
            outsider.user_id()
        );
    }
    s.shutdown().await;
}
