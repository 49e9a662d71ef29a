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
    pub(crate) fn install_certificate(
        &self,
        cert_pem: &str,
        new_key_pem: Option<&str>,
    ) -> Result<(), ClientError> {
        match new_key_pem {
            None => write_public(&self.home.join("tls.pem"), cert_pem.as_bytes())?,
            Some(key) => {
                write_secret(&self.home.join("tls.key.new"), key.as_bytes())?;
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
/// have expired: an expired one is refused `UNAUTHENTICATED`, and only an
/// operator's re-invitation helps, see [`reenroll`]). With `new_key`, the
/// new certificate is for a fresh TLS key. Returns its expiry.
pub async fn renew(mesh: &MeshFile, profile: &Profile, new_key: bool) -> Result<i64, ClientError> {
    let tls = profile.tls()?;
    let clients = MeshClients::connect(mesh, &tls)?;
    let (csr_der, key_pem) = if new_key {
        let (csr, key) = sesphr_mesh::pki::make_csr()?;
        (csr, Some(Zeroizing::new(key)))
    } else {
        let key_path = profile.home.join("tls.key");
        let key = Zeroizing::new(
            std::fs::read_to_string(&key_path).map_err(|e| ClientError::io(&key_path, e))?,
        );
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
                    "your certificate has expired ({}); ask an operator for a re-invitation \
                     (`sesphr admin invite --id {} --role {}`), then run `sesphr reenroll \
                     --invite TOKEN`: it keeps your id and your grants",
                    status.message(),
                    profile.user_id(),
                    profile.role()
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

/// Re-enrols the existing profile in `home` with an operator's
/// re-invitation (after its certificate expired or its TLS key was lost):
/// the same id, role and keys, a new TLS key and certificate. Returns the
/// certificate's expiry.
pub async fn reenroll(mesh: &MeshFile, home: &Path, invitation: &str) -> Result<i64, ClientError> {
    let profile = Profile::load(home)?;
    let master = profile.master_secret()?;
    let (_, receiving_pk) = crate::receiving_keys(&master)?;
    let verifying_key = master.signing_key().verifying_key();
    let (csr_der, key_pem) = sesphr_mesh::pki::make_csr()?;
    let key_pem = Zeroizing::new(key_pem);
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
            invitation: invitation.trim().to_owned(),
            user_id: profile.user_id().to_owned(),
            role: proto::Role::from(profile.role()) as i32,
            csr_der,
            pre_public_key: receiving_pk.to_bytes().to_vec(),
            verifying_key: verifying_key.to_bytes().to_vec(),
        }))
        .await
        .map_err(rpc("SRS"))?
        .into_inner();
    check_issued(&resp.certificate_pem, &profile.identity)?;
    profile.install_certificate(&resp.certificate_pem, Some(&key_pem))?;
    Ok(resp.not_after)
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
