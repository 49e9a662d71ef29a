//! Fanning out to the SRS's re-encryption nodes.
//!
//! The mesh file lists n nodes and a threshold t. A grant sends share `i`
//! of a t-of-n kfrag sharing to node `i` only, and stands once t nodes took
//! theirs (the others are owed theirs, see `pending`); a read asks every
//! node at once, checks each cfrag as it comes, and opens the capsule with
//! the first t that verify, so a slow, failing or lying node costs nothing
//! as long as t others answer; a revocation tells every node and owes the
//! unreachable ones; a content key combines t nodes' checked OPRF shares.
//! Every node is reached only if it presents its own identity
//! (`spiffe://<td>/service/srs-node/<i>`).
//!
//! What went wrong at single nodes while the call as a whole succeeded is
//! reported as [`Notices`] (the CLI prints them), and logged.

use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt};
use sesphr::proto;
use sesphr::proto::srs_node_client::SrsNodeClient;
use sesphr_crypto::{self as crypto, Capsule, CapsuleFrag, KemKey, PublicKey, SecretKey};
use sesphr_identity::NodeIndex;
use tonic::{Code, Status};

use crate::deadline::TimedChannel;
use crate::pending::{Owed, Pending, PendingOp};
use crate::pins::UserKeys;
use crate::{ClientError, unary};

/// One re-encryption node, as a client reaches it.
#[derive(Clone, Debug)]
pub struct NodeClient {
    /// Which node.
    pub index: NodeIndex,
    /// Where it is.
    pub url: String,
    /// Its gRPC client (it must present the node's identity).
    pub client: SrsNodeClient<TimedChannel>,
    /// Its public share of the dedup OPRF key.
    pub oprf_public_share: [u8; 33],
}

/// The nodes of the mesh and how many a read needs.
#[derive(Clone, Debug)]
pub struct Nodes {
    /// How many nodes a read needs.
    pub threshold: usize,
    /// In index order, `1..=n`.
    pub nodes: Vec<NodeClient>,
}

/// What went wrong at single nodes while a call succeeded.
#[derive(Clone, Debug, Default)]
pub struct Notices(Arc<Mutex<Vec<String>>>);

impl Notices {
    pub(crate) fn push(&self, notice: String) {
        tracing::warn!("{notice}");
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(notice);
    }

    /// The notices so far, emptied.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Whether a node's error is an answer about the request (so the caller
/// should hear it) rather than the node being away.
fn is_answer(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::Unauthenticated
    )
}

fn describe(node: &NodeClient, status: &Status) -> String {
    format!(
        "node {} ({}): {:?}: {}",
        node.index,
        node.url,
        status.code(),
        crate::printable(status.message())
    )
}

fn node_error(node: &NodeClient, status: Status) -> ClientError {
    ClientError::Rpc {
        service: "SRS node",
        status: Box::new(Status::new(status.code(), describe(node, &status))),
    }
}

impl Nodes {
    fn n(&self) -> usize {
        self.nodes.len()
    }

