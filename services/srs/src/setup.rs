//! The setup service's rules, free of the wire: who may enrol, and who may
//! look users up; what is verified first, and what is audited.
//!
//! [`Setup`] is the one writer of the user directory: every enrolment takes
//! an id for good, and the re-encryption nodes read owners' and grantees'
//! registered keys from here (see `crate::directory`). It holds the user CA
//! (never the service CA: it can mint users at worst) and the invitations'
//! hashes, and no key fragment: it cannot re-encrypt.
//!
//! Who may become whom: an invitation names one id and one role, works
//! once and expires; practitioners enrol only by invitation, patients also
//! by self-registration where the mesh allows it (one mesh-wide rate).
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
use sesphr_mesh::deny::{DenyList, Verdict};
use sesphr_mesh::pki::CertificateAuthority;
use sesphr_mesh::ratelimit::RateLimiter;
use sesphr_mesh::unix_now;
use zeroize::Zeroizing;

use crate::gate::{
    AccessGate, Outcome, off_executor, parse_public_key, parse_verifying_key, refusal_detail,
};
use crate::{Invitation, InviteLimits, Redeem, Store, UserRecord};

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
    /// The invitation; empty for patient self-registration.
    pub invitation: Zeroizing<String>,
    pub user_id: String,
    /// `None` when the request names no known role.
    pub role: Option<Role>,
    pub pre_public_key: Vec<u8>,
    pub verifying_key: Vec<u8>,
    pub csr_der: Vec<u8>,
    /// Proof of possession of the registered keys (re-enrolments); empty
    /// for a new id.
    pub key_proof: Vec<u8>,
    /// The device's name; empty: `device-N`.
    pub device: String,
}

/// What an enrolled (or renewed) user is handed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub identity: Identity,
    pub certificate_pem: String,
    /// The service CA: the root the mesh's servers chain to.
    pub ca_pem: String,
    /// The certificate's expiry, unix seconds.
    pub not_after: i64,
    /// The device it was issued to.
    pub device: String,
}

/// An issued invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invited {
    /// The invitation text (`inv1-` and 64 hex digits): shown once.
    pub invitation: Zeroizing<String>,
    pub expires_at: i64,
    pub reenrollment: bool,
}

/// How long an invitation lasts unless its issuer says otherwise.
pub const DEFAULT_INVITATION_VALIDITY_SECS: u64 = 7 * 86_400;
/// The longest an invitation may last.
pub const MAX_INVITATION_VALIDITY_SECS: u64 = 30 * 86_400;
/// The shortest a patient's invitation may last (shorter ones would let
/// her cycle through the open-invitation cap by letting them expire).
pub const MIN_INVITATION_VALIDITY_SECS: u64 = 3_600;
/// Unused invitations one patient may have at a time.
pub const MAX_OPEN_INVITATIONS_PER_PATIENT: usize = 16;
/// Invitations one patient may issue per day, used or not.
pub const MAX_INVITATIONS_PER_PATIENT_PER_DAY: usize = 32;
/// What every invitation starts with (its version).
pub const INVITATION_PREFIX: &str = "inv1-";

/// Settings of a [`Setup`].
pub struct SetupConfig {
    pub trust_domain: String,
    /// The service CA's certificate (PEM), handed to enrolling users.
    pub service_ca_pem: String,
    /// How long user certificates last.
    pub user_cert_validity: time::Duration,
    /// Patient self-registrations allowed per minute, mesh-wide; `None`:
    /// patients too need an invitation.
    pub self_registrations_per_minute: Option<u32>,
    /// Who is disabled (re-invitations of them are refused).
    pub deny: Option<Arc<DenyList>>,
}

/// The setup service: enrolment and the user directory, for callers the
/// authorization layer admitted.
pub struct Setup<S: ?Sized, G> {
    pub(crate) store: Arc<S>,
    pub(crate) gate: G,
    ca: Arc<CertificateAuthority>,
    config: SetupConfig,
    self_registrations: Option<RateLimiter>,
    /// Self-service re-enrolments (by key proof), mesh-wide.
    reenrolments: RateLimiter,
    lookups: AuditedLookups,
}

/// What a re-enrolment by key proof alone hears when it is refused for its
/// id, whatever the reason (the audit entry has it).
pub const KEY_PROOF_REFUSED: &str = "the key proof does not verify for this id: only the holder \
     of its registered key re-enrols it";

