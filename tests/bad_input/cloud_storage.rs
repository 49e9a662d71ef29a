//! CloudStorage: uploads that lie about their shape, size, owner or
//! blob, reads and listings across owners and grants, deletions of what
//! is not the caller's.

use std::time::Duration;

use futures::StreamExt;
use sesphr::proto::{self, put_record_request};
use sesphr_client::raw::MeshClients;
use sesphr_crypto::{self as crypto, RecordHeader};
use tonic::{Code, Status};

use super::{Accepted, Case, Outcome, Refused, World, answered, case};
use crate::common::dedup_header;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_without_side_effects() {
    super::run(cases).await;
}

/// An encoded record header for `owner` (any key: the server cannot tell).
fn header_bytes(owner: &str, record_id: &str, partition: &str, epoch: u32) -> Vec<u8> {
    let mut rng = rand::rng();
    let pk = crypto::SecretKey::generate(&mut rng).public_key();
    let (capsule, _) = crypto::encapsulate(&mut rng, &pk);
    let signer = crypto::SigningKey::generate(&mut rng);
    RecordHeader::new(
        &mut rng,
        record_id.as_bytes(),
        owner.as_bytes(),
        partition,
        epoch,
        capsule,
        &signer,
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

/// A header message whose record header is `owner`'s for `named` (record
/// id, partition, epoch): the upload's own fields may say otherwise.
fn header_naming(
    record_id: &str,
    partition: &str,
    epoch: u32,
    owner: &str,
    named: (&str, &str, u32),
    size: u64,
) -> proto::PutRecordRequest {
    let (named_id, named_partition, named_epoch) = named;
    header_msg(
        record_id,
        partition,
        epoch,
        header_bytes(owner, named_id, named_partition, named_epoch),
        size,
    )
}

fn chunk(bytes: Vec<u8>) -> proto::PutRecordRequest {
    proto::PutRecordRequest {
        part: Some(put_record_request::Part::Chunk(bytes.into())),
    }
}

/// A well-formed first message of `owner`'s upload of `size` bytes.
fn good_header(owner: &str, record_id: &str, size: u64) -> proto::PutRecordRequest {
    header_naming(
        record_id,
        "medical",
        0,
        owner,
        (record_id, "medical", 0),
        size,
    )
}

/// A well-formed one-byte upload by `owner`.
fn one_byte(owner: &str, record_id: &str) -> Vec<proto::PutRecordRequest> {
    vec![good_header(owner, record_id, 1), chunk(vec![1])]
}

pub(super) async fn put(c: &MeshClients, msgs: Vec<proto::PutRecordRequest>) -> Outcome {
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
async fn get(c: &MeshClients, record_id: &str) -> Outcome {
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

pub(super) async fn list(c: &MeshClients, req: proto::ListRecordsRequest) -> Outcome {
    let r = c.cloud.clone().list_records(req).await?.into_inner();
    Ok(format!("listed {} records", r.records.len()))
}

/// Lists `owner`'s records with `edit` applied to the request.
async fn list_of(
    c: &MeshClients,
    owner: &str,
    edit: impl FnOnce(&mut proto::ListRecordsRequest),
) -> Outcome {
    let mut req = proto::ListRecordsRequest {
        owner_id: owner.to_owned(),
        ..Default::default()
    };
    edit(&mut req);
    list(c, req).await
}

async fn delete(c: &MeshClients, record_id: &str) -> Outcome {
    answered(c.cloud.clone().delete_record(proto::DeleteRecordRequest {
        record_id: record_id.to_owned(),
    }))
    .await
}

async fn query_blob(c: &MeshClients, blob_id: &[u8]) -> Outcome {
    answered(c.cloud.clone().query_blob(proto::QueryBlobRequest {
        blob_id: blob_id.to_vec(),
    }))
    .await
}

/// A deduplicated upload by `owner` of the world's blob with `proof`,
/// after asking for a challenge if `challenged`.
async fn link(
    w: &World,
    c: &MeshClients,
    owner: &str,
    record_id: &str,
    proof: Vec<u8>,
    challenged: bool,
) -> Outcome {
    if challenged {
        query_blob(c, &w.blob_id).await?;
    }
    put(
        c,
        vec![dedup_header(
            owner,
            record_id,
            w.blob_id.clone(),
            proof,
            w.scan.ciphertext_size,
        )],
    )
    .await
}

fn cases(w: &World) -> Vec<Case<'_>> {
    let ac = &w.alice.clients;
    let bc = &w.bob.clients;
    let cc = &w.carol.clients;
    let dc = &w.dave.clients;
    let mc = &w.mallory.clients;
    let op = &w.operator;
    let long_id = &w.long_id;
    let medical = &w.medical.record_id;
    vec![
        // ---- PutRecord ----
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
            put(mc, vec![header_msg(long_id, "medical", 0, vec![1], 1)]),
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
                vec![header_naming(
                    "m3",
                    "Medical/../x",
                    0,
                    "mallory",
                    ("m3", "medical", 0),
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
                vec![header_naming(
                    "m7",
                    "medical",
                    0,
                    "alice",
                    ("m7", "medical", 0),
                    1,
                )],
            ),
        ),
        case(
            "PutRecord: header naming another record id",
            Refused(Code::InvalidArgument, "names record"),
            put(
                mc,
                vec![header_naming(
                    "m8",
                    "medical",
                    0,
                    "mallory",
                    ("other", "medical", 0),
                    1,
                )],
            ),
        ),
        case(
            "PutRecord: header naming another epoch",
            Refused(Code::InvalidArgument, "names epoch"),
            put(
                mc,
                vec![header_naming(
                    "m9",
                    "medical",
                    3,
                    "mallory",
                    ("m9", "medical", 0),
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
                vec![good_header("mallory", medical, 4), chunk(vec![1; 4])],
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
            put(bc, one_byte("bob", "b1")),
        ),
        case(
            "PutRecord: operator",
            Refused(Code::PermissionDenied, "may not call"),
            put(op, one_byte("operator", "o1")),
        ),
        case(
            "PutRecord: certificate of another trust domain",
            Refused(Code::Unauthenticated, "trust domain"),
            put(&w.foreign_td, one_byte("alice", "f1")),
        ),
        // ---- GetRecord ----
        case(
            "GetRecord: empty record id",
            Refused(Code::InvalidArgument, "not a valid record id"),
            get(bc, ""),
        ),
        case(
            "GetRecord: 10 kB record id",
            Refused(Code::InvalidArgument, "not a valid record id"),
            get(bc, long_id),
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
            get(mc, medical),
        ),
        case(
            "GetRecord: grantee of nothing",
            Refused(Code::PermissionDenied, "may not read record"),
            get(cc, medical),
        ),
        case(
            "GetRecord: grantee of another partition",
            Refused(Code::PermissionDenied, "may not read record"),
            get(bc, &w.insurance.record_id),
        ),
        case(
            "GetRecord: expired grant",
            Refused(Code::PermissionDenied, "expired"),
            get(dc, &w.personal.record_id),
        ),
        case(
            "GetRecord: operator reading records",
            Refused(Code::PermissionDenied, "may not call"),
            get(op, medical),
        ),
        // ---- ListRecords ----
        case(
            "ListRecords: page size 100000",
            Refused(Code::InvalidArgument, "page_size 100000 exceeds"),
            list_of(bc, "alice", |r| r.page_size = 100_000),
        ),
        case(
            "ListRecords: forged page token",
            Refused(Code::InvalidArgument, "page_token"),
            list_of(mc, "", |r| r.page_token = "../../x".into()),
        ),
        case(
            "ListRecords: invalid owner id",
            Refused(Code::InvalidArgument, "user id"),
            list_of(bc, long_id, |_| {}),
        ),
        case(
            "ListRecords: invalid partition",
            Refused(Code::InvalidArgument, "partition"),
            list_of(bc, "alice", |r| r.partition = "MEDICAL!".into()),
        ),
        case(
            "ListRecords: another patient's records show nothing",
            Accepted("listed 0 records"),
            list_of(mc, "alice", |_| {}),
        ),
        case(
            "ListRecords: grantee of nothing sees nothing",
            Accepted("listed 0 records"),
            list_of(cc, "alice", |_| {}),
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
                list_of(mc, "alice", |r| {
                    r.page_size = 1;
                    r.page_token = token;
                })
                .await
            },
        ),
        case(
            "GetRecord: a non-grantee's denial names nothing of the record",
            Refused(Code::PermissionDenied, "no grant covers it"),
            get(mc, &w.insurance.record_id),
        ),
        // ---- DeleteRecord ----
        case(
            "DeleteRecord: another patient's record",
            Refused(Code::PermissionDenied, "does not belong to mallory"),
            delete(mc, medical),
        ),
        case(
            "DeleteRecord: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            delete(bc, medical),
        ),
        case(
            "DeleteRecord: invalid record id",
            Refused(Code::InvalidArgument, "not a valid record id"),
            delete(mc, "../meta"),
        ),
        case(
            "DeleteRecord: unknown record",
            Refused(Code::NotFound, "not found"),
            delete(mc, "nosuchrecord"),
        ),
        // ---- deduplication: QueryBlob, proofs of ownership ----
        case(
            "QueryBlob: blob id of 5 bytes",
            Refused(Code::InvalidArgument, "blob_id must be 32 bytes, not 5"),
            query_blob(mc, &[1; 5]),
        ),
        case(
            "QueryBlob: practitioner",
            Refused(Code::PermissionDenied, "may not call"),
            query_blob(bc, &w.blob_id),
        ),
        case(
            "PutRecord: ownership proof without blob id",
            Refused(Code::InvalidArgument, "belong to deduplicated records"),
            put(mc, {
                let mut m = good_header("mallory", "d0", 10);
                if let Some(put_record_request::Part::Header(h)) = &mut m.part {
                    h.ownership_proof = vec![1; 8];
                }
                vec![m]
            }),
        ),
        case(
            "PutRecord: replayed proof without asking for a challenge",
            Refused(Code::FailedPrecondition, "no open ownership challenge"),
            link(w, mc, "mallory", "d1", w.captured_proof.clone(), false),
        ),
        case(
            "PutRecord: replayed proof against a fresh challenge",
            Refused(Code::PermissionDenied, "proof of ownership failed"),
            link(w, mc, "mallory", "d2", w.captured_proof.clone(), true),
        ),
        case(
            "PutRecord: the owner replaying her used proof",
            Refused(Code::FailedPrecondition, "challenges are single-use"),
            link(w, ac, "alice", "d3", w.captured_proof.clone(), false),
        ),
        case(
            "PutRecord: garbage proof",
            Refused(Code::InvalidArgument, "ownership_proof does not parse"),
            link(w, mc, "mallory", "d4", vec![0xEE; 40], true),
        ),
    ]
}
