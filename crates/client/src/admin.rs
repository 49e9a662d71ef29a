//! Who may become whom, from the client side: invitations, certificate
//! renewal and re-enrolment, and the operator's deactivation of users.
//!
//! An operator works from an [`OperatorProfile`] (`sesphrd dev` writes one
//! to `DIR/operator/`): its certificate, key and the service CA, no user
//! keys. A patient invites family and friends with her own session
//! ([`crate::Session::invite`]).
//!
//! ```text
//! DIR/operator.toml  operator id, trust domain
//! DIR/tls.key        TLS private key (0600)
//! DIR/tls.pem        operator certificate (from the service CA)
//! DIR/ca.pem         service CA certificate
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sesphr::proto;
use sesphr_identity::{Identity, Role};
use sesphr_mesh::pki::{write_public, write_secret};
use sesphr_mesh::tls::{TlsFiles, TlsMaterial};
use zeroize::Zeroizing;

use crate::raw::MeshClients;
use crate::{ClientError, MeshFile, Profile, rpc, unary};

/// An invitation as issued: hand `text` to the invitee out of band; the
/// mesh keeps only its hash, so it is shown once.
#[derive(Clone, PartialEq, Eq)]
pub struct Invitation {
    /// `inv1-` and 64 hex digits.
    pub text: Zeroizing<String>,
    /// Unix seconds.
    pub expires_at: i64,
    /// Whether it re-admits an enrolled user (same id, role and keys).
    pub reenrollment: bool,
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitation")
            .field("expires_at", &self.expires_at)
            .field("reenrollment", &self.reenrollment)
            .finish_non_exhaustive()
    }
}

