//! The per-identity rate and concurrency limits: a caller over its limit is
//! refused with ResourceExhausted and says which limit; others are not
//! affected, and a freed slot is usable again.

use std::time::Duration;

use futures::StreamExt;
use sesphr::proto;
use sesphr_client::{self as client, raw::MeshClients};
use sesphr_identity::Role;
use sesphr_mesh::limits::Limits;
use sesphr_server::daemon::{DevMesh, DevOptions};
use tonic::Code;

use super::cloud_storage::list;
use crate::common::{self, upload};

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
    let token = String::new(); // patients register themselves
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
