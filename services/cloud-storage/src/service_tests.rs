//! The domain rules, driven without tonic: access questions go to a real
//! AccessPolicy store in-process, records to a real sled store.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream;
use sesphr::rpc::Rpc;
use sesphr_access_policy::{Action, AuditEvent, AuditFilter, CheckQuery, Grant, PolicyStore};
use sesphr_crypto::HeaderDraft;
use sesphr_crypto::record::DemKeySource;
use sesphr_identity::{Caller, PartitionName, RecordId, Role, Service, UserId};
use sesphr_mesh::unix_now;
use sha2::{Digest, Sha256};

use super::*;
use crate::{RecordStore, StoreLimits};

const TD: &str = "sesphr.local";
const SERVICE_ACTOR: &str = "service/cloud-storage";

/// AccessPolicy's own store answering CloudStorage's questions, the way
/// its gRPC service would.
struct StoreGate(Arc<PolicyStore>);

impl AccessGate for StoreGate {
    async fn check(&self, grantee: &Caller, s: GateSubject<'_>) -> Result<Verdict, DomainError> {
        let (role, id) = grantee
            .as_user()
            .ok_or_else(|| DomainError::NotEntitled(format!("{grantee} is not a user")))?;
        let query = CheckQuery {
            owner_id: s.owner_id.into(),
            partition: s.partition.into(),
            grantee_id: id.to_string(),
            grantee_role: role,
            epoch: s.epoch,
            record_created_at: s.record_created_at,
            record_id: (!s.record_id.is_empty()).then(|| s.record_id.to_owned()),
            action: match s.action {
                GateAction::Read => Action::Read,
                GateAction::List => Action::List,
            },
        };
        let d = self.0.check(&query, SERVICE_ACTOR, unix_now())?;
        Ok(Verdict {
            allowed: d.allowed,
            caller_reason: d.caller_reason,
            window: d.grant.map(|g| Window {
                epoch_min: g.epoch_min,
                epoch_max: g.epoch_max,
                not_before: g.not_before,
            }),
        })
    }

    async fn audit(&self, caller: &Caller, note: AuditNote<'_>) {
        let action = if note.outcome == "denied" {
            format!("denied:{}", note.rpc.method())
        } else {
            note.rpc.method().to_owned()
        };
        let event = AuditEvent {
            actor: SERVICE_ACTOR.into(),
            action: action.parse().expect("an action of the table"),
            owner_id: note.owner_id.into(),
            partition: note.partition.into(),
            subject: caller.to_string(),
            record_id: note.record_id.into(),
            outcome: note.outcome.parse().expect("a known outcome"),
            detail: note.detail.into(),
        };
        self.0.record_event(event, unix_now()).unwrap();
    }
}

/// A gate whose AccessPolicy cannot be reached.
struct Unreachable;

