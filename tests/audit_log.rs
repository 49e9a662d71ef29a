//! The audit log as a transparency log, against a real mesh: an operator
//! who edits AccessPolicy's storage while it is stopped (drops the newest
//! entries; restores an older copy and appends; changes an old entry and
//! recomputes everything after it) is caught by every client that verified
//! before, while a client that never did still gets a self-consistent view;
//! witnesses refuse to cosign the rewritten log; a forged checkpoint
//! signature is refused; the FHIR export carries proofs that verify.

use std::path::Path;
use std::time::Duration;

use crate::common::{self, Sandbox, upload};

use sesphr::proto;
use sesphr_client::{ClientError, MeshFile, Session};
use sesphr_identity::Role;
use sesphr_tlog::merkle;

/// The same mesh, but clients require no witness: only their own pin
/// protects them (the witnesses are tested separately).
fn pin_only(mesh: &MeshFile) -> MeshFile {
    let mut m = mesh.clone();
    if let Some(a) = m.audit.as_mut() {
        a.witness_quorum = Some(0);
    }
    m
}

fn session(s: &Sandbox, mesh: &MeshFile, user: &str) -> Session {
    Session::open(mesh, &s.home(user)).expect("profile opens")
}

/// Some audited activity of `owner`: an upload, a grant, a read.
async fn activity(s: &Sandbox, owner: &str, reader: &str, round: u32) {
    let doc = s.practitioner(reader, Role::Doctor).await;
    let p = s.patient(owner).await;
    let r = upload(&p, "medical", format!("round {round}").as_bytes()).await;
    p.grant("medical", reader, Default::default())
        .await
        .expect("grant");
    common::download(&doc, &r.record_id).await.expect("read");
}

fn verification_error(r: Result<sesphr_client::VerifiedAudit, ClientError>) -> String {
    match r {
        Err(ClientError::Verification(m)) => m,
        Err(other) => panic!("expected a verification failure, got {other}"),
        Ok(v) => panic!("tampering went unnoticed: {:?}", v.head),
    }
}

/// The stopped AccessPolicy's store, as an insider sees it.
fn policy_db(dir: &tempfile::TempDir) -> sled::Db {
    let dir = dir.path().join("mesh").join("access-policy");
    sesphr_domain::reopen::retry_lock(|| sled::open(&dir)).expect("store opens")
}

/// What a careful insider does after editing entries: throw away the
/// Merkle tree (rebuilt from the entries on start) and every signed or
/// cosigned checkpoint, so nothing stored contradicts the new log.
fn drop_evidence(db: &sled::Db) {
    for tree in ["audit_tree", "checkpoints", "cosignatures"] {
        db.drop_tree(tree).unwrap();
    }
}

fn last_seq(db: &sled::Db) -> u64 {
    let (k, _) = db.open_tree("audit").unwrap().last().unwrap().unwrap();
    u64::from_be_bytes(k.as_ref().try_into().unwrap())
}

/// (a) Drops every entry after the first `keep` (and their owner-index
/// rows).
fn truncate_to(db: &sled::Db, keep: u64) {
    let audit = db.open_tree("audit").unwrap();
    let by_owner = db.open_tree("audit_by_owner").unwrap();
    let last = last_seq(db);
    for seq in keep + 1..=last {
        audit.remove(seq.to_be_bytes()).unwrap();
    }
    for kv in by_owner.iter() {
        let (k, _) = kv.unwrap();
        let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap());
        if seq > keep {
            by_owner.remove(k).unwrap();
        }
    }
    drop_evidence(db);
    db.flush().unwrap();
}

