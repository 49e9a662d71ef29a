//! `sesphr.v1.AccessPolicy` over `sesphr-access-policy`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    Action, AuditEntry as DomainEntry, AuditEvent, AuditFilter, CheckQuery, Grant, PolicyStore,
};
use futures::Stream;
use sesphr_identity::{Identity, validate_partition, validate_user_id};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use sesphr::proto::access_policy_server::AccessPolicy;
use sesphr::proto::{self, AccessGrant};
use sesphr::rpc::RpcSpec;
use sesphr_mesh::auth::{self, RefusalAudit};
use sesphr_mesh::status::invalid;
use sesphr_mesh::{blocking, unix_now};
use std::convert::Infallible;
use tonic::codegen::BoxFuture;

/// Audit verifications that may run at once in this process: each walks
/// the whole chain, so more would only share the CPU with everyone else.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 1;
/// How long a `VerifyAudit` call waits for a running one to finish before
/// it is refused with `RESOURCE_EXHAUSTED`.
pub const VERIFY_QUEUE_WAIT: Duration = Duration::from_secs(2);

pub struct AccessPolicyService {
    store: Arc<PolicyStore>,
    trust_domain: String,
    verifications: Arc<Semaphore>,
}

impl AccessPolicyService {
    pub fn new(store: Arc<PolicyStore>, trust_domain: String) -> Self {
        Self {
            store,
            trust_domain,
            verifications: Arc::new(Semaphore::new(MAX_CONCURRENT_VERIFICATIONS)),
        }
    }

    /// The caller the authorization layer admitted, as its identity in this
    /// mesh (every RPC but `Enroll` requires a certificate).
    fn caller<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        auth::caller(req)?
            .identity(&self.trust_domain)
            .ok_or_else(|| {
                Status::unauthenticated("a client certificate from the mesh CA is required")
            })
    }
}

/// Refusals by the RPC table, written straight to this service's own log.
pub struct LocalRefusalAudit(pub Arc<PolicyStore>);

impl RefusalAudit for LocalRefusalAudit {
    fn refused(
        &self,
        caller: Identity,
        rpc: &'static RpcSpec,
        message: String,
    ) -> BoxFuture<(), Infallible> {
        let store = self.0.clone();
        Box::pin(async move {
            let event = AuditEvent {
                actor: caller.short(),
                action: format!("denied:{}", rpc.name),
                owner_id: String::new(),
                partition: String::new(),
                subject: String::new(),
                record_id: String::new(),
                outcome: "denied".into(),
                detail: message,
            };
            if let Err(status) = blocking(move || store.record_event(event, unix_now())).await {
                tracing::warn!(message = status.message(), "could not record a refusal");
            }
            Ok(())
        })
    }
}

fn grant_to_proto(g: Grant) -> AccessGrant {
    AccessGrant {
        owner_id: g.owner_id,
        partition: g.partition,
        grantee_id: g.grantee_id,
        grantee_role: proto::Role::from(g.grantee_role) as i32,
        epoch_min: g.epoch_min,
        epoch_max: g.epoch_max,
        not_before: g.not_before,
        expires_at: g.expires_at,
        granted_at: g.granted_at,
    }
}

fn role_from_wire(value: i32, field: &str) -> Result<sesphr_identity::Role, Status> {
    proto::Role::try_from(value)
        .ok()
        .and_then(proto::Role::to_domain)
        .ok_or_else(|| {
            Status::invalid_argument(format!("{field} must be a known role, not {value}"))
        })
}

fn entry_to_proto(e: DomainEntry) -> proto::AuditEntry {
    proto::AuditEntry {
        seq: e.seq,
        time: e.time,
        actor: e.actor,
        action: e.action,
        owner_id: e.owner_id,
        partition: e.partition,
        subject: e.subject,
        record_id: e.record_id,
        outcome: e.outcome,
        detail: e.detail,
        prev_hash: e.prev_hash.to_vec(),
        hash: e.hash.to_vec(),
    }
}

type AuditStream = Pin<Box<dyn Stream<Item = Result<proto::AuditEntry, Status>> + Send>>;