impl AccessGate for Unreachable {
    async fn check(&self, _: &Caller, _: GateSubject<'_>) -> Result<Verdict, DomainError> {
        Err(DomainError::Unavailable("access policy is down".into()))
    }
    async fn audit(&self, _: &Caller, _: AuditNote<'_>) {}
}

struct World {
    _dir: tempfile::TempDir,
    records: Arc<RecordStore>,
    policy: Arc<PolicyStore>,
    cs: CloudStorage<StoreGate>,
}

fn world_with(settings: Settings) -> World {
    let dir = tempfile::tempdir().unwrap();
    let records =
        Arc::new(RecordStore::open(&dir.path().join("cs"), StoreLimits::default()).unwrap());
    let policy = Arc::new(PolicyStore::open(&dir.path().join("ap")).unwrap());
    let cs = CloudStorage::new(
        records.clone(),
        StoreGate(policy.clone()),
        TD.into(),
        settings,
    )
    .unwrap();
    World {
        _dir: dir,
        records,
        policy,
        cs,
    }
}

fn world() -> World {
    world_with(Settings::default())
}

fn patient(id: &str) -> Caller {
    Caller::Patient(UserId::parse(id).unwrap())
}

fn doctor(id: &str) -> Caller {
    Caller::Practitioner {
        role: Role::Doctor,
        id: UserId::parse(id).unwrap(),
    }
}

fn rid(id: &str) -> RecordId {
    RecordId::parse(id).unwrap()
}

fn header(owner: &str, record_id: &str, partition: &str, epoch: u32, dedup: bool) -> Vec<u8> {
    let mut rng = rand::rng();
    let pk = sesphr_crypto::SecretKey::generate(&mut rng).public_key();
    let (capsule, _) = sesphr_crypto::encapsulate(&mut rng, &pk);
    let h = HeaderDraft::new(
        &mut rng,
        record_id.as_bytes(),
        owner.as_bytes(),
        partition,
        epoch,
        capsule,
    )
    .unwrap();
    let h = if dedup {
        h.with_key_source(DemKeySource::External)
    } else {
        h
    };
    h.sign(&sesphr_crypto::SigningKey::generate(&mut rng), b"")
        .to_bytes()
}

fn put_header(owner: &str, id: &str, partition: &str, epoch: u32, size: u64) -> PutHeader {
    PutHeader {
        record_id: rid(id),
        partition: PartitionName::parse(partition).unwrap(),
        epoch,
        record_header: header(owner, id, partition, epoch, false),
        ciphertext_size: size,
        dedup: None,
    }
}

type Chunks = stream::Iter<std::vec::IntoIter<Result<Bytes, &'static str>>>;

fn chunks(parts: &[&[u8]]) -> Chunks {
    let items: Vec<_> = parts
        .iter()
        .map(|p| Ok(Bytes::copy_from_slice(p)))
        .collect();
    stream::iter(items)
}

async fn put<G: AccessGate>(
    cs: &CloudStorage<G>,
    caller: &Caller,
    put: PutHeader,
    parts: &[&[u8]],
) -> Result<RecordMeta, PutError<&'static str>> {
    cs.put_record(caller, put, chunks(parts)).await
}

/// Stores a record as if uploaded at `created_at` (the domain stamps the
/// real clock; grant windows need records from before a grant).
fn stored(w: &World, id: &str, owner: &str, partition: &str, epoch: u32, created_at: i64) {
    let mut up = w
        .records
        .begin_upload(crate::NewRecord {
            record_id: id.into(),
            owner_id: owner.into(),
            partition: partition.into(),
            epoch,
            header: b"h".to_vec(),
            declared_size: 1,
        })
        .unwrap();
    up.append(b"x").unwrap();
    up.commit(created_at).unwrap();
}

fn grant(
    w: &World,
    owner: &str,
    partition: &str,
    grantee: &str,
    epochs: (u32, Option<u32>),
    not_before: i64,
) {
    let g = Grant {
        owner_id: owner.into(),
        partition: partition.into(),
        grantee_id: grantee.into(),
        grantee_role: Role::Doctor,
        epoch_min: epochs.0,
        epoch_max: epochs.1,
        not_before,
        expires_at: None,
        granted_at: 0,
    };
    w.policy
        .grant(g, &format!("patient/{owner}"), unix_now())
        .unwrap();
}

