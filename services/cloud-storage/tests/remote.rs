//! The PostgreSQL + S3 record store against real servers: a PostgreSQL and
//! a Garage cluster per test (sesphr-testkit), each store in a database and
//! under a bucket prefix of its own.

use std::sync::{Arc, Barrier};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use sesphr_cloud_storage::conformance::{check_backend, read_all};
use sesphr_cloud_storage::remote::{RemoteStore, S3Config, copy_from_sled};
use sesphr_cloud_storage::{
    BlobRef, DedupScope, DomainError, NewRecord, RecordBackend, RecordStore, StoreLimits,
};
use sesphr_domain::pg::PgConfig;
use sesphr_testkit::{Garage, Postgres, S3Endpoint};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// One test's servers and the runtime its stores run their I/O on.
struct Env {
    pg: Postgres,
    garage: Garage,
    runtime: tokio::runtime::Runtime,
}

impl Env {
    fn start(nodes: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Env {
            pg: Postgres::start().unwrap(),
            garage: Garage::start(nodes).unwrap(),
            runtime,
        }
    }

    /// A fresh database `db` (lowercase letters and `_`).
    fn database(&self, db: &str) -> PgConfig {
        PgConfig::new(format!(
            "{}?sslmode=disable",
            self.pg.create_database(db).unwrap()
        ))
    }

    fn s3(&self, node: usize, prefix: &str) -> S3Config {
        s3_config(&self.garage.s3(node), prefix)
    }

    fn open(&self, pg: &PgConfig, s3: &S3Config, limits: StoreLimits) -> RemoteStore {
        RemoteStore::open(pg, s3, limits, self.runtime.handle().clone())
            .unwrap_or_else(|e| panic!("open: {e}"))
    }

    /// What the bucket holds under `prefix` (complete objects only).
    fn objects(&self, prefix: &str) -> Vec<String> {
        let s3 = bucket(&self.garage.s3(0));
        self.runtime.block_on(async {
            use futures::TryStreamExt;
            s3.list(Some(&Path::from(prefix)))
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap()
        })
    }

    /// The bucket under `prefix` holds exactly the objects the rows name:
    /// nothing orphaned, nothing missing, nothing pending.
    fn objects_match_rows(&self, pg: &PgConfig, prefix: &str) {
        let mut named: Vec<String> = self
            .rows(
                pg,
                "SELECT object_key FROM cloud_storage.records WHERE object_key IS NOT NULL \
                 UNION ALL SELECT object_key FROM cloud_storage.blobs",
            )
            .into_iter()
            .map(|r| format!("{prefix}/{}", r[0].as_deref().unwrap()))
            .collect();
        named.sort();
        let mut stored = self.objects(prefix);
        stored.sort();
        assert_eq!(stored, named, "objects under {prefix}");
        for table in ["pending", "doomed_objects"] {
            let left = self.rows(pg, &format!("SELECT * FROM cloud_storage.{table}"));
            assert!(left.is_empty(), "{table}: {left:?}");
        }
    }

    /// Rows of a query in `pg`'s database, as text.
    fn rows(&self, pg: &PgConfig, sql: &str) -> Vec<Vec<Option<String>>> {
        let url = pg.url.clone();
        let sql = sql.to_owned();
        self.runtime.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let msgs = client.simple_query(&sql).await.unwrap();
            msgs.into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                    }
                    _ => None,
                })
                .collect()
        })
    }
}

fn s3_config(e: &S3Endpoint, prefix: &str) -> S3Config {
    S3Config {
        endpoint: e.endpoint.clone(),
        region: e.region.clone(),
        bucket: e.bucket.clone(),
        prefix: prefix.into(),
        allow_http: true,
        access_key_id: e.access_key_id.clone(),
        secret_access_key: Zeroizing::new(e.secret_access_key.clone()),
    }
}

/// A client of the bucket of our own, to look at what the store left.
fn bucket(e: &S3Endpoint) -> object_store::aws::AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(&e.endpoint)
        .with_region(&e.region)
        .with_bucket_name(&e.bucket)
        .with_access_key_id(&e.access_key_id)
        .with_secret_access_key(&e.secret_access_key)
        .with_allow_http(true)
        .build()
        .unwrap()
}

