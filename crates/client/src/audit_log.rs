//! Checking the audit log without trusting AccessPolicy.
//!
//! The profile pins the last checkpoint it verified (`DIR/audit-head.toml`,
//! with its witnesses' cosignatures). Reading the log then means:
//!
//! 1. fetch the newest checkpoint a quorum of the mesh file's witnesses
//!    cosigned, and check the log's signature and the cosignatures;
//! 2. check it extends the pin (RFC 9162 consistency proof): a shorter log,
//!    another root at the pinned size or a failed proof is tampering, and
//!    a witness that cosigned two roots at one size is named;
//! 3. check every listed entry's inclusion proof against it (entries newer
//!    than the checkpoint are reported as not yet witnessed);
//! 4. only then pin it.
//!
//! A profile without a pin starts one with the first checkpoint it sees.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sesphr::proto;
use sesphr_tlog::merkle::{self, Hash};
use sesphr_tlog::{Checkpoint, Cosignature, SignedCheckpoint, check_advance, equivocations};

use crate::mesh_file::AuditLogKeys;
use crate::raw::MeshClients;
use crate::{AuditEntry, ClientError, rpc, unary};

/// How long a read waits for witnesses to cosign a checkpoint that covers
/// the newest listed entry (they do within a few of their rounds).
pub const WITNESS_WAIT: Duration = Duration::from_secs(8);

/// How old (by its signed time, against this machine's clock) the witnessed
/// checkpoint may be while listed entries are newer than it.
pub const MAX_WITNESSED_AGE: Duration = Duration::from_secs(120);

/// Most leaf indexes asked per inclusion-proof request (the server's cap).
const PROOF_BATCH: usize = 256;

/// An entry with the proof that it is in the pinned checkpoint's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenEntry {
    /// The entry as listed.
    pub entry: AuditEntry,
    /// Its audit path in [`VerifiedAudit::head`]; `None` when the entry is
    /// newer than that checkpoint (not yet witnessed).
    pub proof: Option<Vec<Hash>>,
}

/// What a verified read of the log established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAudit {
    /// The checkpoint now pinned (signed by the log, cosigned by a quorum);
    /// `None` only when the log has no witnessed checkpoint yet and the
    /// caller has no entries (nothing to check, nothing pinned).
    pub head: Option<Checkpoint>,
    /// The log's signature on it.
    pub signature: [u8; 64],
    /// The witnesses whose valid cosignatures were counted.
    pub witnesses: Vec<String>,
    /// The cosignatures as received.
    pub cosignatures: Vec<Cosignature>,
    /// The size pinned before (`None`: this read started the pin).
    pub previous_size: Option<u64>,
    /// The caller's entries, each with its proof.
    pub entries: Vec<ProvenEntry>,
}

impl VerifiedAudit {
    /// Entries newer than the witnessed checkpoint.
    pub fn pending(&self) -> usize {
        self.entries.iter().filter(|e| e.proof.is_none()).count()
    }
}

/// `DIR/audit-head.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinFile {
    origin: String,
    size: u64,
    root: String,
    time: i64,
    signature: String,
    #[serde(default)]
    cosignatures: Vec<PinCosignature>,
    /// How many of the caller's entries the pinned tree holds, and a digest
    /// of them (see [`seen_digest`]): a later listing must show them all
    /// again, unchanged.
    #[serde(default)]
    seen_entries: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    seen_digest: String,
}

/// SHA-256 over `seq u64 BE ‖ leaf hash` of `entries` (in listing order)
/// whose seq is at most `size`: what a caller saw of a tree of that size.
fn seen_digest(entries: &[AuditEntry], size: u64) -> Result<(u64, Hash), ClientError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut n = 0u64;
    for e in entries.iter().filter(|e| e.seq <= size) {
        h.update(e.seq.to_be_bytes());
        h.update(merkle::leaf_hash(&leaf_data(e)?));
        n += 1;
    }
    Ok((n, h.finalize().into()))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinCosignature {
    witness: String,
    time: i64,
    signature: String,
}

/// What a pin file holds.
struct Pinned {
    checkpoint: Checkpoint,
    cosignatures: Vec<Cosignature>,
    /// (count, digest) of the caller's entries in the pinned tree.
    seen: Option<(u64, Hash)>,
}

/// The pinned head of one profile.
pub(crate) struct AuditPin {
    path: PathBuf,
}

fn hex64(s: &str) -> Option<[u8; 64]> {
    hex::decode(s).ok()?.try_into().ok()
}

impl AuditPin {
    pub(crate) fn new(home: &Path) -> Self {
        Self {
            path: home.join("audit-head.toml"),
        }
    }