    /// Makes `grantee`'s t-of-n kfrags from `sk` (the partition key at
    /// `epoch`) and sends share `i` to node `i`. Succeeds once t nodes took
    /// theirs; the others are owed theirs in `pending`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn put_grant(
        &self,
        owner_id: &str,
        partition: &str,
        epoch: u32,
        (sk, pk): (&SecretKey, &PublicKey),
        signer: &crypto::SigningKey,
        grantee: &UserKeys,
        pending: &Pending,
        notices: &Notices,
    ) -> Result<(), ClientError> {
        let context = crypto::grant_context(owner_id, partition, epoch, &grantee.user_id);
        let kfrags = crypto::generate_node_kfrags(
            &mut rand::rng(),
            sk,
            &grantee.pre_public_key,
            signer,
            self.threshold,
            self.n(),
            &context,
        )?;
        let delegating = pk.to_bytes().to_vec();
        let calls = self.nodes.iter().zip(&kfrags).map(|(node, kfrag)| {
            let req = proto::PutKfragRequest {
                partition: partition.to_owned(),
                epoch,
                grantee_id: grantee.user_id.clone(),
                delegating_public_key: delegating.clone(),
                kfrag: kfrag.to_bytes().to_vec(),
            };
            let mut client = node.client.clone();
            async move { (node, req.kfrag.clone(), client.put_kfrag(unary(req)).await) }
        });
        let results = futures::future::join_all(calls).await;
        let mut owed = Vec::new();
        let mut took = 0;
        for (node, kfrag, result) in results {
            match result {
                Ok(_) => took += 1,
                // A node that understood and refused: the grant is wrong
                // (or the node lies); nothing is owed, the owner hears it.
                Err(status) if is_answer(&status) => return Err(node_error(node, status)),
                Err(status) => owed.push((node, kfrag, status)),
            }
        }
        if took < self.threshold {
            let away: Vec<String> = owed.iter().map(|(n, _, s)| describe(n, s)).collect();
            return Err(ClientError::Rpc {
                service: "SRS nodes",
                status: Box::new(Status::unavailable(format!(
                    "only {took} of the {} re-encryption nodes took their kfrag share; a grant \
                     needs {}. Not reached: {}",
                    self.n(),
                    self.threshold,
                    away.join("; ")
                ))),
            });
        }
        let now = sesphr_mesh::unix_now();
        let mut ops = Vec::new();
        for (node, kfrag, status) in owed {
            notices.push(format!(
                "{} did not take its kfrag share for {} ({partition}, epoch {epoch}); it is sent \
                 again before your next grant, revoke or rotate, or with `sesphr retry`",
                describe(node, &status),
                grantee.user_id
            ));
            ops.push(PendingOp {
                node: node.index.get(),
                partition: partition.to_owned(),
                grantee_id: grantee.user_id.clone(),
                since: now,
                owed: Owed::Put {
                    epoch,
                    delegating_public_key: hex::encode(&delegating),
                    kfrag: hex::encode(&kfrag),
                },
            });
        }
        pending.add(ops)
    }

    /// Deletes every kfrag share of `(partition, grantee)` at every node.
    /// Shares still owed for that grant are dropped first; nodes that
    /// cannot be reached are owed the deletion. Returns those nodes.
    pub(crate) async fn delete_grant(
        &self,
        partition: &str,
        grantee_id: &str,
        pending: &Pending,
        notices: &Notices,
    ) -> Result<Vec<NodeIndex>, ClientError> {
        pending.drop_puts(partition, grantee_id)?;
        let calls = self.nodes.iter().map(|node| {
            let mut client = node.client.clone();
            let req = proto::DeleteKfragsRequest {
                partition: partition.to_owned(),
                grantee_id: grantee_id.to_owned(),
                epoch: None,
            };
            async move { (node, client.delete_kfrags(unary(req)).await) }
        });
        let now = sesphr_mesh::unix_now();
        let mut unreached = Vec::new();
        let mut ops = Vec::new();
        for (node, result) in futures::future::join_all(calls).await {
            if let Err(status) = result {
                notices.push(format!(
                    "{} did not confirm deleting {grantee_id}'s kfrag shares ({partition}); \
                     AccessPolicy already refuses {grantee_id}, and the deletion is sent again \
                     before your next grant, revoke or rotate, or with `sesphr retry`",
                    describe(node, &status)
                ));
                unreached.push(node.index);
                ops.push(PendingOp {
                    node: node.index.get(),
                    partition: partition.to_owned(),
                    grantee_id: grantee_id.to_owned(),
                    since: now,
                    owed: Owed::Delete,
                });
            }
        }
        pending.add(ops)?;
        Ok(unreached)
    }

    /// Replays owed operations, in order per node; a node that fails again
    /// keeps the rest of its list. Returns how many are still owed.
    pub(crate) async fn retry(&self, pending: &Pending) -> Result<usize, ClientError> {
        let ops = pending.load()?;
        if ops.is_empty() {
            return Ok(0);
        }
        let mut left = Vec::new();
        let mut failed_nodes: Vec<u8> = Vec::new();
        for op in ops {
            let Some(node) = self.nodes.iter().find(|n| n.index.get() == op.node) else {
                // A node no longer in the mesh file is owed nothing.
                continue;
            };
            if failed_nodes.contains(&op.node) {
                left.push(op);
                continue;
            }
            let mut client = node.client.clone();
            let result = match &op.owed {
                Owed::Delete => client
                    .delete_kfrags(unary(proto::DeleteKfragsRequest {
                        partition: op.partition.clone(),
                        grantee_id: op.grantee_id.clone(),
                        epoch: None,
                    }))
                    .await
                    .map(drop),
                Owed::Put {
                    epoch,
                    delegating_public_key,
                    kfrag,
                } => {
                    let (Ok(delegating_public_key), Ok(kfrag)) =
                        (hex::decode(delegating_public_key), hex::decode(kfrag))
                    else {
                        return Err(ClientError::Profile(
                            "pending-nodes.toml holds a share that is not hex".into(),
                        ));
                    };
                    client
                        .put_kfrag(unary(proto::PutKfragRequest {
                            partition: op.partition.clone(),
                            epoch: *epoch,
                            grantee_id: op.grantee_id.clone(),
                            delegating_public_key,
                            kfrag,
                        }))
                        .await
                        .map(drop)
                }
            };
            match result {
                Ok(()) => {}
                // Refused for good (e.g. the grantee is gone): not owed.
                Err(status) if is_answer(&status) => {
                    tracing::warn!("{}: owed operation dropped", describe(node, &status))
                }
                Err(_) => {
                    failed_nodes.push(op.node);
                    left.push(op);
                }
            }
        }
        let still = left.len();
        pending.save(left)?;
        Ok(still)
    }

    /// The KEM key of a capsule of `owner`'s partition epoch, re-encrypted
    /// for the caller by t nodes, every cfrag verified against the owner's
    /// verifying key before it is used.
    pub(crate) async fn reencrypt(
        &self,
        meta: &proto::RecordMeta,
        capsule: &Capsule,
        verifying_key: &crypto::VerifyingKey,
        (my_sk, my_pk): (&SecretKey, &PublicKey),
        notices: &Notices,
    ) -> Result<KemKey, ClientError> {
        let mut calls: FuturesUnordered<_> = self
            .nodes
            .iter()
            .map(|node| {
                let mut client = node.client.clone();
                let req = proto::ReEncryptRequest {
                    owner_id: meta.owner_id.clone(),
                    partition: meta.partition.clone(),
                    epoch: meta.epoch,
                    capsules: vec![capsule.to_bytes().to_vec()],
                    record_id: meta.record_id.clone(),
                };
                async move { (node, client.re_encrypt(unary(req)).await) }
            })
            .collect();
        // Verified cfrags by the sharing they come from: a node that missed
        // a re-grant still holds a share of the earlier one, and shares of
        // two sharings do not combine.
        let mut sharings: Vec<([u8; 33], Vec<crypto::VerifiedCapsuleFrag>)> = Vec::new();
        let mut delegating: Option<PublicKey> = None;
        let mut away = Vec::new();
        let mut answers = Vec::new();
        while let Some((node, result)) = calls.next().await {
            let resp = match result {
                Ok(r) => r.into_inner(),
                Err(status) if is_answer(&status) => {
                    answers.push((node, status));
                    continue;
                }
                Err(status) => {
                    away.push(describe(node, &status));
                    continue;
                }
            };
            match check_cfrag(&resp, capsule, verifying_key, delegating.as_ref(), my_pk) {
                Ok((key, cfrag)) => {
                    delegating.get_or_insert(key);
                    match sharings.iter_mut().find(|(p, _)| p == cfrag.precursor()) {
                        Some((_, group)) => group.push(cfrag),
                        None => sharings.push((*cfrag.precursor(), vec![cfrag])),
                    }
                }
                Err(why) => {
                    notices.push(format!(
                        "node {} ({}) returned a {why}; it was skipped",
                        node.index, node.url
                    ));
                    away.push(format!("node {}: {why}", node.index));
                    continue;
                }
            }
            if let Some((_, verified)) = sharings.iter().find(|(_, g)| g.len() == self.threshold) {
                // The rest are dropped (cancelled): the read does not wait.
                let delegating = delegating.expect("set with the first verified cfrag");
                return Ok(crypto::decapsulate_reencrypted(
                    my_sk,
                    &delegating,
                    capsule,
                    verified,
                )?);
            }
        }
        // Fewer than t: an answer (not entitled, unknown) is what the
        // caller needs to hear, unless nodes were merely away.
        if away.is_empty() && !answers.is_empty() {
            let (node, status) = answers.swap_remove(0);
            return Err(node_error(node, status));
        }
        away.extend(answers.iter().map(|(n, s)| describe(n, s)));
        let best = sharings.iter().map(|(_, g)| g.len()).max().unwrap_or(0);
        if sharings.len() > 1 {
            away.push(format!(
                "the valid cfrags come from {} different kfrag sharings (a node missed a \
                 re-grant; the owner's `sesphr retry` delivers it)",
                sharings.len()
            ));
        }
        Err(ClientError::Rpc {
            service: "SRS nodes",
            status: Box::new(Status::unavailable(format!(
                "{} of the {} re-encryption nodes a read needs gave a valid cfrag ({} in the \
                 mesh); no usable answer from: {}",
                best,
                self.threshold,
                self.n(),
                away.join("; ")
            ))),
        })
    }

    /// The OPRF evaluation of `blinded` under the mesh's key: t nodes'
    /// shares, each checked against that node's public share, combined.
    pub(crate) async fn content_key(
        &self,
        blinded: &[u8],
        notices: &Notices,
    ) -> Result<[u8; 33], ClientError> {
        let mut calls: FuturesUnordered<_> = self
            .nodes
            .iter()
            .map(|node| {
                let mut client = node.client.clone();
                let req = proto::EvaluateContentKeyRequest {
                    blinded_element: blinded.to_vec(),
                };
                async move { (node, client.evaluate_content_key(unary(req)).await) }
            })
            .collect();
        let mut good = Vec::with_capacity(self.threshold);
        let mut away = Vec::new();
        while let Some((node, result)) = calls.next().await {
            let bytes = match result {
                Ok(r) => r.into_inner().share_evaluation,
                Err(status) if is_answer(&status) => return Err(node_error(node, status)),
                Err(status) => {
                    away.push(describe(node, &status));
                    continue;
                }
            };
            let checked = sesphr_dedup::ShareEvaluation::from_bytes(&bytes)
                .ok()
                .filter(|e| {
                    sesphr_dedup::verify_share(
                        node.index.get(),
                        &node.oprf_public_share,
                        blinded,
                        e,
                    )
                    .is_ok()
                });
            let Some(evaluation) = checked else {
                notices.push(format!(
                    "node {} ({}) returned an OPRF share that does not verify; it was skipped",
                    node.index, node.url
                ));
                away.push(format!("node {}: invalid OPRF share", node.index));
                continue;
            };
            good.push(evaluation);
            if good.len() == self.threshold {
                let t = u8::try_from(self.threshold).unwrap_or(u8::MAX);
                return sesphr_dedup::combine(t, &good).map_err(|e| {
                    ClientError::Verification(format!("OPRF shares do not combine: {e}"))
                });
            }
        }
        Err(ClientError::Rpc {
            service: "SRS nodes",
            status: Box::new(Status::unavailable(format!(
                "{} of the {} re-encryption nodes a content key needs answered; no usable \
                 answer from: {}",
                good.len(),
                self.threshold,
                away.join("; ")
            ))),
        })
    }
}

/// One node's answer for one capsule: exactly one cfrag, which verifies
/// under the owner's key and the same delegating key as the others.
fn check_cfrag(
    resp: &proto::ReEncryptResponse,
    capsule: &Capsule,
    verifying_key: &crypto::VerifyingKey,
    agreed: Option<&PublicKey>,
    my_pk: &PublicKey,
) -> Result<(PublicKey, crypto::VerifiedCapsuleFrag), &'static str> {
    let [bytes] = resp.cfrags.as_slice() else {
        return Err("answer with other than one cfrag for one capsule");
    };
    let delegating = PublicKey::from_bytes(&resp.delegating_public_key)
        .map_err(|_| "malformed delegating key")?;
    if agreed.is_some_and(|a| *a != delegating) {
        return Err("delegating key other nodes did not give");
    }
    let cfrag = CapsuleFrag::from_bytes(bytes).map_err(|_| "malformed cfrag")?;
    let cfrag = cfrag
        .verify(capsule, verifying_key, &delegating, my_pk)
        .map_err(|_| "cfrag that does not verify against the owner's kfrags")?;
    Ok((delegating, cfrag))
}