fn rec(id: &str, owner: &str, partition: &str, size: u64) -> NewRecord {
    NewRecord {
        record_id: id.into(),
        owner_id: owner.into(),
        partition: partition.into(),
        epoch: 1,
        header: format!("header of {id}").into_bytes(),
        declared_size: size,
    }
}

/// Content that differs at every offset, so a misplaced part shows.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn put(b: &dyn RecordBackend, new: NewRecord, bytes: &[u8], now: i64) {
    let id = new.record_id.clone();
    let mut up = b.begin_upload(new).unwrap();
    for c in bytes.chunks(1 << 20) {
        up.append(c).unwrap();
    }
    up.commit(now)
        .unwrap_or_else(|e| panic!("commit {id}: {e}"));
}

fn put_blob(b: &dyn RecordBackend, new: NewRecord, bytes: &[u8], now: i64) -> BlobRef {
    let blob = BlobRef {
        blob_id: Sha256::digest(bytes).into(),
        wrapped_key: vec![0xaa; 60],
    };
    let mut up = b.begin_blob_upload(new, blob.clone()).unwrap();
    for c in bytes.chunks(1 << 20) {
        up.append(c).unwrap();
    }
    up.commit(now).unwrap();
    blob
}

const T0: i64 = 1_700_000_000;

#[test]
fn conformance_on_garage_and_postgres_in_both_dedup_scopes() {
    let env = Env::start(1);
    for (db, scope) in [
        ("conformance_global", DedupScope::Global),
        ("conformance_owner", DedupScope::PerOwner),
    ] {
        let limits = StoreLimits {
            dedup_scope: scope,
            ..StoreLimits::default()
        };
        let pg = env.database(db);
        let store = env.open(&pg, &env.s3(0, db), limits);
        check_backend(&store);
        // Every object left belongs to a record still there (`c-1`).
        env.objects_match_rows(&pg, db);
        assert_eq!(env.objects(db).len(), 1, "{db}");
    }
}