    fn bad(&self, why: impl std::fmt::Display) -> ClientError {
        ClientError::Profile(format!(
            "{}: {why} (the pinned audit head; restore it from a backup — deleting it \
             throws away what this profile saw)",
            self.path.display()
        ))
    }

    fn load(&self) -> Result<Option<Pinned>, ClientError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ClientError::io(&self.path, e)),
        };
        let f: PinFile = toml::from_str(&text).map_err(|e| self.bad(e))?;
        let root: Hash = hex::decode(&f.root)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| self.bad("root is not 64 hex digits"))?;
        let cp = Checkpoint {
            origin: f.origin,
            size: f.size,
            root,
            time: f.time,
        };
        let mut cosigs = Vec::new();
        for c in f.cosignatures {
            cosigs.push(Cosignature {
                witness: c.witness,
                time: c.time,
                signature: hex64(&c.signature)
                    .ok_or_else(|| self.bad("a cosignature is not 128 hex digits"))?,
            });
        }
        let seen = match f.seen_digest.as_str() {
            "" => None,
            d => Some((
                f.seen_entries,
                hex::decode(d)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| self.bad("seen_digest is not 64 hex digits"))?,
            )),
        };
        Ok(Some(Pinned {
            checkpoint: cp,
            cosignatures: cosigs,
            seen,
        }))
    }

    fn save(&self, v: &VerifiedAudit, seen: (u64, Hash)) -> Result<(), ClientError> {
        let Some(head) = &v.head else {
            return Ok(());
        };
        // Another read of this profile may have pinned a larger tree
        // meanwhile: a pin never moves back.
        if self.load()?.is_some_and(|p| p.checkpoint.size > head.size) {
            return Ok(());
        }
        let f = PinFile {
            origin: head.origin.clone(),
            size: head.size,
            root: hex::encode(head.root),
            time: head.time,
            signature: hex::encode(v.signature),
            cosignatures: v
                .cosignatures
                .iter()
                .map(|c| PinCosignature {
                    witness: c.witness.clone(),
                    time: c.time,
                    signature: hex::encode(c.signature),
                })
                .collect(),
            seen_entries: seen.0,
            seen_digest: hex::encode(seen.1),
        };
        let text = toml::to_string(&f).expect("a pin serializes");
        sesphr_mesh::pki::write_secret(&self.path, text.as_bytes())?;
        Ok(())
    }
}

fn tampered(what: impl std::fmt::Display) -> ClientError {
    ClientError::Verification(format!("audit log: {what}"))
}

fn hashes(list: Vec<Vec<u8>>, what: &str) -> Result<Vec<Hash>, ClientError> {
    if list.len() > merkle::MAX_PROOF_LEN {
        return Err(tampered(format!("{what} has {} hashes", list.len())));
    }
    list.into_iter()
        .map(|h| {
            <[u8; 32]>::try_from(h.as_slice())
                .map_err(|_| tampered(format!("{what} holds a hash that is not 32 bytes")))
        })
        .collect()
}

/// The newest checkpoint with a quorum, verified.
async fn witnessed_head(
    clients: &MeshClients,
    keys: &AuditLogKeys,
) -> Result<(SignedCheckpoint, Vec<Cosignature>, Vec<String>), ClientError> {
    let reply = clients
        .policy
        .clone()
        .get_checkpoint(unary(proto::GetCheckpointRequest {
            min_cosignatures: u32::try_from(keys.quorum).unwrap_or(u32::MAX),
        }))
        .await
        .map_err(rpc("AccessPolicy"))?
        .into_inner();
    let checkpoint = Checkpoint::parse(&reply.checkpoint).map_err(tampered)?;
    let signature: [u8; 64] = reply
        .signature
        .try_into()
        .map_err(|_| tampered("the checkpoint's signature is not 64 bytes"))?;
    if checkpoint.origin != keys.origin {
        return Err(tampered(format!(
            "the checkpoint is of log {:?}, the mesh file names {:?}",
            checkpoint.origin, keys.origin
        )));
    }
    if reply.cosignatures.len() > 4 * sesphr_tlog::checkpoint::MAX_NAME_LEN {
        return Err(tampered("too many cosignatures"));
    }
    let mut cosignatures = Vec::with_capacity(reply.cosignatures.len());
    for c in reply.cosignatures {
        let Ok(sig) = <[u8; 64]>::try_from(c.signature.as_slice()) else {
            continue; // malformed: does not count
        };
        cosignatures.push(Cosignature {
            witness: c.witness,
            time: c.time,
            signature: sig,
        });
    }
    let signed = SignedCheckpoint {
        checkpoint,
        signature,
    };
    let counted = sesphr_tlog::verify_witnessed(
        &keys.log_key,
        &signed,
        &cosignatures,
        &keys.witnesses,
        keys.quorum,
    )
    .map_err(|e| {
        tampered(format!(
            "checkpoint of size {}: {e}",
            signed.checkpoint.size
        ))
    })?;
    Ok((signed, cosignatures, counted))
}

