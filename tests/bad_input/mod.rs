//! Malformed and hostile requests, table-driven, one table per service
//! (`cloud_storage`, `srs`, `access_policy`) and one runner for all of them:
//! each case is refused with the right status code and a message that says
//! why, the services stay up (health is checked after every case, and an
//! honest round trip after the table), and nothing changes for the victim —
//! her records, grants, kfrags (her grantee can still read) and audit trail
//! (only denials are added) are as before. `limits` drives the per-identity
//! rate and concurrency limits.

// Messages gain optional fields over time; `..Default::default()` keeps the
// cases meaning what they say when they do.
#![allow(clippy::needless_update)]

mod access_policy;
mod cloud_storage;
mod limits;
mod srs;

use crate::common;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use common::{Sandbox, dedup_header, download, upload};
use sesphr::proto;
use sesphr_client::{self as client, Patient, Practitioner, raw::MeshClients};
use sesphr_crypto::{self as crypto, PublicKey};
use sesphr_identity::{Identity, Role};
use tonic::{Code, Status};

/// What a case must produce.
#[derive(Debug)]
enum Expect {
    /// Refused with this code, the message containing this text.
    Err(Code, &'static str),
    /// Accepted (harmlessly), the summary containing this text.
    Ok(&'static str),
}

use Expect::{Err as Refused, Ok as Accepted};

impl Expect {
    fn is_met_by(&self, got: &Result<String, Status>) -> bool {
        match (self, got) {
            (Refused(code, text), Err(st)) => st.code() == *code && st.message().contains(text),
            (Accepted(text), Ok(summary)) => summary.contains(text),
            _ => false,
        }
    }
}

/// A call's outcome: a short summary of the answer, or the refusal.
type Outcome = Result<String, Status>;

type Call<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One row of a table. The call is a future built with the row and run
/// only when the runner reaches it, so rows see the effects of the rows
/// before them (as the dedup challenge cases rely on).
struct Case<'a> {
    name: &'static str,
    expect: Expect,
    call: Call<'a>,
}

fn case<'a>(
    name: &'static str,
    expect: Expect,
    call: impl Future<Output = Outcome> + Send + 'a,
) -> Case<'a> {
    Case {
        name,
        expect,
        call: Box::pin(call),
    }
}

/// Awaits a raw gRPC call; the summary of an answer is its Debug text.
async fn answered<T: std::fmt::Debug>(call: impl Future<Output = Result<T, Status>>) -> Outcome {
    call.await.map(|v| format!("{v:?}"))
}

/// What bob reads of alice's medical record (the honest round trip).
const MEDICAL: &[u8] = b"blood type 0+";

/// The mesh under attack: a victim (alice) with records on three
/// partitions, a live grant (bob, medical), an expired one (dave,
/// personal), a deduplicated record with a captured proof of ownership,
/// and the attackers' clients.
struct World {
    s: Sandbox,
    alice: Patient,
    bob: Practitioner,
    carol: Practitioner,
    dave: Practitioner,
    mallory: Patient,
    eve: Practitioner,
    operator: MeshClients,
    /// alice's name under a certificate of another trust domain.
    foreign_td: MeshClients,
    srs_url: String,
    ca_pem: String,
    token: String,
    medical: sesphr_client::Record,
    insurance: sesphr_client::Record,
    personal: sesphr_client::Record,
    /// The deduplicated record, its blob and a proof alice already used.
    scan: sesphr_client::Record,
    blob_id: Vec<u8>,
    captured_proof: Vec<u8>,
    /// Kfrags alice really signed, for bob: valid bytes in the wrong hands.
    alice_med_pk: Vec<u8>,
    kfrags: Vec<Vec<u8>>,
    long_id: String,
    objects_dir: PathBuf,
}

/// What must not change: the victim's records and every grant.
#[derive(Debug, PartialEq)]
struct Snapshot {
    records: Vec<(sesphr_identity::RecordId, u64, i64, Vec<u8>)>,
    alice_grants: (Vec<sesphr_client::Grant>, Vec<sesphr_client::Grant>),
    bob_received: Vec<sesphr_client::Grant>,
    mallory_records: usize,
}

/// Audit actions that change state (the attack must add none for alice).
fn is_mutation(action: &str) -> bool {
    matches!(
        action,
        "grant" | "revoke" | "sesphr.v1.SrsNode/PutKfrag" | "sesphr.v1.SrsNode/DeleteKfrags"
    )
}

