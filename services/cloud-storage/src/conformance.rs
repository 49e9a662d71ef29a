//! The [`RecordBackend`] contract as one executable check, so every backend
//! (sled + files today, PostgreSQL + object store later) is held to the
//! same behaviour. Call [`check_backend`] on an empty backend from a test;
//! it panics with the first broken rule.

use sha2::{Digest, Sha256};

use crate::{
    BlobRef, Cursor, DedupScope, DomainError, NewRecord, RecordBackend, RecordMeta, Window,
};

const T0: i64 = 1_700_000_000;

fn rec(id: &str, owner: &str, partition: &str, epoch: u32, size: u64) -> NewRecord {
    NewRecord {
        record_id: id.into(),
        owner_id: owner.into(),
        partition: partition.into(),
        epoch,
        header: format!("header of {id}").into_bytes(),
        declared_size: size,
    }
}

fn put(b: &dyn RecordBackend, new: NewRecord, content: &[u8], now: i64) -> RecordMeta {
    let id = new.record_id.clone();
    let mut up = b
        .begin_upload(new)
        .unwrap_or_else(|e| panic!("begin_upload {id}: {e}"));
    for c in content.chunks(7) {
        up.append(c)
            .unwrap_or_else(|e| panic!("append to {id}: {e}"));
    }
    up.commit(now)
        .unwrap_or_else(|e| panic!("commit {id}: {e}"))
}

