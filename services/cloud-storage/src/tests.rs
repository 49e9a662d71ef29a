use std::sync::Arc;

use super::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const T0: i64 = 1_700_000_000;

fn store() -> (tempfile::TempDir, RecordStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = open_at(dir.path());
    (dir, s)
}

fn rec(id: &str, owner: &str, partition: &str, size: u64) -> NewRecord {
    NewRecord {
        record_id: id.into(),
        owner_id: owner.into(),
        partition: partition.into(),
        epoch: 1,
        header: b"hdr".to_vec(),
        declared_size: size,
    }
}

/// Uploads `content` in chunks of `chunk` bytes and commits.
fn put(s: &RecordStore, id: &str, owner: &str, partition: &str, content: &[u8]) -> RecordMeta {
    let mut up = s
        .begin_upload(rec(id, owner, partition, content.len() as u64))
        .unwrap();
    for c in content.chunks(3) {
        up.append(c).unwrap();
    }
    up.commit(T0).unwrap()
}

use crate::conformance::read_all;

fn ids(page: &[RecordMeta]) -> Vec<&str> {
    page.iter().map(|m| m.record_id.as_str()).collect()
}

#[test]
fn types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<RecordStore>();
    send::<Upload>();
    fn iter_is_send_static<I: Iterator + Send + 'static>(_: I) {}
    let (_d, s) = store();
    iter_is_send_static(s.chunks("x"));
}

#[test]
fn upload_commit_read_back() {
    let (_d, s) = store();
    let content: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let mut up = s.begin_upload(rec("r1", "alice", "medical", 1000)).unwrap();
    assert_eq!(up.record_id(), "r1");
    // Not visible while uploading.
    up.append(&content[..400]).unwrap();
    assert!(s.get("r1").unwrap().is_none());
    assert!(matches!(
        s.chunks("r1").next(),
        Some(Err(DomainError::Unknown(_)))
    ));
    up.append(&content[400..]).unwrap();
    assert_eq!(up.received(), 1000);
    let m = up.commit(T0).unwrap();
    assert_eq!(
        m,
        RecordMeta {
            record_id: "r1".into(),
            owner_id: "alice".into(),
            partition: "medical".into(),
            epoch: 1,
            created_at: T0,
            size: 1000,
            header: b"hdr".to_vec(),
            blob: None,
        }
    );
    assert_eq!(s.get("r1").unwrap(), Some(m));
    let chunks: Vec<_> = s.chunks("r1").map(|c| c.unwrap().len()).collect();
    // Read back in large pieces, whatever the upload's chunking.
    assert_eq!(chunks, [1000]);
    assert_eq!(read_all(&s, "r1").unwrap(), content);
    assert!(s.shared.pending.is_empty());
}

#[test]
fn empty_record_is_allowed() {
    let (_d, s) = store();
    let m = s
        .begin_upload(rec("empty", "alice", "other", 0))
        .unwrap()
        .commit(T0)
        .unwrap();
    assert_eq!(m.size, 0);
    assert_eq!(read_all(&s, "empty").unwrap(), b"");
}

#[test]
fn dropped_upload_leaves_nothing() {
    let (_d, s) = store();
    {
        let mut up = s.begin_upload(rec("r1", "alice", "medical", 10)).unwrap();
        up.append(b"12345").unwrap();
        assert_eq!(objects(&s).len(), 1);
    }
    assert!(s.get("r1").unwrap().is_none());
    assert!(objects(&s).is_empty());
    assert!(s.shared.pending.is_empty());
    assert!(s.list("alice", None, None, 10).unwrap().0.is_empty());
    // The id is free again.
    put(&s, "r1", "alice", "medical", b"0123456789");
}

