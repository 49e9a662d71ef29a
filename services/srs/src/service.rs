//! The SRS's rules, free of the wire: who may enrol, look users up, file
//! or revoke kfrags, have capsules re-encrypted or content keys evaluated;
//! what is verified first, and what is audited.
//!
//! [`Srs`] takes the typed [`Caller`] the authorization layer established
//! and plain domain inputs, and answers with [`DomainError`] facts. It asks
//! AccessPolicy and writes the audit trail through an [`AccessGate`], and
//! keeps its state in a [`Store`], so every rule is reachable from a unit
//! test with real implementations of both.
//!
//! The CA stays the concrete [`CertificateAuthority`] of `sesphr-mesh`'s
//! `pki` module (plain rcgen, no tonic): there is one way to issue mesh
//! certificates, and tests sign real CSRs with a generated CA, so a trait
//! would only add a second name for it.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sesphr::rpc::Rpc;
use sesphr_crypto as crypto;
use sesphr_domain::DomainError;
use sesphr_identity::{Caller, Identity, PartitionName, RecordId, Role, UserId};
use sesphr_mesh::RateLimiter;
use sesphr_mesh::pki::CertificateAuthority;
use sesphr_mesh::unix_now;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::kfrag_cache::{self, VerifiedKfrags};
use crate::{KfragSet, MAX_KFRAGS, Store, UserRecord};

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
pub const LOOKUP_AUDIT_WINDOW_SECS: i64 = 3600;
/// (caller, user) lookups remembered for that.
const MAX_REMEMBERED_LOOKUPS: usize = 100_000;

/// The OPRF key's derivation info (its seed is a per-mesh secret).
const OPRF_KEY_INFO: &[u8] = b"SeSPHR dedup content keys";

/// The service secret the OPRF key is derived from.
const OPRF_SEED_SECRET: &str = "dedup-oprf-seed";

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
}

/// An enrolment request, as sent (the user id is checked here, so a
/// malformed one is audited like every other refusal).
pub struct Enrollment {
    pub token: Zeroizing<String>,
    pub user_id: String,
    /// `None` when the request names no known role.
    pub role: Option<Role>,
    pub pre_public_key: Vec<u8>,
    pub verifying_key: Vec<u8>,
    pub csr_der: Vec<u8>,
}

/// What an enrolled user is handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub identity: Identity,
    pub certificate_pem: String,
    pub ca_pem: String,
}

/// Kfrags an owner files for one grantee.
pub struct KfragFiling {
    pub partition: PartitionName,
    pub grantee_id: UserId,
    pub epoch: u32,
    pub delegating_public_key: Vec<u8>,
    pub kfrags: Vec<Vec<u8>>,
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
    /// Per capsule, in request order: one cfrag per stored kfrag.
    pub cfrags: Vec<Vec<Vec<u8>>>,
    pub delegating_public_key: Vec<u8>,
    pub shares: u32,
}

/// Proof that a caller passed [`Srs::admit_reencryption`] (a user, within
/// its ReEncrypt allowance) for this one request.
pub struct ReEncryptPermit {
    caller: Caller,
    grantee_id: UserId,
}

/// Settings of an [`Srs`].
pub struct SrsConfig {
    pub trust_domain: String,
    pub enrollment_token: Zeroizing<String>,
    /// ReEncrypt calls per second per identity (burst: 4x).
    pub reencrypt_rate: f64,
    /// EvaluateContentKey calls per second per identity (burst: 4x).
    pub content_key_rate: f64,
}

/// The SRS: enrolment, the user directory, kfrags, re-encryption and the
/// dedup OPRF, for callers the authorization layer admitted.
pub struct Srs<S, G> {
    store: Arc<S>,
    gate: G,
    ca: Arc<CertificateAuthority>,
    enrollment_token: Zeroizing<String>,
    trust_domain: String,
    oprf_key: sesphr_dedup::ServerKey,
    reencrypt_limiter: RateLimiter,
    content_key_limiter: RateLimiter,
    verified: Arc<VerifiedKfrags>,
    lookups: AuditedLookups,
}

/// Which directory lookups were audited lately, so a client that looks an
/// owner up on every read adds one entry an hour, not one a read.
pub struct AuditedLookups(Mutex<HashMap<(String, String), i64>>);