/// Self-service re-enrolments allowed per minute, mesh-wide, at least (or
/// the self-registration rate, if higher): they count once their proof
/// verified, so refused attempts cannot use them up.
pub const REENROLMENTS_PER_MINUTE: u32 = 60;

/// An invitation's text and the hash it is stored under.
fn new_invitation() -> (Zeroizing<String>, [u8; 32]) {
    let mut secret = Zeroizing::new([0u8; 32]);
    rand::fill(&mut secret[..]);
    let text = Zeroizing::new(format!("{INVITATION_PREFIX}{}", hex::encode(&secret[..])));
    (text, invitation_hash(&secret))
}

fn invitation_hash(secret: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret).into()
}

/// The stored hash of an invitation's text; `NotEntitled` if it is not one.
fn parse_invitation(text: &str) -> Result<[u8; 32], DomainError> {
    let malformed = || {
        DomainError::NotEntitled("invitation is malformed (expected inv1-<64 hex digits>)".into())
    };
    let hex_part = text
        .trim()
        .strip_prefix(INVITATION_PREFIX)
        .ok_or_else(malformed)?;
    let mut secret = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_part, &mut secret[..]).map_err(|_| malformed())?;
    Ok(invitation_hash(&secret))
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

impl<S: Store + ?Sized, G: AccessGate> Setup<S, G> {
    pub fn new(store: Arc<S>, gate: G, ca: Arc<CertificateAuthority>, config: SetupConfig) -> Self {
        let self_registrations = config.self_registrations_per_minute.map(|per_minute| {
            // One mesh-wide bucket: a minute's worth at once, then the rate.
            RateLimiter::new(f64::from(per_minute) / 60.0, per_minute.max(1)).with_max_keys(1)
        });
        let per_minute = config
            .self_registrations_per_minute
            .unwrap_or(0)
            .max(REENROLMENTS_PER_MINUTE);
        let reenrolments =
            RateLimiter::new(f64::from(per_minute) / 60.0, per_minute).with_max_keys(1);
        Setup {
            store,
            gate,
            ca,
            config,
            self_registrations,
            reenrolments,
            lookups: AuditedLookups::new(),
        }
    }