#[tonic::async_trait]
impl AccessPolicy for AccessPolicyService {
    async fn grant(
        &self,
        req: Request<proto::GrantRequest>,
    ) -> Result<Response<proto::GrantResponse>, Status> {
        let caller = self.caller(&req)?;
        let owner = caller.as_patient().unwrap_or_default().to_owned();
        let g = req
            .into_inner()
            .grant
            .ok_or_else(|| Status::invalid_argument("grant is required"))?;
        if !g.owner_id.is_empty() && g.owner_id != owner {
            return Err(Status::permission_denied(format!(
                "patient {owner} may only grant access to its own records, not {:?}'s",
                g.owner_id
            )));
        }
        validate_partition(&g.partition).map_err(invalid)?;
        validate_user_id(&g.grantee_id).map_err(invalid)?;
        let grant = Grant {
            owner_id: owner,
            partition: g.partition,
            grantee_id: g.grantee_id,
            grantee_role: role_from_wire(g.grantee_role, "grant.grantee_role")?,
            epoch_min: g.epoch_min,
            epoch_max: g.epoch_max,
            not_before: g.not_before,
            expires_at: g.expires_at,
            granted_at: 0,
        };
        let store = self.store.clone();
        let actor = caller.short();
        let stored = blocking(move || store.grant(grant, &actor, unix_now())).await?;
        tracing::info!(owner = %stored.owner_id, partition = %stored.partition, grantee = %stored.grantee_id, "grant recorded");
        Ok(Response::new(proto::GrantResponse {
            grant: Some(grant_to_proto(stored)),
        }))
    }

    async fn revoke(
        &self,
        req: Request<proto::RevokeRequest>,
    ) -> Result<Response<proto::RevokeResponse>, Status> {
        let caller = self.caller(&req)?;
        let owner = caller.as_patient().unwrap_or_default().to_owned();
        let r = req.into_inner();
        validate_partition(&r.partition).map_err(invalid)?;
        validate_user_id(&r.grantee_id).map_err(invalid)?;
        let store = self.store.clone();
        let actor = caller.short();
        let removed =
            blocking(move || store.revoke(&owner, &r.partition, &r.grantee_id, &actor, unix_now()))
                .await?;
        tracing::info!(owner = %removed.owner_id, partition = %removed.partition, grantee = %removed.grantee_id, "grant revoked");
        Ok(Response::new(proto::RevokeResponse {
            grant: Some(grant_to_proto(removed)),
        }))
    }

