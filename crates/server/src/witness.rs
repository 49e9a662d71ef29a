//! The audit log's two background jobs: AccessPolicy signing checkpoints,
//! and a witness (CloudStorage, each node) cosigning them.
//!
//! A witness keeps one pin — the last checkpoint it cosigned — durably in
//! its data directory. Each round it fetches AccessPolicy's newest
//! checkpoint, checks the log's signature, and cosigns only if the
//! checkpoint extends its pin (RFC 9162 consistency proof) — the pin is
//! moved on disk *before* the cosignature leaves, so a crash never lets it
//! cosign two diverging heads. A checkpoint that does not extend the pin is
//! refused for good: the witness logs the evidence every round and never
//! cosigns that log again until an operator looks (a changed pin file).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sesphr::proto;
use sesphr::proto::access_policy_client::AccessPolicyClient;
use sesphr_tlog::{Checkpoint, PublicKey, SignedCheckpoint, SigningKey, check_advance};
use tokio::sync::oneshot;
use tonic::transport::Channel;

use sesphr_mesh::unix_now;

/// Where a witness keeps its pin, inside its data directory.
pub fn pin_path(data_dir: &Path) -> PathBuf {
    data_dir.join("witness-pin")
}

/// Signs a checkpoint whenever the log grew, every `interval`, until
/// `stop` fires.
pub async fn publish_checkpoints(
    store: Arc<dyn sesphr_access_policy::backend::PolicyBackend>,
    key: Arc<SigningKey>,
    origin: String,
    interval: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => return,
        }
        let (s, k, o) = (store.clone(), key.clone(), origin.clone());
        match tokio::task::spawn_blocking(move || s.publish_checkpoint(&k, &o, unix_now())).await {
            Ok(Ok(Some(cp))) => {
                tracing::debug!(size = cp.checkpoint.size, "audit checkpoint signed")
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not sign an audit checkpoint"),
            Err(e) => tracing::error!(error = %e, "checkpoint task failed"),
        }
    }
}

/// What a witness needs.
pub struct Witness {
    pub name: String,
    pub key: SigningKey,
    pub log_key: PublicKey,
    pub origin: String,
    pub pin_path: PathBuf,
    pub interval: Duration,
    pub timeout: Duration,
}

/// Why one round did not cosign.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error("AccessPolicy: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("the checkpoint AccessPolicy served is malformed: {0}")]
    Malformed(String),
    #[error("the audit log's signature on checkpoint {size} does not verify")]
    BadSignature { size: u64 },
    #[error("the audit log is inconsistent with the last checkpoint this witness cosigned: {0}")]
    Inconsistent(#[from] sesphr_tlog::Inconsistency),
    #[error("pin file {path}: {message}")]
    Pin { path: PathBuf, message: String },
}

impl Witness {
    /// Reads the pin: the checkpoint body of the last cosigned head.
    pub fn load_pin(&self) -> Result<Option<Checkpoint>, RoundError> {
        let pin_err = |message: String| RoundError::Pin {
            path: self.pin_path.clone(),
            message,
        };
        match std::fs::read_to_string(&self.pin_path) {
            Ok(text) => Checkpoint::parse(&text)
                .map(Some)
                .map_err(|e| pin_err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(pin_err(e.to_string())),
        }
    }

    fn store_pin(&self, cp: &Checkpoint) -> Result<(), RoundError> {
        sesphr_mesh::pki::write_public(&self.pin_path, cp.body().as_bytes()).map_err(|e| {
            RoundError::Pin {
                path: self.pin_path.clone(),
                message: e.to_string(),
            }
        })
    }

    /// One round: fetch, verify, extend the pin, cosign. Returns the size
    /// cosigned, or `None` when there was nothing new.
    pub async fn round(
        &self,
        client: &mut AccessPolicyClient<Channel>,
        last_sent: Option<u64>,
    ) -> Result<Option<u64>, RoundError> {
        let reply = match client
            .get_checkpoint(tonic::Request::new(proto::GetCheckpointRequest {
                min_cosignatures: 0,
            }))
            .await
        {
            Ok(r) => r.into_inner(),
            // No checkpoint yet: an empty log.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => return Ok(None),
            Err(s) => return Err(s.into()),
        };
        let checkpoint = Checkpoint::parse(&reply.checkpoint)
            .map_err(|e| RoundError::Malformed(e.to_string()))?;
        let signature: [u8; 64] = reply
            .signature
            .try_into()
            .map_err(|_| RoundError::Malformed("signature is not 64 bytes".into()))?;
        let signed = SignedCheckpoint {
            checkpoint,
            signature,
        };
        let size = signed.checkpoint.size;
        if self.log_key.verify_checkpoint(&signed).is_err() {
            return Err(RoundError::BadSignature { size });
        }
        if signed.checkpoint.origin != self.origin {
            return Err(RoundError::Malformed(format!(
                "origin {:?}, expected {:?}",
                signed.checkpoint.origin, self.origin
            )));
        }
        let pinned = self.load_pin()?;
        if let Some(pin) = &pinned {
            let proof = if signed.checkpoint.size > pin.size && pin.size > 0 {
                let r = client
                    .get_consistency_proof(tonic::Request::new(proto::GetConsistencyProofRequest {
                        first: pin.size,
                        second: size,
                    }))
                    .await?
                    .into_inner();
                r.hashes
                    .into_iter()
                    .map(|h| <[u8; 32]>::try_from(h.as_slice()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| RoundError::Malformed("a proof hash is not 32 bytes".into()))?
            } else {
                Vec::new()
            };
            check_advance(pin, &signed.checkpoint, &proof)?;
            if pin == &signed.checkpoint && last_sent == Some(size) {
                return Ok(None);
            }
        }
        if pinned.as_ref() != Some(&signed.checkpoint) {
            self.store_pin(&signed.checkpoint)?;
        }
        let cosignature = self.key.cosign(&self.name, unix_now(), &signed.checkpoint);
        client
            .add_cosignature(tonic::Request::new(proto::AddCosignatureRequest {
                checkpoint: signed.checkpoint.body(),
                cosignature: Some(proto::Cosignature {
                    witness: cosignature.witness,
                    time: cosignature.time,
                    signature: cosignature.signature.to_vec(),
                }),
            }))
            .await?;
        Ok(Some(size))
    }

    /// Rounds every `interval` until `stop` fires.
    pub async fn run(
        self,
        mut client: AccessPolicyClient<Channel>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => return,
            }
            let round = tokio::time::timeout(self.timeout, self.round(&mut client, last_sent));
            match round.await {
                Ok(Ok(Some(size))) => {
                    last_sent = Some(size);
                    tracing::debug!(witness = %self.name, size, "audit checkpoint cosigned");
                }
                Ok(Ok(None)) => {}
                Ok(Err(e @ (RoundError::Inconsistent(_) | RoundError::BadSignature { .. }))) => {
                    tracing::error!(witness = %self.name, error = %e, "refusing to cosign the audit log");
                }
                Ok(Err(e)) => {
                    tracing::warn!(witness = %self.name, error = %e, "audit witness round failed")
                }
                Err(_) => tracing::warn!(witness = %self.name, "audit witness round timed out"),
            }
        }
    }
}
