//! A re-encryption node's rules, free of the wire: who may file or revoke
//! kfrags, have capsules re-encrypted or content keys evaluated; what is
//! verified first, and what is audited.
//!
//! A [`Node`] is one of the SRS's n independent re-encryption nodes. It
//! holds share `i` of every grant's kfrags and share `i` of the dedup OPRF
//! key, where `i` is its [`NodeIndex`] (the last segment of its identity):
//! fewer than the mesh's threshold of nodes, together, cannot re-encrypt
//! or evaluate anything. It learns owners' and grantees' registered keys
//! from the setup service through a [`Directory`], asks AccessPolicy and
//! writes the audit trail through an [`AccessGate`] (entries are attributed
//! to this node's identity), and keeps its state in a [`Store`] of its own.

use std::time::Instant;

use sesphr::rpc::Rpc;
use sesphr_crypto as crypto;
use sesphr_dedup::KeyShare;
use sesphr_domain::DomainError;
use sesphr_identity::{Caller, NodeIndex, PartitionName, RecordId, UserId};
use sesphr_mesh::RateLimiter;
use sesphr_mesh::unix_now;
use std::sync::Arc;

use crate::directory::Directory;
use crate::gate::{
    AccessGate, Outcome, ReEncryptSubject, off_executor, parse_public_key, parse_verifying_key,
};
use crate::kfrag_cache::{self, VerifiedKfrags};
use crate::{KfragSet, MAX_KFRAG_LEN, Store};

/// Most capsules per ReEncrypt call.
pub const MAX_CAPSULES: usize = 64;

/// OPRF evaluations per second per identity (burst: 4x). Uploading a file
/// takes one at each of t nodes; the limit is what stops a compromised
/// CloudStorage, or a patient, from brute-forcing predictable files through
/// the nodes.
pub const DEFAULT_CONTENT_KEY_RATE: f64 = 50.0;

/// Kfrag share `index` an owner files for one grantee.
pub struct KfragFiling {
    pub partition: PartitionName,
    pub grantee_id: UserId,
    pub epoch: u32,
    pub delegating_public_key: Vec<u8>,
    pub kfrag: Vec<u8>,
}

/// A re-encryption request, ids already parsed.
pub struct ReEncryption {
    pub owner_id: UserId,
    pub partition: PartitionName,
    pub epoch: u32,
    pub record_id: Option<RecordId>,
    pub capsules: Vec<Vec<u8>>,
}

/// The cfrags of a re-encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReEncrypted {
    /// One cfrag per capsule, in request order, from this node's share.
    pub cfrags: Vec<Vec<u8>>,
    pub delegating_public_key: Vec<u8>,
}

/// Proof that a caller passed [`Node::admit_reencryption`] (a user, within
/// its ReEncrypt allowance) for this one request.
pub struct ReEncryptPermit {
    caller: Caller,
    grantee_id: UserId,
}

/// Settings of a [`Node`].
pub struct NodeConfig {
    /// Which node this is (from its certificate).
    pub index: NodeIndex,
    /// ReEncrypt calls per second per identity (burst: 4x).
    pub reencrypt_rate: f64,
    /// EvaluateContentKey calls per second per identity (burst: 4x).
    pub content_key_rate: f64,
}

/// One re-encryption node, for callers the authorization layer admitted.
pub struct Node<S, G, D> {
    index: NodeIndex,
    store: Arc<S>,
    gate: G,
    directory: D,
    oprf_share: KeyShare,
    reencrypt_limiter: RateLimiter,
    content_key_limiter: RateLimiter,
    verified: Arc<VerifiedKfrags>,
}