    async fn check(
        &self,
        req: Request<proto::CheckRequest>,
    ) -> Result<Response<proto::CheckResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        validate_user_id(&r.owner_id).map_err(invalid)?;
        validate_partition(&r.partition).map_err(invalid)?;
        validate_user_id(&r.grantee_id).map_err(invalid)?;
        if !r.record_id.is_empty() {
            sesphr_identity::validate_record_id(&r.record_id).map_err(invalid)?;
        }
        let action = match proto::CheckAction::try_from(r.action) {
            Ok(proto::CheckAction::Read) => Action::Read,
            Ok(proto::CheckAction::Reencrypt) => Action::ReEncrypt,
            Ok(proto::CheckAction::List) => Action::List,
            _ => {
                return Err(Status::invalid_argument(
                    "action must be READ, REENCRYPT or LIST",
                ));
            }
        };
        let query = CheckQuery {
            owner_id: r.owner_id,
            partition: r.partition,
            grantee_id: r.grantee_id,
            grantee_role: role_from_wire(r.grantee_role, "grantee_role")?,
            epoch: r.epoch,
            record_created_at: r.record_created_at,
            record_id: (!r.record_id.is_empty()).then_some(r.record_id),
            action,
        };
        let store = self.store.clone();
        let actor = caller.short();
        let decision = blocking(move || store.check(&query, &actor, unix_now())).await?;
        Ok(Response::new(proto::CheckResponse {
            allowed: decision.allowed,
            reason: decision.reason,
            caller_reason: decision.caller_reason,
            grant: decision.grant.map(grant_to_proto),
        }))
    }

    async fn list_grants(
        &self,
        req: Request<proto::ListGrantsRequest>,
    ) -> Result<Response<proto::ListGrantsResponse>, Status> {
        let caller = self.caller(&req)?;
        let (role, id) = caller
            .as_user()
            .map(|(r, id)| (r, id.to_owned()))
            .ok_or_else(|| Status::permission_denied("only users have grants"))?;
        let store = self.store.clone();
        let (given, received) = blocking(move || {
            let given = if role == sesphr_identity::Role::Patient {
                store.grants_given(&id)?
            } else {
                Vec::new()
            };
            Ok::<_, crate::DomainError>((given, store.grants_received(&id)?))
        })
        .await?;
        Ok(Response::new(proto::ListGrantsResponse {
            given: given.into_iter().map(grant_to_proto).collect(),
            received: received.into_iter().map(grant_to_proto).collect(),
        }))
    }

    type ListAuditStream = AuditStream;

    async fn list_audit(
        &self,
        req: Request<proto::ListAuditRequest>,
    ) -> Result<Response<Self::ListAuditStream>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        // The store applies its default (0) and cap.
        let limit = r.limit as usize;
        // Operators see everything; a patient only entries about its records.
        let owner_id = if caller.is_operator() {
            None
        } else {
            Some(caller.as_patient().unwrap_or_default().to_owned())
        };
        let filter = AuditFilter {
            owner_id,
            after_seq: r.after_seq,
            limit,
        };
        let store = self.store.clone();
        let reader = caller.short();
        let entries = blocking(move || {
            let entries = store.audit(&filter)?;
            // Best effort: a log that refuses appends must stay readable.
            if let Err(e) = store.record_audit_listing(
                &reader,
                filter.owner_id.as_deref(),
                filter.after_seq,
                entries.len(),
                unix_now(),
            ) {
                tracing::warn!(error = %e, %reader, "could not audit an audit listing");
            }
            Ok::<_, crate::DomainError>(entries)
        })
        .await?;
        let stream = futures::stream::iter(entries.into_iter().map(|e| Ok(entry_to_proto(e))));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify_audit(
        &self,
        req: Request<proto::VerifyAuditRequest>,
    ) -> Result<Response<proto::VerifyAuditResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        let expected = match (r.expected_seq, r.expected_hash.len()) {
            (0, 0) => None,
            (seq, 32) if seq > 0 => {
                let mut h = [0u8; 32];
                h.copy_from_slice(&r.expected_hash);
                Some((seq, h))
            }
            _ => {
                return Err(Status::invalid_argument(
                    "expected_seq and expected_hash (32 bytes) go together",
                ));
            }
        };
        let permit = tokio::time::timeout(
            VERIFY_QUEUE_WAIT,
            self.verifications.clone().acquire_owned(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            tracing::warn!(caller = %caller.short(), "audit verification refused: one is already running");
            Status::resource_exhausted(format!(
                "another audit verification is running and did not finish within {} s; \
                 retry later",
                VERIFY_QUEUE_WAIT.as_secs()
            ))
        })?;
        let store = self.store.clone();
        // Operators get the global report; a patient only what concerns
        // her own entries.
        match caller.as_patient().map(str::to_owned) {
            Some(owner) => {
                let report = blocking(move || {
                    // Held by the walk itself, so a caller that goes away
                    // does not free the slot while it still runs.
                    let _permit = permit;
                    store.verify_audit_for(&owner, expected)
                })
                .await?;
                Ok(Response::new(proto::VerifyAuditResponse {
                    ok: report.ok,
                    entries: report.entries,
                    head_seq: report.head_seq,
                    head_hash: report.head_hash.to_vec(),
                    first_bad_seq: None,
                    problem: report.problem.unwrap_or_default(),
                }))
            }
            _ => {
                let report = blocking(move || {
                    let _permit = permit;
                    store.verify_audit(expected)
                })
                .await?;
                Ok(Response::new(proto::VerifyAuditResponse {
                    ok: report.ok,
                    entries: report.entries,
                    head_seq: report.head_seq,
                    head_hash: report.head_hash.to_vec(),
                    first_bad_seq: report.first_bad_seq,
                    problem: report.problem.unwrap_or_default(),
                }))
            }
        }
    }

    async fn record_event(
        &self,
        req: Request<proto::RecordEventRequest>,
    ) -> Result<Response<proto::RecordEventResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        for (name, value) in [
            ("action", &r.action),
            ("owner_id", &r.owner_id),
            ("partition", &r.partition),
            ("subject", &r.subject),
            ("record_id", &r.record_id),
            ("outcome", &r.outcome),
        ] {
            if value.len() > 256 {
                return Err(Status::invalid_argument(format!(
                    "{name} is longer than 256 bytes"
                )));
            }
        }
        if r.action.is_empty() {
            return Err(Status::invalid_argument("action is required"));
        }
        if r.detail.len() > 4096 {
            return Err(Status::invalid_argument("detail is longer than 4096 bytes"));
        }
        let event = AuditEvent {
            actor: caller.short(),
            action: r.action,
            owner_id: r.owner_id,
            partition: r.partition,
            subject: r.subject,
            record_id: r.record_id,
            outcome: r.outcome,
            detail: r.detail,
        };
        let store = self.store.clone();
        let entry = blocking(move || store.record_event(event, unix_now())).await?;
        // 0: a refusal over its identity's budget, counted into a coalesced
        // entry written later.
        Ok(Response::new(proto::RecordEventResponse {
            seq: entry.map_or(0, |e| e.seq),
        }))
    }
}
