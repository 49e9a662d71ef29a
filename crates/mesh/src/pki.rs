//! The mesh's CAs: dev PKI generation and certificate issuing.
//!
//! Two CAs sign the mesh's certificates (see [`crate::trust`]): the service
//! CA its servers, nodes and operators, the user CA its patients and
//! practitioners. Each certificate names its holder with exactly one SPIFFE
//! URI SAN (see `sesphr-identity`); server certificates also carry the
//! DNS/IP SANs clients dial. The SRS holds the user CA only, to sign
//! enrolling users' CSRs; `sesphrd dev` creates throwaway CAs on first
//! start.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sesphr_identity::{Identity, Service};
use time::{Duration, OffsetDateTime};

/// How long service and operator certificates of the dev PKI are valid.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// How long a user certificate is valid unless the SRS is told otherwise
/// (`sesphr renew` issues the next one).
pub const USER_CERT_VALIDITY: Duration = Duration::days(30);
/// How long a generated CA is valid.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// Leaf certificates are back-dated a little to tolerate clock skew.
const CLOCK_SKEW: Duration = Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate signing request rejected: {0}")]
    BadCsr(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A certificate with its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A CA able to sign mesh certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A fresh self-signed service CA for `trust_domain`; returns the CA
    /// and its key (PEM).
    pub fn generate(trust_domain: &str) -> Result<(Self, String), PkiError> {
        Self::generate_named(&format!("SeSPHR service CA ({trust_domain})"))
    }

    /// A fresh self-signed user CA for `trust_domain` (what the SRS signs
    /// enrolling users with); returns the CA and its key (PEM).
    pub fn generate_user_ca(trust_domain: &str) -> Result<(Self, String), PkiError> {
        Self::generate_named(&format!("SeSPHR user CA ({trust_domain})"))
    }

    fn generate_named(common_name: &str) -> Result<(Self, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "SeSPHR mesh");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok((
            Self {
                cert_pem: cert.pem(),
                issuer: Issuer::new(params, key),
            },
            key_pem,
        ))
    }

    /// Loads a CA (or intermediate) certificate and its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn leaf_params(identity: &Identity, server: bool) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.short());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + LEAF_VALIDITY;
        Ok(params)
    }

    /// A certificate usable as both server and client identity of a service
    /// (or the operator), with the given DNS names and IP addresses.
    pub fn issue(
        &self,
        identity: &Identity,
        dns_names: &[&str],
        ips: &[IpAddr],
    ) -> Result<IssuedCert, PkiError> {
        let server = !dns_names.is_empty() || !ips.is_empty();
        let mut params = Self::leaf_params(identity, server)?;
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Like [`issue`](Self::issue) with a chosen validity window (tests use
    /// this for expired certificates).
    pub fn issue_with_validity(
        &self,
        identity: &Identity,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let mut params = Self::leaf_params(identity, false)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a client certificate for `identity`, valid for `validity`,
    /// over the key in a PKCS#10 CSR (DER). The CSR's self-signature is
    /// verified (proof that the caller holds the key); its subject and
    /// extensions are ignored: the CA alone decides what the certificate
    /// names. `device` goes into the subject's organizational unit (see
    /// [`crate::trust::device`]). Returns the PEM and its `notAfter` (unix
    /// seconds).
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        device: &str,
        validity: Duration,
    ) -> Result<(String, i64), PkiError> {
        let der = rustls::pki_types::CertificateSigningRequestDer::from(csr_der);
        let mut csr = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        csr.params = Self::leaf_params(identity, false)?;
        csr.params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, device);
        csr.params.not_after = OffsetDateTime::now_utc() + validity;
        let not_after = csr.params.not_after.unix_timestamp();
        Ok((csr.signed_by(&self.issuer)?.pem(), not_after))
    }
}

/// Makes a key pair and a CSR for it (what an enrolling client sends).
/// Returns (csr DER, key PEM).
pub fn make_csr() -> Result<(Vec<u8>, String), PkiError> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::default();
    let csr = params.serialize_request(&key)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

/// A CSR for an existing key (PEM): what a renewal that keeps its TLS key
/// sends.
pub fn make_csr_for(key_pem: &str) -> Result<Vec<u8>, PkiError> {
    let key = KeyPair::from_pem(key_pem)?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok(csr.der().to_vec())
}

/// Paths of the dev PKI under `DIR/pki`.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub dir: PathBuf,
}