impl<S: Store, G: AccessGate, D: Directory> Node<S, G, D> {
    /// Node `config.index` over its own `store`, evaluating the OPRF with
    /// `oprf_share`, which must be the share dealt to this index.
    pub fn new(
        store: Arc<S>,
        gate: G,
        directory: D,
        oprf_share: KeyShare,
        config: NodeConfig,
    ) -> Result<Self, DomainError> {
        if oprf_share.index() != config.index.get() {
            return Err(DomainError::Malformed(format!(
                "the OPRF key share is share {} but this is node {}: give each node its own share",
                oprf_share.index(),
                config.index
            )));
        }
        let limiter = |rate: f64| RateLimiter::new(rate, (rate * 4.0).max(1.0) as u32);
        Ok(Node {
            index: config.index,
            store,
            gate,
            directory,
            oprf_share,
            reencrypt_limiter: limiter(config.reencrypt_rate),
            content_key_limiter: limiter(config.content_key_rate),
            verified: Arc::new(VerifiedKfrags::new(kfrag_cache::DEFAULT_CAPACITY)),
        })
    }

    /// Which node this is.
    pub fn index(&self) -> NodeIndex {
        self.index
    }

    async fn audit(
        &self,
        subject: &str,
        rpc: Rpc,
        about: (&str, &str),
        outcome: Outcome,
        detail: &str,
    ) {
        crate::gate::audit(&self.gate, subject, rpc, about, outcome, detail).await
    }

    /// The patient a kfrag call is made by (the RPC table admits patients
    /// only; this holds if the table ever changes).
    fn owner_of(caller: &Caller) -> Result<&UserId, DomainError> {
        caller
            .as_patient()
            .ok_or_else(|| DomainError::NotEntitled(format!("{caller} is not a patient")))
    }

    /// Files this node's kfrag from the calling patient to a grantee, after
    /// checking it: signed by the owner's registered verifying key, for the
    /// grantee's registered key and this delegating key (so a grantee is
    /// never handed cfrags that cannot verify), and carrying the id bound to
    /// this node for this grant (docs/crypto.md §7.4), so that no node
    /// collects another node's share.
    pub async fn put_kfrag(&self, caller: &Caller, f: KfragFiling) -> Result<(), DomainError> {
        let owner_id = Self::owner_of(caller)?;
        if f.grantee_id == *owner_id {
            return Err(DomainError::Malformed(
                "an owner needs no kfrags for itself".into(),
            ));
        }
        if f.kfrag.is_empty() || f.kfrag.len() > MAX_KFRAG_LEN {
            return Err(DomainError::Malformed(format!(
                "kfrag must be 1 to {MAX_KFRAG_LEN} bytes"
            )));
        }
        let kfrag = crypto::KeyFrag::from_bytes(&f.kfrag)
            .map_err(|_| DomainError::Malformed("kfrag is malformed".into()))?;
        let delegating = parse_public_key(&f.delegating_public_key, "delegating_public_key")?;
        let context = crypto::grant_context(owner_id, &f.partition, f.epoch, &f.grantee_id);
        let mine = crypto::node_kfrag_id(&context, u32::from(self.index.get()));
        if *kfrag.id() != mine {
            return Err(DomainError::Malformed(format!(
                "this kfrag is not node {}'s share of this grant (its id is not the one \
                 bound to node {} for {owner_id}'s {} epoch {} to {}); send each node its own share",
                self.index, self.index, f.partition, f.epoch, f.grantee_id
            )));
        }
        let owner = self.directory.user(owner_id).await?;
        let grantee = self.directory.user(&f.grantee_id).await?;
        let verifying = parse_verifying_key(&owner.verifying_key, "registered verifying key")?;
        let receiving = parse_public_key(&grantee.pre_public_key, "grantee's registered key")?;
        kfrag
            .verify(&verifying, &delegating, &receiving)
            .map_err(|_| {
                DomainError::Malformed(format!(
                    "kfrag does not verify: it must be signed by {owner_id}'s registered \
                     verifying key for grantee {} and this delegating key",
                    f.grantee_id
                ))
            })?;
        let set = KfragSet {
            delegating_public_key: f.delegating_public_key,
            kfrags: vec![f.kfrag],
            stored_at: unix_now(),
        };
        let store = self.store.clone();
        let (o, p, g, e) = (
            owner_id.clone(),
            f.partition.clone(),
            f.grantee_id.clone(),
            f.epoch,
        );
        off_executor(move || store.put_kfrags(&o, &p, e, &g, set)).await?;
        let detail = format!(
            "node {} kfrag for {} epoch {}",
            self.index, f.grantee_id, f.epoch
        );
        self.audit(
            &caller.to_string(),
            Rpc::PutKfrag,
            (owner_id, &f.partition),
            Outcome::Ok,
            &detail,
        )
        .await;
        Ok(())
    }