/// Asks the SRS for an invitation of `user_id` as `role`, valid for
/// `valid_for` (`None`: the mesh's default, 7 days), as whoever `clients`
/// authenticate (an operator, or a patient for family and friends).
pub async fn invite(
    clients: &MeshClients,
    user_id: &str,
    role: Role,
    valid_for: Option<Duration>,
) -> Result<Invitation, ClientError> {
    let resp = clients
        .srs
        .clone()
        .invite(unary(proto::InviteRequest {
            user_id: user_id.to_owned(),
            role: proto::Role::from(role) as i32,
            valid_for_secs: valid_for.map_or(0, |d| d.as_secs().max(1)),
        }))
        .await
        .map_err(rpc("SRS"))?
        .into_inner();
    if !resp.invitation.starts_with("inv1-") {
        return Err(ClientError::Verification(
            "the SRS returned something that is not an invitation".into(),
        ));
    }
    Ok(Invitation {
        text: Zeroizing::new(resp.invitation),
        expires_at: resp.expires_at,
        reenrollment: resp.reenrollment,
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperatorFile {
    operator_id: String,
    trust_domain: String,
}

/// An operator's credentials on disk (see the module docs).
#[derive(Debug, Clone)]
pub struct OperatorProfile {
    /// The directory.
    pub home: PathBuf,
    /// The operator identity its certificate names.
    pub identity: Identity,
}

impl OperatorProfile {
    const FILE: &'static str = "operator.toml";

    /// Whether `home` holds an operator profile.
    pub fn exists(home: &Path) -> bool {
        home.join(Self::FILE).exists()
    }

    /// Writes (or rewrites) an operator profile from its certificate, key
    /// and the service CA.
    pub fn create(
        home: &Path,
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
    ) -> Result<Self, ClientError> {
        let tls = TlsMaterial::from_pem(
            cert_pem.to_owned(),
            Zeroizing::new(key_pem.to_owned()),
            ca_pem.to_owned(),
        )?;
        let identity = tls.identity()?;
        let Some(operator_id) = identity.as_operator() else {
            return Err(ClientError::Profile(format!(
                "{identity} is not an operator identity"
            )));
        };
        std::fs::create_dir_all(home).map_err(|e| ClientError::io(home, e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ClientError::io(home, e))?;
        write_secret(&home.join("tls.key"), key_pem.as_bytes())?;
        write_public(&home.join("tls.pem"), cert_pem.as_bytes())?;
        write_public(&home.join("ca.pem"), ca_pem.as_bytes())?;
        let file = OperatorFile {
            operator_id: operator_id.to_owned(),
            trust_domain: identity.trust_domain.clone(),
        };
        let text = toml::to_string(&file).expect("operator file serializes");
        write_public(&home.join(Self::FILE), text.as_bytes())?;
        Ok(Self {
            home: home.to_owned(),
            identity,
        })
    }

    /// Reads the operator profile in `home`.
    pub fn load(home: &Path) -> Result<Self, ClientError> {
        let path = home.join(Self::FILE);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            ClientError::Profile(format!(
                "no operator profile in {} (operator.toml): pass the operator's --home \
                 (`sesphrd dev` writes DIR/operator)",
                home.display()
            ))
        })?;
        let file: OperatorFile = toml::from_str(&text)
            .map_err(|e| ClientError::Profile(format!("{}: {e}", path.display())))?;
        let identity = Identity::operator(&file.trust_domain, &file.operator_id)
            .map_err(|e| ClientError::Profile(format!("{}: {e}", path.display())))?;
        Ok(Self {
            home: home.to_owned(),
            identity,
        })
    }

    /// The operator's TLS material.
    pub fn tls(&self) -> Result<TlsMaterial, ClientError> {
        Ok(TlsMaterial::load(&TlsFiles {
            cert: self.home.join("tls.pem"),
            key: self.home.join("tls.key"),
            ca: self.home.join("ca.pem"),
        })?)
    }
}

/// What an operator does to users.
pub struct Admin {
    /// The raw clients under the operator's identity.
    pub clients: MeshClients,
}

impl Admin {
    /// Connects (lazily) as the operator `tls` names.
    pub fn connect(mesh: &MeshFile, tls: &TlsMaterial) -> Result<Self, ClientError> {
        Ok(Self {
            clients: MeshClients::connect(mesh, tls)?,
        })
    }

    /// Connects with the operator profile in `home`.
    pub fn open(mesh: &MeshFile, home: &Path) -> Result<Self, ClientError> {
        Self::connect(mesh, &OperatorProfile::load(home)?.tls()?)
    }

    /// An invitation for `user_id` as `role` (see [`invite`]).
    pub async fn invite(
        &self,
        user_id: &str,
        role: Role,
        valid_for: Option<Duration>,
    ) -> Result<Invitation, ClientError> {
        invite(&self.clients, user_id, role, valid_for).await
    }

    /// What `user_id` enrols as `role` with on a mesh that lets patients
    /// register themselves: nothing for a patient, this operator's
    /// invitation for anyone else.
    pub async fn enrolment_invitation(
        &self,
        user_id: &str,
        role: Role,
    ) -> Result<Zeroizing<String>, ClientError> {
        match role {
            Role::Patient => Ok(Zeroizing::new(String::new())),
            _ => Ok(self.invite(user_id, role, None).await?.text),
        }
    }

    /// Disables `user_id` everywhere (within the deny list's staleness
    /// bound); whether its status changed.
    pub async fn disable(&self, user_id: &str, reason: &str) -> Result<bool, ClientError> {
        self.set_status(user_id, reason, true).await
    }

    /// Enables `user_id` again; whether its status changed.
    pub async fn enable(&self, user_id: &str, reason: &str) -> Result<bool, ClientError> {
        self.set_status(user_id, reason, false).await
    }

    async fn set_status(
        &self,
        user_id: &str,
        reason: &str,
        disable: bool,
    ) -> Result<bool, ClientError> {
        let req = unary(proto::SetUserStatusRequest {
            user_id: user_id.to_owned(),
            reason: reason.to_owned(),
        });
        let mut policy = self.clients.policy.clone();
        let resp = if disable {
            policy.disable_user(req).await
        } else {
            policy.enable_user(req).await
        };
        Ok(resp.map_err(rpc("AccessPolicy"))?.into_inner().changed)
    }
}

/// How long a certificate has left, and how long it lasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateLife {
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

impl CertificateLife {
    /// Of a PEM certificate.
    pub fn of_pem(pem: &str) -> Result<Self, ClientError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let bad = || ClientError::Profile("the certificate does not parse".into());
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| bad())?;
        let (not_before, not_after) = sesphr_mesh::trust::validity(&der).ok_or_else(bad)?;
        Ok(Self {
            not_before,
            not_after,
        })
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }

    /// Whether it is in the last third of its life at `now`: time to renew.
    pub fn due_for_renewal(&self, now: i64) -> bool {
        let life = (self.not_after - self.not_before).max(1);
        self.not_after - now < life / 3
    }
}