/// Copies a stopped store directory (an operator's "backup").
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// (c) Changes one old entry's detail and recomputes the hash chain of it
/// and of every entry after it, with the store's own encoding.
fn rewrite_entry(db: &sled::Db, seq: u64) {
    // Value layout (version 2): 0x02 ‖ salt 16 ‖ prev_hash 32 ‖ hash 32 ‖ C,
    // C ending with the detail's bytes.
    let audit = db.open_tree("audit").unwrap();
    let last = last_seq(db);
    let mut prev_hash: Option<[u8; 32]> = None;
    for s in seq..=last {
        let mut v = audit.get(s.to_be_bytes()).unwrap().unwrap().to_vec();
        assert_eq!(v[0], 2);
        if s == seq {
            let n = v.len() - 1;
            v[n] = if v[n] == b'x' { b'y' } else { b'x' };
        }
        if let Some(p) = prev_hash {
            v[17..49].copy_from_slice(&p);
        }
        let prev: [u8; 32] = v[17..49].try_into().unwrap();
        let hash = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(prev);
            h.update(&v[81..]);
            <[u8; 32]>::from(h.finalize())
        };
        v[49..81].copy_from_slice(&hash);
        prev_hash = Some(hash);
        audit.insert(s.to_be_bytes(), v).unwrap();
    }
    drop_evidence(db);
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pinned_a_head_catches_every_rewrite() {
    let mut s = Sandbox::start().await;
    activity(&s, "alice", "bob", 0).await;
    activity(&s, "carol", "bob", 0).await;
    let before = session(&s, &pin_only(&s.mesh_file()), "alice")
        .verified_audit()
        .await
        .expect("an honest log verifies");
    let pinned = before.head.clone().unwrap();
    assert!(before.entries.iter().all(|e| e.proof.is_some()));

    // (a) The operator drops the newest entries while AccessPolicy is down,
    // among them three alice's pin covers (entries appended after her pin,
    // which she never saw, could go unnoticed by her).
    let dir = s.stop().await;
    truncate_to(&policy_db(&dir), pinned.size - 3);
    s = Sandbox::resume(dir).await;
    activity(&s, "alice", "bob", 1).await;
    let e = verification_error(
        session(&s, &pin_only(&s.mesh_file()), "alice")
            .verified_audit()
            .await,
    );
    assert!(
        e.contains("shrank") || e.contains("does not extend") || e.contains("forked"),
        "{e}"
    );
    assert!(
        e.contains(&pinned.size.to_string()),
        "names the pinned size: {e}"
    );
    // Carol never verified: the (shorter) log she is shown is consistent.
    let carol = session(&s, &pin_only(&s.mesh_file()), "carol")
        .verified_audit()
        .await
        .expect("a self-consistent view");
    assert!(carol.entries.iter().all(|e| e.proof.is_some()));
    s.shutdown().await;

    // (b) An older copy restored, and new entries appended to it.
    let mut s = Sandbox::start().await;
    activity(&s, "alice", "bob", 0).await;
    let dir = s.stop().await;
    let backup = dir.path().join("backup");
    copy_dir(&dir.path().join("mesh").join("access-policy"), &backup);
    s = Sandbox::resume(dir).await;
    activity(&s, "alice", "bob", 1).await;
    activity(&s, "carol", "bob", 1).await;
    session(&s, &pin_only(&s.mesh_file()), "alice")
        .verified_audit()
        .await
        .expect("verifies before the restore");
    let dir = s.stop().await;
    let live = dir.path().join("mesh").join("access-policy");
    std::fs::remove_dir_all(&live).unwrap();
    copy_dir(&backup, &live);
    s = Sandbox::resume(dir).await;
    for round in 2..6 {
        activity(&s, "alice", "bob", round).await;
    }
    let e = verification_error(
        session(&s, &pin_only(&s.mesh_file()), "alice")
            .verified_audit()
            .await,
    );
    assert!(
        e.contains("does not extend") || e.contains("shrank") || e.contains("forked"),
        "{e}"
    );
    session(&s, &pin_only(&s.mesh_file()), "carol")
        .verified_audit()
        .await
        .expect("carol never verified: a self-consistent view");
    s.shutdown().await;

    // (c) One old entry changed, everything after it recomputed.
    let mut s = Sandbox::start().await;
    activity(&s, "alice", "bob", 0).await;
    activity(&s, "carol", "bob", 0).await;
    session(&s, &pin_only(&s.mesh_file()), "alice")
        .verified_audit()
        .await
        .unwrap();
    let dir = s.stop().await;
    rewrite_entry(&policy_db(&dir), 2);
    s = Sandbox::resume(dir).await;
    activity(&s, "alice", "bob", 1).await;
    let e = verification_error(
        session(&s, &pin_only(&s.mesh_file()), "alice")
            .verified_audit()
            .await,
    );
    assert!(e.contains("does not extend") || e.contains("forked"), "{e}");
    session(&s, &pin_only(&s.mesh_file()), "carol")
        .verified_audit()
        .await
        .expect("carol never verified: a self-consistent view");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_refuse_to_cosign_a_rewritten_log() {
    let mut s = Sandbox::start().await;
    activity(&s, "alice", "bob", 0).await;
    // With the mesh's witness quorum (a majority of four).
    let v = s.session("alice").verified_audit().await.unwrap();
    assert!(v.witnesses.len() >= 3, "{:?}", v.witnesses);
    // Every witness has pinned the log (a witness that never saw it would
    // take whatever it is shown first).
    let policy = s.operator().policy;
    let witnessed = common::eventually(Duration::from_secs(10), || {
        let mut policy = policy.clone();
        async move {
            let r = policy
                .get_checkpoint(proto::GetCheckpointRequest {
                    min_cosignatures: 4,
                })
                .await
                .map_err(|e| ClientError::Invalid(e.to_string()))?
                .into_inner();
            sesphr_tlog::Checkpoint::parse(&r.checkpoint)
                .map_err(|e| ClientError::Invalid(e.to_string()))
        }
    })
    .await;
    let dir = s.stop().await;
    rewrite_entry(&policy_db(&dir), 1);
    s = Sandbox::resume(dir).await;
    activity(&s, "alice", "bob", 1).await;
    // AccessPolicy signs checkpoints of the rewritten log...
    let policy = s.operator().policy;
    let newest = common::eventually(Duration::from_secs(10), || {
        let mut policy = policy.clone();
        async move {
            let not_yet = || ClientError::Invalid("no newer checkpoint yet".into());
            let r = policy
                .get_checkpoint(proto::GetCheckpointRequest {
                    min_cosignatures: 0,
                })
                .await
                .map_err(|_| not_yet())?
                .into_inner();
            let cp = sesphr_tlog::Checkpoint::parse(&r.checkpoint).map_err(|_| not_yet())?;
            if cp.size > witnessed.size {
                Ok(cp)
            } else {
                Err(not_yet())
            }
        }
    })
    .await;
    // ...but no witness cosigns them: each still holds its old pin.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cosigned = policy
        .clone()
        .get_checkpoint(proto::GetCheckpointRequest {
            min_cosignatures: 1,
        })
        .await;
    assert!(
        cosigned.is_err(),
        "a witness cosigned the rewritten log: {cosigned:?}"
    );
    for name in ["cloud-storage", "srs-node-1", "srs-node-2", "srs-node-3"] {
        let pin = std::fs::read_to_string(s.dir.path().join("mesh").join(name).join("witness-pin"))
            .unwrap();
        let pin = sesphr_tlog::Checkpoint::parse(&pin).unwrap();
        assert!(pin.size <= witnessed.size, "{name} moved to {}", pin.size);
        assert!(newest.size > pin.size);
    }
    // A client requiring the quorum is told so, in one line.
    let e = verification_error(s.session("alice").verified_audit().await);
    assert!(e.contains("refuse to cosign"), "{e}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_carries_proofs_an_outsider_can_check() {
    let s = Sandbox::start().await;
    activity(&s, "alice", "bob", 0).await;
    let v = s.session("alice").verified_audit().await.unwrap();
    let head = v.head.clone().unwrap();
    let bundle = sesphr_client::audit_export::fhir_bundle(&v, 1_800_000_000);
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["type"], "collection");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), v.entries.len() - v.pending());
    use base64::Engine as _;
    let b64 = |s: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(s.as_str().unwrap())
            .unwrap()
    };
    for e in entries {
        let r = &e["resource"];
        assert_eq!(r["resourceType"], "AuditEvent");
        for required in ["type", "recorded", "agent", "source"] {
            assert!(!r[required].is_null(), "AuditEvent.{required} is required");
        }
        // Rebuild the leaf from the exported fields alone and check the
        // exported path against the exported root.
        let ext = r["extension"].as_array().unwrap();
        let find = |url: &str| ext.iter().find(|x| x["url"] == url).unwrap()["extension"].clone();
        let fields = find("urn:sesphr:fhir:audit-entry");
        let field = |name: &str| {
            fields
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["url"] == name)
                .unwrap()
                .clone()
        };
        let text = |name: &str| field(name)["valueString"].as_str().unwrap().to_owned();
        let salt: [u8; 16] = b64(&field("salt")["valueBase64Binary"]).try_into().unwrap();
        let seq: u64 = text("seq").parse().unwrap();
        let leaf = merkle::leaf_hash(&sesphr_tlog::entry::leaf_data(
            seq,
            text("time").parse().unwrap(),
            [
                &text("actor"),
                &text("action"),
                &text("ownerId"),
                &text("partition"),
                &text("subject"),
                &text("recordId"),
                &text("outcome"),
                &text("detail"),
            ],
            &salt,
        ));
        let proof = find("urn:sesphr:fhir:audit-log-proof");
        let proof = proof.as_array().unwrap();
        let path: Vec<[u8; 32]> = proof
            .iter()
            .filter(|x| x["url"] == "inclusionProof")
            .map(|x| b64(&x["valueBase64Binary"]).try_into().unwrap())
            .collect();
        let root: [u8; 32] =
            b64(&proof.iter().find(|x| x["url"] == "rootHash").unwrap()["valueBase64Binary"])
                .try_into()
                .unwrap();
        assert_eq!(root, head.root);
        merkle::verify_inclusion(seq - 1, head.size, &leaf, &path, &root).unwrap();
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_checkpoint_signature_is_refused() {
    use crate::common::impostor::{self, AccessPolicyHooks, hook};
    let s = Sandbox::start().await;
    activity(&s, "alice", "bob", 0).await;
    let e = verification_error(
        alice_through(
            &s,
            AccessPolicyHooks {
                get_checkpoint: hook(
                    |up, req: tonic::Request<proto::GetCheckpointRequest>| async move {
                        let mut r = impostor::forward::get_checkpoint(up, req).await?;
                        r.get_mut().signature[10] ^= 1;
                        Ok(r)
                    },
                ),
                ..Default::default()
            },
        )
        .await,
    );
    assert!(e.contains("log signature does not verify"), "{e}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_verifies_and_exports_the_whole_log() {
    let s = Sandbox::start().await;
    activity(&s, "alice", "bob", 0).await;
    activity(&s, "carol", "bob", 0).await;
    let pins = s.dir.path().join("operator-pin");
    let all = sesphr_client::audit_log::verified_audit_as(
        &s.mesh_file(),
        &s.mesh.pki.cert("operator"),
        &s.mesh.pki.key("operator"),
        &pins,
    )
    .await
    .expect("the whole log verifies");
    let alice = s.session("alice").verified_audit().await.unwrap();
    assert!(all.entries.len() > alice.entries.len());
    let owners: std::collections::BTreeSet<&str> = all
        .entries
        .iter()
        .map(|e| e.entry.owner_id.as_str())
        .collect();
    assert!(
        owners.contains("alice") && owners.contains("carol"),
        "{owners:?}"
    );
    assert!(pins.join("audit-head.toml").exists());
    // Through the CLI, with the export.
    let out_file = s.dir.path().join("all.json");
    let out = std::process::Command::new(common::bin("sesphr"))
        .env("SESPHR_MESH", &s.mesh.mesh_file)
        .args(["operator-audit", "--cert"])
        .arg(s.mesh.pki.cert("operator"))
        .arg("--key")
        .arg(s.mesh.pki.key("operator"))
        .arg("--pin-dir")
        .arg(&pins)
        .arg("--export")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert!(bundle["entry"].as_array().unwrap().len() >= all.entries.len() - all.pending());
    s.shutdown().await;
}

/// Alice's verified read through an AccessPolicy impostor with `hooks`
/// (forwarding the rest to the real one).
async fn alice_through(
    s: &Sandbox,
    hooks: crate::common::impostor::AccessPolicyHooks,
) -> Result<sesphr_client::VerifiedAudit, ClientError> {
    use crate::common::impostor::{self, Impostor};
    let fake = Impostor::access_policy(s, "alice", hooks).await;
    let mesh = impostor::redirect(
        &s.mesh_file(),
        sesphr_identity::Service::AccessPolicy,
        &fake.url,
    );
    session(s, &mesh, "alice").verified_audit().await
}

/// A `GetCheckpoint` answer for `checkpoint`, signed with the dev mesh's log
/// key and cosigned with the keys of `witnesses` (as an insider holding
/// those keys could).
fn forged_answer(
    s: &Sandbox,
    checkpoint: &sesphr_tlog::Checkpoint,
    witnesses: &[String],
    cosigned_at: i64,
) -> proto::GetCheckpointResponse {
    let pki = s.dir.path().join("mesh").join("pki");
    let key = |path: std::path::PathBuf| {
        sesphr_tlog::SigningKey::from_hex(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let signed = key(pki.join("audit").join("log.key")).sign_checkpoint(checkpoint.clone());
    let cosignatures = witnesses
        .iter()
        .map(|name| {
            let c = key(pki.join("witness").join(format!("{name}.key"))).cosign(
                name,
                cosigned_at,
                checkpoint,
            );
            proto::Cosignature {
                witness: c.witness,
                time: c.time,
                signature: c.signature.to_vec(),
            }
        })
        .collect();
    proto::GetCheckpointResponse {
        checkpoint: checkpoint.body(),
        signature: signed.signature.to_vec(),
        cosignatures,
    }
}

/// A log operator holding the log key *and* a quorum of witness keys shows
/// a patient another tree at the size she pinned: she reports the fork and
/// names every witness that cosigned both roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_that_cosign_two_roots_at_one_size_are_named() {
    use crate::common::impostor::{AccessPolicyHooks, hook};
    use sesphr_tlog::Checkpoint;
    let s = Sandbox::start().await;
    activity(&s, "alice", "bob", 0).await;
    let pinned = s.session("alice").verified_audit().await.unwrap();
    let head = pinned.head.clone().unwrap();
    let forged = Checkpoint {
        root: [7; 32],
        ..head.clone()
    };
    let reply = forged_answer(&s, &forged, &pinned.witnesses, head.time + 1);
    let e = verification_error(
        alice_through(
            &s,
            AccessPolicyHooks {
                get_checkpoint: hook(move |_, _| {
                    let reply = reply.clone();
                    async move { Ok(tonic::Response::new(reply)) }
                }),
                ..Default::default()
            },
        )
        .await,
    );
    assert!(e.contains(&format!("forked at size {}", head.size)), "{e}");
    for name in &pinned.witnesses {
        assert!(
            e.contains(&format!("witness {name} cosigned two different roots")),
            "{name}: {e}"
        );
    }
    s.shutdown().await;
}

/// An AccessPolicy that leaves one of alice's entries out of her listing,
/// one she saw and pinned before, is caught: the pin remembers what she saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_hidden_from_its_owner_after_she_saw_it_is_caught() {
    use crate::common::impostor::{self, AccessPolicyHooks, forward, hook};
    use futures::StreamExt as _;
    let s = Sandbox::start().await;
    activity(&s, "alice", "bob", 0).await;
    let seen = s.session("alice").verified_audit().await.unwrap();
    let hidden = seen.entries[1].entry.seq;
    let e = verification_error(
        alice_through(
            &s,
            AccessPolicyHooks {
                list_audit: hook(move |up, req| async move {
                    let real = forward::list_audit(up, req).await?.into_inner();
                    let filtered: impostor::ReplyStream<proto::AuditEntry> =
                        Box::pin(real.filter(move |e| {
                            let keep = !matches!(e, Ok(e) if e.seq == hidden);
                            async move { keep }
                        }));
                    Ok(tonic::Response::new(filtered))
                }),
                ..Default::default()
            },
        )
        .await,
    );
    assert!(e.contains("no longer shows"), "{e}");
    // The honest listing still verifies.
    s.session("alice").verified_audit().await.unwrap();
    s.shutdown().await;
}

/// An AccessPolicy that keeps answering with an old witnessed checkpoint
/// (validly signed and cosigned, but minutes old) so that new entries stay
/// "pending" for ever is caught once the checkpoint is too old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_witnessed_checkpoint_cannot_hide_new_entries() {
    use crate::common::impostor::{AccessPolicyHooks, hook};
    use sesphr_tlog::Checkpoint;
    let s = Sandbox::start().await;
    activity(&s, "alice", "bob", 0).await;
    let pinned = s.session("alice").verified_audit().await.unwrap();
    let head = pinned.head.clone().unwrap();
    // The same tree, re-signed as if published ten minutes ago.
    let old = Checkpoint {
        time: head.time - 600,
        ..head.clone()
    };
    let reply = forged_answer(&s, &old, &pinned.witnesses, old.time);
    // New entries for alice, then the stale answer.
    activity(&s, "alice", "bob", 1).await;
    let e = verification_error(
        alice_through(
            &s,
            AccessPolicyHooks {
                get_checkpoint: hook(move |_, _| {
                    let reply = reply.clone();
                    async move { Ok(tonic::Response::new(reply)) }
                }),
                ..Default::default()
            },
        )
        .await,
    );
    assert!(e.contains("s old) does not cover entry"), "{e}");
    s.shutdown().await;
}