async fn read<G: AccessGate>(
    cs: &CloudStorage<G>,
    caller: &Caller,
    id: &str,
) -> Result<Vec<u8>, DomainError> {
    let r = cs.get_record(caller, &rid(id)).await?;
    let mut out = Vec::new();
    for c in r.chunks {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

fn audit_of(w: &World, owner: &str) -> Vec<(String, String, String)> {
    w.policy
        .audit(&AuditFilter {
            owner_id: Some(owner.into()),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.subject, e.outcome))
        .collect()
}

fn assert_refused<T: std::fmt::Debug>(
    r: Result<T, DomainError>,
    want: fn(&DomainError) -> bool,
    text: &str,
) {
    let err = r.expect_err("refused");
    assert!(want(&err), "unexpected error kind: {err:?}");
    assert!(err.to_string().contains(text), "{err} lacks {text:?}");
}

fn refused<T>(r: Result<T, PutError<&'static str>>) -> DomainError {
    match r {
        Err(PutError::Refused(e)) => e,
        Err(PutError::Stream(e)) => panic!("stream error {e}"),
        Ok(_) => panic!("accepted"),
    }
}

/// Alice stores the one-byte record `r1`.
async fn alice_stores_r1(w: &World) {
    let h = put_header("alice", "r1", "medical", 0, 1);
    put(&w.cs, &patient("alice"), h, &[b"x"]).await.unwrap();
}

/// Why a one-byte upload of `h` by `caller` was refused.
async fn refusal_of(w: &World, caller: &Caller, h: PutHeader) -> DomainError {
    refused(put(&w.cs, caller, h, &[b"x"]).await)
}

// ---- uploads ---------------------------------------------------------------

#[tokio::test]
async fn an_upload_streams_commits_and_reads_back_for_its_owner() {
    let w = world();
    let alice = patient("alice");
    let meta = put(
        &w.cs,
        &alice,
        put_header("alice", "r1", "medical", 2, 6),
        &[b"abc", b"def"],
    )
    .await
    .unwrap();
    assert_eq!(
        (meta.owner_id.as_str(), meta.epoch, meta.size),
        ("alice", 2, 6)
    );
    assert_eq!(read(&w.cs, &alice, "r1").await.unwrap(), b"abcdef");
}

#[tokio::test]
async fn only_patients_upload_and_only_under_their_own_name() {
    let w = world();
    let err = refusal_of(&w, &doctor("bob"), put_header("bob", "r1", "medical", 0, 1)).await;
    assert!(matches!(err, DomainError::NotEntitled(_)), "{err}");
    // Mallory's upload of a header naming alice: the cloud's metadata
    // would lie about whose record it is.
    let err = refusal_of(
        &w,
        &patient("mallory"),
        put_header("alice", "r1", "medical", 0, 1),
    )
    .await;
    assert!(err.to_string().contains("names owner \"alice\""), "{err}");
    assert!(w.records.get("r1").unwrap().is_none());
}

#[tokio::test]
async fn the_header_must_name_the_uploads_record_partition_and_epoch() {
    let w = world();
    let alice = patient("alice");
    let mut h = put_header("alice", "r1", "medical", 0, 1);
    h.record_header = header("alice", "r2", "medical", 0, false);
    let err = refusal_of(&w, &alice, h).await;
    assert!(err.to_string().contains("names record \"r2\""), "{err}");

    let mut h = put_header("alice", "r1", "medical", 0, 1);
    h.record_header = header("alice", "r1", "dental", 0, false);
    let err = refusal_of(&w, &alice, h).await;
    assert!(
        err.to_string().contains("names partition \"dental\""),
        "{err}"
    );

    // Epoch rule: the record is encrypted under the epoch it declares.
    let mut h = put_header("alice", "r1", "medical", 3, 1);
    h.record_header = header("alice", "r1", "medical", 2, false);
    let err = refusal_of(&w, &alice, h).await;
    assert!(
        err.to_string()
            .contains("names epoch \"2\" but the upload is for \"3\""),
        "{err}"
    );

    let mut h = put_header("alice", "r1", "medical", 0, 1);
    h.record_header = header("alice", "r1", "medical", 0, true);
    let err = refusal_of(&w, &alice, h).await;
    assert!(err.to_string().contains("key_source 0"), "{err}");

    for bad in [vec![], vec![7; StoreLimits::default().max_header_size + 1]] {
        let mut h = put_header("alice", "r1", "medical", 0, 1);
        h.record_header = bad;
        let err = refusal_of(&w, &alice, h).await;
        assert!(
            err.to_string().contains("record_header must be 1 to"),
            "{err}"
        );
    }
    assert!(w.records.get("r1").unwrap().is_none());
}

#[tokio::test]
async fn oversized_chunks_and_broken_streams_leave_nothing() {
    let w = world();
    let alice = patient("alice");
    let big = vec![0u8; StoreLimits::default().max_chunk_size + 1];
    let size = big.len() as u64;
    let err = refused(
        put(
            &w.cs,
            &alice,
            put_header("alice", "r1", "medical", 0, size),
            &[&big],
        )
        .await,
    );
    assert!(err.to_string().contains("exceeds"), "{err}");

    let broken = stream::iter(vec![Ok(Bytes::from_static(b"ab")), Err("connection reset")]);
    let r =
        w.cs.put_record(&alice, put_header("alice", "r1", "medical", 0, 4), broken)
            .await;
    assert!(matches!(r, Err(PutError::Stream("connection reset"))));

    let err = refused(
        put(
            &w.cs,
            &alice,
            put_header("alice", "r1", "medical", 0, 4),
            &[b"ab"],
        )
        .await,
    );
    assert!(
        matches!(err, DomainError::Conflict(_)),
        "short upload: {err}"
    );
    assert!(w.records.get("r1").unwrap().is_none());
    // The id is free again.
    alice_stores_r1(&w).await;
}

// ---- reading and listing: owner or grant window ------------------------------

#[tokio::test]
async fn a_grantee_reads_what_its_grant_window_covers_and_nothing_else() {
    let w = world();
    let now = unix_now();
    stored(&w, "in", "alice", "medical", 1, now - 100);
    stored(&w, "old", "alice", "medical", 1, now - 5000);
    stored(&w, "later-epoch", "alice", "medical", 3, now - 100);
    stored(&w, "dental", "alice", "dental", 1, now - 100);
    grant(&w, "alice", "medical", "bob", (1, Some(2)), now - 1000);
    let bob = doctor("bob");
    assert_eq!(read(&w.cs, &bob, "in").await.unwrap(), b"x");
    for id in ["old", "later-epoch", "dental"] {
        assert_refused(
            read(&w.cs, &bob, id).await,
            |e| matches!(e, DomainError::NotEntitled(_)),
            "may not read record",
        );
    }
    // The owner reads everything; another patient nothing.
    for id in ["in", "old", "later-epoch", "dental"] {
        read(&w.cs, &patient("alice"), id).await.unwrap();
        assert_refused(
            read(&w.cs, &patient("carol"), id).await,
            |e| matches!(e, DomainError::NotEntitled(_)),
            "no grant covers it",
        );
    }
    assert_refused(
        read(&w.cs, &bob, "missing").await,
        |e| matches!(e, DomainError::Unknown(_)),
        "no record missing",
    );
}

#[tokio::test]
async fn without_an_answer_from_access_policy_a_grantee_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let records = Arc::new(RecordStore::open(dir.path(), StoreLimits::default()).unwrap());
    let cs =
        CloudStorage::new(records.clone(), Unreachable, TD.into(), Settings::default()).unwrap();
    let alice = patient("alice");
    put(
        &cs,
        &alice,
        put_header("alice", "r1", "medical", 0, 1),
        &[b"x"],
    )
    .await
    .unwrap();
    assert_refused(
        read(&cs, &doctor("bob"), "r1").await,
        |e| matches!(e, DomainError::Unavailable(_)),
        "down",
    );
    let q = ListQuery {
        owner: Some(UserId::parse("alice").unwrap()),
        ..Default::default()
    };
    assert_refused(
        cs.list_records(&doctor("bob"), q).await,
        |e| matches!(e, DomainError::Unavailable(_)),
        "down",
    );
    // The owner never needs AccessPolicy.
    assert_eq!(read(&cs, &alice, "r1").await.unwrap(), b"x");
}

fn listed(l: &Listing) -> Vec<&str> {
    l.records.iter().map(|m| m.record_id.as_str()).collect()
}

fn alices(page_size: u32, page_token: String) -> ListQuery {
    ListQuery {
        owner: Some(UserId::parse("alice").unwrap()),
        partition: None,
        page_size,
        page_token,
    }
}

#[tokio::test]
async fn a_grantee_lists_only_covered_records_page_by_page() {
    let w = world();
    let now = unix_now();
    for (id, partition, epoch, age) in [
        ("a1", "dental", 1, 100),
        ("a2", "dental", 1, 100),
        ("m1", "medical", 1, 100),
        ("m2", "medical", 5, 100),
        ("m3", "medical", 1, 5000),
        ("m4", "medical", 2, 100),
        ("x1", "xrays", 1, 100),
    ] {
        stored(&w, id, "alice", partition, epoch, now - age);
    }
    grant(&w, "alice", "dental", "bob", (0, None), 0);
    grant(&w, "alice", "medical", "bob", (1, Some(2)), now - 1000);
    let bob = doctor("bob");
    let all =
        w.cs.list_records(&bob, alices(0, String::new()))
            .await
            .unwrap();
    assert_eq!(listed(&all), ["a1", "a2", "m1", "m4"]);
    assert!(all.next_page_token.is_empty());

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = w.cs.list_records(&bob, alices(1, token)).await.unwrap();
        seen.extend(listed(&page).into_iter().map(str::to_owned));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["a1", "a2", "m1", "m4"]);

    // One partition only; and no grant, no records.
    let q = ListQuery {
        partition: Some(PartitionName::parse("medical").unwrap()),
        ..alices(0, String::new())
    };
    assert_eq!(
        listed(&w.cs.list_records(&bob, q).await.unwrap()),
        ["m1", "m4"]
    );
    let carol =
        w.cs.list_records(&doctor("carol"), alices(0, String::new()))
            .await
            .unwrap();
    assert!(carol.records.is_empty() && carol.next_page_token.is_empty());

    // The owner sees all of hers, by default (no owner named) too.
    let own =
        w.cs.list_records(&patient("alice"), ListQuery::default())
            .await
            .unwrap();
    assert_eq!(own.records.len(), 7);
}

