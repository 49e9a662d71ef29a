//! `sesphr.v1.AccessPolicy` over `sesphr-access-policy`: decodes requests
//! into domain types, hands them with the typed caller to [`Policy`], and
//! encodes the answers. The rules live in [`crate::policy`].

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sesphr_identity::{Identity, PartitionName, RecordId, UserId};
use tonic::codegen::BoxFuture;
use tonic::{Request, Response, Status};

use sesphr::proto::access_policy_server::AccessPolicy;
use sesphr::proto::{self, AccessGrant};
use sesphr::rpc::RpcSpec;
use sesphr_mesh::auth::{self, RefusalAudit};
use sesphr_mesh::deny::DenyList;
use sesphr_mesh::directory::{Directory, SetupDirectory};
use sesphr_mesh::status::{IntoStatus, invalid};
use sesphr_mesh::{blocking, unix_now};

use crate::backend::PolicyBackend;
use crate::policy::{self, ObservedEvent, Policy};
use crate::{Action, AuditEntry as DomainEntry, Grant, PolicyStore};

pub use crate::policy::{MAX_CONCURRENT_VERIFICATIONS, VERIFY_QUEUE_WAIT};

pub struct AccessPolicyService<S: ?Sized = PolicyStore> {
    policy: Arc<Policy<S>>,
    /// Who is enrolled as what (grants go to enrolled users only).
    directory: Arc<SetupDirectory>,
    /// The authoritative deny list in memory, kept equal to the store's.
    deny: Arc<DenyList>,
}

impl<S: PolicyBackend + ?Sized> AccessPolicyService<S> {
    /// `deny` must hold the store's deny list ([`load_deny_list`]); the
    /// same list screens this service's own callers.
    pub fn new(store: Arc<S>, directory: Arc<SetupDirectory>, deny: Arc<DenyList>) -> Self {
        Self {
            policy: Arc::new(Policy::new(store)),
            directory,
            deny,
        }
    }

    /// Runs `f` on the policy on the blocking pool (backends fsync).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Policy<S>) -> Result<T, crate::DomainError> + Send + 'static,
    ) -> Result<T, Status> {
        let policy = self.policy.clone();
        blocking(move || f(&policy)).await
    }
}

/// The store's deny list, as the authoritative copy in memory.
pub fn load_deny_list(
    store: &(impl PolicyBackend + ?Sized),
) -> Result<DenyList, crate::DomainError> {
    let (version, entries) = store.deny_list()?;
    Ok(DenyList::authoritative(version, entries))
}

/// Refusals by the RPC table, written straight to this service's own log.
pub struct LocalRefusalAudit(pub Arc<dyn PolicyBackend>);

impl RefusalAudit for LocalRefusalAudit {
    fn refused(
        &self,
        caller: Identity,
        rpc: &'static RpcSpec,
        message: String,
    ) -> BoxFuture<(), Infallible> {
        let store = self.0.clone();
        Box::pin(async move {
            let recorded = blocking(move || {
                policy::record_refusal(&*store, caller.short(), rpc.name, message, unix_now())
            })
            .await;
            if let Err(status) = recorded {
                tracing::warn!(message = status.message(), "could not record a refusal");
            }
            Ok(())
        })
    }
}

impl<S: PolicyBackend + ?Sized> AccessPolicyService<S> {
    async fn set_user_status(
        &self,
        req: Request<proto::SetUserStatusRequest>,
        disabled: bool,
    ) -> Result<Response<proto::SetUserStatusResponse>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let user_id = UserId::parse(r.user_id).map_err(invalid)?;
        let id = user_id.clone();
        let (changed, version, list) = self
            .run(move |p| {
                let (changed, version) =
                    p.set_user_status(&caller, &id, disabled, &r.reason, unix_now())?;
                // The whole list as now stored: concurrent changes may
                // finish in any order, the newest snapshot wins.
                let list = p.store().deny_list()?;
                Ok((changed, version, list))
            })
            .await?;
        // Durable now; this service's own callers see it at once.
        self.deny.reload(list.0, list.1);
        tracing::info!(user = %user_id, disabled, changed, version, "user status set");
        Ok(Response::new(proto::SetUserStatusResponse {
            changed,
            version,
        }))
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
    let leaf_index = e.leaf_index();
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
        leaf_index,
        salt: e.salt.to_vec(),
    }
}

