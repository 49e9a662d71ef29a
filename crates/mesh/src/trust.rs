//! The mesh's two trust roots, and which identities each may vouch for.
//!
//! - The **service CA** signs the mesh's servers (`service/*`, the
//!   re-encryption nodes) and its operators. It is never online at the SRS;
//!   every client verifies servers against it alone.
//! - The **user CA** signs patients and practitioners. The SRS holds it, to
//!   sign enrolling users' CSRs.
//!
//! A TLS handshake accepts a client chain that ends at either root; then
//! [`TrustRoots::peer_identity`] verifies the chain again against the one
//! root the identity's class belongs to. So whoever controls the SRS (the
//! user CA key) can mint users at worst: a `service/cloud-storage` or
//! `operator/…` certificate it signs names nobody here.
//!
//! An expired certificate that is otherwise valid passes the handshake and
//! is refused on every call with a message saying it expired, so a client
//! learns why (a failed handshake says nothing a CLI could show).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use sesphr_identity::{Identity, Principal, identity_from_cert_der};

use crate::tls::TlsError;
use crate::transport::PeerIdentity;

/// Which root an identity must chain to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// Servers, nodes and operators.
    Service,
    /// Patients and practitioners.
    User,
}

impl Root {
    /// The root `identity`'s class chains to.
    pub fn of(identity: &Identity) -> Root {
        match identity.principal {
            Principal::User { .. } => Root::User,
            Principal::Service(_) | Principal::SrsNode(_) | Principal::Operator(_) => Root::Service,
        }
    }
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Root::Service => "service CA",
            Root::User => "user CA",
        })
    }
}

/// The service CA and the user CA, as client-certificate verifiers.
#[derive(Clone)]
pub struct TrustRoots {
    service: Arc<dyn ClientCertVerifier>,
    user: Arc<dyn ClientCertVerifier>,
    either: Arc<dyn ClientCertVerifier>,
    either_optional: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustRoots").finish_non_exhaustive()
    }
}

fn roots(pems: &[&str]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for pem in pems {
        let mut any = false;
        for ca in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let ca = ca.map_err(|e| TlsError::ServerConfig(e.to_string()))?;
            roots
                .add(ca)
                .map_err(|e| TlsError::ServerConfig(e.to_string()))?;
            any = true;
        }
        if !any {
            return Err(TlsError::ServerConfig(
                "a CA file holds no PEM certificate".into(),
            ));
        }
    }
    Ok(roots)
}

fn verifier(
    roots: rustls::RootCertStore,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| TlsError::ServerConfig(e.to_string()))
}

