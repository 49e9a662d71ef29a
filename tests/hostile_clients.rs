//! Valid, authenticated users acting in bad faith against a real mesh:
//! grinding blob ids into paths, walking page tokens, redrawing ownership
//! challenges, replaying old capsules after a `not_before` grant, and the
//! audit trail each of these leaves.

use crate::common;

use std::collections::HashSet;

use common::{Sandbox, dedup_header, download, upload};
use futures::StreamExt;
use sesphr::proto::{self, put_record_request};
use sesphr_client::raw::MeshClients;
use sesphr_client::{self as client, GrantOptions};
use sesphr_crypto::RecordHeader;
use sesphr_identity::Role;
use sesphr_mesh::unix_now;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

/// A new blob's upload: bytes whose SHA-256 is the blob id (the server
/// checks nothing else about a new blob).
fn raw_blob_upload(owner: &str, record_id: &str, content: &[u8]) -> Vec<proto::PutRecordRequest> {
    let blob_id = Sha256::digest(content).to_vec();
    vec![
        dedup_header(owner, record_id, blob_id, Vec::new(), content.len() as u64),
        proto::PutRecordRequest {
            part: Some(put_record_request::Part::Chunk(content.to_vec().into())),
        },
    ]
}

async fn put(c: &MeshClients, msgs: Vec<proto::PutRecordRequest>) -> Result<(), Status> {
    c.cloud
        .clone()
        .put_record(futures::stream::iter(msgs))
        .await
        .map(drop)
}

