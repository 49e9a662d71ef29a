//! `sesphr.v1.Srs` over [`crate::setup::Setup`] and `sesphr.v1.SrsNode`
//! over [`crate::node::Node`].
//!
//! Each handler takes the typed caller the authorization layer put in the
//! request, decodes the proto into domain types, delegates, and maps the
//! answer back; the rules live in [`crate::setup`] and [`crate::node`].
//! AccessPolicy is reached through [`PolicyGate`], the setup service's
//! directory through [`SetupDirectory`].

use std::sync::Arc;

use sesphr::proto::srs_node_server::SrsNode as SrsNodeRpc;
use sesphr::proto::srs_server::Srs as SrsRpc;
use sesphr::proto::{self, CheckAction};
use sesphr_dedup::KeyShare;
use sesphr_domain::DomainError;
use sesphr_identity::{Caller, PartitionName, RecordId, UserId};
use sesphr_mesh::auth;
use sesphr_mesh::pki::CertificateAuthority;
use sesphr_mesh::policy_client::{AuditAbout, CheckSubject, PolicyClient};
use sesphr_mesh::status::IntoStatus;
use sesphr_mesh::transport::PeerInfo;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

pub use crate::directory::SetupDirectory;
use crate::gate::{AccessGate, AuditEvent, Decision, ReEncryptSubject};
use crate::node::{KfragFiling, Node, NodeConfig, ReEncryption};
use crate::setup::{Enrollment, Setup, SetupConfig};
use crate::{SrsStore, Store, UserRecord};

pub use crate::node::{DEFAULT_CONTENT_KEY_RATE, MAX_CAPSULES};
pub use crate::setup::MAX_CSR_BYTES;

/// The SRS's [`AccessGate`]: AccessPolicy over the mesh.
pub struct PolicyGate {
    policy: PolicyClient,
    trust_domain: String,
}

impl PolicyGate {
    pub fn new(policy: PolicyClient, trust_domain: String) -> Self {
        PolicyGate {
            policy,
            trust_domain,
        }
    }
}

impl AccessGate for PolicyGate {
    async fn may_reencrypt(
        &self,
        grantee: &Caller,
        subject: ReEncryptSubject<'_>,
    ) -> Result<Decision, DomainError> {
        let decision = self
            .policy
            .check_caller(
                grantee,
                &self.trust_domain,
                CheckSubject {
                    owner_id: subject.owner_id,
                    partition: subject.partition,
                    epoch: subject.epoch,
                    record_created_at: None,
                    record_id: subject.record_id.map(RecordId::as_str).unwrap_or_default(),
                    action: CheckAction::Reencrypt,
                },
            )
            .await?;
        Ok(Decision {
            allowed: decision.allowed,
            reason: decision.caller_reason,
        })
    }

    async fn audit(&self, event: AuditEvent<'_>) {
        let about = AuditAbout {
            owner_id: event.owner_id,
            partition: event.partition,
            ..Default::default()
        };
        self.policy
            .audit_subject(
                event.subject.to_owned(),
                event.rpc,
                about,
                event.outcome.as_str(),
                event.detail,
            )
            .await;
    }

    async fn revoke_device(
        &self,
        user_id: &str,
        device: &str,
        until: i64,
    ) -> Result<(), DomainError> {
        self.policy
            .revoke_device(user_id, device, until, "removed by its user")
            .await
    }
}

/// The setup service's gRPC service (`sesphr.v1.Srs`).
pub struct SetupService {
    setup: Setup<dyn Store, PolicyGate>,
}

impl SetupService {
    /// `store` is any [`Store`] backend: sled in the data directory, or
    /// PostgreSQL shared by several setup-service replicas.
    pub fn new(
        store: Arc<dyn Store>,
        ca: Arc<CertificateAuthority>,
        policy: PolicyClient,
        config: SetupConfig,
    ) -> Self {
        let gate = PolicyGate::new(policy, config.trust_domain.clone());
        SetupService {
            setup: Setup::new(store, gate, ca, config),
        }
    }
}

/// A re-encryption node's gRPC service (`sesphr.v1.SrsNode`).
pub struct NodeService {
    node: Node<SrsStore, PolicyGate, SetupDirectory>,
}

impl NodeService {
    pub fn new(
        store: Arc<SrsStore>,
        policy: PolicyClient,
        directory: SetupDirectory,
        oprf_share: KeyShare,
        trust_domain: String,
        config: NodeConfig,
    ) -> Result<Self, DomainError> {
        let gate = PolicyGate::new(policy, trust_domain);
        Ok(NodeService {
            node: Node::new(store, gate, directory, oprf_share, config)?,
        })
    }
}

