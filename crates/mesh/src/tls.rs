//! Mutual TLS for every listener and every outgoing call.
//!
//! The servers' listeners do the handshake themselves (`crate::transport`,
//! which bounds it in time) with the rustls config built here. Every client
//! connects through [`channel`], whose connector ([`crate::connect`]) bounds
//! the TCP connect and the handshake in time and checks that the server's
//! certificate names the identity expected at that endpoint, not only that
//! the mesh CA signed it. This module loads the PEM material once, validates
//! it at startup (all three files or nothing) and builds server and client
//! configs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};
use zeroize::Zeroizing;

use crate::connect::{ExpectServerIdentity, MeshConnector};
use crate::trust::TrustRoots;

/// How long a TCP connect to a peer may take (default).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the TLS handshake with a peer may take (default).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found")]
    NoKey { path: PathBuf },
    #[error("invalid endpoint {uri:?}: {why}")]
    BadEndpoint { uri: String, why: String },
    #[error("server TLS configuration: {0}")]
    ServerConfig(String),
    #[error("client TLS configuration: {0}")]
    ClientConfig(String),
    #[error("the certificate names no mesh identity: {0}")]
    NoIdentity(String),
}

/// Installs ring as rustls' process-wide crypto provider (idempotent).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Paths of one identity's certificate, key and the trusted CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Loaded, checked TLS material of one identity. The key is zeroized on drop
/// and never printed.
#[derive(Clone)]
pub struct TlsMaterial {
    cert_pem: String,
    key_pem: Zeroizing<String>,
    ca_pem: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let cert_pem = read(&files.cert)?;
        let key_pem = Zeroizing::new(read(&files.key)?);
        let ca_pem = read(&files.ca)?;
        Self::from_pem(cert_pem, key_pem, ca_pem).map_err(|e| match e {
            TlsError::NoCertificate { .. } => TlsError::NoCertificate {
                path: files.cert.clone(),
            },
            TlsError::NoKey { .. } => TlsError::NoKey {
                path: files.key.clone(),
            },
            other => other,
        })
    }

    /// From PEM strings; checks that each parses.
    pub fn from_pem(
        cert_pem: String,
        key_pem: Zeroizing<String>,
        ca_pem: String,
    ) -> Result<Self, TlsError> {
        let no_cert = || TlsError::NoCertificate {
            path: PathBuf::from("<pem>"),
        };
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| no_cert())?;
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| no_cert())?;
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| TlsError::NoKey {
            path: PathBuf::from("<pem>"),
        })?;
        Ok(Self {
            cert_pem,
            key_pem,
            ca_pem,
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The identity this material's certificate names (its SPIFFE URI SAN).
    pub fn identity(&self) -> Result<sesphr_identity::Identity, TlsError> {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| TlsError::NoIdentity(e.to_string()))?;
        sesphr_identity::identity_from_cert_der(&der)
            .map_err(|e| TlsError::NoIdentity(e.to_string()))
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// tonic's own server TLS, with client certificates checked against
    /// this material's CA only (the bench's reference echo server and test
    /// stand-ins; the mesh's listeners use [`Self::rustls_server_config`]).
    pub fn server_config(&self, require_client_cert: bool) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                self.key_pem.as_bytes(),
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(!require_client_cert)
            .timeout(Duration::from_secs(10))
    }

    /// The rustls config of a listener that does its own handshakes: this
    /// identity; client certificates verified against the mesh's two roots
    /// (optional only if `require_client_cert` is false: the SRS, whose
    /// `Enroll` serves callers that have no certificate yet; every other RPC
    /// there still demands one, see [`crate::auth::authorize`]); ALPN `h2`
    /// only. Which root a caller must chain to is checked per connection
    /// ([`TrustRoots::peer_identity`]).
    pub fn rustls_server_config(
        &self,
        require_client_cert: bool,
        roots: &TrustRoots,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let bad = |e: &dyn std::fmt::Display| TlsError::ServerConfig(e.to_string());
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| bad(&e))?;
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(roots.handshake_verifier(require_client_cert))
            .with_single_cert(chain, key)
            .map_err(|e| bad(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// Client side, presenting this identity.
    pub fn client_config(&self) -> ClientTls {
        ClientTls {
            ca_pem: self.ca_pem.clone(),
            identity: Some((self.cert_pem.clone(), self.key_pem.clone())),
        }
    }
}

/// What a client trusts (the mesh CA) and presents (a certificate, or
/// nothing for enrollment). Which server it expects is given per endpoint,
/// to [`channel`].
#[derive(Clone)]
pub struct ClientTls {
    ca_pem: String,
    identity: Option<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("anonymous", &self.identity.is_none())
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// The rustls config of a connection that must reach `server`: the
    /// mesh CA and host name checked by WebPKI, then the SPIFFE ID; ALPN
    /// `h2`; this client's certificate, if any.
    pub fn rustls_config(
        &self,
        server: &sesphr_identity::Identity,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let bad = |e: &dyn std::fmt::Display| TlsError::ClientConfig(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(ca.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| bad(&e))?;
        let verifier = Arc::new(ExpectServerIdentity::new(webpki, server.clone()));
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(&e))?;
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(&e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad(&e))?
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A client config that trusts the mesh CA but presents no certificate
/// (enrollment only).
pub fn anonymous_client_config(ca_pem: &str) -> ClientTls {
    ClientTls {
        ca_pem: ca_pem.to_owned(),
        identity: None,
    }
}

/// The time limits of a [`channel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelTimeouts {
    /// The TCP connect.
    pub connect: Duration,
    /// The TLS handshake, from the TCP connection on.
    pub handshake: Duration,
    /// Every call, until the response headers (tonic's per-endpoint
    /// timeout; a call's own `grpc-timeout` can be shorter). `None`: calls
    /// bound themselves.
    pub request: Option<Duration>,
}

/// Calls bounded by this duration, connect and handshake by the defaults.
impl From<Duration> for ChannelTimeouts {
    fn from(request: Duration) -> Self {
        Self {
            connect: CONNECT_TIMEOUT,
            handshake: HANDSHAKE_TIMEOUT,
            request: Some(request),
        }
    }
}

/// HTTP/2 receive window of each stream a mesh client opens. Records and
/// blobs come down in 1 MiB messages; hyper's default (2 MiB) lets the
/// sender get barely two ahead before it waits for a window update.
/// Measured with `scripts/bench.sh` (docs/BENCHMARKS.md, "HTTP/2 windows
/// and frames"): a 1 GiB download +25 %, uploads unchanged.
pub const CLIENT_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 receive window of a mesh client's connection: what a peer can
/// make the client hold unread, at most, per connection (a client's own
/// memory; servers keep hyper's smaller defaults, see
/// [`crate::transport::TransportLimits::server`]).
pub const CLIENT_CONNECTION_WINDOW: u32 = 16 << 20;
/// Largest HTTP/2 frame a mesh client accepts: one download message in
/// one frame rather than 64 of hyper's default 16 KiB.
pub const CLIENT_MAX_FRAME_SIZE: u32 = 1 << 20;

/// A lazily connecting mTLS channel to `uri` (`https://host:port`) that
/// only talks to a server whose certificate names `server`.
///
/// This is how every client of the mesh connects (the SDK, enrollment, the
/// services' calls to AccessPolicy, health checks): TCP within
/// `timeouts.connect`, the TLS handshake within `timeouts.handshake`, the
/// server's chain checked against the mesh CA and the host name, then its
/// SPIFFE ID against `server` (see [`crate::connect`]). A mismatch fails
/// every call on the channel with `UNAVAILABLE` and a message naming the
/// expected and the presented identity.
pub fn channel(
    uri: &str,
    tls: ClientTls,
    server: &sesphr_identity::Identity,
    timeouts: impl Into<ChannelTimeouts>,
) -> Result<Channel, TlsError> {
    let timeouts = timeouts.into();
    let bad = |why: String| TlsError::BadEndpoint {
        uri: uri.to_owned(),
        why,
    };
    if !uri.starts_with("https://") {
        return Err(bad(
            "must start with https:// (the mesh speaks only TLS)".into()
        ));
    }
    let parsed: Uri = uri
        .parse()
        .map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(e.to_string()))?;
    let authority = parsed
        .authority()
        .ok_or_else(|| bad("no host".into()))?
        .clone();
    if parsed.path() != "/" && !parsed.path().is_empty() {
        return Err(bad("must be https://host:port, without a path".into()));
    }
    let port = authority.port_u16().unwrap_or(443);
    let connector = MeshConnector::new(
        uri,
        authority.host(),
        port,
        tls.rustls_config(server)?,
        timeouts.connect,
        timeouts.handshake,
    )
    .map_err(bad)?;
    // The connector does TLS itself (tonic's own TLS cannot check the
    // server's SPIFFE ID), so tonic is given the plain scheme to connect
    // and told the real origin for the requests' `:scheme`/`:authority`.
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| bad(e.to_string()))?
        .origin(parsed)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(CLIENT_STREAM_WINDOW)
        .initial_connection_window_size(CLIENT_CONNECTION_WINDOW)
        .max_frame_size(CLIENT_MAX_FRAME_SIZE);
    let endpoint = match timeouts.request {
        Some(t) => endpoint.timeout(t),
        None => endpoint,
    };
    Ok(endpoint.connect_with_connector_lazy(connector))
}