impl Profile {
    /// The profile's certificate's validity.
    pub fn certificate_life(&self) -> Result<CertificateLife, ClientError> {
        let path = self.home.join("tls.pem");
        let pem = std::fs::read_to_string(&path).map_err(|e| ClientError::io(&path, e))?;
        CertificateLife::of_pem(&pem)
    }

    /// Replaces the certificate and, if given, the TLS key it certifies:
    /// each file by a durable rename, the new pair first written beside
    /// the old one, so a crash leaves a complete old or new pair except in
    /// the instant between the two renames.
    /// The device the profile's certificate was issued to.
    pub fn device(&self) -> Result<String, ClientError> {
        let path = self.home.join("tls.pem");
        let pem = std::fs::read(&path).map_err(|e| ClientError::io(&path, e))?;
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(&pem).map_err(|_| {
            ClientError::Profile(format!("{} is not a certificate", path.display()))
        })?;
        sesphr_mesh::trust::device(&der)
            .ok_or_else(|| ClientError::Profile(format!("{} does not parse", path.display())))
    }

    pub(crate) fn install_certificate(
        &self,
        cert_pem: &str,
        new_key_pem: Option<&str>,
    ) -> Result<(), ClientError> {
        // Not while a change of passphrase runs: the key would be sealed
        // under the passphrase it is leaving.
        let _lock = crate::profile::lock_secrets(&self.home)?;
        match new_key_pem {
            None => write_public(&self.home.join("tls.pem"), cert_pem.as_bytes())?,
            Some(key) => {
                // Sealed under the profile's passphrase if tls.key is now.
                let key = self.encode_like_current(crate::profile::TLS_KEY, key.as_bytes())?;
                write_secret(&self.home.join("tls.key.new"), &key)?;
                write_public(&self.home.join("tls.pem.new"), cert_pem.as_bytes())?;
                let rename = |from: &str, to: &str| {
                    std::fs::rename(self.home.join(from), self.home.join(to))
                        .map_err(|e| ClientError::io(&self.home.join(to), e))
                };
                rename("tls.key.new", "tls.key")?;
                rename("tls.pem.new", "tls.pem")?;
            }
        }
        Ok(())
    }
}

/// Renews the profile's certificate with its current one (which must not
/// have expired: an expired one is refused `UNAUTHENTICATED`, and
/// [`reenroll`] helps). With `new_key`, the
/// new certificate is for a fresh TLS key. Returns its expiry.
pub async fn renew(mesh: &MeshFile, profile: &Profile, new_key: bool) -> Result<i64, ClientError> {
    let tls = profile.tls()?;
    let clients = MeshClients::connect(mesh, &tls)?;
    let (csr_der, key_pem) = if new_key {
        let (csr, key) = sesphr_mesh::pki::make_csr()?;
        (csr, Some(Zeroizing::new(key)))
    } else {
        let key = profile.tls_key_pem()?;
        (sesphr_mesh::pki::make_csr_for(&key)?, None)
    };
    let resp = clients
        .srs
        .clone()
        .renew(unary(proto::RenewRequest { csr_der }))
        .await
        .map_err(|status| {
            if status.code() == tonic::Code::Unauthenticated && status.message().contains("expired")
            {
                ClientError::Invalid(format!(
                    "your certificate has expired ({}); run `sesphr reenroll`: it proves \
                     your registered key and keeps your id and your grants",
                    status.message()
                ))
            } else {
                rpc("SRS")(status)
            }
        })?
        .into_inner();
    check_issued(&resp.certificate_pem, &profile.identity)?;
    profile.install_certificate(
        &resp.certificate_pem,
        key_pem.as_deref().map(|k| k.as_str()),
    )?;
    Ok(resp.not_after)
}