    /// The enrolled user `user_id`; `Unknown` if there is none.
    pub(crate) async fn enrolled(&self, user_id: &UserId) -> Result<UserRecord, DomainError> {
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

    pub(crate) async fn audit_result<T>(
        &self,
        subject: &str,
        rpc: Rpc,
        about: &str,
        result: &Result<T, DomainError>,
        ok_detail: impl FnOnce(&T) -> String,
    ) {
        match result {
            Ok(v) => {
                let detail = ok_detail(v);
                self.audit(subject, rpc, (about, ""), Outcome::Ok, &detail)
                    .await
            }
            Err(e) => {
                let detail = refusal_detail(e);
                self.audit(subject, rpc, (about, ""), Outcome::Denied, &detail)
                    .await
            }
        }
    }

    fn refuse_disabled(&self, user_id: &UserId) -> Result<(), DomainError> {
        match self
            .config
            .deny
            .as_ref()
            .map(|d| d.verdict(user_id.as_str(), None))
        {
            None | Some(Verdict::Allowed) => Ok(()),
            Some(Verdict::DeviceRevoked) => Err(DomainError::NotEntitled(
                "this device was removed by its user".into(),
            )),
            Some(Verdict::Disabled) => Err(DomainError::NotEntitled(format!(
                "user {user_id} is disabled: user disabled by an operator"
            ))),
            Some(Verdict::Stale(why)) => Err(DomainError::Unavailable(why)),
        }
    }

    /// Issues an invitation for one id and role. Operators invite any role
    /// (an enrolled id: a re-invitation, same role only); patients invite
    /// family and friends to ids nobody holds, a bounded number at a time.
    /// Audited, attributed to the invited id.
    pub async fn invite(
        &self,
        caller: &Caller,
        user_id: &str,
        role: Option<Role>,
        valid_for_secs: u64,
    ) -> Result<Invited, DomainError> {
        self.invite_at(caller, user_id, role, valid_for_secs, unix_now())
            .await
    }

    /// [`invite`](Self::invite) at a given time.
    pub async fn invite_at(
        &self,
        caller: &Caller,
        user_id: &str,
        role: Option<Role>,
        valid_for_secs: u64,
        now: i64,
    ) -> Result<Invited, DomainError> {
        let about = UserId::parse(user_id)
            .map(UserId::into_string)
            .unwrap_or_default();
        let result = self
            .invite_checked(caller, user_id, role, valid_for_secs, now)
            .await;
        let subject = caller.to_string();
        self.audit_result(&subject, Rpc::Invite, &about, &result, |i| {
            format!(
                "{} {about} as {}, valid until {}",
                if i.reenrollment {
                    "re-invited"
                } else {
                    "invited"
                },
                role.map(|r| r.as_str()).unwrap_or("?"),
                i.expires_at
            )
        })
        .await;
        result
    }

    async fn invite_checked(
        &self,
        caller: &Caller,
        user_id: &str,
        role: Option<Role>,
        valid_for_secs: u64,
        now: i64,
    ) -> Result<Invited, DomainError> {
        let user_id = UserId::parse(user_id)?;
        let role =
            role.ok_or_else(|| DomainError::Malformed("role must be set to a known role".into()))?;
        let valid_for = match valid_for_secs {
            0 => DEFAULT_INVITATION_VALIDITY_SECS,
            v if v > MAX_INVITATION_VALIDITY_SECS => {
                return Err(DomainError::Malformed(format!(
                    "valid_for_secs must be at most {MAX_INVITATION_VALIDITY_SECS} (30 days)"
                )));
            }
            v if v < MIN_INVITATION_VALIDITY_SECS && matches!(caller, Caller::Patient(_)) => {
                return Err(DomainError::Malformed(format!(
                    "a patient's invitation lasts at least {MIN_INVITATION_VALIDITY_SECS} s \
                     (1 hour)"
                )));
            }
            v => v,
        };
        let max_open = match caller {
            Caller::Operator(_) => None,
            Caller::Patient(_) if role.domain() == sesphr_identity::Domain::Private => {
                Some(InviteLimits {
                    open: MAX_OPEN_INVITATIONS_PER_PATIENT,
                    per_day: MAX_INVITATIONS_PER_PATIENT_PER_DAY,
                })
            }
            Caller::Patient(_) => {
                return Err(DomainError::NotEntitled(format!(
                    "patients invite family and friends only; a {role} is invited by an operator"
                )));
            }
            other => {
                return Err(DomainError::NotEntitled(format!("{other} may not invite")));
            }
        };
        let existing = {
            let store = self.store.clone();
            let id = user_id.clone();
            off_executor(move || store.user(&id)).await?
        };
        let reenrollment = match existing {
            None => false,
            Some(_) if max_open.is_some() => {
                return Err(DomainError::Exists(format!(
                    "user id {user_id} is already enrolled"
                )));
            }
            Some(u) if u.role != role => {
                return Err(DomainError::Conflict(format!(
                    "user {user_id} is enrolled as {}, not {role}: a re-invitation keeps the role",
                    u.role
                )));
            }
            Some(_) => true,
        };
        let expires_at = now.saturating_add(i64::try_from(valid_for).unwrap_or(i64::MAX));
        let (invitation, hash) = new_invitation();
        let record = Invitation {
            user_id: user_id.into_string(),
            role,
            issued_by: caller.to_string(),
            issued_at: now,
            expires_at,
            used_at: 0,
            reenrollment,
        };
        let store = self.store.clone();
        off_executor(move || store.put_invitation(hash, record, max_open, now)).await?;
        Ok(Invited {
            invitation,
            expires_at,
            reenrollment,
        })
    }

    /// Enrols a user by invitation (or, for a patient where the mesh allows
    /// it, by self-registration): the invitation is checked, then the
    /// request, then the CA signs the CSR for the identity asked for and the
    /// directory takes the id for good (a re-invitation: gives the enrolled
    /// user a new certificate). Every attempt is audited, ok or denied,
    /// attributed to the id asked for so its holder sees attempts on it.
    ///
    /// `caller` is who presented a mesh certificate, if anyone (enrolment is
    /// the one RPC reachable without); `remote_ip` names anonymous callers.
    pub async fn enroll(
        &self,
        caller: &Caller,
        remote_ip: Option<IpAddr>,
        request: Enrollment,
    ) -> Result<Enrolled, DomainError> {
        self.enroll_at(caller, remote_ip, request, unix_now()).await
    }

    /// [`enroll`](Self::enroll) at a given time.
    pub async fn enroll_at(
        &self,
        caller: &Caller,
        remote_ip: Option<IpAddr>,
        request: Enrollment,
        now: i64,
    ) -> Result<Enrolled, DomainError> {
        let peer = match (caller, remote_ip) {
            (Caller::Anonymous, Some(ip)) => format!("anonymous@{ip}"),
            (other, _) => other.to_string(),
        };
        let about = UserId::parse(request.user_id.as_str())
            .map(UserId::into_string)
            .unwrap_or_default();
        let by_proof_alone = !request.key_proof.is_empty() && request.invitation.trim().is_empty();
        let result = self.enroll_checked(request, now).await;
        // The audit entry says why; the caller, who showed nothing but a
        // proof, hears one answer for an id nobody holds, a disabled one,
        // another role or other keys, and a proof that does not verify.
        self.audit_result(&peer, Rpc::Enroll, &about, &result, |(e, how)| {
            format!(
                "{how} as {} (device {}), certificate valid until {}",
                e.identity, e.device, e.not_after
            )
        })
        .await;
        result.map(|(enrolled, _)| enrolled).map_err(|e| match e {
            DomainError::Unknown(_) | DomainError::NotEntitled(_) if by_proof_alone => {
                DomainError::NotEntitled(KEY_PROOF_REFUSED.into())
            }
            other => other,
        })
    }

    /// Enrolment proper: the invitation or key proof, the request, the
    /// certificate.
    async fn enroll_checked(
        &self,
        r: Enrollment,
        now: i64,
    ) -> Result<(Enrolled, &'static str), DomainError> {
        let user_id = UserId::parse(r.user_id)?;
        let key_proof = !r.key_proof.is_empty();
        let role = match (r.role, key_proof) {
            (Some(role), _) => Some(role),
            // A re-enrolment may leave the role to the directory.
            (None, true) => None,
            (None, false) => {
                return Err(DomainError::Malformed(
                    "role must be set to a known role".into(),
                ));
            }
        };
        if !r.device.is_empty() {
            crate::devices::validate_name(&r.device)?;
        }
        // The invitation first: without a valid one nothing else is told.
        let invitation = if r.invitation.trim().is_empty() {
            match role {
                // Counted once the proof verified (below).
                _ if key_proof => {}
                Some(role) => self.admit_self_registration(role)?,
                None => {
                    return Err(DomainError::Malformed(
                        "role must be set to a known role".into(),
                    ));
                }
            }
            None
        } else {
            let hash = parse_invitation(&r.invitation)?;
            let store = self.store.clone();
            let found = off_executor(move || store.invitation(&hash)).await?;
            let inv = found.ok_or_else(|| {
                DomainError::NotEntitled("invitation is not valid (unknown to this mesh)".into())
            })?;
            if inv.used_at != 0 {
                return Err(DomainError::NotEntitled("invitation already used".into()));
            }
            if inv.expires_at <= now {
                return Err(DomainError::NotEntitled(format!(
                    "invitation expired at {} (unix seconds); ask for a new one",
                    inv.expires_at
                )));
            }
            if inv.user_id != user_id.as_str() {
                return Err(DomainError::NotEntitled(format!(
                    "invitation is for id {}, not {user_id}",
                    inv.user_id
                )));
            }
            if role.is_some_and(|role| role != inv.role) {
                return Err(DomainError::NotEntitled(format!(
                    "invitation is for role {}, not {}",
                    inv.role,
                    role.map(|r| r.to_string()).unwrap_or_default()
                )));
            }
            if inv.reenrollment && !key_proof {
                return Err(DomainError::NotEntitled(format!(
                    "a re-invitation admits only the holder of {user_id}'s registered keys: \
                     the request needs their key proof (update the client)"
                )));
            }
            if !inv.reenrollment && key_proof {
                return Err(DomainError::NotEntitled(format!(
                    "this invitation enrols a new id; {user_id} is re-enrolled by its key \
                     proof alone"
                )));
            }
            Some((hash, inv))
        };
        if r.csr_der.is_empty() || r.csr_der.len() > MAX_CSR_BYTES {
            return Err(DomainError::Malformed(format!(
                "csr_der must be 1 to {MAX_CSR_BYTES} bytes"
            )));
        }
        let (role, enrolled) = if key_proof {
            let enrolled = match self.enrolled(&user_id).await {
                Ok(user) => user,
                Err(DomainError::Unknown(m)) => {
                    // As long as a real check, so timing tells nothing.
                    let _ = dummy_verifying_key().verify_key_proof(
                        &self.config.trust_domain,
                        user_id.as_str(),
                        &r.csr_der,
                        &r.key_proof,
                    );
                    return Err(DomainError::Unknown(m));
                }
                Err(e) => return Err(e),
            };
            self.refuse_disabled(&user_id)?;
            if role.is_some_and(|role| role != enrolled.role) {
                return Err(DomainError::NotEntitled(format!(
                    "{user_id} is enrolled as {}, not {}",
                    enrolled.role,
                    role.map(|r| r.to_string()).unwrap_or_default()
                )));
            }
            let other = |sent: &[u8], registered: &[u8]| !sent.is_empty() && sent != registered;
            if other(&r.pre_public_key, &enrolled.pre_public_key)
                || other(&r.verifying_key, &enrolled.verifying_key)
            {
                return Err(DomainError::NotEntitled(format!(
                    "a re-enrolment keeps {user_id}'s registered keys; these are other keys"
                )));
            }
            let vk = parse_verifying_key(&enrolled.verifying_key, "registered verifying key")?;
            vk.verify_key_proof(
                &self.config.trust_domain,
                user_id.as_str(),
                &r.csr_der,
                &r.key_proof,
            )
            .map_err(|_| {
                DomainError::NotEntitled(format!(
                    "the key proof does not verify against {user_id}'s registered key: \
                     only its holder re-enrols it"
                ))
            })?;
            if invitation.is_none() {
                self.admit_reenrolment()?;
            }
            (enrolled.role, Some(enrolled))
        } else {
            parse_public_key(&r.pre_public_key, "pre_public_key")?;
            parse_verifying_key(&r.verifying_key, "verifying_key")?;
            let role = role
                .ok_or_else(|| DomainError::Malformed("role must be set to a known role".into()))?;
            (role, None)
        };
        let device = match (&r.device, &enrolled) {
            (name, _) if !name.is_empty() => name.clone(),
            (_, Some(user)) => crate::devices::default_name(&user.devices),
            (_, None) => sesphr_mesh::trust::LEGACY_DEVICE.to_owned(),
        };
        let identity = Identity::user(&self.config.trust_domain, role, &user_id)?;
        let (certificate_pem, not_after, certificate_der) =
            self.sign(r.csr_der, &identity, &device).await?;
        let (issued_at, _) = sesphr_mesh::trust::validity(&certificate_der).unwrap_or((now, now));
        let record = crate::devices::DeviceRecord {
            name: device.clone(),
            added_at: now,
            issued_at,
            not_after,
            removed_at: 0,
        };
        let redeem = if enrolled.is_some() {
            Redeem::Reenroll {
                user_id: user_id.into_string(),
                device: record,
                certificate_der,
            }
        } else {
            Redeem::Enroll(UserRecord {
                user_id: user_id.into_string(),
                role,
                pre_public_key: r.pre_public_key,
                verifying_key: r.verifying_key,
                certificate_der,
                enrolled_at: now,
                devices: vec![record],
            })
        };
        let hash = invitation.map(|(h, _)| h);
        let store = self.store.clone();
        off_executor(move || {
            store
                .redeem_invitation(hash.as_ref(), redeem, now)
                .map_err(|e| match e {
                    // Used by a concurrent enrolment since it was read.
                    DomainError::Conflict(m) => DomainError::NotEntitled(m),
                    other => other,
                })
        })
        .await?;
        let how = match (enrolled.is_some(), hash.is_some()) {
            (true, true) => "re-enrolled by re-invitation and key proof",
            (true, false) => "re-enrolled by key proof",
            (false, true) => "enrolled by invitation",
            (false, false) => "self-registered",
        };
        tracing::info!(user = %identity, how, device, "user enrolled");
        Ok((
            Enrolled {
                identity,
                certificate_pem,
                ca_pem: self.config.service_ca_pem.clone(),
                not_after,
                device,
            },
            how,
        ))
    }

    /// Whether a self-service re-enrolment may go ahead now (one mesh-wide
    /// rate: each costs a signature check and a certificate).
    fn admit_reenrolment(&self) -> Result<(), DomainError> {
        if !self
            .reenrolments
            .check("reenrolment", std::time::Instant::now())
        {
            return Err(DomainError::UsedUp(
                "too many re-enrolments on this mesh right now; retry in a minute".into(),
            ));
        }
        Ok(())
    }

    /// Whether a self-registration of `role` may go ahead now.
    fn admit_self_registration(&self, role: Role) -> Result<(), DomainError> {
        if role != Role::Patient {
            return Err(DomainError::NotEntitled(format!(
                "enrolling as {role} requires an invitation from an operator{}",
                if role.domain() == sesphr_identity::Domain::Private {
                    " or the patient who names you"
                } else {
                    ""
                }
            )));
        }
        let Some(bucket) = &self.self_registrations else {
            return Err(DomainError::NotEntitled(
                "this mesh does not allow self-registration: enrolling requires an invitation"
                    .into(),
            ));
        };
        if !bucket.check("self-registration", std::time::Instant::now()) {
            return Err(DomainError::UsedUp(
                "too many self-registrations on this mesh right now; retry in a minute".into(),
            ));
        }
        Ok(())
    }

    /// The user CA signs `csr` for `identity`: (PEM, notAfter, DER).
    async fn sign(
        &self,
        csr: Vec<u8>,
        identity: &Identity,
        device: &str,
    ) -> Result<(String, i64, Vec<u8>), DomainError> {
        let ca = self.ca.clone();
        let id = identity.clone();
        let device = device.to_owned();
        let validity = self.config.user_cert_validity;
        let (pem, not_after) = off_executor(move || {
            ca.sign_csr(&csr, &id, &device, validity)
                .map_err(|e| DomainError::Malformed(e.to_string()))
        })
        .await?;
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| DomainError::Corrupt("the issued certificate does not parse".into()))?
            .to_vec();
        Ok((pem, not_after, der))
    }

