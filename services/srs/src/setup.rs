//! The setup service's rules, free of the wire: who may enrol, and who may
//! look users up; what is verified first, and what is audited.
//!
//! [`Setup`] is the one writer of the user directory: every enrolment takes
//! an id for good, and the re-encryption nodes read owners' and grantees'
//! registered keys from here (see `crate::directory`). It holds the CA and
//! the enrollment token, and no key fragment: it cannot re-encrypt.
//!
//! The CA stays the concrete [`CertificateAuthority`] of `sesphr-mesh`'s
//! `pki` module (plain rcgen, no tonic): there is one way to issue mesh
//! certificates, and tests sign real CSRs with a generated CA, so a trait
//! would only add a second name for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use sesphr::rpc::Rpc;
use sesphr_domain::DomainError;
use sesphr_identity::{Caller, Identity, Role, UserId};
use sesphr_mesh::pki::CertificateAuthority;
use sesphr_mesh::unix_now;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::gate::{
    AccessGate, Outcome, off_executor, parse_public_key, parse_verifying_key, refusal_detail,
};
use crate::{Store, UserRecord};

/// Largest CSR accepted.
pub const MAX_CSR_BYTES: usize = 16 << 10;

/// A directory lookup of one user by another is audited once per this many
/// seconds (clients look owners up on every read).
pub const LOOKUP_AUDIT_WINDOW_SECS: i64 = 3600;
/// (caller, user) lookups remembered for that.
pub(crate) const MAX_REMEMBERED_LOOKUPS: usize = 100_000;

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

/// Settings of a [`Setup`].
pub struct SetupConfig {
    pub trust_domain: String,
    pub enrollment_token: Zeroizing<String>,
}

/// The setup service: enrolment and the user directory, for callers the
/// authorization layer admitted.
pub struct Setup<S, G> {
    store: Arc<S>,
    gate: G,
    ca: Arc<CertificateAuthority>,
    enrollment_token: Zeroizing<String>,
    trust_domain: String,
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

impl<S: Store, G: AccessGate> Setup<S, G> {
    pub fn new(store: Arc<S>, gate: G, ca: Arc<CertificateAuthority>, config: SetupConfig) -> Self {
        Setup {
            store,
            gate,
            ca,
            enrollment_token: config.enrollment_token,
            trust_domain: config.trust_domain,
            lookups: AuditedLookups::new(),
        }
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
        about: (&str, &str),
        outcome: Outcome,
        detail: &str,
    ) {
        crate::gate::audit(&self.gate, subject, rpc, about, outcome, detail).await
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
        if !caller.is_mesh_server() && !is_self && self.lookups.due(&caller_name, user_id, now) {
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
}