impl TrustRoots {
    /// From the two CA certificates (PEM).
    pub fn from_pem(service_ca_pem: &str, user_ca_pem: &str) -> Result<Self, TlsError> {
        // One certificate each, and not the same one: a bundle in either
        // file would let one root vouch for the other's class.
        let one = |pem: &str, what: &str| -> Result<CertificateDer<'static>, TlsError> {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::ServerConfig(format!("{what}: {e}")))?;
            match <[_; 1]>::try_from(certs) {
                Ok([cert]) => Ok(cert),
                Err(certs) => Err(TlsError::ServerConfig(format!(
                    "{what} must hold exactly one certificate, not {}",
                    certs.len()
                ))),
            }
        };
        let service = one(service_ca_pem, "the service CA file")?;
        let user = one(user_ca_pem, "the user CA file")?;
        if service == user || spki(&service).is_some() && spki(&service) == spki(&user) {
            return Err(TlsError::ServerConfig(
                "the service CA and the user CA must be different certificates with \
                 different keys"
                    .into(),
            ));
        }
        Ok(TrustRoots {
            service: verifier(roots(&[service_ca_pem])?, false)?,
            user: verifier(roots(&[user_ca_pem])?, false)?,
            either: verifier(roots(&[service_ca_pem, user_ca_pem])?, false)?,
            either_optional: verifier(roots(&[service_ca_pem, user_ca_pem])?, true)?,
        })
    }

    /// From the two CA certificate files.
    pub fn load(service_ca: &Path, user_ca: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Self::from_pem(&read(service_ca)?, &read(user_ca)?)
    }

    /// The verifier of a listener's handshakes: a chain to either root,
    /// expired certificates let through (see the module docs); a client
    /// certificate optional only if `require_client_cert` is false.
    pub fn handshake_verifier(&self, require_client_cert: bool) -> Arc<dyn ClientCertVerifier> {
        let inner = if require_client_cert {
            self.either.clone()
        } else {
            self.either_optional.clone()
        };
        Arc::new(HandshakeVerifier { inner })
    }

    /// Who a connection's verified client chain names (`chain[0]` the
    /// leaf): its identity, checked against the one root its class chains
    /// to, at `now`.
    pub fn peer_identity(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
        trust_domain: &str,
        now: UnixTime,
    ) -> PeerIdentity {
        let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return PeerIdentity::NoCertificate;
        };
        let id = match identity_from_cert_der(leaf) {
            Ok(id) => id,
            Err(e) => return PeerIdentity::Rejected(format!("client certificate rejected: {e}")),
        };
        if id.trust_domain != trust_domain {
            return PeerIdentity::Rejected(format!(
                "client certificate is for trust domain {:?}, this mesh is {:?}",
                id.trust_domain, trust_domain
            ));
        }
        let root = Root::of(&id);
        let verifier = match root {
            Root::Service => &self.service,
            Root::User => &self.user,
        };
        match verify_at(verifier.as_ref(), leaf, intermediates, now) {
            Ok(()) => PeerIdentity::Verified(id),
            Err(Verdict::Expired(at)) => PeerIdentity::Rejected(format!(
                "client certificate of {} expired at {at} (unix seconds): renew before it \
                 expires (`sesphr renew`); once expired, re-enrol (`sesphr reenroll`, a proof \
                 of the registered key), which keeps the user id and its grants",
                id.short()
            )),
            Err(Verdict::Invalid(e)) => PeerIdentity::Rejected(format!(
                "client certificate of {} does not chain to the mesh's {root}: {e}",
                id.short()
            )),
        }
    }
}

enum Verdict {
    /// Valid but for its expiry (unix seconds of `notAfter`).
    Expired(u64),
    Invalid(Error),
}

/// Verifies at `now`; an expired certificate is verified again just before
/// its expiry, so only a chain that was once valid is reported as expired.
fn verify_at(
    verifier: &dyn ClientCertVerifier,
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), Verdict> {
    match verifier.verify_client_cert(leaf, intermediates, now) {
        Ok(_) => Ok(()),
        Err(Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => {
            let not_after = not_after(leaf).ok_or(Verdict::Invalid(Error::InvalidCertificate(
                CertificateError::BadEncoding,
            )))?;
            let before = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                not_after.saturating_sub(1),
            ));
            match verifier.verify_client_cert(leaf, intermediates, before) {
                Ok(_) => Err(Verdict::Expired(not_after)),
                Err(e) => Err(Verdict::Invalid(e)),
            }
        }
        Err(e) => Err(Verdict::Invalid(e)),
    }
}