    /// A new certificate for an enrolled user's device, over the key in
    /// `csr_der`. The authorization layer let only users with an unexpired
    /// certificate (and not disabled, nor of a removed device) this far.
    /// Audited.
    ///
    /// `presented` is what the caller's certificate says: its `notBefore`
    /// and device. A certificate older than the newest one issued to that
    /// device was superseded (by a renewal, perhaps after it was stolen)
    /// and renews nothing; neither does one of a removed device.
    pub async fn renew(
        &self,
        caller: &Caller,
        presented: Option<(i64, String)>,
        csr_der: Vec<u8>,
    ) -> Result<Enrolled, DomainError> {
        let result = self.renew_checked(caller, presented, csr_der).await;
        let about = caller
            .as_user()
            .map(|(_, id)| id.to_string())
            .unwrap_or_default();
        self.audit_result(&caller.to_string(), Rpc::Renew, &about, &result, |e| {
            format!(
                "renewed {} (device {}), certificate valid until {}",
                e.identity, e.device, e.not_after
            )
        })
        .await;
        result
    }

    async fn renew_checked(
        &self,
        caller: &Caller,
        presented: Option<(i64, String)>,
        csr_der: Vec<u8>,
    ) -> Result<Enrolled, DomainError> {
        let (role, user_id) = caller
            .as_user()
            .ok_or_else(|| DomainError::NotEntitled("only users renew certificates".into()))?;
        self.refuse_disabled(user_id)?;
        if csr_der.is_empty() || csr_der.len() > MAX_CSR_BYTES {
            return Err(DomainError::Malformed(format!(
                "csr_der must be 1 to {MAX_CSR_BYTES} bytes"
            )));
        }
        let Some((presented_not_before, device)) = presented else {
            return Err(DomainError::NotEntitled(
                "renewal needs the caller's certificate".into(),
            ));
        };
        let enrolled = self.enrolled(user_id).await?;
        if enrolled.role != role {
            return Err(DomainError::NotEntitled(format!(
                "{user_id} is enrolled as {}, not {role}",
                enrolled.role
            )));
        }
        let check = |user: &mut UserRecord| -> Result<(), DomainError> {
            let d = crate::devices::active(&mut user.devices, user_id.as_str(), &device)?;
            if presented_not_before < d.issued_at {
                return Err(DomainError::NotEntitled(format!(
                    "this certificate of {user_id} (device {device}) was superseded by one \
                     issued at {} (unix seconds): only the newest certificate renews",
                    d.issued_at
                )));
            }
            Ok(())
        };
        check(&mut enrolled.clone())?;
        let identity = Identity::user(&self.config.trust_domain, role, user_id)?;
        let (certificate_pem, not_after, der) = self.sign(csr_der, &identity, &device).await?;
        let (issued_at, _) =
            sesphr_mesh::trust::validity(&der).unwrap_or((presented_not_before, not_after));
        let store = self.store.clone();
        let id = user_id.to_string();
        let device_name = device.clone();
        let uid = user_id.clone();
        off_executor(move || {
            store.update_user(&id, &mut |user| {
                // Checked again on the record being replaced: a removal or
                // another renewal may have won meanwhile.
                let d = crate::devices::active(&mut user.devices, uid.as_str(), &device_name)?;
                if presented_not_before < d.issued_at {
                    return Err(DomainError::NotEntitled(format!(
                        "this certificate of {uid} was superseded meanwhile"
                    )));
                }
                d.issued_at = d.issued_at.max(issued_at);
                d.not_after = d.not_after.max(not_after);
                user.certificate_der = der.clone();
                Ok(())
            })
        })
        .await?;
        tracing::info!(user = %identity, not_after, device, "certificate renewed");
        Ok(Enrolled {
            identity,
            certificate_pem,
            ca_pem: self.config.service_ca_pem.clone(),
            not_after,
            device,
        })
    }

