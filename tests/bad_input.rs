//! Malformed and hostile requests, table-driven, across every RPC of the
//! mesh: each one is refused with the right status code and a message that
//! says why, the services stay up (health is checked after every case), and
//! nothing changes for the victim — her records, grants, kfrags (her grantee
//! can still read) and audit trail (only denials are added) are as before.
//! A second test drives the per-identity rate and concurrency limits.

// Messages gain optional fields over time; `..Default::default()` keeps the
// cases meaning what they say when they do.
#![allow(clippy::needless_update)]

use crate::common;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use common::{Sandbox, dedup_header, download, upload};
use futures::StreamExt;
use sesphr::proto::{self, put_record_request};
use sesphr_client::raw::MeshClients;
use sesphr_client::{self as client, receiving_keys};
use sesphr_crypto::{self as crypto, MasterSecret, PublicKey, RecordHeader};
use sesphr_identity::{Identity, Role};
use sesphr_mesh::limits::Limits;
use sesphr_mesh::tls;
use sesphr_server::daemon::{DevMesh, DevOptions};
use tonic::{Code, Status};

/// What a case must produce.
enum Expect {
    /// Refused with this code, the message containing this text.
    Err(Code, &'static str),
    /// Accepted (harmlessly), the summary containing this text.
    Ok(&'static str),
}

type Call<'a> = Pin<Box<dyn Future<Output = Result<String, Status>> + Send + 'a>>;

struct Case<'a> {
    name: &'static str,
    expect: Expect,
    call: Call<'a>,
}

fn case<'a>(
    name: &'static str,
    expect: Expect,
    call: impl Future<Output = Result<String, Status>> + Send + 'a,
) -> Case<'a> {
    Case {
        name,
        expect,
        call: Box::pin(call),
    }
}

use Expect::{Err as Refused, Ok as Accepted};

/// An encoded record header for `owner` (any key: the server cannot tell).
fn header_bytes(owner: &str, record_id: &str, partition: &str, epoch: u32) -> Vec<u8> {
    let mut rng = rand::rng();
    let pk = crypto::SecretKey::generate(&mut rng).public_key();
    let (capsule, _) = crypto::encapsulate(&mut rng, &pk);
    RecordHeader::new(
        &mut rng,
        record_id.as_bytes(),
        owner.as_bytes(),
        partition,
        epoch,
        capsule,
    )
    .unwrap()
    .to_bytes()
}

fn header_msg(
    record_id: &str,
    partition: &str,
    epoch: u32,
    record_header: Vec<u8>,
    size: u64,
) -> proto::PutRecordRequest {
    proto::PutRecordRequest {
        part: Some(put_record_request::Part::Header(proto::RecordUpload {
            record_id: record_id.to_owned(),
            partition: partition.to_owned(),
            epoch,
            record_header,
            ciphertext_size: size,
            ..Default::default()
        })),
    }
}

fn chunk(bytes: Vec<u8>) -> proto::PutRecordRequest {
    proto::PutRecordRequest {
        part: Some(put_record_request::Part::Chunk(bytes.into())),
    }
}

/// A well-formed first message of `owner`'s upload of `size` bytes.
fn good_header(owner: &str, record_id: &str, size: u64) -> proto::PutRecordRequest {
    header_msg(
        record_id,
        "medical",
        0,
        header_bytes(owner, record_id, "medical", 0),
        size,
    )
}

async fn put(c: &MeshClients, msgs: Vec<proto::PutRecordRequest>) -> Result<String, Status> {
    let r = c
        .cloud
        .clone()
        .put_record(futures::stream::iter(msgs))
        .await?;
    Ok(format!(
        "stored {:?}",
        r.into_inner().record.map(|m| m.record_id)
    ))
}

/// Reads the whole GetRecord stream; the summary counts chunk bytes.
async fn get(c: &MeshClients, record_id: &str) -> Result<String, Status> {
    let mut stream = c
        .cloud
        .clone()
        .get_record(proto::GetRecordRequest {
            record_id: record_id.to_owned(),
        })
        .await?
        .into_inner();
    let mut bytes = 0;
    while let Some(msg) = stream.next().await {
        if let Some(proto::get_record_response::Part::Chunk(c)) = msg?.part {
            bytes += c.len();
        }
    }
    Ok(format!("read {bytes} bytes"))
}

async fn list(c: &MeshClients, req: proto::ListRecordsRequest) -> Result<String, Status> {
    let r = c.cloud.clone().list_records(req).await?.into_inner();
    Ok(format!("listed {} records", r.records.len()))
}

async fn reencrypt(c: &MeshClients, req: proto::ReEncryptRequest) -> Result<String, Status> {
    let r = c.srs.clone().re_encrypt(req).await?.into_inner();
    Ok(format!("{} cfrag sets", r.results.len()))
}

async fn enroll(srs_url: &str, ca_pem: &str, req: proto::EnrollRequest) -> Result<String, Status> {
    let ch = tls::channel(
        srs_url,
        tls::anonymous_client_config(ca_pem),
        Duration::from_secs(10),
    )
    .unwrap();
    let r = proto::srs_client::SrsClient::new(ch)
        .enroll(req)
        .await?
        .into_inner();
    Ok(format!("enrolled as {}", r.spiffe_id))
}

/// A complete, valid enrollment request for `user_id` (token aside).
fn enroll_request(token: &str, user_id: &str, role: proto::Role) -> proto::EnrollRequest {
    let master = MasterSecret::generate(&mut rand::rng());
    let (_, pk) = receiving_keys(&master).unwrap();
    let (csr_der, _) = sesphr_mesh::pki::make_csr().unwrap();
    proto::EnrollRequest {
        enrollment_token: token.to_owned(),
        user_id: user_id.to_owned(),
        role: role as i32,
        csr_der,
        pre_public_key: pk.to_bytes().to_vec(),
        verifying_key: master.signing_key().verifying_key().to_bytes().to_vec(),
    }
}

/// Runs a call lazily (when its case comes); the summary is its Debug text.
async fn status_ok<T: std::fmt::Debug>(
    call: impl Future<Output = Result<T, Status>>,
) -> Result<String, Status> {
    call.await.map(|v| format!("{v:?}"))
}

