//! The S3 side of the remote store: how the client is built, what objects
//! are named, and how its failures become [`DomainError`]s.
//!
//! Object keys are never made of user strings: a record's object is
//! `records/<hex sha256(record id)>/<upload id>` and a blob's
//! `blobs/<scope>/<hex blob id>/<upload id>`, where the upload id is random.
//! So no id can reach a path separator, and an upload never writes where an
//! earlier one (of a since deleted record, or a blob raced by another
//! replica) had its bytes.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::HttpErrorKind;
use object_store::path::Path;
use object_store::{ClientOptions, RetryConfig};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::DomainError;
use sesphr_domain::BackendError;

/// Where the ciphertext is kept: one bucket of an S3 API store, under a
/// prefix of its own.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `https://host:port` (or `http://` with [`allow_http`](Self::allow_http)).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Segments every key is put under (`""` for none), e.g.
    /// `prod/cloud-storage`: several stores may share one bucket.
    pub prefix: String,
    /// Plain HTTP: only for a store on loopback.
    pub allow_http: bool,
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// How long one request may take, and how long a call keeps retrying
/// before it fails as unavailable (another replica, or a later try, may
/// succeed).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// The bucket and the prefix of every key.
pub(crate) struct Objects {
    pub(crate) s3: Arc<AmazonS3>,
    prefix: Vec<String>,
}

impl Objects {
    pub(crate) fn new(config: &S3Config) -> Result<Self, DomainError> {
        let prefix = parse_prefix(&config.prefix)?;
        if config.endpoint.starts_with("http://") && !config.allow_http {
            return Err(DomainError::Malformed(
                "s3 endpoint is plain http: use https, or allow_http for a loopback store".into(),
            ));
        }
        // reqwest's rustls takes the process's provider; the mesh uses ring.
        sesphr_mesh::tls::install_crypto_provider();
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&config.endpoint)
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(config.secret_access_key.as_str())
            // Path-style: S3 API stores other than AWS rarely serve bucket
            // subdomains.
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: RETRY_TIMEOUT,
                ..RetryConfig::default()
            })
            // Replaces every client option, so before `with_allow_http`.
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(CONNECT_TIMEOUT),
            )
            .with_allow_http(config.allow_http)
            .build()
            .map_err(|e| DomainError::Malformed(format!("s3 settings: {e}")))?;
        Ok(Self {
            s3: Arc::new(s3),
            prefix,
        })
    }

    /// The full path of a key relative to the prefix (keys are made by
    /// [`record_key`] and [`blob_key`] only, so they always parse).
    pub(crate) fn path(&self, key: &str) -> Path {
        Path::from_iter(self.prefix.iter().map(String::as_str).chain(key.split('/')))
    }
}

/// The prefix as path segments; anything that would not stay a plain
/// segment (`..`, empty parts, control characters) is refused.
fn parse_prefix(prefix: &str) -> Result<Vec<String>, DomainError> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let path = Path::parse(trimmed)
        .map_err(|e| DomainError::Malformed(format!("s3 prefix {prefix:?}: {e}")))?;
    Ok(path.parts().map(|p| p.as_ref().to_owned()).collect())
}

/// A fresh random upload id (128 bits, hex).
pub(crate) fn upload_id() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    hex::encode(b)
}

pub(crate) fn record_key(record_id: &str, upload_id: &str) -> String {
    format!(
        "records/{}/{upload_id}",
        hex::encode(Sha256::digest(record_id.as_bytes()))
    )
}

/// `scope` is `""` (global) or the owner id, as in the `blobs` table.
pub(crate) fn blob_key(scope: &str, blob_id: &[u8; 32], upload_id: &str) -> String {
    let scope = if scope.is_empty() {
        "global".to_owned()
    } else {
        format!("owner-{}", hex::encode(scope.as_bytes()))
    };
    format!("blobs/{scope}/{}/{upload_id}", hex::encode(blob_id))
}

/// Maps an object store failure: one that never got an answer (refused,
/// cut off, timed out) is [`DomainError::Unavailable`]; the rest (refused
/// credentials, a server error that outlasted the retries) is a backend
/// failure whose details are logged, not sent.
pub(crate) fn s3_error(what: &str, e: object_store::Error) -> DomainError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        let unanswered = s
            .downcast_ref::<object_store::client::HttpError>()
            .is_some_and(|h| {
                matches!(
                    h.kind(),
                    HttpErrorKind::Connect | HttpErrorKind::Request | HttpErrorKind::Timeout
                )
            });
        if unanswered {
            tracing::warn!(error = %e, "{what}: object store unavailable");
            return DomainError::Unavailable(format!("{what}: object store unavailable"));
        }
        source = s.source();
    }
    tracing::warn!(error = %e, "{what}: object store failed");
    DomainError::Backend(BackendError::Objects(format!("{what}: {e}").into()))
}

/// Whether `e` says the object (or multipart upload) is not there.
pub(crate) fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hex_and_prefixed() {
        let k = record_key("../../etc/passwd", "ab");
        assert!(k.starts_with("records/") && k.ends_with("/ab"));
        assert!(!k.contains(".."), "{k}");
        let b = blob_key("al/ice", &[0x2f; 32], "cd");
        assert_eq!(
            b,
            format!(
                "blobs/owner-{}/{}/cd",
                hex::encode("al/ice"),
                "2f".repeat(32)
            )
        );
        assert_eq!(
            blob_key("", &[1; 32], "ef"),
            format!("blobs/global/{}/ef", "01".repeat(32))
        );
        assert_eq!(parse_prefix("/a/b/").unwrap(), ["a", "b"]);
        assert!(parse_prefix("").unwrap().is_empty());
        assert!(parse_prefix("a/../b").is_err());
        assert!(parse_prefix("a//b").is_err());
    }

    #[test]
    fn debug_hides_the_secret() {
        let c = S3Config {
            endpoint: "http://127.0.0.1:1".into(),
            region: "r".into(),
            bucket: "b".into(),
            prefix: String::new(),
            allow_http: true,
            access_key_id: "GK1".into(),
            secret_access_key: Zeroizing::new("very-secret-value".into()),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert!(shown.contains("GK1"));
    }
}