#[tokio::test]
async fn page_tokens_open_only_for_the_listing_they_came_from() {
    let w = world();
    let now = unix_now();
    for id in ["a1", "a2"] {
        stored(&w, id, "alice", "dental", 1, now);
    }
    grant(&w, "alice", "dental", "bob", (0, None), 0);
    grant(&w, "alice", "dental", "carol", (0, None), 0);
    let page =
        w.cs.list_records(&doctor("bob"), alices(1, String::new()))
            .await
            .unwrap();
    assert!(!page.next_page_token.is_empty());
    let stolen =
        w.cs.list_records(&doctor("carol"), alices(1, page.next_page_token.clone()))
            .await;
    assert_refused(stolen, |e| matches!(e, DomainError::Malformed(_)), "");
    let page2 =
        w.cs.list_records(&doctor("bob"), alices(1, page.next_page_token))
            .await
            .unwrap();
    assert_eq!(listed(&page2), ["a2"]);
}

#[tokio::test]
async fn listing_needs_a_user_and_a_bounded_page() {
    let w = world();
    assert_refused(
        w.cs.list_records(&Caller::Service(Service::Srs), ListQuery::default())
            .await,
        |e| matches!(e, DomainError::NotEntitled(_)),
        "only users list records",
    );
    assert_refused(
        w.cs.list_records(
            &patient("alice"),
            ListQuery {
                page_size: 100_000,
                ..Default::default()
            },
        )
        .await,
        |e| matches!(e, DomainError::Malformed(_)),
        "page_size 100000 exceeds 1000",
    );
}