impl World {
    async fn build() -> World {
        let s = Sandbox::start().await;
        let alice = s.patient("alice").await;
        let bob = s.practitioner("bob", Role::Doctor).await;
        let carol = s.practitioner("carol", Role::Insurer).await;
        let dave = s.practitioner("dave", Role::Friend).await;
        let mallory = s.patient("mallory").await;
        let eve = s.practitioner("eve", Role::Nurse).await;

        let medical = upload(&alice, "medical", MEDICAL).await;
        let insurance = upload(&alice, "insurance", b"policy 42").await;
        let personal = upload(&alice, "personal", b"born 1970").await;
        alice
            .grant("medical", "bob", Default::default())
            .await
            .unwrap();
        // dave's grant expires in two seconds; the cases run after that.
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
        assert_eq!(download(&bob, &medical.record_id).await.unwrap(), MEDICAL);
        // A deduplicated record, then a second one linked by a proof of
        // ownership that an eavesdropper captures for replaying.
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
        let (blob_id, captured_proof) = ownership_proof(&alice.clients, &shared_scan).await;
        assert_eq!(blob_id, scan.blob_id);
        cloud_storage::put(
            &alice.clients,
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

        let alice_master = client::Profile::load(&s.home("alice"))
            .unwrap()
            .master_secret()
            .unwrap();
        let bob_pk = alice
            .clients
            .srs
            .clone()
            .get_user(proto::GetUserRequest {
                user_id: "bob".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .pre_public_key;
        let bob_pk = PublicKey::from_bytes(&bob_pk).unwrap();
        let (alice_med_sk, alice_med_pk) = alice_master.partition_keys("medical", 0).unwrap();
        // Alice's real 2-of-3 shares for bob, as her client makes them.
        let kfrags = crypto::generate_node_kfrags(
            &mut rand::rng(),
            &alice_med_sk,
            &bob_pk,
            &alice_master.signing_key(),
            2,
            3,
            &crypto::grant_context("alice", "medical", 0, "bob"),
        )
        .unwrap()
        .iter()
        .map(|k| k.to_bytes().to_vec())
        .collect();

        let operator = s.operator();
        let foreign_td =
            s.clients_as(&Identity::user("evil.example", Role::Patient, "alice").unwrap());
        let mesh = s.mesh_file();
        // Patients register themselves on a dev mesh.
        let token = String::new();
        let ca_pem = std::fs::read_to_string(&mesh.ca).unwrap();
        let objects_dir = s.dir.path().join("mesh/cloud-storage/records");
        while sesphr_mesh::unix_now() <= expires {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        World {
            alice,
            bob,
            carol,
            dave,
            mallory,
            eve,
            operator,
            foreign_td,
            srs_url: mesh.srs,
            ca_pem,
            token,
            medical,
            insurance,
            personal,
            scan,
            blob_id,
            captured_proof,
            alice_med_pk: alice_med_pk.to_bytes().to_vec(),
            kfrags,
            long_id: "a".repeat(10_000),
            objects_dir,
            s,
        }
    }

    async fn snapshot(&self) -> Snapshot {
        let records = self
            .alice
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
        let g = self.alice.grants().await.unwrap();
        Snapshot {
            records,
            alice_grants: (g.given, g.received),
            bob_received: self.bob.grants().await.unwrap().received,
            mallory_records: self.mallory.list(None, None).await.unwrap().len(),
        }
    }

    /// Stored record objects (a partial upload must leave none behind).
    fn objects(&self) -> usize {
        std::fs::read_dir(&self.objects_dir)
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// The shared runner: builds a fresh [`World`], runs every case of
/// `table` in order, and fails once, listing every case that did not get
/// what it expects and every side effect on the victim. Between cases it
/// checks the mesh is healthy; after the table, that an honest round trip
/// (bob reading the record alice shared) still works.
async fn run(table: for<'a> fn(&'a World) -> Vec<Case<'a>>) {
    let w = World::build().await;
    let before = w.snapshot().await;
    let audit_before = w.alice.audit().await.unwrap().len();
    let objects_before = w.objects();

    let cases = table(&w);
    let n = cases.len();
    assert!(n > 0, "an empty table");
    let mut failures = Vec::new();
    for (i, Case { name, expect, call }) in cases.into_iter().enumerate() {
        let got = call.await;
        if !expect.is_met_by(&got) {
            let got = match got {
                Ok(summary) => format!("accepted: {summary}"),
                Err(st) => format!("{:?}: {}", st.code(), st.message()),
            };
            failures.push(format!("{name}: expected {expect:?}, got {got}"));
        }
        if let Err(e) = w.s.mesh.wait_ready(Duration::from_secs(5)).await {
            // The remaining cases would only time out against a dead mesh.
            failures.push(format!(
                "after {name:?} the mesh is not healthy ({} cases not run): {e:?}",
                n - i - 1
            ));
            break;
        }
    }

    // Nothing changed for the victim.
    let after = w.snapshot().await;
    if after != before {
        failures.push(format!(
            "the victim's state changed:\nbefore {before:?}\nafter  {after:?}"
        ));
    }
    let audit = w.alice.audit().await.unwrap();
    let added: Vec<_> = audit[audit_before..]
        .iter()
        .filter(|e| is_mutation(&e.action))
        .map(|e| format!("{} {} {}", e.action, e.actor, e.detail))
        .collect();
    if !added.is_empty() {
        failures.push(format!("state-changing audit entries: {added:?}"));
    }
    if !w.alice.verify_audit().await.unwrap().ok {
        failures.push("alice's audit chain no longer verifies".into());
    }
    if w.objects() != objects_before {
        failures.push(format!(
            "{} objects in {:?}, {objects_before} before",
            w.objects(),
            w.objects_dir
        ));
    }
    // Bob's kfrags and grant still work.
    match download(&w.bob, &w.medical.record_id).await {
        Ok(plain) if plain == MEDICAL => {}
        other => failures.push(format!("the honest round trip broke: {other:?}")),
    }
    assert!(
        failures.is_empty(),
        "{} failures in {n} cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
    w.s.shutdown().await;
}

/// Answers CloudStorage's ownership challenge for `content` the way the
/// SDK does (content key from the SRS's OPRF, blob sealed, Merkle proof).
async fn ownership_proof(c: &MeshClients, content: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = common::content_key(c, content).await;
    let blob = sesphr_dedup::seal_blob(&key, content);
    let blob_id = sesphr_dedup::blob_id(&blob).to_vec();
    let query = common::query_blob(c, &blob_id).await;
    assert!(query.exists, "the blob is stored");
    let challenge = sesphr_dedup::pow::Challenge::from_bytes(&query.challenge).unwrap();
    let mut builder = sesphr_dedup::pow::ProofBuilder::new(&challenge);
    builder.update(&blob).unwrap();
    (blob_id, builder.finish().unwrap().to_bytes())
}