fn user_to_proto(u: UserRecord) -> proto::UserInfo {
    let domain = match u.role.domain() {
        sesphr_identity::Domain::Owner => "owner",
        sesphr_identity::Domain::Private => "private",
        sesphr_identity::Domain::Public => "public",
    };
    proto::UserInfo {
        user_id: u.user_id,
        role: proto::Role::from(u.role) as i32,
        domain: domain.to_owned(),
        pre_public_key: u.pre_public_key,
        verifying_key: u.verifying_key,
        enrolled_at: u.enrolled_at,
    }
}

/// A request's id or name field, parsed (syntax errors are the caller's).
fn parse<T>(parsed: Result<T, sesphr_identity::IdentityError>) -> Result<T, Status> {
    parsed.map_err(sesphr_mesh::status::invalid)
}

#[tonic::async_trait]
impl SrsRpc for SetupService {
    async fn enroll(
        &self,
        req: Request<proto::EnrollRequest>,
    ) -> Result<Response<proto::EnrollResponse>, Status> {
        let caller = auth::caller(&req)?;
        let remote_ip = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|info| info.tcp.remote_addr())
            .map(|addr| addr.ip());
        let r = req.into_inner();
        let request = Enrollment {
            invitation: Zeroizing::new(r.invitation),
            user_id: r.user_id,
            role: proto::Role::try_from(r.role)
                .ok()
                .and_then(proto::Role::to_domain),
            pre_public_key: r.pre_public_key,
            verifying_key: r.verifying_key,
            csr_der: r.csr_der,
            key_proof: r.key_proof,
            device: r.device,
        };
        let enrolled = self
            .setup
            .enroll(&caller, remote_ip, request)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::EnrollResponse {
            certificate_pem: enrolled.certificate_pem,
            ca_pem: enrolled.ca_pem,
            spiffe_id: enrolled.identity.to_string(),
            not_after: enrolled.not_after,
            device: enrolled.device,
        }))
    }

    async fn invite(
        &self,
        req: Request<proto::InviteRequest>,
    ) -> Result<Response<proto::InviteResponse>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let role = proto::Role::try_from(r.role)
            .ok()
            .and_then(proto::Role::to_domain);
        let invited = self
            .setup
            .invite(&caller, &r.user_id, role, r.valid_for_secs)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::InviteResponse {
            invitation: invited.invitation.to_string(),
            expires_at: invited.expires_at,
            reenrollment: invited.reenrollment,
        }))
    }

    async fn renew(
        &self,
        req: Request<proto::RenewRequest>,
    ) -> Result<Response<proto::RenewResponse>, Status> {
        let caller = auth::caller(&req)?;
        let presented = req.extensions().get::<PeerInfo>().and_then(|info| {
            let (not_before, _) = info.validity?;
            let device = info.device.as_deref()?.to_owned();
            Some((not_before, device))
        });
        let r = req.into_inner();
        let renewed = self
            .setup
            .renew(&caller, presented, r.csr_der)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::RenewResponse {
            certificate_pem: renewed.certificate_pem,
            not_after: renewed.not_after,
        }))
    }

    async fn get_user(
        &self,
        req: Request<proto::GetUserRequest>,
    ) -> Result<Response<proto::UserInfo>, Status> {
        let caller = auth::caller(&req)?;
        let user_id = parse(UserId::parse(req.into_inner().user_id))?;
        let user = self
            .setup
            .get_user(&caller, &user_id)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(user_to_proto(user)))
    }

    async fn list_devices(
        &self,
        req: Request<proto::ListDevicesRequest>,
    ) -> Result<Response<proto::ListDevicesResponse>, Status> {
        let caller = auth::caller(&req)?;
        let current = presented_device(&req);
        let devices = self
            .setup
            .list_devices(&caller)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::ListDevicesResponse {
            devices: devices
                .into_iter()
                .map(|d| proto::Device {
                    current: current.as_deref() == Some(d.name.as_str()),
                    name: d.name,
                    issued_at: d.issued_at,
                    not_after: d.not_after,
                    added_at: d.added_at,
                })
                .collect(),
        }))
    }

    async fn remove_device(
        &self,
        req: Request<proto::RemoveDeviceRequest>,
    ) -> Result<Response<proto::RemoveDeviceResponse>, Status> {
        let caller = auth::caller(&req)?;
        let current = presented_device(&req);
        let name = req.into_inner().name;
        let revoked_until = self
            .setup
            .remove_device(&caller, current.as_deref(), &name)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::RemoveDeviceResponse { revoked_until }))
    }

    async fn set_recovery(
        &self,
        req: Request<proto::SetRecoveryRequest>,
    ) -> Result<Response<proto::SetRecoveryResponse>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let shares = r
            .shares
            .into_iter()
            .map(|s| (s.trustee_id, s.sealed_share))
            .collect();
        let created_at = self
            .setup
            .set_recovery(&caller, r.threshold, shares)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::SetRecoveryResponse { created_at }))
    }

    async fn get_recovery(
        &self,
        req: Request<proto::GetRecoveryRequest>,
    ) -> Result<Response<proto::RecoverySetup>, Status> {
        let caller = auth::caller(&req)?;
        let setup = self
            .setup
            .get_recovery(&caller)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::RecoverySetup {
            threshold: setup.threshold,
            trustee_ids: setup.shares.into_iter().map(|(t, _)| t).collect(),
            created_at: setup.created_at,
        }))
    }

    async fn get_recovery_share(
        &self,
        req: Request<proto::GetRecoveryShareRequest>,
    ) -> Result<Response<proto::GetRecoveryShareResponse>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let owner_id = parse(UserId::parse(r.owner_id))?;
        let (setup, sealed_share) = self
            .setup
            .get_recovery_share(&caller, &owner_id, &r.request_fingerprint)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::GetRecoveryShareResponse {
            sealed_share,
            threshold: setup.threshold,
            created_at: setup.created_at,
        }))
    }
}