/// Uploads committing at the same time share their directory fsyncs and
/// sled flushes, and each is still whole and durable when acknowledged.
#[test]
fn concurrent_commits_share_syncs() {
    const UPLOADERS: usize = 8;
    const EACH: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open_at(dir.path()));
    // Every uploader stages its object, then all of them commit together.
    let start = Arc::new(std::sync::Barrier::new(UPLOADERS));
    let threads: Vec<_> = (0..UPLOADERS)
        .map(|t| {
            let (s, start) = (s.clone(), start.clone());
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let id = format!("r{t}-{i}");
                    let body = id.repeat(100);
                    let mut up = s
                        .begin_upload(rec(&id, "alice", "medical", body.len() as u64))
                        .unwrap();
                    up.append(body.as_bytes()).unwrap();
                    start.wait();
                    up.commit(T0).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let commits = (UPLOADERS * EACH) as u64;
    let (dirs, flushes) = (s.shared.records_dir.syncs(), s.shared.metadata.syncs());
    assert!(
        dirs < commits && flushes < commits,
        "{commits} commits took {dirs} directory syncs and {flushes} flushes: none shared"
    );
    drop(s);
    let s = open_at(dir.path());
    for t in 0..UPLOADERS {
        for i in 0..EACH {
            let id = format!("r{t}-{i}");
            assert_eq!(read_all(&s, &id).unwrap(), id.repeat(100).as_bytes());
        }
    }
}

#[test]
fn crash_mid_upload_is_swept_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open_at(dir.path());
        put(&s, "kept", "alice", "medical", b"abcdef");
        let mut up = s
            .begin_upload(rec("torn", "alice", "medical", 100))
            .unwrap();
        for _ in 0..5 {
            up.append(b"0123456789").unwrap();
        }
        s.shared.db.flush().unwrap();
        // The process "dies": no Drop runs for the upload.
        std::mem::forget(up);
    }
    let s = open_at(dir.path());
    assert!(s.get("torn").unwrap().is_none());
    assert!(s.shared.pending.is_empty());
    // Only the committed record's object remains.
    assert_eq!(objects(&s), ["kept"]);
    assert_eq!(read_all(&s, "kept").unwrap(), b"abcdef");
    put(&s, "torn", "alice", "medical", b"again");
}

/// The marker earlier versions wrote to `pending` for a delete in progress
/// (stores they left still carry them; `open` sweeps them).
const PENDING_DELETE: u8 = 2;

#[test]
fn crash_mid_delete_is_swept_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open_at(dir.path());
        put(&s, "r1", "alice", "medical", b"abcdef");
        // State right after the delete transaction, before chunk removal.
        s.shared.meta.remove("r1").unwrap();
        s.shared.by_owner.remove(owner_key("alice", "r1")).unwrap();
        s.shared
            .by_partition
            .remove(partition_key("alice", "medical", "r1"))
            .unwrap();
        s.shared.pending.insert("r1", &[PENDING_DELETE]).unwrap();
        s.shared.db.flush().unwrap();
    }
    let s = open_at(dir.path());
    assert!(objects(&s).is_empty());
    assert!(s.shared.pending.is_empty());
}

#[test]
fn upload_outliving_its_store_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut up;
    {
        let s = open_at(dir.path());
        up = s.begin_upload(rec("r1", "alice", "medical", 4)).unwrap();
        up.append(b"ab").unwrap();
    }
    let e = up.append(b"cd").unwrap_err();
    assert!(matches!(e, DomainError::Conflict(_)), "{e:?}");
    drop(up);
    let s = open_at(dir.path());
    assert!(objects(&s).is_empty());
}

#[test]
fn size_mismatch_and_chunk_limits() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StoreLimits {
        max_record_size: 100,
        max_chunk_size: 8,
        max_header_size: 4,
        ..StoreLimits::default()
    };
    let s = RecordStore::open(dir.path(), limits).unwrap();
    assert_eq!(s.limits(), limits);

    let mut up = s.begin_upload(rec("r1", "alice", "medical", 10)).unwrap();
    let inv = |r: Result<(), DomainError>| {
        assert!(
            matches!(r, Err(DomainError::Malformed(_) | DomainError::BadName(_))),
            "{r:?}"
        )
    };
    inv(up.append(b""));
    inv(up.append(b"123456789"));
    up.append(b"12345678").unwrap();
    inv(up.append(b"abc")); // would be 11 > 10
    let e = up.commit(T0).unwrap_err();
    assert!(matches!(e, DomainError::Conflict(_)), "{e:?}");
    assert!(e.to_string().contains("received 8 bytes but 10"), "{e}");
    assert!(s.get("r1").unwrap().is_none());
    assert!(objects(&s).is_empty());

    let e = s
        .begin_upload(rec("r2", "alice", "medical", 101))
        .err()
        .unwrap();
    assert!(
        matches!(e, DomainError::Malformed(_) | DomainError::BadName(_)),
        "{e:?}"
    );
    let mut big_header = rec("r3", "alice", "medical", 1);
    big_header.header = vec![0; 5];
    assert!(matches!(
        s.begin_upload(big_header).err().unwrap(),
        DomainError::Malformed(_)
    ));
    assert!(matches!(
        RecordStore::open(
            tempfile::tempdir().unwrap().path(),
            StoreLimits {
                max_chunk_size: 0,
                ..limits
            }
        )
        .err()
        .unwrap(),
        DomainError::Malformed(_)
    ));
}