#[test]
fn two_replicas_share_records_and_one_id_is_taken_once() {
    let env = Env::start(1);
    let pg = env.database("replicas");
    let s3 = env.s3(0, "replicas");
    let a = Arc::new(env.open(&pg, &s3, StoreLimits::default()));
    let b = Arc::new(env.open(&pg, &s3, StoreLimits::default()));

    let bytes = content(3000, 1);
    put(&*a, rec("r-1", "alice", "medical", 3000), &bytes, T0);
    assert_eq!(read_all(&*b, "r-1").unwrap(), bytes);
    let (page, _) = b.list("alice", None, None, 0).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(Some(&page[0]), a.get("r-1").unwrap().as_ref());
    assert_eq!(*a.secret("s").unwrap(), *b.secret("s").unwrap());
    let err = a.begin_upload(rec("r-1", "alice", "medical", 1)).err();
    assert!(matches!(err, Some(DomainError::Exists(_))), "{err:?}");
    b.delete("alice", "r-1").unwrap();
    assert!(a.get("r-1").unwrap().is_none());
    assert!(matches!(read_all(&*a, "r-1"), Err(DomainError::Unknown(_))));

    // Two replicas racing for one id: exactly one record, one winner.
    for round in 0..4 {
        let id = format!("race-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let outcomes: Vec<_> = [(a.clone(), 10u8), (b.clone(), 20u8)]
            .into_iter()
            .map(|(store, seed)| {
                let (barrier, id) = (barrier.clone(), id.clone());
                std::thread::spawn(move || {
                    let bytes = content(100, seed);
                    barrier.wait();
                    let mut up = store.begin_upload(rec(&id, "alice", "medical", 100))?;
                    up.append(&bytes)?;
                    up.commit(T0).map(|_| bytes)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let won: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {outcomes:?}");
        for lost in outcomes.iter().filter_map(|o| o.as_ref().err()) {
            assert!(matches!(lost, DomainError::Exists(_)), "{lost}");
        }
        assert_eq!(&read_all(&*a, &id).unwrap(), won[0]);
        assert_eq!(&read_all(&*b, &id).unwrap(), won[0]);
    }
    // Only the winners' objects are in the bucket, nothing is pending.
    assert_eq!(env.objects("replicas").len(), 4);
    env.objects_match_rows(&pg, "replicas");
}

#[test]
fn dropped_and_abandoned_uploads_leave_nothing() {
    let env = Env::start(1);
    let pg = env.database("leftovers");
    let s3 = env.s3(0, "leftovers");
    let store = env.open(&pg, &s3, StoreLimits::default());
    let s3c = bucket(&env.garage.s3(0));
    // The bytes of one full part (sent) and a few more (buffered).
    let bytes = content(6 << 20, 3);
    let pending = |what: &str| -> Vec<(String, String)> {
        env.rows(
            &pg,
            "SELECT object_key, multipart_id FROM cloud_storage.pending",
        )
        .into_iter()
        .map(|r| {
            let key = r[0].clone().unwrap();
            let id = r[1]
                .clone()
                .unwrap_or_else(|| panic!("{what}: no multipart id"));
            (key, id)
        })
        .collect()
    };
    let part_refused = |key: &str, id: &str| {
        let path = Path::from(format!("leftovers/{key}"));
        env.runtime
            .block_on(s3c.put_part(&path, &id.to_owned(), 5, "x".into()))
            .is_err()
    };

    // Dropped: the row, the parts and the multipart upload are gone.
    let mut up = store
        .begin_upload(rec("d-1", "alice", "medical", 8 << 20))
        .unwrap();
    for c in bytes.chunks(1 << 20) {
        up.append(c).unwrap();
    }
    let live = pending("live upload");
    assert_eq!(live.len(), 1);
    assert!(
        !part_refused(&live[0].0, &live[0].1),
        "the live upload takes parts"
    );
    drop(up);
    assert!(pending("after drop").is_empty());
    assert!(
        part_refused(&live[0].0, &live[0].1),
        "multipart upload not aborted"
    );
    assert!(env.objects("leftovers").is_empty());
    // A failed commit (short) discards the same way, and frees the id.
    let mut short = store
        .begin_upload(rec("d-1", "alice", "medical", 8 << 20))
        .unwrap();
    short.append(&bytes[..1 << 20]).unwrap();
    assert!(matches!(short.commit(T0), Err(DomainError::Conflict(_))));
    assert!(pending("after a short commit").is_empty());

    // Dropped inside an async task (a client stream that broke): the
    // discard runs in the background and a new upload of the id waits
    // for it instead of failing.
    let mut up = store
        .begin_upload(rec("d-2", "alice", "medical", 8 << 20))
        .unwrap();
    up.append(&bytes[..1 << 20]).unwrap();
    env.runtime.block_on(async move { drop(up) });
    put(&store, rec("d-2", "alice", "medical", 2), b"ok", T0);
    assert_eq!(read_all(&store, "d-2").unwrap(), b"ok");
    store.delete("alice", "d-2").unwrap();

    // Abandoned (a replica that died mid-upload): only the sweep frees it.
    let mut up = store
        .begin_upload(rec("s-1", "alice", "medical", 8 << 20))
        .unwrap();
    for c in bytes.chunks(1 << 20) {
        up.append(c).unwrap();
    }
    std::mem::forget(up);
    let stale = pending("abandoned upload");
    let again = store.begin_upload(rec("s-1", "alice", "medical", 1)).err();
    assert!(matches!(again, Some(DomainError::Exists(_))), "{again:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(
        store.sweep_stale_uploads(3600, now).unwrap(),
        0,
        "not stale yet"
    );
    assert_eq!(pending("recent").len(), 1);
    assert_eq!(store.sweep_stale_uploads(60, now + 120).unwrap(), 1);
    assert!(pending("after sweep").is_empty());
    assert!(
        part_refused(&stale[0].0, &stale[0].1),
        "sweep left the multipart upload"
    );
    put(&store, rec("s-1", "alice", "medical", 5), b"fresh", T0);
    assert_eq!(read_all(&store, "s-1").unwrap(), b"fresh");
    assert_eq!(env.objects("leftovers").len(), 1);
    env.objects_match_rows(&pg, "leftovers");
}

#[test]
fn a_multi_part_record_round_trips_and_a_blob_is_stored_once() {
    let env = Env::start(1);
    let pg = env.database("multipart");
    let store = env.open(&pg, &env.s3(0, "multipart"), StoreLimits::default());
    let bytes = content(12 << 20, 7);
    put(
        &store,
        rec("big", "alice", "imaging", bytes.len() as u64),
        &bytes,
        T0,
    );
    let chunks: Vec<Vec<u8>> = store.chunks("big").map(Result::unwrap).collect();
    assert!(
        chunks.iter().all(|c| c.len() <= 1 << 20),
        "chunks are bounded"
    );
    assert_eq!(chunks.concat(), bytes);
    let objects = env.objects("multipart");
    assert_eq!(objects.len(), 1);
    assert!(objects[0].starts_with("multipart/records/"), "{objects:?}");
    assert!(!objects[0].contains("big"), "a key made of the record id");

    // The same 6 MiB blob uploaded by two records: stored once, read by
    // both, freed with the last.
    let blob_bytes = content(6 << 20, 9);
    let blob = put_blob(
        &store,
        rec("b-1", "alice", "imaging", 6 << 20),
        &blob_bytes,
        T0,
    );
    let mut second = store
        .begin_blob_upload(rec("b-2", "bob", "imaging", 6 << 20), blob.clone())
        .unwrap();
    for c in blob_bytes.chunks(1 << 20) {
        second.append(c).unwrap();
    }
    second.commit(T0).unwrap();
    assert_eq!(
        store
            .blob("alice", &blob.blob_id)
            .unwrap()
            .unwrap()
            .refcount,
        2
    );
    assert_eq!(read_all(&store, "b-2").unwrap(), blob_bytes);
    assert_eq!(
        env.objects("multipart/blobs").len(),
        1,
        "the duplicate stayed"
    );
    store.delete("alice", "b-1").unwrap();
    assert_eq!(read_all(&store, "b-2").unwrap(), blob_bytes);
    store.delete("bob", "b-2").unwrap();
    assert!(env.objects("multipart/blobs").is_empty());
    env.objects_match_rows(&pg, "multipart");
}

#[test]
fn copy_from_sled_moves_a_populated_store() {
    let env = Env::start(1);
    let dir = tempfile::tempdir().unwrap();
    let src = RecordStore::open(dir.path(), StoreLimits::default()).unwrap();
    let big = content(6 << 20, 5);
    for (i, (owner, partition)) in [
        ("alice", "medical"),
        ("alice", "dental"),
        ("bob", "medical"),
        ("alice", "medical"),
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = content(1000 + i * 333, i as u8);
        put(
            &src,
            rec(&format!("r-{i}"), owner, partition, bytes.len() as u64),
            &bytes,
            T0 + i as i64,
        );
    }
    put(
        &src,
        rec("r-big", "bob", "imaging", big.len() as u64),
        &big,
        T0 + 9,
    );
    let shared = content(50_000, 11);
    let blob = put_blob(
        &src,
        rec("b-1", "alice", "imaging", 50_000),
        &shared,
        T0 + 20,
    );
    src.link_blob(rec("b-2", "bob", "imaging", 0), blob.clone(), T0 + 21)
        .unwrap();
    put(&src, rec("gone", "alice", "medical", 1), b"x", T0);
    src.delete("alice", "gone").unwrap();
    let secret = src.secret("list-page-tokens").unwrap();

    // A destination that fails half-way (its size limit refuses r-big)…
    let pg = env.database("copy");
    let s3 = env.s3(0, "copy");
    let small = StoreLimits {
        max_record_size: 1 << 20,
        ..StoreLimits::default()
    };
    let first = copy_from_sled(&src, &env.open(&pg, &s3, small));
    assert!(matches!(first, Err(DomainError::Malformed(_))), "{first:?}");
    // …is resumed by a second run, which copies only what is missing.
    let dst = env.open(&pg, &s3, StoreLimits::default());
    let report = copy_from_sled(&src, &dst).unwrap();
    assert_eq!(report.records + report.skipped, 7, "{report:?}");
    assert!(report.skipped >= 3, "{report:?}");
    assert_eq!(report.refcount_mismatches, 0);
    assert_eq!(report.secrets, 1);

    for id in ["r-0", "r-1", "r-2", "r-3", "r-big", "b-1", "b-2"] {
        assert_eq!(dst.get(id).unwrap(), src.get(id).unwrap(), "{id}");
        assert_eq!(
            read_all(&dst, id).unwrap(),
            read_all(&src, id).unwrap(),
            "{id}"
        );
    }
    assert!(dst.get("gone").unwrap().is_none());
    for owner in ["alice", "bob"] {
        assert_eq!(
            dst.list(owner, None, None, 2).unwrap(),
            src.list(owner, None, None, 2).unwrap()
        );
        assert_eq!(
            dst.list(owner, Some("medical"), None, 0).unwrap(),
            src.list(owner, Some("medical"), None, 0).unwrap()
        );
        assert_eq!(
            dst.partitions(owner, "", 10).unwrap(),
            src.partitions(owner, "", 10).unwrap()
        );
    }
    assert_eq!(
        dst.blob("bob", &blob.blob_id).unwrap(),
        src.blob("bob", &blob.blob_id).unwrap()
    );
    assert_eq!(*dst.secret("list-page-tokens").unwrap(), *secret);
    assert_eq!(
        env.objects("copy/blobs").len(),
        1,
        "the blob is stored once"
    );
    env.objects_match_rows(&pg, "copy");

    // Done once: neither this destination nor another non-empty one takes
    // a copy.
    let again = copy_from_sled(&src, &dst);
    assert!(matches!(again, Err(DomainError::Exists(_))), "{again:?}");
    let used = env.open(
        &env.database("used"),
        &env.s3(0, "used"),
        StoreLimits::default(),
    );
    put(&used, rec("mine", "carol", "medical", 1), b"y", T0);
    let refused = copy_from_sled(&src, &used);
    assert!(
        matches!(&refused, Err(DomainError::Exists(m)) if m.contains("already holds records")),
        "{refused:?}"
    );
}

#[test]
fn a_three_node_garage_with_one_node_lost_still_reads_and_writes() {
    let mut env = Env::start(3);
    let pg = env.database("replicated");
    let s3 = env.s3(0, "replicated");
    let store = env.open(&pg, &s3, StoreLimits::default());
    let before = content(7 << 20, 2);
    put(
        &store,
        rec("before", "alice", "medical", before.len() as u64),
        &before,
        T0,
    );
    env.garage.kill_node(2);
    assert_eq!(read_all(&store, "before").unwrap(), before);
    let after = content(6 << 20, 4);
    put(
        &store,
        rec("after", "alice", "medical", after.len() as u64),
        &after,
        T0,
    );
    assert_eq!(read_all(&store, "after").unwrap(), after);
    let (page, _) = store.list("alice", None, None, 0).unwrap();
    assert_eq!(page.len(), 2);
    store.delete("alice", "before").unwrap();
    assert!(store.get("before").unwrap().is_none());
    // A second replica talking to another surviving node sees the same.
    let other = env.open(&pg, &env.s3(1, "replicated"), StoreLimits::default());
    assert_eq!(read_all(&other, "after").unwrap(), after);
}

#[test]
fn an_unreachable_object_store_is_unavailable_and_frees_the_id() {
    let env = Env::start(1);
    let pg = env.database("outage");
    let mut s3 = env.s3(0, "outage");
    let good = env.open(&pg, &s3, StoreLimits::default());
    // Nothing listens there.
    s3.endpoint = format!("http://127.0.0.1:{}", sesphr_testkit::free_port().unwrap());
    let cut_off = env.open(&pg, &s3, StoreLimits::default());
    let err = cut_off
        .begin_upload(rec("u-1", "alice", "medical", 1))
        .err();
    assert!(matches!(err, Some(DomainError::Unavailable(_))), "{err:?}");
    assert!(
        env.rows(&pg, "SELECT * FROM cloud_storage.pending")
            .is_empty()
    );
    put(&good, rec("u-1", "alice", "medical", 1), b"z", T0);
    let err = read_all(&cut_off, "u-1").unwrap_err();
    assert!(matches!(err, DomainError::Unavailable(_)), "{err}");
    assert_eq!(read_all(&good, "u-1").unwrap(), b"z");
    // A delete commits without the object store; the sweep removes the
    // object once it is back.
    cut_off.delete("alice", "u-1").unwrap();
    assert_eq!(env.objects("outage").len(), 1);
    let later = i64::MAX / 2;
    assert!(cut_off.sweep_stale_uploads(0, later).is_err());
    assert_eq!(good.sweep_stale_uploads(0, later).unwrap(), 1);
    env.objects_match_rows(&pg, "outage");
    assert!(env.objects("outage").is_empty());
}