// ---- deleting: owner only --------------------------------------------------------

#[tokio::test]
async fn only_the_owner_deletes_and_an_attempt_is_audited_for_the_owner() {
    let w = world();
    let alice = patient("alice");
    alice_stores_r1(&w).await;
    assert_refused(
        w.cs.delete_record(&patient("mallory"), &rid("r1")).await,
        |e| matches!(e, DomainError::NotEntitled(_)),
        "does not belong to mallory",
    );
    let denied = format!("denied:{}", Rpc::DeleteRecord.method());
    assert!(
        audit_of(&w, "alice").contains(&(denied, "patient/mallory".into(), "denied".into())),
        "{:?}",
        audit_of(&w, "alice")
    );
    assert_refused(
        w.cs.delete_record(&doctor("bob"), &rid("r1")).await,
        |e| matches!(e, DomainError::NotEntitled(_)),
        "does not own records",
    );
    assert_eq!(read(&w.cs, &alice, "r1").await.unwrap(), b"x");
    w.cs.delete_record(&alice, &rid("r1")).await.unwrap();
    assert_refused(
        read(&w.cs, &alice, "r1").await,
        |e| matches!(e, DomainError::Unknown(_)),
        "no record r1",
    );
}

// ---- deduplication: proof of ownership and its budgets -----------------------------