#[test]
fn bad_ids_are_invalid_argument() {
    let (_d, s) = store();
    for r in [
        rec("", "alice", "medical", 1),
        rec("a/b", "alice", "medical", 1),
        rec("a\0b", "alice", "medical", 1),
        rec(&"x".repeat(MAX_RECORD_ID_LEN + 1), "alice", "medical", 1),
        rec("-r", "alice", "medical", 1),
        rec("r1", "Alice", "medical", 1),
        rec("r1", "alice", "Medical", 1),
    ] {
        let e = s.begin_upload(r.clone()).err().unwrap();
        assert!(
            matches!(e, DomainError::Malformed(_) | DomainError::BadName(_)),
            "{r:?}: {e:?}"
        );
    }
    assert!(s.get("a/b").is_err());
    assert!(s.list("alice", None, Some("a b"), 1).is_err());
    assert!(s.delete("alice", "").is_err());
    assert!(matches!(
        s.chunks("no/no").next(),
        Some(Err(DomainError::Malformed(_) | DomainError::BadName(_)))
    ));
    // Record ids may use upper case (base64url, UUIDs).
    put(&s, "Ab-9_x.Y", "alice", "medical", b"z");
}

#[test]
fn duplicate_ids_are_rejected() {
    let (_d, s) = store();
    let up = s.begin_upload(rec("r1", "alice", "medical", 1)).unwrap();
    let e = s
        .begin_upload(rec("r1", "bob", "medical", 1))
        .err()
        .unwrap();
    assert!(matches!(e, DomainError::Exists(_)), "{e:?}");
    assert!(e.to_string().contains("being uploaded"));
    drop(up);
    put(&s, "r1", "alice", "medical", b"x");
    let e = s
        .begin_upload(rec("r1", "alice", "medical", 1))
        .err()
        .unwrap();
    assert!(matches!(e, DomainError::Exists(_)), "{e:?}");
    assert!(e.to_string().contains("already exists"));
}

#[test]
fn concurrent_uploads_of_one_id_admit_one() {
    let (_d, s) = store();
    let s = Arc::new(s);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut up = s.begin_upload(rec("same", "alice", "medical", 2))?;
                up.append(&[i, i])?;
                up.commit(T0)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| matches!(e, DomainError::Exists(_)))
    );
    let content = read_all(&*s, "same").unwrap();
    assert_eq!(content.len(), 2);
    assert_eq!(content[0], content[1]);
}

#[test]
fn list_pages_and_filters() {
    let (_d, s) = store();
    for (id, p) in [
        ("r05", "medical"),
        ("r01", "insurance"),
        ("r03", "medical"),
        ("r02", "medical"),
        ("r04", "insurance"),
    ] {
        put(&s, id, "alice", p, b"data");
    }
    put(&s, "r00", "bob", "medical", b"bob's");
    put(&s, "r06", "alicea", "medical", b"prefix-sibling owner");

    let (page, token) = s.list("alice", None, None, 2).unwrap();
    assert_eq!(ids(&page), ["r01", "r02"]);
    assert_eq!(token.as_deref(), Some("r02"));
    let (page, token) = s.list("alice", None, token.as_deref(), 2).unwrap();
    assert_eq!(ids(&page), ["r03", "r04"]);
    let (page, token) = s.list("alice", None, token.as_deref(), 2).unwrap();
    assert_eq!(ids(&page), ["r05"]);
    assert_eq!(token, None);
    // Exactly a full last page: no token.
    let (page, token) = s.list("alice", None, Some("r03"), 2).unwrap();
    assert_eq!(ids(&page), ["r04", "r05"]);
    assert_eq!(token, None);

    let (page, token) = s.list("alice", Some("medical"), None, 0).unwrap();
    assert_eq!(ids(&page), ["r02", "r03", "r05"]);
    assert_eq!(token, None);
    let (page, token) = s.list("alice", Some("medical"), Some("r02"), 1).unwrap();
    assert_eq!(ids(&page), ["r03"]);
    assert_eq!(token.as_deref(), Some("r03"));
    let (page, _) = s.list("alice", Some("insurance"), None, 10).unwrap();
    assert_eq!(ids(&page), ["r01", "r04"]);
    assert!(
        s.list("alice", Some("other"), None, 10)
            .unwrap()
            .0
            .is_empty()
    );
    assert!(s.list("carol", None, None, 10).unwrap().0.is_empty());
    // A token need not name an existing record.
    let (page, _) = s.list("alice", None, Some("r025"), 10).unwrap();
    assert_eq!(ids(&page), ["r03", "r04", "r05"]);
    let (page, _) = s.list("bob", None, None, 10).unwrap();
    assert_eq!(page[0].header, b"hdr");
}