/// Answers CloudStorage's ownership challenge for `content` the way the
/// SDK does (content key from the SRS's OPRF, blob sealed, Merkle proof).
async fn ownership_proof(c: &MeshClients, content: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut h = sesphr_dedup::Sha256Hasher::new();
    h.update(content);
    let digest = h.finalize();
    let (state, blinded) = sesphr_dedup::blind(&mut rand::rng(), &digest).unwrap();
    let evaluated = c
        .srs
        .clone()
        .evaluate_content_key(proto::EvaluateContentKeyRequest {
            blinded_element: blinded.to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .evaluated_element;
    let output = sesphr_dedup::finalize(state, &digest, &evaluated).unwrap();
    let key = sesphr_dedup::content_key(&output);
    let sealer = sesphr_dedup::BlobSealer::new(&key);
    let header = sealer.header_bytes().to_vec();
    let mut body = content.to_vec();
    sealer.seal_last_in_place(&mut body).unwrap();
    let mut blob = sesphr_dedup::Sha256Hasher::new();
    blob.update(&header);
    blob.update(&body);
    let blob_id = blob.finalize().to_vec();
    let query = c
        .cloud
        .clone()
        .query_blob(proto::QueryBlobRequest {
            blob_id: blob_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(query.exists, "the blob is stored");
    let challenge = sesphr_dedup::pow::Challenge::from_bytes(&query.challenge).unwrap();
    let mut builder = sesphr_dedup::pow::ProofBuilder::new(&challenge);
    builder.update(&header).unwrap();
    builder.update(&body).unwrap();
    (blob_id, builder.finish().unwrap().to_bytes())
}

/// What must not change: the victim's records and every grant.
#[derive(Debug, PartialEq)]
struct Snapshot {
    records: Vec<(client::RecordId, u64, i64, Vec<u8>)>,
    alice_grants: (Vec<client::Grant>, Vec<client::Grant>),
    bob_received: Vec<client::Grant>,
    mallory_records: usize,
}

/// Audit actions that change state (the attack must add none for alice).
fn is_mutation(action: &str) -> bool {
    matches!(
        action,
        "grant" | "revoke" | "sesphr.v1.Srs/PutKfrags" | "sesphr.v1.Srs/DeleteKfrags"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_without_side_effects() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let bob = s.practitioner("bob", Role::Doctor).await;
    let carol = s.practitioner("carol", Role::Insurer).await;
    let dave = s.practitioner("dave", Role::Friend).await;
    let mallory = s.patient("mallory").await;
    let eve = s.practitioner("eve", Role::Nurse).await;

    let medical = upload(&alice, "medical", b"blood type 0+").await;
    let insurance = upload(&alice, "insurance", b"policy 42").await;
    let personal = upload(&alice, "personal", b"born 1970").await;
    alice
        .grant("medical", "bob", Default::default())
        .await
        .unwrap();
    // dave's grant expires in two seconds; the cases below run after that.
    let expires = sesphr_mesh::unix_now() + 2;
    alice
        .grant(
            "personal",
            "dave",
            client::GrantOptions {
                expires_at: Some(expires),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        download(&bob, &medical.record_id).await.unwrap(),
        b"blood type 0+"
    );
    // A deduplicated record, then a second one linked by a proof of
    // ownership that an eavesdropper captures for replaying below.
    let shared_scan = b"x-ray of the left knee".to_vec();
    let (scan, _) = alice
        .upload_dedup(
            "medical",
            std::io::Cursor::new(shared_scan.clone()),
            shared_scan.len() as u64,
            client::no_progress(),
        )
        .await
        .unwrap();
    let (blob_id, captured_proof) = ownership_proof(&alice.session.clients, &shared_scan).await;
    assert_eq!(blob_id, scan.blob_id);
    put(
        &alice.session.clients,
        vec![dedup_header(
            "alice",
            "scan2",
            blob_id.clone(),
            captured_proof.clone(),
            scan.ciphertext_size,
        )],
    )
    .await
    .expect("a fresh proof links the record");

    let snapshot = || async {
        let records = alice
            .list(None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|m| {
                (
                    m.record_id,
                    m.ciphertext_size,
                    m.created_at,
                    m.record_header,
                )
            })
            .collect();
        let g = alice.grants().await.unwrap();
        Snapshot {
            records,
            alice_grants: (g.given, g.received),
            bob_received: bob.grants().await.unwrap().received,
            mallory_records: mallory.list(None, None).await.unwrap().len(),
        }
    };
    let before = snapshot().await;
    let audit_before = alice.audit().await.unwrap().len();
    let objects_dir = s.dir.path().join("mesh/cloud-storage/records");
    let objects = || {
        std::fs::read_dir(&objects_dir)
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let objects_before = objects();
    while sesphr_mesh::unix_now() <= expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ac = &alice.session.clients;
    let bc = &bob.session.clients;
    let cc = &carol.session.clients;
    let dc = &dave.session.clients;
    let mc = &mallory.session.clients;
    let ec = &eve.session.clients;
    let op = s.operator();
    let op = &op;
    let foreign_td = s.clients_as(&Identity::user("evil.example", Role::Patient, "alice").unwrap());
    let foreign_td = &foreign_td;
    let mesh = s.mesh_file();
    let token = mesh.enrollment_token.clone().unwrap();
    let ca_pem = std::fs::read_to_string(&mesh.ca).unwrap();
    let (srs_url, ca_pem, token) = (&mesh.srs, &ca_pem, &token);
    let capsule_of = |m: &client::Record| {
        RecordHeader::from_bytes(&m.record_header)
            .unwrap()
            .capsule()
            .to_bytes()
            .to_vec()
    };
    let med_capsule = capsule_of(&medical);
    let ins_capsule = capsule_of(&insurance);
    let reenc = |owner: &str, partition: &str, epoch: u32, capsules: Vec<Vec<u8>>| {
        proto::ReEncryptRequest {
            owner_id: owner.to_owned(),
            partition: partition.to_owned(),
            epoch,
            capsules,
            ..Default::default()
        }
    };
    // Kfrags alice really signed, for bob: valid bytes in the wrong hands.
    let alice_master = sesphr_client::Profile::load(&s.home("alice"))
        .unwrap()
        .master_secret()
        .unwrap();
    let user_pk = |c: &MeshClients, id: &str| {
        let mut srs = c.srs.clone();
        let id = id.to_owned();
        async move {
            let u = srs
                .get_user(proto::GetUserRequest { user_id: id })
                .await
                .unwrap()
                .into_inner();
            PublicKey::from_bytes(&u.pre_public_key).unwrap()
        }
    };
    let bob_pk = user_pk(ac, "bob").await;
    let (alice_med_sk, alice_med_pk) = alice_master.partition_keys("medical", 0).unwrap();
    let alice_kfrags = crypto::generate_kfrags(
        &mut rand::rng(),
        &alice_med_sk,
        &bob_pk,
        &alice_master.signing_key(),
        1,
        1,
    )
    .unwrap();
    let kfrag_bytes: Vec<Vec<u8>> = alice_kfrags.iter().map(|k| k.to_bytes().to_vec()).collect();
    let kfrags_req =
        |grantee: &str, delegating: Vec<u8>, kfrags: Vec<Vec<u8>>| proto::PutKfragsRequest {
            partition: "medical".into(),
            epoch: 0,
            grantee_id: grantee.to_owned(),
            delegating_public_key: delegating,
            kfrags,
        };
    let alice_med_pk_bytes = alice_med_pk.to_bytes().to_vec();
    let grant =
        |owner: &str, partition: &str, grantee: &str, role: proto::Role| proto::GrantRequest {
            grant: Some(proto::AccessGrant {
                owner_id: owner.to_owned(),
                partition: partition.to_owned(),
                grantee_id: grantee.to_owned(),
                grantee_role: role as i32,
                ..Default::default()
            }),
        };
    let long_id = "a".repeat(10_000);

    let cases: Vec<Case> = vec![
        // ---- CloudStorage.PutRecord ----
        case(
            "PutRecord: empty stream",
            Refused(Code::InvalidArgument, "empty PutRecord stream"),
            put(mc, vec![]),
        ),
        case(
            "PutRecord: chunk before the header",
            Refused(
                Code::InvalidArgument,
                "first PutRecord message must be the header",
            ),
            put(mc, vec![chunk(vec![1; 16])]),
        ),
        case(
            "PutRecord: a second header mid-stream",
            Refused(
                Code::InvalidArgument,
                "only the first PutRecord message may be a header",
            ),
            put(
                mc,
                vec![
                    good_header("mallory", "m1", 32),
                    chunk(vec![1; 16]),
                    good_header("mallory", "m1", 32),
                ],
            ),
        ),
        case(
            "PutRecord: message with no part",
            Refused(Code::InvalidArgument, "empty PutRecord message"),
            put(
                mc,
                vec![
                    good_header("mallory", "m2", 32),
                    proto::PutRecordRequest { part: None },
                ],
            ),
        ),
        case(
            "PutRecord: 10 kB record id",
            Refused(Code::InvalidArgument, "not a valid record id"),
            put(mc, vec![header_msg(&long_id, "medical", 0, vec![1], 1)]),
        ),
        case(
            "PutRecord: path traversal in the record id",
            Refused(Code::InvalidArgument, "not a valid record id"),
            put(
                mc,
                vec![header_msg("../../etc/passwd", "medical", 0, vec![1], 1)],
            ),
        ),
        case(
            "PutRecord: invalid partition name",
            Refused(Code::InvalidArgument, "partition"),
            put(
                mc,
                vec![header_msg(
                    "m3",
                    "Medical/../x",
                    0,
                    header_bytes("mallory", "m3", "medical", 0),
                    1,
                )],
            ),
        ),
        case(
            "PutRecord: empty record header",
            Refused(Code::InvalidArgument, "record_header must be 1 to"),
            put(mc, vec![header_msg("m4", "medical", 0, vec![], 1)]),
        ),
        case(
            "PutRecord: 100 kB record header",
            Refused(Code::InvalidArgument, "record_header must be 1 to"),
            put(
                mc,
                vec![header_msg("m5", "medical", 0, vec![7; 100_000], 1)],
            ),
        ),
        case(
            "PutRecord: garbage record header",
            Refused(Code::InvalidArgument, "record_header does not parse"),
            put(mc, vec![header_msg("m6", "medical", 0, vec![0xff; 200], 1)]),
        ),
        case(
            "PutRecord: header naming another owner (cross-owner upload)",
            Refused(Code::InvalidArgument, "names owner \"alice\""),
            put(
                mc,
                vec![header_msg(
                    "m7",
                    "medical",
                    0,
                    header_bytes("alice", "m7", "medical", 0),
                    1,
                )],
            ),
        ),
        case(
            "PutRecord: header naming another record id",
            Refused(Code::InvalidArgument, "names record"),
            put(
                mc,
                vec![header_msg(
                    "m8",
                    "medical",
                    0,
                    header_bytes("mallory", "other", "medical", 0),
                    1,
                )],
            ),
        ),
        case(
            "PutRecord: header naming another epoch",
            Refused(Code::InvalidArgument, "names epoch"),
            put(
                mc,
                vec![header_msg(
                    "m9",
                    "medical",
                    3,
                    header_bytes("mallory", "m9", "medical", 0),
                    1,
                )],
            ),
        ),
        case(
            "PutRecord: declared size of 2^64-1 bytes",
            Refused(Code::InvalidArgument, "exceeds the limit"),
            put(mc, vec![good_header("mallory", "m10", u64::MAX)]),
        ),
        case(
            "PutRecord: truncated stream (10 of 1000 declared bytes)",
            Refused(
                Code::FailedPrecondition,
                "received 10 bytes but 1000 were declared",
            ),
            put(
                mc,
                vec![good_header("mallory", "m11", 1000), chunk(vec![1; 10])],
            ),
        ),
        case(
            "PutRecord: more bytes than declared",
            Refused(Code::InvalidArgument, "more than the declared"),
            put(
                mc,
                vec![
                    good_header("mallory", "m12", 10),
                    chunk(vec![1; 8]),
                    chunk(vec![1; 8]),
                ],
            ),
        ),
        case(
            "PutRecord: empty chunk",
            Refused(Code::InvalidArgument, "empty chunk"),
            put(mc, vec![good_header("mallory", "m13", 10), chunk(vec![])]),
        ),
        case(
            "PutRecord: 6 MiB chunk (over the 4 MiB message limit)",
            Refused(Code::OutOfRange, "message length too large"),
            put(
                mc,
                vec![
                    good_header("mallory", "m14", 6 << 20),
                    chunk(vec![1; 6 << 20]),
                ],
            ),
        ),
        case(
            "PutRecord: reusing the victim's record id",
            Refused(Code::AlreadyExists, "already exists"),
            put(
                mc,
                vec![
                    good_header("mallory", &medical.record_id, 4),
                    chunk(vec![1; 4]),
                ],
            ),
        ),
        case(
            "PutRecord: client abandons the upload mid-stream",
            Refused(Code::Cancelled, ""),
            async {
                let mut req = tonic::Request::new(
                    futures::stream::iter(vec![
                        good_header("mallory", "m15", 1000),
                        chunk(vec![1; 100]),
                    ])
                    .chain(futures::stream::pending()),
                );
                req.set_timeout(Duration::from_millis(300));
                let r = mc.cloud.clone().put_record(req).await;
                // The deadline is the client's own: report it as a cancel.
                r.map(|_| "stored".to_owned()).map_err(|e| match e.code() {
                    Code::DeadlineExceeded | Code::Cancelled => Status::cancelled(""),
                    _ => e,
                })
            },
        ),
        case(
            "PutRecord: practitioner escalating to owner",
            Refused(Code::PermissionDenied, "may not call"),
            put(bc, vec![good_header("bob", "b1", 1), chunk(vec![1])]),
        ),
        case(
            "PutRecord: operator",
            Refused(Code::PermissionDenied, "may not call"),
            put(op, vec![good_header("operator", "o1", 1), chunk(vec![1])]),
        ),
        case(
            "PutRecord: certificate of another trust domain",
            Refused(Code::Unauthenticated, "trust domain"),
            put(
                foreign_td,
                vec![good_header("alice", "f1", 1), chunk(vec![1])],
            ),
        ),
        // ---- CloudStorage.GetRecord ----
        case(
            "GetRecord: empty record id",
            Refused(Code::InvalidArgument, "not a valid record id"),
            get(bc, ""),
        ),
        case(
            "GetRecord: 10 kB record id",
            Refused(Code::InvalidArgument, "not a valid record id"),
            get(bc, &long_id),
        ),
        case(
            "GetRecord: NUL byte in the record id",
            Refused(Code::InvalidArgument, "not a valid record id"),
            get(bc, "abc\0def"),
        ),
        case(
            "GetRecord: unknown record",
            Refused(Code::NotFound, "no record"),
            get(bc, "0123456789abcdef"),
        ),
        case(
            "GetRecord: another patient's record",
            Refused(Code::PermissionDenied, "may not read record"),
            get(mc, &medical.record_id),
        ),
        case(
            "GetRecord: grantee of nothing",
            Refused(Code::PermissionDenied, "may not read record"),
            get(cc, &medical.record_id),
        ),
        case(
            "GetRecord: grantee of another partition",
            Refused(Code::PermissionDenied, "may not read record"),
            get(bc, &insurance.record_id),
        ),
        case(
            "GetRecord: expired grant",
            Refused(Code::PermissionDenied, "expired"),
            get(dc, &personal.record_id),
        ),
        case(
            "GetRecord: operator reading records",
            Refused(Code::PermissionDenied, "may not call"),
            get(op, &medical.record_id),
        ),
        // ---- CloudStorage.ListRecords ----
        case(
            "ListRecords: page size 100000",
            Refused(Code::InvalidArgument, "page_size 100000 exceeds"),
            list(
                bc,
                proto::ListRecordsRequest {
                    owner_id: "alice".into(),
                    page_size: 100_000,
                    ..Default::default()
                },
            ),
        ),
        case(
            "ListRecords: forged page token",
            Refused(Code::InvalidArgument, "page_token"),
            list(
                mc,
                proto::ListRecordsRequest {
                    page_token: "../../x".into(),
                    ..Default::default()
                },
            ),
        ),
        case(
            "ListRecords: invalid owner id",
            Refused(Code::InvalidArgument, "user id"),
            list(
                bc,
                proto::ListRecordsRequest {
                    owner_id: long_id.clone(),
                    ..Default::default()
                },
            ),
        ),
        case(
            "ListRecords: invalid partition",
            Refused(Code::InvalidArgument, "partition"),
            list(
                bc,
                proto::ListRecordsRequest {
                    owner_id: "alice".into(),
                    partition: "MEDICAL!".into(),
                    ..Default::default()
                },
            ),
        ),
        case(
            "ListRecords: another patient's records show nothing",
            Accepted("listed 0 records"),
            list(
                mc,
                proto::ListRecordsRequest {
                    owner_id: "alice".into(),
                    ..Default::default()
                },
            ),
        ),
        case(
            "ListRecords: grantee of nothing sees nothing",
            Accepted("listed 0 records"),
            list(
                cc,
                proto::ListRecordsRequest {
                    owner_id: "alice".into(),
                    ..Default::default()
                },
            ),
        ),
        case(
            "ListRecords: a non-grantee walking page tokens gets none",
            Accepted("0 records, token \"\""),
            async {
                let mut summary = String::new();
                for partition in ["", "medical", "insurance", "personal"] {
                    let r = mc
                        .cloud
                        .clone()
                        .list_records(proto::ListRecordsRequest {
                            owner_id: "alice".into(),
                            partition: partition.into(),
                            page_size: 1,
                            page_token: String::new(),
                        })
                        .await?
                        .into_inner();
                    summary = format!("{} records, token {:?}", r.records.len(), r.next_page_token);
                    if !r.records.is_empty() || !r.next_page_token.is_empty() {
                        break;
                    }
                }
                Ok(summary)
            },
        ),
        case(
            "ListRecords: the owner's page token replayed by another patient",
            Refused(Code::InvalidArgument, "not one this server issued"),
            async {
                let token = ac
                    .cloud
                    .clone()
                    .list_records(proto::ListRecordsRequest {
                        page_size: 1,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .next_page_token;
                list(
                    mc,
                    proto::ListRecordsRequest {
                        owner_id: "alice".into(),
                        page_size: 1,
                        page_token: token,
                        ..Default::default()
                    },
                )
                .await
            },
        ),
        case(
            "GetRecord: a non-grantee's denial names nothing of the record",
            Refused(Code::PermissionDenied, "no grant covers it"),
            get(mc, &insurance.record_id),
        ),
        // ---- CloudStorage.DeleteRecord ----
        case(
            "DeleteRecord: another patient's record",
            Refused(Code::PermissionDenied, "does not belong to mallory"),
            status_ok(async {
                mc.cloud
                    .clone()
                    .delete_record(proto::DeleteRecordRequest {
                        record_id: medical.record_id.to_string(),
                    })
                    .await
            }),
        ),
        case(
            "DeleteRecord: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            status_ok(async {
                bc.cloud
                    .clone()
                    .delete_record(proto::DeleteRecordRequest {
                        record_id: medical.record_id.to_string(),
                    })
                    .await
            }),
        ),
        case(
            "DeleteRecord: invalid record id",
            Refused(Code::InvalidArgument, "not a valid record id"),
            status_ok(async {
                mc.cloud
                    .clone()
                    .delete_record(proto::DeleteRecordRequest {
                        record_id: "../meta".into(),
                    })
                    .await
            }),
        ),
        case(
            "DeleteRecord: unknown record",
            Refused(Code::NotFound, "not found"),
            status_ok(async {
                mc.cloud
                    .clone()
                    .delete_record(proto::DeleteRecordRequest {
                        record_id: "nosuchrecord".into(),
                    })
                    .await
            }),
        ),
        // ---- Srs.Enroll ----
        case(
            "Enroll: wrong token",
            Refused(Code::Unauthenticated, "enrollment token is not valid"),
            enroll(
                srs_url,
                ca_pem,
                enroll_request("guess", "zed", proto::Role::Patient),
            ),
        ),
        case(
            "Enroll: empty token",
            Refused(Code::Unauthenticated, "enrollment token is not valid"),
            enroll(
                srs_url,
                ca_pem,
                enroll_request("", "zed", proto::Role::Patient),
            ),
        ),
        case(
            "Enroll: taking over the victim's user id",
            Refused(Code::AlreadyExists, "alice"),
            enroll(
                srs_url,
                ca_pem,
                enroll_request(token, "alice", proto::Role::Patient),
            ),
        ),
        case(
            "Enroll: taking over the victim's id under another role",
            Refused(Code::AlreadyExists, "alice"),
            enroll(
                srs_url,
                ca_pem,
                enroll_request(token, "alice", proto::Role::Doctor),
            ),
        ),
        case(
            "Enroll: role unspecified",
            Refused(Code::InvalidArgument, "role must be set"),
            enroll(srs_url, ca_pem, {
                let mut r = enroll_request(token, "zed", proto::Role::Patient);
                r.role = 0;
                r
            }),
        ),
        case(
            "Enroll: unknown role 99",
            Refused(Code::InvalidArgument, "role must be set"),
            enroll(srs_url, ca_pem, {
                let mut r = enroll_request(token, "zed", proto::Role::Patient);
                r.role = 99;
                r
            }),
        ),
        case(
            "Enroll: garbage PRE public key",
            Refused(Code::InvalidArgument, "pre_public_key is not a valid"),
            enroll(srs_url, ca_pem, {
                let mut r = enroll_request(token, "zed", proto::Role::Patient);
                r.pre_public_key = vec![5; 33];
                r
            }),
        ),
        case(
            "Enroll: garbage verifying key",
            Refused(Code::InvalidArgument, "verifying_key is not a valid"),
            enroll(srs_url, ca_pem, {
                let mut r = enroll_request(token, "zed", proto::Role::Patient);
                r.verifying_key = vec![9; 5];
                r
            }),
        ),
        case(
            "Enroll: garbage CSR",
            Refused(
                Code::InvalidArgument,
                "certificate signing request rejected",
            ),
            enroll(srs_url, ca_pem, {
                let mut r = enroll_request(token, "zed", proto::Role::Patient);
                r.csr_der = vec![0x30, 0x82, 0xff, 0xff, 1, 2, 3];
                r
            }),
        ),
        case(
            "Enroll: 20 kB CSR",
            Refused(Code::InvalidArgument, "csr_der must be 1 to"),
            enroll(srs_url, ca_pem, {
                let mut r = enroll_request(token, "zed", proto::Role::Patient);
                r.csr_der = vec![0x30; 20 << 10];
                r
            }),
        ),
        case(
            "Enroll: 10 kB user id",
            Refused(Code::InvalidArgument, "user id"),
            enroll(
                srs_url,
                ca_pem,
                enroll_request(token, &long_id, proto::Role::Patient),
            ),
        ),
        // ---- Srs.GetUser ----
        case(
            "GetUser: invalid id",
            Refused(Code::InvalidArgument, "user id"),
            status_ok(async {
                mc.srs
                    .clone()
                    .get_user(proto::GetUserRequest {
                        user_id: "robert'; DROP TABLE users;--".into(),
                    })
                    .await
            }),
        ),
        case(
            "GetUser: unknown user",
            Refused(Code::NotFound, "no enrolled user"),
            status_ok(async {
                mc.srs
                    .clone()
                    .get_user(proto::GetUserRequest {
                        user_id: "nobody".into(),
                    })
                    .await
            }),
        ),
        // ---- Srs.PutKfrags ----
        case(
            "PutKfrags: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            status_ok(async {
                bc.srs
                    .clone()
                    .put_kfrags(kfrags_req(
                        "carol",
                        alice_med_pk_bytes.clone(),
                        kfrag_bytes.clone(),
                    ))
                    .await
            }),
        ),
        case(
            "PutKfrags: the victim's kfrags replayed by another patient",
            Refused(Code::InvalidArgument, "does not verify"),
            status_ok(async {
                mc.srs
                    .clone()
                    .put_kfrags(kfrags_req(
                        "bob",
                        alice_med_pk_bytes.clone(),
                        kfrag_bytes.clone(),
                    ))
                    .await
            }),
        ),
        case(
            "PutKfrags: kfrag for bob filed for carol",
            Refused(Code::InvalidArgument, "does not verify"),
            status_ok(async {
                ac.srs
                    .clone()
                    .put_kfrags(kfrags_req(
                        "carol",
                        alice_med_pk_bytes.clone(),
                        kfrag_bytes.clone(),
                    ))
                    .await
            }),
        ),
        case(
            "PutKfrags: garbage kfrag",
            Refused(Code::InvalidArgument, "kfrag 0 is malformed"),
            status_ok(async {
                mc.srs
                    .clone()
                    .put_kfrags(kfrags_req(
                        "bob",
                        alice_med_pk_bytes.clone(),
                        vec![vec![0xAA; 200]],
                    ))
                    .await
            }),
        ),
        case(
            "PutKfrags: no kfrags",
            Refused(Code::InvalidArgument, "send 1 to 16 kfrags, not 0"),
            status_ok(async {
                mc.srs
                    .clone()
                    .put_kfrags(kfrags_req("bob", alice_med_pk_bytes.clone(), vec![]))
                    .await
            }),
        ),
        case(
            "PutKfrags: 17 kfrags",
            Refused(Code::InvalidArgument, "send 1 to 16 kfrags, not 17"),
            status_ok(async {
                mc.srs
                    .clone()
                    .put_kfrags(kfrags_req(
                        "bob",
                        alice_med_pk_bytes.clone(),
                        vec![kfrag_bytes[0].clone(); 17],
                    ))
                    .await
            }),
        ),
        case(
            "PutKfrags: garbage delegating key",
            Refused(
                Code::InvalidArgument,
                "delegating_public_key is not a valid",
            ),
            status_ok(async {
                mc.srs
                    .clone()
                    .put_kfrags(kfrags_req("bob", vec![4; 65], kfrag_bytes.clone()))
                    .await
            }),
        ),
        case(
            "PutKfrags: to oneself",
            Refused(Code::InvalidArgument, "needs no kfrags for itself"),
            status_ok(async {
                mc.srs
                    .clone()
                    .put_kfrags(kfrags_req(
                        "mallory",
                        alice_med_pk_bytes.clone(),
                        kfrag_bytes.clone(),
                    ))
                    .await
            }),
        ),
        case(
            "PutKfrags: to an unknown grantee",
            Refused(Code::NotFound, "no enrolled user ghost"),
            status_ok(async {
                mc.srs
                    .clone()
                    .put_kfrags(kfrags_req(
                        "ghost",
                        alice_med_pk_bytes.clone(),
                        kfrag_bytes.clone(),
                    ))
                    .await
            }),
        ),
        // ---- Srs.DeleteKfrags ----
        case(
            "DeleteKfrags: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            status_ok(async {
                bc.srs
                    .clone()
                    .delete_kfrags(proto::DeleteKfragsRequest {
                        partition: "medical".into(),
                        grantee_id: "bob".into(),
                        epoch: None,
                    })
                    .await
            }),
        ),
        case(
            "DeleteKfrags: invalid partition",
            Refused(Code::InvalidArgument, "partition"),
            status_ok(async {
                mc.srs
                    .clone()
                    .delete_kfrags(proto::DeleteKfragsRequest {
                        partition: "".into(),
                        grantee_id: "bob".into(),
                        epoch: None,
                    })
                    .await
            }),
        ),
        case(
            "DeleteKfrags: another patient only reaches its own (none)",
            Accepted("removed: 0"),
            status_ok(async {
                mc.srs
                    .clone()
                    .delete_kfrags(proto::DeleteKfragsRequest {
                        partition: "medical".into(),
                        grantee_id: "bob".into(),
                        epoch: None,
                    })
                    .await
            }),
        ),
        // ---- Srs.ReEncrypt ----
        case(
            "ReEncrypt: garbage capsule",
            Refused(Code::InvalidArgument, "capsule 0 is malformed"),
            reencrypt(bc, reenc("alice", "medical", 0, vec![vec![0x55; 98]])),
        ),
        case(
            "ReEncrypt: truncated capsule",
            Refused(Code::InvalidArgument, "capsule 0 is malformed"),
            reencrypt(
                bc,
                reenc("alice", "medical", 0, vec![med_capsule[..40].to_vec()]),
            ),
        ),
        case(
            "ReEncrypt: no capsules",
            Refused(Code::InvalidArgument, "send 1 to 64 capsules, not 0"),
            reencrypt(bc, reenc("alice", "medical", 0, vec![])),
        ),
        case(
            "ReEncrypt: 65 capsules",
            Refused(Code::InvalidArgument, "send 1 to 64 capsules, not 65"),
            reencrypt(
                bc,
                reenc("alice", "medical", 0, vec![med_capsule.clone(); 65]),
            ),
        ),
        case(
            "ReEncrypt: grantee of nothing",
            Refused(
                Code::PermissionDenied,
                "may not have alice's medical partition re-encrypted",
            ),
            reencrypt(cc, reenc("alice", "medical", 0, vec![med_capsule.clone()])),
        ),
        case(
            "ReEncrypt: grantee of another partition",
            Refused(
                Code::PermissionDenied,
                "may not have alice's insurance partition re-encrypted",
            ),
            reencrypt(
                bc,
                reenc("alice", "insurance", 0, vec![ins_capsule.clone()]),
            ),
        ),
        case(
            "ReEncrypt: an epoch no kfrag exists for",
            Refused(Code::PermissionDenied, "holds no re-encryption key"),
            reencrypt(bc, reenc("alice", "medical", 7, vec![med_capsule.clone()])),
        ),
        case(
            "ReEncrypt: expired grant",
            Refused(Code::PermissionDenied, "expired"),
            reencrypt(
                dc,
                reenc("alice", "personal", 0, vec![capsule_of(&personal)]),
            ),
        ),
        case(
            "ReEncrypt: another patient",
            Refused(
                Code::PermissionDenied,
                "may not have alice's medical partition re-encrypted",
            ),
            reencrypt(mc, reenc("alice", "medical", 0, vec![med_capsule.clone()])),
        ),
        case(
            "ReEncrypt: operator",
            Refused(Code::PermissionDenied, "may not call"),
            reencrypt(op, reenc("alice", "medical", 0, vec![med_capsule.clone()])),
        ),
        case(
            "ReEncrypt: invalid owner id",
            Refused(Code::InvalidArgument, "user id"),
            reencrypt(bc, reenc("ALICE!", "medical", 0, vec![med_capsule.clone()])),
        ),
        // ---- deduplication (CloudStorage.QueryBlob, Srs.EvaluateContentKey) ----
        case(
            "QueryBlob: blob id of 5 bytes",
            Refused(Code::InvalidArgument, "blob_id must be 32 bytes, not 5"),
            status_ok(async {
                mc.cloud
                    .clone()
                    .query_blob(proto::QueryBlobRequest {
                        blob_id: vec![1; 5],
                    })
                    .await
            }),
        ),
        case(
            "QueryBlob: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            status_ok(async {
                bc.cloud
                    .clone()
                    .query_blob(proto::QueryBlobRequest {
                        blob_id: blob_id.clone(),
                    })
                    .await
            }),
        ),
        case(
            "EvaluateContentKey: not a curve point",
            Refused(
                Code::InvalidArgument,
                "blinded_element is not a valid P-256 point",
            ),
            status_ok(async {
                mc.srs
                    .clone()
                    .evaluate_content_key(proto::EvaluateContentKeyRequest {
                        blinded_element: vec![7; 33],
                    })
                    .await
            }),
        ),
        case(
            "EvaluateContentKey: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            status_ok(async {
                bc.srs
                    .clone()
                    .evaluate_content_key(proto::EvaluateContentKeyRequest::default())
                    .await
            }),
        ),
        case(
            "PutRecord: ownership proof without blob id",
            Refused(Code::InvalidArgument, "belong to deduplicated records"),
            put(
                mc,
                vec![header_msg(
                    "d0",
                    "medical",
                    0,
                    header_bytes("mallory", "d0", "medical", 0),
                    10,
                )]
                .into_iter()
                .map(|mut m| {
                    if let Some(put_record_request::Part::Header(h)) = &mut m.part {
                        h.ownership_proof = vec![1; 8];
                    }
                    m
                })
                .collect(),
            ),
        ),
        case(
            "PutRecord: replayed proof without asking for a challenge",
            Refused(Code::FailedPrecondition, "no open ownership challenge"),
            put(
                mc,
                vec![dedup_header(
                    "mallory",
                    "d1",
                    blob_id.clone(),
                    captured_proof.clone(),
                    scan.ciphertext_size,
                )],
            ),
        ),
        case(
            "PutRecord: replayed proof against a fresh challenge",
            Refused(Code::PermissionDenied, "proof of ownership failed"),
            async {
                mc.cloud
                    .clone()
                    .query_blob(proto::QueryBlobRequest {
                        blob_id: blob_id.clone(),
                    })
                    .await?;
                put(
                    mc,
                    vec![dedup_header(
                        "mallory",
                        "d2",
                        blob_id.clone(),
                        captured_proof.clone(),
                        scan.ciphertext_size,
                    )],
                )
                .await
            },
        ),
        case(
            "PutRecord: the owner replaying her used proof",
            Refused(Code::FailedPrecondition, "challenges are single-use"),
            put(
                ac,
                vec![dedup_header(
                    "alice",
                    "d3",
                    blob_id.clone(),
                    captured_proof.clone(),
                    scan.ciphertext_size,
                )],
            ),
        ),
        case(
            "PutRecord: garbage proof",
            Refused(Code::InvalidArgument, "ownership_proof does not parse"),
            async {
                mc.cloud
                    .clone()
                    .query_blob(proto::QueryBlobRequest {
                        blob_id: blob_id.clone(),
                    })
                    .await?;
                put(
                    mc,
                    vec![dedup_header(
                        "mallory",
                        "d4",
                        blob_id.clone(),
                        vec![0xEE; 40],
                        scan.ciphertext_size,
                    )],
                )
                .await
            },
        ),
        // ---- AccessPolicy ----
        case(
            "Grant: practitioner granting itself more",
            Refused(Code::PermissionDenied, "may not call"),
            status_ok(async {
                bc.policy
                    .clone()
                    .grant(grant("alice", "insurance", "bob", proto::Role::Doctor))
                    .await
            }),
        ),
        case(
            "Grant: another patient granting the victim's partition",
            Refused(
                Code::PermissionDenied,
                "may only grant access to its own records",
            ),
            status_ok(async {
                mc.policy
                    .clone()
                    .grant(grant("alice", "medical", "eve", proto::Role::Nurse))
                    .await
            }),
        ),
        case(
            "Grant: no grant in the request",
            Refused(Code::InvalidArgument, "grant is required"),
            status_ok(async {
                mc.policy
                    .clone()
                    .grant(proto::GrantRequest { grant: None })
                    .await
            }),
        ),
        case(
            "Grant: unknown grantee role",
            Refused(Code::InvalidArgument, "grantee_role must be a known role"),
            status_ok(async {
                mc.policy
                    .clone()
                    .grant({
                        let mut g = grant("", "medical", "eve", proto::Role::Nurse);
                        g.grant.as_mut().unwrap().grantee_role = 42;
                        g
                    })
                    .await
            }),
        ),
        case(
            "Grant: already expired",
            Refused(Code::InvalidArgument, "already be expired"),
            status_ok(async {
                mc.policy
                    .clone()
                    .grant({
                        let mut g = grant("", "medical", "eve", proto::Role::Nurse);
                        g.grant.as_mut().unwrap().expires_at = Some(1);
                        g.grant.as_mut().unwrap().not_before = 0;
                        g
                    })
                    .await
            }),
        ),
        case(
            "Grant: empty epoch range",
            Refused(Code::InvalidArgument, "is empty"),
            status_ok(async {
                mc.policy
                    .clone()
                    .grant({
                        let mut g = grant("", "medical", "eve", proto::Role::Nurse);
                        g.grant.as_mut().unwrap().epoch_min = 5;
                        g.grant.as_mut().unwrap().epoch_max = Some(2);
                        g
                    })
                    .await
            }),
        ),
        case(
            "Revoke: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            status_ok(async {
                bc.policy
                    .clone()
                    .revoke(proto::RevokeRequest {
                        partition: "medical".into(),
                        grantee_id: "bob".into(),
                    })
                    .await
            }),
        ),
        case(
            "Revoke: another patient revoking the victim's grant",
            Refused(Code::NotFound, ""),
            status_ok(async {
                mc.policy
                    .clone()
                    .revoke(proto::RevokeRequest {
                        partition: "medical".into(),
                        grantee_id: "bob".into(),
                    })
                    .await
            }),
        ),
        case(
            "Check: a patient posing as a service",
            Refused(Code::PermissionDenied, "may not call"),
            status_ok(async {
                mc.policy
                    .clone()
                    .check(proto::CheckRequest {
                        owner_id: "alice".into(),
                        partition: "medical".into(),
                        grantee_id: "mallory".into(),
                        grantee_role: proto::Role::Patient as i32,
                        action: proto::CheckAction::Read as i32,
                        ..Default::default()
                    })
                    .await
            }),
        ),
        case(
            "RecordEvent: a practitioner forging audit entries",
            Refused(Code::PermissionDenied, "may not call"),
            status_ok(async {
                ec.policy
                    .clone()
                    .record_event(proto::RecordEventRequest {
                        action: "grant".into(),
                        owner_id: "alice".into(),
                        ..Default::default()
                    })
                    .await
            }),
        ),
        case(
            "ListAudit: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            status_ok(async {
                ec.policy
                    .clone()
                    .list_audit(proto::ListAuditRequest::default())
                    .await
            }),
        ),
        case(
            "VerifyAudit: expected hash of the wrong length",
            Refused(Code::InvalidArgument, "expected_hash (32 bytes)"),
            status_ok(async {
                mc.policy
                    .clone()
                    .verify_audit(proto::VerifyAuditRequest {
                        expected_seq: 1,
                        expected_hash: vec![0; 5],
                    })
                    .await
            }),
        ),
    ];

    assert!(cases.len() >= 50, "only {} cases", cases.len());
    let mut failures = Vec::new();
    let n = cases.len();
    for Case { name, expect, call } in cases {
        let got = call.await;
        let ok = match (&expect, &got) {
            (Refused(code, text), Err(st)) => st.code() == *code && st.message().contains(text),
            (Accepted(text), Ok(summary)) => summary.contains(text),
            _ => false,
        };
        if !ok {
            failures.push(format!("{name}: got {got:?}"));
        }
        if let Err(e) = s.mesh.wait_ready(Duration::from_secs(5)).await {
            panic!("after {name:?} the mesh is not healthy: {e:?}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing changed for the victim.
    assert_eq!(snapshot().await, before);
    let audit = alice.audit().await.unwrap();
    let added: Vec<_> = audit[audit_before..]
        .iter()
        .filter(|e| is_mutation(&e.action))
        .map(|e| format!("{} {} {}", e.action, e.actor, e.detail))
        .collect();
    assert!(added.is_empty(), "state-changing audit entries: {added:?}");
    assert!(alice.verify_audit().await.unwrap().ok);
    // No partial upload left an object behind.
    assert_eq!(objects(), objects_before, "objects in {objects_dir:?}");
    // Bob's kfrags and grant still work.
    assert_eq!(
        download(&bob, &medical.record_id).await.unwrap(),
        b"blood type 0+"
    );
    s.shutdown().await;
}

/// A mesh whose limits are tight enough to hit in a test.
async fn limited_mesh(dir: &std::path::Path, limits: Limits) -> DevMesh {
    let mut opts = DevOptions::new(dir.join("mesh")).ephemeral();
    opts.limits = limits;
    let mesh = DevMesh::start(opts).await.unwrap();
    mesh.wait_ready(common::PATIENCE).await.unwrap();
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_identity_rate_and_concurrency_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = limited_mesh(
        dir.path(),
        Limits {
            rate: 0.5,
            burst: 12,
            max_streams_per_identity: 2,
            max_concurrent_streams: 64,
        },
    )
    .await;
    let token = mesh.mesh.enrollment_token.clone().unwrap();
    let homes = dir.path().join("users");
    client::enroll(
        &mesh.mesh,
        &homes.join("alice"),
        "alice",
        Role::Patient,
        &token,
    )
    .await
    .unwrap();
    client::enroll(&mesh.mesh, &homes.join("bob"), "bob", Role::Patient, &token)
        .await
        .unwrap();
    let alice = client::Patient::open(&mesh.mesh, &homes.join("alice")).unwrap();
    let bob = client::Patient::open(&mesh.mesh, &homes.join("bob")).unwrap();

    // Concurrency: a 12 MiB record, downloaded by streams nobody reads, so
    // flow control keeps them open.
    let big = vec![7u8; 12 << 20];
    let rec = upload(&alice, "medical", &big).await;
    let open = |c: &MeshClients| {
        let mut cloud = c.cloud.clone();
        let id = rec.record_id.clone();
        async move {
            cloud
                .get_record(proto::GetRecordRequest {
                    record_id: id.to_string(),
                })
                .await
        }
    };
    let ac = &alice.session.clients;
    let s1 = open(ac).await.expect("first stream");
    let s2 = open(ac).await.expect("second stream");
    let err = open(ac)
        .await
        .expect_err("a third stream is over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("limit 2 per identity"),
        "{}",
        err.message()
    );
    // Limits are per identity: bob is not affected.
    list(&bob.session.clients, proto::ListRecordsRequest::default())
        .await
        .expect("another identity is not limited");
    // Finishing or dropping a stream frees its slot.
    drop(s1);
    let mut s2 = s2.into_inner();
    while let Some(m) = s2.next().await {
        m.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s3 = open(ac).await.expect("a slot is free again");
    drop(s3);

    // Rate: the burst is spent (12 tokens, 0.5/s refill), the next calls are refused.
    let mut refused = None;
    for _ in 0..20 {
        if let Err(e) = list(ac, proto::ListRecordsRequest::default()).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("the rate limit applies");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("rate limit of 0.5 calls/s"),
        "{}",
        err.message()
    );
    // Cheap calls are not counted, and the mesh's own services are exempt:
    // alice can still look herself up, and bob's reads still get their checks.
    alice.grants().await.expect("ListGrants is not limited");
    mesh.wait_ready(Duration::from_secs(5)).await.unwrap();
    mesh.shutdown().await.unwrap();
}