/// A certificate's public key (DER of its SubjectPublicKeyInfo).
fn spki(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

/// A certificate's `notAfter`, unix seconds.
pub fn not_after(der: &[u8]) -> Option<u64> {
    validity(der).and_then(|(_, after)| u64::try_from(after).ok())
}

/// A certificate's `(notBefore, notAfter)`, unix seconds.
pub fn validity(der: &[u8]) -> Option<(i64, i64)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// The device a user certificate was issued to: its subject's
/// organizational unit, set by the SRS (`Srs/Enroll`'s `device`).
/// Certificates issued before devices were named carry none and belong to
/// [`LEGACY_DEVICE`].
pub fn device(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let name = cert
        .subject()
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .unwrap_or(LEGACY_DEVICE);
    Some(name.to_owned())
}

/// The device of a user's certificates that name none: a user's first
/// device is called so too.
pub const LEGACY_DEVICE: &str = "device-1";

/// The handshake's verifier: `inner`'s verdict, except that a chain valid
/// but for its expiry is let through (refused per call by
/// [`TrustRoots::peer_identity`], with the reason).
#[derive(Debug)]
struct HandshakeVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for HandshakeVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match verify_at(self.inner.as_ref(), end_entity, intermediates, now) {
            Ok(()) | Err(Verdict::Expired(_)) => Ok(ClientCertVerified::assertion()),
            Err(Verdict::Invalid(e)) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;
    use sesphr_identity::{Role, Service};
    use time::{Duration, OffsetDateTime};

    const TD: &str = "sesphr.local";

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn setup() -> (CertificateAuthority, CertificateAuthority, TrustRoots) {
        crate::tls::install_crypto_provider();
        let (service, _) = CertificateAuthority::generate(TD).unwrap();
        let (user, _) = CertificateAuthority::generate_user_ca(TD).unwrap();
        let roots = TrustRoots::from_pem(service.cert_pem(), user.cert_pem()).unwrap();
        (service, user, roots)
    }

    fn identity_of(roots: &TrustRoots, cert_pem: &str) -> PeerIdentity {
        roots.peer_identity(Some(&[der(cert_pem)]), TD, UnixTime::now())
    }

    #[test]
    fn each_root_vouches_for_its_own_class_only() {
        let (service_ca, user_ca, roots) = setup();
        let cloud = Identity::service(TD, Service::CloudStorage);
        let alice = Identity::user(TD, Role::Patient, "alice").unwrap();
        let ops = Identity::operator(TD, "ops").unwrap();
        let ok = |ca: &CertificateAuthority, id: &Identity| {
            identity_of(&roots, &ca.issue(id, &[], &[]).unwrap().cert_pem)
        };
        assert_eq!(
            ok(&service_ca, &cloud),
            PeerIdentity::Verified(cloud.clone())
        );
        assert_eq!(ok(&user_ca, &alice), PeerIdentity::Verified(alice.clone()));
        assert_eq!(ok(&service_ca, &ops), PeerIdentity::Verified(ops.clone()));
        // The SRS's key minting a service or an operator, the service CA a
        // user: each names nobody.
        for (ca, id) in [(&user_ca, &cloud), (&user_ca, &ops), (&service_ca, &alice)] {
            let PeerIdentity::Rejected(why) = ok(ca, id) else {
                panic!("{id} from the wrong CA was accepted");
            };
            assert!(why.contains("does not chain"), "{why}");
        }
    }

    #[test]
    fn expired_certificates_pass_the_handshake_and_are_refused_with_the_reason() {
        let (_, user_ca, roots) = setup();
        let alice = Identity::user(TD, Role::Patient, "alice").unwrap();
        let now = OffsetDateTime::now_utc();
        let expired = user_ca
            .issue_with_validity(&alice, now - Duration::days(31), now - Duration::days(1))
            .unwrap();
        let leaf = der(&expired.cert_pem);
        let handshake = roots.handshake_verifier(true);
        assert!(
            handshake
                .verify_client_cert(&leaf, &[], UnixTime::now())
                .is_ok()
        );
        let PeerIdentity::Rejected(why) = identity_of(&roots, &expired.cert_pem) else {
            panic!("an expired certificate was accepted");
        };
        assert!(why.contains("expired"), "{why}");
        // A stranger's expired certificate fails the handshake itself.
        let (stranger, _) = CertificateAuthority::generate_user_ca(TD).unwrap();
        let forged = stranger
            .issue_with_validity(&alice, now - Duration::days(31), now - Duration::days(1))
            .unwrap();
        assert!(
            handshake
                .verify_client_cert(&der(&forged.cert_pem), &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn the_two_roots_must_differ_and_be_one_certificate_each() {
        let (service_ca, user_ca, _) = setup();
        assert!(TrustRoots::from_pem(service_ca.cert_pem(), service_ca.cert_pem()).is_err());
        let bundle = format!("{}{}", service_ca.cert_pem(), user_ca.cert_pem());
        assert!(TrustRoots::from_pem(&bundle, user_ca.cert_pem()).is_err());
        assert!(TrustRoots::from_pem(service_ca.cert_pem(), &bundle).is_err());
    }
}