const BLOB: [u8; 9000] = [0x42; 9000];

fn blob_ref() -> BlobRef {
    BlobRef {
        blob_id: Sha256::digest(BLOB).into(),
        wrapped_key: vec![0xaa; 60],
    }
}

fn dedup_header(owner: &str, id: &str, proof: Option<Vec<u8>>) -> PutHeader {
    PutHeader {
        record_id: rid(id),
        partition: PartitionName::parse("medical").unwrap(),
        epoch: 0,
        record_header: header(owner, id, "medical", 0, true),
        ciphertext_size: BLOB.len() as u64,
        dedup: Some(Dedup {
            blob: blob_ref(),
            ownership_proof: proof,
        }),
    }
}

/// Alice uploads [`BLOB`]; returns its id.
async fn alice_stores_the_blob(w: &World) -> [u8; 32] {
    put(
        &w.cs,
        &patient("alice"),
        dedup_header("alice", "a1", None),
        &[&BLOB],
    )
    .await
    .unwrap();
    blob_ref().blob_id
}

/// `caller` draws a challenge for [`BLOB`] and answers it correctly.
async fn right_proof(w: &World, caller: &Caller) -> Vec<u8> {
    let offer = w.cs.query_blob(caller, blob_ref().blob_id).await.unwrap();
    let challenge = offer.expect("the blob is stored").challenge;
    sesphr_dedup::prove(&challenge, &BLOB).unwrap().to_bytes()
}

#[tokio::test]
async fn a_proven_blob_is_linked_without_upload_and_a_failed_proof_is_audited() {
    let w = world();
    let id = alice_stores_the_blob(&w).await;
    let bob = patient("bob");

    // Answering before asking: nothing to answer.
    let err = refused(put(&w.cs, &bob, dedup_header("bob", "b1", Some(vec![1])), &[]).await);
    assert!(matches!(err, DomainError::Conflict(_)), "{err}");

    let offer = w.cs.query_blob(&bob, id).await.unwrap().expect("stored");
    assert_eq!(offer.blob_size, BLOB.len() as u64);
    let partial = [&BLOB[..4000], &[0u8; 5000][..]].concat();
    let wrong = sesphr_dedup::prove(&offer.challenge, &partial)
        .unwrap()
        .to_bytes();
    let err = refused(put(&w.cs, &bob, dedup_header("bob", "b1", Some(wrong)), &[]).await);
    assert!(
        err.to_string().contains("proof of ownership failed"),
        "{err}"
    );
    let denied = format!("denied:{}", Rpc::PutRecord.method());
    assert!(audit_of(&w, "bob").contains(&(denied, "patient/bob".into(), "denied".into())));
    // The challenge was single-use.
    let right = sesphr_dedup::prove(&offer.challenge, &BLOB)
        .unwrap()
        .to_bytes();
    let err = refused(put(&w.cs, &bob, dedup_header("bob", "b1", Some(right)), &[]).await);
    assert!(matches!(err, DomainError::Conflict(_)), "{err}");

    let right = right_proof(&w, &bob).await;
    // No chunks may follow a proof.
    let err = refused(
        put(
            &w.cs,
            &bob,
            dedup_header("bob", "b1", Some(right.clone())),
            &[b"x"],
        )
        .await,
    );
    assert!(err.to_string().contains("no chunks may follow"), "{err}");
    let right = right_proof(&w, &bob).await;
    let meta = put(&w.cs, &bob, dedup_header("bob", "b1", Some(right)), &[])
        .await
        .unwrap();
    assert_eq!(meta.size, BLOB.len() as u64);
    assert_eq!(read(&w.cs, &bob, "b1").await.unwrap(), BLOB);
    assert_eq!(w.records.blob("bob", &id).unwrap().unwrap().refcount, 2);
    // Every probe was audited under the prober.
    let probes = audit_of(&w, "bob")
        .iter()
        .filter(|e| e.2 == "probe")
        .count();
    assert_eq!(probes, 3);
}