/// The certificate the SRS issued must name who asked.
fn check_issued(cert_pem: &str, expected: &Identity) -> Result<(), ClientError> {
    let tls_identity = {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| {
            ClientError::Verification("the issued certificate does not parse".into())
        })?;
        sesphr_identity::identity_from_cert_der(&der)
            .map_err(|e| ClientError::Verification(e.to_string()))?
    };
    if &tls_identity != expected {
        return Err(ClientError::Verification(format!(
            "the SRS issued a certificate for {tls_identity} instead of {expected}"
        )));
    }
    Ok(())
}

/// A certificate for a new device of an enrolled user, with its TLS key:
/// what a restore, a recovery or `device add` installs into a new profile.
pub struct IssuedCertificate {
    /// Whom the certificate names.
    pub identity: Identity,
    /// The certificate (PEM), signed by the user CA.
    pub certificate_pem: String,
    /// The new device's TLS key (PEM).
    pub tls_key_pem: Zeroizing<String>,
    /// The service CA (PEM) the mesh's servers chain to.
    pub ca_pem: String,
    /// When the certificate expires (unix seconds).
    pub not_after: i64,
    /// The device name the SRS gave it.
    pub device: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("identity", &self.identity.to_string())
            .field("device", &self.device)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Enrols a new device of the enrolled user `user_id` from her master
/// secret alone: a fresh TLS key, and a proof of possession of the
/// registered keys (docs/crypto.md, "Key proof") instead of the old
/// certificate, which is not needed. `role`: `None` takes the one the
/// directory holds. `invitation`: an operator's re-invitation, where the
/// mesh wants one; `None` for the self-service path. `device`: its name
/// (`None`: the SRS picks `device-N`). Writes nothing.
pub async fn obtain_device_certificate(
    mesh: &MeshFile,
    master: &sesphr_crypto::MasterSecret,
    user_id: &str,
    role: Option<Role>,
    invitation: Option<&str>,
    device: Option<&str>,
) -> Result<IssuedCertificate, ClientError> {
    sesphr_identity::validate_user_id(user_id).map_err(|e| ClientError::Invalid(e.to_string()))?;
    sesphr_mesh::tls::install_crypto_provider();
    let (_, receiving_pk) = crate::receiving_keys(master)?;
    let signing_key = master.signing_key();
    let (csr_der, key_pem) = sesphr_mesh::pki::make_csr()?;
    let tls_key_pem = Zeroizing::new(key_pem);
    let key_proof = signing_key
        .sign_key_proof(&mesh.trust_domain, user_id, &csr_der)
        .map_err(|e| ClientError::Invalid(format!("key proof: {e}")))?;
    let ca_pem = std::fs::read_to_string(&mesh.ca).map_err(|e| ClientError::io(&mesh.ca, e))?;
    let channel = crate::deadline::TimedChannel::connect(
        &mesh.srs,
        sesphr_mesh::tls::anonymous_client_config(&ca_pem),
        &mesh.trust_domain,
        sesphr_identity::Service::Srs,
        mesh.timeouts().map_err(ClientError::Config)?,
    )?;
    let resp = proto::srs_client::SrsClient::new(channel)
        .enroll(unary(proto::EnrollRequest {
            invitation: invitation.unwrap_or_default().trim().to_owned(),
            user_id: user_id.to_owned(),
            role: role.map_or(proto::Role::Unspecified, proto::Role::from) as i32,
            csr_der,
            pre_public_key: receiving_pk.to_bytes().to_vec(),
            verifying_key: signing_key.verifying_key().to_bytes().to_vec(),
            key_proof: key_proof.to_vec(),
            device: device.unwrap_or_default().to_owned(),
        }))
        .await
        .map_err(rpc("SRS"))?
        .into_inner();
    let identity: Identity = resp.spiffe_id.parse().map_err(|_| {
        ClientError::Verification(format!(
            "the SRS named an unreadable identity {:?}",
            resp.spiffe_id
        ))
    })?;
    match identity.as_user() {
        Some((got_role, got_id))
            if got_id == user_id
                && identity.trust_domain == mesh.trust_domain
                && role.is_none_or(|r| r == got_role) => {}
        _ => {
            return Err(ClientError::Verification(format!(
                "the SRS issued a certificate for {identity}, not for {user_id}"
            )));
        }
    }
    check_issued(&resp.certificate_pem, &identity)?;
    Ok(IssuedCertificate {
        identity,
        certificate_pem: resp.certificate_pem,
        tls_key_pem,
        ca_pem,
        not_after: resp.not_after,
        device: resp.device,
    })
}

/// Re-enrols the existing profile in `home` (after its certificate
/// expired or its TLS key was lost): the same id, role and keys, proven by
/// the key proof, on a new device with a new TLS key and certificate; the
/// profile's previous device is then removed (its certificates revoked).
/// `invitation`: an operator's re-invitation, if the mesh asks for one.
/// Returns the certificate's expiry.
pub async fn reenroll(
    mesh: &MeshFile,
    home: &Path,
    invitation: Option<&str>,
) -> Result<i64, ClientError> {
    let profile = Profile::load(home)?;
    let master = profile.master_secret()?;
    let old_device = profile.device().ok();
    let issued = obtain_device_certificate(
        mesh,
        &master,
        profile.user_id(),
        Some(profile.role()),
        invitation,
        None,
    )
    .await?;
    if issued.identity != profile.identity {
        return Err(ClientError::Verification(format!(
            "the SRS issued a certificate for {} instead of {}",
            issued.identity, profile.identity
        )));
    }
    profile.install_certificate(&issued.certificate_pem, Some(issued.tls_key_pem.as_str()))?;
    if let Some(old) = old_device.filter(|old| *old != issued.device)
        && let Err(e) = remove_device(mesh, &profile, &old).await
    {
        tracing::warn!(device = %old, error = %e, "could not remove the previous device");
    }
    Ok(issued.not_after)
}

/// One of a user's devices, as the SRS lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// Its name (in its certificates' subject).
    pub name: String,
    /// When the device was enrolled (unix seconds).
    pub added_at: i64,
    /// When its newest certificate was issued.
    pub issued_at: i64,
    /// When its last certificate expires.
    pub not_after: i64,
    /// The device this profile runs on.
    pub current: bool,
}