    /// Removes the calling patient's kfrags to `grantee_id` (one epoch, or
    /// all: revocation). Returns how many sets went; none is not an error.
    pub async fn delete_kfrags(
        &self,
        caller: &Caller,
        partition: &PartitionName,
        grantee_id: &UserId,
        epoch: Option<u32>,
    ) -> Result<usize, DomainError> {
        let owner_id = Self::owner_of(caller)?;
        let store = self.store.clone();
        let (o, p, g) = (owner_id.clone(), partition.clone(), grantee_id.clone());
        let removed = off_executor(move || store.delete_kfrags(&o, &p, &g, epoch)).await?;
        let detail = format!("{removed} kfrag set(s) of {grantee_id} removed");
        self.audit(
            &caller.to_string(),
            Rpc::DeleteKfrags,
            (owner_id, partition),
            Outcome::Ok,
            &detail,
        )
        .await;
        Ok(removed)
    }

    /// The first step of a re-encryption, taken before the request is even
    /// read: only patients and practitioners may ask, and each identity has
    /// a ReEncrypt allowance, spent by malformed requests too.
    pub fn admit_reencryption(&self, caller: &Caller) -> Result<ReEncryptPermit, DomainError> {
        self.admit_reencryption_at(caller, Instant::now())
    }

    /// [`admit_reencryption`](Self::admit_reencryption) at a given time.
    pub fn admit_reencryption_at(
        &self,
        caller: &Caller,
        now: Instant,
    ) -> Result<ReEncryptPermit, DomainError> {
        let Some((_, grantee_id)) = caller.as_user() else {
            return Err(DomainError::NotEntitled(format!(
                "{caller} is not a patient or practitioner"
            )));
        };
        if !self.reencrypt_limiter.check(&caller.to_string(), now) {
            return Err(DomainError::UsedUp(format!(
                "re-encryption rate limit reached for {caller}; retry shortly"
            )));
        }
        Ok(ReEncryptPermit {
            grantee_id: grantee_id.clone(),
            caller: caller.clone(),
        })
    }