/// The device named by the caller's certificate.
fn presented_device<T>(req: &Request<T>) -> Option<String> {
    req.extensions()
        .get::<PeerInfo>()
        .and_then(|info| info.device.as_deref().map(str::to_owned))
}

#[tonic::async_trait]
impl SrsNodeRpc for NodeService {
    async fn put_kfrag(
        &self,
        req: Request<proto::PutKfragRequest>,
    ) -> Result<Response<proto::PutKfragResponse>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let filing = KfragFiling {
            partition: parse(PartitionName::parse(r.partition))?,
            grantee_id: parse(UserId::parse(r.grantee_id))?,
            epoch: r.epoch,
            delegating_public_key: r.delegating_public_key,
            kfrag: r.kfrag,
        };
        self.node
            .put_kfrag(&caller, filing)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::PutKfragResponse {}))
    }

    async fn delete_kfrags(
        &self,
        req: Request<proto::DeleteKfragsRequest>,
    ) -> Result<Response<proto::DeleteKfragsResponse>, Status> {
        let caller = auth::caller(&req)?;
        let r = req.into_inner();
        let partition = parse(PartitionName::parse(r.partition))?;
        let grantee_id = parse(UserId::parse(r.grantee_id))?;
        let removed = self
            .node
            .delete_kfrags(&caller, &partition, &grantee_id, r.epoch)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::DeleteKfragsResponse {
            removed: removed as u32,
        }))
    }

    async fn re_encrypt(
        &self,
        req: Request<proto::ReEncryptRequest>,
    ) -> Result<Response<proto::ReEncryptResponse>, Status> {
        let caller = auth::caller(&req)?;
        // Admission first: the allowance is spent before the request is read.
        let permit = self
            .node
            .admit_reencryption(&caller)
            .map_err(IntoStatus::into_status)?;
        let r = req.into_inner();
        let request = ReEncryption {
            owner_id: parse(UserId::parse(r.owner_id))?,
            partition: parse(PartitionName::parse(r.partition))?,
            epoch: r.epoch,
            record_id: match r.record_id.as_str() {
                "" => None,
                _ => Some(parse(RecordId::parse(r.record_id))?),
            },
            capsules: r.capsules,
        };
        let done = self
            .node
            .re_encrypt(permit, request)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::ReEncryptResponse {
            cfrags: done.cfrags,
            delegating_public_key: done.delegating_public_key,
        }))
    }

    async fn evaluate_content_key(
        &self,
        req: Request<proto::EvaluateContentKeyRequest>,
    ) -> Result<Response<proto::EvaluateContentKeyResponse>, Status> {
        let caller = auth::caller(&req)?;
        let blinded = req.into_inner().blinded_element;
        let share_evaluation = self
            .node
            .evaluate_content_key(&caller, &blinded)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(proto::EvaluateContentKeyResponse {
            share_evaluation,
        }))
    }
}
