//! How CloudStorage and the SRS ask AccessPolicy.
//!
//! Every call carries a deadline. When AccessPolicy cannot be reached or does
//! not answer in time, the asking service refuses the request with
//! `UNAVAILABLE` — it fails closed, never open.

use std::time::Duration;

use sesphr_domain::DomainError;
use sesphr_identity::{Caller, Identity};
use std::convert::Infallible;

use sesphr::rpc::{Rpc, RpcSpec};
use tonic::codegen::BoxFuture;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::auth::RefusalAudit;

use sesphr::proto::access_policy_client::AccessPolicyClient;
use sesphr::proto::{CheckAction, CheckRequest, CheckResponse, RecordEventRequest};

/// A client of AccessPolicy, authenticated as the calling service.
#[derive(Clone, Debug)]
pub struct PolicyClient {
    inner: AccessPolicyClient<Channel>,
    timeout: Duration,
}

/// What a check is about.
pub struct CheckSubject<'a> {
    pub owner_id: &'a str,
    pub partition: &'a str,
    pub epoch: u32,
    pub record_created_at: Option<i64>,
    pub record_id: &'a str,
    pub action: CheckAction,
}

impl PolicyClient {
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            inner: AccessPolicyClient::new(channel),
            timeout,
        }
    }

    /// The generated client over the same connection (the deny-list
    /// follower shares it: one connection per service to AccessPolicy).
    pub fn grpc(&self) -> AccessPolicyClient<Channel> {
        self.inner.clone()
    }

    /// Asks whether `grantee` may act on the subject. `Ok` carries the
    /// decision (allowed or not, with the grant window); `Err` means no
    /// decision could be had, and the caller must refuse.
    pub async fn check(
        &self,
        grantee: &Identity,
        subject: CheckSubject<'_>,
    ) -> Result<CheckResponse, Status> {
        let (role, grantee_id) = grantee.as_user().ok_or_else(|| {
            Status::permission_denied(format!("{} is not a user", grantee.short()))
        })?;
        let mut req = tonic::Request::new(CheckRequest {
            owner_id: subject.owner_id.to_owned(),
            partition: subject.partition.to_owned(),
            grantee_id: grantee_id.to_owned(),
            grantee_role: sesphr::proto::Role::from(role) as i32,
            epoch: subject.epoch,
            record_created_at: subject.record_created_at,
            record_id: subject.record_id.to_owned(),
            action: subject.action as i32,
        });
        req.set_timeout(self.timeout);
        let mut inner = self.inner.clone();
        self.bounded(inner.check(req))
            .await
            .map(|r| r.into_inner())
            .map_err(fail_closed)
    }

    /// [`check`](Self::check) for a typed caller, its failure as a domain
    /// fact: a caller that is no user is not entitled; AccessPolicy's
    /// verdict on the request's syntax stays `Malformed`, a refusal
    /// `NotEntitled`, and every failure to get an answer is `Unavailable`
    /// (fail closed). The messages are the ones clients always heard.
    pub async fn check_caller(
        &self,
        grantee: &Caller,
        trust_domain: &str,
        subject: CheckSubject<'_>,
    ) -> Result<CheckResponse, DomainError> {
        let identity = grantee
            .identity(trust_domain)
            .ok_or_else(|| DomainError::NotEntitled(format!("{grantee} is not a user")))?;
        self.check(&identity, subject).await.map_err(|status| {
            let message = status.message().to_owned();
            match status.code() {
                Code::InvalidArgument => DomainError::Malformed(message),
                Code::PermissionDenied => DomainError::NotEntitled(message),
                _ => DomainError::Unavailable(message),
            }
        })
    }

    /// Records an event (e.g. a denial) in the audit trail. Best effort: a
    /// failure is logged, and never changes the answer already decided.
    pub async fn record_event(&self, event: RecordEventRequest) {
        let mut req = tonic::Request::new(event);
        req.set_timeout(self.timeout);
        let mut inner = self.inner.clone();
        if let Err(status) = self.bounded(inner.record_event(req)).await {
            tracing::warn!(code = ?status.code(), message = status.message(), "could not record audit event");
        }
    }

    /// Audits that `caller` called `rpc` with `outcome`; a `"denied"`
    /// outcome is recorded as the event `denied:<rpc>`.
    pub async fn audit(
        &self,
        caller: &Identity,
        rpc: Rpc,
        about: AuditAbout<'_>,
        outcome: &str,
        detail: &str,
    ) {
        self.audit_subject(caller.short(), rpc, about, outcome, detail)
            .await;
    }

    /// [`audit`](Self::audit) for a caller named otherwise than by a
    /// certificate (e.g. `anonymous@192.0.2.7` at enrollment).
    pub async fn audit_subject(
        &self,
        subject: String,
        rpc: Rpc,
        about: AuditAbout<'_>,
        outcome: &str,
        detail: &str,
    ) {
        // The words AccessPolicy's `AuditAction` parses: the RPC table's
        // audit name, prefixed for refusals.
        let action = if outcome == "denied" {
            format!("denied:{}", rpc.audit_action())
        } else {
            rpc.audit_action().to_owned()
        };
        self.record_event(RecordEventRequest {
            action,
            owner_id: about.owner_id.to_owned(),
            partition: about.partition.to_owned(),
            subject,
            record_id: about.record_id.to_owned(),
            outcome: outcome.to_owned(),
            detail: detail.to_owned(),
        })
        .await;
    }
}