/// The profile's user's devices (not removed), oldest first.
pub async fn list_devices(
    mesh: &MeshFile,
    profile: &Profile,
) -> Result<Vec<DeviceInfo>, ClientError> {
    let tls = profile.tls()?;
    let mut clients = MeshClients::connect(mesh, &tls)?;
    let resp = clients
        .srs
        .list_devices(unary(proto::ListDevicesRequest {}))
        .await
        .map_err(rpc("SRS"))?
        .into_inner();
    Ok(resp
        .devices
        .into_iter()
        .map(|d| DeviceInfo {
            name: d.name,
            added_at: d.added_at,
            issued_at: d.issued_at,
            not_after: d.not_after,
            current: d.current,
        })
        .collect())
}

/// Removes one of the user's devices (not the profile's own): every
/// certificate it got is revoked at once. Returns until when (unix
/// seconds; 0 when they had all expired).
pub async fn remove_device(
    mesh: &MeshFile,
    profile: &Profile,
    name: &str,
) -> Result<i64, ClientError> {
    let tls = profile.tls()?;
    let mut clients = MeshClients::connect(mesh, &tls)?;
    Ok(clients
        .srs
        .remove_device(unary(proto::RemoveDeviceRequest {
            name: name.to_owned(),
        }))
        .await
        .map_err(rpc("SRS"))?
        .into_inner()
        .revoked_until)
}

/// Renews the profile's certificate if it is in the last third of its
/// life (the CLI runs this before each command). `Ok(None)`: not due.
pub async fn renew_if_due(mesh: &MeshFile, profile: &Profile) -> Result<Option<i64>, ClientError> {
    let life = profile.certificate_life()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if life.expired(now) || !life.due_for_renewal(now) {
        return Ok(None);
    }
    renew(mesh, profile, false).await.map(Some)
}