/// A record's whole content, read through the backend.
pub fn read_all(b: &dyn RecordBackend, id: &str) -> Result<Vec<u8>, DomainError> {
    let mut out = Vec::new();
    for c in b.chunks(id) {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

fn ids(page: &[RecordMeta]) -> Vec<&str> {
    page.iter().map(|m| m.record_id.as_str()).collect()
}

/// Runs every contract check against `b`, which must hold no records of
/// the owners `conf-alice` and `conf-bob`.
pub fn check_backend(b: &dyn RecordBackend) {
    commits_are_atomic_and_read_back(b);
    ids_are_stored_once(b);
    listings_page_and_filter(b);
    windows_hide_what_they_do_not_cover(b);
    only_the_owner_deletes(b);
    blobs_are_shared_and_freed(b);
    secrets_are_stable(b);
}

fn commits_are_atomic_and_read_back(b: &dyn RecordBackend) {
    let content: Vec<u8> = (0..100u8).collect();
    let mut up = b
        .begin_upload(rec("c-1", "conf-alice", "medical", 3, 100))
        .unwrap();
    up.append(&content[..50]).unwrap();
    assert!(b.get("c-1").unwrap().is_none(), "visible before commit");
    drop(up);
    assert!(
        b.get("c-1").unwrap().is_none(),
        "a dropped upload left a record"
    );
    let meta = put(b, rec("c-1", "conf-alice", "medical", 3, 100), &content, T0);
    assert_eq!(
        (meta.size, meta.created_at, meta.epoch),
        (100, T0, 3),
        "committed metadata"
    );
    assert_eq!(b.get("c-1").unwrap().as_ref(), Some(&meta));
    assert_eq!(read_all(b, "c-1").unwrap(), content);

    let mut short = b
        .begin_upload(rec("c-2", "conf-alice", "medical", 3, 10))
        .unwrap();
    short.append(b"12345").unwrap();
    let err = short.commit(T0).unwrap_err();
    assert!(
        matches!(err, DomainError::Conflict(_)),
        "short upload: {err}"
    );
    assert!(b.get("c-2").unwrap().is_none(), "a short upload committed");
    let err = read_all(b, "c-2").unwrap_err();
    assert!(
        matches!(err, DomainError::Unknown(_)),
        "missing record: {err}"
    );
}

fn ids_are_stored_once(b: &dyn RecordBackend) {
    put(b, rec("d-1", "conf-alice", "medical", 1, 1), b"x", T0);
    let again = b.begin_upload(rec("d-1", "conf-alice", "medical", 1, 1));
    assert!(
        matches!(again, Err(DomainError::Exists(_))),
        "second upload"
    );
    let first = b
        .begin_upload(rec("d-2", "conf-alice", "medical", 1, 1))
        .unwrap();
    let concurrent = b.begin_upload(rec("d-2", "conf-alice", "medical", 1, 1));
    assert!(
        matches!(concurrent, Err(DomainError::Exists(_))),
        "concurrent upload"
    );
    drop(first);
    for id in ["d-1", "d-2"] {
        if b.get(id).unwrap().is_some() {
            b.delete("conf-alice", id).unwrap();
        }
    }
}

fn listings_page_and_filter(b: &dyn RecordBackend) {
    for (id, partition) in [
        ("l-1", "medical"),
        ("l-2", "dental"),
        ("l-3", "medical"),
        ("l-4", "dental"),
        ("l-5", "medical"),
    ] {
        put(b, rec(id, "conf-bob", partition, 1, 2), b"ab", T0);
    }
    let (page, next) = b.list("conf-bob", None, None, 2).unwrap();
    assert_eq!(ids(&page), ["l-1", "l-2"]);
    assert_eq!(next.as_deref(), Some("l-2"));
    let (page, next) = b.list("conf-bob", None, Some("l-2"), 2).unwrap();
    assert_eq!(ids(&page), ["l-3", "l-4"]);
    let (page, last) = b.list("conf-bob", None, next.as_deref(), 2).unwrap();
    assert_eq!((ids(&page), last), (vec!["l-5"], None));
    let (page, _) = b.list("conf-bob", Some("medical"), None, 0).unwrap();
    assert_eq!(ids(&page), ["l-1", "l-3", "l-5"]);
    assert_eq!(
        b.partitions("conf-bob", "", 10).unwrap(),
        ["dental", "medical"]
    );
    assert_eq!(b.partitions("conf-bob", "e", 10).unwrap(), ["medical"]);
    assert_eq!(b.partitions("conf-bob", "", 1).unwrap(), ["dental"]);
    for id in ["l-1", "l-2", "l-3", "l-4", "l-5"] {
        b.delete("conf-bob", id).unwrap();
    }
    assert!(b.list("conf-bob", None, None, 0).unwrap().0.is_empty());
    assert!(b.partitions("conf-bob", "", 10).unwrap().is_empty());
}

fn windows_hide_what_they_do_not_cover(b: &dyn RecordBackend) {
    put(b, rec("w-1", "conf-bob", "medical", 1, 1), b"x", T0);
    put(b, rec("w-2", "conf-bob", "medical", 2, 1), b"x", T0 + 10);
    put(b, rec("w-3", "conf-bob", "medical", 3, 1), b"x", T0 + 20);
    put(b, rec("w-4", "conf-bob", "dental", 2, 1), b"x", T0 + 20);
    let window = |epoch_min, epoch_max, not_before| Window {
        epoch_min,
        epoch_max,
        not_before,
    };
    let windows = vec![
        ("dental".to_owned(), window(0, None, 0)),
        ("medical".to_owned(), window(2, Some(2), 0)),
    ];
    let (page, next) = b.list_visible("conf-bob", &windows, None, 0).unwrap();
    assert_eq!((ids(&page), next), (vec!["w-4", "w-2"], None));
    let late = vec![("medical".to_owned(), window(0, None, T0 + 5))];
    let (page, _) = b.list_visible("conf-bob", &late, None, 0).unwrap();
    assert_eq!(ids(&page), ["w-2", "w-3"]);
    let (page, next) = b.list_visible("conf-bob", &late, None, 1).unwrap();
    assert_eq!(ids(&page), ["w-2"]);
    let next = next.expect("a further visible record follows");
    assert_eq!(
        next,
        Cursor {
            partition: "medical".into(),
            record_id: "w-3".into()
        }
    );
    let (page, next) = b.list_visible("conf-bob", &late, Some(&next), 1).unwrap();
    assert_eq!((ids(&page), next), (vec!["w-3"], None));
    for id in ["w-1", "w-2", "w-3", "w-4"] {
        b.delete("conf-bob", id).unwrap();
    }
}

fn only_the_owner_deletes(b: &dyn RecordBackend) {
    put(b, rec("x-1", "conf-alice", "medical", 1, 3), b"abc", T0);
    let err = b.delete("conf-bob", "x-1").unwrap_err();
    assert!(matches!(err, DomainError::NotEntitled(_)), "{err}");
    assert!(
        !err.to_string().contains("conf-alice"),
        "the refusal names the owner: {err}"
    );
    assert_eq!(read_all(b, "x-1").unwrap(), b"abc");
    let err = b.delete("conf-alice", "x-nothing").unwrap_err();
    assert!(matches!(err, DomainError::Unknown(_)), "{err}");
    let meta = b.delete("conf-alice", "x-1").unwrap();
    assert_eq!(meta.record_id, "x-1");
    assert!(b.get("x-1").unwrap().is_none());
}

fn blobs_are_shared_and_freed(b: &dyn RecordBackend) {
    let content = vec![0x5a; 20_000];
    let blob = BlobRef {
        blob_id: Sha256::digest(&content).into(),
        wrapped_key: vec![0xaa; 60],
    };
    let id = blob.blob_id;
    assert!(b.blob("conf-alice", &id).unwrap().is_none());

    let mut bad = b
        .begin_blob_upload(
            rec("b-0", "conf-alice", "medical", 1, 3),
            BlobRef {
                blob_id: [7; 32],
                wrapped_key: vec![0xaa; 60],
            },
        )
        .unwrap();
    bad.append(b"abc").unwrap();
    let err = bad.commit(T0).unwrap_err();
    assert!(
        matches!(err, DomainError::Malformed(_)),
        "wrong hash: {err}"
    );
    assert!(b.get("b-0").unwrap().is_none());

    let mut up = b
        .begin_blob_upload(
            rec("b-1", "conf-alice", "medical", 1, content.len() as u64),
            blob.clone(),
        )
        .unwrap();
    for c in content.chunks(4096) {
        up.append(c).unwrap();
    }
    let meta = up.commit(T0).unwrap();
    assert_eq!(meta.blob.as_ref(), Some(&blob));
    let info = b.blob("conf-alice", &id).unwrap().expect("blob stored");
    assert_eq!((info.size, info.refcount), (content.len() as u64, 1));
    assert!(info.leaf_count > 0);
    assert_eq!(read_all(b, "b-1").unwrap(), content);

    let linked = b
        .link_blob(rec("b-2", "conf-alice", "dental", 1, 0), blob.clone(), T0)
        .unwrap();
    assert_eq!(linked.size, content.len() as u64);
    assert_eq!(read_all(b, "b-2").unwrap(), content);
    assert_eq!(b.blob("conf-alice", &id).unwrap().unwrap().refcount, 2);
    let seen_by_bob = b.blob("conf-bob", &id).unwrap().is_some();
    assert_eq!(
        seen_by_bob,
        b.limits().dedup_scope == DedupScope::Global,
        "dedup scope"
    );

    b.delete("conf-alice", "b-1").unwrap();
    assert_eq!(read_all(b, "b-2").unwrap(), content, "blob freed too early");
    b.delete("conf-alice", "b-2").unwrap();
    assert!(
        b.blob("conf-alice", &id).unwrap().is_none(),
        "blob not freed"
    );
    let gone = b.link_blob(rec("b-3", "conf-alice", "medical", 1, 0), blob, T0);
    assert!(
        matches!(gone, Err(DomainError::Unknown(_))),
        "link to a freed blob"
    );
}

fn secrets_are_stable(b: &dyn RecordBackend) {
    let one = b.secret("conformance-one").unwrap();
    assert_eq!(*one, *b.secret("conformance-one").unwrap());
    assert_ne!(*one, *b.secret("conformance-two").unwrap());
}
