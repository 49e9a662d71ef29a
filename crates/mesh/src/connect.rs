//! Outgoing connections: TCP, TLS, and the identity of the server.
//!
//! The mesh CA signs every identity of the mesh — each service, each
//! operator, each enrolled user. A client that checked only the CA and the
//! host name would accept any of them as any server: AccessPolicy's
//! certificate presented by a process listening where CloudStorage should
//! be, a user's certificate on a stolen port. So every outgoing connection
//! ([`crate::tls::channel`]) goes through [`MeshConnector`], which
//!
//! 1. connects TCP within `connect`;
//! 2. runs the TLS handshake (ALPN `h2`) within `handshake`;
//! 3. verifies the server's chain against the mesh CA and the host name
//!    (rustls' `WebPkiServerVerifier`), **then** that the leaf carries exactly
//!    one SPIFFE URI SAN and that it names the identity expected at that
//!    endpoint ([`ExpectServerIdentity`]).
//!
//! A failure of any step fails the call with one line naming the endpoint
//! and what went wrong, e.g. `the server at https://127.0.0.1:50051 is
//! spiffe://sesphr.local/service/access-policy, expected
//! spiffe://sesphr.local/service/cloud-storage`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sesphr_identity::{Identity, IdentityError, identity_from_cert_der};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;

/// The server's certificate chains to the mesh CA but names someone else.
#[derive(Debug, Clone)]
pub struct WrongServerIdentity {
    /// Who should answer at the endpoint.
    pub expected: Identity,
    /// Whom the certificate names, or why it names nobody usable.
    pub presented: Result<Identity, IdentityError>,
}

impl fmt::Display for WrongServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.presented {
            Ok(presented) => write!(
                f,
                "the server's certificate names {presented}, expected {}",
                self.expected
            ),
            Err(e) => write!(
                f,
                "the server's certificate names no usable identity ({e}), expected {}",
                self.expected
            ),
        }
    }
}

impl std::error::Error for WrongServerIdentity {}

/// A server certificate verifier: rustls' WebPKI verification (chain to the
/// mesh CA, validity, host name), then the SPIFFE ID of the leaf.
#[derive(Debug)]
pub struct ExpectServerIdentity {
    inner: Arc<WebPkiServerVerifier>,
    expected: Identity,
}

impl ExpectServerIdentity {
    pub fn new(inner: Arc<WebPkiServerVerifier>, expected: Identity) -> Self {
        Self { inner, expected }
    }

    /// The identity check alone, on a leaf the WebPKI check accepted.
    pub fn check_leaf(&self, leaf_der: &[u8]) -> Result<(), WrongServerIdentity> {
        match identity_from_cert_der(leaf_der) {
            Ok(id) if id == self.expected => Ok(()),
            presented => Err(WrongServerIdentity {
                expected: self.expected.clone(),
                presented,
            }),
        }
    }
}

impl ServerCertVerifier for ExpectServerIdentity {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.check_leaf(end_entity.as_ref()).map_err(|wrong| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(wrong))))
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why a connection could not be made: one readable line that names the
/// endpoint (tonic reports it as the call's `UNAVAILABLE` message).
#[derive(Debug)]
pub struct ConnectFailure(String);

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectFailure {}

/// The connector of every mesh channel: TCP within `connect`, then TLS
/// within `handshake`, verified by an [`ExpectServerIdentity`].
#[derive(Clone)]
pub struct MeshConnector {
    /// The endpoint as configured (`https://host:port`), for messages.
    endpoint: Arc<str>,
    host: Arc<str>,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    connect: Duration,
    handshake: Duration,
}

impl MeshConnector {
    /// A connector to `host:port` presenting itself with `config` (whose
    /// verifier must be an [`ExpectServerIdentity`]).
    pub fn new(
        endpoint: &str,
        host: &str,
        port: u16,
        config: Arc<rustls::ClientConfig>,
        connect: Duration,
        handshake: Duration,
    ) -> Result<Self, String> {
        // `[::1]` in a URI is `::1` in a certificate.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_owned())
            .map_err(|e| format!("{host:?} is not a host name or address: {e}"))?;
        Ok(Self {
            endpoint: Arc::from(endpoint),
            host: Arc::from(bare),
            port,
            server_name,
            tls: TlsConnector::from(config),
            connect,
            handshake,
        })
    }
}