/// Refusals by the RPC table, written to AccessPolicy's audit log as
/// `denied:<rpc>`.
impl RefusalAudit for PolicyClient {
    fn refused(
        &self,
        caller: Identity,
        rpc: &'static RpcSpec,
        message: String,
    ) -> BoxFuture<(), Infallible> {
        let client = self.clone();
        Box::pin(async move {
            client
                .record_event(RecordEventRequest {
                    action: format!("denied:{}", rpc.name),
                    owner_id: String::new(),
                    partition: String::new(),
                    subject: caller.short(),
                    record_id: String::new(),
                    outcome: "denied".into(),
                    detail: message,
                })
                .await;
            Ok(())
        })
    }
}

/// Whose data an audited event is about (empty where it does not apply).
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditAbout<'a> {
    pub owner_id: &'a str,
    pub partition: &'a str,
    pub record_id: &'a str,
}

impl PolicyClient {
    /// The deadline, enforced here too: `grpc-timeout` bounds only calls on
    /// an established connection, not a peer that accepts TCP and then
    /// never completes the TLS handshake.
    /// Puts `device` of `user_id` on the deny list until `until` (the
    /// setup service, when a user removes a device). `Ok` once AccessPolicy
    /// stored it durably; any failure is `Unavailable`: the caller retries.
    pub async fn revoke_device(
        &self,
        user_id: &str,
        device: &str,
        until: i64,
        reason: &str,
    ) -> Result<(), DomainError> {
        let mut req = tonic::Request::new(sesphr::proto::RevokeDeviceRequest {
            device: Some(sesphr::proto::RevokedDevice {
                user_id: user_id.to_owned(),
                device: device.to_owned(),
                until,
            }),
            reason: reason.to_owned(),
        });
        req.set_timeout(self.timeout);
        let mut inner = self.inner.clone();
        self.bounded(inner.revoke_device(req))
            .await
            .map(|_| ())
            .map_err(|status| {
                tracing::warn!(code = ?status.code(), message = status.message(), "device revocation failed");
                DomainError::Unavailable(format!(
                    "the device is removed, but AccessPolicy could not be told to revoke its \
                     certificates ({}); repeat the removal",
                    status.message()
                ))
            })
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )))
            })
    }
}

/// Any failure to get a decision becomes `UNAVAILABLE` with a clear message.
fn fail_closed(status: Status) -> Status {
    tracing::warn!(code = ?status.code(), message = status.message(), "access policy check failed");
    match status.code() {
        Code::InvalidArgument => status,
        _ => Status::unavailable(format!(
            "access policy could not be asked ({}); refusing access",
            status.message()
        )),
    }
}
