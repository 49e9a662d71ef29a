//! Deduplicated storage against a real mesh: one blob for many owners,
//! proofs of ownership that a partial holder cannot pass, single-use
//! challenges, and blobs freed with their last record.

use crate::common;

use common::{Sandbox, download, query_blob};
use sesphr::proto::{self, put_record_request};
use sesphr_client::{self as client, Patient, Stored};
use sesphr_crypto::record::DemKeySource;
use sesphr_identity::Role;
use tonic::Code;

/// Incompressible, reproducible content.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn upload(p: &Patient, data: &[u8]) -> (client::Record, Stored) {
    p.upload_dedup(
        "imaging",
        std::io::Cursor::new(data.to_vec()),
        data.len() as u64,
        client::no_progress(),
    )
    .await
    .expect("dedup upload succeeds")
}

fn blob_files(s: &Sandbox) -> usize {
    let dir = s.dir.path().join("mesh/cloud-storage/blobs.v2");
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_owners_one_blob_everyone_reads() {
    let s = Sandbox::start().await;
    let data = content(3 << 20, 1);
    let mut records = Vec::new();
    for i in 0..10 {
        let p = s.patient(&format!("owner{i}")).await;
        let (rec, stored) = upload(&p, &data).await;
        assert_eq!(
            stored,
            if i == 0 {
                Stored::New
            } else {
                Stored::Deduplicated
            }
        );
        assert_eq!(rec.blob_id.len(), 32);
        records.push((p, rec));
    }
    assert_eq!(blob_files(&s), 1, "ten uploads, one stored blob");
    let blob_ids: std::collections::HashSet<_> =
        records.iter().map(|(_, r)| r.blob_id.clone()).collect();
    assert_eq!(blob_ids.len(), 1);
    for (p, rec) in &records {
        assert_eq!(download(p, &rec.record_id).await.unwrap(), data);
    }
    // Sharing works as for any record: a grantee of owner3 reads it, and
    // nothing of owner4's.
    let bob = s.practitioner("bob", Role::Doctor).await;
    records[3]
        .0
        .grant("imaging", "bob", Default::default())
        .await
        .unwrap();
    assert_eq!(download(&bob, &records[3].1.record_id).await.unwrap(), data);
    let err = download(&bob, &records[4].1.record_id).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_delete_frees_the_blob() {
    let s = Sandbox::start().await;
    let data = content(100_000, 2);
    let mut recs = Vec::new();
    for who in ["a", "b", "c"] {
        let p = s.patient(who).await;
        let (rec, _) = upload(&p, &data).await;
        recs.push((p, rec));
    }
    recs[0].0.delete(&recs[0].1.record_id).await.unwrap();
    recs[1].0.delete(&recs[1].1.record_id).await.unwrap();
    assert_eq!(blob_files(&s), 1);
    assert_eq!(
        download(&recs[2].0, &recs[2].1.record_id).await.unwrap(),
        data
    );
    recs[2].0.delete(&recs[2].1.record_id).await.unwrap();
    assert_eq!(blob_files(&s), 0);
    // Stored anew afterwards.
    let (_, stored) = upload(&recs[0].0, &data).await;
    assert_eq!(stored, Stored::New);
    s.shutdown().await;
}

/// A record header and wrapped key for linking `blob_id` as `owner`, as an
/// honest client would make them (the wrapped key is not checked by the
/// server, only by readers).
fn link_request(
    owner: &str,
    record_id: &str,
    blob_id: &[u8],
    size: u64,
    proof: Vec<u8>,
) -> proto::PutRecordRequest {
    let mut rng = rand::rng();
    let m = sesphr_crypto::MasterSecret::generate(&mut rng);
    let (_, pk) = m.partition_keys("imaging", 0).unwrap();
    let (capsule, _) = sesphr_crypto::encapsulate(&mut rng, &pk);
    let header = sesphr_crypto::HeaderDraft::new(
        &mut rng,
        record_id.as_bytes(),
        owner.as_bytes(),
        "imaging",
        0,
        capsule,
    )
    .unwrap()
    .with_key_source(DemKeySource::External)
    .sign(&m.signing_key(), b"");
    proto::PutRecordRequest {
        part: Some(put_record_request::Part::Header(proto::RecordUpload {
            record_id: record_id.into(),
            partition: "imaging".into(),
            epoch: 0,
            record_header: header.to_bytes(),
            ciphertext_size: size,
            blob_id: blob_id.to_vec(),
            wrapped_content_key: vec![0; 60],
            ownership_proof: proof,
        })),
    }
}

async fn put(
    p: &Patient,
    msgs: Vec<proto::PutRecordRequest>,
) -> Result<proto::PutRecordResponse, tonic::Status> {
    p.clients
        .cloud
        .clone()
        .put_record(futures::stream::iter(msgs))
        .await
        .map(|r| r.into_inner())
}

/// The blob the mesh stores for `data` (computed as a client would, with
/// the SRS's OPRF).
async fn blob_of(p: &Patient, data: &[u8]) -> Vec<u8> {
    sesphr_dedup::seal_blob(&common::content_key(&p.clients, data).await, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_proofs_cannot_be_faked_replayed_or_skipped() {
    let s = Sandbox::start().await;
    let alice = s.patient("alice").await;
    let mallory = s.patient("mallory").await;
    let data = content(2 << 20, 3);
    let (rec, _) = upload(&alice, &data).await;
    let blob = blob_of(&alice, &data).await;
    let blob_id = rec.blob_id.clone();
    {
        use sha2::Digest;
        assert_eq!(sha2::Sha256::digest(&blob).as_slice(), blob_id.as_slice());
    }

    // Mallory knows the blob id and holds 70% of the blob.
    let mut partial = blob.clone();
    for (i, leaf) in partial.chunks_mut(4096).enumerate() {
        if i % 10 < 3 {
            leaf.fill(0);
        }
    }
    let q = query_blob(&mallory.clients, &blob_id).await;
    assert!(q.exists);
    let challenge = sesphr_dedup::Challenge::from_bytes(&q.challenge).unwrap();
    let proof = sesphr_dedup::prove(&challenge, &partial).unwrap();
    let err = put(
        &mallory,
        vec![link_request(
            "mallory",
            "m1",
            &blob_id,
            q.blob_size,
            proof.to_bytes(),
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("proof of ownership failed"),
        "{}",
        err.message()
    );

    // A tampered Merkle path fails too.
    let q = query_blob(&mallory.clients, &blob_id).await;
    let challenge = sesphr_dedup::Challenge::from_bytes(&q.challenge).unwrap();
    let mut proof = sesphr_dedup::prove(&challenge, &blob).unwrap();
    proof.leaves[0].path[0][0] ^= 1;
    let err = put(
        &mallory,
        vec![link_request(
            "mallory",
            "m2",
            &blob_id,
            q.blob_size,
            proof.to_bytes(),
        )],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The full holder passes once; the same answer cannot be replayed.
    let q = query_blob(&mallory.clients, &blob_id).await;
    let challenge = sesphr_dedup::Challenge::from_bytes(&q.challenge).unwrap();
    let proof = sesphr_dedup::prove(&challenge, &blob).unwrap().to_bytes();
    put(
        &mallory,
        vec![link_request(
            "mallory",
            "m3",
            &blob_id,
            q.blob_size,
            proof.clone(),
        )],
    )
    .await
    .unwrap();
    let err = put(
        &mallory,
        vec![link_request("mallory", "m4", &blob_id, q.blob_size, proof)],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("QueryBlob"), "{}", err.message());

    // An answer must not carry chunks; a blob id must be 32 bytes.
    let q = query_blob(&mallory.clients, &blob_id).await;
    let challenge = sesphr_dedup::Challenge::from_bytes(&q.challenge).unwrap();
    let proof = sesphr_dedup::prove(&challenge, &blob).unwrap().to_bytes();
    let chunk = proto::PutRecordRequest {
        part: Some(put_record_request::Part::Chunk(vec![1, 2, 3].into())),
    };
    let err = put(
        &mallory,
        vec![
            link_request("mallory", "m5", &blob_id, q.blob_size, proof),
            chunk,
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = mallory
        .clients
        .cloud
        .clone()
        .query_blob(proto::QueryBlobRequest {
            blob_id: vec![1; 5],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Uploading bytes that are not the announced blob stores nothing.
    let fake = link_request("mallory", "m6", &[9; 32], 3, Vec::new());
    let chunk = proto::PutRecordRequest {
        part: Some(put_record_request::Part::Chunk(vec![1, 2, 3].into())),
    };
    let err = put(&mallory, vec![fake, chunk]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // m3 is mallory's only record; alice's is intact.
    let mine: Vec<client::RecordId> = mallory
        .list(None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.record_id)
        .collect();
    assert_eq!(mine, ["m3"]);
    assert_eq!(download(&alice, &rec.record_id).await.unwrap(), data);
    assert_eq!(blob_files(&s), 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_owner_scope_stores_one_copy_per_owner() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = sesphr_server::daemon::DevOptions::new(dir.path().join("mesh")).ephemeral();
    opts.dedup_scope = sesphr_cloud_storage::DedupScope::PerOwner;
    let mesh = sesphr_server::daemon::DevMesh::start(opts).await.unwrap();
    mesh.wait_ready(common::PATIENCE).await.unwrap();
    let s = Sandbox { mesh, dir };
    let data = content(50_000, 4);
    let a = s.patient("a").await;
    let b = s.patient("b").await;
    assert_eq!(upload(&a, &data).await.1, Stored::New);
    assert_eq!(upload(&a, &data).await.1, Stored::Deduplicated);
    assert_eq!(upload(&b, &data).await.1, Stored::New);
    assert_eq!(blob_files(&s), 2);
    s.shutdown().await;
}

/// The stored blob, changed under the mesh's feet (a cloud insider): a
/// flipped byte in a middle segment or two segments swapped fail the
/// download as a decryption failure, and nothing past the last segment
/// that verified is written, though segments are opened on every core. A
/// blob cut short is refused too (CloudStorage itself notices the object
/// is shorter than its metadata).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_blob_is_refused_where_it_breaks() {
    const SEG: usize = 1 << 20;
    const UNIT: usize = SEG + 16;
    const HEAD: usize = 9;
    let s = Sandbox::start().await;
    let data = content(4 * SEG + 5, 7);
    let p = s.patient("ann").await;
    let (rec, _) = upload(&p, &data).await;
    let dir = s.dir.path().join("mesh/cloud-storage/blobs.v2");
    let blob = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .expect("one blob file");
    let original = std::fs::read(&blob).unwrap();
    let mut flipped = original.clone();
    flipped[HEAD + 2 * UNIT + 100] ^= 1;
    let mut swapped = original.clone();
    swapped[HEAD + UNIT..HEAD + 3 * UNIT].rotate_left(UNIT);
    let cut = original[..HEAD + 2 * UNIT].to_vec();
    for (what, bytes, intact) in [
        ("a flipped byte", flipped, Some(2 * SEG)),
        ("two segments swapped", swapped, Some(SEG)),
        ("a cut", cut, None),
    ] {
        std::fs::write(&blob, &bytes).unwrap();
        let mut out = Vec::new();
        let res = p
            .download(&rec.record_id, &mut out, client::no_progress())
            .await;
        let err = res.expect_err(what);
        if let Some(intact) = intact {
            assert!(
                matches!(
                    err,
                    client::ClientError::Crypto(sesphr_crypto::Error::DecryptionFailed)
                ),
                "{what}: {err}"
            );
            assert!(
                out.len() <= intact && data.starts_with(&out),
                "{what}: only verified segments before the damage are written ({} bytes)",
                out.len()
            );
        }
        assert!(
            data.starts_with(&out),
            "{what}: nothing unverified is written"
        );
    }
    std::fs::write(&blob, &original).unwrap();
    assert_eq!(download(&p, &rec.record_id).await.unwrap(), data);
    s.shutdown().await;
}

/// The content key must come from exactly the bytes that are sealed: an
/// input longer or shorter than its declared size is refused before
/// anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_of_another_size_than_declared_is_refused() {
    let s = Sandbox::start().await;
    let p = s.patient("ann").await;
    let data = content(100_000, 9);
    for (declared, what) in [(99_999u64, "longer"), (100_001, "fewer")] {
        let err = p
            .upload_dedup(
                "imaging",
                std::io::Cursor::new(data.clone()),
                declared,
                client::no_progress(),
            )
            .await
            .expect_err(what);
        assert!(
            matches!(&err, client::ClientError::Invalid(m) if m.contains(what)),
            "{what}: {err}"
        );
    }
    assert_eq!(blob_files(&s), 0, "nothing was stored");
    // A plain record's upload makes the same check once it sealed `len`.
    let err = p
        .upload(
            "imaging",
            std::io::Cursor::new(data.clone()),
            99_999,
            client::no_progress(),
        )
        .await
        .expect_err("longer");
    assert!(
        matches!(&err, client::ClientError::Invalid(m) if m.contains("longer")),
        "{err}"
    );
    s.shutdown().await;
}
