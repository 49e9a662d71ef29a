//! The scale-out metadata store every service shares the mechanics of:
//! a pooled PostgreSQL connection over TLS, each service's migrations run
//! once under a lock, errors mapped to [`DomainError`]s, and per-service
//! secrets.
//!
//! The stores' methods are blocking (the services call them on the blocking
//! pool, as they do sled's), so [`Pg::block_on`] drives a query to its end
//! on the runtime the pool was made on. It must not be called from an
//! async task.

use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Timeouts};
use tokio_postgres::error::SqlState;
use zeroize::Zeroizing;

use crate::{BackendError, DomainError};

/// How to reach the database. `Debug` hides the URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// `postgres://user@host:port/db?sslmode=…`; a password, if any, comes
    /// from the URL (read from a file or the environment by the daemon).
    pub url: String,
    /// PEM roots that sign the server's certificate; required unless the
    /// URL says `sslmode=disable`.
    pub ca_file: Option<PathBuf>,
    /// Pool size per process.
    pub max_connections: usize,
    /// How long a query waits for a free connection, and a new connection
    /// for its handshake, before the call fails as unavailable.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.redacted_url())
            .field("ca_file", &self.ca_file)
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl PgConfig {
    /// The URL with any password replaced, for logs and messages.
    pub fn redacted_url(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return "<not a postgres url>".into();
        };
        // userinfo ends at the last '@' before the path: a password may
        // itself hold '@' or '/' only percent-encoded, but be safe anyway.
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let user = rest[..at].split(':').next().unwrap_or("");
                let tail = &rest[at..];
                if rest[..at].contains(':') {
                    format!("{scheme}://{user}:<redacted>{tail}")
                } else {
                    self.url.clone()
                }
            }
            None => self.url.clone(),
        }
    }

    /// A config with the defaults every other field has.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// What is wrong with the config, without connecting.
    pub fn validate(&self) -> Result<tokio_postgres::Config, String> {
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err("postgres url must start with postgres://".into());
        }
        let parsed: tokio_postgres::Config = libpq_sslmodes(&self.url)
            .parse()
            .map_err(|e| format!("postgres url: {e}"))?;
        let tls_off = matches!(
            parsed.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        if !tls_off && self.ca_file.is_none() {
            return Err(
                "postgres: set ca_file (the roots of the server's certificate), or say \
                 sslmode=disable in the url for a loopback database"
                    .into(),
            );
        }
        if self.max_connections == 0 {
            return Err("postgres max_connections must be at least 1".into());
        }
        Ok(parsed)
    }
}

/// The URL with libpq's `sslmode=verify-full` or `verify-ca` said as
/// `require`, the strongest mode the driver parses: with TLS on, rustls
/// always checks the chain against `ca_file` and the host name, so both
/// get what they ask for (`verify-ca` more: the name is checked too).
fn libpq_sslmodes(url: &str) -> std::borrow::Cow<'_, str> {
    let mut out = std::borrow::Cow::Borrowed(url);
    for mode in ["sslmode=verify-full", "sslmode=verify-ca"] {
        if out.contains(mode) {
            out = std::borrow::Cow::Owned(out.replace(mode, "sslmode=require"));
        }
    }
    out
}

/// A connection pool and the runtime its connections live on.
#[derive(Clone)]
pub struct Pg {
    pool: Pool,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").finish_non_exhaustive()
    }
}

