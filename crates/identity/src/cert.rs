//! Reading the caller's identity out of a verified certificate.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{Identity, IdentityError};

/// The identity named by the single `spiffe://` URI SAN of a DER certificate.
///
/// The certificate must already have been verified against the mesh CA (the
/// TLS layer does that); this only reads the name. A certificate with no or
/// several SPIFFE SANs names nobody and is refused.
pub fn identity_from_cert_der(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::BadCertificate)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::BadCertificate)?;
    let mut found = None;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with("spiffe://")
            {
                if found.is_some() {
                    return Err(IdentityError::SeveralSpiffeSans);
                }
                found = Some(uri.parse::<Identity>()?);
            }
        }
    }
    found.ok_or(IdentityError::NoSpiffeSan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with_sans(sans: Vec<SanType>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn one_spiffe_uri() {
        let der = cert_with_sans(vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            uri("spiffe://sesphr.local/patient/alice"),
        ]);
        let id = identity_from_cert_der(&der).unwrap();
        assert_eq!(id.as_patient(), Some("alice"));
    }

    #[test]
    fn none_several_or_bad() {
        let none = cert_with_sans(vec![SanType::DnsName("localhost".try_into().unwrap())]);
        assert_eq!(
            identity_from_cert_der(&none),
            Err(IdentityError::NoSpiffeSan)
        );
        let two = cert_with_sans(vec![
            uri("spiffe://sesphr.local/patient/alice"),
            uri("spiffe://sesphr.local/patient/mallory"),
        ]);
        assert_eq!(
            identity_from_cert_der(&two),
            Err(IdentityError::SeveralSpiffeSans)
        );
        let bad = cert_with_sans(vec![uri("spiffe://sesphr.local/patient/ALICE")]);
        assert!(identity_from_cert_der(&bad).is_err());
        let other_uri = cert_with_sans(vec![uri("https://example.org/")]);
        assert_eq!(
            identity_from_cert_der(&other_uri),
            Err(IdentityError::NoSpiffeSan)
        );
        assert_eq!(
            identity_from_cert_der(b"not a cert"),
            Err(IdentityError::BadCertificate)
        );
    }
}