impl DevPki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
    /// The user CA's certificate (the SRS's issuer).
    pub fn user_ca_cert(&self) -> PathBuf {
        self.dir.join("user-ca.pem")
    }
    /// The user CA's key: only the SRS reads it.
    pub fn user_ca_key(&self) -> PathBuf {
        self.dir.join("user-ca.key")
    }

    /// Creates the dev PKI in `dir` unless it is already there: the service
    /// CA (`ca.pem`, `ca.key` 0600), the user CA (`user-ca.pem`,
    /// `user-ca.key` 0600), one cert+key per service with SANs `localhost`,
    /// `127.0.0.1`, `::1`, and an operator identity
    /// (`operator.pem`/`operator.key`), both from the service CA. Existing
    /// files are reused, so restarting keeps every identity.
    pub fn ensure(dir: &Path, trust_domain: &str) -> Result<Self, PkiError> {
        let pki = DevPki {
            dir: dir.to_owned(),
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        set_mode(dir, 0o700)?;
        let ca = if pki.ca_cert().exists() && pki.ca_key().exists() {
            let cert = read(&pki.ca_cert())?;
            let key = read(&pki.ca_key())?;
            CertificateAuthority::from_pem(&cert, &key)?
        } else {
            let (ca, key_pem) = CertificateAuthority::generate(trust_domain)?;
            write_secret(&pki.ca_key(), key_pem.as_bytes())?;
            write_public(&pki.ca_cert(), ca.cert_pem().as_bytes())?;
            ca
        };
        let local_ips: [IpAddr; 2] = [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
        ];
        for service in Service::ALL {
            let name = service.as_str();
            if !(pki.cert(name).exists() && pki.key(name).exists()) {
                let id = Identity::service(trust_domain, service);
                let issued = ca.issue(&id, &["localhost", name], &local_ips)?;
                write_secret(&pki.key(name), issued.key_pem.as_bytes())?;
                write_public(&pki.cert(name), issued.cert_pem.as_bytes())?;
            }
        }
        if !(pki.cert("operator").exists() && pki.key("operator").exists()) {
            let id =
                Identity::operator(trust_domain, "operator").expect("\"operator\" is a valid id");
            let issued = ca.issue(&id, &[], &[])?;
            write_secret(&pki.key("operator"), issued.key_pem.as_bytes())?;
            write_public(&pki.cert("operator"), issued.cert_pem.as_bytes())?;
        }
        if !(pki.user_ca_cert().exists() && pki.user_ca_key().exists()) {
            let (user_ca, key_pem) = CertificateAuthority::generate_user_ca(trust_domain)?;
            write_secret(&pki.user_ca_key(), key_pem.as_bytes())?;
            write_public(&pki.user_ca_cert(), user_ca.cert_pem().as_bytes())?;
        }
        Ok(pki)
    }

    /// Issues re-encryption node `index` its identity
    /// (`spiffe://<td>/service/srs-node/<i>`, files `srs-node-<i>.pem` and
    /// `.key`, SANs like the services') unless it has one.
    pub fn ensure_node(
        &self,
        trust_domain: &str,
        index: sesphr_identity::NodeIndex,
    ) -> Result<(), PkiError> {
        let name = index.name();
        if self.cert(&name).exists() && self.key(&name).exists() {
            return Ok(());
        }
        let ca = self.load_ca()?;
        let local_ips: [IpAddr; 2] = [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
        ];
        let id = Identity::srs_node(trust_domain, index);
        let issued = ca.issue(&id, &["localhost", &name], &local_ips)?;
        write_secret(&self.key(&name), issued.key_pem.as_bytes())?;
        write_public(&self.cert(&name), issued.cert_pem.as_bytes())?;
        Ok(())
    }

    /// The service CA, loaded from disk.
    pub fn load_ca(&self) -> Result<CertificateAuthority, PkiError> {
        CertificateAuthority::from_pem(&read(&self.ca_cert())?, &read(&self.ca_key())?)
    }

    /// The user CA, loaded from disk.
    pub fn load_user_ca(&self) -> Result<CertificateAuthority, PkiError> {
        CertificateAuthority::from_pem(&read(&self.user_ca_cert())?, &read(&self.user_ca_key())?)
    }

    /// The CA that issues `identity`'s class of certificates.
    pub fn load_ca_for(&self, identity: &Identity) -> Result<CertificateAuthority, PkiError> {
        match crate::trust::Root::of(identity) {
            crate::trust::Root::Service => self.load_ca(),
            crate::trust::Root::User => self.load_user_ca(),
        }
    }
}