#[test]
fn delete_checks_owner() {
    let (_d, s) = store();
    put(&s, "r1", "alice", "medical", b"secret bytes");
    let e = s.delete("mallory", "r1").unwrap_err();
    assert!(matches!(e, DomainError::NotEntitled(_)), "{e:?}");
    assert!(!e.to_string().contains("alice"), "{e}");
    assert!(s.get("r1").unwrap().is_some());
    let e = s.delete("alice", "r9").unwrap_err();
    assert!(matches!(e, DomainError::Unknown(_)), "{e:?}");

    let m = s.delete("alice", "r1").unwrap();
    assert_eq!(m.size, 12);
    assert!(s.get("r1").unwrap().is_none());
    assert!(s.list("alice", None, None, 10).unwrap().0.is_empty());
    assert!(
        s.list("alice", Some("medical"), None, 10)
            .unwrap()
            .0
            .is_empty()
    );
    assert!(objects(&s).is_empty());
    assert!(s.shared.pending.is_empty());
    assert!(matches!(
        s.delete("alice", "r1").unwrap_err(),
        DomainError::Unknown(_)
    ));
    // Deleting an upload in progress finds nothing.
    let _up = s.begin_upload(rec("r2", "alice", "medical", 1)).unwrap();
    assert!(matches!(
        s.delete("alice", "r2").unwrap_err(),
        DomainError::Unknown(_)
    ));
    put(&s, "r1", "alice", "medical", b"new");
}

#[test]
fn a_reader_finishes_a_record_deleted_meanwhile() {
    let (_d, s) = store();
    put(&s, "r1", "alice", "medical", b"abcdefghi");
    let mut it = s.chunks("r1");
    s.delete("alice", "r1").unwrap();
    // The reader saw a complete record when it started; it gets all of it.
    assert_eq!(&*it.next().unwrap().unwrap(), b"abcdefghi");
    assert!(it.next().is_none());
    assert!(matches!(
        s.chunks("r1").next(),
        Some(Err(DomainError::Unknown(_)))
    ));
}

#[test]
fn reader_outlives_store_handle() {
    let (_d, s) = store();
    put(&s, "r1", "alice", "medical", b"abcdef");
    let it = s.chunks("r1");
    drop(s);
    let bytes: Vec<u8> = it.flat_map(|c| c.unwrap().to_vec()).collect();
    assert_eq!(bytes, b"abcdef");
}

#[test]
fn records_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let m = {
        let s = open_at(dir.path());
        put(&s, "r1", "alice", "medical", b"persistent")
    };
    let s = open_at(dir.path());
    assert_eq!(s.get("r1").unwrap(), Some(m));
    assert_eq!(read_all(&s, "r1").unwrap(), b"persistent");
    assert_eq!(
        s.list("alice", Some("medical"), None, 5).unwrap().0.len(),
        1
    );
    s.delete("alice", "r1").unwrap();
    drop(s);
    let s = open_at(dir.path());
    assert!(s.get("r1").unwrap().is_none());
}

#[test]
fn corrupt_metadata_is_reported() {
    let (_d, s) = store();
    put(&s, "r1", "alice", "medical", b"abc");
    s.shared.meta.insert("r1", &b"\x01garbage"[..]).unwrap();
    assert!(matches!(s.get("r1"), Err(DomainError::Corrupt(_))));
    assert!(matches!(
        s.chunks("r1").next(),
        Some(Err(DomainError::Corrupt(_)))
    ));
    assert!(matches!(
        s.list("alice", None, None, 10),
        Err(DomainError::Corrupt(_))
    ));
    assert!(matches!(
        s.delete("alice", "r1"),
        Err(DomainError::Corrupt(_))
    ));

    // An object gone missing behind the store's back.
    put(&s, "r2", "alice", "medical", b"abcdef");
    std::fs::remove_file(s.shared.files.record_path("r2")).unwrap();
    assert!(matches!(read_all(&s, "r2"), Err(DomainError::Corrupt(_))));
    // Objects shorter or longer than the metadata says.
    put(&s, "r3", "alice", "medical", b"abcdef");
    std::fs::write(s.shared.files.record_path("r3"), b"abc").unwrap();
    assert!(matches!(read_all(&s, "r3"), Err(DomainError::Corrupt(_))));
    put(&s, "r4", "alice", "medical", b"abcdef");
    std::fs::write(s.shared.files.record_path("r4"), b"abcdefg").unwrap();
    assert!(matches!(read_all(&s, "r4"), Err(DomainError::Corrupt(_))));
}

