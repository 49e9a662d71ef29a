//! `sesphr.v1.Srs` over `sesphr-srs` and `sesphr-crypto`.
//!
//! The SRS handles public keys, key fragments and capsules only. It checks
//! every kfrag it is given (so a grantee is never handed cfrags that cannot
//! verify), asks AccessPolicy before every re-encryption, and rate-limits
//! re-encryption per identity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{KfragSet, SrsStore, UserRecord};
use sesphr_crypto as crypto;
use sesphr_identity::{Identity, validate_partition, validate_user_id};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::kfrag_cache::{self, VerifiedKfrags};
use sesphr::proto::srs_server::Srs;
use sesphr::proto::{self, CheckAction};
use sesphr::rpc::Rpc;
use sesphr_mesh::RateLimiter;
use sesphr_mesh::auth;
use sesphr_mesh::pki::CertificateAuthority;
use sesphr_mesh::policy_client::{AuditAbout, CheckSubject, PolicyClient};
use sesphr_mesh::status::invalid;
use sesphr_mesh::transport::PeerInfo;
use sesphr_mesh::{blocking, unix_now};

pub use crate::MAX_KFRAGS;
/// Most capsules per ReEncrypt call.
pub const MAX_CAPSULES: usize = 64;
/// Largest CSR accepted.
pub const MAX_CSR_BYTES: usize = 16 << 10;

/// OPRF evaluations per second per identity (burst: 4x). Uploading a file
/// takes one; the limit is what stops a compromised CloudStorage, or a
/// patient, from brute-forcing predictable files through the SRS.
pub const DEFAULT_CONTENT_KEY_RATE: f64 = 50.0;

/// A directory lookup of one user by another is audited once per this many
/// seconds (clients look owners up on every read).
const LOOKUP_AUDIT_WINDOW_SECS: i64 = 3600;
/// (caller, user) lookups remembered for that.
const MAX_REMEMBERED_LOOKUPS: usize = 100_000;

/// The OPRF key's derivation info (its seed is a per-mesh secret).
const OPRF_KEY_INFO: &[u8] = b"SeSPHR dedup content keys";

pub struct SrsService {
    store: Arc<SrsStore>,
    oprf_key: sesphr_dedup::ServerKey,
    content_key_limiter: RateLimiter,
    ca: Arc<CertificateAuthority>,
    enrollment_token: Zeroizing<String>,
    policy: PolicyClient,
    trust_domain: String,
    limiter: RateLimiter,
    verified: Arc<VerifiedKfrags>,
    lookups: AuditedLookups,
}

/// Which directory lookups were audited lately, so a client that looks an
/// owner up on every read adds one entry an hour, not one a read.
struct AuditedLookups(Mutex<HashMap<(String, String), i64>>);

impl AuditedLookups {
    /// Whether `(caller, user)` is due an audit entry at `now`.
    fn due(&self, caller: &str, user: &str, now: i64) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let key = (caller.to_owned(), user.to_owned());
        if seen
            .get(&key)
            .is_some_and(|&at| now - at < LOOKUP_AUDIT_WINDOW_SECS)
        {
            return false;
        }
        if seen.len() >= MAX_REMEMBERED_LOOKUPS {
            seen.retain(|_, at| now - *at < LOOKUP_AUDIT_WINDOW_SECS);
        }
        // Full of fresh entries: audit every lookup rather than forget one.
        if seen.len() < MAX_REMEMBERED_LOOKUPS {
            seen.insert(key, now);
        }
        true
    }
}