#[tokio::test]
async fn challenges_cannot_be_redrawn_beyond_the_budget() {
    let w = world_with(Settings {
        challenges: ChallengePolicy {
            max_per_window: 2,
            ..Default::default()
        },
        ..Default::default()
    });
    let id = alice_stores_the_blob(&w).await;
    let bob = patient("bob");
    for _ in 0..2 {
        // Asking again while one is open returns the same challenge:
        // waiting gives no new draw.
        let first = w.cs.query_blob(&bob, id).await.unwrap().unwrap().challenge;
        let again = w.cs.query_blob(&bob, id).await.unwrap().unwrap().challenge;
        assert_eq!(first.to_bytes(), again.to_bytes());
        let wrong = sesphr_dedup::prove(&first, &[0u8; 9000])
            .unwrap()
            .to_bytes();
        refused(put(&w.cs, &bob, dedup_header("bob", "b1", Some(wrong)), &[]).await);
    }
    assert_refused(
        w.cs.query_blob(&bob, id).await,
        |e| matches!(e, DomainError::UsedUp(_)),
        "ownership challenges for this blob were issued to you",
    );
    // Someone else's budget is their own.
    w.cs.query_blob(&patient("carol"), id)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn blob_probes_are_rate_limited_per_caller() {
    let w = world_with(Settings {
        blob_query_rate: 0.25,
        ..Default::default()
    });
    let id = blob_ref().blob_id;
    type Refusal = (fn(&DomainError) -> bool, &'static str);
    let used_up: Refusal = (
        |e| matches!(e, DomainError::UsedUp(_)),
        "rate limit reached for patient/bob",
    );
    let not_owner: Refusal = (
        |e| matches!(e, DomainError::NotEntitled(_)),
        "does not own records",
    );
    // A burst of one at this rate, per caller.
    for (who, refusal) in [
        (patient("bob"), None),
        (patient("bob"), Some(used_up)),
        (patient("carol"), None),
        (doctor("dave"), Some(not_owner)),
    ] {
        match (w.cs.query_blob(&who, id).await, refusal) {
            (Ok(offer), None) => assert!(offer.is_none(), "{who}: nothing is stored"),
            (Err(e), Some((kind, text))) => {
                assert!(kind(&e) && e.to_string().contains(text), "{who}: {e:?}")
            }
            (r, _) => panic!("{who}: unexpected {r:?}"),
        }
    }
}

// ---- the backend contract ---------------------------------------------------------------

#[test]
fn the_sled_backend_meets_the_contract() {
    for scope in [crate::DedupScope::Global, crate::DedupScope::PerOwner] {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits {
            dedup_scope: scope,
            ..Default::default()
        };
        let store = RecordStore::open(dir.path(), limits).unwrap();
        crate::conformance::check_backend(&store);
    }
}