/// Ids of the object files present, sorted.
fn objects(s: &RecordStore) -> Vec<String> {
    let mut ids: Vec<String> = s
        .shared
        .files
        .record_files()
        .unwrap()
        .into_iter()
        .map(|(name, _)| Layout::record_id_of(&name).expect("a hex name"))
        .collect();
    ids.sort();
    ids
}

// ---- deduplicated blobs ---------------------------------------------------

fn blob_ref(content: &[u8]) -> BlobRef {
    BlobRef {
        blob_id: Sha256::digest(content).into(),
        wrapped_key: vec![0xaa; 60],
    }
}

fn put_blob(s: &RecordStore, id: &str, owner: &str, content: &[u8]) -> RecordMeta {
    let mut up = s
        .begin_blob_upload(
            rec(id, owner, "medical", content.len() as u64),
            blob_ref(content),
        )
        .unwrap();
    for c in content.chunks(5000) {
        up.append(c).unwrap();
    }
    up.commit(T0).unwrap()
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs.v2"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
        .count()
}

#[test]
fn equal_blobs_are_stored_once_and_freed_with_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_at(dir.path());
    let content = vec![7u8; 20_000];
    let first = put_blob(&s, "r1", "alice", &content);
    assert_eq!(first.blob, Some(blob_ref(&content)));
    let id = blob_ref(&content).blob_id;
    let info = s
        .blob("bob", &id)
        .unwrap()
        .expect("global scope: bob sees it");
    assert_eq!((info.size, info.refcount, info.leaf_count), (20_000, 1, 5));
    let tree = sesphr_dedup::pow::MerkleTree::from_bytes(&content);
    assert_eq!(&info.root, tree.root());

    s.link_blob(rec("r2", "bob", "medical", 0), blob_ref(&content), T0)
        .unwrap();
    // An equal upload racing in is linked too, not stored twice.
    put_blob(&s, "r3", "carol", &content);
    assert_eq!(s.blob("x", &id).unwrap().unwrap().refcount, 3);
    assert_eq!(blob_files(dir.path()), 1);
    for r in ["r1", "r2", "r3"] {
        assert_eq!(read_all(&s, r).unwrap(), content, "{r}");
    }
    s.delete("alice", "r1").unwrap();
    s.delete("bob", "r2").unwrap();
    assert_eq!(read_all(&s, "r3").unwrap(), content);
    assert_eq!(blob_files(dir.path()), 1);
    s.delete("carol", "r3").unwrap();
    assert!(s.blob("x", &id).unwrap().is_none());
    assert_eq!(blob_files(dir.path()), 0);
    let err = s
        .link_blob(rec("r4", "dave", "medical", 0), blob_ref(&content), T0)
        .unwrap_err();
    assert!(matches!(err, DomainError::Unknown(_)), "{err}");
}

#[test]
fn a_blob_that_does_not_hash_to_its_id_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_at(dir.path());
    let mut up = s
        .begin_blob_upload(rec("r1", "alice", "medical", 4), blob_ref(b"real"))
        .unwrap();
    up.append(b"fake").unwrap();
    assert!(matches!(up.commit(T0), Err(DomainError::Malformed(_))));
    assert!(s.get("r1").unwrap().is_none());
    assert_eq!(blob_files(dir.path()), 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn per_owner_scope_keeps_owners_apart() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StoreLimits {
        dedup_scope: DedupScope::PerOwner,
        ..StoreLimits::default()
    };
    let s = RecordStore::open(dir.path(), limits).unwrap();
    let content = b"same file".to_vec();
    put_blob(&s, "r1", "alice", &content);
    let id = blob_ref(&content).blob_id;
    assert!(s.blob("alice", &id).unwrap().is_some());
    assert!(s.blob("bob", &id).unwrap().is_none());
    put_blob(&s, "r2", "bob", &content);
    assert_eq!(blob_files(dir.path()), 2);
}