/// Content whose SHA-256 starts with `prefix`: ground offline, as an
/// attacker would (two bytes take ~65k hashes).
fn ground(prefix: &[u8]) -> Vec<u8> {
    (0u64..1 << 24)
        .map(|i| format!("ground {i}").into_bytes())
        .find(|c| Sha256::digest(c).starts_with(prefix))
        .expect("a ground content")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_id_ground_to_a_path_is_stored_inside_the_store() {
    let s = Sandbox::start().await;
    let mallory = s.patient("mallory").await;
    // `/` then 0x00: the first layout wrote this blob at `/.<hex>`.
    let to_root = ground(b"/\0");
    let id = Sha256::digest(&to_root);
    let escaped = std::path::PathBuf::from(format!("/.{}", hex::encode(&id[2..])));
    // `a/` before any 0x00: the first layout failed this honest upload.
    let slash = ground(b"a/");
    for (record, content) in [("m1", &to_root), ("m2", &slash)] {
        put(
            &mallory.session.clients,
            raw_blob_upload("mallory", record, content),
        )
        .await
        .unwrap_or_else(|e| panic!("{record}: {e:?}"));
        let mut stream = mallory
            .session
            .clients
            .cloud
            .clone()
            .get_record(proto::GetRecordRequest {
                record_id: record.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(msg) = stream.next().await {
            if let Some(proto::get_record_response::Part::Chunk(c)) = msg.unwrap().part {
                bytes.extend_from_slice(&c);
            }
        }
        assert_eq!(&bytes, content, "{record} reads back");
    }
    assert!(!escaped.exists(), "a blob was written at {escaped:?}");
    let blobs = s.dir.path().join("mesh/cloud-storage/blobs.v2");
    let names: Vec<String> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    for n in names {
        assert!(n.bytes().all(|b| b.is_ascii_hexdigit()), "{n}");
    }
    s.shutdown().await;
}

async fn list_page(
    c: &MeshClients,
    owner: &str,
    partition: &str,
    token: &str,
) -> Result<proto::ListRecordsResponse, Status> {
    c.cloud
        .clone()
        .list_records(proto::ListRecordsRequest {
            owner_id: owner.into(),
            partition: partition.into(),
            page_size: 1,
            page_token: token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_reveal_nothing_a_caller_may_not_see() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let mallory = s.patient("mallory").await;
    let mut medical = Vec::new();
    for i in 0..3 {
        medical.push(upload(&alice, "medical", format!("m{i}").as_bytes()).await);
    }
    let insurance = upload(&alice, "insurance", b"policy").await;
    upload(&alice, "psychiatry", b"notes").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();

    // Someone with no grant sees nothing, and no token to walk on with.
    let mc = &mallory.session.clients;
    for partition in ["", "medical", "insurance", "psychiatry", "nothing-here"] {
        let page = list_page(mc, "alice", partition, "").await.unwrap();
        assert!(page.records.is_empty(), "{partition}");
        assert_eq!(page.next_page_token, "", "{partition}: a token leaks");
    }

    // A grantee walks its own partition, one record a page.
    let bc = &bob.session.clients;
    let mut token = String::new();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let page = list_page(bc, "alice", "", &token).await.unwrap();
        seen.extend(page.records.iter().map(|r| r.record_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        // Opaque: no record id or partition inside, plain or hex.
        for id in medical
            .iter()
            .map(|m| &m.record_id)
            .chain([&insurance.record_id])
        {
            assert!(!page.next_page_token.contains(id.as_str()));
            assert!(!page.next_page_token.contains(&hex::encode(id.as_str())));
        }
        // And useless to anyone else, or for another listing.
        let err = list_page(mc, "alice", "", &page.next_page_token)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let err = list_page(bc, "alice", "insurance", &page.next_page_token)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        token = page.next_page_token;
    }
    let mut want: Vec<String> = medical.iter().map(|m| m.record_id.to_string()).collect();
    want.sort();
    assert_eq!(seen, want, "bob sees exactly the medical records");

    // The owner pages through everything, with tokens of her own.
    let all = alice.list(None, None).await.unwrap();
    assert_eq!(all.len(), 5);

    // A denial tells a non-grantee nothing about the record.
    let err = download(&mallory, &medical[0].record_id).await.unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{msg}");
    for leak in ["medical", "epoch", "not_before", "created"] {
        assert!(!msg.contains(leak), "{msg:?} reveals {leak:?}");
    }
    assert!(msg.ends_with("no grant covers it"), "{msg:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_challenges_cannot_be_redrawn() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let mallory = s.patient("mallory").await;
    // 1,000 leaves; mallory holds all but 10 % of them.
    let file: Vec<u8> = (0..1000u32 * 4096).map(|i| (i % 251) as u8).collect();
    let (scan, _) = alice
        .upload_dedup(
            "medical",
            std::io::Cursor::new(file.clone()),
            file.len() as u64,
            client::no_progress(),
        )
        .await
        .unwrap();
    let missing: HashSet<u64> = (0..1000).filter(|i| i % 10 == 3).collect();
    let mc = &mallory.session.clients;
    let query = || {
        let cloud = mc.cloud.clone();
        let blob_id = scan.blob_id.clone();
        async move {
            cloud
                .clone()
                .query_blob(proto::QueryBlobRequest { blob_id })
                .await
                .map(|q| q.into_inner())
        }
    };
    let mut challenges = HashSet::new();
    let mut refused = 0;
    for round in 0..50 {
        let q = match query().await {
            Ok(q) => q,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("ownership challenges"), "{e:?}");
                refused += 1;
                continue;
            }
        };
        let c = sesphr_dedup::pow::Challenge::from_bytes(&q.challenge).unwrap();
        if c.indices().iter().all(|i| !missing.contains(i)) {
            panic!("a challenge avoiding the prover's gaps was drawn");
        }
        challenges.insert(q.challenge.clone());
        // Asking again while it is open gives the same one: no new draw.
        assert_eq!(query().await.unwrap().challenge, q.challenge);
        // The prover cannot answer; answering badly uses the challenge up.
        let err = put(
            mc,
            vec![dedup_header(
                "mallory",
                &format!("steal{round}"),
                scan.blob_id.clone(),
                vec![0xEE; 40],
                scan.ciphertext_size,
            )],
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("ownership_proof"), "{err:?}");
    }
    assert!(
        challenges.len()
            <= sesphr_cloud_storage::ChallengePolicy::default().max_per_window as usize,
        "{} distinct challenges drawn",
        challenges.len()
    );
    assert!(refused >= 45, "only {refused} refusals");
    // The content-key evaluation alice's upload needed is in her view.
    let alices = alice.session.audit().await.unwrap();
    assert!(
        alices
            .iter()
            .any(|e| e.action.ends_with("/EvaluateContentKey") && e.outcome == "probe"),
        "{alices:?}"
    );
    // The probes are in mallory's own audit view.
    let trail = mallory.session.audit().await.unwrap();
    assert!(
        trail
            .iter()
            .any(|e| e.action.ends_with("/QueryBlob") && e.outcome == "probe"),
        "{trail:?}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_before_grant_keeps_old_capsules_closed_at_the_srs() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let old = upload(&alice, "medical", b"old chart").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    // Bob reads it once and keeps the ciphertext.
    assert_eq!(download(&bob, &old.record_id).await.unwrap(), b"old chart");
    let capsule = RecordHeader::from_bytes(&old.record_header)
        .unwrap()
        .capsule()
        .to_bytes()
        .to_vec();
    let reencrypt = |epoch: u32| {
        let srs = bob.clients.nodes.nodes[0].client.clone();
        let req = proto::ReEncryptRequest {
            owner_id: "alice".into(),
            partition: "medical".into(),
            epoch,
            capsules: vec![capsule.clone()],
            record_id: old.record_id.to_string(),
        };
        async move { srs.clone().re_encrypt(req).await.map(|r| r.into_inner()) }
    };
    let old_key = reencrypt(old.epoch).await.unwrap().delegating_public_key;
    alice.revoke("medical", "bob").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let g = alice
        .grant(
            "medical",
            "bob",
            GrantOptions {
                not_before: Some(unix_now()),
                expires_at: None,
            },
        )
        .await
        .unwrap();
    assert!(g.epoch_min > old.epoch, "the grant starts at a fresh epoch");
    for epoch in 0..=g.epoch_min {
        match reencrypt(epoch).await {
            Err(e) => assert_eq!(e.code(), Code::PermissionDenied, "epoch {epoch}: {e:?}"),
            // Under the new epoch's kfrags the old capsule opens nothing:
            // they re-encrypt from another key than the one it was made for.
            Ok(r) => {
                assert_eq!(epoch, g.epoch_min, "only the granted epoch answers");
                assert_ne!(r.delegating_public_key, old_key, "a new key");
            }
        }
    }
    // And the record itself stays closed; a new one opens.
    assert!(download(&bob, &old.record_id).await.is_err());
    let new = upload(&alice, "medical", b"new chart").await;
    assert_eq!(download(&bob, &new.record_id).await.unwrap(), b"new chart");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_probes_reach_the_victims_audit_view() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let mallory = s.patient("mallory").await;
    let rec = upload(&alice, "medical", b"chart").await;

    // mallory tries to delete alice's record.
    let err = mallory.delete(&rec.record_id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    // bob looks alice up twice: one entry.
    for _ in 0..2 {
        bob.clients
            .srs
            .clone()
            .get_user(proto::GetUserRequest {
                user_id: "alice".into(),
            })
            .await
            .unwrap();
    }
    // Someone with a forged invitation tries to take the id "carol".
    let mut req = proto::EnrollRequest {
        invitation: format!("inv1-{}", "7".repeat(64)),
        user_id: "carol".into(),
        role: proto::Role::Doctor as i32,
        ..Default::default()
    };
    let ca_pem = std::fs::read_to_string(&s.mesh.mesh.ca).unwrap();
    let srs = sesphr_identity::Identity::service(
        &s.mesh.mesh.trust_domain,
        sesphr_identity::Service::Srs,
    );
    let ch = sesphr_mesh::tls::channel(
        &s.mesh.mesh.srs,
        sesphr_mesh::tls::anonymous_client_config(&ca_pem),
        &srs,
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let err = proto::srs_client::SrsClient::new(ch)
        .enroll(req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    req.invitation.clear();

    let trail = alice.session.audit().await.unwrap();
    let delete = trail
        .iter()
        .find(|e| {
            e.action
                .ends_with("denied:sesphr.v1.CloudStorage/DeleteRecord")
        })
        .unwrap_or_else(|| panic!("no DeleteRecord refusal in alice's view: {trail:?}"));
    assert!(delete.subject.contains("mallory"), "{delete:?}");
    assert_eq!(delete.record_id, rec.record_id.as_str());
    let lookups: Vec<_> = trail
        .iter()
        .filter(|e| e.action.ends_with("/GetUser") && e.subject.contains("bob"))
        .collect();
    assert_eq!(lookups.len(), 1, "{trail:?}");

    let op = s.operator();
    let mut all = op
        .policy
        .clone()
        .list_audit(proto::ListAuditRequest {
            after_seq: 0,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_inner();
    let mut enroll = Vec::new();
    while let Some(e) = all.next().await {
        let e = e.unwrap();
        if e.action.ends_with("Enroll") {
            enroll.push(e);
        }
    }
    assert!(
        enroll
            .iter()
            .any(|e| e.action == "denied:sesphr.v1.Srs/Enroll" && e.owner_id == "carol"),
        "{enroll:?}"
    );
    assert!(
        enroll.iter().any(|e| e.action == "sesphr.v1.Srs/Enroll"
            && e.owner_id == "alice"
            && e.outcome == "ok"),
        "{enroll:?}"
    );
    s.shutdown().await;
}

/// `GetUser` was cheap and unlimited: 5,000 concurrent calls in 0.4 s. It is
/// an expensive call now (per-identity concurrency and rate), and a flood
/// of lookups of one user leaves one entry in her view, not thousands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_lookup_flood_is_limited_and_leaves_one_entry() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let mallory = s.patient("mallory").await;
    let calls = (0..600).map(|_| {
        let srs = mallory.session.clients.srs.clone();
        async move {
            srs.clone()
                .get_user(proto::GetUserRequest {
                    user_id: "alice".into(),
                })
                .await
                .map(drop)
        }
    });
    let results = futures::future::join_all(calls).await;
    let exhausted = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Code::ResourceExhausted))
        .count();
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        }
    }
    assert!(exhausted > 0, "600 concurrent lookups were all served");
    // Others are not affected.
    bob.clients
        .srs
        .clone()
        .get_user(proto::GetUserRequest {
            user_id: "alice".into(),
        })
        .await
        .unwrap();
    let trail = alice.session.audit().await.unwrap();
    let by_mallory = trail
        .iter()
        .filter(|e| e.action.ends_with("/GetUser") && e.subject.contains("mallory"))
        .count();
    assert_eq!(by_mallory, 1, "{trail:?}");
    s.shutdown().await;
}