impl SrsService {
    pub fn new(
        store: Arc<SrsStore>,
        ca: Arc<CertificateAuthority>,
        enrollment_token: Zeroizing<String>,
        policy: PolicyClient,
        trust_domain: String,
        reencrypt_rate: f64,
    ) -> Result<Self, crate::DomainError> {
        let mut fresh = [0u8; 32];
        rand::fill(&mut fresh);
        let seed = zeroize::Zeroizing::new(store.service_secret("dedup-oprf-seed", fresh)?);
        zeroize::Zeroize::zeroize(&mut fresh);
        let oprf_key = sesphr_dedup::ServerKey::derive(&seed, OPRF_KEY_INFO)
            .map_err(|e| crate::DomainError::Corrupt(format!("OPRF key cannot be derived: {e}")))?;
        Ok(Self {
            store,
            oprf_key,
            content_key_limiter: RateLimiter::new(
                DEFAULT_CONTENT_KEY_RATE,
                (DEFAULT_CONTENT_KEY_RATE * 4.0) as u32,
            ),
            ca,
            enrollment_token,
            policy,
            trust_domain,
            limiter: RateLimiter::new(reencrypt_rate, (reencrypt_rate * 4.0).max(1.0) as u32),
            verified: Arc::new(VerifiedKfrags::new(kfrag_cache::DEFAULT_CAPACITY)),
            lookups: AuditedLookups(Mutex::new(HashMap::new())),
        })
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

    /// Audits a kfrag change the SRS made for an owner.
    async fn audit_kfrags(
        &self,
        caller: &Identity,
        rpc: Rpc,
        owner_id: &str,
        partition: &str,
        detail: &str,
    ) {
        let about = AuditAbout {
            owner_id,
            partition,
            ..Default::default()
        };
        self.policy.audit(caller, rpc, about, "ok", detail).await;
    }

    /// Enrollment proper: the token, the request, the certificate.
    async fn enroll_checked(
        &self,
        r: proto::EnrollRequest,
    ) -> Result<Response<proto::EnrollResponse>, Status> {
        let token_ok: bool = r
            .enrollment_token
            .as_bytes()
            .ct_eq(self.enrollment_token.as_bytes())
            .into();
        if !token_ok {
            return Err(Status::unauthenticated("enrollment token is not valid"));
        }
        validate_user_id(&r.user_id).map_err(invalid)?;
        let role = proto::Role::try_from(r.role)
            .ok()
            .and_then(proto::Role::to_domain)
            .ok_or_else(|| Status::invalid_argument("role must be set to a known role"))?;
        parse_public_key(&r.pre_public_key, "pre_public_key")?;
        parse_verifying_key(&r.verifying_key, "verifying_key")?;
        if r.csr_der.is_empty() || r.csr_der.len() > MAX_CSR_BYTES {
            return Err(Status::invalid_argument(format!(
                "csr_der must be 1 to {MAX_CSR_BYTES} bytes"
            )));
        }
        let identity = Identity::user(&self.trust_domain, role, &r.user_id).map_err(invalid)?;
        let ca = self.ca.clone();
        let csr = r.csr_der;
        let id = identity.clone();
        let certificate_pem = blocking(move || {
            ca.sign_csr(&csr, &id)
                .map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .await?;
        let cert_der = {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            CertificateDer::from_pem_slice(certificate_pem.as_bytes())
                .map_err(|_| Status::internal("issued certificate does not parse"))?
                .to_vec()
        };
        let user = UserRecord {
            user_id: r.user_id,
            role,
            pre_public_key: r.pre_public_key,
            verifying_key: r.verifying_key,
            certificate_der: cert_der,
            enrolled_at: unix_now(),
        };
        let store = self.store.clone();
        blocking(move || store.register_user(user)).await?;
        tracing::info!(user = %identity, "user enrolled");
        Ok(Response::new(proto::EnrollResponse {
            certificate_pem,
            ca_pem: self.ca.cert_pem().to_owned(),
            spiffe_id: identity.to_string(),
        }))
    }

    async fn user(&self, user_id: &str) -> Result<UserRecord, Status> {
        let store = self.store.clone();
        let id = user_id.to_owned();
        blocking(move || store.user(&id))
            .await?
            .ok_or_else(|| Status::not_found(format!("no enrolled user {user_id}")))
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

fn parse_public_key(bytes: &[u8], field: &str) -> Result<crypto::PublicKey, Status> {
    crypto::PublicKey::from_bytes(bytes).map_err(|_| {
        Status::invalid_argument(format!(
            "{field} is not a valid P-256 public key (33-byte SEC1 compressed point)"
        ))
    })
}

fn parse_verifying_key(bytes: &[u8], field: &str) -> Result<crypto::VerifyingKey, Status> {
    crypto::VerifyingKey::from_bytes(bytes).map_err(|_| {
        Status::invalid_argument(format!(
            "{field} is not a valid P-256 verifying key (33-byte SEC1 compressed point)"
        ))
    })
}

#[tonic::async_trait]
impl Srs for SrsService {
    async fn enroll(
        &self,
        req: Request<proto::EnrollRequest>,
    ) -> Result<Response<proto::EnrollResponse>, Status> {
        // Enrollment is the one RPC callers reach without a certificate: the
        // token authenticates them instead. A certificate, if presented, must
        // still be one of ours.
        let presented = auth::caller(&req)?.identity(&self.trust_domain);
        let remote = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|info| info.tcp.remote_addr());
        let peer = match (&presented, remote) {
            (Some(id), _) => id.short(),
            (None, Some(addr)) => format!("anonymous@{}", addr.ip()),
            (None, None) => "anonymous".to_owned(),
        };
        let r = req.into_inner();
        let user_id = r.user_id.clone();
        let result = self.enroll_checked(r).await;
        // Attributed to the id asked for, so its holder sees attempts on it.
        let about = AuditAbout {
            owner_id: if validate_user_id(&user_id).is_ok() {
                &user_id
            } else {
                ""
            },
            ..Default::default()
        };
        match &result {
            Ok(resp) => {
                let detail = format!("enrolled as {}", resp.get_ref().spiffe_id);
                self.policy
                    .audit_subject(peer, Rpc::Enroll, about, "ok", &detail)
                    .await
            }
            Err(status) => {
                self.policy
                    .audit_subject(peer, Rpc::Enroll, about, "denied", status.message())
                    .await
            }
        }
        result
    }

    async fn get_user(
        &self,
        req: Request<proto::GetUserRequest>,
    ) -> Result<Response<proto::UserInfo>, Status> {
        let caller = self.caller(&req)?;
        let user_id = req.into_inner().user_id;
        validate_user_id(&user_id).map_err(invalid)?;
        let found = self.user(&user_id).await;
        let caller_name = caller.short();
        let is_self = caller.as_user().is_some_and(|(_, id)| id == user_id);
        if caller.as_service().is_none()
            && !is_self
            && self.lookups.due(&caller_name, &user_id, unix_now())
        {
            let about = AuditAbout {
                owner_id: &user_id,
                ..Default::default()
            };
            let detail = if found.is_ok() {
                "found"
            } else {
                "not enrolled"
            };
            self.policy
                .audit(&caller, Rpc::GetUser, about, "probe", detail)
                .await;
        }
        Ok(Response::new(user_to_proto(found?)))
    }
    async fn put_kfrags(
        &self,
        req: Request<proto::PutKfragsRequest>,
    ) -> Result<Response<proto::PutKfragsResponse>, Status> {
        let caller = self.caller(&req)?;
        let owner_id = caller.as_patient().unwrap_or_default().to_owned();
        let r = req.into_inner();
        validate_partition(&r.partition).map_err(invalid)?;
        validate_user_id(&r.grantee_id).map_err(invalid)?;
        if r.grantee_id == owner_id {
            return Err(Status::invalid_argument(
                "an owner needs no kfrags for itself",
            ));
        }
        if r.kfrags.is_empty() || r.kfrags.len() > MAX_KFRAGS {
            return Err(Status::invalid_argument(format!(
                "send 1 to {MAX_KFRAGS} kfrags, not {}",
                r.kfrags.len()
            )));
        }
        let owner = self.user(&owner_id).await?;
        let grantee = self.user(&r.grantee_id).await?;
        let delegating = parse_public_key(&r.delegating_public_key, "delegating_public_key")?;
        let verifying = parse_verifying_key(&owner.verifying_key, "registered verifying key")?;
        let receiving = parse_public_key(&grantee.pre_public_key, "grantee's registered key")?;
        for (i, bytes) in r.kfrags.iter().enumerate() {
            let kfrag = crypto::KeyFrag::from_bytes(bytes)
                .map_err(|_| Status::invalid_argument(format!("kfrag {i} is malformed")))?;
            kfrag
                .verify(&verifying, &delegating, &receiving)
                .map_err(|_| {
                    Status::invalid_argument(format!(
                        "kfrag {i} does not verify: it must be signed by {owner_id}'s registered \
                         verifying key for grantee {} and this delegating key",
                        r.grantee_id
                    ))
                })?;
        }
        let stored = r.kfrags.len() as u32;
        let set = KfragSet {
            delegating_public_key: r.delegating_public_key,
            kfrags: r.kfrags,
            stored_at: unix_now(),
        };
        let store = self.store.clone();
        let (o, p, g, e) = (
            owner_id.clone(),
            r.partition.clone(),
            r.grantee_id.clone(),
            r.epoch,
        );
        blocking(move || store.put_kfrags(&o, &p, e, &g, set)).await?;
        self.audit_kfrags(
            &caller,
            Rpc::PutKfrags,
            &owner_id,
            &r.partition,
            &format!("{stored} kfrag(s) for {} epoch {}", r.grantee_id, r.epoch),
        )
        .await;
        Ok(Response::new(proto::PutKfragsResponse { stored }))
    }

    async fn delete_kfrags(
        &self,
        req: Request<proto::DeleteKfragsRequest>,
    ) -> Result<Response<proto::DeleteKfragsResponse>, Status> {
        let caller = self.caller(&req)?;
        let owner_id = caller.as_patient().unwrap_or_default().to_owned();
        let r = req.into_inner();
        validate_partition(&r.partition).map_err(invalid)?;
        validate_user_id(&r.grantee_id).map_err(invalid)?;
        let store = self.store.clone();
        let (o, p, g) = (owner_id.clone(), r.partition.clone(), r.grantee_id.clone());
        let removed = blocking(move || store.delete_kfrags(&o, &p, &g, r.epoch)).await?;
        self.audit_kfrags(
            &caller,
            Rpc::DeleteKfrags,
            &owner_id,
            &r.partition,
            &format!("{removed} kfrag set(s) of {} removed", r.grantee_id),
        )
        .await;
        Ok(Response::new(proto::DeleteKfragsResponse {
            removed: removed as u32,
        }))
    }

    async fn re_encrypt(
        &self,
        req: Request<proto::ReEncryptRequest>,
    ) -> Result<Response<proto::ReEncryptResponse>, Status> {
        let caller = self.caller(&req)?;
        let Some((_, grantee_id)) = caller.as_user() else {
            return Err(Status::permission_denied(format!(
                "{} is not a patient or practitioner",
                caller.short()
            )));
        };
        let grantee_id = grantee_id.to_owned();
        if !self.limiter.check(&caller.to_string(), Instant::now()) {
            return Err(Status::resource_exhausted(format!(
                "re-encryption rate limit reached for {}; retry shortly",
                caller.short()
            )));
        }
        let r = req.into_inner();
        validate_user_id(&r.owner_id).map_err(invalid)?;
        validate_partition(&r.partition).map_err(invalid)?;
        if !r.record_id.is_empty() {
            sesphr_identity::validate_record_id(&r.record_id).map_err(invalid)?;
        }
        if r.capsules.is_empty() || r.capsules.len() > MAX_CAPSULES {
            return Err(Status::invalid_argument(format!(
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
                    .map_err(|_| Status::invalid_argument(format!("capsule {i} is malformed")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let decision = self
            .policy
            .check(
                &caller,
                CheckSubject {
                    owner_id: &r.owner_id,
                    partition: &r.partition,
                    epoch: r.epoch,
                    record_created_at: None,
                    record_id: &r.record_id,
                    action: CheckAction::Reencrypt,
                },
            )
            .await?;
        if !decision.allowed {
            return Err(Status::permission_denied(format!(
                "{} may not have {}'s {} partition re-encrypted: {}",
                caller.short(),
                r.owner_id,
                r.partition,
                decision.caller_reason
            )));
        }
        let store = self.store.clone();
        let (o, p, e, g) = (
            r.owner_id.clone(),
            r.partition.clone(),
            r.epoch,
            grantee_id.clone(),
        );
        let set = blocking(move || store.kfrags(&o, &p, e, &g))
            .await?
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "{} holds no re-encryption key for {}'s {} partition, epoch {}",
                    caller.short(),
                    r.owner_id,
                    r.partition,
                    r.epoch
                ))
            })?;
        let shares = set.kfrags.len() as u32;
        let delegating_public_key = set.delegating_public_key.clone();
        let owner = self.user(&r.owner_id).await?;
        let grantee = self.user(&grantee_id).await?;
        let verified = self.verified.clone();
        let results = blocking(move || {
            // Kfrags were verified when stored; they are verified again
            // (once per distinct stored set, see `kfrag_cache`) so that a
            // tampered database stays harmless.
            let kfrags = verified.get_or_verify(
                &set.kfrags,
                &set.delegating_public_key,
                &owner.verifying_key,
                &grantee.pre_public_key,
            )?;
            let mut rng = rand::rng();
            Ok::<_, Status>(
                capsules
                    .iter()
                    .map(|capsule| proto::CapsuleFrags {
                        cfrags: kfrags
                            .iter()
                            .map(|k| crypto::reencrypt(&mut rng, capsule, k).to_bytes().to_vec())
                            .collect(),
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .await?;
        Ok(Response::new(proto::ReEncryptResponse {
            results,
            delegating_public_key,
            shares,
        }))
    }

    async fn evaluate_content_key(
        &self,
        req: Request<proto::EvaluateContentKeyRequest>,
    ) -> Result<Response<proto::EvaluateContentKeyResponse>, Status> {
        let caller = self.caller(&req)?;
        if !self
            .content_key_limiter
            .check(&caller.to_string(), Instant::now())
        {
            return Err(Status::resource_exhausted(format!(
                "content-key rate limit reached for {}; retry shortly",
                caller.short()
            )));
        }
        let blinded = req.into_inner().blinded_element;
        let evaluated = sesphr_dedup::blind_evaluate(&self.oprf_key, &blinded).map_err(|_| {
            Status::invalid_argument(
                "blinded_element is not a valid P-256 point (33-byte SEC1 compressed)",
            )
        })?;
        // The evaluation is blind (the SRS cannot tell which file), but how
        // often an identity asks is worth knowing: a burst of them is what a
        // brute-force of a guessable file looks like.
        let about = AuditAbout {
            owner_id: caller.as_patient().unwrap_or_default(),
            ..Default::default()
        };
        self.policy
            .audit(
                &caller,
                Rpc::EvaluateContentKey,
                about,
                "probe",
                "content key evaluated",
            )
            .await;
        Ok(Response::new(proto::EvaluateContentKeyResponse {
            evaluated_element: evaluated.to_vec(),
        }))
    }
}