pub(crate) fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(io_err(path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Writes a file readable by its owner only (created 0600, never widened).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_with_mode(path, bytes, 0o600)
}

pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_with_mode(path, bytes, 0o644)
}

/// Write to a temp file, fsync, rename: a crash never leaves a half-written
/// key or certificate behind. The temp file is new (`create_new`, so it
/// is created with `mode` and no file already there is reused), and named
/// for this write alone: `.NAME.<random hex>.tmp` beside `path`.
fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let (tmp, mut f) = create_temp(path, mode)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp));
    drop(f);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path).map_err(io_err(path))) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    set_mode(path, mode)?;
    // The rename itself is durable only once the directory is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// A new temp file beside `path` for one write, created with `mode`.
fn create_temp(path: &Path, mode: u32) -> Result<(PathBuf, fs::File), PkiError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tries = 0;
    loop {
        let tmp = path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(io_err(&tmp)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sesphr_identity::{Role, identity_from_cert_der};

    fn der(pem_str: &str) -> Vec<u8> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        CertificateDer::from_pem_slice(pem_str.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn writes_go_through_a_new_temp_file_of_their_own() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("tls.key");
        let pem = dir.path().join("tls.pem");
        // A planted, world-readable temp file of the old naming is neither
        // reused nor does it widen the key's mode.
        let planted = dir.path().join("tls.tmp");
        fs::write(&planted, b"planted").unwrap();
        fs::set_permissions(&planted, fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&key, b"secret").unwrap();
        write_public(&pem, b"cert").unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        assert_eq!(fs::read(&pem).unwrap(), b"cert");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&pem), 0o644);
        assert_eq!(fs::read(&planted).unwrap(), b"planted");
        // No temp file is left behind.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["tls.key", "tls.pem", "tls.tmp"]);
        // Two writers of the same file at once each use their own temp file.
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let key = key.clone();
                std::thread::spawn(move || write_secret(&key, format!("k{i}").as_bytes()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert!(fs::read_to_string(&key).unwrap().starts_with('k'));
        assert_eq!(mode(&key), 0o600);
    }

    #[test]
    fn csr_gets_the_ca_chosen_name() {
        let (ca, _) = CertificateAuthority::generate("sesphr.local").unwrap();
        let (csr, _key) = make_csr().unwrap();
        let alice = Identity::user("sesphr.local", Role::Patient, "alice").unwrap();
        let (pem, not_after) = ca
            .sign_csr(&csr, &alice, "laptop", USER_CERT_VALIDITY)
            .unwrap();
        assert_eq!(identity_from_cert_der(&der(&pem)).unwrap(), alice);
        let expected = (OffsetDateTime::now_utc() + USER_CERT_VALIDITY).unix_timestamp();
        assert!((expected - not_after).abs() < 60);
        assert_eq!(crate::trust::not_after(&der(&pem)), Some(not_after as u64));
        assert_eq!(crate::trust::device(&der(&pem)).as_deref(), Some("laptop"));
    }

    #[test]
    fn garbage_csr_is_rejected() {
        let (ca, _) = CertificateAuthority::generate("sesphr.local").unwrap();
        let alice = Identity::user("sesphr.local", Role::Patient, "alice").unwrap();
        assert!(matches!(
            ca.sign_csr(b"junk", &alice, "laptop", USER_CERT_VALIDITY),
            Err(PkiError::BadCsr(_))
        ));
        let (mut csr, _) = make_csr().unwrap();
        let last = csr.len() - 1;
        csr[last] ^= 1; // break the self-signature
        assert!(
            ca.sign_csr(&csr, &alice, "laptop", USER_CERT_VALIDITY)
                .is_err()
        );
    }

    #[test]
    fn dev_pki_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = DevPki::ensure(dir.path(), "sesphr.local").unwrap();
        let ca1 = fs::read(pki.ca_cert()).unwrap();
        let srs1 = fs::read(pki.cert("srs")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(pki.ca_key()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        DevPki::ensure(dir.path(), "sesphr.local").unwrap();
        assert_eq!(fs::read(pki.ca_cert()).unwrap(), ca1);
        assert_eq!(fs::read(pki.cert("srs")).unwrap(), srs1);
        let id = identity_from_cert_der(&der(&String::from_utf8(srs1).unwrap())).unwrap();
        assert_eq!(id.as_service(), Some(Service::Srs));
    }
}