/// The rustls error inside a failed handshake, explained.
fn handshake_failure(endpoint: &str, e: &std::io::Error) -> String {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other)))) = tls
        && let Some(wrong) = other.downcast_ref::<WrongServerIdentity>()
    {
        return match &wrong.presented {
            Ok(presented) => format!(
                "the server at {endpoint} is {presented}, expected {} (refusing to talk to it)",
                wrong.expected
            ),
            Err(why) => format!(
                "the server at {endpoint} presented a certificate that names no usable identity \
                 ({why}), expected {} (refusing to talk to it)",
                wrong.expected
            ),
        };
    }
    format!("TLS handshake with {endpoint} failed: {e}")
}

impl tower::Service<Uri> for MeshConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = ConnectFailure;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectFailure>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectFailure>> {
        Poll::Ready(Ok(()))
    }

    /// The URI tonic passes is ignored: the connector was made for one
    /// endpoint and always speaks TLS to it.
    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let endpoint = &this.endpoint;
            let tcp =
                tokio::time::timeout(this.connect, TcpStream::connect((&*this.host, this.port)))
                    .await
                    .map_err(|_| {
                        ConnectFailure(format!(
                            "connecting to {endpoint} exceeded the connect deadline of {:?}",
                            this.connect
                        ))
                    })?
                    .map_err(|e| ConnectFailure(format!("cannot connect to {endpoint}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio::time::timeout(
                this.handshake,
                this.tls.connect(this.server_name.clone(), tcp),
            )
            .await
            .map_err(|_| {
                ConnectFailure(format!(
                    "the TLS handshake with {endpoint} exceeded its deadline of {:?} \
                     (the server accepted the connection but did not complete TLS)",
                    this.handshake
                ))
            })?
            .map_err(|e| ConnectFailure(handshake_failure(endpoint, &e)))?;
            Ok(TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;
    use rustls::pki_types::pem::PemObject;

    const TD: &str = "sesphr.local";

    fn verifier(ca: &CertificateAuthority, expected: Identity) -> ExpectServerIdentity {
        crate::tls::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let inner = WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        ExpectServerIdentity::new(inner, expected)
    }

    fn leaf(ca: &CertificateAuthority, id: &Identity) -> CertificateDer<'static> {
        let issued = ca
            .issue(
                id,
                &["localhost"],
                &[std::net::IpAddr::from([127, 0, 0, 1])],
            )
            .unwrap();
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()
    }

    #[test]
    fn the_expected_identity_passes_any_other_is_named_in_the_error() {
        use sesphr_identity::Service;
        let (ca, _) = CertificateAuthority::generate(TD).unwrap();
        let cloud = Identity::service(TD, Service::CloudStorage);
        let policy = Identity::service(TD, Service::AccessPolicy);
        let v = verifier(&ca, cloud.clone());
        let name = ServerName::try_from("localhost").unwrap();
        let now = UnixTime::now();
        v.verify_server_cert(&leaf(&ca, &cloud), &[], &name, &[], now)
            .expect("the right service passes");
        let err = v
            .verify_server_cert(&leaf(&ca, &policy), &[], &name, &[], now)
            .unwrap_err();
        let wrong = match &err {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(o))) => o
                .downcast_ref::<WrongServerIdentity>()
                .expect("our error")
                .to_string(),
            other => panic!("{other:?}"),
        };
        assert!(wrong.contains(&policy.to_string()), "{wrong}");
        assert!(wrong.contains(&cloud.to_string()), "{wrong}");
        // Same service name, other trust domain.
        let foreign = Identity::service("other.example", Service::CloudStorage);
        assert!(
            v.verify_server_cert(&leaf(&ca, &foreign), &[], &name, &[], now)
                .is_err()
        );
        // Host name still checked first.
        let other_host = ServerName::try_from("example.org").unwrap();
        assert!(
            v.verify_server_cert(&leaf(&ca, &cloud), &[], &other_host, &[], now)
                .is_err()
        );
    }
}