    /// Re-encrypts capsules for the admitted caller with this node's share:
    /// AccessPolicy must allow it, the caller must hold a kfrag here for
    /// that epoch, and the stored kfrag must still verify (a tampered
    /// database stays harmless). One cfrag per capsule, whatever was asked:
    /// a grantee can get no more than this node's one share.
    pub async fn re_encrypt(
        &self,
        permit: ReEncryptPermit,
        r: ReEncryption,
    ) -> Result<ReEncrypted, DomainError> {
        let ReEncryptPermit { caller, grantee_id } = permit;
        if r.capsules.is_empty() || r.capsules.len() > MAX_CAPSULES {
            return Err(DomainError::Malformed(format!(
                "send 1 to {MAX_CAPSULES} capsules, not {}",
                r.capsules.len()
            )));
        }
        let capsules = r
            .capsules
            .iter()
            .enumerate()
            .map(|(i, c)| {
                crypto::Capsule::from_bytes(c)
                    .map_err(|_| DomainError::Malformed(format!("capsule {i} is malformed")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let decision = self
            .gate
            .may_reencrypt(
                &caller,
                ReEncryptSubject {
                    owner_id: &r.owner_id,
                    partition: &r.partition,
                    epoch: r.epoch,
                    record_id: r.record_id.as_ref(),
                },
            )
            .await?;
        if !decision.allowed {
            return Err(DomainError::NotEntitled(format!(
                "{caller} may not have {}'s {} partition re-encrypted: {}",
                r.owner_id, r.partition, decision.reason
            )));
        }
        let store = self.store.clone();
        let (o, p, e, g) = (
            r.owner_id.clone(),
            r.partition.clone(),
            r.epoch,
            grantee_id.clone(),
        );
        let mut set = off_executor(move || store.kfrags(&o, &p, e, &g))
            .await?
            .ok_or_else(|| {
                DomainError::NotEntitled(format!(
                    "{caller} holds no re-encryption key at node {} for {}'s {} partition, epoch {}",
                    self.index, r.owner_id, r.partition, r.epoch
                ))
            })?;
        // This node's share is the set's one kfrag (a set carried over from
        // a single-node SRS may hold more; the first is its share).
        set.kfrags.truncate(1);
        let delegating_public_key = set.delegating_public_key.clone();
        let owner = self.directory.user(&r.owner_id).await?;
        let grantee = self.directory.user(&grantee_id).await?;
        let verified = self.verified.clone();
        let cfrags = off_executor(move || {
            // Kfrags were verified when stored; they are verified again
            // (once per distinct stored set, see `kfrag_cache`) so that a
            // tampered database stays harmless.
            let kfrags = verified.get_or_verify(
                &set.kfrags,
                &set.delegating_public_key,
                &owner.verifying_key,
                &grantee.pre_public_key,
            )?;
            let kfrag = kfrags
                .first()
                .ok_or_else(|| DomainError::Corrupt("a stored kfrag set is empty".into()))?;
            let mut rng = rand::rng();
            Ok(capsules
                .iter()
                .map(|capsule| {
                    crypto::reencrypt(&mut rng, capsule, kfrag)
                        .to_bytes()
                        .to_vec()
                })
                .collect())
        })
        .await?;
        Ok(ReEncrypted {
            cfrags,
            delegating_public_key,
        })
    }

    /// This node's share of the dedup OPRF on a blinded element, with its
    /// proof, within the caller's allowance (encoded as
    /// `sesphr_dedup::ShareEvaluation::to_bytes`). The evaluation is blind
    /// (the node cannot tell which file), but how often an identity asks is
    /// worth knowing: a burst of them is what a brute-force of a guessable
    /// file looks like, so each is audited.
    pub async fn evaluate_content_key(
        &self,
        caller: &Caller,
        blinded: &[u8],
    ) -> Result<Vec<u8>, DomainError> {
        self.evaluate_content_key_at(caller, blinded, Instant::now())
            .await
    }

    /// [`evaluate_content_key`](Self::evaluate_content_key) at a given time.
    pub async fn evaluate_content_key_at(
        &self,
        caller: &Caller,
        blinded: &[u8],
        now: Instant,
    ) -> Result<Vec<u8>, DomainError> {
        if !self.content_key_limiter.check(&caller.to_string(), now) {
            return Err(DomainError::UsedUp(format!(
                "content-key rate limit reached for {caller}; retry shortly"
            )));
        }
        let evaluation = sesphr_dedup::evaluate_share(&mut rand::rng(), &self.oprf_share, blinded)
            .map_err(|_| {
                DomainError::Malformed(
                    "blinded_element is not a valid P-256 point (33-byte SEC1 compressed)".into(),
                )
            })?;
        let owner = caller.as_patient().map(UserId::as_str).unwrap_or_default();
        self.audit(
            &caller.to_string(),
            Rpc::EvaluateContentKey,
            (owner, ""),
            Outcome::Probe,
            "content key share evaluated",
        )
        .await;
        Ok(evaluation.to_bytes().to_vec())
    }
}
