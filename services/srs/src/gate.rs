//! What the setup service and the re-encryption nodes share: their view of
//! AccessPolicy (ask before re-encrypting; write the audit trail) and small
//! helpers for running store work and parsing keys.

use std::future::Future;

use sesphr::rpc::Rpc;
use sesphr_crypto as crypto;
use sesphr_domain::DomainError;
use sesphr_identity::{Caller, PartitionName, RecordId, UserId};

/// What AccessPolicy decided about a re-encryption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Why not, in words meant for the caller (empty when allowed).
    pub reason: String,
}

/// Whose partition a re-encryption is about.
#[derive(Debug, Clone, Copy)]
pub struct ReEncryptSubject<'a> {
    pub owner_id: &'a UserId,
    pub partition: &'a PartitionName,
    pub epoch: u32,
    pub record_id: Option<&'a RecordId>,
}

/// How an audited call ended, as the audit trail spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Denied,
    /// A read that reveals something (a lookup, an evaluation) but changes
    /// nothing.
    Probe,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Probe => "probe",
        }
    }
}

/// One entry for the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    /// Who: `patient/alice`, `anonymous@192.0.2.7`.
    pub subject: &'a str,
    pub rpc: Rpc,
    /// Whose data it is about (empty where it does not apply).
    pub owner_id: &'a str,
    pub partition: &'a str,
    pub outcome: Outcome,
    pub detail: &'a str,
}

/// The SRS's view of AccessPolicy: ask before re-encrypting, and write the
/// audit trail.
pub trait AccessGate: Send + Sync + 'static {
    /// Whether `grantee` may have the subject re-encrypted. `Err` means no
    /// decision could be had; the caller must refuse (fail closed).
    fn may_reencrypt(
        &self,
        grantee: &Caller,
        subject: ReEncryptSubject<'_>,
    ) -> impl Future<Output = Result<Decision, DomainError>> + Send;

    /// Records an event. Best effort: a failure never changes an answer
    /// already decided.
    fn audit(&self, event: AuditEvent<'_>) -> impl Future<Output = ()> + Send;

    /// Puts a removed device of `user_id` on the deny list until `until`
    /// (unix seconds); returns once that is durable.
    fn revoke_device(
        &self,
        user_id: &str,
        device: &str,
        until: i64,
    ) -> impl Future<Output = Result<(), DomainError>> + Send;
}

/// Runs store work (sled flushes are fsyncs) and CPU-heavy crypto off the
/// async executor.
pub(crate) async fn off_executor<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DomainError> + Send + 'static,
) -> Result<T, DomainError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(error = %e, "blocking task failed");
            Err(DomainError::Unavailable(
                "internal error (task failed); retry".into(),
            ))
        }
    }
}

pub(crate) fn parse_public_key(
    bytes: &[u8],
    field: &str,
) -> Result<crypto::PublicKey, DomainError> {
    crypto::PublicKey::from_bytes(bytes).map_err(|_| {
        DomainError::Malformed(format!(
            "{field} is not a valid P-256 public key (33-byte SEC1 compressed point)"
        ))
    })
}

pub(crate) fn parse_verifying_key(
    bytes: &[u8],
    field: &str,
) -> Result<crypto::VerifyingKey, DomainError> {
    crypto::VerifyingKey::from_bytes(bytes).map_err(|_| {
        DomainError::Malformed(format!(
            "{field} is not a valid P-256 verifying key (33-byte SEC1 compressed point)"
        ))
    })
}

/// What the audit trail says about a refusal: what the client is told
/// (storage failures are summarized there, so they are here too).
pub(crate) fn refusal_detail(e: &DomainError) -> String {
    match e {
        DomainError::Backend(b) => {
            let what = b.kind();
            format!("{what} storage error; the operation was not applied")
        }
        other => other.to_string(),
    }
}

/// Writes one audit entry through `gate` (best effort, like
/// [`AccessGate::audit`]).
pub(crate) async fn audit(
    gate: &impl AccessGate,
    subject: &str,
    rpc: Rpc,
    (owner_id, partition): (&str, &str),
    outcome: Outcome,
    detail: &str,
) {
    gate.audit(AuditEvent {
        subject,
        rpc,
        owner_id,
        partition,
        outcome,
        detail,
    })
    .await;
}