    /// The caller's devices, not removed, oldest first.
    pub async fn list_devices(
        &self,
        caller: &Caller,
    ) -> Result<Vec<crate::devices::DeviceRecord>, DomainError> {
        let (_, user_id) = caller
            .as_user()
            .ok_or_else(|| DomainError::NotEntitled("only users have devices".into()))?;
        let user = self.enrolled(user_id).await?;
        Ok(user.devices.into_iter().filter(|d| d.is_active()).collect())
    }

    /// Removes one of the caller's devices and revokes its certificates
    /// (AccessPolicy's deny list) before answering; returns until when they
    /// are revoked (0: all had expired). Audited.
    pub async fn remove_device(
        &self,
        caller: &Caller,
        presented_device: Option<&str>,
        name: &str,
    ) -> Result<i64, DomainError> {
        let result = self
            .remove_device_checked(caller, presented_device, name)
            .await;
        let about = caller
            .as_user()
            .map(|(_, id)| id.to_string())
            .unwrap_or_default();
        self.audit_result(
            &caller.to_string(),
            Rpc::RemoveDevice,
            &about,
            &result,
            |until| format!("removed device {name}; its certificates are revoked until {until}"),
        )
        .await;
        result
    }

    async fn remove_device_checked(
        &self,
        caller: &Caller,
        presented_device: Option<&str>,
        name: &str,
    ) -> Result<i64, DomainError> {
        let (_, user_id) = caller
            .as_user()
            .ok_or_else(|| DomainError::NotEntitled("only users have devices".into()))?;
        crate::devices::validate_name(name)?;
        if presented_device == Some(name) {
            return Err(DomainError::NotEntitled(format!(
                "device {name} is the one this call comes from; remove it from another device"
            )));
        }
        let now = unix_now();
        let store = self.store.clone();
        let (id, device) = (user_id.to_string(), name.to_owned());
        let user = off_executor(move || {
            store.update_user(&id, &mut |user| match user
                .devices
                .iter_mut()
                .find(|d| d.name == device)
            {
                Some(d) => {
                    if d.removed_at == 0 {
                        d.removed_at = now;
                    }
                    Ok(())
                }
                None => Err(DomainError::Unknown(format!("{id} has no device {device}"))),
            })
        })
        .await?;
        let until = user
            .devices
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.not_after)
            .unwrap_or(0);
        if until <= now {
            return Ok(0);
        }
        // Removed in the directory (it renews nothing from now on); its
        // live certificates are refused once AccessPolicy has the entry.
        // Should this fail, the call fails, and repeating it sends it again.
        self.gate
            .revoke_device(user_id.as_str(), name, until)
            .await?;
        tracing::info!(user = %user_id, device = name, until, "device removed");
        Ok(until)
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

/// A verifying key nobody holds, checked against when the id is unknown.
fn dummy_verifying_key() -> sesphr_crypto::VerifyingKey {
    static KEY: std::sync::OnceLock<sesphr_crypto::VerifyingKey> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| sesphr_crypto::SigningKey::generate(&mut rand::rng()).verifying_key())
}