fn cosignature_to_proto(c: sesphr_tlog::Cosignature) -> proto::Cosignature {
    proto::Cosignature {
        witness: c.witness,
        time: c.time,
        signature: c.signature.to_vec(),
    }
}

fn cosignature_from_proto(c: proto::Cosignature) -> Result<sesphr_tlog::Cosignature, Status> {
    let signature: [u8; 64] = c
        .signature
        .try_into()
        .map_err(|_| Status::invalid_argument("cosignature.signature must be 64 bytes"))?;
    Ok(sesphr_tlog::Cosignature {
        witness: c.witness,
        time: c.time,
        signature,
    })
}

type AuditStream = Pin<Box<dyn Stream<Item = Result<proto::AuditEntry, Status>> + Send>>;

#[tonic::async_trait]
impl<S: PolicyBackend + ?Sized> AccessPolicy for AccessPolicyService<S> {
    async fn grant(
        &self,
        req: Request<proto::GrantRequest>,
    ) -> Result<Response<proto::GrantResponse>, Status> {
        let caller = auth::caller(&req)?;
        let g = req
            .into_inner()
            .grant
            .ok_or_else(|| Status::invalid_argument("grant is required"))?;
        let grant = policy::GrantRequest {
            owner_id: g.owner_id,
            partition: PartitionName::parse(g.partition).map_err(invalid)?,
            grantee_id: UserId::parse(g.grantee_id).map_err(invalid)?,
            grantee_role: role_from_wire(g.grantee_role, "grant.grantee_role")?,
            epoch_min: g.epoch_min,
            epoch_max: g.epoch_max,
            not_before: g.not_before,
            expires_at: g.expires_at,
        };
        let enrolled_role = match self.directory.user(&grant.grantee_id).await {
            Ok(entry) => Some(entry.role),
            Err(crate::DomainError::Unknown(_)) => None,
            Err(e) => return Err(e.into_status()),
        };
        let stored = self
            .run(move |p| p.grant(&caller, grant, enrolled_role, unix_now()))
            .await?;
        tracing::info!(owner = %stored.owner_id, partition = %stored.partition, grantee = %stored.grantee_id, "grant recorded");
        Ok(Response::new(proto::GrantResponse {
            grant: Some(grant_to_proto(stored)),
        }))
    }