/// Verifies the caller's listed `entries` and the log as the module docs
/// say; pins the new head.
pub(crate) async fn verified_read(
    clients: &MeshClients,
    keys: &AuditLogKeys,
    home: &Path,
    entries: Vec<AuditEntry>,
) -> Result<VerifiedAudit, ClientError> {
    let pin = AuditPin::new(home);
    let pinned = pin.load()?;
    let want = entries.last().map_or(0, |e| e.seq);
    // Wait (bounded) for a witnessed checkpoint that covers every listed
    // entry and does not fall behind the pin.
    let deadline = Instant::now() + WITNESS_WAIT;
    let floor = pinned.as_ref().map_or(0, |p| p.checkpoint.size);
    let (signed, cosignatures, counted) = loop {
        let got = witnessed_head(clients, keys).await;
        let covers = matches!(&got, Ok((s, _, _)) if s.checkpoint.size >= want.max(floor));
        let none_yet = matches!(&got, Err(ClientError::Rpc { status, .. })
            if status.code() == tonic::Code::FailedPrecondition);
        // A checkpoint whose cosignatures do not make the quorum (a witness
        // still behind, or one sending garbage) may be followed by one that
        // does: keep asking until the deadline.
        let not_yet = matches!(&got, Err(ClientError::Verification(_)));
        if none_yet && entries.is_empty() && pinned.is_none() {
            return Ok(VerifiedAudit {
                head: None,
                signature: [0; 64],
                witnesses: Vec::new(),
                cosignatures: Vec::new(),
                previous_size: None,
                entries: Vec::new(),
            });
        }
        if covers || Instant::now() >= deadline || !(none_yet || not_yet || got.is_ok()) {
            if none_yet {
                return Err(tampered(format!(
                    "no checkpoint of the log carries cosignatures of {} of its witnesses: \
                     witnesses refuse to cosign a log that does not extend the one they saw \
                     (it may have been truncated or rewritten), or too few of them are running",
                    keys.quorum
                )));
            }
            break got?;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let head = signed.checkpoint.clone();
    // A server can keep answering with an old witnessed checkpoint so that
    // newer entries stay "pending" for ever: entries the witnessed head
    // does not cover are only tolerated while it is fresh.
    if want > head.size {
        let age = sesphr_mesh::unix_now() - head.time;
        if age > MAX_WITNESSED_AGE.as_secs() as i64 {
            return Err(tampered(format!(
                "the newest witnessed checkpoint (size {}, {age} s old) does not cover entry #{want}: \
                 witnesses are not cosigning new checkpoints, or the log withholds them",
                head.size
            )));
        }
    }
    if let Some(Pinned {
        checkpoint: old,
        cosignatures: old_cosigs,
        seen,
    }) = &pinned
    {
        let proof = if head.size > old.size && old.size > 0 {
            let r = clients
                .policy
                .clone()
                .get_consistency_proof(unary(proto::GetConsistencyProofRequest {
                    first: old.size,
                    second: head.size,
                }))
                .await
                .map_err(rpc("AccessPolicy"))?
                .into_inner();
            hashes(r.hashes, "the consistency proof")?
        } else {
            Vec::new()
        };
        if let Err(inconsistency) = check_advance(old, &head, &proof) {
            let caught = equivocations((old, old_cosigs), (&head, &cosignatures), &keys.witnesses);
            let mut msg = inconsistency.to_string();
            for e in caught {
                msg.push_str(&format!("; {e}"));
            }
            return Err(tampered(msg));
        }
        // Every entry about the caller that the pinned tree held, and this
        // profile saw, must be listed again unchanged.
        if let Some((count, digest)) = seen {
            let now = seen_digest(&entries, old.size)?;
            if now != (*count, *digest) {
                return Err(tampered(format!(
                    "the listing no longer shows the {count} entries about you this profile saw \
                     in the log up to size {} ({} listed now, or some changed): entries were \
                     hidden or altered",
                    old.size, now.0
                )));
            }
        }
    }
    // Inclusion of every listed entry the checkpoint covers.
    let mut proofs: Vec<Option<Vec<Hash>>> = vec![None; entries.len()];
    let covered: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].seq <= head.size)
        .collect();
    for batch in covered.chunks(PROOF_BATCH) {
        let indexes: Vec<u64> = batch.iter().map(|&i| entries[i].seq - 1).collect();
        let r = clients
            .policy
            .clone()
            .get_inclusion_proofs(unary(proto::GetInclusionProofsRequest {
                tree_size: head.size,
                leaf_indexes: indexes.clone(),
            }))
            .await
            .map_err(rpc("AccessPolicy"))?
            .into_inner();
        if r.tree_size != head.size || r.proofs.len() != batch.len() {
            return Err(tampered(format!(
                "asked {} inclusion proofs at size {}, got {} at size {}",
                batch.len(),
                head.size,
                r.proofs.len(),
                r.tree_size
            )));
        }
        for ((&i, want_index), p) in batch.iter().zip(&indexes).zip(r.proofs) {
            if p.leaf_index != *want_index {
                return Err(tampered(format!(
                    "asked the proof of leaf {want_index}, got leaf {}",
                    p.leaf_index
                )));
            }
            let path = hashes(p.hashes, "an inclusion proof")?;
            let e = &entries[i];
            let leaf = merkle::leaf_hash(&leaf_data(e)?);
            merkle::verify_inclusion(e.seq - 1, head.size, &leaf, &path, &head.root).map_err(
                |why| {
                    tampered(format!(
                        "entry #{} is not in the log at size {} (root {}): {why}",
                        e.seq,
                        head.size,
                        hex::encode(head.root)
                    ))
                },
            )?;
            proofs[i] = Some(path);
        }
    }
    // Only the cosignatures that counted are kept, shown and pinned.
    let valid = |c: &Cosignature| {
        keys.witnesses
            .iter()
            .any(|(n, k)| *n == c.witness && k.verify_cosignature(&signed.checkpoint, c).is_ok())
    };
    let cosignatures: Vec<Cosignature> = counted
        .iter()
        .filter_map(|name| {
            cosignatures
                .iter()
                .find(|c| &c.witness == name && valid(c))
                .cloned()
        })
        .collect();
    let verified = VerifiedAudit {
        head: Some(head),
        signature: signed.signature,
        witnesses: counted,
        cosignatures,
        previous_size: pinned.map(|p| p.checkpoint.size),
        entries: entries
            .into_iter()
            .zip(proofs)
            .map(|(entry, proof)| ProvenEntry { entry, proof })
            .collect(),
    };
    if let Some(head) = &verified.head {
        let listed: Vec<AuditEntry> = verified.entries.iter().map(|p| p.entry.clone()).collect();
        pin.save(&verified, seen_digest(&listed, head.size)?)?;
    }
    Ok(verified)
}