#[test]
fn crashes_around_a_blob_commit_leave_no_orphan_and_no_dangling_reference() {
    let dir = tempfile::tempdir().unwrap();
    let content = vec![3u8; 9000];
    {
        let s = open_at(dir.path());
        put_blob(&s, "kept", "alice", &content);
        // Crash mid-upload of another blob.
        let mut up = s
            .begin_blob_upload(rec("torn", "bob", "medical", 100), blob_ref(&[1; 100]))
            .unwrap();
        up.append(&[1; 50]).unwrap();
        std::mem::forget(up);
        // Crash after a blob was published but before its metadata
        // committed: a file no metadata names.
        std::fs::write(dir.path().join("blobs.v2").join("ff".repeat(32)), b"orphan").unwrap();
    }
    let s = open_at(dir.path());
    assert!(s.get("torn").unwrap().is_none());
    assert_eq!(
        blob_files(dir.path()),
        1,
        "only the referenced blob remains"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("staging"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(read_all(&s, "kept").unwrap(), content);
    let info = s
        .blob("alice", &blob_ref(&content).blob_id)
        .unwrap()
        .unwrap();
    assert_eq!(info.refcount, 1);
}

// ---- on-disk names (hostile ids) ------------------------------------------

/// Grinds content whose SHA-256 starts with `prefix`, as an attacker does
/// offline; two bytes take ~65k hashes.
fn ground_blob(prefix: &[u8]) -> Vec<u8> {
    for i in 0u64..(1 << 24) {
        let content = format!("ground content {i}").into_bytes();
        if Sha256::digest(&content).starts_with(prefix) {
            return content;
        }
    }
    panic!("no content found for the prefix");
}

/// Every file the store has under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out
}

/// A blob id that starts with `/` and then 0x00 once made the store write the
/// blob at `/.<hex>`: outside its directory, at the file system's root.
#[test]
fn a_blob_id_ground_to_an_absolute_path_stays_inside_the_store() {
    let content = ground_blob(b"/\0");
    let id: [u8; 32] = Sha256::digest(&content).into();
    let escaped = PathBuf::from(format!("/.{}", blobs::hex(&id[2..])));
    for scope in [DedupScope::Global, DedupScope::PerOwner] {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            dedup_scope: scope,
            ..StoreLimits::default()
        };
        let s = RecordStore::open(dir.path(), limits).unwrap();
        put_blob(&s, "r1", "alice", &content);
        assert!(!escaped.exists(), "the blob escaped to {escaped:?}");
        assert_eq!(read_all(&s, "r1").unwrap(), content);
        for f in files_under(dir.path()) {
            let name = f.file_name().unwrap().to_str().unwrap();
            assert!(
                !name.contains(".."),
                "{f:?}: a file name derived from raw id bytes"
            );
        }
        drop(s);
        let s = RecordStore::open(dir.path(), limits).unwrap();
        assert_eq!(read_all(&s, "r1").unwrap(), content, "after a restart");
        s.delete("alice", "r1").unwrap();
        assert_eq!(blob_files(dir.path()), 0);
    }
}

/// Honest users were hit too: a blob id with `/` before its first 0x00
/// failed with an I/O error.
#[test]
fn a_blob_id_with_a_slash_before_its_first_zero_uploads() {
    let content = ground_blob(b"a/");
    let dir = tempfile::tempdir().unwrap();
    let s = open_at(dir.path());
    put_blob(&s, "r1", "alice", &content);
    assert_eq!(read_all(&s, "r1").unwrap(), content);
    assert_eq!(blob_files(dir.path()), 1);
}

fn rec_with_header(id: &str, header_len: usize) -> NewRecord {
    NewRecord {
        header: vec![0x42; header_len],
        ..rec(id, "alice", "medical", 3)
    }
}