    async fn revoke(
        &self,
        req: Request<proto::RevokeRequest>,
    ) -> Result<Response<proto::RevokeResponse>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let partition = PartitionName::parse(r.partition).map_err(invalid)?;
        let grantee = UserId::parse(r.grantee_id).map_err(invalid)?;
        let removed = self
            .run(move |p| p.revoke(&caller, &partition, &grantee, unix_now()))
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
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let owner_id = UserId::parse(r.owner_id).map_err(invalid)?;
        let partition = PartitionName::parse(r.partition).map_err(invalid)?;
        let grantee_id = UserId::parse(r.grantee_id).map_err(invalid)?;
        let record_id = match r.record_id.is_empty() {
            true => None,
            false => Some(RecordId::parse(r.record_id).map_err(invalid)?),
        };
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
        let query = policy::CheckRequest {
            owner_id,
            partition,
            grantee_id,
            grantee_role: role_from_wire(r.grantee_role, "grantee_role")?,
            epoch: r.epoch,
            record_created_at: r.record_created_at,
            record_id,
            action,
        };
        let decision = self
            .run(move |p| p.check(&caller, query, unix_now()))
            .await?;
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
        let caller = auth::caller(&req)?;
        let grants = self.run(move |p| p.list_grants(&caller)).await?;
        Ok(Response::new(proto::ListGrantsResponse {
            given: grants.given.into_iter().map(grant_to_proto).collect(),
            received: grants.received.into_iter().map(grant_to_proto).collect(),
        }))
    }

    type ListAuditStream = AuditStream;

    async fn list_audit(
        &self,
        req: Request<proto::ListAuditRequest>,
    ) -> Result<Response<Self::ListAuditStream>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        // The store applies its default (0) and cap.
        let limit = r.limit as usize;
        // The hash chain is over unsalted entries: a patient holding the
        // hashes around her own entries could confirm guesses about the
        // ones between them. Only operators get it (clients check the
        // salted Merkle leaves instead).
        let chain = matches!(caller, sesphr_identity::Caller::Operator(_));
        let entries = self
            .run(move |p| p.list_audit(&caller, r.after_seq, limit, unix_now()))
            .await?;
        let stream = futures::stream::iter(entries.into_iter().map(move |e| {
            let mut e = entry_to_proto(e);
            if !chain {
                e.prev_hash.clear();
                e.hash.clear();
            }
            Ok(e)
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify_audit(
        &self,
        req: Request<proto::VerifyAuditRequest>,
    ) -> Result<Response<proto::VerifyAuditResponse>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let expected = policy::expected_head(r.expected_seq, &r.expected_hash)
            .map_err(IntoStatus::into_status)?;
        let job = self
            .policy
            .verify_audit(&caller, expected)
            .await
            .map_err(IntoStatus::into_status)?;
        let report = blocking(move || job.run()).await?;
        Ok(Response::new(proto::VerifyAuditResponse {
            ok: report.ok,
            entries: report.entries,
            head_seq: report.head_seq,
            head_hash: report.head_hash.to_vec(),
            first_bad_seq: report.first_bad_seq,
            problem: report.problem.unwrap_or_default(),
        }))
    }

    async fn get_checkpoint(
        &self,
        req: Request<proto::GetCheckpointRequest>,
    ) -> Result<Response<proto::GetCheckpointResponse>, Status> {
        let min = req.into_inner().min_cosignatures as usize;
        let found = self
            .run(move |p| p.store().witnessed_checkpoint(min))
            .await?;
        let Some((signed, cosignatures)) = found else {
            return Err(Status::failed_precondition(format!(
                "no checkpoint with {min} or more cosignatures is published yet \
                 (checkpoints follow new entries within seconds; witnesses cosign them after)"
            )));
        };
        Ok(Response::new(proto::GetCheckpointResponse {
            checkpoint: signed.checkpoint.body(),
            signature: signed.signature.to_vec(),
            cosignatures: cosignatures.into_iter().map(cosignature_to_proto).collect(),
        }))
    }

    async fn get_inclusion_proofs(
        &self,
        req: Request<proto::GetInclusionProofsRequest>,
    ) -> Result<Response<proto::GetInclusionProofsResponse>, Status> {
        let r = req.into_inner();
        let (size, indexes) = (r.tree_size, r.leaf_indexes);
        let proofs = self
            .run(move |p| {
                let paths = p.store().inclusion_proofs(size, &indexes)?;
                Ok(indexes.into_iter().zip(paths).collect::<Vec<_>>())
            })
            .await?;
        Ok(Response::new(proto::GetInclusionProofsResponse {
            tree_size: size,
            proofs: proofs
                .into_iter()
                .map(|(leaf_index, path)| proto::InclusionProof {
                    leaf_index,
                    hashes: path.into_iter().map(|h| h.to_vec()).collect(),
                })
                .collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<proto::GetConsistencyProofRequest>,
    ) -> Result<Response<proto::GetConsistencyProofResponse>, Status> {
        let r = req.into_inner();
        let hashes = self
            .run(move |p| p.store().consistency_proof(r.first, r.second))
            .await?;
        Ok(Response::new(proto::GetConsistencyProofResponse {
            hashes: hashes.into_iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn add_cosignature(
        &self,
        req: Request<proto::AddCosignatureRequest>,
    ) -> Result<Response<proto::AddCosignatureResponse>, Status> {
        let caller = auth::caller(&req)?;
        let witness = caller.witness_name().ok_or_else(|| {
            Status::permission_denied("only CloudStorage and re-encryption nodes are witnesses")
        })?;
        let r = req.into_inner();
        let cosignature = cosignature_from_proto(
            r.cosignature
                .ok_or_else(|| Status::invalid_argument("cosignature is required"))?,
        )?;
        let body = r.checkpoint;
        self.run(move |p| p.store().add_cosignature(&witness, &body, &cosignature))
            .await?;
        Ok(Response::new(proto::AddCosignatureResponse {}))
    }

    async fn disable_user(
        &self,
        req: Request<proto::SetUserStatusRequest>,
    ) -> Result<Response<proto::SetUserStatusResponse>, Status> {
        self.set_user_status(req, true).await
    }

    async fn enable_user(
        &self,
        req: Request<proto::SetUserStatusRequest>,
    ) -> Result<Response<proto::SetUserStatusResponse>, Status> {
        self.set_user_status(req, false).await
    }

    async fn get_deny_list(
        &self,
        req: Request<proto::GetDenyListRequest>,
    ) -> Result<Response<proto::GetDenyListResponse>, Status> {
        let caller = auth::caller(&req)?;
        self.policy
            .may_read_deny_list(&caller)
            .map_err(IntoStatus::into_status)?;
        let known = req.into_inner().known_version;
        // From memory: loaded from the store at start and reloaded from it
        // after every change, so it is what was durably decided; every
        // follower polls every second, mostly to hear "unchanged".
        if self.deny.version() == known {
            return Ok(Response::new(proto::GetDenyListResponse {
                version: known,
                unchanged: true,
                ..Default::default()
            }));
        }
        let (version, entries) = self.deny.snapshot();
        Ok(Response::new(proto::GetDenyListResponse {
            version,
            unchanged: version == known,
            disabled_user_ids: entries.disabled.iter().cloned().collect(),
            revoked_devices: entries.revoked_to_proto(),
        }))
    }

    async fn revoke_device(
        &self,
        req: Request<proto::RevokeDeviceRequest>,
    ) -> Result<Response<proto::RevokeDeviceResponse>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let d = r
            .device
            .ok_or_else(|| Status::invalid_argument("device is required"))?;
        let user_id = UserId::parse(d.user_id).map_err(invalid)?;
        let (changed, version, list) = self
            .run(move |p| {
                let (changed, version) =
                    p.revoke_device(&caller, &user_id, &d.device, d.until, &r.reason, unix_now())?;
                let list = p.store().deny_list()?;
                Ok((changed, version, list))
            })
            .await?;
        self.deny.reload(list.0, list.1);
        Ok(Response::new(proto::RevokeDeviceResponse {
            changed,
            version,
        }))
    }

    async fn record_event(
        &self,
        req: Request<proto::RecordEventRequest>,
    ) -> Result<Response<proto::RecordEventResponse>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let event = ObservedEvent {
            action: r.action,
            owner_id: r.owner_id,
            partition: r.partition,
            subject: r.subject,
            record_id: r.record_id,
            outcome: r.outcome,
            detail: r.detail,
        };
        let seq = self
            .run(move |p| p.record_event(&caller, event, unix_now()))
            .await?;
        // 0: a refusal over its identity's budget, counted into a coalesced
        // entry written later.
        Ok(Response::new(proto::RecordEventResponse {
            seq: seq.unwrap_or(0),
        }))
    }
}