impl Pg {
    /// A pool on `runtime` (nothing connects until the first query).
    pub fn new(config: &PgConfig, runtime: tokio::runtime::Handle) -> Result<Self, DomainError> {
        let mut parsed = config.validate().map_err(DomainError::Malformed)?;
        parsed.connect_timeout(config.connect_timeout);
        // libpq's default `prefer` falls back to plaintext when the server
        // offers no TLS: anyone on the path could then read and change the
        // metadata. Only an explicit `sslmode=disable` turns TLS off.
        if parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer {
            parsed.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        let tls = tls(config)?;
        let manager = Manager::from_config(
            parsed,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_connections)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(config.connect_timeout),
                create: Some(config.connect_timeout),
                recycle: Some(config.connect_timeout),
            })
            .build()
            .map_err(|e| DomainError::Malformed(format!("postgres pool: {e}")))?;
        Ok(Self { pool, runtime })
    }

    /// Runs `f` to completion on the pool's runtime, from a blocking thread.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DomainError> {
        self.pool.get().await.map_err(|e| {
            tracing::warn!(error = %e, "metadata database unavailable");
            DomainError::Unavailable("metadata database unavailable".into())
        })
    }

    /// Applies `runner`'s migrations, recorded in table `history`, under a
    /// session lock so replicas starting together migrate once.
    pub async fn migrate(
        &self,
        mut runner: refinery::Runner,
        history: &str,
    ) -> Result<(), DomainError> {
        let mut conn = self.client().await?;
        // One lock key per history table: services migrate independently.
        let key = lock_key(history);
        conn.execute("SELECT pg_advisory_lock($1)", &[&key])
            .await
            .map_err(pg_error)?;
        let client: &mut tokio_postgres::Client = &mut conn;
        let result = runner
            .set_migration_table_name(history)
            .run_async(client)
            .await;
        let unlock = conn
            .execute("SELECT pg_advisory_unlock($1)", &[&key])
            .await
            .map_err(pg_error);
        result.map_err(|e| {
            DomainError::Backend(BackendError::Postgres(format!("migrations: {e}").into()))
        })?;
        unlock?;
        Ok(())
    }

    /// The 32-byte secret named `name` in `table` (columns `name text
    /// primary key, value bytea`), drawn the first time and the same for
    /// every replica ever after.
    pub async fn secret(
        &self,
        table: &str,
        name: &str,
    ) -> Result<Zeroizing<[u8; 32]>, DomainError> {
        let mut fresh = Zeroizing::new([0u8; 32]);
        rand::fill(&mut fresh[..]);
        let conn = self.client().await?;
        conn.execute(
            &format!("INSERT INTO {table} (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            &[&name, &&fresh[..]],
        )
        .await
        .map_err(pg_error)?;
        let row = conn
            .query_one(
                &format!("SELECT value FROM {table} WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(pg_error)?;
        let stored: Vec<u8> = row.get(0);
        let stored = Zeroizing::new(stored);
        let mut out = Zeroizing::new([0u8; 32]);
        if stored.len() != 32 {
            return Err(DomainError::Corrupt(format!(
                "secret {name} is not 32 bytes"
            )));
        }
        out.copy_from_slice(&stored);
        Ok(out)
    }
}

/// A stable 64-bit advisory-lock key for `name`.
pub fn lock_key(name: &str) -> i64 {
    // FNV-1a: stable across builds and processes (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Maps a driver error: a lost or refused connection is
/// [`DomainError::Unavailable`] (another replica or a retry may succeed),
/// a serialization failure is [`DomainError::Conflict`], the rest is a
/// backend failure whose details are logged, not sent.
pub fn pg_error(e: tokio_postgres::Error) -> DomainError {
    if e.is_closed() || e.code().is_none() && e.as_db_error().is_none() {
        tracing::warn!(error = %e, "metadata database unavailable");
        return DomainError::Unavailable("metadata database unavailable".into());
    }
    if e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
        || e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
    {
        return DomainError::Conflict("concurrent change; try again".into());
    }
    DomainError::Backend(BackendError::Postgres(Box::new(e)))
}

/// Whether `e` is a unique-key violation (the caller knows which fact that
/// is: a record id taken, a user enrolled twice…).
pub fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn tls(config: &PgConfig) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DomainError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &config.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| {
                DomainError::Malformed(format!("postgres ca_file {}: {e}", path.display()))
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| {
                DomainError::Malformed(format!("postgres ca_file {}: {e}", path.display()))
            })?;
        if certs.is_empty() {
            return Err(DomainError::Malformed(format!(
                "postgres ca_file {} holds no certificate",
                path.display()
            )));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| DomainError::Malformed(format!("postgres ca_file: {e}")))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DomainError::Malformed(format!("postgres tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_messages_never_show_the_password() {
        let c = PgConfig::new("postgres://app:s3cr3t@db.example:5432/sesphr?sslmode=verify-full");
        assert_eq!(
            c.redacted_url(),
            "postgres://app:<redacted>@db.example:5432/sesphr?sslmode=verify-full"
        );
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let no_password = PgConfig::new("postgres://app@127.0.0.1/db?sslmode=disable");
        assert_eq!(no_password.redacted_url(), no_password.url);
        assert_eq!(
            PgConfig::new("mysql:x").redacted_url(),
            "<not a postgres url>"
        );
    }

    #[test]
    fn tls_is_required_unless_disabled_in_the_url() {
        let mut c = PgConfig::new("postgres://app@db.example/sesphr");
        assert!(c.validate().unwrap_err().contains("ca_file"));
        c.url = "postgres://app@127.0.0.1/sesphr?sslmode=disable".into();
        assert!(c.validate().is_ok());
        c.max_connections = 0;
        assert!(c.validate().is_err());
        // libpq's verifying modes parse (rustls verifies either way).
        let mut c = PgConfig::new("postgres://app@db.example/sesphr?sslmode=verify-full");
        c.ca_file = Some("/etc/sesphr/postgres/ca.crt".into());
        let parsed = c.validate().unwrap();
        assert_eq!(
            parsed.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        c.url = "postgres://app@db.example/sesphr?sslmode=verify-ca".into();
        assert!(c.validate().is_ok());
    }
}