/// sled keeps large values in `blobs/` under its own directory; the store's
/// blobs once lived there too, and the startup sweep removed whatever it did
/// not know, sled's files included.
#[test]
fn sleds_own_files_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // Values over ~128 KiB go to sled's blob files (a fraction of its
    // segment size); allow headers that large to make sure some do.
    let limits = StoreLimits {
        max_header_size: 512 << 10,
        ..StoreLimits::default()
    };
    let big = 300 << 10;
    {
        let s = RecordStore::open(dir.path(), limits).unwrap();
        for i in 0..8 {
            let mut up = s
                .begin_upload(rec_with_header(&format!("r{i}"), big))
                .unwrap();
            up.append(b"abc").unwrap();
            up.commit(T0).unwrap();
        }
    }
    // The scenario does make sled keep values in its own blob files.
    let sled_blobs = std::fs::read_dir(dir.path().join("metadata/blobs"))
        .unwrap()
        .count();
    assert!(
        sled_blobs > 0,
        "sled stored no blob: the test proves nothing"
    );
    for _ in 0..2 {
        let s = RecordStore::open(dir.path(), limits).unwrap();
        for i in 0..8 {
            let m = s.get(&format!("r{i}")).unwrap().expect("record kept");
            assert_eq!(m.header.len(), big);
            assert_eq!(read_all(&s, &m.record_id).unwrap(), b"abc");
        }
    }
    // Nothing of ours is inside sled's directory.
    for f in files_under(&dir.path().join("metadata")) {
        let name = f.to_string_lossy();
        assert!(
            !name.contains("records") && !name.contains("staging"),
            "{name}"
        );
    }
}

/// A store written in the first layout (sled at the root, `objects/<id>`,
/// `blobs/<hex>` or `blobs/<owner>.<hex>` beside sled's own blob files) opens
/// with every record and blob intact.
#[test]
fn a_first_layout_store_is_moved_and_keeps_everything() {
    for scope in [DedupScope::Global, DedupScope::PerOwner] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let limits = StoreLimits {
            dedup_scope: scope,
            ..StoreLimits::default()
        };
        let big = limits.max_header_size - 1;
        let blob = vec![9u8; 12_000];
        {
            let s = RecordStore::open(root, limits).unwrap();
            put(&s, "plain", "alice", "medical", b"plain bytes");
            put_blob(&s, "deduped", "alice", &blob);
            for i in 0..6 {
                let mut up = s
                    .begin_upload(rec_with_header(&format!("big{i}"), big))
                    .unwrap();
                up.append(b"abc").unwrap();
                up.commit(T0).unwrap();
            }
        }
        // Rewrite the directory into the first layout.
        for (name, path) in layout_entries(&root.join("metadata")) {
            std::fs::rename(path, root.join(name)).unwrap();
        }
        std::fs::remove_dir(root.join("metadata")).unwrap_or(());
        std::fs::create_dir_all(root.join("objects")).unwrap();
        for (name, path) in layout_entries(&root.join("records")) {
            let id = Layout::record_id_of(&name).unwrap();
            std::fs::rename(path, root.join("objects").join(id)).unwrap();
        }
        std::fs::remove_dir(root.join("records")).unwrap();
        std::fs::create_dir_all(root.join("blobs/tmp")).unwrap();
        let key = BlobKey::new(scope, "alice", &blob_ref(&blob).blob_id);
        std::fs::rename(
            root.join("blobs.v2").join(key.file_name()),
            root.join("blobs").join(key.legacy_file_name().unwrap()),
        )
        .unwrap();
        std::fs::write(root.join("blobs/tmp/torn"), b"staged").unwrap();
        for d in ["blobs.v2", "staging"] {
            std::fs::remove_dir(root.join(d)).unwrap();
        }
        assert!(
            root.join("conf").exists(),
            "sled's files are at the root now"
        );

        let s = RecordStore::open(root, limits).unwrap();
        assert_eq!(read_all(&s, "plain").unwrap(), b"plain bytes");
        assert_eq!(read_all(&s, "deduped").unwrap(), blob);
        for i in 0..6 {
            assert_eq!(read_all(&s, &format!("big{i}")).unwrap(), b"abc");
        }
        assert!(!root.join("objects").exists() && !root.join("blobs").exists());
        drop(s);
        let s = RecordStore::open(root, limits).unwrap();
        assert_eq!(read_all(&s, "deduped").unwrap(), blob, "{scope:?}");
    }
}

fn layout_entries(dir: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.path())
        })
        .collect()
}

/// The store in `dir`, opened at once after an earlier handle closed (sled
/// may still hold that one's lock for a moment).
fn open_at(dir: &std::path::Path) -> RecordStore {
    sesphr_domain::reopen::retry_lock(|| RecordStore::open(dir, StoreLimits::default()))
        .expect("the store opens")
}