impl AuditedLookups {
    pub fn new() -> Self {
        AuditedLookups(Mutex::new(HashMap::new()))
    }

    /// Whether `(caller, user)` is due an audit entry at `now`.
    pub fn due(&self, caller: &str, user: &str, now: i64) -> bool {
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

impl Default for AuditedLookups {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs store work (sled flushes are fsyncs) and CPU-heavy crypto off the
/// async executor.
async fn off_executor<T: Send + 'static>(
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

fn parse_public_key(bytes: &[u8], field: &str) -> Result<crypto::PublicKey, DomainError> {
    crypto::PublicKey::from_bytes(bytes).map_err(|_| {
        DomainError::Malformed(format!(
            "{field} is not a valid P-256 public key (33-byte SEC1 compressed point)"
        ))
    })
}

fn parse_verifying_key(bytes: &[u8], field: &str) -> Result<crypto::VerifyingKey, DomainError> {
    crypto::VerifyingKey::from_bytes(bytes).map_err(|_| {
        DomainError::Malformed(format!(
            "{field} is not a valid P-256 verifying key (33-byte SEC1 compressed point)"
        ))
    })
}

/// What the audit trail says about a refusal: what the client is told
/// (storage failures are summarized there, so they are here too).
fn refusal_detail(e: &DomainError) -> String {
    match e {
        DomainError::Backend(b) => {
            let what = match b {
                sesphr_domain::BackendError::Sled(_) => "database",
                sesphr_domain::BackendError::Files(_) => "file",
            };
            format!("{what} storage error; the operation was not applied")
        }
        other => other.to_string(),
    }
}

impl<S: Store, G: AccessGate> Srs<S, G> {
    /// An SRS over `store`; the OPRF key is derived from the store's
    /// service secret (made on first start).
    pub fn new(
        store: Arc<S>,
        gate: G,
        ca: Arc<CertificateAuthority>,
        config: SrsConfig,
    ) -> Result<Self, DomainError> {
        let seed = store.service_secret(OPRF_SEED_SECRET)?;
        let oprf_key = sesphr_dedup::ServerKey::derive(&seed, OPRF_KEY_INFO)
            .map_err(|e| DomainError::Corrupt(format!("OPRF key cannot be derived: {e}")))?;
        let limiter = |rate: f64| RateLimiter::new(rate, (rate * 4.0).max(1.0) as u32);
        Ok(Srs {
            store,
            gate,
            ca,
            enrollment_token: config.enrollment_token,
            trust_domain: config.trust_domain,
            oprf_key,
            reencrypt_limiter: limiter(config.reencrypt_rate),
            content_key_limiter: limiter(config.content_key_rate),
            verified: Arc::new(VerifiedKfrags::new(kfrag_cache::DEFAULT_CAPACITY)),
            lookups: AuditedLookups::new(),
        })
    }

    /// The enrolled user `user_id`; `Unknown` if there is none.
    async fn enrolled(&self, user_id: &UserId) -> Result<UserRecord, DomainError> {
        let store = self.store.clone();
        let id = user_id.clone();
        off_executor(move || store.user(&id))
            .await?
            .ok_or_else(|| DomainError::Unknown(format!("no enrolled user {user_id}")))
    }

    async fn audit(
        &self,
        subject: &str,
        rpc: Rpc,
        (owner_id, partition): (&str, &str),
        outcome: Outcome,
        detail: &str,
    ) {
        self.gate
            .audit(AuditEvent {
                subject,
                rpc,
                owner_id,
                partition,
                outcome,
                detail,
            })
            .await;
    }

    /// Enrols a user: the token is checked (in constant time), then the
    /// request, then the CA signs the CSR for the identity asked for and the
    /// directory takes the id for good. Every attempt is audited, ok or
    /// denied, attributed to the id asked for so its holder sees attempts
    /// on it.
    ///
    /// `caller` is who presented a mesh certificate, if anyone (enrolment is
    /// the one RPC reachable without); `remote_ip` names anonymous callers.
    pub async fn enroll(
        &self,
        caller: &Caller,
        remote_ip: Option<IpAddr>,
        request: Enrollment,
    ) -> Result<Enrolled, DomainError> {
        let peer = match (caller, remote_ip) {
            (Caller::Anonymous, Some(ip)) => format!("anonymous@{ip}"),
            (other, _) => other.to_string(),
        };
        let about = UserId::parse(request.user_id.as_str())
            .map(UserId::into_string)
            .unwrap_or_default();
        let result = self.enroll_checked(request).await;
        match &result {
            Ok(enrolled) => {
                let detail = format!("enrolled as {}", enrolled.identity);
                self.audit(&peer, Rpc::Enroll, (&about, ""), Outcome::Ok, &detail)
                    .await
            }
            Err(e) => {
                let detail = refusal_detail(e);
                self.audit(&peer, Rpc::Enroll, (&about, ""), Outcome::Denied, &detail)
                    .await
            }
        }
        result
    }

    /// Enrolment proper: the token, the request, the certificate.
    async fn enroll_checked(&self, r: Enrollment) -> Result<Enrolled, DomainError> {
        let token_ok: bool = r
            .token
            .as_bytes()
            .ct_eq(self.enrollment_token.as_bytes())
            .into();
        if !token_ok {
            return Err(DomainError::BadCredentials(
                "enrollment token is not valid".into(),
            ));
        }
        let user_id = UserId::parse(r.user_id)?;
        let role = r
            .role
            .ok_or_else(|| DomainError::Malformed("role must be set to a known role".into()))?;
        parse_public_key(&r.pre_public_key, "pre_public_key")?;
        parse_verifying_key(&r.verifying_key, "verifying_key")?;
        if r.csr_der.is_empty() || r.csr_der.len() > MAX_CSR_BYTES {
            return Err(DomainError::Malformed(format!(
                "csr_der must be 1 to {MAX_CSR_BYTES} bytes"
            )));
        }
        let identity = Identity::user(&self.trust_domain, role, &user_id)?;
        let ca = self.ca.clone();
        let csr = r.csr_der;
        let id = identity.clone();
        let certificate_pem = off_executor(move || {
            ca.sign_csr(&csr, &id)
                .map_err(|e| DomainError::Malformed(e.to_string()))
        })
        .await?;
        let certificate_der = {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            CertificateDer::from_pem_slice(certificate_pem.as_bytes())
                .map_err(|_| DomainError::Corrupt("the issued certificate does not parse".into()))?
                .to_vec()
        };
        let user = UserRecord {
            user_id: user_id.into_string(),
            role,
            pre_public_key: r.pre_public_key,
            verifying_key: r.verifying_key,
            certificate_der,
            enrolled_at: unix_now(),
        };
        let store = self.store.clone();
        off_executor(move || store.register_user(user)).await?;
        tracing::info!(user = %identity, "user enrolled");
        Ok(Enrolled {
            identity,
            certificate_pem,
            ca_pem: self.ca.cert_pem().to_owned(),
        })
    }

    /// Looks `user_id` up. A user looking up someone else is audited as a
    /// probe, once per (looker, user) per [`LOOKUP_AUDIT_WINDOW_SECS`];
    /// services (which look users up on every call) and self-lookups are
    /// not.
    pub async fn get_user(
        &self,
        caller: &Caller,
        user_id: &UserId,
    ) -> Result<UserRecord, DomainError> {
        self.get_user_at(caller, user_id, unix_now()).await
    }

    /// [`get_user`](Self::get_user) at a given time.
    pub async fn get_user_at(
        &self,
        caller: &Caller,
        user_id: &UserId,
        now: i64,
    ) -> Result<UserRecord, DomainError> {
        let found = self.enrolled(user_id).await;
        let caller_name = caller.to_string();
        let is_self = caller.as_user().is_some_and(|(_, id)| id == user_id);
        if !matches!(caller, Caller::Service(_))
            && !is_self
            && self.lookups.due(&caller_name, user_id, now)
        {
            let detail = if found.is_ok() {
                "found"
            } else {
                "not enrolled"
            };
            self.audit(
                &caller_name,
                Rpc::GetUser,
                (user_id, ""),
                Outcome::Probe,
                detail,
            )
            .await;
        }
        found
    }

    /// The patient a kfrag call is made by (the RPC table admits patients
    /// only; this holds if the table ever changes).
    fn owner_of(caller: &Caller) -> Result<&UserId, DomainError> {
        caller
            .as_patient()
            .ok_or_else(|| DomainError::NotEntitled(format!("{caller} is not a patient")))
    }

    /// Files kfrags from the calling patient to a grantee, after checking
    /// every one verifies: signed by the owner's registered verifying key,
    /// for the grantee's registered key and this delegating key (so a
    /// grantee is never handed cfrags that cannot verify). Returns how many
    /// were stored.
    pub async fn put_kfrags(&self, caller: &Caller, f: KfragFiling) -> Result<u32, DomainError> {
        let owner_id = Self::owner_of(caller)?;
        if f.grantee_id == *owner_id {
            return Err(DomainError::Malformed(
                "an owner needs no kfrags for itself".into(),
            ));
        }
        if f.kfrags.is_empty() || f.kfrags.len() > MAX_KFRAGS {
            return Err(DomainError::Malformed(format!(
                "send 1 to {MAX_KFRAGS} kfrags, not {}",
                f.kfrags.len()
            )));
        }
        let owner = self.enrolled(owner_id).await?;
        let grantee = self.enrolled(&f.grantee_id).await?;
        let delegating = parse_public_key(&f.delegating_public_key, "delegating_public_key")?;
        let verifying = parse_verifying_key(&owner.verifying_key, "registered verifying key")?;
        let receiving = parse_public_key(&grantee.pre_public_key, "grantee's registered key")?;
        for (i, bytes) in f.kfrags.iter().enumerate() {
            let kfrag = crypto::KeyFrag::from_bytes(bytes)
                .map_err(|_| DomainError::Malformed(format!("kfrag {i} is malformed")))?;
            kfrag
                .verify(&verifying, &delegating, &receiving)
                .map_err(|_| {
                    DomainError::Malformed(format!(
                        "kfrag {i} does not verify: it must be signed by {owner_id}'s registered \
                         verifying key for grantee {} and this delegating key",
                        f.grantee_id
                    ))
                })?;
        }
        let stored = f.kfrags.len() as u32;
        let set = KfragSet {
            delegating_public_key: f.delegating_public_key,
            kfrags: f.kfrags,
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
        let detail = format!("{stored} kfrag(s) for {} epoch {}", f.grantee_id, f.epoch);
        self.audit(
            &caller.to_string(),
            Rpc::PutKfrags,
            (owner_id, &f.partition),
            Outcome::Ok,
            &detail,
        )
        .await;
        Ok(stored)
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

    /// Re-encrypts capsules for the admitted caller: AccessPolicy must allow
    /// it, the caller must hold kfrags for that epoch, and the stored kfrags
    /// must still verify (a tampered database stays harmless).
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
        let set = off_executor(move || store.kfrags(&o, &p, e, &g))
            .await?
            .ok_or_else(|| {
                DomainError::NotEntitled(format!(
                    "{caller} holds no re-encryption key for {}'s {} partition, epoch {}",
                    r.owner_id, r.partition, r.epoch
                ))
            })?;
        let shares = set.kfrags.len() as u32;
        let delegating_public_key = set.delegating_public_key.clone();
        let owner = self.enrolled(&r.owner_id).await?;
        let grantee = self.enrolled(&grantee_id).await?;
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
            let mut rng = rand::rng();
            Ok(capsules
                .iter()
                .map(|capsule| {
                    kfrags
                        .iter()
                        .map(|k| crypto::reencrypt(&mut rng, capsule, k).to_bytes().to_vec())
                        .collect()
                })
                .collect())
        })
        .await?;
        Ok(ReEncrypted {
            cfrags,
            delegating_public_key,
            shares,
        })
    }

    /// Evaluates the dedup OPRF on a blinded element, within the caller's
    /// allowance. The evaluation is blind (the SRS cannot tell which file),
    /// but how often an identity asks is worth knowing: a burst of them is
    /// what a brute-force of a guessable file looks like, so each is
    /// audited.
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
        let evaluated = sesphr_dedup::blind_evaluate(&self.oprf_key, blinded).map_err(|_| {
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
            "content key evaluated",
        )
        .await;
        Ok(evaluated.to_vec())
    }
}

#[cfg(test)]
mod tests;