/// The leaf data of a listed entry (see `sesphr_tlog::entry`).
fn leaf_data(e: &AuditEntry) -> Result<Vec<u8>, ClientError> {
    let salt: [u8; sesphr_tlog::entry::SALT_LEN] = e
        .salt
        .as_slice()
        .try_into()
        .map_err(|_| tampered(format!("entry #{} has no 16-byte salt", e.seq)))?;
    if e.seq == 0 {
        return Err(tampered("an entry has sequence number 0"));
    }
    Ok(sesphr_tlog::entry::leaf_data(
        e.seq,
        e.time,
        [
            &e.actor,
            &e.action,
            &e.owner_id,
            &e.partition,
            &e.subject,
            &e.record_id,
            &e.outcome,
            &e.detail,
        ],
        &salt,
    ))
}

/// [`verified_read`] of every entry the caller may list (an operator: the
/// whole log), for a caller without a user profile, authenticated by the
/// PEM certificate and key at `cert` and `key`. `pin_dir` holds its pinned
/// head (`audit-head.toml`), created if missing.
pub async fn verified_audit_as(
    mesh: &crate::MeshFile,
    cert: &Path,
    key: &Path,
    pin_dir: &Path,
) -> Result<VerifiedAudit, ClientError> {
    let tls = sesphr_mesh::tls::TlsMaterial::load(&sesphr_mesh::tls::TlsFiles {
        cert: cert.to_owned(),
        key: key.to_owned(),
        ca: mesh.ca.clone(),
    })?;
    let tls = &tls;
    let keys = mesh
        .audit_log()
        .map_err(|e| ClientError::Config(format!("mesh file {e}")))?;
    std::fs::create_dir_all(pin_dir).map_err(|e| ClientError::io(pin_dir, e))?;
    let clients = MeshClients::connect(mesh, tls)?;
    let entries = crate::bounds::audit(&clients).await?;
    verified_read(&clients, &keys, pin_dir, entries).await
}
